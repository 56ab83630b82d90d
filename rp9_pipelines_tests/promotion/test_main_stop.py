"""How a cutover stops the main it replaces: SIGTERM, then killed once its queue is drained
after the grace (n8n's shutdown outlasted its 1 s timeout whenever an execution it queued still
ran), never before the grace, and not at all when it exits by itself. A hand-written engine:
the decision, not Docker, is under test (the end-to-end tests fail on any request lost)."""

import threading
import time
from types import SimpleNamespace
from typing import cast

from rp9_pipelines.services import promotion
from rp9_pipelines.services.promotion import MAIN_GRACE_S, MAIN_STOP_TIMEOUT_S


class Engine:
    """A main that takes `exits_after_s` to exit on SIGTERM; a stop with a shorter timeout than
    that kills it then (as Docker does); a second stop with 0 kills it at once."""

    def __init__(self, exits_after_s: float) -> None:
        self.exits_after_s = exits_after_s
        self.asked = time.monotonic()
        self.killed_at: float | None = None
        self.gone = threading.Event()
        self.stops: list[int | None] = []

    def stop(self, name: str, timeout_s: int | None = None) -> None:
        self.stops.append(timeout_s)
        if len(self.stops) == 1:
            self.asked = time.monotonic()
            assert timeout_s is not None
            if self.gone.wait(min(self.exits_after_s, timeout_s)):
                return
            if timeout_s < self.exits_after_s:
                self.killed_at = time.monotonic() - self.asked
            self.gone.set()
        else:
            self.killed_at = time.monotonic() - self.asked
            self.gone.set()


def _stop(engine: Engine, drained: bool) -> float:
    resources = cast(
        promotion.PromotionResources, SimpleNamespace(stack=SimpleNamespace(docker_runtime=engine))
    )
    started = time.monotonic()
    promotion.stop_main(resources, "rp9-t-blue-main", lambda: drained)
    return time.monotonic() - started


def test_a_main_still_shutting_down_is_killed_once_drained_after_the_grace() -> None:
    engine = Engine(exits_after_s=30)
    took = _stop(engine, drained=True)
    assert engine.stops == [MAIN_STOP_TIMEOUT_S, 0]
    assert engine.killed_at is not None
    assert MAIN_GRACE_S <= engine.killed_at < MAIN_STOP_TIMEOUT_S
    assert took < MAIN_STOP_TIMEOUT_S


def test_a_main_whose_queue_still_runs_gets_its_whole_timeout() -> None:
    engine = Engine(exits_after_s=30)
    _stop(engine, drained=False)
    assert engine.stops == [MAIN_STOP_TIMEOUT_S]  # no early kill: the engine's, at the timeout
    assert engine.killed_at is not None
    assert engine.killed_at >= MAIN_STOP_TIMEOUT_S


def test_a_main_that_exits_by_itself_is_not_killed() -> None:
    engine = Engine(exits_after_s=0.1)
    took = _stop(engine, drained=True)
    assert engine.stops == [MAIN_STOP_TIMEOUT_S]
    assert engine.killed_at is None
    assert took < MAIN_GRACE_S
