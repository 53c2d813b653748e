"""The Java side of the pinned Beam, fetched with Maven into Beam's jar cache: a set-up step, never committed.

`python -m pipelines.jars` (`make jars`) fetches what is missing and says so; once cached, nothing here
touches the network. The registry reachable here serves no shaded Beam service jar (no
`beam-runners-flink-*-job-server`, no `beam-sdks-java-io-expansion-service` of a recent Beam), only the
modules they are built from. So each service is the module's runtime dependencies in a folder plus a
small jar, under the file name Beam's `subprocess_server` looks for, whose manifest names the main class
and lists the folder's jars (`java -jar` follows a manifest's Class-Path). Beam then finds it in its
cache and never downloads.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from xml.sax.saxutils import escape

BEAM = "2.62.0"  # the Java modules; must equal the Python SDK pinned in setup.py
FLINK = "1.19"  # the newest Flink whose Beam runner module is served at BEAM
FLINK_RELEASE = "1.19.0"  # the Flink release that runner module is built against
KAFKA = "4.1.1"  # the Apache Kafka broker for tests and `make flink` (KRaft; needs Java 17)
SLF4J = "1.7.36"  # the 1.7 line Flink 1.19 and Beam log through; api and binding of one version
CACHE = Path(os.environ.get("BEAM_JAR_CACHE", "~/.apache_beam/cache/jars")).expanduser()
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1"
NOT_SERVED = ("io.confluent:*",)  # KafkaIO's schema-registry extras live on another repository


@dataclass(frozen=True)
class Bundle:
    """A folder of runtime jars; with a main class, also a launcher jar named `<name>.jar` beside it."""
    name: str
    artifacts: tuple[str, ...]  # group:artifact:version
    main_class: str | None = None

    @property
    def folder(self) -> Path:
        return CACHE / self.name

    @property
    def launcher(self) -> Path:
        return CACHE / f"{self.name}.jar"

    def classpath(self) -> str:
        return os.pathsep.join(str(jar) for jar in sorted(self.folder.glob("*.jar")))

    def cached(self) -> bool:
        return (self.launcher if self.main_class else self.folder / ".complete").exists()


_LOGGING = (f"org.slf4j:slf4j-api:{SLF4J}", f"org.slf4j:slf4j-simple:{SLF4J}")
_KAFKA_IO = (f"org.apache.beam:beam-sdks-java-io-kafka:{BEAM}", "org.apache.kafka:kafka-clients:3.9.1")

JOB_SERVER = Bundle(  # what Beam's flink_job_server.gradle puts in the shaded job server
    f"beam-runners-flink-{FLINK}-job-server-{BEAM}",
    (f"org.apache.beam:beam-runners-flink-{FLINK}:{BEAM}",
     f"org.apache.beam:beam-sdks-java-extensions-google-cloud-platform-core:{BEAM}",
     f"org.slf4j:jcl-over-slf4j:{SLF4J}",
     # The Java SDK harness runs Java transforms (KafkaIO) inside the TaskManager (environment EMBEDDED);
     # it measures its cache with jamm, which its published pom does not name.
     f"org.apache.beam:beam-sdks-java-harness:{BEAM}", "com.github.jbellis:jamm:0.4.0") + _LOGGING + _KAFKA_IO,
    "org.apache.beam.runners.flink.FlinkJobServerDriver")
EXPANSION_SERVICE = Bundle(  # what ReadFromKafka/WriteToKafka start to expand themselves
    f"beam-sdks-java-io-expansion-service-{BEAM}",
    (f"org.apache.beam:beam-sdks-java-expansion-service:{BEAM}",) + _LOGGING + _KAFKA_IO,
    "org.apache.beam.sdk.expansion.service.ExpansionService")
KAFKA_BROKER = Bundle(f"kafka_2.13-{KAFKA}", (f"org.apache.kafka:kafka_2.13:{KAFKA}",) + _LOGGING)
FLINK_CLUSTER = Bundle(  # a standalone JobManager and TaskManager (Maven serves no flink-dist): Flink alone, no Beam
    f"flink-{FLINK_RELEASE}",
    tuple(f"org.apache.flink:flink-{module}:{FLINK_RELEASE}"
          for module in ("runtime", "clients", "streaming-java", "statebackend-rocksdb")) + _LOGGING)
BUNDLES = (JOB_SERVER, EXPANSION_SERVICE, KAFKA_BROKER, FLINK_CLUSTER)


def ensure(bundles=BUNDLES, log=print) -> None:
    """Fetch every bundle not yet cached (idempotent; offline once cached)."""
    if version("apache-beam") != BEAM:
        raise SystemExit(f"jars: Python apache-beam is {version('apache-beam')}, the Java jars are {BEAM}; "
                         "they must match (reinstall: make .venv/.installed)")
    for bundle in bundles:
        if not bundle.cached():
            log(f"jars: fetching {bundle.name} with Maven into {bundle.folder} (first run only)")
            _fetch(bundle)
            log(f"jars: {bundle.name}: {len(list(bundle.folder.glob('*.jar')))} jars")


def _fetch(bundle: Bundle) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        pom, out = Path(scratch) / "pom.xml", Path(scratch) / "jars"
        pom.write_text(_pom(bundle.artifacts))
        done = subprocess.run(["mvn", "-B", "-q", "-f", str(pom), f"{DEPENDENCY_PLUGIN}:copy-dependencies",
                               "-DincludeScope=runtime", f"-DoutputDirectory={out}"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if done.returncode:
            raise SystemExit(f"jars: Maven could not fetch {bundle.name}:\n{done.stdout[-4000:]}")
        (out / ".complete").touch()
        shutil.rmtree(bundle.folder, ignore_errors=True)
        out.rename(bundle.folder)
    if bundle.main_class:
        _write_launcher(bundle)


def _pom(artifacts) -> str:
    exclusions = "".join(f"<exclusion><groupId>{escape(g)}</groupId><artifactId>{escape(a)}</artifactId></exclusion>"
                         for g, a in (e.split(":") for e in NOT_SERVED))
    dependencies = "".join(
        f"<dependency><groupId>{escape(g)}</groupId><artifactId>{escape(a)}</artifactId><version>{escape(v)}</version>"
        f"<exclusions>{exclusions}</exclusions></dependency>" for g, a, v in (c.split(":") for c in artifacts))
    return ('<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
            '<groupId>issue-platform</groupId><artifactId>jars</artifactId><version>0</version>'
            f'<packaging>pom</packaging><dependencies>{dependencies}</dependencies></project>')


# What Flink's start scripts open on Java 17 (its serializers, and the Java SDK harness running in the
# TaskManager, reach into the JDK's classes); a launcher's manifest opens them (`Add-Opens`).
JAVA17_OPENS = tuple(f"java.base/{package}" for package in (
    "java.lang", "java.lang.reflect", "java.io", "java.net", "java.nio", "java.text", "java.time", "java.util",
    "java.util.concurrent", "java.util.concurrent.atomic", "java.util.concurrent.locks", "sun.nio.ch"))


def _write_launcher(bundle: Bundle) -> None:
    """A jar holding only a manifest: the main class, the folder's jars as relative Class-Path entries
    and the JDK packages to open."""
    entries = [f"{bundle.name}/{jar.name}" for jar in sorted(bundle.folder.glob("*.jar"))]
    manifest = ("Manifest-Version: 1.0\r\n" f"Main-Class: {bundle.main_class}\r\n"
                + _manifest_line("Class-Path: " + " ".join(entries))
                + _manifest_line("Add-Opens: " + " ".join(JAVA17_OPENS)))
    partial = bundle.launcher.with_suffix(".tmp")
    with zipfile.ZipFile(partial, "w") as jar:
        jar.writestr("META-INF/MANIFEST.MF", manifest)
    partial.rename(bundle.launcher)


def _manifest_line(line: str) -> str:
    """A manifest line folded at 72 bytes, continuation lines starting with one space (the JAR spec)."""
    raw = line.encode()
    chunks = [raw[:72]] + [raw[i:i + 71] for i in range(72, len(raw), 71)]
    return "\r\n ".join(c.decode() for c in chunks) + "\r\n"


if __name__ == "__main__":
    ensure()
    sys.exit(0)
