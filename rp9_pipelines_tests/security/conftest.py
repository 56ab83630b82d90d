"""The attack suite: each attack runs with a tenant's real credentials or from inside its real
container, then the platform's own reads and actions run over that tenant, and the test asserts
that figures stay correct and no role gained a privilege.

The suite attacks tenants of its own (attacks may leave them damaged); the API, Vault and
runtime fixtures are the tenants suite's."""

from rp9_pipelines_tests.tenants.conftest import api, runtime, tenant_db, unique_slug, vault

__all__ = ["api", "runtime", "tenant_db", "unique_slug", "vault"]
