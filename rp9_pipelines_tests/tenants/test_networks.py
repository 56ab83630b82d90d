import uuid

import pytest

from rp9_pipelines.resources.docker_runtime import DockerRuntimeResource

pytestmark = pytest.mark.stack


def test_a_network_whose_name_prefixes_another_is_its_own(runtime: DockerRuntimeResource) -> None:
    """The engine filters networks by substring: tenant `ab` must not take tenant `abc`'s."""
    short = f"rp9-t-nx{uuid.uuid4().hex[:6]}"
    longer = f"{short}c"
    client = runtime.client()
    try:
        runtime.ensure_network(longer, "longer")
        runtime.ensure_network(short, "short")
        assert client.networks.get(short).name == short
        runtime.remove_network(short)
        assert [n.name for n in client.networks.list(names=[short])] == [longer]
    finally:
        runtime.remove_network(short)
        runtime.remove_network(longer)
