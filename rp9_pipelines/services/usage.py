"""The usage shells: gather a tenant-day's executions and container samples, call the pure
functions of `domain.usage`, write the results (catalog, Supabase); the container sampler, one
reading of every running rp9-managed container recorded in `resource_samples`."""

import concurrent.futures
import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import docker
from docker.errors import APIError, NotFound
from docker.models.containers import Container

from rp9_pipelines.catalog import billing as billing_catalog
from rp9_pipelines.catalog import tenants as tenant_catalog
from rp9_pipelines.catalog import usage as usage_catalog
from rp9_pipelines.catalog.tenants import Tenant
from rp9_pipelines.catalog.usage import SampleRow
from rp9_pipelines.domain.stack import LABEL_MANAGED, LABEL_TENANT
from rp9_pipelines.domain.tenants import TenantNames
from rp9_pipelines.domain.usage import (
    DayUsage,
    ExecutionDay,
    business_metrics_row,
    day_bounds,
    day_usage,
    resource_use,
    supabase_identifier,
)
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.n8n_data import N8nDataResource
from rp9_pipelines.resources.supabase import SupabaseResource

BUSINESS_METRICS_TABLE = "business_metrics_daily"
BUSINESS_METRICS_KEY = "tenant_id,day"
BUSINESS_METRICS_METRIC = "business_metrics"

Log = Callable[[str], None]


# The execution tally ----------------------------------------------------------------------


# Tenants whose executions are counted: suspended ones ran executions before they stopped.
TALLIED_STATUSES = frozenset({"active", "suspended"})


def tally_executions(
    catalog: CatalogResource,
    n8n_data: N8nDataResource,
    tenants: Sequence[tuple[uuid.UUID, TenantNames]],
) -> dict[str, str]:
    """Count the executions each tenant's n8n recorded since the platform last looked into
    `execution_tally`, once: deleting them in n8n afterwards does not lower metering or
    enforcement. Returns, by slug, the tenants that could not be read."""
    if not tenants:
        return {}
    with catalog.begin() as connection:
        marks = usage_catalog.tally_marks(connection, [tenant_id for tenant_id, _ in tenants])
    seen = [(names, marks.get(tenant_id, 0)) for tenant_id, names in tenants]
    new, errors = n8n_data.new_executions(seen)
    for tenant_id, names in tenants:
        found, mark = new.get(names.slug), marks.get(tenant_id, 0)
        if found is None or found.through_id <= mark:
            continue
        with catalog.begin() as connection:
            usage_catalog.add_to_tally(connection, tenant_id, mark, found.through_id, found.by_day)
    return errors


# Daily usage ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Collected:
    usage: DayUsage
    changed: bool
    samples: int
    # The tenant's n8n tables are gone (purged) while a row exists: the row was kept.
    kept_existing: bool = False


def collect_day(
    catalog: CatalogResource,
    n8n_data: N8nDataResource,
    tenant: Tenant,
    day: dt.date,
    max_gap: dt.timedelta,
) -> Collected:
    """Measure the tenant's day and upsert it into `usage` (idempotent). Its executions are the
    larger of what n8n still holds and what the platform tallied as they appeared."""
    tally_executions(catalog, n8n_data, [(tenant.id, tenant.names)])
    executions = n8n_data.execution_day(tenant.names, day)
    start, end = day_bounds(day)
    with catalog.begin() as connection:
        seen = usage_catalog.tallied(connection, [tenant.id], day).get(tenant.id, {}).get(day, 0)
        if executions is not None and seen > executions.executions:
            executions = dataclasses.replace(executions, executions=seen)
        samples = usage_catalog.samples_framing(connection, tenant.id, start, end)
        existing = usage_catalog.get_usage(connection, tenant.id, day)
        if executions is None and existing is not None:
            # Purged data must not erase what was measured (and billed) while it existed.
            kept = DayUsage(**{name: existing[name] for name in usage_catalog.USAGE_FIELDS})
            return Collected(kept, changed=False, samples=len(samples), kept_existing=True)
        figures = day_usage(
            executions or ExecutionDay(0, 0, 0, None, None),
            resource_use(samples, start, end, max_gap),
        )
        changed = usage_catalog.upsert_usage(connection, tenant.id, day, figures)
    return Collected(figures, changed, len(samples))


# Supabase -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pushed:
    row: dict[str, Any]
    identifier: str


def push_business_metrics(
    catalog: CatalogResource, supabase: SupabaseResource, tenant: Tenant, day: dt.date
) -> Pushed:
    """Upsert the tenant's day into Supabase, with a ledger row (pending → sent | failed)."""
    with catalog.begin() as connection:
        figures = usage_catalog.get_usage(connection, tenant.id, day)
    if figures is None:
        raise LookupError(f"no usage for {tenant.slug} on {day}: materialise tenant_usage_daily")
    row = business_metrics_row(str(tenant.id), tenant.slug, tenant.plan, day, figures)
    row["updated_at"] = dt.datetime.now(dt.UTC).isoformat()
    identifier = supabase_identifier(str(tenant.id), day)
    with catalog.begin() as connection:
        billing_catalog.write_pending(
            connection,
            billing_catalog.SUPABASE,
            tenant.id,
            day,
            BUSINESS_METRICS_METRIC,
            identifier,
            int(row["executions"]),
        )
    try:
        supabase.upsert(BUSINESS_METRICS_TABLE, [row], on_conflict=BUSINESS_METRICS_KEY)
    except Exception as error:
        with catalog.begin() as connection:
            billing_catalog.mark(
                connection,
                billing_catalog.SUPABASE,
                identifier,
                "failed",
                f"{type(error).__name__}: {error}",
            )
        raise
    with catalog.begin() as connection:
        billing_catalog.mark(connection, billing_catalog.SUPABASE, identifier, "sent")
    return Pushed(row, identifier)


# Sampling -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampled:
    containers: int
    recorded: int
    pruned: int
    unknown_tenants: list[str] = field(default_factory=list)


def sample_resources(
    catalog: CatalogResource, engines: list[Any], retention: dt.timedelta, prune: bool
) -> Sampled:
    """Read every tenant container of `engines` (the runtime's: one engine, or a Swarm's
    nodes) into the catalog's samples."""
    readings = [r for client in engines for r in read_all(client)]
    with catalog.begin() as connection:
        known = {t.slug: t.id for t in tenant_catalog.list_tenants(connection)}
        rows = rows_for(readings, known)
        recorded = usage_catalog.insert_samples(connection, rows)
        pruned = (
            usage_catalog.prune_samples(connection, dt.datetime.now(dt.UTC) - retention)
            if prune
            else 0
        )
    unknown = sorted({r.tenant for r in readings if r.tenant not in known})
    return Sampled(len(readings), recorded, pruned, unknown)


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
