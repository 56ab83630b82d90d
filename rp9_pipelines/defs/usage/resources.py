"""Binds the Supabase resource; the service-role key only through `dg.EnvVar`. (A module of
its own: a module with a `@dg.definitions` function contributes only what that returns.)"""

import dagster as dg

from rp9_pipelines.resources.supabase import SupabaseResource


@dg.definitions
def supabase_resource() -> dg.Definitions:
    return dg.Definitions(
        resources={
            "supabase": SupabaseResource(
                url=dg.EnvVar("SUPABASE_URL"),
                service_role_key=dg.EnvVar("SUPABASE_SERVICE_ROLE_KEY"),
            )
        }
    )
