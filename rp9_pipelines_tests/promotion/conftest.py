# The tenant fixtures (an API client, Vault, the tenants' databases, the Docker engine) are shared
# with the lifecycle tests.
from rp9_pipelines_tests.tenants.conftest import api, runtime, tenant_db, vault

__all__ = ["api", "runtime", "tenant_db", "vault"]
