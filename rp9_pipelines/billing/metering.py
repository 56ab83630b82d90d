"""A tenant's Stripe customer, and its daily executions reported to the Billing Meter through
the `usage_reports` ledger (see `rp9_pipelines.domain.billing` for the decision)."""

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
import stripe

from rp9_pipelines.billing.catalog_sync import CatalogSync
from rp9_pipelines.billing.stripe_client import is_duplicate_identifier
from rp9_pipelines.catalog import billing as billing_catalog
from rp9_pipelines.catalog import tenants as tenant_catalog
from rp9_pipelines.catalog.tenants import Tenant
from rp9_pipelines.domain.billing import (
    CANCEL_PREFIX,
    CANCEL_SUFFIX,
    CUSTOMER_PAYLOAD_KEY,
    EXECUTIONS_METRIC,
    METER_EVENT_NAME,
    METER_LOOKUP_KEY,
    VALUE_PAYLOAD_KEY,
    Cancel,
    LedgerEntry,
    ReportDecision,
    Send,
    customer_idempotency_key,
    day_window,
    decide_report,
    event_timestamp,
)

Log = Callable[[str], None]


def ensure_customer(client: stripe.StripeClient, engine: sa.Engine, tenant: Tenant) -> str:
    """The tenant's customer, created once: the idempotency key is the tenant's id, so two
    racing calls (or a retry after a lost answer) get the same customer."""
    with engine.begin() as connection:
        known = billing_catalog.customer_of(connection, tenant.id)
    if known:
        return known
    customer = client.v1.customers.create(
        params={
            "name": tenant.name,
            "metadata": {"rp9_tenant_id": str(tenant.id), "rp9_slug": tenant.slug},
        },
        options={"idempotency_key": customer_idempotency_key(str(tenant.id))},
    )
    with engine.begin() as connection:
        billing_catalog.set_customer(connection, tenant.id, customer.id)
        recorded = billing_catalog.customer_of(connection, tenant.id)
    return recorded or customer.id


@dataclass
class DayReport:
    tenant_id: str
    day: dt.date
    executions: int | None
    decision: ReportDecision | None = None
    sent: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    def metadata(self) -> dict[str, Any]:
        decision = self.decision
        return {
            "executions": self.executions,
            "reported_before": decision.reported if decision else None,
            "reason": decision.reason if decision else "no usage row",
            "sent": len(self.sent),
            "duplicates_already_held": len(self.duplicates),
            "cancelled": len(self.cancelled),
            "failed": len(self.failed),
            "over_reported": decision.over_reported if decision else 0,
        }


class MeterReporter:
    def __init__(
        self, client: stripe.StripeClient, engine: sa.Engine, log: Log,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:  # fmt: skip
        self.client, self.engine, self.log, self.now = client, engine, log, now

    def _send(self, report: DayReport, customer: str, identifier: str, quantity: int) -> None:
        timestamp = event_timestamp(report.day, self.now())
        try:
            # The timestamp is in the key: a day still running is stamped "now", and a retry
            # with other parameters under the same key would be an idempotency error.
            self.client.v1.billing.meter_events.create(
                params={
                    "event_name": METER_EVENT_NAME,
                    "identifier": identifier,
                    "timestamp": timestamp,
                    "payload": {CUSTOMER_PAYLOAD_KEY: customer, VALUE_PAYLOAD_KEY: str(quantity)},
                },
                options={"idempotency_key": f"rp9-meter-{identifier}-{timestamp}"},
            )
        except stripe.StripeError as error:
            if not is_duplicate_identifier(error):
                self._failed(report, identifier, error)
                return
            # Stripe holds this identifier: an earlier attempt got through, at a time we do
            # not know (so it is never cancelled later: the window may have passed).
            report.duplicates.append(identifier)
            self.log(f"{identifier}: Stripe already holds it, counted as sent")
            with self.engine.begin() as connection:
                billing_catalog.mark(connection, identifier, "sent", receipt_known=False)
            return
        report.sent.append(identifier)
        with self.engine.begin() as connection:
            billing_catalog.mark(connection, identifier, "sent")

    def _cancel(self, report: DayReport, ledger_identifier: str, target: str) -> None:
        try:
            self.client.v1.billing.meter_event_adjustments.create(
                params={
                    "event_name": METER_EVENT_NAME,
                    "type": "cancel",
                    "cancel": {"identifier": target},
                },
                options={"idempotency_key": f"rp9-meter-{ledger_identifier}"},
            )
        except stripe.StripeError as error:
            self._failed(report, ledger_identifier, error)
            return
        report.cancelled.append(target)
        with self.engine.begin() as connection:
            billing_catalog.mark(connection, ledger_identifier, "sent")

    def _failed(self, report: DayReport, identifier: str, error: stripe.StripeError) -> None:
        message = f"{type(error).__name__} {error.http_status}: {error.user_message or error}"
        report.failed[identifier] = message
        self.log(f"{identifier}: {message}")
        with self.engine.begin() as connection:
            billing_catalog.mark(connection, identifier, "failed", message[:2000])

    def _act(self, report: DayReport, customer: str, decision: ReportDecision) -> None:
        tenant_id = uuid.UUID(report.tenant_id)
        for entry in decision.retry:
            self._retry(report, customer, entry)
        for cancel in decision.cancel:
            self._write(tenant_id, report.day, EXECUTIONS_METRIC + CANCEL_SUFFIX, cancel)
            self._cancel(report, cancel.ledger_identifier, cancel.identifier)
            if report.failed:
                return
        for send in decision.send:
            self._write(tenant_id, report.day, EXECUTIONS_METRIC, send)
            self._send(report, customer, send.identifier, send.quantity)

    def _retry(self, report: DayReport, customer: str, entry: LedgerEntry) -> None:
        if entry.is_cancel:
            self._cancel(report, entry.identifier, entry.identifier.removeprefix(CANCEL_PREFIX))
        else:
            self._send(report, customer, entry.identifier, entry.quantity)

    def _write(self, tenant_id: uuid.UUID, day: dt.date, metric: str, what: Send | Cancel) -> None:
        identifier = what.ledger_identifier if isinstance(what, Cancel) else what.identifier
        quantity = -what.quantity if isinstance(what, Cancel) else what.quantity
        with self.engine.begin() as connection:
            billing_catalog.write_pending(connection, tenant_id, day, metric, identifier, quantity)

    def report_day(self, tenant: Tenant, day: dt.date) -> DayReport:
        """Bring Stripe's meter in line with `usage` for one tenant and day. Rounds repeat
        while they make progress (a retry, then what is still missing), at most three."""
        with self.engine.begin() as connection:
            executions = billing_catalog.executions_on(connection, tenant.id, day)
        report = DayReport(str(tenant.id), day, executions)
        if executions is None:
            self.log(f"{tenant.slug} {day}: no usage row; nothing to report")
            return report
        customer = ensure_customer(self.client, self.engine, tenant)
        with self.engine.begin() as connection:
            meter = billing_catalog.stripe_id(connection, "meter", METER_LOOKUP_KEY)
        if meter is None:  # a fresh platform: the meter before its first event
            CatalogSync(self.client, self.engine, self.log).meter()
        for _ in range(3):
            with self.engine.begin() as connection:
                entries = billing_catalog.ledger(connection, tenant.id, day)
            decision = decide_report(str(tenant.id), day, executions, entries, self.now())
            report.decision = decision
            if decision.is_noop or report.failed:
                break
            self.log(f"{tenant.slug} {day}: {decision.reason} (target {executions}, "
                     f"reported {decision.reported})")  # fmt: skip
            self._act(report, customer, decision)
        if report.decision and report.decision.over_reported:
            excess = report.decision.over_reported
            self.log(f"{tenant.slug} {day}: over-reported by {excess} executions; Stripe can "
                     "no longer cancel them: issue a credit note")  # fmt: skip
        return report


def meter_summary(
    client: stripe.StripeClient, engine: sa.Engine, tenant_ref: str, day: dt.date
) -> float:
    """What Stripe's meter holds for a tenant's day (its event summary over the UTC day)."""
    with engine.begin() as connection:
        tenant = tenant_catalog.get_tenant(connection, tenant_ref)
        meter_id = billing_catalog.stripe_id(connection, "meter", METER_LOOKUP_KEY)
        customer = billing_catalog.customer_of(connection, tenant.id) if tenant else None
    if tenant is None or meter_id is None or customer is None:
        raise LookupError(f"no tenant, meter or customer for {tenant_ref!r}")
    start, end = day_window(day)
    summaries = client.v1.billing.meters.event_summaries.list(
        meter_id, params={"customer": customer, "start_time": start, "end_time": end}
    )
    return float(sum(s.aggregated_value for s in summaries.data))
