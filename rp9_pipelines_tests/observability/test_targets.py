"""Prometheus's file_sd targets of a Swarm's tasks: what the `n8n-swarm` job scrapes."""

from rp9_pipelines.observability.targets import swarm_targets

MAIN = {"io.rp9.tenant": "acme", "io.rp9.role": "main", "io.rp9.metrics": "true"}


def test_a_task_that_asks_to_be_scraped_is_a_target_with_its_tenant_role_and_node() -> None:
    serving = [
        ("rp9-acme-blue-worker-1", {**MAIN, "io.rp9.role": "worker"}, "http://10.0.0.2:7", "w2"),
        ("rp9-acme-blue-main", MAIN, "http://10.0.0.1:30001", "w1"),
        ("rp9-sandbox", {"io.rp9.tenant": "x"}, "http://10.0.0.3:9", "w3"),  # not scraped
    ]
    assert swarm_targets(serving) == [
        {
            "targets": ["10.0.0.1:30001"],
            "labels": {
                "tenant": "acme",
                "role": "main",
                "container": "rp9-acme-blue-main",
                "node": "w1",
            },
        },
        {
            "targets": ["10.0.0.2:7"],
            "labels": {
                "tenant": "acme",
                "role": "worker",
                "container": "rp9-acme-blue-worker-1",
                "node": "w2",
            },
        },
    ]


def test_nothing_serving_is_an_empty_list_not_a_missing_file() -> None:
    assert swarm_targets([]) == []
