"""Delivery of enforcement events to the warnings webhook: JSON POSTs, optionally signed, each
event acknowledged once (`notified_at`); a failure is recorded (`notify_error`) and retried on
the next run. A dead receiver costs one short timeout per run, never more."""

import datetime as dt
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from rp9_pipelines.catalog import enforcement as store
from rp9_pipelines.enforcement.settings import EnforcementSettings
from rp9_pipelines.resources.catalog import CatalogResource

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
    now: dt.datetime,
    log: Callable[[str], None],
    tenant_ids: Sequence[uuid.UUID] | None = None,
) -> Delivery:
    """POST every undelivered event of the last `notify_window_days` days (of `tenant_ids`
    only, when a run judged only those), oldest first. The
    first failure ends the round (the receiver is down or refusing): the rest wait for the
    next run, so one run never waits on more than one timeout."""
    since = now - dt.timedelta(days=settings.notify_window_days)
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
