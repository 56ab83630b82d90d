"""Container sampling: one reading of every running rp9-managed container (cumulative CPU time
and memory in use, as the Docker Engine reports them), recorded in `resource_samples`."""

import concurrent.futures
import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import docker
from docker.errors import APIError, NotFound
from docker.models.containers import Container

from rp9_pipelines.catalog.usage import SampleRow
from rp9_pipelines.domain.stack import LABEL_MANAGED, LABEL_TENANT


@dataclass(frozen=True)
class Reading:
    tenant: str  # slug, from the container's label
    container: str
    at: dt.datetime
    cpu_total_ns: int
    memory_bytes: int


def parse_docker_time(value: str) -> dt.datetime:
    """Docker's RFC 3339 timestamps carry nanoseconds; Python takes microseconds."""
    stamp = value.rstrip("Z")
    if "." in stamp:
        whole, fraction = stamp.split(".", 1)
        stamp = f"{whole}.{fraction[:6].ljust(6, '0')}"
    return dt.datetime.fromisoformat(stamp).replace(tzinfo=dt.UTC)


def memory_in_use(memory_stats: Mapping[str, Any]) -> int:
    """What `docker stats` shows: usage minus the inactive page cache (cgroup v2 reports
    `inactive_file`, v1 `total_inactive_file`)."""
    usage = int(memory_stats.get("usage") or 0)
    stats = memory_stats.get("stats") or {}
    inactive = stats.get("inactive_file", stats.get("total_inactive_file", 0)) or 0
    return max(usage - int(inactive), 0)


def reading(container: Container, tenant: str) -> Reading | None:
    """One sample; None when the container stopped meanwhile."""
    try:
        raw: dict[str, Any] = container.stats(stream=False, one_shot=True)
    except (NotFound, APIError):
        return None
    cpu = (raw.get("cpu_stats") or {}).get("cpu_usage") or {}
    if "total_usage" not in cpu or not raw.get("read") or raw["read"].startswith("0001-"):
        return None  # a container that is not running reports zeros
    return Reading(
        tenant=tenant,
        container=container.name or str(container.id),
        at=parse_docker_time(raw["read"]),
        cpu_total_ns=int(cpu["total_usage"]),
        memory_bytes=memory_in_use(raw.get("memory_stats") or {}),
    )


def read_all(client: docker.DockerClient, *, parallel: int = 8) -> list[Reading]:
    """Every running container labelled as a tenant's, read in parallel."""
    containers = client.containers.list(filters={"label": [f"{LABEL_MANAGED}=true"]})
    labelled = [(c, c.labels.get(LABEL_TENANT)) for c in containers]
    labelled = [(c, tenant) for c, tenant in labelled if tenant]
    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        found = pool.map(lambda pair: reading(*pair), labelled)
        return [r for r in found if r is not None]


def rows_for(readings: list[Reading], tenant_ids: Mapping[str, uuid.UUID]) -> list[SampleRow]:
    """Readings of containers whose tenant is in the catalog, as rows."""
    return [
        SampleRow(tenant_ids[r.tenant], r.container, r.at, r.cpu_total_ns, r.memory_bytes)
        for r in readings
        if r.tenant in tenant_ids
    ]
