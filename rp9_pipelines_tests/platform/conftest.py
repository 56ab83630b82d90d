from rp9_pipelines_tests.tenants.conftest import api, runtime, vault

__all__ = ["api", "runtime", "vault"]
