"""Jobs the run-launcher tests execute through the fork server (they need a code pointer)."""

import os
import time
from pathlib import Path

import dagster as dg

# Output while the code location loads must not disturb the run server's start.
print("sample jobs loading")


class Marker(dg.Config):
    path: str


@dg.op
def write_pid(config: Marker) -> None:
    Path(config.path).write_text(str(os.getpid()))


@dg.op
def wait_for_file(config: Marker) -> None:
    """Runs until `path` exists (at most two minutes): a run to interrupt or kill."""
    deadline = time.monotonic() + 120
    while not Path(config.path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(config.path)
        time.sleep(0.1)


@dg.job(executor_def=dg.in_process_executor)
def hello() -> None:
    write_pid()


@dg.job(executor_def=dg.in_process_executor)
def long_running() -> None:
    wait_for_file()


defs = dg.Definitions(jobs=[hello, long_running])
