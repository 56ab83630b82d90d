"""Traefik's file provider: dynamic configuration files in a watched directory
(`TRAEFIK_DYNAMIC_DIR`), written atomically so Traefik never reads half a file."""

import os
import tempfile
from pathlib import Path
from typing import Any

import dagster as dg
import yaml


def write_atomically(target: Path, text: str) -> None:
    """Write (or replace) `target` with `text`: a temporary file beside it, then a rename, so a
    watcher (Traefik, Prometheus's file discovery) never reads half of it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(descriptor, "w") as out:
            out.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class TraefikDynamicResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    directory: str

    def path(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"not a configuration file name: {name!r}")
        return Path(self.directory) / f"{name}.yml"

    def write(self, name: str, config: dict[str, Any]) -> Path:
        """Write (or replace) `<name>.yml`, atomically."""
        target = self.path(name)
        write_atomically(target, yaml.safe_dump(config, sort_keys=True))
        return target

    def read(self, name: str) -> dict[str, Any] | None:
        try:
            loaded = yaml.safe_load(self.path(name).read_text())
        except (FileNotFoundError, yaml.YAMLError):
            return None
        return loaded if isinstance(loaded, dict) else None

    def remove(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def names(self, prefix: str) -> list[str]:
        """Names of the configuration files that start with `prefix`."""
        directory = Path(self.directory)
        if not directory.is_dir():
            return []
        return sorted(p.stem for p in directory.glob(f"{prefix}*.yml") if p.is_file())
