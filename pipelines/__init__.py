"""Pipelines and the `issue-platform` command line."""
