"""The project's Stripe-compatible server, driven only through the real `stripe` SDK: Stripe's
wire protocol, idempotency, meter-event identifiers and cancellation windows, event summaries,
entitlements derived from subscriptions, signed webhooks, fault injection and persistence.

Each test module runs its own server on a free port with its own SQLite file (so the clock
and faults it moves never reach the stack's shared server), as `stack.sh` starts it."""

import json
import secrets
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
import stripe

from rp9_pipelines.resources.stripe import is_duplicate_identifier, make_client
from rp9_pipelines_tests.conftest import ROOT, free_port, serve
from rp9_pipelines_tests.waiting import wait_until

API_KEY = "sk_test_" + secrets.token_hex(12)
WEBHOOK_SECRET = "whsec_" + secrets.token_hex(12)
DAY = 86_400
SERVER_DIR = ROOT / "testing" / "stripe_double"


class Double:
    def __init__(self, url: str) -> None:
        self.url = url

    def client(self, retries: int = 2, api_key: str = API_KEY) -> stripe.StripeClient:
        return make_client(api_key, self.url, max_network_retries=retries, timeout_s=10)

    def control(self, verb: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = httpx.request(verb, f"{self.url}/_double/{path}", json=body, timeout=10)
        response.raise_for_status()
        return response.json()


def _server(db: Path, log: Path) -> Any:
    port = free_port()
    env = {
        "STRIPE_DOUBLE_DB": str(db),
        "STRIPE_DOUBLE_API_KEY": API_KEY,
        "STRIPE_DOUBLE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "PATH": "/usr/bin:/bin",
    }
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "server:app",
        "--app-dir",
        str(SERVER_DIR),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    return serve(
        command,
        url=f"http://127.0.0.1:{port}",
        ready_path="/_double/health",
        log=log,
        env=env,
        timeout_s=30,
    )


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stripe_double")


@pytest.fixture(scope="module")
def double(state_dir: Path) -> Iterator[Double]:
    with _server(state_dir / "double.sqlite3", state_dir / "double.log") as served:
        yield Double(served.url)


def meter(client: stripe.StripeClient, name: str | None = None) -> Any:
    return client.v1.billing.meters.create(
        params={
            "display_name": "executions",
            "event_name": name or f"ev_{secrets.token_hex(6)}",
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
            "value_settings": {"event_payload_key": "value"},
        }
    )


def event(
    client: stripe.StripeClient,
    m: Any,
    customer: str,
    value: int,
    ident: str,
    at: int | None = None,
) -> Any:
    return client.v1.billing.meter_events.create(
        params={
            "event_name": m.event_name,
            "identifier": ident,
            "timestamp": at if at is not None else int(time.time()),
            "payload": {"stripe_customer_id": customer, "value": str(value)},
        }
    )


def summary(
    client: stripe.StripeClient, m: Any, customer: str, start: int, end: int, **extra: Any
) -> list[float]:
    listed = client.v1.billing.meters.event_summaries.list(
        m.id, params=_any({"customer": customer, "start_time": start, "end_time": end, **extra})
    )
    return [s.aggregated_value for s in listed.data]


def _any(value: Any) -> Any:
    """The SDK's types are stricter than its wire (decimal strings, untyped metadata)."""
    return value


def today() -> int:
    now = int(time.time())
    return now - now % DAY


def test_a_wrong_key_is_refused_with_stripes_401(double: Double) -> None:
    with pytest.raises(stripe.AuthenticationError) as refused:
        double.client(api_key="sk_test_wrong").v1.customers.list()
    assert refused.value.http_status == 401
    assert _any(refused.value.json_body)["error"]["type"] == "invalid_request_error"


def test_objects_lists_and_errors_speak_stripes_protocol(double: Double) -> None:
    client = double.client()
    email = f"{secrets.token_hex(4)}@example.test"
    made = [
        client.v1.customers.create(params={"email": email, "metadata": {"n": str(i)}})
        for i in range(3)
    ]
    assert all(c.id.startswith("cus_") and c.object == "customer" for c in made)
    page = client.v1.customers.list(params={"email": email, "limit": 2})
    assert _any(page).object == "list"
    assert page.has_more is True
    assert [c.id for c in page.data] == [made[2].id, made[1].id]  # newest first
    assert [_any(c).metadata["n"] for c in page.auto_paging_iter()] == ["2", "1", "0"]
    with pytest.raises(stripe.InvalidRequestError) as absent:
        client.v1.customers.retrieve("cus_nope")
    assert absent.value.http_status == 404
    assert absent.value.code == "resource_missing"
    assert absent.value.param == "id"
    with pytest.raises(stripe.InvalidRequestError) as incomplete:
        client.v1.prices.create(params=_any({"currency": "usd"}))
    assert incomplete.value.code == "parameter_missing"


def test_idempotency_keys_replay_or_refuse(double: Double) -> None:
    client = double.client()
    key = f"test-{secrets.token_hex(6)}"
    one = client.v1.customers.create(params={"name": "A"}, options={"idempotency_key": key})
    two = client.v1.customers.create(params={"name": "A"}, options={"idempotency_key": key})
    assert one.id == two.id
    assert _any(two).last_response.headers.get("Idempotent-Replayed") == "true"
    with pytest.raises(stripe.IdempotencyError) as reused:
        client.v1.customers.create(params={"name": "B"}, options={"idempotency_key": key})
    assert reused.value.http_status == 400


def test_meter_event_identifiers_are_unique_for_24_hours_and_summaries_add_up(
    double: Double,
) -> None:
    client = double.client()
    m = meter(client)
    customer = client.v1.customers.create().id
    day = today()
    event(client, m, customer, 5, "id-1", day + 60)
    event(client, m, customer, 7, "id-2", day + 120)
    with pytest.raises(stripe.InvalidRequestError) as duplicate:
        event(client, m, customer, 5, "id-1", day + 60)
    assert is_duplicate_identifier(duplicate.value)
    assert _any(duplicate.value).headers["stripe-should-retry"] == "false"
    assert summary(client, m, customer, day, day + DAY) == [12.0]
    by_day = summary(client, m, customer, day - DAY, day + DAY, value_grouping_window="day")
    assert by_day == [12.0, 0.0]  # newest first
    with pytest.raises(stripe.InvalidRequestError):
        summary(client, m, customer, day + 1, day + DAY)  # not on a minute boundary
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        client.v1.billing.meter_events.create(
            params={
                "event_name": "no_such_meter",
                "payload": {"stripe_customer_id": customer},
            }
        )
    assert unknown.value.param == "event_name"


def test_cancellation_works_within_24_hours_only_and_the_identifier_window_rolls(
    tmp_path: Path,
) -> None:
    with _server(tmp_path / "clock.sqlite3", tmp_path / "clock.log") as served:
        own = Double(served.url)
        client = own.client()
        m = meter(client)
        customer = client.v1.customers.create().id
        now = int(time.time())
        event(client, m, customer, 4, "a", now - 30)
        event(client, m, customer, 6, "b", now - 20)
        client.v1.billing.meter_event_adjustments.create(
            params={"event_name": m.event_name, "type": "cancel", "cancel": {"identifier": "a"}}
        )
        window = (now - now % 60 - 3600, now - now % 60 + 3600)
        assert summary(client, m, customer, *window) == [6.0]
        own.control("POST", "clock", {"advance_s": 25 * 3600})
        with pytest.raises(stripe.InvalidRequestError) as late:
            client.v1.billing.meter_event_adjustments.create(
                params={"event_name": m.event_name, "type": "cancel", "cancel": {"identifier": "b"}}
            )
        assert "24 hours" in (late.value.user_message or "")
        # Past Stripe's rolling window an identifier is accepted again: the ledger, not the
        # identifier, is what prevents billing a day twice in the long run.
        event(client, m, customer, 1, "b", int(time.time()) + 25 * 3600)


def test_faults_are_injected_before_or_after_the_request_runs(double: Double) -> None:
    client = double.client(retries=2)
    tag = secrets.token_hex(6)
    double.control(
        "POST",
        "faults",
        {
            "method": "POST",
            "path": "/v1/customers",
            "status": 500,
            "count": 1,
            "body_contains": tag,
        },
    )
    created = client.v1.customers.create(params={"name": tag})  # the SDK's retry gets through
    listed = client.v1.customers.list(params={"limit": 100})
    assert [c.id for c in listed.data if c.name == tag] == [created.id]

    double.control(
        "POST",
        "faults",
        {
            "method": "POST",
            "path": "/v1/customers",
            "status": 503,
            "count": 3,
            "body_contains": tag,
        },
    )
    with pytest.raises(stripe.APIError) as down:
        client.v1.customers.create(params={"name": tag})
    assert down.value.http_status == 503

    lost = f"{tag}-lost"
    after = {
        "method": "POST",
        "path": "/v1/customers",
        "status": 500,
        "count": 1,
        "mode": "after",
        "body_contains": lost,
    }
    double.control("POST", "faults", after)
    with pytest.raises(stripe.APIError):
        double.client(retries=0).v1.customers.create(params={"name": lost})
    assert [c.name for c in client.v1.customers.list(params={"limit": 100}).data].count(lost) == 1


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[bytes, str]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((body, self.headers["Stripe-Signature"]))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return


def test_subscriptions_derive_entitlements_and_send_signed_webhooks(double: Double) -> None:
    client = double.client()
    receiver = HTTPServer(("127.0.0.1", free_port()), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    endpoint = client.v1.webhook_endpoints.create(
        params={
            "url": f"http://127.0.0.1:{receiver.server_port}/hook",
            "enabled_events": ["entitlements.active_entitlement_summary.updated"],
        }
    )
    try:
        assert endpoint.secret == WEBHOOK_SECRET
        m = meter(client)
        product = client.v1.products.create(params={"name": "Plan"})
        key = f"quota:concurrency:{secrets.randbelow(1000)}"
        feature = client.v1.entitlements.features.create(params={"name": "C", "lookup_key": key})
        client.v1.products.features.create(product.id, params={"entitlement_feature": feature.id})
        metered = client.v1.prices.create(
            params=_any(
                {
                    "currency": "usd",
                    "product": product.id,
                    "unit_amount_decimal": "0.2",
                    "recurring": {"interval": "month", "usage_type": "metered", "meter": m.id},
                }
            )
        )
        customer = client.v1.customers.create().id
        assert (
            client.v1.entitlements.active_entitlements.list(params={"customer": customer}).data
            == []
        )
        sub = client.v1.subscriptions.create(
            params={"customer": customer, "items": [{"price": metered.id}]}
        )
        assert sub["items"].data[0].price.recurring.meter == m.id
        active = client.v1.entitlements.active_entitlements.list(params={"customer": customer})
        assert [e.lookup_key for e in active.data] == [key]

        body, signature = wait_until(
            lambda: _Receiver.received[-1] if _Receiver.received else None,
            timeout_s=10,
            what="the signed webhook",
        )
        delivered = stripe.Webhook.construct_event(body, signature, WEBHOOK_SECRET)
        assert delivered.type == "entitlements.active_entitlement_summary.updated"
        summary_object = json.loads(body)["data"]["object"]
        assert summary_object["customer"] == customer
        assert [e["lookup_key"] for e in summary_object["entitlements"]["data"]] == [key]
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(body, signature, "whsec_other")

        client.v1.subscriptions.cancel(sub.id)
        assert (
            client.v1.entitlements.active_entitlements.list(params={"customer": customer}).data
            == []
        )
    finally:
        client.v1.webhook_endpoints.delete(endpoint.id)
        receiver.shutdown()


def test_state_survives_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "persist.sqlite3"
    with _server(db, tmp_path / "one.log") as served:
        customer = Double(served.url).client().v1.customers.create(params={"name": "kept"})
    with _server(db, tmp_path / "two.log") as served:
        again = Double(served.url).client().v1.customers.retrieve(customer.id)
    assert again.name == "kept"
