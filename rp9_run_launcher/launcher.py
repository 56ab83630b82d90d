"""`PreloadedRunLauncher`: runs start from a process that has the code location loaded already.

Configured in `dagster.yaml` (`run_launcher`). It lives wherever Dagster launches runs (the
daemon, behind the queued run coordinator) and keeps one `fork_server` child there, started on
the first launch. Each run is a fork of that server: the first op starts some tens of
milliseconds after the launch instead of the two seconds a fresh interpreter needs to import
dagster and the code location (what an interactive provision would otherwise wait for).

The run's process id and host are recorded as run tags, so termination from the UI or the API
(which happens in the webserver, another process) signals the run's process directly, and run
monitoring can tell a run whose process died.
"""

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from dagster import __version__ as dagster_version
from dagster import _check as check
from dagster._config.config_schema import UserConfigSchema
from dagster._core.launcher.base import (
    CheckRunHealthResult,
    LaunchRunContext,
    RunLauncher,
    WorkerStatus,
)
from dagster._core.storage.dagster_run import DagsterRun
from dagster._serdes import ConfigurableClass, serialize_value
from dagster._serdes.config_class import ConfigurableClassData

from rp9_run_launcher.fork_server import HOST_TAG, PID_TAG, STARTED_TAG

SERVER_MODULE = "rp9_run_launcher.fork_server"
# The launcher executes runs through Dagster's private `_execute_run_command_body` (what
# `dagster api execute_run` calls): only the versions it was tested on are accepted.
SUPPORTED_DAGSTER_VERSIONS = frozenset({"1.13.27"})
DEFAULT_PRELOAD = ["rp9_pipelines.definitions:defs"]
SERVER_START_TIMEOUT_S = 120.0


class RunServerError(RuntimeError):
    pass


class UnsupportedDagsterVersion(RuntimeError):
    pass


def check_dagster_version(version: str) -> None:
    """Refuse a Dagster this launcher was not tested on: its private run-execution API may have
    changed, and a run that fails half-way is worse than an instance that does not start."""
    if version not in SUPPORTED_DAGSTER_VERSIONS:
        supported = ", ".join(sorted(SUPPORTED_DAGSTER_VERSIONS))
        raise UnsupportedDagsterVersion(
            f"rp9_run_launcher supports Dagster {supported}, not {version}: remove `run_launcher`"
            " from dagster.yaml (Dagster's default launcher works) or test this one on it"
        )


class RunServer:
    """The `fork_server` child process and how to ask it for a run."""

    def __init__(self, preload: list[str]) -> None:
        self.preload = preload
        self.directory = Path(tempfile.mkdtemp(prefix="rp9-runs-"))
        self.socket_path = self.directory / "fork.sock"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.socket_path.unlink(missing_ok=True)
        ready_r, ready_w = os.pipe()
        try:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    SERVER_MODULE,
                    str(self.socket_path),
                    str(ready_w),
                    *self.preload,
                ],
                pass_fds=(ready_w,),
            )
        finally:
            os.close(ready_w)
        # "ready <pid>" once the code location is loaded and the socket listens; an end of file
        # if loading failed (its traceback goes to our stderr).
        with os.fdopen(ready_r, "rb") as ready:
            readable, _, _ = select.select([ready], [], [], SERVER_START_TIMEOUT_S)
            line = ready.readline().decode().strip() if readable else ""
        if not line.startswith("ready"):
            try:  # an end of file means it is exiting: take its exit code
                code: int | None = self.process.wait(timeout=10 if readable else 0)
            except subprocess.TimeoutExpired:
                code = None
            self.stop()
            why = (
                f"exited with code {code} while loading {', '.join(self.preload)}"
                if code is not None
                else f"was not ready after {SERVER_START_TIMEOUT_S:.0f} s"
            )
            raise RunServerError(f"the run server {why}; its traceback is in the daemon's log")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def fork(self, run_id: str, instance_ref: str) -> dict[str, Any]:
        request = json.dumps({"run_id": run_id, "instance_ref": instance_ref}).encode() + b"\n"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(30)
            try:
                connection.connect(str(self.socket_path))
            except (ConnectionRefusedError, FileNotFoundError):
                return {"stale": True}  # nobody listens any more: another server is needed
            # From here an error is not retried: the run may have been forked already.
            connection.sendall(request)
            with connection.makefile("rb") as stream:
                answer: dict[str, Any] = json.loads(stream.readline() or b"{}")
        return answer

    def stop(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


class PreloadedRunLauncher(RunLauncher, ConfigurableClass):
    def __init__(
        self, inst_data: ConfigurableClassData | None = None, preload: list[str] | None = None
    ) -> None:
        check_dagster_version(dagster_version)
        self._inst_data = inst_data
        self._preload = list(preload or DEFAULT_PRELOAD)
        self._server: RunServer | None = None
        self._lock = threading.Lock()
        super().__init__()  # type: ignore[no-untyped-call]

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> UserConfigSchema:
        return {"preload": [str]}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> Self:
        return cls(inst_data=inst_data, preload=config_value.get("preload"))

    def _fork(self, run_id: str) -> tuple[int, float]:
        """The run's process id, and the seconds the fork itself took."""
        instance_ref = serialize_value(self._instance.get_ref())
        with self._lock:
            for _attempt in range(2):
                if self._server is None or not self._server.alive():
                    if self._server is not None:
                        self._server.stop()
                    self._server = RunServer(self._preload)
                    self._server.start()
                started = time.monotonic()
                try:
                    answer = self._server.fork(run_id, instance_ref)
                except OSError as error:
                    raise RunServerError(f"run {run_id}: no answer from the run server") from error
                if "pid" in answer:
                    return int(answer["pid"]), time.monotonic() - started
                if not answer.get("stale"):
                    raise RunServerError(f"the run server refused run {run_id}: {answer}")
                # Its code changed on disk, or it is gone: a fresh server loads the code.
                self._server.stop()
                self._server = None
        raise RunServerError(f"no run server could start run {run_id}")

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        check.invariant(run.job_code_origin is not None, f"run {run.run_id} has no code origin")
        # The run's process records its own pid tags (fork_server.execute_run).
        pid, seconds = self._fork(run.run_id)
        self._instance.report_engine_event(
            f"Forked from the preloaded run server as pid {pid} in {1000 * seconds:.0f} ms.",
            run,
            cls=self.__class__,
        )

    def _local_pid(self, run: DagsterRun) -> int | None:
        """The run's process when it runs on this host and is still the process that started
        the run (same pid and kernel start time: not a later process that reused the pid)."""
        pid = run.tags.get(PID_TAG)
        if not pid or run.tags.get(HOST_TAG) != socket.gethostname():
            return None
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        if stat[0] == "Z" or stat[19] != run.tags.get(STARTED_TAG):
            return None
        return int(pid) if SERVER_MODULE.encode() in cmdline else None

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        pid = self._local_pid(run)
        if pid is None:
            self._instance.report_engine_event(
                "No running process of this run on this host to interrupt.",
                run,
                cls=self.__class__,
            )
            return False
        # Dagster's interrupt: the run stops at the next safe point and is marked canceled.
        os.kill(pid, signal.SIGINT)
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        # Run monitoring fails a started run on anything but RUNNING or SUCCESS: a run this
        # launcher cannot judge (started by another launcher or on another host) stays alone.
        if PID_TAG not in run.tags or run.tags.get(HOST_TAG) != socket.gethostname():
            return CheckRunHealthResult(
                WorkerStatus.RUNNING, "not a process of this host's run server"
            )
        if self._local_pid(run) is None:
            return CheckRunHealthResult(
                WorkerStatus.FAILED, f"run process {run.tags[PID_TAG]} is gone"
            )
        return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=run.tags[PID_TAG])

    def dispose(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.stop()
                self._server = None
