import secrets
from typing import Any

import bcrypt
import dagster as dg
import hvac
from hvac.exceptions import InvalidPath

from rp9_pipelines.resources.health import Health, probe

# What every tenant has in the store. The n8n API key is added after bootstrap.
GENERATED = ("encryption_key", "db_password", "redis_password", "owner_password")


def new_tenant_secrets(owner_email: str) -> dict[str, str]:
    password = secrets.token_urlsafe(18) + "A7"  # n8n wants a digit and an uppercase letter
    return {
        "encryption_key": secrets.token_hex(32),
        "db_password": secrets.token_urlsafe(32),
        "redis_password": secrets.token_urlsafe(32),
        "owner_email": owner_email,
        "owner_password": password,
        "owner_password_hash": bcrypt.hashpw(password.encode(), bcrypt.gensalt(10)).decode(),
    }


class VaultResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Per-tenant secrets in a Vault-compatible KV v2 store (OpenBao locally)."""

    vault_addr: str
    vault_token: str
    mount_point: str = "secret"
    timeout_s: int = 10

    def client(self) -> hvac.Client:
        return hvac.Client(url=self.vault_addr, token=self.vault_token, timeout=self.timeout_s)

    def ping(self) -> Health:
        def check() -> str:
            client = self.client()
            if not client.is_authenticated():
                raise PermissionError("token rejected")
            health = client.sys.read_health_status(method="GET")
            if health.get("sealed"):
                raise RuntimeError("sealed")
            return f"vault {health.get('version', '?')} unsealed"

        return probe("vault", check)

    def read(self, path: str) -> dict[str, str] | None:
        try:
            response: dict[str, Any] = self.client().secrets.kv.v2.read_secret_version(
                path=path, mount_point=self.mount_point, raise_on_deleted_version=True
            )
        except InvalidPath:
            return None
        return dict(response["data"]["data"])

    def write(self, path: str, values: dict[str, str]) -> None:
        self.client().secrets.kv.v2.create_or_update_secret(
            path=path, secret=values, mount_point=self.mount_point
        )

    def ensure(self, path: str, owner_email: str) -> dict[str, str]:
        """The tenant's secrets, generated once: a re-run keeps the same keys (changing the
        encryption key would make every stored credential unreadable)."""
        current = self.read(path)
        if current and all(current.get(key) for key in GENERATED):
            return current
        values = {**new_tenant_secrets(owner_email), **(current or {})}
        self.write(path, values)
        return values

    def merge(self, path: str, values: dict[str, str]) -> None:
        self.write(path, {**(self.read(path) or {}), **values})

    def destroy(self, path: str) -> None:
        self.client().secrets.kv.v2.delete_metadata_and_all_versions(
            path=path, mount_point=self.mount_point
        )
