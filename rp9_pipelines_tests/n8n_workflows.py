"""Workflows the tests install in a tenant's n8n through its public API."""

import itertools
import uuid
from typing import Any


def node(name: str, kind: str, version: float, x: int, **fields: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "name": name,
        "type": f"n8n-nodes-base.{kind}",
        "typeVersion": version,
        "position": [x, 0],
        **fields,
    }


def webhook(path: str, response_mode: str = "responseNode") -> dict[str, Any]:
    """A POST webhook at `path`; `responseNode`: a Respond to Webhook node answers."""
    parameters = {"httpMethod": "POST", "path": path, "responseMode": response_mode, "options": {}}
    return node("Webhook", "webhook", 2, 0, webhookId=str(uuid.uuid4()), parameters=parameters)


def respond(body: str, x: int) -> dict[str, Any]:
    """Respond to Webhook with the JSON expression `body`."""
    parameters = {"respondWith": "json", "responseBody": body, "options": {}}
    return node("Respond to Webhook", "respondToWebhook", 1.1, x, parameters=parameters)


def workflow(name: str, nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """`nodes` connected one after the other."""
    connections = {
        a["name"]: {"main": [[{"node": b["name"], "type": "main", "index": 0}]]}
        for a, b in itertools.pairwise(nodes)
    }
    return {
        "name": name,
        "nodes": nodes,
        "connections": connections,
        "settings": {"executionOrder": "v1"},
    }


def echo_webhook(path: str) -> dict[str, Any]:
    """Webhook → Respond to Webhook: the answer travels back from the worker through Redis."""
    return workflow(
        f"echo {path}", [webhook(path), respond("={{ { ok: true, echo: $json.body } }}", 240)]
    )


def slow_webhook(path: str, seconds: float) -> dict[str, Any]:
    """Webhook (answers on receipt, so a caller only enqueues) → Wait `seconds`: an execution
    that holds one of its worker's job slots for that long. Waits under 65 s stay in process."""
    wait = node(
        "Wait",
        "wait",
        1.1,
        240,
        webhookId=str(uuid.uuid4()),
        parameters={"resume": "timeInterval", "amount": seconds, "unit": "seconds"},
    )
    return workflow(f"slow {path}", [webhook(path, "onReceived"), wait])
