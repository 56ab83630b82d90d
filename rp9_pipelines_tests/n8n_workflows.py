"""Workflows the tests install in a tenant's n8n through its public API."""

import uuid
from typing import Any


def echo_webhook(path: str) -> dict[str, Any]:
    """Webhook → Respond to Webhook: the answer travels back from the worker through Redis."""
    return {
        "name": f"echo {path}",
        "nodes": [
            {
                "id": str(uuid.uuid4()),
                "name": "Webhook",
                "type": "n8n-nodes-base.webhook",
                "typeVersion": 2,
                "position": [0, 0],
                "webhookId": str(uuid.uuid4()),
                "parameters": {
                    "httpMethod": "POST",
                    "path": path,
                    "responseMode": "responseNode",
                    "options": {},
                },
            },
            {
                "id": str(uuid.uuid4()),
                "name": "Respond to Webhook",
                "type": "n8n-nodes-base.respondToWebhook",
                "typeVersion": 1.1,
                "position": [240, 0],
                "parameters": {
                    "respondWith": "json",
                    "responseBody": "={{ { ok: true, echo: $json.body } }}",
                    "options": {},
                },
            },
        ],
        "connections": {
            "Webhook": {"main": [[{"node": "Respond to Webhook", "type": "main", "index": 0}]]}
        },
        "settings": {"executionOrder": "v1"},
    }


def slow_webhook(path: str, seconds: float) -> dict[str, Any]:
    """Webhook (answers on receipt, so a caller only enqueues) → Wait `seconds`: an execution
    that holds one of its worker's job slots for that long. Waits under 65 s stay in process."""
    return {
        "name": f"slow {path}",
        "nodes": [
            {
                "id": str(uuid.uuid4()),
                "name": "Webhook",
                "type": "n8n-nodes-base.webhook",
                "typeVersion": 2,
                "position": [0, 0],
                "webhookId": str(uuid.uuid4()),
                "parameters": {
                    "httpMethod": "POST",
                    "path": path,
                    "responseMode": "onReceived",
                    "options": {},
                },
            },
            {
                "id": str(uuid.uuid4()),
                "name": "Wait",
                "type": "n8n-nodes-base.wait",
                "typeVersion": 1.1,
                "position": [240, 0],
                "webhookId": str(uuid.uuid4()),
                "parameters": {"resume": "timeInterval", "amount": seconds, "unit": "seconds"},
            },
        ],
        "connections": {"Webhook": {"main": [[{"node": "Wait", "type": "main", "index": 0}]]}},
        "settings": {"executionOrder": "v1"},
    }
