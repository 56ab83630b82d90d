# The tenant fixtures (an API client, Vault, the tenants' databases) are shared with the
# lifecycle tests; `runtime` is test_contract's own (both runtimes).
from rp9_pipelines_tests.tenants.conftest import api, tenant_db, vault

__all__ = ["api", "tenant_db", "vault"]
