import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Health:
    """One external system's answer to a cheap liveness probe."""

    service: str
    ok: bool
    detail: str
    latency_ms: float


def probe(service: str, check: Callable[[], str]) -> Health:
    """Time `check` and turn any failure into an unhealthy answer: a probe never raises."""
    started = time.perf_counter()
    try:
        detail, ok = check(), True
    except Exception as error:
        first_line = (str(error).splitlines() or [""])[0]
        detail, ok = f"{type(error).__name__}: {first_line}"[:300], False
    return Health(service, ok, detail, round((time.perf_counter() - started) * 1000, 1))
