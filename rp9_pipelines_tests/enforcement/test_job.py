"""The `enforce_limits` job executed in-process against the real catalog, the real tenant
databases (synthetic n8n `execution_entity` tables) and a real HTTP receiver."""

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from rp9_pipelines.catalog import tenants as catalog
from rp9_pipelines.catalog.tables import enforcement_events, quotas, tenants, usage
from rp9_pipelines.definitions import defs
from rp9_pipelines.domain.enforcement import period_of
from rp9_pipelines.domain.tenants import SHARED_DATABASE, TenantNames
from rp9_pipelines.launches import TENANT_ID_TAG
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.tenant_db import TenantDatabaseResource
from rp9_pipelines.services import enforcement as notify
from rp9_pipelines.settings import EnforcementSettings, Settings, sqlalchemy_url
from rp9_pipelines_tests.enforcement.receiver import Receiver, receiving

pytestmark = pytest.mark.stack


@dataclass(frozen=True)
class Synthetic:
    id: uuid.UUID
    slug: str

    @property
    def names(self) -> TenantNames:
        return TenantNames(self.slug, "shared")


class Fleet:
    """Catalog rows and `execution_entity` tables of synthetic shared tenants, removed after."""

    def __init__(self, settings: Settings, admin_engine: sa.Engine) -> None:
        self.engine = sa.create_engine(sqlalchemy_url(settings.database_url))
        # Schemas and roles made as the platform makes them, so it reads them as it reads n8n's.
        self.tenant_db = TenantDatabaseResource(admin_url=settings.tenant_admin_url)
        url = sa.make_url(sqlalchemy_url(settings.database_url)).set(database=SHARED_DATABASE)
        self.shared = sa.create_engine(url)
        with admin_engine.connect() as connection:
            if not connection.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": SHARED_DATABASE}
            ).scalar():
                connection.execute(sa.text(f'CREATE DATABASE "{SHARED_DATABASE}"'))
        self.made: list[Synthetic] = []

    def tenant(
        self,
        *,
        limit: int,
        status: str = "active",
        reason: str | None = None,
        overage: bool = False,
    ) -> Synthetic:
        t = Synthetic(uuid.uuid4(), f"enf-{uuid.uuid4().hex[:8]}")
        with self.engine.begin() as connection:
            connection.execute(
                sa.insert(tenants).values(
                    id=t.id,
                    slug=t.slug,
                    name="synthetic",
                    plan="starter",
                    status=status,
                    suspension_reason=reason,
                    n8n_version="2.20.12",
                )
            )
            plan = catalog.plan_limits(connection, "starter")
            assert plan is not None
            catalog.set_quota(connection, t.id, "plan", plan)
            manual = {"executions_per_month": limit, "overage_allowed": overage}
            catalog.set_quota(connection, t.id, "manual", manual)
        schema = t.names.db_schema
        self.tenant_db.ensure(t.names, uuid.uuid4().hex)
        with self.shared.begin() as connection:
            connection.execute(sa.text(f'SET LOCAL ROLE "{t.names.db_role}"'))
            connection.execute(
                sa.text(
                    f'CREATE TABLE "{schema}".execution_entity (id serial PRIMARY KEY,'
                    " mode varchar NOT NULL, status varchar NOT NULL,"
                    ' "createdAt" timestamptz NOT NULL DEFAULT now())'
                )
            )
        self.made.append(t)
        return t

    def execute(self, t: Synthetic, count: int, mode: str = "webhook") -> None:
        with self.shared.begin() as connection:
            connection.execute(
                sa.text(
                    f'INSERT INTO "{t.names.db_schema}".execution_entity (mode, status)'
                    " SELECT :mode, 'success' FROM generate_series(1, :n)"
                ),
                {"mode": mode, "n": count},
            )

    def events(self, t: Synthetic) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(enforcement_events)
                .where(enforcement_events.c.tenant_id == t.id)
                .order_by(enforcement_events.c.created_at, enforcement_events.c.threshold)
            )
            return [dict(row._mapping) for row in rows]

    def state(self, t: Synthetic) -> tuple[str, str | None]:
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(tenants.c.status, tenants.c.suspension_reason).where(tenants.c.id == t.id)
            ).one()
        return row.status, row.suspension_reason

    def remove(self) -> None:
        ids = [t.id for t in self.made]
        with self.engine.begin() as connection:
            for table in (enforcement_events, quotas, usage):
                connection.execute(sa.delete(table).where(table.c.tenant_id.in_(ids)))
            connection.execute(sa.delete(tenants).where(tenants.c.id.in_(ids)))
        for t in self.made:
            self.tenant_db.drop(t.names)
        self.engine.dispose()
        self.shared.dispose()


@pytest.fixture
def fleet(settings: Settings, admin_engine: sa.Engine) -> Iterator[Fleet]:
    made = Fleet(settings, admin_engine)
    yield made
    made.remove()


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    with receiving() as running:
        monkeypatch.setenv("ENFORCEMENT_WEBHOOK_URL", running.url)
        monkeypatch.setenv("ENFORCEMENT_WEBHOOK_SECRET", "test-signing-secret")
        yield running


def enforce(
    *slugs: str, as_of: str | None = None, instance: dg.DagsterInstance | None = None
) -> dict[str, Any]:
    config: dict[str, Any] = {"tenants": list(slugs)}
    if as_of:
        config["as_of"] = as_of
    job = defs().get_job_def("enforce_limits")
    run_config = {"ops": {"enforce_quotas": {"config": config}}}
    result = job.execute_in_process(run_config=run_config, instance=instance)
    assert result.success
    summary: dict[str, Any] = result.output_for_node("enforce_quotas")
    return summary


def test_warns_once_at_80_then_suspends_at_100_and_delivers_each_event_once(
    fleet: Fleet, receiver: Receiver
) -> None:
    t = fleet.tenant(limit=10)
    fleet.execute(t, 7)
    fleet.execute(t, 5, mode="manual")  # the editor's test runs do not count
    assert enforce(t.slug)["events"] == []

    fleet.execute(t, 1)
    summary = enforce(t.slug)
    assert summary["events"] == [f"{t.slug}: warn 80 %"]
    assert summary["delivered"] == 1
    (warned,) = receiver.bodies()
    assert warned["type"] == "enforcement.warn"
    assert (warned["tenant"]["slug"], warned["value"], warned["limit"]) == (t.slug, 8.0, 10.0)
    assert (warned["period"], warned["threshold"]) == (period_of(dt.datetime.now(dt.UTC)), 80)
    signed = receiver.headers[0]
    body = notify.payload({**fleet.events(t)[0], "slug": t.slug})
    assert signed["X-Rp9-Event"] == body["id"] == warned["id"]
    expected = notify.signature("test-signing-secret", signed["X-Rp9-Timestamp"], receiver.raw[0])
    assert signed["X-Rp9-Signature"] == expected

    # Again on the same count: nothing new recorded, nothing sent twice.
    assert enforce(t.slug)["events"] == []
    assert len(receiver.bodies()) == 1

    fleet.execute(t, 2)
    summary = enforce(t.slug)
    assert sorted(summary["events"]) == [f"{t.slug}: suspend 100 %", f"{t.slug}: warn 100 %"]
    assert summary["suspended"] == [t.slug]
    assert fleet.state(t) == ("suspended", "enforcement")
    assert [b["action"] for b in receiver.bodies()] == ["warn", "warn", "suspend"]

    assert enforce(t.slug)["events"] == []
    events = fleet.events(t)
    assert sorted((e["action"], e["threshold"]) for e in events) == [
        ("suspend", 100),
        ("warn", 80),
        ("warn", 100),
    ]
    assert all(e["notified_at"] is not None and e["notify_error"] is None for e in events)
    assert len(receiver.bodies()) == 3


def test_a_failing_webhook_is_recorded_and_retried_without_failing_enforcement(
    fleet: Fleet, receiver: Receiver
) -> None:
    t = fleet.tenant(limit=5)
    fleet.execute(t, 4)
    receiver.mode = "fail"
    summary = enforce(t.slug)
    assert summary["events"] == [f"{t.slug}: warn 80 %"]
    assert summary["delivered"] == 0
    assert "HTTP 500" in summary["delivery_error"]
    (event,) = fleet.events(t)
    assert event["notified_at"] is None
    assert "HTTP 500" in event["notify_error"]

    receiver.mode = "ok"
    summary = enforce(t.slug)
    assert (summary["events"], summary["delivered"]) == ([], 1)
    (event,) = fleet.events(t)
    assert event["notified_at"] is not None
    assert event["notify_error"] is None
    assert [b["id"] for b in receiver.bodies()] == [str(event["id"])]


def test_a_run_judging_a_later_period_still_delivers_what_was_recorded_today(
    fleet: Fleet, receiver: Receiver
) -> None:
    # The delivery window is a retry horizon on the wall clock, as `created_at` is; a run whose
    # enforcement clock is next month (a drill, a test) must not skip today's events.
    t = fleet.tenant(limit=5)
    fleet.execute(t, 4)
    receiver.mode = "fail"
    assert enforce(t.slug)["delivered"] == 0
    receiver.mode = "ok"
    next_month = (dt.datetime.now(dt.UTC).replace(day=1) + dt.timedelta(days=32)).replace(day=2)
    summary = enforce(t.slug, as_of=next_month.isoformat())
    assert (summary["events"], summary["delivered"]) == ([], 1)
    assert [(b["action"], b["threshold"]) for b in receiver.bodies()] == [("warn", 80)]


def test_a_hanging_webhook_costs_one_short_timeout(
    fleet: Fleet, settings: Settings, receiver: Receiver
) -> None:
    t = fleet.tenant(limit=5)
    fleet.execute(t, 6)
    receiver.mode = "fail"
    enforce(t.slug)  # warn 80, warn 100, suspend: three undelivered events
    assert len(fleet.events(t)) == 3
    receiver.mode = "hang"
    patient = EnforcementSettings(webhook_url=receiver.url, webhook_timeout_s=1.0)
    started = time.monotonic()
    delivery = notify.deliver(
        CatalogResource(database_url=settings.database_url),
        patient,
        lambda _: None,
        [t.id],
    )
    assert time.monotonic() - started < 3.0
    assert (delivery.delivered, delivery.failed, delivery.pending) == (0, 1, 2)
    assert "Timeout" in (delivery.error or "")


def test_overage_allowed_is_recorded_and_the_tenant_keeps_running(
    fleet: Fleet, receiver: Receiver
) -> None:
    t = fleet.tenant(limit=3, overage=True)
    fleet.execute(t, 5)
    summary = enforce(t.slug)
    assert sorted(summary["events"]) == [
        f"{t.slug}: overage 100 %",
        f"{t.slug}: warn 100 %",
        f"{t.slug}: warn 80 %",
    ]
    assert summary["suspended"] == []
    assert fleet.state(t) == ("active", None)


def test_an_operators_suspension_is_left_alone(fleet: Fleet, receiver: Receiver) -> None:
    t = fleet.tenant(limit=100, status="suspended", reason="operator")
    summary = enforce(t.slug, as_of=(dt.datetime.now(dt.UTC) + dt.timedelta(days=40)).isoformat())
    assert (summary["judged"], summary["events"], summary["resumed"]) == (1, [], [])
    assert fleet.state(t) == ("suspended", "operator")


def test_collected_usage_counts_when_n8n_pruned_its_executions(
    fleet: Fleet, receiver: Receiver
) -> None:
    t = fleet.tenant(limit=10)
    today = dt.datetime.now(dt.UTC).date()
    with fleet.engine.begin() as connection:
        connection.execute(sa.insert(usage).values(tenant_id=t.id, day=today, executions=9))
    fleet.execute(t, 2)  # fewer than usage recorded for today: the larger count holds
    summary = enforce(t.slug)
    assert sorted(summary["events"]) == [f"{t.slug}: warn 80 %"]


def test_a_tenant_with_a_run_in_flight_is_warned_now_and_suspended_next_time(
    fleet: Fleet, receiver: Receiver
) -> None:
    t = fleet.tenant(limit=4)
    fleet.execute(t, 4)
    with dg.instance_for_test() as instance:
        # Another flow (a scale, an operator's action) is queued for this tenant.
        busy = instance.create_run_for_job(
            defs().get_job_def("suspend_tenant"),
            run_config={"ops": {"stop_stack": {"config": {"tenant_id": str(t.id)}}}},
            tags={TENANT_ID_TAG: str(t.id)},
        )
        summary = enforce(t.slug, instance=instance)
        assert summary["deferred"] == [t.slug]
        assert sorted(summary["events"]) == [f"{t.slug}: warn 100 %", f"{t.slug}: warn 80 %"]
        assert fleet.state(t) == ("active", None)
        instance.report_run_canceled(busy)
        summary = enforce(t.slug, instance=instance)
    assert summary["events"] == [f"{t.slug}: suspend 100 %"]
    assert fleet.state(t) == ("suspended", "enforcement")
    assert [b["action"] for b in receiver.bodies()] == ["warn", "warn", "suspend"]
