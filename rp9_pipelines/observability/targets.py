"""Prometheus's targets for what its Docker discovery cannot see: a Swarm's tasks on other nodes.
The control plane writes them as a file_sd file (`n8n-swarm.json`, the `n8n-swarm` job of
deploy/local/prometheus.yml) each time the routes follow the tasks, with the labels the `n8n`
job gives a container (tenant, role, container) and the task's node."""

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from rp9_pipelines.domain.stack import LABEL_METRICS, LABEL_ROLE, LABEL_TENANT

SWARM_TARGETS_FILE = "n8n-swarm.json"


def swarm_targets(serving: Iterable[tuple[str, dict[str, str], str, str]]) -> list[dict[str, Any]]:
    """One target group per serving task (name, labels, URL, node) that asks to be scraped
    (`io.rp9.metrics`), sorted by name: the file reads the same while nothing moves."""
    groups = []
    for name, labels, url, node in sorted(serving):
        if labels.get(LABEL_METRICS) != "true":
            continue
        groups.append(
            {
                "targets": [urlsplit(url).netloc],
                "labels": {
                    "tenant": labels.get(LABEL_TENANT, ""),
                    "role": labels.get(LABEL_ROLE, ""),
                    "container": name,
                    "node": node,
                },
            }
        )
    return groups
