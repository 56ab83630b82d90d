"""A small Stripe-compatible HTTP server: the project's one test double, for what no installable
emulator covers (Billing Meters, Entitlements). The real `stripe` SDK talks to it through
`StripeClient(base_addresses={"api": ...})`.

It speaks Stripe's v1 wire protocol: form-encoded bodies with nested `a[b][0]=` keys, JSON
objects with `object` and prefixed ids, list objects with `has_more`, errors as
`{"error": {"type", "code", "message", "param"}}`, Bearer auth, `Idempotency-Key` (same key and
parameters → the stored response replayed with `Idempotent-Replayed: true`; other parameters →
400 `idempotency_error`), meter-event `identifier` uniqueness over a rolling 24 hours (a
duplicate is refused with 400 and `Stripe-Should-Retry: false`, as Stripe does) and meter event
cancellation within 24 hours of receipt.

State lives in one SQLite file (`STRIPE_DOUBLE_DB`) and survives restarts. Control endpoints
under `/_double/` (no auth, loopback only): health, reset, fault injection, a clock offset (to
age events past Stripe's windows) and the webhook deliveries made. Subscription changes are
delivered as signed webhooks (`Stripe-Signature: t=...,v1=...`) to the registered
`webhook_endpoints`, with `customer.subscription.*` and
`entitlements.active_entitlement_summary.updated` events.

Run: `STRIPE_DOUBLE_DB=... STRIPE_DOUBLE_API_KEY=sk_test_... STRIPE_DOUBLE_WEBHOOK_SECRET=whsec_...
python -m uvicorn server:app --host 127.0.0.1 --port 12111` from this directory.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

API_VERSION = "2026-10-28.endive"
IDENTIFIER_WINDOW_S = 24 * 3600
CANCEL_WINDOW_S = 24 * 3600
IDEMPOTENCY_WINDOW_S = 24 * 3600
MAX_LIST_LIMIT = 100

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS objects_kind ON objects (kind, seq);
CREATE TABLE IF NOT EXISTS meter_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    identifier TEXT NOT NULL,
    event_name TEXT NOT NULL,
    customer TEXT NOT NULL,
    value REAL NOT NULL,
    timestamp INTEGER NOT NULL,
    received INTEGER NOT NULL,
    cancelled INTEGER NOT NULL DEFAULT 0,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS meter_events_identifier ON meter_events (identifier);
CREATE INDEX IF NOT EXISTS meter_events_customer ON meter_events (event_name, customer);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    status INTEGER NOT NULL,
    body TEXT NOT NULL,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    type TEXT NOT NULL,
    url TEXT NOT NULL,
    status INTEGER,
    error TEXT,
    at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

PREFIXES = {
    "customer": "cus",
    "product": "prod",
    "price": "price",
    "billing.meter": "mtr",
    "entitlements.feature": "feat",
    "product_feature": "prodft",
    "subscription": "sub",
    "subscription_item": "si",
    "webhook_endpoint": "we",
    "event": "evt",
}


class StripeError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = (
            status,
            message,
            type_,
            code,
            param,
        )
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code:
            error["code"] = self.code
        if self.param:
            error["param"] = self.param
        return {"error": error}


def digest(text: str) -> str:
    """A stable id suffix for derived objects (summaries, active entitlements)."""
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def missing(kind: str, ident: str, param: str = "id") -> StripeError:
    return StripeError(404, f"No such {kind}: '{ident}'", code="resource_missing", param=param)


def required(param: str) -> StripeError:
    return StripeError(
        400, f"Missing required param: {param}.", code="parameter_missing", param=param
    )


def parse_form(raw: str) -> dict[str, Any]:
    """`a[b][0][c]=v` pairs → nested dicts; dicts whose keys are all digits become lists."""
    root: dict[str, Any] = {}
    for key, value in urllib.parse.parse_qsl(raw, keep_blank_values=True):
        parts = re.findall(r"[^\[\]]+|\[\]", key)
        node = root
        for index, part in enumerate(parts):
            name = str(len(node)) if part == "[]" else part
            if index == len(parts) - 1:
                node[name] = value
            else:
                node = node.setdefault(name, {})
    listed: dict[str, Any] = _listify(root)
    return listed


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {k: _listify(v) for k, v in node.items()}
    if converted and all(k.isdigit() for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted


def as_bool(value: Any) -> bool:
    return str(value).lower() == "true"


def as_int(value: Any, param: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise StripeError(400, f"Invalid integer: {value}", param=param) from None


def metadata_of(params: dict[str, Any], current: dict[str, Any] | None = None) -> dict[str, str]:
    merged = dict(current or {})
    given = params.get("metadata")
    if isinstance(given, dict):
        for key, value in given.items():
            if value == "":
                merged.pop(key, None)
            else:
                merged[key] = str(value)
    elif given == "":
        merged = {}
    return merged


@dataclass
class Fault:
    method: str
    path: str
    status: int
    count: int
    # "before": the request is refused before it runs; "after": it runs, then the answer is
    # lost (the client sees the error although the object exists).
    mode: str = "before"
    body_contains: str | None = None


@dataclass
class Double:
    db_path: str
    api_key: str
    webhook_secret: str
    lock: threading.RLock = field(default_factory=threading.RLock)
    faults: list[Fault] = field(default_factory=list)
    _db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            os.makedirs(os.path.dirname(os.path.abspath(self.db_path)), exist_ok=True)
            self._db = sqlite3.connect(self.db_path, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.executescript(SCHEMA)
            self._db.execute("PRAGMA journal_mode=WAL")
        return self._db

    # The clock: real time plus an offset that tests move forward.
    def now(self) -> int:
        row = self.db.execute("SELECT value FROM settings WHERE name = 'clock_offset'").fetchone()
        return int(time.time()) + (int(row["value"]) if row else 0)

    def advance(self, seconds: int) -> int:
        offset = self.now() - int(time.time()) + seconds
        self.db.execute(
            "INSERT INTO settings VALUES ('clock_offset', ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (str(offset),),
        )
        self.db.commit()
        return offset

    def new_id(self, kind: str) -> str:
        return f"{PREFIXES[kind]}_{secrets.token_hex(12)}"

    # Objects: one JSON document per id.
    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.db.execute(
            "INSERT INTO objects (id, kind, data) VALUES (?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET data = excluded.data",
            (obj["id"], obj["object"], json.dumps(obj)),
        )
        return obj

    def get(self, kind: str, ident: str, name: str | None = None) -> dict[str, Any]:
        row = self.db.execute(
            "SELECT data FROM objects WHERE id = ? AND kind = ?", (ident, kind)
        ).fetchone()
        if row is None:
            raise missing(name or kind.split(".")[-1].replace("_", " "), ident)
        data: dict[str, Any] = json.loads(row["data"])
        return data

    def all(self, kind: str) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT data FROM objects WHERE kind = ? ORDER BY seq DESC", (kind,)
        ).fetchall()
        return [json.loads(row["data"]) for row in rows]

    def create(self, kind: str, fields: dict[str, Any], ident: str | None = None) -> dict[str, Any]:
        obj = {
            "id": ident or self.new_id(kind),
            "object": kind,
            "created": self.now(),
            "livemode": False,
            **fields,
        }
        return self.put(obj)


def paginate(items: list[dict[str, Any]], params: dict[str, Any], url: str) -> dict[str, Any]:
    """Stripe's cursor pagination over a newest-first list."""
    limit = min(as_int(params.get("limit", 10), "limit"), MAX_LIST_LIMIT)
    if limit < 1:
        raise StripeError(400, "limit must be between 1 and 100", param="limit")
    ids = [item["id"] for item in items]
    if after := params.get("starting_after"):
        if after not in ids:
            raise missing("object", after, "starting_after")
        items = items[ids.index(after) + 1 :]
    elif before := params.get("ending_before"):
        if before not in ids:
            raise missing("object", before, "ending_before")
        items = items[: ids.index(before)][-limit:]
    return {"object": "list", "data": items[:limit], "has_more": len(items) > limit, "url": url}


Handler = Callable[["Double", dict[str, Any], re.Match[str]], tuple[int, dict[str, Any]]]
ROUTES: list[tuple[str, re.Pattern[str], Handler]] = []


def route(method: str, pattern: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        ROUTES.append((method, re.compile(f"^{pattern}$"), handler))
        return handler

    return register


# Customers


@route("POST", "/v1/customers")
def create_customer(d: Double, p: dict[str, Any], _: re.Match[str]) -> tuple[int, dict[str, Any]]:
    return 200, d.create(
        "customer",
        {
            "name": p.get("name"),
            "email": p.get("email"),
            "description": p.get("description"),
            "metadata": metadata_of(p),
            "deleted": None,
        },
    )


@route("GET", "/v1/customers/(?P<id>[^/]+)")
def get_customer(d: Double, _: dict[str, Any], m: re.Match[str]) -> tuple[int, dict[str, Any]]:
    return 200, d.get("customer", m["id"])


@route("POST", "/v1/customers/(?P<id>[^/]+)")
def update_customer(d: Double, p: dict[str, Any], m: re.Match[str]) -> tuple[int, dict[str, Any]]:
    customer = d.get("customer", m["id"])
    for name in ("name", "email", "description"):
        if name in p:
            customer[name] = p[name] or None
    customer["metadata"] = metadata_of(p, customer["metadata"])
    return 200, d.put(customer)


@route("GET", "/v1/customers")
def list_customers(d: Double, p: dict[str, Any], _: re.Match[str]) -> tuple[int, dict[str, Any]]:
    items = [c for c in d.all("customer") if "email" not in p or c["email"] == p["email"]]
    return 200, paginate(items, p, "/v1/customers")


# Products and their features


@route("POST", "/v1/products")
def create_product(d: Double, p: dict[str, Any], _: re.Match[str]) -> tuple[int, dict[str, Any]]:
    if not p.get("name"):
        raise required("name")
    ident = p.get("id")
    if ident and d.db.execute("SELECT 1 FROM objects WHERE id = ?", (ident,)).fetchone():
        raise StripeError(
            400, f"Product already exists: {ident}", code="resource_already_exists", param="id"
        )
    return 200, d.create(
        "product",
        {
            "name": p["name"],
            "active": as_bool(p.get("active", "true")),
            "description": p.get("description"),
            "metadata": metadata_of(p),
            "default_price": None,
            "updated": d.now(),
        },
        ident,
    )


@route("GET", "/v1/products/(?P<id>[^/]+)")
def get_product(d: Double, _: dict[str, Any], m: re.Match[str]) -> tuple[int, dict[str, Any]]:
    return 200, d.get("product", m["id"])


@route("POST", "/v1/products/(?P<id>[^/]+)")
def update_product(d: Double, p: dict[str, Any], m: re.Match[str]) -> tuple[int, dict[str, Any]]:
    product = d.get("product", m["id"])
    if "name" in p:
        product["name"] = p["name"]
    if "active" in p:
        product["active"] = as_bool(p["active"])
    product["metadata"] = metadata_of(p, product["metadata"])
    product["updated"] = d.now()
    return 200, d.put(product)


@route("GET", "/v1/products")
def list_products(d: Double, p: dict[str, Any], _: re.Match[str]) -> tuple[int, dict[str, Any]]:
    items = d.all("product")
    if "active" in p:
        items = [i for i in items if i["active"] == as_bool(p["active"])]
    if "ids" in p:
        items = [i for i in items if i["id"] in p["ids"]]
    return 200, paginate(items, p, "/v1/products")


@route("POST", "/v1/products/(?P<product>[^/]+)/features")
def attach_feature(d: Double, p: dict[str, Any], m: re.Match[str]) -> tuple[int, dict[str, Any]]:
    d.get("product", m["product"])
    if not p.get("entitlement_feature"):
        raise required("entitlement_feature")
    feature = d.get("entitlements.feature", p["entitlement_feature"], "feature")
    for existing in d.all("product_feature"):
        if (
            existing["product"] == m["product"]
            and existing["entitlement_feature"]["id"] == (feature["id"])
        ):
            raise StripeError(
                400,
                f"Feature {feature['id']} is already attached to product {m['product']}",
                code="resource_already_exists",
                param="entitlement_feature",
            )
    return 200, d.create(
        "product_feature", {"entitlement_feature": feature, "product": m["product"]}
    )


@route("GET", "/v1/products/(?P<product>[^/]+)/features")
def list_product_features(
    d: Double, p: dict[str, Any], m: re.Match[str]
) -> tuple[int, dict[str, Any]]:
    d.get("product", m["product"])
    items = [f for f in d.all("product_feature") if f["product"] == m["product"]]
    return 200, paginate(items, p, f"/v1/products/{m['product']}/features")


@route("DELETE", "/v1/products/(?P<product>[^/]+)/features/(?P<id>[^/]+)")
def detach_feature(d: Double, _: dict[str, Any], m: re.Match[str]) -> tuple[int, dict[str, Any]]:
    d.get("product_feature", m["id"])
    d.db.execute("DELETE FROM objects WHERE id = ?", (m["id"],))
    return 200, {"id": m["id"], "object": "product_feature", "deleted": True}


# Prices


@route("POST", "/v1/prices")
def create_price(d: Double, p: dict[str, Any], _: re.Match[str]) -> tuple[int, dict[str, Any]]:
    for name in ("currency", "product"):
        if not p.get(name):
            raise required(name)
    d.get("product", p["product"], "product")
    recurring = p.get("recurring")
    if recurring is not None:
        usage_type = recurring.get("usage_type", "licensed")
        if usage_type == "metered" and not recurring.get("meter"):
            raise StripeError(400, "A metered price needs a meter.", param="recurring[meter]")
        if recurring.get("meter"):
            d.get("billing.meter", recurring["meter"], "billing meter")
        recurring = {
            "interval": recurring.get("interval", "month"),
            "interval_count": int(recurring.get("interval_count", 1)),
            "meter": recurring.get("meter"),
            "usage_type": usage_type,
            "aggregate_usage": None,
            "trial_period_days": None,
        }
    lookup_key = p.get("lookup_key")
    if lookup_key:
        holders = [x for x in d.all("price") if x.get("lookup_key") == lookup_key]
        if holders and not as_bool(p.get("transfer_lookup_key", "false")):
            raise StripeError(
                400,
                f"A price (`{holders[0]['id']}`) already uses that lookup key.",
                param="lookup_key",
            )
        for holder in holders:
            holder["lookup_key"] = None
            d.put(holder)
    unit_amount = p.get("unit_amount")
    return 200, d.create(
        "price",
        {
            "active": True,
            "billing_scheme": p.get("billing_scheme", "per_unit"),
            "currency": p["currency"].lower(),
            "lookup_key": lookup_key,
            "metadata": metadata_of(p),
            "nickname": p.get("nickname"),
            "product": p["product"],
            "recurring": recurring,
            "type": "recurring" if recurring else "one_time",
            "unit_amount": int(unit_amount) if unit_amount is not None else None,
            "unit_amount_decimal": str(p.get("unit_amount_decimal", unit_amount)),
            "tax_behavior": "unspecified",
        },
    )


@route("GET", "/v1/prices/(?P<id>[^/]+)")
def get_price(d: Double, _: dict[str, Any], m: re.Match[str]) -> tuple[int, dict[str, Any]]:
    return 200, d.get("price", m["id"])


@route("GET", "/v1/prices")
def list_prices(d: Double, p: dict[str, Any], _: re.Match[str]) -> tuple[int, dict[str, Any]]:
    items = d.all("price")
    if "lookup_keys" in p:
        wanted = p["lookup_keys"] if isinstance(p["lookup_keys"], list) else [p["lookup_keys"]]
        items = [i for i in items if i.get("lookup_key") in wanted]
    if "product" in p:
        items = [i for i in items if i["product"] == p["product"]]
    if "active" in p:
        items = [i for i in items if i["active"] == as_bool(p["active"])]
    return 200, paginate(items, p, "/v1/prices")


# Billing meters, meter events, adjustments and summaries


@route("POST", "/v1/billing/meters")
def create_meter(d: Double, p: dict[str, Any], _: re.Match[str]) -> tuple[int, dict[str, Any]]:
    for name in ("display_name", "event_name", "default_aggregation"):
        if not p.get(name):
            raise required(name)
    formula = p["default_aggregation"].get("formula")
    if formula not in ("sum", "count", "last"):
        raise StripeError(400, f"Invalid formula: {formula}", param="default_aggregation[formula]")
    if any(m["event_name"] == p["event_name"] for m in d.all("billing.meter")):
        raise StripeError(
            400,
            f"A meter with event_name `{p['event_name']}` already exists.",
            param="event_name",
        )
    mapping = p.get("customer_mapping") or {}
    value_settings = p.get("value_settings") or {}
    return 200, d.create(
        "billing.meter",
        {
            "display_name": p["display_name"],
            "event_name": p["event_name"],
            "default_aggregation": {"formula": formula},
            "customer_mapping": {
                "event_payload_key": mapping.get("event_payload_key", "stripe_customer_id"),
                "type": mapping.get("type", "by_id"),
            },
            "value_settings": {
                "event_payload_key": value_settings.get("event_payload_key", "value")
            },
            "event_time_window": p.get("event_time_window"),
            "status": "active",
            "status_transitions": {"deactivated_at": None},
            "updated": d.now(),
        },
    )


@route("GET", "/v1/billing/meters/(?P<id>[^/]+)")
def get_meter(d: Double, _: dict[str, Any], m: re.Match[str]) -> tuple[int, dict[str, Any]]:
    return 200, d.get("billing.meter", m["id"], "billing meter")


@route("GET", "/v1/billing/meters")
def list_meters(d: Double, p: dict[str, Any], _: re.Match[str]) -> tuple[int, dict[str, Any]]:
    items = d.all("billing.meter")
    if "status" in p:
        items = [i for i in items if i["status"] == p["status"]]
    return 200, paginate(items, p, "/v1/billing/meters")


def _meter_for_event(d: Double, event_name: str) -> dict[str, Any]:
    for meter in d.all("billing.meter"):
        if meter["event_name"] == event_name and meter["status"] == "active":
            return meter
    raise StripeError(
        400,
        f"No active meter was found for event_name `{event_name}`.",
        code="resource_missing",
        param="event_name",
    )


@route("POST", "/v1/billing/meter_events")
def create_meter_event(
    d: Double, p: dict[str, Any], _: re.Match[str]
) -> tuple[int, dict[str, Any]]:
    for name in ("event_name", "payload"):
        if not p.get(name):
            raise required(name)
    meter = _meter_for_event(d, p["event_name"])
    payload: dict[str, Any] = p["payload"]
    customer_key = meter["customer_mapping"]["event_payload_key"]
    value_key = meter["value_settings"]["event_payload_key"]
    if not payload.get(customer_key):
        raise required(f"payload[{customer_key}]")
    try:
        value = float(payload.get(value_key, "1"))
    except ValueError:
        raise StripeError(
            400,
            f"The value `{payload.get(value_key)}` is not a number.",
            param=f"payload[{value_key}]",
        ) from None
    now = d.now()
    timestamp = as_int(p.get("timestamp", now), "timestamp")
    if not now - 35 * 86400 <= timestamp <= now + 300:
        raise StripeError(
            400,
            "The timestamp must be within the past 35 calendar days or up to 5 minutes "
            "in the future.",
            param="timestamp",
        )
    identifier = p.get("identifier") or f"evt_id_{secrets.token_hex(12)}"
    if len(identifier) > 100:
        raise StripeError(400, "identifier is longer than 100 characters.", param="identifier")
    seen = d.db.execute(
        "SELECT 1 FROM meter_events WHERE identifier = ? AND received > ?",
        (identifier, now - IDENTIFIER_WINDOW_S),
    ).fetchone()
    if seen:
        raise StripeError(
            400,
            f"An event already exists with identifier {identifier}.",
            param="identifier",
            headers={"Stripe-Should-Retry": "false"},
        )
    d.db.execute(
        "INSERT INTO meter_events (identifier, event_name, customer, value, timestamp, "
        "received, payload) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            identifier,
            p["event_name"],
            payload[customer_key],
            value,
            timestamp,
            now,
            json.dumps(payload),
        ),
    )
    return 200, {
        "object": "billing.meter_event",
        "created": now,
        "event_name": p["event_name"],
        "identifier": identifier,
        "livemode": False,
        "payload": payload,
        "timestamp": timestamp,
    }


@route("POST", "/v1/billing/meter_event_adjustments")
def create_adjustment(d: Double, p: dict[str, Any], _: re.Match[str]) -> tuple[int, dict[str, Any]]:
    if not p.get("event_name"):
        raise required("event_name")
    if p.get("type", "cancel") != "cancel":
        raise StripeError(400, "Only `cancel` adjustments are supported.", param="type")
    identifier = (p.get("cancel") or {}).get("identifier")
    if not identifier:
        raise required("cancel[identifier]")
    row = d.db.execute(
        "SELECT seq, received, cancelled FROM meter_events WHERE identifier = ? "
        "AND event_name = ? ORDER BY seq DESC LIMIT 1",
        (identifier, p["event_name"]),
    ).fetchone()
    if row is None:
        raise missing("meter event", identifier, "cancel[identifier]")
    if row["received"] < d.now() - CANCEL_WINDOW_S:
        raise StripeError(
            400,
            "Meter events can only be cancelled within 24 hours of being received.",
            param="cancel[identifier]",
        )
    d.db.execute("UPDATE meter_events SET cancelled = 1 WHERE seq = ?", (row["seq"],))
    return 200, {
        "object": "billing.meter_event_adjustment",
        "cancel": {"identifier": identifier},
        "event_name": p["event_name"],
        "livemode": False,
        "status": "pending",
        "type": "cancel",
    }


@route("GET", "/v1/billing/meters/(?P<id>[^/]+)/event_summaries")
def meter_summaries(d: Double, p: dict[str, Any], m: re.Match[str]) -> tuple[int, dict[str, Any]]:
    meter = d.get("billing.meter", m["id"], "billing meter")
    for name in ("customer", "start_time", "end_time"):
        if not p.get(name):
            raise required(name)
    start, end = as_int(p["start_time"], "start_time"), as_int(p["end_time"], "end_time")
    window = p.get("value_grouping_window")
    step = {"day": 86400, "hour": 3600, None: end - start}.get(window)
    if step is None:
        raise StripeError(
            400, f"Invalid value_grouping_window: {window}", param="value_grouping_window"
        )
    if start >= end or start % 60 or end % 60 or (window and (start % step or end % step)):
        raise StripeError(
            400,
            "start_time and end_time must be ordered and aligned to the grouping window "
            "(minute boundaries without one).",
            param="start_time",
        )
    formula = meter["default_aggregation"]["formula"]
    summaries = []
    for bucket_start in range(start, end, step):
        bucket_end = min(bucket_start + step, end)
        rows = d.db.execute(
            "SELECT value FROM meter_events WHERE event_name = ? AND customer = ? AND "
            "cancelled = 0 AND timestamp >= ? AND timestamp < ? ORDER BY timestamp, seq",
            (meter["event_name"], p["customer"], bucket_start, bucket_end),
        ).fetchall()
        values = [row["value"] for row in rows]
        aggregated = {
            "sum": sum(values),
            "count": float(len(values)),
            "last": values[-1] if values else 0.0,
        }[formula]
        summaries.append(
            {
                "id": "mtrusg_" + digest(f"{m['id']}:{p['customer']}:{bucket_start}"),
                "object": "billing.meter_event_summary",
                "aggregated_value": aggregated,
                "end_time": bucket_end,
                "livemode": False,
                "meter": m["id"],
                "start_time": bucket_start,
            }
        )
    summaries.reverse()  # newest first, as every Stripe list
    return 200, paginate(summaries, p, f"/v1/billing/meters/{m['id']}/event_summaries")


# Entitlements


@route("POST", "/v1/entitlements/features")
def create_feature(d: Double, p: dict[str, Any], _: re.Match[str]) -> tuple[int, dict[str, Any]]:
    for name in ("name", "lookup_key"):
        if not p.get(name):
            raise required(name)
    if any(f["lookup_key"] == p["lookup_key"] for f in d.all("entitlements.feature")):
        raise StripeError(
            400,
            f"A feature with lookup_key `{p['lookup_key']}` already exists.",
            code="resource_already_exists",
            param="lookup_key",
        )
    return 200, d.create(
        "entitlements.feature",
        {
            "active": True,
            "lookup_key": p["lookup_key"],
            "name": p["name"],
            "metadata": metadata_of(p),
        },
    )


@route("GET", "/v1/entitlements/features/(?P<id>[^/]+)")
def get_feature(d: Double, _: dict[str, Any], m: re.Match[str]) -> tuple[int, dict[str, Any]]:
    return 200, d.get("entitlements.feature", m["id"], "feature")


@route("GET", "/v1/entitlements/features")
def list_features(d: Double, p: dict[str, Any], _: re.Match[str]) -> tuple[int, dict[str, Any]]:
    items = d.all("entitlements.feature")
    if "lookup_key" in p:
        items = [i for i in items if i["lookup_key"] == p["lookup_key"]]
    if "archived" in p:
        items = [i for i in items if i["active"] != as_bool(p["archived"])]
    return 200, paginate(items, p, "/v1/entitlements/features")


def active_entitlements(d: Double, customer: str) -> list[dict[str, Any]]:
    """Derived as Stripe does: the features of the products of the customer's active (or
    trialing / past due) subscriptions, one entitlement per feature."""
    products: set[str] = set()
    for sub in d.all("subscription"):
        if sub["customer"] == customer and sub["status"] in ("active", "trialing", "past_due"):
            products.update(item["price"]["product"] for item in sub["items"]["data"])
    seen: dict[str, dict[str, Any]] = {}
    for link in d.all("product_feature"):
        feature = link["entitlement_feature"]
        if link["product"] in products and feature["id"] not in seen:
            seen[feature["id"]] = {
                "id": "ent_" + digest(f"{customer}:{feature['id']}"),
                "object": "entitlements.active_entitlement",
                "feature": feature["id"],
                "livemode": False,
                "lookup_key": feature["lookup_key"],
            }
    return sorted(seen.values(), key=lambda e: e["lookup_key"])


@route("GET", "/v1/entitlements/active_entitlements")
def list_active(d: Double, p: dict[str, Any], _: re.Match[str]) -> tuple[int, dict[str, Any]]:
    if not p.get("customer"):
        raise required("customer")
    d.get("customer", p["customer"], "customer")
    return 200, paginate(
        active_entitlements(d, p["customer"]), p, "/v1/entitlements/active_entitlements"
    )


# Subscriptions (their changes are what the webhooks announce)


def _items(d: Double, sub_id: str, given: list[dict[str, Any]], now: int) -> list[dict[str, Any]]:
    items = []
    for index, item in enumerate(given):
        if not item.get("price"):
            raise required(f"items[{index}][price]")
        price = d.get("price", item["price"], "price")
        quantity = (
            None
            if (price["recurring"] or {}).get("usage_type") == "metered"
            else int(item.get("quantity", 1))
        )
        items.append(
            {
                "id": d.new_id("subscription_item"),
                "object": "subscription_item",
                "created": now,
                "price": price,
                "quantity": quantity,
                "subscription": sub_id,
                "current_period_start": now,
                "current_period_end": now + 30 * 86400,
                "metadata": metadata_of(item),
            }
        )
    return items


def _item_list(sub_id: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": items,
        "has_more": False,
        "url": f"/v1/subscription_items?subscription={sub_id}",
    }


@route("POST", "/v1/subscriptions")
def create_subscription(
    d: Double, p: dict[str, Any], _: re.Match[str]
) -> tuple[int, dict[str, Any]]:
    if not p.get("customer"):
        raise required("customer")
    d.get("customer", p["customer"], "customer")
    if not p.get("items"):
        raise required("items")
    now = d.now()
    sub_id = d.new_id("subscription")
    sub = d.create(
        "subscription",
        {
            "customer": p["customer"],
            "status": "active",
            "items": _item_list(sub_id, _items(d, sub_id, p["items"], now)),
            "metadata": metadata_of(p),
            "cancel_at_period_end": False,
            "canceled_at": None,
            "ended_at": None,
            "start_date": now,
            "currency": "usd",
        },
        sub_id,
    )
    changed(d, sub, "customer.subscription.created", None)
    return 200, sub


@route("GET", "/v1/subscriptions/(?P<id>[^/]+)")
def get_subscription(d: Double, _: dict[str, Any], m: re.Match[str]) -> tuple[int, dict[str, Any]]:
    return 200, d.get("subscription", m["id"])


@route("GET", "/v1/subscriptions")
def list_subscriptions(
    d: Double, p: dict[str, Any], _: re.Match[str]
) -> tuple[int, dict[str, Any]]:
    items = d.all("subscription")
    if "customer" in p:
        items = [i for i in items if i["customer"] == p["customer"]]
    status = p.get("status", "all_but_canceled")
    if status == "all_but_canceled":
        items = [i for i in items if i["status"] != "canceled"]
    elif status != "all":
        items = [i for i in items if i["status"] == status]
    return 200, paginate(items, p, "/v1/subscriptions")


@route("POST", "/v1/subscriptions/(?P<id>[^/]+)")
def update_subscription(
    d: Double, p: dict[str, Any], m: re.Match[str]
) -> tuple[int, dict[str, Any]]:
    sub = d.get("subscription", m["id"])
    if sub["status"] == "canceled":
        raise StripeError(
            400,
            "A canceled subscription can only update its cancellation_details and metadata.",
            param="items",
        )
    previous: dict[str, Any] = {}
    now = d.now()
    if "items" in p:
        previous["items"] = json.loads(json.dumps(sub["items"]))
        current = {item["id"]: item for item in sub["items"]["data"]}
        for index, change in enumerate(p["items"]):
            if change.get("id"):
                if change["id"] not in current:
                    raise missing("subscription item", change["id"], f"items[{index}][id]")
                if as_bool(change.get("deleted", "false")):
                    del current[change["id"]]
                    continue
                if change.get("price"):
                    current[change["id"]]["price"] = d.get("price", change["price"], "price")
                if change.get("quantity"):
                    current[change["id"]]["quantity"] = int(change["quantity"])
            else:
                for item in _items(d, sub["id"], [change], now):
                    current[item["id"]] = item
        sub["items"] = _item_list(sub["id"], list(current.values()))
    if "metadata" in p:
        previous["metadata"] = sub["metadata"]
        sub["metadata"] = metadata_of(p, sub["metadata"])
    if "cancel_at_period_end" in p:
        previous["cancel_at_period_end"] = sub["cancel_at_period_end"]
        sub["cancel_at_period_end"] = as_bool(p["cancel_at_period_end"])
    d.put(sub)
    changed(d, sub, "customer.subscription.updated", previous)
    return 200, sub


@route("DELETE", "/v1/subscriptions/(?P<id>[^/]+)")
def cancel_subscription(
    d: Double, _: dict[str, Any], m: re.Match[str]
) -> tuple[int, dict[str, Any]]:
    sub = d.get("subscription", m["id"])
    if sub["status"] == "canceled":
        raise StripeError(
            400,
            f"This subscription is already canceled: {sub['id']}",
            code="resource_missing",
            param="id",
        )
    now = d.now()
    sub.update(status="canceled", canceled_at=now, ended_at=now)
    d.put(sub)
    changed(d, sub, "customer.subscription.deleted", {"status": "active"})
    return 200, sub


# Webhook endpoints and events


@route("POST", "/v1/webhook_endpoints")
def create_endpoint(d: Double, p: dict[str, Any], _: re.Match[str]) -> tuple[int, dict[str, Any]]:
    if not p.get("url"):
        raise required("url")
    events = p.get("enabled_events") or ["*"]
    return 200, {
        **d.create(
            "webhook_endpoint",
            {
                "url": p["url"],
                "enabled_events": events,
                "status": "enabled",
                "api_version": p.get("api_version"),
                "description": p.get("description"),
                "metadata": metadata_of(p),
            },
        ),
        "secret": d.webhook_secret,
    }


@route("GET", "/v1/webhook_endpoints")
def list_endpoints(d: Double, p: dict[str, Any], _: re.Match[str]) -> tuple[int, dict[str, Any]]:
    return 200, paginate(d.all("webhook_endpoint"), p, "/v1/webhook_endpoints")


@route("DELETE", "/v1/webhook_endpoints/(?P<id>[^/]+)")
def delete_endpoint(d: Double, _: dict[str, Any], m: re.Match[str]) -> tuple[int, dict[str, Any]]:
    d.get("webhook_endpoint", m["id"], "webhook endpoint")
    d.db.execute("DELETE FROM objects WHERE id = ?", (m["id"],))
    return 200, {"id": m["id"], "object": "webhook_endpoint", "deleted": True}


@route("GET", "/v1/events/(?P<id>[^/]+)")
def get_event(d: Double, _: dict[str, Any], m: re.Match[str]) -> tuple[int, dict[str, Any]]:
    return 200, d.get("event", m["id"])


@route("GET", "/v1/events")
def list_events(d: Double, p: dict[str, Any], _: re.Match[str]) -> tuple[int, dict[str, Any]]:
    items = d.all("event")
    if "type" in p:
        items = [i for i in items if i["type"] == p["type"]]
    return 200, paginate(items, p, "/v1/events")


def sign(secret: str, payload: bytes, timestamp: int) -> str:
    """Stripe's scheme: `t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<payload>")>`."""
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def changed(self: Double, sub: dict[str, Any], type_: str, previous: dict[str, Any] | None) -> None:
    """Record the subscription event and the entitlement summary it implies; deliver both
    after the response (Stripe delivers asynchronously)."""
    data: dict[str, Any] = {"object": sub}
    if previous is not None:
        data["previous_attributes"] = previous
    events = [
        self.create(
            "event",
            {
                "api_version": API_VERSION,
                "data": data,
                "pending_webhooks": 1,
                "request": {"id": None, "idempotency_key": None},
                "type": type_,
            },
        )
    ]
    entitlements = active_entitlements(self, sub["customer"])
    summary = {
        "object": "entitlements.active_entitlement_summary",
        "customer": sub["customer"],
        "entitlements": {
            "object": "list",
            "data": entitlements,
            "has_more": False,
            "url": "/v1/entitlements/active_entitlements",
        },
        "livemode": False,
    }
    events.append(
        self.create(
            "event",
            {
                "api_version": API_VERSION,
                "data": {"object": summary},
                "pending_webhooks": 1,
                "request": {"id": None, "idempotency_key": None},
                "type": "entitlements.active_entitlement_summary.updated",
            },
        )
    )
    PENDING.extend(events)


# Events recorded by the request being handled (under the lock), delivered after it commits.
PENDING: list[dict[str, Any]] = []


def deliver(double: Double, events: list[dict[str, Any]]) -> None:
    """POST each event to every enabled endpoint that wants it, signed; three attempts."""
    with double.lock:
        endpoints = double.all("webhook_endpoint")
    for event in events:
        payload = json.dumps(event).encode()
        for endpoint in endpoints:
            wanted = endpoint["enabled_events"]
            if "*" not in wanted and event["type"] not in wanted:
                continue
            status, error = None, None
            for attempt in range(3):
                try:
                    response = httpx.post(
                        endpoint["url"],
                        content=payload,
                        timeout=10,
                        headers={
                            "Content-Type": "application/json",
                            "Stripe-Signature": sign(double.webhook_secret, payload, double.now()),
                        },
                    )
                    status, error = response.status_code, None
                    if response.status_code < 500:
                        break
                except httpx.HTTPError as exc:
                    status, error = None, repr(exc)
                time.sleep(0.2 * (attempt + 1))
            with double.lock:
                double.db.execute(
                    "INSERT INTO deliveries (event_id, type, url, status, error, at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (event["id"], event["type"], endpoint["url"], status, error, double.now()),
                )
                double.db.commit()


def _fingerprint(method: str, path: str, raw: str) -> str:
    canonical = json.dumps(sorted(urllib.parse.parse_qsl(raw, keep_blank_values=True)))
    return hashlib.sha256(f"{method} {path} {canonical}".encode()).hexdigest()


def _error(error: StripeError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def create_app() -> FastAPI:
    double = Double(
        db_path=os.environ.get("STRIPE_DOUBLE_DB", "stripe-double.sqlite3"),
        api_key=os.environ["STRIPE_DOUBLE_API_KEY"],
        webhook_secret=os.environ["STRIPE_DOUBLE_WEBHOOK_SECRET"],
    )
    app = FastAPI(title="Stripe double", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.double = double

    @app.get("/_double/health")
    def health() -> dict[str, Any]:
        with double.lock:
            double.db.execute("SELECT 1").fetchone()
        return {"status": "ok", "api_version": API_VERSION}

    @app.post("/_double/reset")
    def reset() -> dict[str, Any]:
        with double.lock:
            for table in ("objects", "meter_events", "idempotency", "deliveries", "settings"):
                double.db.execute(f"DELETE FROM {table}")
            double.db.commit()
            double.faults.clear()
        return {"reset": True}

    @app.post("/_double/faults")
    async def add_fault(request: Request) -> dict[str, Any]:
        body = await request.json()
        fault = Fault(
            method=str(body["method"]).upper(),
            path=str(body["path"]),
            status=int(body["status"]),
            count=int(body.get("count", 1)),
            mode=str(body.get("mode", "before")),
            body_contains=body.get("body_contains"),
        )
        if fault.mode not in ("before", "after"):
            return JSONResponse({"error": "mode is before or after"}, status_code=400)  # type: ignore[return-value]
        with double.lock:
            double.faults.append(fault)
        return {"faults": [vars(f) for f in double.faults]}

    @app.delete("/_double/faults")
    def clear_faults() -> dict[str, Any]:
        with double.lock:
            double.faults.clear()
        return {"faults": []}

    @app.post("/_double/clock")
    async def move_clock(request: Request) -> dict[str, Any]:
        body = await request.json()
        with double.lock:
            offset = double.advance(int(body["advance_s"]))
        return {"offset_s": offset, "now": double.now()}

    @app.get("/_double/deliveries")
    def deliveries(event_id: str | None = None) -> dict[str, Any]:
        with double.lock:
            query = "SELECT * FROM deliveries"
            args: tuple[str, ...] = ()
            if event_id:
                query, args = query + " WHERE event_id = ?", (event_id,)
            rows = double.db.execute(query + " ORDER BY seq", args).fetchall()
        return {"deliveries": [dict(row) for row in rows]}

    @app.get("/_double/meter_events")
    def meter_events(customer: str) -> dict[str, Any]:
        with double.lock:
            rows = double.db.execute(
                "SELECT identifier, event_name, value, timestamp, received, cancelled "
                "FROM meter_events WHERE customer = ? ORDER BY seq",
                (customer,),
            ).fetchall()
        return {"meter_events": [dict(row) for row in rows]}

    @app.api_route("/v1/{rest:path}", methods=["GET", "POST", "DELETE"])
    async def stripe_api(request: Request, rest: str) -> Response:
        path = f"/v1/{rest}"
        method = request.method
        raw = (await request.body()).decode() if method == "POST" else request.url.query
        auth = request.headers.get("authorization", "")
        if not hmac.compare_digest(auth, f"Bearer {double.api_key}"):
            return _error(
                StripeError(
                    401,
                    "Invalid API Key provided: " + (auth[7:12] + "*" * 8 if auth else "none"),
                )
            )
        handler, match = None, None
        for route_method, pattern, candidate in ROUTES:
            if route_method == method and (match := pattern.match(path)):
                handler = candidate
                break
        if handler is None or match is None:
            return _error(
                StripeError(
                    404, f"Unrecognized request URL ({method}: {path}).", code="resource_missing"
                )
            )
        # The SDK's retries and the callers' run in threads: one request at a time keeps
        # identifier checks, idempotency and webhooks consistent.
        events: list[dict[str, Any]] = []
        with double.lock:
            fault = next(
                (
                    f
                    for f in double.faults
                    if f.method == method
                    and f.count > 0
                    and re.fullmatch(f.path, path)
                    and (f.body_contains is None or f.body_contains in urllib.parse.unquote(raw))
                ),
                None,
            )
            if fault is not None:
                fault.count -= 1
                double.faults = [f for f in double.faults if f.count > 0]
            injected = StripeError(
                fault.status if fault else 500,
                "An error occurred with our connection to Stripe (injected by the test double).",
                type_="api_error",
            )
            if fault is not None and fault.mode == "before":
                return _error(injected)
            key = request.headers.get("idempotency-key") if method == "POST" else None
            fingerprint = _fingerprint(method, path, raw)
            if key:
                stored = double.db.execute(
                    "SELECT * FROM idempotency WHERE key = ? AND created > ?",
                    (key, double.now() - IDEMPOTENCY_WINDOW_S),
                ).fetchone()
                if stored is not None:
                    if stored["fingerprint"] != fingerprint:
                        return _error(
                            StripeError(
                                400,
                                "Keys for idempotent requests can only be used with the same "
                                f"parameters they were first used with. Try using a key other than "
                                f"'{key}' if you meant to execute a different request.",
                                type_="idempotency_error",
                            )
                        )
                    return Response(
                        stored["body"],
                        status_code=stored["status"],
                        media_type="application/json",
                        headers={"Idempotent-Replayed": "true", "Idempotency-Key": key},
                    )
            try:
                params = parse_form(raw)
                status, body = handler(double, params, match)
            except StripeError as error:
                double.db.rollback()
                PENDING.clear()
                return _error(error)
            encoded = json.dumps(body)
            if key:
                double.db.execute(
                    "INSERT OR REPLACE INTO idempotency VALUES (?, ?, ?, ?, ?)",
                    (key, fingerprint, status, encoded, double.now()),
                )
            double.db.commit()
            events, PENDING[:] = list(PENDING), []
        if events:
            threading.Thread(target=deliver, args=(double, events), daemon=True).start()
        if fault is not None:  # mode "after": it happened, but the caller never hears so
            return _error(injected)
        headers = {"Request-Id": f"req_{secrets.token_hex(8)}", "Stripe-Version": API_VERSION}
        if key:
            headers["Idempotency-Key"] = key
        return Response(encoded, status_code=status, media_type="application/json", headers=headers)

    return app


app = create_app()
