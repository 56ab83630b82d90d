"""Billing as plain data: the Stripe catalog a plan maps to, what to report to a Billing Meter
for a tenant's day (and what to do when that day is corrected), and the quotas that Stripe
entitlements grant.

Meter reporting is a ledger reconciliation. The `usage` table says how many executions a
tenant ran on a day; the ledger (`usage_reports`, destination `stripe`) says what Stripe was
sent for that day. The decision compares the two:

- nothing in doubt and the ledger already adds up to the usage → report nothing (a re-run);
- a report is in doubt (written `pending` before the call, or `failed`) → send exactly that
  report again, with the same identifier, before anything else: Stripe refuses a second event
  with an identifier it has seen (within its rolling 24 hours), so a retry never bills twice;
- the usage went up → one event for the difference only;
- the usage went down → Stripe takes no negative events; it can only *cancel* an event, and only
  within 24 hours of receiving it (meter event adjustments). If every event of the day can still
  be cancelled, cancel them all and send the corrected total afresh; otherwise (an event older
  than that, or one whose receipt time is unknown because Stripe answered that it already held
  it) report nothing and flag the day as over-reported by the difference, for a credit note by
  hand.

Identifiers are a function of the tenant, the day, the metric, the cancellation round and the
range of the cumulative total the event covers (`...-e0-0-10`, then `...-e0-10-15`), so that a
re-computation after a lost ledger write yields the same identifier, and a total that returns to
an earlier value after a cancellation never reuses a cancelled identifier.
"""

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

# The one meter: executions per tenant, summed (agreed lookup keys, `stripe_objects`).
METER_LOOKUP_KEY = "executions"
METER_EVENT_NAME = "rp9_executions"
CUSTOMER_PAYLOAD_KEY = "stripe_customer_id"
VALUE_PAYLOAD_KEY = "value"
EXECUTIONS_METRIC = "executions"
CANCEL_SUFFIX = ":cancel"
# A cancellation's ledger identifier: this prefix on the identifier of the event it cancels.
CANCEL_PREFIX = "cancel:"
IDENTIFIER_MAX = 100
# Stripe: an event may be cancelled within 24 h of receipt; its timestamp must be within the
# past 35 days. Margins keep a decision valid for the seconds it takes to act on it.
CANCEL_WINDOW = dt.timedelta(hours=24) - dt.timedelta(minutes=10)
EVENT_MAX_AGE = dt.timedelta(days=35) - dt.timedelta(hours=1)

QUOTA_FEATURE_FIELDS = ("executions_per_month", "concurrency", "max_workers")
OVERAGE_FEATURE = "feature:overage"
_QUOTA_FEATURE = re.compile(r"^quota:(executions_per_month|concurrency|max_workers):([0-9]+)$")

# List prices in the smallest currency unit: a flat monthly base and a price per execution
# (a decimal string: Stripe's `unit_amount_decimal` takes fractions of a cent).
Currency = Literal["usd"]
PLAN_PRICES: dict[str, tuple[int, str]] = {
    "starter": (2_000, "0.2"),
    "pro": (5_000, "0.15"),
    "business": (20_000, "0.1"),
    "enterprise": (80_000, "0.05"),
}
CURRENCY: Currency = "usd"


def product_key(plan: str) -> str:
    return f"plan:{plan}"


def base_price_key(plan: str) -> str:
    return f"plan:{plan}:base"


def metered_price_key(plan: str) -> str:
    return f"plan:{plan}:executions"


def quota_feature_key(name: str, value: int) -> str:
    return f"quota:{name}:{value}"


@dataclass(frozen=True)
class PlanSpec:
    """What one plan is in Stripe: a product, a flat monthly price, a metered price on the
    executions meter, and the features (entitlements) the product grants."""

    name: str
    executions_per_month: int
    concurrency: int
    max_workers: int
    overage_allowed: bool
    base_amount: int
    per_execution_amount: str
    currency: Currency = CURRENCY

    @property
    def product_key(self) -> str:
        return product_key(self.name)

    @property
    def base_price_key(self) -> str:
        return base_price_key(self.name)

    @property
    def metered_price_key(self) -> str:
        return metered_price_key(self.name)

    @property
    def features(self) -> tuple[str, ...]:
        quotas = (
            quota_feature_key("executions_per_month", self.executions_per_month),
            quota_feature_key("concurrency", self.concurrency),
            quota_feature_key("max_workers", self.max_workers),
        )
        return (*quotas, OVERAGE_FEATURE) if self.overage_allowed else quotas


def feature_name(lookup_key: str) -> str:
    """A readable name for a feature, shown in Stripe's dashboard."""
    if lookup_key == OVERAGE_FEATURE:
        return "Overage allowed"
    match = _QUOTA_FEATURE.match(lookup_key)
    if not match:
        raise ValueError(f"not an rp9 feature lookup key: {lookup_key!r}")
    return f"{match[1].replace('_', ' ').capitalize()}: {int(match[2]):,}"


def plan_catalog(
    plans: Iterable[Mapping[str, Any]], prices: Mapping[str, tuple[int, str]] = PLAN_PRICES
) -> list[PlanSpec]:
    """Plans (rows of `plans`) with a known price → their Stripe shape; plans without a
    price are left out (they are not sold through Stripe)."""
    specs = []
    for plan in plans:
        name = str(plan["name"])
        if name not in prices:
            continue
        base, per_execution = prices[name]
        specs.append(
            PlanSpec(
                name=name,
                executions_per_month=int(plan["executions_per_month"]),
                concurrency=int(plan["concurrency"]),
                max_workers=int(plan["max_workers"]),
                overage_allowed=bool(plan["overage_allowed"]),
                base_amount=base,
                per_execution_amount=per_execution,
            )
        )
    return sorted(specs, key=lambda spec: spec.name)


def plan_of_price_keys(price_keys: Iterable[str], ranking: Mapping[str, int]) -> str | None:
    """The plan a subscription's prices say (`plan:<p>:base` or `plan:<p>:executions`); when
    several plans appear (mid-change), the one ranked highest; None when no rp9 price is there."""
    found = set()
    for key in price_keys:
        match = re.match(r"^plan:([a-z0-9_-]+):(base|executions)$", key)
        if match and match[1] in ranking:
            found.add(match[1])
    return max(found, key=lambda plan: (ranking[plan], plan)) if found else None


@dataclass(frozen=True)
class EntitledQuotas:
    values: dict[str, Any]
    ignored: tuple[str, ...] = ()


def quotas_from_entitlements(
    lookup_keys: Iterable[str], plan_min_workers: int | None = None
) -> EntitledQuotas:
    """A customer's active entitlements → the `stripe` quota row (None: not set by Stripe).

    Several grants of one quota (two products) give the largest. Without any rp9 feature the
    row is all None and the plan's limits apply. With some, Stripe is the truth about overage:
    allowed only with `feature:overage`. A worker ceiling below the plan's floor lowers the
    floor too, so that the merged limits stay a valid range.
    """
    values: dict[str, Any] = dict.fromkeys(
        (*QUOTA_FEATURE_FIELDS, "cpu", "memory_mb", "min_workers", "overage_allowed")
    )
    ignored, recognised = [], False
    for key in sorted(set(lookup_keys)):
        match = _QUOTA_FEATURE.match(key)
        if match:
            recognised = True
            name, value = match[1], int(match[2])
            values[name] = max(value, values[name] or 0)
        elif key == OVERAGE_FEATURE:
            recognised = True
        else:
            ignored.append(key)
    if recognised:
        values["overage_allowed"] = OVERAGE_FEATURE in lookup_keys
    max_workers = values["max_workers"]
    if max_workers is not None and plan_min_workers is not None and max_workers < plan_min_workers:
        values["min_workers"] = max_workers
    return EntitledQuotas(values, tuple(ignored))


LedgerStatus = Literal["pending", "sent", "failed"]


@dataclass(frozen=True)
class LedgerEntry:
    """One row of `usage_reports`, the ledger of what a tenant's day was reported as. To
    Stripe: a meter event (`metric` = `executions`, positive quantity) or the cancellation of one
    (`executions:cancel`, the cancelled quantity negated); to Supabase: the day's business
    metrics (`business_metrics`, its executions)."""

    identifier: str
    metric: str
    quantity: int
    status: LedgerStatus
    sent_at: dt.datetime | None = None
    error: str | None = None

    @property
    def is_cancel(self) -> bool:
        return self.metric.endswith(CANCEL_SUFFIX)


@dataclass(frozen=True)
class Send:
    identifier: str
    quantity: int


@dataclass(frozen=True)
class Cancel:
    identifier: str  # of the event to cancel
    quantity: int  # the quantity it carried

    @property
    def ledger_identifier(self) -> str:
        return CANCEL_PREFIX + self.identifier


@dataclass(frozen=True)
class ReportDecision:
    """What to do for one tenant, day and metric. `retry` comes first, alone: nothing new is
    decided while a report is in doubt."""

    reason: str
    retry: tuple[LedgerEntry, ...] = ()
    cancel: tuple[Cancel, ...] = ()
    send: tuple[Send, ...] = ()
    reported: int = 0  # net quantity Stripe holds for the day, per the ledger
    target: int = 0
    over_reported: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_noop(self) -> bool:
        return not (self.retry or self.cancel or self.send)


def meter_identifier(
    tenant_id: str, day: dt.date, metric: str, epoch: int, start: int, end: int
) -> str:
    """Deterministic: the same tenant, day, metric, cancellation round and cumulative range
    give the same identifier, on any machine, after any crash."""
    identifier = f"rp9-{tenant_id}-{day:%Y%m%d}-{metric}-e{epoch}-{start}-{end}"
    if len(identifier) > IDENTIFIER_MAX:
        raise ValueError(f"meter event identifier longer than {IDENTIFIER_MAX}: {identifier}")
    return identifier


def event_timestamp(day: dt.date, now: dt.datetime) -> int:
    """Inside the day (its last second), never in the future: a day still running is
    reported at the present moment, inside the day's summary window either way."""
    end = dt.datetime.combine(day, dt.time(23, 59, 59), tzinfo=dt.UTC)
    return int(min(end, now).timestamp())


def decide_report(
    tenant_id: str,
    day: dt.date,
    target: int,
    ledger: Sequence[LedgerEntry],
    now: dt.datetime,
    metric: str = EXECUTIONS_METRIC,
) -> ReportDecision:
    """Reconcile the usage of one day (`target`) with what the ledger says Stripe holds."""
    if target < 0:
        raise ValueError(f"usage cannot be negative: {target}")
    mine = [e for e in ledger if e.metric in (metric, metric + CANCEL_SUFFIX)]
    reported = sum(e.quantity for e in mine if e.status == "sent")
    in_doubt = tuple(e for e in mine if e.status != "sent")
    if in_doubt:
        return ReportDecision(
            "retry in-doubt reports", retry=in_doubt, reported=reported, target=target
        )
    if target == reported:
        return ReportDecision("already reported", reported=reported, target=target)
    epoch = sum(1 for e in mine if e.is_cancel)
    day_end = dt.datetime.combine(day, dt.time(23, 59, 59), tzinfo=dt.UTC)
    if now - day_end > EVENT_MAX_AGE:
        return ReportDecision(
            "too old for Stripe (35 days)",
            reported=reported,
            target=target,
            over_reported=max(reported - target, 0),
            extra={"unreported": max(target - reported, 0)},
        )
    if target > reported:
        return ReportDecision(
            "report the difference",
            reported=reported,
            target=target,
            send=(
                Send(
                    meter_identifier(tenant_id, day, metric, epoch, reported, target),
                    target - reported,
                ),
            ),
        )
    cancelled = {e.identifier.removeprefix(CANCEL_PREFIX) for e in mine if e.is_cancel}
    live = [e for e in mine if not e.is_cancel and e.identifier not in cancelled]
    if all(e.sent_at is not None and now - e.sent_at < CANCEL_WINDOW for e in live):
        resend = (
            (Send(meter_identifier(tenant_id, day, metric, epoch + len(live), 0, target), target),)
            if target
            else ()
        )
        return ReportDecision(
            "corrected down: cancel the day's events and report the new total",
            cancel=tuple(Cancel(e.identifier, e.quantity) for e in live),
            send=resend,
            reported=reported,
            target=target,
        )
    return ReportDecision(
        "corrected down past Stripe's 24 h cancellation window: nothing sent, over-reported",
        reported=reported,
        target=target,
        over_reported=reported - target,
    )


def day_window(day: dt.date) -> tuple[int, int]:
    """The meter summary window of a day, aligned to UTC day boundaries."""
    start = dt.datetime.combine(day, dt.time(0), tzinfo=dt.UTC)
    return int(start.timestamp()), int((start + dt.timedelta(days=1)).timestamp())


def customer_idempotency_key(tenant_id: str) -> str:
    return f"rp9-customer-{tenant_id}"
