import dagster as dg
import hvac

from rp9_pipelines.resources.health import Health, probe


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
