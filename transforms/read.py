"""ReadPayloads: files of payloads in Sentry's wire format -> raw payloads (bytes or dicts)."""
from __future__ import annotations

from typing import Sequence

import apache_beam as beam
from apache_beam import coders
from apache_beam.io.avroio import ReadFromAvro


def _avro_payload(record: dict):
    """An Avro record is either `{"payload": <JSON bytes/str>}` or the payload itself, where a null
    field means the field is absent (Avro's way of writing an optional field)."""
    if set(record) == {"payload"}:
        return record["payload"]
    return {k: v for k, v in record.items() if v is not None}


class ReadPayloads(beam.PTransform):
    """Reads JSON Lines (`.jsonl`, `.jsonl.gz`, any other extension as JSON Lines) and Avro (`.avro`).

    Lines are read as bytes so that invalid UTF-8 reaches the dead-letter output instead of
    failing the read.
    """

    def __init__(self, patterns: Sequence[str]):
        super().__init__()
        if not patterns:
            raise ValueError("ReadPayloads needs at least one input path or glob")
        self._patterns = list(patterns)

    def expand(self, pbegin):
        sources = []
        for i, pattern in enumerate(self._patterns):
            if pattern.endswith(".avro"):
                source = (pbegin | f"ReadAvro{i}" >> ReadFromAvro(pattern)
                          | f"AvroToPayload{i}" >> beam.Map(_avro_payload))
            else:
                source = pbegin | f"ReadJsonLines{i}" >> beam.io.ReadFromText(
                    pattern, coder=coders.BytesCoder(), strip_trailing_newlines=True)
            sources.append(source)
        return sources | "FlattenInputs" >> beam.Flatten()
