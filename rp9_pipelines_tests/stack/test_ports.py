"""The stack's listening ports lie in Linux's ephemeral range: `stack.sh up` reserves them, so
that a client's outgoing connection never holds one while its service restarts (a restarted
PostgREST could not bind 54330 again in a CI run: "Address in use")."""

from pathlib import Path
from urllib.parse import urlsplit

import pytest

from rp9_pipelines.settings import Settings

pytestmark = pytest.mark.stack

RESERVED = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")
EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ports(text: str) -> set[int]:
    ports: set[int] = set()
    for part in filter(None, text.strip().split(",")):
        low, _, high = part.partition("-")
        ports |= set(range(int(low), int(high or low) + 1))
    return ports


def test_every_port_of_the_stack_in_the_ephemeral_range_is_reserved(settings: Settings) -> None:
    urls = [
        settings.database_url,
        settings.redis_url,
        settings.vault_addr,
        settings.s3_endpoint_url,
        settings.prometheus_url,
        settings.supabase_url,
    ]
    ports = {urlsplit(url).port for url in urls if url}
    assert None not in ports, urls
    assert len(ports) == len(urls), urls
    low, high = map(int, EPHEMERAL.read_text().split())
    exposed = {p for p in ports if p is not None and low <= p <= high}
    assert exposed, "none of the stack's ports is in the ephemeral range: nothing to check"
    assert exposed <= _ports(RESERVED.read_text()), sorted(exposed - _ports(RESERVED.read_text()))


def test_reserved_ranges_read_as_ports() -> None:
    assert _ports("") == set()
    assert _ports("1000-1002,54330\n") == {1000, 1001, 1002, 54330}
