import secrets
from typing import Any

import bcrypt
import dagster as dg
import hvac
from hvac.exceptions import InvalidPath, InvalidRequest

from rp9_pipelines.resources.health import Health, probe

# What every tenant has in the store. The n8n API key is added after bootstrap.
GENERATED = ("encryption_key", "db_password", "redis_password", "owner_password")


class SecretsMissing(LookupError):
    """An existing tenant's secrets are not in the store: nothing is generated in their place."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(
            f"the tenant's secrets at {path} are {why}: secrets are generated only when a tenant "
            "is created, so this run changed nothing; restore them from the platform's secrets "
            "snapshot (docs/runbooks/disaster-recovery.md) and run it again"
        )
        self.path = path


def _complete(path: str, secrets_: dict[str, str]) -> dict[str, str]:
    missing = [key for key in GENERATED if not secrets_.get(key)]
    if missing:
        raise SecretsMissing(path, f"incomplete: {', '.join(missing)} missing")
    return secrets_


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

    def issue(self, path: str, owner_email: str) -> dict[str, str]:
        """A new tenant's secrets, written only where none exist (KV v2 check-and-set 0): two
        runs racing on one tenant cannot both write, and no run ever writes a second encryption
        key over the first. Secrets a previous attempt already stored are kept as they are."""
        current = self.read(path)
        if current is not None:
            return _complete(path, current)
        values = new_tenant_secrets(owner_email)
        try:
            self.client().secrets.kv.v2.create_or_update_secret(
                path=path, secret=values, cas=0, mount_point=self.mount_point
            )
        except InvalidRequest:  # written by a racing run a moment ago: that one stands
            return self.require(path)
        return values

    def require(self, path: str) -> dict[str, str]:
        """An existing tenant's secrets, complete, or `SecretsMissing`: they are never
        generated again (a new encryption key would make every stored credential unreadable)."""
        current = self.read(path)
        if current is None:
            raise SecretsMissing(path, "not found")
        return _complete(path, current)

    def list_paths(self, prefix: str) -> list[str]:
        """Every secret path under `prefix` (recursively), in order."""
        try:
            listed = self.client().secrets.kv.v2.list_secrets(
                path=prefix, mount_point=self.mount_point
            )
        except InvalidPath:
            return []
        paths: list[str] = []
        for key in sorted(listed["data"]["keys"]):
            child = f"{prefix.rstrip('/')}/{key}"
            paths.extend(self.list_paths(child) if key.endswith("/") else [child])
        return paths

    def merge(self, path: str, values: dict[str, str]) -> None:
        self.write(path, {**(self.read(path) or {}), **values})

    def destroy(self, path: str) -> None:
        self.client().secrets.kv.v2.delete_metadata_and_all_versions(
            path=path, mount_point=self.mount_point
        )
