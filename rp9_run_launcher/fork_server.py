"""A process that has already imported the code location and forks one child per run.

Dagster's default launcher asks the code server to *spawn* a fresh interpreter for every run,
which imports dagster and the whole code location again: about two seconds before the first op
of an interactive job (a tenant's provision) can start. This server pays that once: it imports
the code pointers it is given, builds their definitions, then waits on a Unix socket. For each
run it forks a child that executes the run exactly as `dagster api execute_run` would
(`_execute_run_command_body`: the "Started process" engine event, the run's events, the exit
code), from a copy of memory that already holds everything.

Started as `python -m rp9_run_launcher.fork_server SOCKET READY_FD POINTER...`; it writes
"ready <pid>" to READY_FD once the pointers are loaded and the socket listens.

Protocol: one JSON line per connection, `{"run_id", "instance_ref"}` (the serialized
`InstanceRef`); the answer is `{"pid": N}`, or `{"stale": true}` when a preloaded source file
changed since it was loaded (the server then exits, and the launcher starts a fresh one), or
`{"error": "..."}`.

The server forks from a single thread with no open connection, so the child inherits no lock
or socket it could trip on. It reaps its children, and exits when the process that started it
is gone; runs in flight carry on without it.
"""

import importlib
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

POLL_S = 1.0
PID_TAG = "rp9/run_pid"
HOST_TAG = "rp9/run_host"
STARTED_TAG = "rp9/run_process_started"
# Imported by every run (Dagster defers them until first use): loaded here, not in each fork.
RUN_MODULES = [
    "dagster._cli.api",
    "dagster._cli.utils",
    "dagster._core.execution.api",
    "dagster._utils.interrupts",
    "dagster_postgres",
]


def preload(pointers: list[str]) -> dict[str, float]:
    """Import what executing a run needs and build each `module:attribute` pointer's repository
    once (importing every module under `defs/`, warming Dagster's own caches); returns the
    modification time of every source file of the pointers' top-level packages, to detect a
    later edit."""
    for module_name in RUN_MODULES:
        importlib.import_module(module_name)
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    for pointer in pointers:
        module_name, _, attribute = pointer.partition(":")
        if attribute:
            ReconstructableRepository.for_module(
                module_name, attribute, working_directory=os.getcwd()
            ).get_definition()
        else:
            importlib.import_module(module_name)
    packages = {pointer.partition(":")[0].split(".")[0] for pointer in pointers}
    return source_mtimes(packages)


def source_mtimes(packages: set[str]) -> dict[str, float]:
    mtimes: dict[str, float] = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and name.split(".")[0] in packages:
            try:
                mtimes[path] = os.stat(path).st_mtime
            except OSError:
                mtimes[path] = -1.0
    return mtimes


def changed(mtimes: dict[str, float]) -> bool:
    for path, mtime in mtimes.items():
        try:
            if os.stat(path).st_mtime != mtime:
                return True
        except OSError:
            return True
    return False


def process_start_time(pid: int | str) -> str:
    """The kernel's start time of a process (clock ticks since boot): with the pid, it tells a
    process apart from a later one that got the same pid."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[19]


def execute_run(run_id: str, serialized_instance_ref: str) -> int:
    """In the forked child: record which process runs it, then run it as `dagster api
    execute_run` does; returns the exit code.

    The tags are written here, before the run's first status event, and not by the launcher:
    Dagster rewrites the whole stored run on a status event, so a tag written concurrently from
    another process could be lost."""
    from dagster._cli.api import _execute_run_command_body
    from dagster._cli.utils import get_instance_for_cli
    from dagster._core.instance.ref import InstanceRef
    from dagster._serdes import deserialize_value
    from dagster._utils.interrupts import capture_interrupts

    instance_ref = deserialize_value(serialized_instance_ref, InstanceRef)
    with capture_interrupts(), get_instance_for_cli(instance_ref=instance_ref) as instance:
        pid = os.getpid()
        instance.add_run_tags(
            run_id,
            {
                PID_TAG: str(pid),
                HOST_TAG: socket.gethostname(),
                STARTED_TAG: process_start_time(pid),
            },
        )
        return _execute_run_command_body(
            run_id, instance, lambda _event: None, set_exit_code_on_failure=True
        )


def fork_run(
    run_id: str, instance_ref: str, listener: socket.socket, connection: socket.socket
) -> int:
    pid = os.fork()
    if pid:
        return pid
    # The child: nothing of the server's survives but the loaded modules.
    code = 1
    try:
        listener.close()
        # The accepted connection: its makefile() keeps socket.close() from closing the fd.
        os.close(connection.fileno())
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        code = execute_run(run_id, instance_ref)
    except BaseException as error:
        print(f"run {run_id}: {type(error).__name__}: {error}", file=sys.stderr)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return -1  # unreachable


def reap() -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def handle(
    connection: socket.socket, listener: socket.socket, is_stale: Callable[[], bool]
) -> bool:
    """Serve one request; returns False when the server should exit."""
    with connection, connection.makefile("rwb") as stream:
        line = stream.readline()
        try:
            request = json.loads(line)
            run_id, instance_ref = str(request["run_id"]), str(request["instance_ref"])
            if is_stale():
                stream.write(b'{"stale": true}\n')
                stream.flush()
                return False
            answer: dict[str, Any] = {"pid": fork_run(run_id, instance_ref, listener, connection)}
        except (ValueError, KeyError, OSError) as error:
            answer = {"error": f"{type(error).__name__}: {error}"}
        stream.write(json.dumps(answer).encode() + b"\n")
        stream.flush()
    return True


def serve(socket_path: str, ready_fd: int, pointers: list[str]) -> None:
    parent = os.getppid()
    # Ctrl-C of the process that started us reaches the runs themselves; the server goes when
    # its parent does.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    mtimes = preload(pointers)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    os.chmod(socket_path, 0o600)
    listener.listen(16)
    listener.settimeout(POLL_S)
    # "ready" on a pipe of its own: whatever the code location prints goes to stdout as usual.
    os.write(ready_fd, f"ready {os.getpid()}\n".encode())
    os.close(ready_fd)
    try:
        while os.getppid() == parent:
            reap()
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            connection.settimeout(30)
            try:
                if not handle(connection, listener, lambda: changed(mtimes)):
                    break
            except OSError as error:  # a launcher that went away mid-request
                print(f"run server: request dropped: {error}", file=sys.stderr, flush=True)
    finally:
        listener.close()
        Path(socket_path).unlink(missing_ok=True)


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
