# The tenant fixtures (an API client, Vault) are shared with the lifecycle tests.
from rp9_pipelines_tests.tenants.conftest import api, vault

__all__ = ["api", "vault"]
