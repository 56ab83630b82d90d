"""Traefik lets a request the holder kept be answered as late as the holder allows: its
entrypoint's read timeout (60 s by default since Traefik 2.11.2, which closes the connection of
a request still unanswered then) is longer than the hold and the answer together. A CI run's
rollback under 20 webhooks/s lost a request that way, at 60.1 s."""

import re

import httpx
import pytest

from rp9_pipelines.api.routes.edge_hold import HOLD_LIMIT_S, SEND_ON_TIMEOUT_S
from rp9_pipelines.settings import Settings

UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def go_duration_s(text: str) -> float:
    """Seconds in a Go duration as Traefik's API writes it ("3m0s", "60s", "0s")."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Go duration: {text!r}")
    return sum(float(n) * UNITS[u] for n, u in parts)


def test_go_durations_are_read() -> None:
    assert go_duration_s("3m0s") == 180.0
    assert go_duration_s("1h2m3.5s") == 3723.5
    assert go_duration_s("250ms") == 0.25


@pytest.mark.stack
def test_the_tenants_entrypoint_waits_for_a_held_requests_answer(settings: Settings) -> None:
    answer = httpx.get(
        f"{settings.traefik_api_url}/api/entrypoints/{settings.traefik_entrypoint}", timeout=10
    )
    assert answer.status_code == 200, answer.text
    timeouts = answer.json()["transport"]["respondingTimeouts"]
    read = go_duration_s(timeouts.get("readTimeout", "60s"))
    assert read == 0 or read >= HOLD_LIMIT_S + SEND_ON_TIMEOUT_S, timeouts
