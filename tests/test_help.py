"""Every option a command accepts is in its --help: for `run`, every option of every PipelineOptions
class in pipelines/options.py (what the run plan reads), grouped, each with its default, and the Beam
options the README relies on; for the other commands, every option their parser declares."""
from __future__ import annotations

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import options as job_options
from pipelines.cli import build_parser, main

BEAM_OPTIONS_NAMED = ("--runner", "--streaming", "--temp_location", "--bootstrap_servers", "--direct_num_workers")
GROUPS = ("input", "output", "source", "sink", "state", "time", "runner")


def help_text(capsys, *command) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def option_classes() -> list:
    return [value for value in vars(job_options).values() if isinstance(value, type)
            and issubclass(value, PipelineOptions) and value.__module__ == job_options.__name__]


def declared(options_class) -> list[str]:
    return [f"--{name}" for name in vars(options_class([])._visible_options)]


def test_run_help_lists_every_option_the_job_reads_grouped_with_defaults(capsys):
    text = help_text(capsys, "run")
    classes = option_classes()
    assert set(classes) == set(job_options.RUN_OPTIONS) and len(classes) == 6
    names = [name for options_class in classes for name in declared(options_class)]
    assert len(names) >= 20
    missing = [name for name in names if f"{name} " not in text and f"{name}\n" not in text]
    assert missing == []
    for group in GROUPS:
        assert f"\n{group}" in text
    for name in BEAM_OPTIONS_NAMED:
        assert name in text
    run = next(a for a in build_parser()._subparsers._group_actions[0].choices.values() if a.prog.endswith(" run"))
    own = [a for a in run._actions if a.option_strings and a.option_strings[0] in names]
    assert len(own) == len(names)
    assert [a.option_strings[0] for a in own if "Default" not in (a.help or "")] == []


@pytest.mark.parametrize("command", ["produce", "live", "validate", "flags", "types", "generate",
                                     "createissueflag"])
def test_every_other_command_lists_every_option_it_accepts(capsys, command):
    parser = build_parser()._subparsers._group_actions[0].choices[command]
    options = [o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
    assert options
    text = help_text(capsys, command)
    assert [o for o in options if o not in text] == []
