"""Synthetic tenants for the autoscaler's tests and benchmark, on the real servers: catalog rows,
Bull queues in Redis shaped as n8n leaves them, and `execution_entity` tables in Postgres."""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import redis
import sqlalchemy as sa
from psycopg import errors as pg_errors
from redis.typing import EncodableT, FieldT

from rp9_pipelines.catalog.tables import autoscaling_events, quotas, tenants
from rp9_pipelines.catalog.tenants import QUOTA_FIELDS, plan_limits
from rp9_pipelines.domain.tenants import SHARED_DATABASE, TenantNames


@dataclass(frozen=True)
class Synthetic:
    id: uuid.UUID
    slug: str
    tier: str = "shared"

    @property
    def names(self) -> TenantNames:
        return TenantNames(self.slug, "dedicated" if self.tier == "dedicated" else "shared")


def insert_tenants(
    engine: sa.Engine,
    slugs: Sequence[str],
    *,
    plan: str = "pro",
    workers: int = 1,
    tier: str = "shared",
    quota: dict[str, object] | None = None,
) -> list[Synthetic]:
    """Active tenants with their plan's quota row (and a manual one when `quota` is given)."""
    made = [Synthetic(uuid.uuid4(), slug, tier) for slug in slugs]
    with engine.begin() as connection:
        limits = plan_limits(connection, plan)
        assert limits is not None, plan
        if made:
            connection.execute(
                sa.insert(tenants),
                [
                    {
                        "id": t.id,
                        "slug": t.slug,
                        "name": "synthetic",
                        "plan": plan,
                        "tier": tier,
                        "status": "active",
                        "workers": workers,
                        "n8n_version": "2.20.12",
                    }
                    for t in made
                ],
            )
            rows = [{"tenant_id": t.id, "source": "plan", **limits} for t in made]
            if quota:
                rows += [
                    {
                        "tenant_id": t.id,
                        "source": "manual",
                        **{f: quota.get(f) for f in QUOTA_FIELDS},
                    }
                    for t in made
                ]
            connection.execute(sa.insert(quotas), rows)
    return made


def remove_tenants(engine: sa.Engine, ids: Sequence[uuid.UUID]) -> None:
    with engine.begin() as connection:
        for table in (autoscaling_events, quotas):
            connection.execute(sa.delete(table).where(table.c.tenant_id.in_(ids)))
        connection.execute(sa.delete(tenants).where(tenants.c.id.in_(ids)))


def fill_queue(
    client: redis.Redis, bull_prefix: str, *, waiting: int, active: int = 0, age_s: float = 0.0
) -> None:
    """Jobs as Bull leaves them: hashes with the producer's `timestamp` (the oldest `age_s` old,
    by Redis time), ids pushed on the left of `wait` (workers take from the right), and
    `active` ids with a `processedOn`."""
    seconds, micros = client.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    pipe = client.pipeline(transaction=False)
    total = waiting + active
    for job in range(1, total + 1):
        # Job 1 is the oldest; ages fall evenly to 0 for the newest.
        stamp = now_ms - int(age_s * 1000 * (total - job) / max(total - 1, 1))
        fields: dict[FieldT, EncodableT] = {
            "name": "job",
            "timestamp": stamp,
            "priority": 100,
            "data": "{}",
        }
        if job <= active:
            fields["processedOn"] = now_ms
            pipe.rpush(f"{bull_prefix}:jobs:active", job)
        else:
            pipe.lpush(f"{bull_prefix}:jobs:wait", job)
        pipe.hset(f"{bull_prefix}:jobs:{job}", mapping=fields)
    pipe.execute()


def clear_keys(client: redis.Redis, pattern: str) -> int:
    removed = 0
    for key in client.scan_iter(match=pattern, count=5000):
        removed += int(client.unlink(key))
    return removed


def ensure_database(admin: sa.Engine, database: str) -> None:
    with admin.connect() as connection:
        found = connection.execute(
            sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": database}
        ).scalar()
        if not found:
            try:
                connection.execute(sa.text(f'CREATE DATABASE "{database}"'))
            except sa.exc.ProgrammingError as error:  # created meanwhile by a provisioning
                if not isinstance(error.orig, pg_errors.DuplicateDatabase):
                    raise
            if database == SHARED_DATABASE:
                connection.execute(sa.text(f'REVOKE ALL ON DATABASE "{database}" FROM PUBLIC'))


@dataclass(frozen=True)
class Execution:
    """One finished execution: how long ago it stopped, how long it ran and waited."""

    stopped_ago_s: float
    run_s: float
    wait_s: float
    status: str = "success"


def execution_table(database: sa.Engine, schema: str, executions: Sequence[Execution]) -> None:
    """An `execution_entity` with n8n's column names, holding `executions`."""
    with database.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        connection.execute(
            sa.text(
                f'CREATE TABLE IF NOT EXISTS "{schema}".execution_entity (id serial PRIMARY KEY,'
                ' status varchar NOT NULL, "createdAt" timestamptz NOT NULL,'
                ' "startedAt" timestamptz, "stoppedAt" timestamptz)'
            )
        )
        if executions:
            connection.execute(
                sa.text(
                    f'INSERT INTO "{schema}".execution_entity (status, "createdAt", "startedAt",'
                    ' "stoppedAt") SELECT :status, now() - make_interval(secs => :stop + :run'
                    " + :wait), now() - make_interval(secs => :stop + :run),"
                    " now() - make_interval(secs => :stop)"
                ),
                [
                    {"status": e.status, "stop": e.stopped_ago_s, "run": e.run_s, "wait": e.wait_s}
                    for e in executions
                ],
            )


def drop_schemas(database: sa.Engine, schemas: Sequence[str]) -> None:
    with database.begin() as connection:
        for schema in schemas:
            connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
