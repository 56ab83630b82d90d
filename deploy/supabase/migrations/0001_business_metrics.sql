-- rp9 business metrics in Supabase: one row per tenant per day, and per tenant per month.
-- Written by the control plane with the service-role key (PostgREST upserts on the primary
-- keys); nobody else may read or write them: row level security is on and grants no one.

CREATE TABLE IF NOT EXISTS public.business_metrics_daily (
    tenant_id uuid NOT NULL,
    tenant_slug text NOT NULL,
    plan text NOT NULL,
    day date NOT NULL,
    executions bigint NOT NULL CHECK (executions >= 0),
    failures bigint NOT NULL CHECK (failures >= 0 AND failures <= executions),
    error_rate double precision NOT NULL,
    duration_ms_sum bigint NOT NULL,
    latency_p95_ms double precision,
    queue_wait_p95_ms double precision,
    cpu_seconds double precision NOT NULL,
    memory_gb_hours double precision NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, day)
);

CREATE TABLE IF NOT EXISTS public.chargeback_monthly (
    tenant_id uuid NOT NULL,
    tenant_slug text NOT NULL,
    plan text NOT NULL,
    month text NOT NULL CHECK (month ~ '^[0-9]{4}-[0-9]{2}$'),
    executions bigint NOT NULL,
    duration_hours double precision NOT NULL,
    cpu_core_hours double precision NOT NULL,
    memory_gb_hours double precision NOT NULL,
    usage_cost numeric(14, 4) NOT NULL,
    idle_cost numeric(14, 4) NOT NULL,
    total_cost numeric(14, 4) NOT NULL,
    revenue numeric(14, 4),
    margin numeric(14, 4),
    currency text NOT NULL,
    computed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, month)
);

ALTER TABLE public.business_metrics_daily ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.chargeback_monthly ENABLE ROW LEVEL SECURITY;

REVOKE ALL ON public.business_metrics_daily, public.chargeback_monthly FROM PUBLIC, anon, authenticated;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.business_metrics_daily, public.chargeback_monthly
    TO service_role;
