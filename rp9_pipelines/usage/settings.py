"""Usage collection (`USAGE_*`) and chargeback (`CHARGEBACK_*`) settings. Every field has a
working default, because the schedules are defined when the code location loads."""

from pydantic_settings import BaseSettings, SettingsConfigDict

from rp9_pipelines.domain.chargeback import Capacity, Rates


class UsageSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="USAGE_", extra="ignore", frozen=True, env_parse_none_str=""
    )

    # The container sampler runs every minute; off by default so that a development or test
    # Dagster does not launch a run a minute on its own (production and `make dev` turn it on).
    sampling_enabled: bool = False
    # A silence longer than this between two samples of a container means it was not running:
    # no memory is charged for it (a few missed ticks are not a stop).
    sample_max_gap_s: int = 300
    # Samples older than this are deleted by the sampler (usage keeps the daily figures).
    sample_retention_days: int = 40
    # The daily schedule materialises yesterday's partitions of every active tenant.
    daily_cron: str = "15 0 * * *"


class ChargebackSettings(BaseSettings):
    """Rates in the currency per unit, and the capacity the platform offers its tenants.
    CPU and memory default to OpenCost's on-premises list prices."""

    model_config = SettingsConfigDict(
        env_prefix="CHARGEBACK_", extra="ignore", frozen=True, env_parse_none_str=""
    )

    currency: str = "usd"
    rate_per_execution: float = 0.0002
    rate_per_duration_hour: float = 0.01
    rate_per_cpu_core_hour: float = 0.031611
    rate_per_memory_gb_hour: float = 0.004237
    capacity_cpu_cores: float = 2.0
    capacity_memory_gb: float = 24.0
    # Where the monthly CSV goes in the S3 bucket: <prefix>/<YYYY-MM>.csv
    s3_prefix: str = "chargeback"

    def rates(self) -> Rates:
        return Rates(
            per_execution=self.rate_per_execution,
            per_duration_hour=self.rate_per_duration_hour,
            per_cpu_core_hour=self.rate_per_cpu_core_hour,
            per_memory_gb_hour=self.rate_per_memory_gb_hour,
        )

    def capacity(self) -> Capacity:
        return Capacity(cpu_cores=self.capacity_cpu_cores, memory_gb=self.capacity_memory_gb)
