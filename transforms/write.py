"""WriteTables: one JSON Lines file set per table under an output directory."""
from __future__ import annotations

import os
import uuid

import apache_beam as beam
import orjson
from apache_beam import coders
from apache_beam.io.filesystems import FileSystems


def to_json_line(row: dict) -> bytes:
    return orjson.dumps(row, option=orjson.OPT_NON_STR_KEYS)


class _AppendJsonLinesFn(beam.DoFn):
    """Streaming: each bundle's rows go to a new `<table>-<uuid>.jsonl` (local replays and tests;
    a production stream writes to BigQuery and Pub/Sub instead)."""

    def __init__(self, prefix: str):
        self._prefix = prefix

    def start_bundle(self):
        self._lines = []

    def process(self, row):
        self._lines.append(to_json_line(row))

    def finish_bundle(self):
        if self._lines:
            with FileSystems.create(f"{self._prefix}-{uuid.uuid4().hex}.jsonl") as handle:
                handle.write(b"\n".join(self._lines) + b"\n")
        self._lines = []


class WriteTables(beam.PTransform):
    """Writes `{name: PCollection of dict rows}` under `output_dir`: `<name>-SSSSS-of-NNNNN.jsonl` with
    Beam's transactional text sink in batch, `<name>-<uuid>.jsonl` per bundle when streaming. A table
    may be written in parts (`occurrences`, `occurrences-gated`): read it as `<table>-*.jsonl`."""

    def __init__(self, output_dir: str, streaming: bool = False):
        super().__init__()
        self._output_dir, self._streaming = output_dir, streaming

    def expand(self, tables: dict):
        for name, rows in sorted(tables.items()):
            label, prefix = name.title().replace("_", "").replace("-", ""), os.path.join(self._output_dir, name)
            if self._streaming:
                rows | f"Append{label}" >> beam.ParDo(_AppendJsonLinesFn(prefix))
            else:
                (rows
                 | f"Encode{label}" >> beam.Map(to_json_line)
                 | f"Write{label}" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl",
                                                         coder=coders.BytesCoder()))
        return beam.pvalue.PDone(next(iter(tables.values())).pipeline)
