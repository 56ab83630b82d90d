"""Usage → Stripe's Billing Meter through the ledger, on the real catalog and the project's
Stripe-compatible server: N reported once, re-runs report nothing, corrections only the
difference, a 500 and a duplicate identifier never bill twice."""

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from rp9_pipelines.catalog import billing as billing_catalog
from rp9_pipelines.catalog.tables import usage, usage_reports
from rp9_pipelines.catalog.tenants import Tenant
from rp9_pipelines.domain.billing import (
    CUSTOMER_PAYLOAD_KEY,
    METER_EVENT_NAME,
    VALUE_PAYLOAD_KEY,
    meter_identifier,
)
from rp9_pipelines.services.billing import (
    MeterReporter,
    ensure_customer,
    meter_summary,
    sync_catalog,
)
from rp9_pipelines_tests.billing.conftest import StripeDouble

pytestmark = pytest.mark.stack

DAY = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
METER_EVENTS = "/v1/billing/meter_events"


@pytest.fixture(scope="module", autouse=True)
def catalog_in_stripe(stripe_double: StripeDouble, catalog_engine: sa.Engine) -> None:
    sync_catalog(stripe_double.client(), catalog_engine, print)


def set_usage(engine: sa.Engine, tenant: Tenant, executions: int, day: dt.date = DAY) -> None:
    statement = insert(usage).values(tenant_id=tenant.id, day=day, executions=executions)
    with engine.begin() as connection:
        connection.execute(
            statement.on_conflict_do_update(
                constraint="uq_usage_tenant_day", set_={"executions": executions}
            )
        )


def ledger(engine: sa.Engine, tenant: Tenant) -> list[dict[str, Any]]:
    query = (
        sa.select(
            usage_reports.c.identifier,
            usage_reports.c.metric,
            usage_reports.c.quantity,
            usage_reports.c.status,
            usage_reports.c.error,
        )
        .where(usage_reports.c.tenant_id == tenant.id)
        .order_by(usage_reports.c.created_at)
    )
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


def summary(double: StripeDouble, engine: sa.Engine, tenant: Tenant) -> float:
    return meter_summary(double.client(), engine, str(tenant.id), DAY)


def reporter(double: StripeDouble, engine: sa.Engine, retries: int = 2, **kw: Any) -> MeterReporter:
    return MeterReporter(double.client(retries), engine, print, **kw)


def test_n_executions_are_reported_once_and_a_rerun_reports_nothing(
    stripe_double: StripeDouble, catalog_engine: sa.Engine, billing_tenant: Tenant
) -> None:
    set_usage(catalog_engine, billing_tenant, 37)
    first = reporter(stripe_double, catalog_engine).report_day(billing_tenant, DAY)
    assert first.ok
    assert len(first.sent) == 1
    assert summary(stripe_double, catalog_engine, billing_tenant) == 37.0

    again = reporter(stripe_double, catalog_engine).report_day(billing_tenant, DAY)
    assert again.sent == []
    assert again.decision is not None
    assert again.decision.reason == "already reported"
    assert summary(stripe_double, catalog_engine, billing_tenant) == 37.0
    rows = ledger(catalog_engine, billing_tenant)
    assert [(r["quantity"], r["status"]) for r in rows] == [(37, "sent")]
    assert rows[0]["identifier"] == meter_identifier(
        str(billing_tenant.id), DAY, "executions", 0, 0, 37
    )


def test_a_corrected_day_reports_only_the_difference(
    stripe_double: StripeDouble, catalog_engine: sa.Engine, billing_tenant: Tenant
) -> None:
    set_usage(catalog_engine, billing_tenant, 20)
    reporter(stripe_double, catalog_engine).report_day(billing_tenant, DAY)
    set_usage(catalog_engine, billing_tenant, 26)
    corrected = reporter(stripe_double, catalog_engine).report_day(billing_tenant, DAY)
    assert corrected.ok
    assert [r["quantity"] for r in ledger(catalog_engine, billing_tenant)] == [20, 6]
    assert summary(stripe_double, catalog_engine, billing_tenant) == 26.0
    events = stripe_double.control(
        "GET", f"meter_events?customer={customer(billing_tenant, catalog_engine)}"
    )
    assert [e["value"] for e in events["meter_events"]] == [20.0, 6.0]


def customer(tenant: Tenant, engine: sa.Engine) -> str:
    with engine.connect() as connection:
        value = billing_catalog.customer_of(connection, tenant.id)
    assert value is not None
    return value


def test_a_day_corrected_downwards_within_24_hours_is_cancelled_and_resent(
    stripe_double: StripeDouble, catalog_engine: sa.Engine, billing_tenant: Tenant
) -> None:
    set_usage(catalog_engine, billing_tenant, 50)
    reporter(stripe_double, catalog_engine).report_day(billing_tenant, DAY)
    set_usage(catalog_engine, billing_tenant, 44)
    down = reporter(stripe_double, catalog_engine).report_day(billing_tenant, DAY)
    assert down.ok, down.failed
    assert len(down.cancelled) == 1
    assert summary(stripe_double, catalog_engine, billing_tenant) == 44.0
    assert [
        (r["metric"], r["quantity"], r["status"]) for r in ledger(catalog_engine, billing_tenant)
    ] == [
        ("executions", 50, "sent"),
        ("executions:cancel", -50, "sent"),
        ("executions", 44, "sent"),
    ]


def test_a_day_corrected_downwards_after_24_hours_sends_nothing_and_is_flagged(
    stripe_double: StripeDouble, catalog_engine: sa.Engine, billing_tenant: Tenant
) -> None:
    set_usage(catalog_engine, billing_tenant, 12)
    reporter(stripe_double, catalog_engine).report_day(billing_tenant, DAY)
    set_usage(catalog_engine, billing_tenant, 9)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=25)
    down = reporter(stripe_double, catalog_engine, now=lambda: later).report_day(
        billing_tenant, DAY
    )
    assert down.decision is not None
    assert down.decision.over_reported == 3
    assert down.sent == []
    assert down.cancelled == []
    assert down.metadata()["over_reported"] == 3
    assert summary(stripe_double, catalog_engine, billing_tenant) == 12.0


def test_a_500_before_stripe_acts_is_retried_by_the_sdk_and_counted_once(
    stripe_double: StripeDouble, catalog_engine: sa.Engine, billing_tenant: Tenant
) -> None:
    set_usage(catalog_engine, billing_tenant, 15)
    ensure_customer(stripe_double.client(), catalog_engine, billing_tenant)
    stripe_double.fault("POST", METER_EVENTS, 500, body_contains=str(billing_tenant.id))
    report = reporter(stripe_double, catalog_engine).report_day(billing_tenant, DAY)
    assert report.ok
    assert summary(stripe_double, catalog_engine, billing_tenant) == 15.0
    events = stripe_double.control(
        "GET", f"meter_events?customer={customer(billing_tenant, catalog_engine)}"
    )
    assert len(events["meter_events"]) == 1


def test_a_500_after_stripe_acted_fails_the_run_and_the_retry_counts_it_once(
    stripe_double: StripeDouble, catalog_engine: sa.Engine, billing_tenant: Tenant
) -> None:
    """Stripe recorded the event but the answer was lost: the run fails with the report in
    doubt; the next run sends the same identifier again, and Stripe holds it once."""
    set_usage(catalog_engine, billing_tenant, 23)
    ensure_customer(stripe_double.client(), catalog_engine, billing_tenant)
    stripe_double.fault(
        "POST", METER_EVENTS, 500, mode="after", body_contains=str(billing_tenant.id)
    )
    failed = reporter(stripe_double, catalog_engine, retries=0).report_day(billing_tenant, DAY)
    assert not failed.ok
    assert [r["status"] for r in ledger(catalog_engine, billing_tenant)] == ["failed"]
    assert summary(stripe_double, catalog_engine, billing_tenant) == 23.0  # Stripe has it

    retried = reporter(stripe_double, catalog_engine, retries=0).report_day(billing_tenant, DAY)
    assert retried.ok
    assert [(r["quantity"], r["status"]) for r in ledger(catalog_engine, billing_tenant)] == [
        (23, "sent")
    ]
    assert summary(stripe_double, catalog_engine, billing_tenant) == 23.0


def test_an_identifier_stripe_already_holds_counts_as_sent(
    stripe_double: StripeDouble, catalog_engine: sa.Engine, billing_tenant: Tenant
) -> None:
    """The ledger lost its write (a restore, a crash before `pending` was committed): the
    recomputed identifier is the same, Stripe refuses the duplicate, nothing is billed twice."""
    set_usage(catalog_engine, billing_tenant, 8)
    cus = ensure_customer(stripe_double.client(), catalog_engine, billing_tenant)
    identifier = meter_identifier(str(billing_tenant.id), DAY, "executions", 0, 0, 8)
    stripe_double.client().v1.billing.meter_events.create(
        params={
            "event_name": METER_EVENT_NAME,
            "identifier": identifier,
            "timestamp": int(dt.datetime.combine(DAY, dt.time(12), tzinfo=dt.UTC).timestamp()),
            "payload": {CUSTOMER_PAYLOAD_KEY: cus, VALUE_PAYLOAD_KEY: "8"},
        }
    )
    report = reporter(stripe_double, catalog_engine).report_day(billing_tenant, DAY)
    assert report.ok
    assert report.duplicates == [identifier]
    assert report.sent == []
    assert [r["status"] for r in ledger(catalog_engine, billing_tenant)] == ["sent"]
    assert summary(stripe_double, catalog_engine, billing_tenant) == 8.0
    # When Stripe received it is unknown, so a later downward correction never tries to
    # cancel it (the window may be gone): the excess is flagged instead.
    set_usage(catalog_engine, billing_tenant, 5)
    down = reporter(stripe_double, catalog_engine).report_day(billing_tenant, DAY)
    assert down.decision is not None
    assert down.decision.over_reported == 3
    assert down.cancelled == []
    assert summary(stripe_double, catalog_engine, billing_tenant) == 8.0


def test_a_day_without_usage_reports_nothing(
    stripe_double: StripeDouble, catalog_engine: sa.Engine, billing_tenant: Tenant
) -> None:
    report = reporter(stripe_double, catalog_engine).report_day(billing_tenant, DAY)
    assert report.executions is None
    assert ledger(catalog_engine, billing_tenant) == []


def test_one_customer_per_tenant_even_when_created_twice(
    stripe_double: StripeDouble, catalog_engine: sa.Engine, billing_tenant: Tenant
) -> None:
    client = stripe_double.client()
    first = ensure_customer(client, catalog_engine, billing_tenant)
    with catalog_engine.begin() as connection:  # as if the first answer had been lost
        connection.execute(
            sa.text("UPDATE tenants SET stripe_customer_id = NULL WHERE id = :id"),
            {"id": billing_tenant.id},
        )
    assert ensure_customer(client, catalog_engine, billing_tenant) == first
    metadata = client.v1.customers.retrieve(first).metadata
    assert metadata is not None
    assert metadata["rp9_tenant_id"] == str(billing_tenant.id)
