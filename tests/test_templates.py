"""The Flex Template files stay in step with the pipeline's options and the Beam pin."""
import json
import pathlib
import re

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import options as job_options

ROOT = pathlib.Path(__file__).resolve().parent.parent
# What each template deliberately leaves out: a batch job has no live source, no refresh and no earlier
# live job to continue or not (start_fresh); a live job reads no files and no backfill window (a file
# replay would read its input at launch); progress and verbose logging on stderr are for a terminal,
# not a launched job.
LEFT_OUT = {
    "batch": {"subscription", "timestamp_attribute", "config_refresh_seconds", "progress", "verbose", "start_fresh"},
    "streaming": {"input", "kafka_start_time", "kafka_start_offsets", "progress", "verbose"},
}


def _job_options() -> set:
    """Every option that a PipelineOptions class in pipelines/options.py declares."""
    names = set()
    for value in vars(job_options).values():
        if isinstance(value, type) and issubclass(value, PipelineOptions) and value.__module__ == job_options.__name__:
            names |= set(vars(value([])._visible_options))
    return names


@pytest.mark.parametrize("template", sorted(LEFT_OUT))
def test_template_lists_every_option_the_job_accepts(template):
    metadata = json.loads((ROOT / "templates" / template / "metadata.json").read_text())
    names = [p["name"] for p in metadata["parameters"]]
    assert len(names) == len(set(names))
    assert set(names) == _job_options() - LEFT_OUT[template]
    assert metadata["streaming"] is (template == "streaming")
    for parameter in metadata["parameters"]:
        assert {"name", "label", "helpText", "isOptional"} <= set(parameter)
        assert "e.g." in parameter["helpText"]
        example = parameter["helpText"].rsplit("e.g. ", 1)[1]
        for regex in parameter.get("regexes", []):
            assert re.fullmatch(regex, example), (parameter["name"], example)


def test_batch_template_requires_as_of_so_the_launcher_never_reads_the_input():
    metadata = json.loads((ROOT / "templates/batch/metadata.json").read_text())
    [as_of] = [p for p in metadata["parameters"] if p["name"] == "as_of"]
    assert as_of["isOptional"] is False


def test_dockerfile_beam_version_matches_setup_pin_and_bases_are_pinned():
    pin = re.search(r'apache-beam\[gcp\]==([\d.]+)', (ROOT / "setup.py").read_text()).group(1)
    dockerfile = (ROOT / "templates/Dockerfile").read_text()
    assert f"beam_python3.11_sdk:{pin}" in dockerfile
    images = re.findall(r"^ARG \w+_IMAGE=(\S+)$", dockerfile, re.M)
    assert len(images) == 3 and not any(i.endswith(":latest") or ":" not in i for i in images)
    assert "flex_streaming_main.py" in dockerfile and (ROOT / "pipelines/flex_streaming_main.py").exists()
