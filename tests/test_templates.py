"""The Flex Template files stay in step with the pipeline's options and the Beam pin."""
import json
import pathlib
import re

from pipelines.options import IssuePlatformOptions

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_template_parameters_are_pipeline_options():
    metadata = json.loads((ROOT / "templates/batch/metadata.json").read_text())
    dests = set(vars(IssuePlatformOptions([])._visible_options))
    names = {p["name"] for p in metadata["parameters"]}
    assert names <= dests, names - dests
    for parameter in metadata["parameters"]:
        assert {"name", "label", "helpText", "isOptional"} <= set(parameter)
        assert "e.g." in parameter["helpText"]


def test_dockerfile_beam_version_matches_setup_pin():
    pin = re.search(r'apache-beam\[gcp\]==([\d.]+)', (ROOT / "setup.py").read_text()).group(1)
    assert f"beam_python3.11_sdk:{pin}" in (ROOT / "templates/Dockerfile").read_text()
