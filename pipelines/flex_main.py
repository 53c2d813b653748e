"""Dataflow Flex Template entry point: builds and submits the batch pipeline without waiting."""
import logging
import sys

from pipelines.issue_pipeline import submit

if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    submit(sys.argv[1:])
