"""Which runner a job runs on, and what that runner needs: the FnApiRunner for batch, the
BundleBasedDirectRunner for a stream, or Flink with `--runner FlinkRunner` (an embedded Flink cluster,
or the one `--flink_master HOST:PORT` names).

On Flink the Python code runs in SDK workers. Locally (an embedded cluster, or one whose master is on
this machine) that is a worker pool inside this process, which we start ourselves on 127.0.0.1: Beam's
own LOOPBACK pool listens on every interface. A cluster elsewhere keeps Beam's default (a Docker
container per TaskManager) unless `--environment_type` says otherwise (docs/flink.md).
"""
from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
from typing import Iterator
from urllib.parse import urlparse

from apache_beam.options.pipeline_options import (DebugOptions, FlinkRunnerOptions, PipelineOptions, PortableOptions,
                                                  StandardOptions)

from pipelines import jars
from pipelines.options import exact_names
from pipelines.runner_tuning import BATCH_RUNNER, STREAMING_RUNNER

FLINK_RUNNER = "FlinkRunner"
RUNNER_NAMES = {"FnApiRunner": BATCH_RUNNER}  # as newer Beams (and our docs) call it
EMBEDDED_FLINK = ("[auto]", "[local]")
_LOGGER = logging.getLogger(__name__)
# A stream's bundles on Flink close after this long (Beam's default: 1 s). Each step's output watermark
# waits for its open bundle and a key's flush waits for the watermark, so Beam's second was paid at
# every step: 5,000 records of backlog drained at ~400/s and produce-to-row took 7.6 s (p50) at 200/s;
# with 100 ms, ~640-760/s and 2.1 s (docs/scaling.md). Shorter bundles cost more per record.
FLINK_STREAM_BUNDLE_MILLIS = 100


class FlinkStreamOptions(PipelineOptions):
    """Flink's checkpointing and recovery settings (Beam's Java FlinkPipelineOptions, which Beam's
    Python FlinkRunner passes to the job server only when they are declared here)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        exact_names(parser)
        parser.add_argument(
            "--checkpointing_interval", type=int, default=None, metavar="MS",
            help="Flink: take a checkpoint (Kafka offsets and every key's state) every MS milliseconds; "
                 "a failed job restarts from the last one. Default: none (a failure loses the job).")
        parser.add_argument(
            "--state_backend", choices=("filesystem", "rocksdb"), default=None,
            help="Flink: where keyed state lives (filesystem: the heap; rocksdb: local disk, for state larger "
                 "than memory). Needs --state_backend_storage_path. Default: Flink's (the heap).")
        parser.add_argument(
            "--state_backend_storage_path", default=None, metavar="URI",
            help="Flink: where checkpoints are written, e.g. file:///var/flink/checkpoints or s3://...")
        parser.add_argument(
            "--retain_externalized_checkpoints_on_cancellation", action="store_true", default=None,
            help="Flink: keep the last checkpoint when the job is cancelled or dies, to start a new job "
                 "from it (--savepoint_path).")
        parser.add_argument(
            "--savepoint_path", default=None, metavar="URI",
            help="Flink: start from this savepoint or retained checkpoint (the analogue of Dataflow's "
                 "--update: same transform names, the state carried over).")
        parser.add_argument(
            "--number_of_execution_retries", type=int, default=None,
            help="Flink: restarts after a failure before the job fails. Default: Flink's (unbounded "
                 "with checkpointing).")
        parser.add_argument(
            "--execution_retry_delay", type=int, default=None, metavar="MS",
            help="Flink: milliseconds between a failure and the restart.")
        parser.add_argument(
            "--max_bundle_size", type=int, default=None, metavar="N",
            help="Flink: the most elements in one bundle sent to the Python workers. Default: Beam's (1,000).")
        parser.add_argument(
            "--max_bundle_time_mills", type=int, default=None, metavar="MS",
            help="Flink: the longest a bundle stays open; a step's output watermark waits for its open bundle, "
                 "so this adds to the time from produce to row at each step. Default: 100 for a stream, "
                 "else Beam's (1,000).")


def choose_runner(options: PipelineOptions, argv) -> str:
    """Sets the runner (the default for batch or stream unless `--runner` is given) and, for Flink, its
    defaults; returns the runner's name."""
    standard = options.view_as(StandardOptions)
    standard.runner = RUNNER_NAMES.get(standard.runner, standard.runner) or (
        STREAMING_RUNNER if standard.streaming else BATCH_RUNNER)
    portable = options.view_as(PortableOptions)
    if not any(flag.startswith("--output_executable_path") for flag in (sys.argv[1:] if argv is None else argv)):
        # Beam 2.62 parses each options view allowing abbreviations, so our `--output DIR` also reads as
        # --output_executable_path DIR: a portable runner would then write a jar there instead of running.
        portable.output_executable_path = None
    stream_options = options.view_as(FlinkStreamOptions)
    if is_flink(standard.runner) and standard.streaming and stream_options.max_bundle_time_mills is None:
        stream_options.max_bundle_time_mills = FLINK_STREAM_BUNDLE_MILLIS
    own_job_server = not (portable.job_endpoint or options.view_as(FlinkRunnerOptions).flink_job_server_jar)
    if is_flink(standard.runner) and own_job_server:
        jars.ensure([jars.JOB_SERVER], log=lambda line: print(line, file=sys.stderr))  # Beam starts it from its cache
    return standard.runner


def is_flink(runner: str) -> bool:
    return runner.rsplit(".", 1)[-1] == FLINK_RUNNER


def local_workers(options: PipelineOptions) -> bool:
    """The SDK workers run in this process: Flink's master is embedded or on this machine, and no
    `--environment_type` chooses otherwise."""
    if options.view_as(PortableOptions).environment_type:
        return False
    master = options.view_as(FlinkRunnerOptions).flink_master
    if master in EMBEDDED_FLINK:
        return True
    host = urlparse(master if "://" in master else f"//{master}").hostname or ""
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


_SDK_THREADS = ("run_worker_", "read_grpc_client_inputs", "read_state")  # Beam's SDK harness threads


def _one_line_for_lost_runner(previous=None):
    """Beam's SDK worker threads die with a full gRPC traceback each (30 lines, several threads) when the
    runner closes their connection: a job that ended or was cancelled, or Flink restarting a task. Said
    in one line instead; any other thread exception is reported as before."""
    import grpc

    previous = previous or threading.excepthook

    def hook(args):
        lost = isinstance(args.exc_value, grpc.RpcError) and args.exc_value.code() in (
            grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        if lost and args.thread is not None and args.thread.name.startswith(_SDK_THREADS):
            _LOGGER.warning("SDK worker: the runner closed its connection (%s: the job ended, or Flink restarted "
                            "a task)", args.exc_value.details())
            return
        previous(args)

    hook.installed = True
    return hook


@contextlib.contextmanager
def runner_services(options: PipelineOptions, runner: str) -> Iterator[None]:
    """What the runner needs beside it for one run: on Flink with local workers, the SDK worker pool
    on 127.0.0.1 (stopped when the run ends); on the embedded cluster, its Flink configuration."""
    if not is_flink(runner):
        yield
        return
    with embedded_flink_conf(options), (_worker_pool(options) if local_workers(options) else contextlib.nullcontext()):
        yield


FLINK_CONF_FILES = ("config.yaml", "flink-conf.yaml")  # Flink 1.19 reads the first that exists


@contextlib.contextmanager
def embedded_flink_conf(options: PipelineOptions) -> Iterator[None]:
    """For a job on the embedded cluster with `--savepoint_path`: Beam 2.62 applies that option only when
    it submits to a remote cluster (FlinkExecutionEnvironments); the embedded cluster takes its Flink
    configuration from FLINK_CONF_DIR, read by the job server Beam starts for this run, so the restore
    goes there (`execution.savepoint.path`, beside the user's own configuration if FLINK_CONF_DIR is set)."""
    savepoint = options.view_as(FlinkStreamOptions).savepoint_path
    if not savepoint or options.view_as(FlinkRunnerOptions).flink_master not in EMBEDDED_FLINK:
        yield
        return
    user_dir = os.environ.get("FLINK_CONF_DIR")
    with tempfile.TemporaryDirectory(prefix="flink-conf-") as conf_dir:
        if user_dir:
            shutil.copytree(user_dir, conf_dir, dirs_exist_ok=True)
        name = next((n for n in FLINK_CONF_FILES if os.path.exists(os.path.join(conf_dir, n))), FLINK_CONF_FILES[1])
        with open(os.path.join(conf_dir, name), "a") as conf:
            conf.write(f"\nexecution.savepoint.path: {savepoint}\n")
        os.environ["FLINK_CONF_DIR"] = conf_dir
        try:
            yield
        finally:
            if user_dir is None:
                os.environ.pop("FLINK_CONF_DIR", None)
            else:
                os.environ["FLINK_CONF_DIR"] = user_dir


@contextlib.contextmanager
def _worker_pool(options: PipelineOptions) -> Iterator[None]:
    """Beam's SDK worker pool in this process, on 127.0.0.1 (Beam's own LOOPBACK pool binds `[::]`)."""
    from apache_beam.portability.api import beam_fn_api_pb2_grpc
    from apache_beam.runners.worker import sdk_worker_main, worker_pool_main
    from apache_beam.utils import thread_pool_executor
    import grpc

    if not getattr(threading.excepthook, "installed", False):  # once: the threads may outlive the run
        threading.excepthook = _one_line_for_lost_runner()
    experiments = options.view_as(DebugOptions).experiments or []
    pool = worker_pool_main.BeamFnExternalWorkerPoolServicer(
        state_cache_size=sdk_worker_main._get_state_cache_size_bytes(options=options),
        data_buffer_time_limit_ms=sdk_worker_main._get_data_buffer_time_limit_ms(experiments))
    server = grpc.server(thread_pool_executor.shared_unbounded_instance(),
                         options=[("grpc.http2.max_pings_without_data", 0), ("grpc.http2.max_ping_strikes", 0)])
    port = server.add_insecure_port("127.0.0.1:0")
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    server.start()
    portable = options.view_as(PortableOptions)
    portable.environment_type, portable.environment_config = "EXTERNAL", f"127.0.0.1:{port}"
    try:
        yield
    finally:
        server.stop(1)
        portable.environment_type = portable.environment_config = None
