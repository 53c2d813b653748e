"""Beam composites: thin wrappers that move data in and out of the domain rules in issue_platform/."""
