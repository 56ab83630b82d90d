"""The local n8n image carries its editor's assets generated at build time
(deploy/images/n8n/static_assets.py): a main started with the image's configuration serves them
without writing them again (2-4 s less of every boot, and of an upgrade's hold), and a main
with another configuration still generates its own, as n8n does."""

import datetime as dt
import importlib.util
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import docker
import pytest
from docker.models.containers import Container

from rp9_pipelines.settings import Settings
from rp9_pipelines_tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
ASSETS = "/home/node/.cache/n8n/public"
OTHER_PATH = "/rp9-other/"


def static_assets() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "static_assets", ROOT / "deploy/images/n8n/static_assets.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_patch_wraps_n8ns_method_once_and_refuses_code_it_does_not_know(
    tmp_path: Path,
) -> None:
    module = static_assets()
    start = tmp_path / module.START
    start.parent.mkdir(parents=True)
    start.write_text("class Start {\n" + module.ORIGINAL + "        return 1;\n    }\n}\n")
    module.patch(tmp_path)
    patched = start.read_text()
    assert patched.count("async generateStaticAssets()") == 1
    assert "async rp9GenerateStaticAssets() {\n        return 1;" in patched
    with pytest.raises(SystemExit, match="not where this patch expects it"):
        module.patch(tmp_path)
    start.write_text("class Start {\n    async generateAssets() {}\n}\n")
    with pytest.raises(SystemExit, match="not where this patch expects it"):
        module.patch(tmp_path)


@pytest.fixture
def mains(settings: Settings, docker_client: docker.DockerClient) -> Iterator[list[Container]]:
    """Two mains of the image on its own SQLite: the image's configuration, and another base
    path."""
    suffix = uuid.uuid4().hex[:8]
    started = [
        docker_client.containers.run(
            settings.image,
            name=f"rp9-assets-{name}-{suffix}",
            detach=True,
            environment=environment,
            nano_cpus=int(1e9),
            mem_limit=1024 * 1024 * 1024,
            network_mode="none",
        )
        for name, environment in (("image", {}), ("other", {"N8N_PATH": OTHER_PATH}))
    ]
    yield started
    for container in started:
        container.remove(force=True)


def _read(container: Container, command: str) -> str:
    code, output = container.exec_run(["sh", "-c", command])
    assert code == 0, output
    return str(output.decode())


@pytest.mark.stack
def test_a_main_serves_the_images_assets_and_another_base_path_generates_its_own(
    docker_client: docker.DockerClient, mains: list[Container]
) -> None:
    for container in mains:

        def booted(c: Container = container) -> bool:
            return "Editor is now accessible" in c.logs().decode()

        wait_until(booted, timeout_s=180, what=f"{container.name} to boot")
    image, other = mains
    for container in mains:
        container.reload()
    started = {
        c.name: dt.datetime.fromisoformat(c.attrs["State"]["StartedAt"][:26] + "+00:00")
        for c in mains
    }

    def written(container: Container, name: str) -> dt.datetime:
        seconds = _read(container, f"stat -c %Y {ASSETS}/{name}").strip()
        return dt.datetime.fromtimestamp(int(seconds), dt.UTC)

    # The image's configuration: the files and their stamp are the image's, none rewritten.
    assert written(image, ".rp9-generated") < started[image.name] - dt.timedelta(seconds=1)
    assert written(image, "index.html") < started[image.name] - dt.timedelta(seconds=1)
    script = _read(image, f"ls {ASSETS}/assets | grep -m1 '[.]js$'").strip()
    assert written(image, f"assets/{script}") < started[image.name] - dt.timedelta(seconds=1)
    assert 'name="n8n:config:rest-endpoint"' in _read(image, f"cat {ASSETS}/index.html")
    # Another base path: generated at its boot, for that path, with its own stamp.
    assert written(other, "index.html") >= started[other.name] - dt.timedelta(seconds=1)
    assert OTHER_PATH in _read(other, f"cat {ASSETS}/.rp9-generated")
    assert OTHER_PATH in _read(other, f"cat {ASSETS}/index.html")
