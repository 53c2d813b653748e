"""`--config` is read one way: the CLI's commands and the job open it through the same reader, Beam's
filesystems (`transforms.read.open_config`), so a path that works for one works for the other.

The non-local scheme is Beam's own S3 filesystem (`s3://`) over the fake S3 client Beam ships for
its tests (`apache_beam.io.aws.clients.s3.fake_client`): S3 itself cannot be reached here, so the
client is the one boundary replaced; Beam's filesystem registry, S3FileSystem and S3IO are real."""
from __future__ import annotations

import functools

import pytest
from apache_beam.io.aws import s3filesystem, s3io
from apache_beam.io.aws.clients.s3 import fake_client

from issue_platform.grouptype import registry
from pipelines import cli, plan
from transforms import parse, read

CONFIG = b"""group_types:
  - type_id: 9101
    slug: s3_config_check
    description: S3 Config Check
    category: performance
    released: true
projects:
  "5": {resolve_age: 12}
"""
AS_OF = "2026-11-01T00:00:00Z"  # given, so that planning reads no input


@pytest.fixture
def s3_config(monkeypatch):
    client = fake_client.FakeS3Client()
    client.add_file(fake_client.FakeFile("configs", "platform.yaml", CONFIG))
    monkeypatch.setattr(s3filesystem.s3io, "S3IO", functools.partial(s3io.S3IO, client=client))
    return "s3://configs/platform.yaml"


def test_the_cli_reads_a_config_on_a_beam_filesystem(s3_config, capsys):
    with registry.scoped():  # `types` registers the config's types in this process
        assert cli.main(["types", "--config", s3_config]) == 0
    assert "s3_config_check" in capsys.readouterr().out


def test_the_run_plan_reads_the_same_config(s3_config):
    run_plan = plan.plan_run(["--config", s3_config, "--as_of", AS_OF])
    assert [attrs["slug"] for _, attrs in run_plan.config.group_types] == ["s3_config_check"]
    assert run_plan.config.project(5).resolve_age_hours == 12


def test_one_opener_for_the_cli_the_plan_and_the_refresh(monkeypatch, tmp_path):
    """Every reading of --config goes through `open_config`: replaced, it sees every open."""
    path = tmp_path / "c.yaml"
    path.write_bytes(CONFIG)
    opened = []

    def spy(p):
        opened.append(p)
        return read.open_config(p)

    monkeypatch.setattr(plan, "open_config", spy)
    with registry.scoped():
        cli.main(["types", "--config", str(path)])
    plan.plan_run(["--config", str(path), "--as_of", AS_OF])
    assert opened == [str(path), str(path)]
    assert parse.open_config is read.open_config  # the refreshing gate's reader


def test_a_missing_config_is_one_line(tmp_path, capsys):
    assert cli.main(["types", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "--config" in capsys.readouterr().err
