"""Catalog queries about tenants, their quotas and their containers."""

import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from rp9_pipelines.catalog.tables import plans, quotas, tenant_instances, tenants
from rp9_pipelines.domain.tenants import Limits, TenantNames, Tier, effective_limits

QUOTA_FIELDS = (
    "executions_per_month",
    "concurrency",
    "cpu",
    "memory_mb",
    "min_workers",
    "max_workers",
    "overage_allowed",
)


@dataclass(frozen=True)
class Tenant:
    id: uuid.UUID
    slug: str
    name: str
    plan: str
    tier: Tier
    status: str
    region: str
    custom_domain: str | None
    n8n_version: str
    workers: int
    last_error: str | None
    created_at: Any
    updated_at: Any
    secrets_issued_at: Any = None
    color: str = "blue"

    @property
    def names(self) -> TenantNames:
        return TenantNames(self.slug, self.tier)

    def public(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "slug": self.slug,
            "name": self.name,
            "plan": self.plan,
            "tier": self.tier,
            "status": self.status,
            "region": self.region,
            "custom_domain": self.custom_domain,
            "n8n_version": self.n8n_version,
            "workers": self.workers,
            "last_error": self.last_error,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def _tenant(row: sa.Row[Any]) -> Tenant:
    return Tenant(**{field: getattr(row, field) for field in Tenant.__dataclass_fields__})


def get_tenant(connection: sa.Connection, ref: str | uuid.UUID) -> Tenant | None:
    """By UUID or by slug; deleted tenants are still found (their history stays)."""
    try:
        condition = tenants.c.id == uuid.UUID(str(ref))
    except ValueError:
        condition = tenants.c.slug == str(ref)
    row = connection.execute(sa.select(tenants).where(condition)).first()
    return _tenant(row) if row else None


def require_tenant(connection: sa.Connection, ref: str | uuid.UUID) -> Tenant:
    """`get_tenant`, for callers that cannot go on without it."""
    tenant = get_tenant(connection, ref)
    if tenant is None:
        raise LookupError(f"tenant {ref} is not in the catalog")
    return tenant


def list_tenants(connection: sa.Connection, include_deleted: bool = False) -> list[Tenant]:
    query = sa.select(tenants).order_by(tenants.c.created_at)
    if not include_deleted:
        query = query.where(tenants.c.status != "deleted")
    return [_tenant(row) for row in connection.execute(query)]


def _quota_values(row: sa.Row[Any]) -> dict[str, Any]:
    return {field: getattr(row, field) for field in QUOTA_FIELDS}


def plan_limits(connection: sa.Connection, plan: str) -> dict[str, Any] | None:
    row = connection.execute(sa.select(plans).where(plans.c.name == plan)).first()
    return _quota_values(row) if row else None


def slug_taken(connection: sa.Connection, slug: str) -> bool:
    return (
        connection.execute(sa.select(tenants.c.id).where(tenants.c.slug == slug)).first()
        is not None
    )


def domain_taken(connection: sa.Connection, domain: str) -> bool:
    query = sa.select(tenants.c.id).where(
        tenants.c.custom_domain == domain, tenants.c.status != "deleted"
    )
    return connection.execute(query).first() is not None


def insert_tenant(connection: sa.Connection, values: dict[str, Any]) -> uuid.UUID:
    tenant_id: uuid.UUID = connection.execute(
        sa.insert(tenants).values(**values).returning(tenants.c.id)
    ).scalar_one()
    return tenant_id


def forget_tenant(connection: sa.Connection, tenant_id: uuid.UUID) -> None:
    """Undo `insert_tenant` (and its quotas) when nothing was launched for it."""
    connection.execute(sa.delete(quotas).where(quotas.c.tenant_id == tenant_id))
    connection.execute(sa.delete(tenants).where(tenants.c.id == tenant_id))


def set_quota(
    connection: sa.Connection, tenant_id: uuid.UUID, source: str, values: dict[str, Any]
) -> None:
    row = {"tenant_id": tenant_id, "source": source, **{f: values.get(f) for f in QUOTA_FIELDS}}
    statement = sa.dialects.postgresql.insert(quotas).values(**row)
    connection.execute(
        statement.on_conflict_do_update(
            constraint="uq_quotas_tenant_source",
            set_={**{f: statement.excluded[f] for f in QUOTA_FIELDS}, "updated_at": sa.func.now()},
        )
    )


def quota_overrides(
    connection: sa.Connection, tenant_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, dict[str, dict[str, Any]]]:
    """The quotas of each tenant by source (`plan`, `stripe`, `manual`), as
    `effective_limits` merges them; a tenant without any is left out."""
    query = sa.select(quotas).where(quotas.c.tenant_id.in_(list(tenant_ids)))
    overrides: dict[uuid.UUID, dict[str, dict[str, Any]]] = {}
    for row in connection.execute(query):
        overrides.setdefault(row.tenant_id, {})[row.source] = _quota_values(row)
    return overrides


def limits_of(
    connection: sa.Connection, tenant_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, Limits]:
    """Each tenant's effective limits in one query; a tenant without a plan quota yet (a row
    still being created) is left out."""
    found = {}
    for tenant_id, overrides in quota_overrides(connection, tenant_ids).items():
        try:
            found[tenant_id] = effective_limits(overrides)
        except KeyError:
            continue
    return found


def limits_for(connection: sa.Connection, tenant_id: uuid.UUID) -> Limits:
    return effective_limits(quota_overrides(connection, [tenant_id]).get(tenant_id, {}))


def update_tenant(connection: sa.Connection, tenant_id: uuid.UUID, **values: Any) -> None:
    connection.execute(
        sa.update(tenants)
        .where(tenants.c.id == tenant_id)
        .values(**values, updated_at=sa.func.now())
    )


def record_instance(
    connection: sa.Connection,
    tenant: Tenant,
    *,
    name: str,
    role: str,
    color: str,
    container_id: str | None,
    image: str,
    cpu: float,
    memory_mb: int,
    state: str,
) -> None:
    row = {
        "tenant_id": tenant.id,
        "role": role,
        "color": color,
        "container_name": name,
        "container_id": container_id,
        "image": image,
        "cpu_limit": cpu,
        "memory_limit_mb": memory_mb,
        "db_name": tenant.names.db_name,
        "db_schema": tenant.names.db_schema,
        "state": state,
    }
    statement = sa.dialects.postgresql.insert(tenant_instances).values(**row)
    updated: dict[str, Any] = {
        k: statement.excluded[k] for k in row if k not in {"tenant_id", "container_name"}
    }
    # A resize knows no container id: keep the one recorded at creation.
    updated["container_id"] = sa.func.coalesce(
        statement.excluded.container_id, tenant_instances.c.container_id
    )
    connection.execute(
        statement.on_conflict_do_update(
            index_elements=["container_name"], set_={**updated, "updated_at": sa.func.now()}
        )
    )


def set_instances_state(
    connection: sa.Connection, tenant_id: uuid.UUID, state: str, names: list[str] | None = None
) -> None:
    query = sa.update(tenant_instances).where(tenant_instances.c.tenant_id == tenant_id)
    if names is not None:
        query = query.where(tenant_instances.c.container_name.in_(names))
    else:
        query = query.where(tenant_instances.c.state != "removed")
    connection.execute(query.values(state=state, updated_at=sa.func.now()))


def set_instance_nodes(connection: sa.Connection, placed: Mapping[str, str]) -> list[str]:
    """The node each named instance runs on now; the names whose node changed."""
    changed = []
    for name, node in sorted(placed.items()):
        result = connection.execute(
            sa.update(tenant_instances)
            .where(
                tenant_instances.c.container_name == name,
                tenant_instances.c.node.is_distinct_from(node),
            )
            .values(node=node, updated_at=sa.func.now())
        )
        if result.rowcount:
            changed.append(name)
    return changed


def live_instances(connection: sa.Connection, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    query = (
        sa.select(tenant_instances)
        .where(tenant_instances.c.tenant_id == tenant_id, tenant_instances.c.state != "removed")
        .order_by(tenant_instances.c.container_name)
    )
    return [dict(row._mapping) for row in connection.execute(query)]


# pg_advisory_lock(int4, int4): the first key names what is locked, so other advisory locks on
# the server (the template builder's) never meet these.
TENANT_LOCK_NAMESPACE = 0x72703901


@contextmanager
def tenant_lock(engine: sa.Engine, tenant_id: uuid.UUID, *, wait: bool = True) -> Iterator[bool]:
    """Hold the tenant's lock while the block runs: every change to a tenant's stack (its jobs'
    ops, enforcement's suspensions and resumptions) takes it, so two never interleave. Yields
    whether it is held (`wait=False` does not queue: False when another holder has it). A
    session lock on its own connection: it outlives the block's transactions and goes with the
    session if the process dies."""
    key = int.from_bytes(tenant_id.bytes[:4], "big", signed=True)
    arguments = {"namespace": TENANT_LOCK_NAMESPACE, "key": key}
    with engine.connect() as connection:
        function = "pg_advisory_lock" if wait else "pg_try_advisory_lock"
        held = connection.execute(
            sa.text(f"SELECT pg_catalog.{function}(:namespace, :key)"), arguments
        ).scalar()
        held = held is not False
        connection.commit()
        try:
            yield held
        finally:
            if held:
                connection.execute(
                    sa.text("SELECT pg_catalog.pg_advisory_unlock(:namespace, :key)"), arguments
                )
                connection.commit()
