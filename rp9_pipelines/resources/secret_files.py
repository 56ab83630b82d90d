import os
import shutil
from pathlib import Path

import dagster as dg

N8N_UID = 1000


class SecretFilesResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Materialises a tenant's secrets as files for its containers (mounted read-only at
    /run/secrets, like Swarm secrets), so they never sit in a container's environment."""

    root: str = "/var/lib/rp9/secrets"

    def path(self, slug: str) -> Path:
        return Path(self.root) / slug

    def write(self, slug: str, values: dict[str, str]) -> Path:
        directory = self.path(slug)
        directory.mkdir(parents=True, exist_ok=True)
        # Traversable, not listable; each container mounts only its own tenant's directory.
        os.chmod(Path(self.root), 0o711)  # noqa: S103
        for name, value in values.items():
            target = directory / name
            temporary = directory / f".{name}.tmp"
            temporary.write_text(value)
            os.chown(temporary, N8N_UID, N8N_UID)
            os.chmod(temporary, 0o400)
            temporary.replace(target)
        os.chown(directory, N8N_UID, N8N_UID)
        os.chmod(directory, 0o500)
        return directory

    def remove(self, slug: str) -> None:
        shutil.rmtree(self.path(slug), ignore_errors=True)
