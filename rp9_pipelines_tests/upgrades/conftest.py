import os
from pathlib import Path

import pytest

from rp9_pipelines.resources.docker_runtime import DockerRuntimeResource
from rp9_pipelines.settings import Settings
from rp9_pipelines_tests.conftest import ROOT

# The tenant fixtures (an API client, Vault, the tenants' databases, the Docker engine) are shared
# with the lifecycle tests.
from rp9_pipelines_tests.tenants.conftest import api, runtime, tenant_db, vault
from rp9_pipelines_tests.waiting import wait_until

__all__ = ["api", "runtime", "tenant_db", "vault"]

NEW = "2.22.6"


@pytest.fixture(scope="session")
def upgrade_image(settings: Settings, runtime: DockerRuntimeResource) -> str:
    """The newer n8n's image, which `stack.sh up` builds in the background: waited for (its
    build's failure fails the tests that need it, with the build's log)."""
    state = Path(os.environ.get("RP9_STATE_DIR", ROOT / ".stack"))
    image = f"{settings.n8n_image}:{NEW}"

    def built() -> bool | None:
        rc = state / f"n8n-image-{NEW}.rc"
        if rc.exists() and rc.read_text().strip() not in ("", "0"):
            log = (state / f"n8n-image-{NEW}.log").read_text(errors="replace")
            pytest.fail(f"building {image} failed:\n{log[-3000:]}")
        if rc.exists() and runtime.image_exists(image):
            return True
        return None

    if not runtime.image_exists(image):
        wait_until(built, timeout_s=1800, interval_s=5, what=f"{image} to be built")
    return image
