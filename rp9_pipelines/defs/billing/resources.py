"""Binds the Stripe resource; the key only through `dg.EnvVar`, never its value. (In a module
of its own: a module with a `@dg.definitions` function contributes only what that returns.)"""

import dagster as dg

from rp9_pipelines.billing.stripe_client import StripeResource


@dg.definitions
def stripe_resource() -> dg.Definitions:
    return dg.Definitions(
        resources={
            "stripe": StripeResource(
                api_key=dg.EnvVar("STRIPE_SECRET_KEY"), api_base=dg.EnvVar("STRIPE_API_BASE")
            )
        }
    )
