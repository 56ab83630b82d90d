"""The enforcement shell: gather month-to-date executions and quotas, decide per tenant
(`domain.enforcement`), record the events, suspend or resume, then deliver the events to the
warnings webhook: JSON POSTs, optionally signed, each event acknowledged once (`notified_at`); a
failure is recorded (`notify_error`) and retried on the next run."""

import datetime as dt
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from rp9_pipelines.catalog import enforcement as store
from rp9_pipelines.catalog import tenants as tenant_catalog
from rp9_pipelines.catalog import usage as usage_catalog
from rp9_pipelines.catalog.enforcement import Subject
from rp9_pipelines.catalog.tenants import Tenant
from rp9_pipelines.domain.autoscaling import worker_concurrency
from rp9_pipelines.domain.enforcement import (
    ENFORCEMENT,
    Decision,
    Situation,
    concurrency_drift,
    decide,
    month_to_date,
    period_of,
    period_start,
)
from rp9_pipelines.domain.stack import LABEL_MANAGED, LABEL_ROLE, LABEL_TENANT
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.stack import StackResources
from rp9_pipelines.services import tenants as stack
from rp9_pipelines.services.usage import tally_executions
from rp9_pipelines.settings import EnforcementSettings

Log = Callable[[str], None]


@dataclass(frozen=True)
class Judged:
    subject: Subject
    executions: int
    decision: Decision


@dataclass
class Outcome:
    period: str
    judged: list[Judged] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    suspended: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    # Tenants whose workers were recreated because their concurrency quota changed.
    reconciled: list[str] = field(default_factory=list)
    # Tenants with a run in flight: another flow is changing them; judged again next time.
    deferred: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    delivery: "Delivery | None" = None

    def summary(self) -> dict[str, object]:
        return {
            "period": self.period,
            "judged": len(self.judged),
            "events": self.events,
            "suspended": self.suspended,
            "resumed": self.resumed,
            "reconciled": self.reconciled,
            "deferred": self.deferred,
            "unreadable": self.unreadable,
            "failed": self.failed,
            "delivered": self.delivery.delivered if self.delivery else 0,
            "delivery_error": self.delivery.error if self.delivery else None,
        }


def judge(
    r: StackResources, settings: EnforcementSettings, refs: Sequence[str], now: dt.datetime
) -> tuple[str, list[Judged], dict[str, str]]:
    """Every judged tenant's situation and decision: three catalog queries and one read per
    tenant database for the whole fleet. Tenants whose executions cannot be read are left out
    (returned by database with the error) rather than judged on a wrong count."""
    period = period_of(now)
    since = period_start(period)
    with r.catalog.begin() as connection:
        subjects = store.subjects(connection, settings.tenants, refs)
        ids = [s.id for s in subjects]
    tally_executions(r.catalog, r.n8n_data, [(s.id, s.names) for s in subjects])
    with r.catalog.begin() as connection:
        events = store.recorded(connection, ids, period)
        collected = store.collected_usage(connection, ids, since.date())
        tallied = usage_catalog.tallied(connection, ids, since.date())
    live, errors = r.n8n_data.executions_by_day([s.names for s in subjects], since)
    judged = []
    for subject in subjects:
        if subject.slug in errors:
            continue
        executions = month_to_date(
            live.get(subject.slug, {}), collected.get(subject.id, {}), tallied.get(subject.id, {})
        )
        situation = Situation(
            period=period,
            status=subject.status,
            suspension_reason=subject.suspension_reason,
            executions=executions,
            limit=subject.limits.executions_per_month,
            overage_allowed=subject.limits.overage_allowed,
            recorded=events.get(subject.id, {}),
        )
        judged.append(Judged(subject, executions, decide(situation)))
    return period, judged, errors


def enforce(
    r: StackResources,
    settings: EnforcementSettings,
    *,
    refs: Sequence[str],
    now: dt.datetime,
    in_flight: set[str],
    run_id: str | None,
    log: Log,
) -> Outcome:
    """Judge and act on every tenant; one tenant's failure does not stop the others (it is
    reported in `failed`), and the webhook is served last, whatever happened before."""
    period, judged, errors = judge(r, settings, refs, now)
    outcome = Outcome(period=period, judged=judged, unreadable=errors)
    for slug, error in errors.items():
        log(f"executions of {slug} unreadable, not judged: {error}")
    for item in judged:
        subject, decision = item.subject, item.decision
        defer = decision.act != "none" and str(subject.id) in in_flight
        if defer:
            outcome.deferred.append(subject.slug)
            log(f"{subject.slug}: {decision.act} deferred, a run is changing it")
        try:
            _apply(r, subject, item, period, run_id, outcome, log, defer=defer)
        except Exception as error:
            outcome.failed[subject.slug] = _failure(error)
            log(f"{subject.slug}: {decision.act} failed: {outcome.failed[subject.slug]}")
    acted = {*outcome.suspended, *outcome.resumed, *outcome.deferred, *outcome.failed}
    running = [
        item.subject
        for item in judged
        if item.subject.status == "active"
        and item.decision.act == "none"
        and item.subject.slug not in acted
        and str(item.subject.id) not in in_flight
    ]
    reconcile_concurrency(r, running, outcome, log)
    # A run scoped to some tenants delivers only their events.
    scope = [item.subject.id for item in judged] if refs else None
    outcome.delivery = deliver(r.catalog, settings, log, scope)
    return outcome


def _apply(
    r: StackResources,
    subject: Subject,
    item: Judged,
    period: str,
    run_id: str | None,
    outcome: Outcome,
    log: Log,
    *,
    defer: bool,
) -> None:
    if item.decision.act == "none" or defer:
        _record_and_act(r, subject, item, period, run_id, outcome, log, tenant=None)
        return
    # Serialised with the tenant's own runs: one that holds the tenant now defers the action.
    with tenant_catalog.tenant_lock(r.catalog.engine, subject.id, wait=False) as held:
        tenant = stack.load(r, str(subject.id)) if held else None
        if tenant is not None and tenant.status == subject.status:
            _record_and_act(r, subject, item, period, run_id, outcome, log, tenant=tenant)
            return
    why = "another run holds the tenant" if tenant is None else "its state changed since judged"
    outcome.deferred.append(subject.slug)
    log(f"{subject.slug}: {item.decision.act} deferred, {why}")
    _record_and_act(r, subject, item, period, run_id, outcome, log, tenant=None)


def _record_and_act(
    r: StackResources,
    subject: Subject,
    item: Judged,
    period: str,
    run_id: str | None,
    outcome: Outcome,
    log: Log,
    *,
    tenant: Tenant | None,
) -> None:
    """Record the decision's events and carry out its action on `tenant` (loaded under its
    lock); without one, the action is deferred and only its warnings are recorded."""
    decision = item.decision
    defer = tenant is None
    # A deferred action records its warnings now, and its own event with the action itself
    # (next time): a suspend event without the suspension would read as an operator's resume.
    events = decision.events
    if defer:
        events = tuple(e for e in events if e.key.action in {"warn", "overage"})
    if not events and (decision.act == "none" or defer):
        return
    # Events and the reason are written before the containers are touched, so an interrupted
    # suspension is finished (not mistaken for an operator's resume) by the next run.
    with r.catalog.begin() as connection:
        for event in events:
            if store.record(connection, subject.id, period, event, run_id) is not None:
                key = event.key
                outcome.events.append(f"{subject.slug}: {key.action} {key.threshold} %")
        if decision.act == "suspend" and not defer:
            tenant_catalog.update_tenant(connection, subject.id, suspension_reason=ENFORCEMENT)
    if events or decision.act != "none":
        log(f"{subject.slug}: {decision.act}, {len(events)} event(s): {decision.reason}")
    if decision.act == "none" or tenant is None:
        return
    if decision.act == "suspend":
        stack.suspend(r, tenant, ENFORCEMENT, log)
        outcome.suspended.append(subject.slug)
    else:
        stack.resume(r, tenant, log)
        outcome.resumed.append(subject.slug)


def worker_commands(r: StackResources) -> dict[str, list[str]]:
    """Every managed worker's command line, by tenant slug: one call per engine for the fleet
    (a Swarm's task containers carry the same labels as their services)."""
    found: dict[str, list[str]] = {}
    filters = {"label": [f"{LABEL_MANAGED}=true", f"{LABEL_ROLE}=worker"]}
    containers = [
        container
        for client in r.docker_runtime.engines()
        for container in client.containers.list(all=True, sparse=True, filters=filters)
    ]
    for container in containers:
        labels = container.attrs.get("Labels") or {}
        found.setdefault(labels.get(LABEL_TENANT, ""), []).append(
            str(container.attrs.get("Command", ""))
        )
    return found


def reconcile_concurrency(
    r: StackResources, subjects: Sequence[Subject], outcome: Outcome, log: Log
) -> None:
    """The concurrency quota reaches n8n: workers running with another `--concurrency` than the
    tenant's quota (an entitlement or a manual quota changed it) are recreated with it."""
    if not subjects:
        return
    commands = worker_commands(r)
    for subject in subjects:
        wanted = worker_concurrency(subject.limits.concurrency)
        drift = concurrency_drift(wanted, commands.get(subject.slug, []))
        if not drift:
            continue
        log(f"{subject.slug}: workers run with concurrency {drift}, the quota says {wanted}")
        try:
            with tenant_catalog.tenant_lock(r.catalog.engine, subject.id, wait=False) as held:
                tenant = stack.load(r, str(subject.id))
                if not held or tenant.status != "active":
                    continue  # another run holds it, or it stopped serving: next time
                stack.converge(r, tenant, log, roles={"worker"})
            outcome.reconciled.append(subject.slug)
        except Exception as error:
            outcome.failed[subject.slug] = _failure(error)


def _failure(error: Exception) -> str:
    first_line = (str(error).splitlines() or [""])[0]
    return f"{type(error).__name__}: {first_line}"[:500]


SIGNATURE_HEADER = "X-Rp9-Signature"
TIMESTAMP_HEADER = "X-Rp9-Timestamp"
EVENT_HEADER = "X-Rp9-Event"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def payload(event: dict[str, Any]) -> dict[str, Any]:
    """What the receiver gets: the event, its tenant and why, in stable field names."""
    return {
        "id": str(event["id"]),
        "type": f"enforcement.{event['action']}",
        "tenant": {"id": str(event["tenant_id"]), "slug": event["slug"]},
        "period": event["period"],
        "metric": event["metric"],
        "value": event["value"],
        "limit": event["limit_value"],
        "threshold": event["threshold"],
        "action": event["action"],
        "recorded_at": event["created_at"].isoformat(),
    }


@dataclass(frozen=True)
class Delivery:
    delivered: int
    failed: int
    pending: int
    error: str | None


def deliver(
    catalog: CatalogResource,
    settings: EnforcementSettings,
    log: Callable[[str], None],
    tenant_ids: Sequence[uuid.UUID] | None = None,
) -> Delivery:
    """POST every undelivered event of the last `notify_window_days` days (of `tenant_ids`
    only, when a run judged only those), oldest first. The
    first failure ends the round (the receiver is down or refusing): the rest wait for the
    next run, so one run never waits on more than one timeout.

    The window is a retry horizon on the wall clock, as the events' `created_at` is: it does
    not follow an enforcement clock moved by `as_of` (a run judging next month still delivers
    what was recorded today)."""
    since = dt.datetime.now(dt.UTC) - dt.timedelta(days=settings.notify_window_days)
    with catalog.begin() as connection:
        events = store.undelivered(connection, since, tenant_ids)
    if not events:
        return Delivery(0, 0, 0, None)
    if not settings.webhook_url:
        return Delivery(0, 0, len(events), "ENFORCEMENT_WEBHOOK_URL is not set")
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
    delivered = 0
    with httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False) as client:
        for event in events:
            body = json.dumps(payload(event), separators=(",", ":")).encode()
            headers = {"Content-Type": "application/json", EVENT_HEADER: str(event["id"])}
            if secret:
                timestamp = str(int(time.time()))
                headers[TIMESTAMP_HEADER] = timestamp
                headers[SIGNATURE_HEADER] = signature(secret, timestamp, body)
            error = None
            try:
                response = client.post(settings.webhook_url, content=body, headers=headers)
                if not response.is_success:
                    error = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as failure:
                error = f"{type(failure).__name__}: {failure}"[:300]
            with catalog.begin() as connection:
                store.mark_delivery(connection, event["id"], error)
            if error is not None:
                log(f"warnings webhook failed for event {event['id']}: {error}")
                return Delivery(delivered, 1, len(events) - delivered - 1, error)
            delivered += 1
    return Delivery(delivered, 0, 0, None)
