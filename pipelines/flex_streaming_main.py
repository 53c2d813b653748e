"""Dataflow Flex Template entry point (streaming template): `flex_main` with `--streaming`."""
import sys

from pipelines.flex_main import main

if __name__ == "__main__":
    main(sys.argv[1:], streaming=True)
