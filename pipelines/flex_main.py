"""Dataflow Flex Template entry point (batch template): builds and submits the pipeline without
waiting. The streaming template runs `flex_streaming_main.py`, which adds `--streaming` (Beam's
flag takes no value, so a template parameter cannot set it)."""
import logging
import sys

from pipelines.issue_pipeline import submit


def main(argv, streaming: bool = False) -> None:
    logging.getLogger().setLevel(logging.INFO)
    submit([*argv, "--streaming"] if streaming else list(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
