"""WriteTables: one JSON Lines file set per table under an output directory."""
from __future__ import annotations

import os

import apache_beam as beam
import orjson
from apache_beam import coders


def to_json_line(row: dict) -> bytes:
    return orjson.dumps(row, option=orjson.OPT_NON_STR_KEYS)


class WriteTables(beam.PTransform):
    """Writes `{table: PCollection of dict rows}` as `<output>/<table>-SSSSS-of-NNNNN.jsonl`."""

    def __init__(self, output_dir: str):
        super().__init__()
        self._output_dir = output_dir

    def expand(self, tables: dict):
        for table, rows in sorted(tables.items()):
            (rows
             | f"Encode{table.title().replace('_', '')}" >> beam.Map(to_json_line)
             | f"Write{table.title().replace('_', '')}" >> beam.io.WriteToText(
                 os.path.join(self._output_dir, table), file_name_suffix=".jsonl", coder=coders.BytesCoder()))
        return beam.pvalue.PDone(next(iter(tables.values())).pipeline) if tables else None
