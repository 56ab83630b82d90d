"""The preloaded run launcher on a real Dagster instance: runs execute in forks of the run
server, terminate cancels them, run monitoring sees a dead run process, and an edited source file
makes the next launch load the code again."""

import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, DagsterRunStatus
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.launcher import WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.test_utils import instance_for_test

from rp9_pipelines_tests.conftest import ROOT
from rp9_pipelines_tests.run_launcher import sample_jobs
from rp9_pipelines_tests.waiting import wait_until
from rp9_run_launcher.fork_server import HOST_TAG, PID_TAG, STARTED_TAG
from rp9_run_launcher.launcher import (
    PreloadedRunLauncher,
    RunServer,
    RunServerError,
    UnsupportedDagsterVersion,
    check_dagster_version,
)

MODULE = "rp9_pipelines_tests.run_launcher.sample_jobs"


def preloading(pointer: str) -> dict[str, Any]:
    return {
        "run_launcher": {
            "module": "rp9_run_launcher.launcher",
            "class": "PreloadedRunLauncher",
            "config": {"preload": [pointer]},
        }
    }


@pytest.fixture(scope="module")
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test(overrides=preloading(f"{MODULE}:defs")) as instance:
        yield instance
        instance.run_launcher.dispose()


OPS = {"hello": "write_pid", "long_running": "wait_for_file"}


def launch(instance: DagsterInstance, job: str, marker: Path) -> DagsterRun:
    repository = ReconstructableRepository.for_module(MODULE, "defs", working_directory=str(ROOT))
    recon_job = repository.get_reconstructable_job(job)
    run = instance.create_run_for_job(
        job_def=recon_job.get_definition(),
        run_config={"ops": {OPS[job]: {"config": {"path": str(marker)}}}},
        job_code_origin=recon_job.get_python_origin(),
    )
    instance.launch_run(run.run_id, workspace=None)  # type: ignore[arg-type]
    return run


def run_to_end(instance: DagsterInstance, job: str, marker: Path) -> DagsterRun:
    run = launch(instance, job, marker)
    return wait_until(lambda: finished(instance, run.run_id), timeout_s=120, what=f"run {job}")


def process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def finished(instance: DagsterInstance, run_id: str) -> DagsterRun | None:
    run = instance.get_run_by_id(run_id)
    return run if run is not None and run.is_finished else None


def reloaded(instance: DagsterInstance, run_id: str) -> DagsterRun:
    run = instance.get_run_by_id(run_id)
    assert run is not None
    return run


def launcher(instance: DagsterInstance) -> PreloadedRunLauncher:
    run_launcher: Any = instance.run_launcher
    assert isinstance(run_launcher, PreloadedRunLauncher)
    return run_launcher


def server_pid(instance: DagsterInstance) -> int:
    server = launcher(instance)._server
    assert server is not None
    assert server.process is not None
    return server.process.pid


def test_a_run_executes_in_a_fork_of_the_run_server(
    instance: DagsterInstance, tmp_path: Path
) -> None:
    marker = tmp_path / "pid"
    done = run_to_end(instance, "hello", marker)
    assert done.status == DagsterRunStatus.SUCCESS
    pid = int(marker.read_text())
    assert pid == int(done.tags[PID_TAG])
    assert pid not in {os.getpid(), server_pid(instance)}
    messages = [e.message for e in instance.all_logs(done.run_id)]
    assert any("Forked from the preloaded run server" in m for m in messages), messages
    assert any(f"Started process for run (pid: {pid})" in m for m in messages), messages


def test_terminate_cancels_the_run_and_monitoring_sees_its_process(
    instance: DagsterInstance, tmp_path: Path
) -> None:
    run = launch(instance, "long_running", tmp_path / "never")
    wait_until(
        lambda: reloaded(instance, run.run_id).status == DagsterRunStatus.STARTED,
        timeout_s=60,
        what="the run to start",
    )
    started = reloaded(instance, run.run_id)
    assert launcher(instance).check_run_worker_health(started).status == WorkerStatus.RUNNING

    assert launcher(instance).terminate(run.run_id)
    done = wait_until(lambda: finished(instance, run.run_id), timeout_s=60, what="cancel")
    assert done.status == DagsterRunStatus.CANCELED
    pid = int(done.tags[PID_TAG])
    wait_until(
        lambda: (
            not Path(f"/proc/{pid}").exists()
            or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        ),
        timeout_s=30,
        what="the run process to exit",
    )
    assert launcher(instance).check_run_worker_health(done).status == WorkerStatus.FAILED
    assert not launcher(instance).terminate(run.run_id)  # finished: nothing to terminate


def test_a_killed_run_process_is_reported_failed(instance: DagsterInstance, tmp_path: Path) -> None:
    run = launch(instance, "long_running", tmp_path / "never")
    wait_until(
        lambda: reloaded(instance, run.run_id).status == DagsterRunStatus.STARTED,
        timeout_s=60,
        what="the run to start",
    )
    os.kill(int(reloaded(instance, run.run_id).tags[PID_TAG]), signal.SIGKILL)
    wait_until(
        lambda: (
            launcher(instance).check_run_worker_health(reloaded(instance, run.run_id)).status
            == WorkerStatus.FAILED
        ),
        timeout_s=30,
        what="the dead run process to be seen",
    )


def test_an_edited_source_file_loads_the_code_again(
    instance: DagsterInstance, tmp_path: Path
) -> None:
    run_to_end(instance, "hello", tmp_path / "first")
    before = server_pid(instance)
    source = Path(sample_jobs.__file__)
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    try:
        done = run_to_end(instance, "hello", tmp_path / "second")
    finally:
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert done.status == DagsterRunStatus.SUCCESS
    assert server_pid(instance) != before


def test_a_code_location_that_cannot_load_fails_the_run_with_a_clear_error(
    tmp_path: Path,
) -> None:
    with instance_for_test(overrides=preloading(f"{MODULE}_that_does_not_exist:defs")) as broken:
        with pytest.raises(RunServerError, match="exited with code 1 while loading"):
            launch(broken, "hello", tmp_path / "pid")
        [run] = broken.get_runs()
        assert run.status == DagsterRunStatus.FAILURE
        messages = [e.message for e in broken.all_logs(run.run_id)]
        assert any("the run server exited with code 1" in m for m in messages), messages
        assert not (tmp_path / "pid").exists()


def test_a_dead_run_server_is_replaced_at_the_next_launch(
    instance: DagsterInstance, tmp_path: Path
) -> None:
    run_to_end(instance, "hello", tmp_path / "first")
    before = server_pid(instance)
    os.kill(before, signal.SIGKILL)
    done = run_to_end(instance, "hello", tmp_path / "second")
    assert done.status == DagsterRunStatus.SUCCESS
    assert server_pid(instance) != before


def test_monitoring_judges_only_this_hosts_run_processes(instance: DagsterInstance) -> None:
    me = launcher(instance)
    here = {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
    started = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]

    def health(tags: dict[str, str]) -> WorkerStatus:
        return me.check_run_worker_health(DagsterRun(job_name="hello", tags=tags)).status

    # Started by another launcher, or on another host: not judged (monitoring would fail it).
    assert health({}) == WorkerStatus.RUNNING
    assert health({**here, HOST_TAG: "elsewhere", STARTED_TAG: started}) == WorkerStatus.RUNNING
    # A live process that is not a fork of the run server, or a pid reused by a later process.
    assert health({**here, STARTED_TAG: started}) == WorkerStatus.FAILED
    assert health({**here, STARTED_TAG: "1"}) == WorkerStatus.FAILED


def test_a_malformed_request_is_refused_and_the_server_keeps_serving() -> None:
    server = RunServer([f"{MODULE}:defs"])
    server.start()
    try:
        for request in (b"not json\n", b'{"run_id": "r1"}\n'):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
                connection.settimeout(30)
                connection.connect(str(server.socket_path))
                connection.sendall(request)
                answer = json.loads(connection.makefile("rb").readline())
            assert "error" in answer, answer
            assert "pid" not in answer
        assert server.alive()
    finally:
        server.stop()


def test_an_untested_dagster_version_is_refused_with_the_way_out() -> None:
    check_dagster_version("1.13.27")
    with pytest.raises(UnsupportedDagsterVersion, match="remove `run_launcher`"):
        check_dagster_version("1.14.0")
