# The catalog and the migrated Supabase are usage's fixtures: chargeback reads what usage wrote.
from rp9_pipelines_tests.usage.conftest import catalog, supabase

__all__ = ["catalog", "supabase"]
