"""JSON Schema files for payloads and BigQuery table schemas, loaded from this package."""
import json
from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=None)
def load(name: str) -> dict:
    """A schema by file name, e.g. `load("occurrence.schema.json")`."""
    return json.loads(resources.files(__name__).joinpath(name).read_text("utf-8"))
