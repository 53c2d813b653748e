"""A real Flink cluster for tests: a JobManager and a TaskManager as separate JVMs, from Flink's own
jars (`pipelines.jars.FLINK_CLUSTER`: Maven serves no flink-dist), inside a private network namespace.

Why a namespace: Flink's servers can be told to bind 127.0.0.1 (and are, below), but Beam's Java gRPC
servers (the job server's job and artifact ports, and in every TaskManager the control, data, state
and logging ports of the SDK harness) listen on all interfaces whatever they are told. In a namespace
whose only interface is loopback, nothing is reachable from elsewhere. Every process of a test that
talks to these servers (the job server, the launching `issue-platform run` with its worker pool) runs
in the same namespace (`Netns.command`); the namespace goes when its holder process is stopped.

    ns = Netns.start()
    cluster = start_cluster(ns, slots=2)       # cluster.rest: "127.0.0.1:PORT", for --flink_master
    subprocess.run(ns.command([python, "-m", "pipelines.cli", "run", "--runner", "FlinkRunner",
                               "--flink_master", cluster.rest, ...]))
    cluster.stop(); ns.stop()
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipelines import jars
from pipelines.local_stack import HOST, Server, free_port, start_server

# Flink's own start scripts pass these on Java 17 (its serializers reach into the JDK's classes).
JAVA17_OPENS = [f"--add-opens=java.base/{package}=ALL-UNNAMED" for package in (
    "java.lang", "java.lang.reflect", "java.io", "java.net", "java.nio", "java.text", "java.time", "java.util",
    "java.util.concurrent", "java.util.concurrent.atomic", "java.util.concurrent.locks", "sun.nio.ch")]
CLUSTER_READY_SECONDS = 90.0


@dataclass
class Netns:
    """A network namespace with loopback up, held by a sleeping process (its id names the namespace)."""

    holder: subprocess.Popen

    @classmethod
    def start(cls) -> "Netns":
        if shutil.which("unshare") is None or shutil.which("nsenter") is None:
            raise RuntimeError("unshare/nsenter (util-linux) are needed for a private network namespace")
        holder = subprocess.Popen(["unshare", "--net", "--", "sh", "-c", "ip link set lo up && exec sleep infinity"],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True,
                                  preexec_fn=_die_with_parent)
        ns = cls(holder)
        for _ in range(50):  # `ip link set lo up` takes a few ms
            up = subprocess.run(ns.command(["ip", "-o", "link", "show", "lo"]), capture_output=True, text=True)
            if "LOWER_UP" in up.stdout:
                return ns
            if holder.poll() is not None:
                raise RuntimeError(f"unshare --net failed (exit {holder.returncode}): a network namespace needs root")
            subprocess.run(["sleep", "0.05"])
        ns.stop()
        raise RuntimeError("loopback did not come up in the test network namespace")

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run inside the namespace (all else, files included, is shared with the host)."""
        return ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net", "--", *argv]

    def stop(self) -> None:
        if self.holder.poll() is None:
            self.holder.kill()
            self.holder.wait(10)


def _die_with_parent() -> None:
    """The holder gets SIGKILL when the process that started it dies, however it dies."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class FlinkCluster:
    jobmanager: Server
    taskmanagers: list[Server]
    rest: str  # HOST:PORT of the JobManager's REST endpoint (what --flink_master takes)
    conf_dir: Path

    def stop(self) -> None:
        for server in [*self.taskmanagers, self.jobmanager]:
            server.stop()
        shutil.rmtree(self.conf_dir, ignore_errors=True)

    def overview(self, ns: Netns) -> dict:
        """The JobManager's /overview (task managers, slots, jobs), asked from inside the namespace."""
        return json.loads(_rest_get(ns, self.rest, "/overview"))


def flink_conf(rpc_port: int, rest_port: int, slots: int) -> str:
    """Every Flink server on 127.0.0.1: JobManager RPC and REST, blob server, TaskManager RPC and data."""
    return "\n".join([
        f"jobmanager.rpc.address: {HOST}", f"jobmanager.rpc.port: {rpc_port}", f"jobmanager.bind-host: {HOST}",
        f"rest.address: {HOST}", f"rest.bind-address: {HOST}", f"rest.port: {rest_port}",
        f"taskmanager.host: {HOST}", f"taskmanager.bind-host: {HOST}",
        f"taskmanager.numberOfTaskSlots: {slots}", f"parallelism.default: {slots}",
        "jobmanager.memory.process.size: 1024m", "taskmanager.memory.process.size: 1536m",
        "taskmanager.memory.network.min: 256m", "taskmanager.memory.network.max: 256m",
        "taskmanager.network.sort-shuffle.min-buffers: 64",  # Beam runs many blocking shuffles at once
        "execution.checkpointing.interval: 0", ""])


def start_cluster(ns: Netns, slots: int = 2) -> FlinkCluster:
    """A JobManager and one TaskManager with `slots` slots, in `ns`; waits until the TaskManager has
    registered (bounded)."""
    jars.ensure([jars.FLINK_CLUSTER])
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("java is not on PATH: Flink needs a JVM")
    rpc_port, rest_port = free_port(), free_port()
    conf_dir = Path(tempfile.mkdtemp(prefix="flink-conf-"))
    (conf_dir / "flink-conf.yaml").write_text(flink_conf(rpc_port, rest_port, slots))
    jvm = [java, *JAVA17_OPENS, "-cp", jars.FLINK_CLUSTER.classpath()]
    heap, dynamic = _resource_params(jvm, conf_dir, "GET_JM_RESOURCE_PARAMS")
    jobmanager = start_server("flink-jobmanager", ns.command(
        [*jvm, *heap, "org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint",
         "--configDir", str(conf_dir), *dynamic]), rest_port,
        lambda address: _rest_get(ns, address, "/config") is not None, timeout=CLUSTER_READY_SECONDS)
    try:
        heap, dynamic = _resource_params(jvm, conf_dir, "GET_TM_RESOURCE_PARAMS")
        taskmanager = start_server("flink-taskmanager", ns.command(
            [*jvm, *heap, "org.apache.flink.runtime.taskexecutor.TaskManagerRunner", "--configDir", str(conf_dir),
             *dynamic]), rest_port,
            lambda address: json.loads(_rest_get(ns, address, "/overview"))["taskmanagers"] >= 1,
            timeout=CLUSTER_READY_SECONDS)
    except Exception:
        jobmanager.stop()
        raise
    return FlinkCluster(jobmanager, [taskmanager], f"{HOST}:{rest_port}", conf_dir)


def _resource_params(jvm: list[str], conf_dir: Path, command: str) -> tuple[list[str], list[str]]:
    """The JVM memory flags and `-D` settings Flink's start scripts derive from the configuration
    (BashJavaUtils, as `jobmanager.sh`/`taskmanager.sh` call it): a TaskManager refuses to start
    without its derived CPU and memory settings."""
    done = subprocess.run([*jvm, "org.apache.flink.runtime.util.bash.BashJavaUtils", command, "--configDir",
                           str(conf_dir)], capture_output=True, text=True, timeout=60, check=True)
    prefix = "BASH_JAVA_UTILS_EXEC_RESULT:"
    results = [line[len(prefix):] for line in done.stdout.splitlines() if line.startswith(prefix)]
    return results[0].split(), results[1].split()


def _rest_get(ns: Netns, address: str, path: str) -> str:
    """GET over loopback inside the namespace (this test process lives outside it)."""
    done = subprocess.run(ns.command(["python3", "-c", "import sys, urllib.request; sys.stdout.write("
                                      f"urllib.request.urlopen('http://{address}{path}', timeout=3).read().decode())"]),
                          capture_output=True, text=True, timeout=15)
    if done.returncode != 0:
        raise ConnectionError(done.stderr.strip()[-300:])
    return done.stdout
