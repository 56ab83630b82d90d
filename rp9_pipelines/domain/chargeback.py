"""Monthly chargeback per tenant, OpenCost's model, in pandas.

Each tenant pays for what it used, at configured rates: its executions and their duration
(the activity), and its CPU core-hours and memory GB-hours (the resources). What the cluster
offered and nobody used (capacity x hours in the month - Σ used, per resource, never below
zero) is the *idle* cost; it is shared out among the tenants in proportion to their usage cost
(OpenCost's "share idle, weighted by cost"), equally when nobody used anything.

Money is kept in units of 1/10,000 of the currency (the catalog's `Numeric(14, 4)`), and the
idle cost is divided by largest remainders, so the totals conserve exactly:
Σ total_cost = Σ usage_cost + idle cost.

Revenue comes from list prices when they are known (a flat monthly base plus a price per
execution); margin = revenue - total cost; unknown prices leave both empty.
"""

import calendar
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

UNIT = 10_000  # money is counted in 1/10,000 of the currency
MS_PER_HOUR = 3_600_000
USAGE_COLUMNS = ("tenant_id", "executions", "duration_ms_sum", "cpu_seconds", "memory_gb_hours")
RESULT_COLUMNS = (
    "tenant_id",
    "executions",
    "duration_hours",
    "cpu_core_hours",
    "memory_gb_hours",
    "usage_cost",
    "idle_cost",
    "total_cost",
    "revenue",
    "margin",
)


@dataclass(frozen=True)
class Rates:
    per_execution: float
    per_duration_hour: float
    per_cpu_core_hour: float
    per_memory_gb_hour: float

    def __post_init__(self) -> None:
        if (
            min(
                self.per_execution,
                self.per_duration_hour,
                self.per_cpu_core_hour,
                self.per_memory_gb_hour,
            )
            < 0
        ):
            raise ValueError(f"rates cannot be negative: {self}")


@dataclass(frozen=True)
class Capacity:
    """What the platform offers tenants, all the time (cores and GB of memory)."""

    cpu_cores: float
    memory_gb: float

    def __post_init__(self) -> None:
        if self.cpu_cores < 0 or self.memory_gb < 0:
            raise ValueError(f"capacity cannot be negative: {self}")


@dataclass(frozen=True)
class Price:
    """A plan's list price: a flat monthly base and an amount per execution (currency units)."""

    base: float
    per_execution: float


@dataclass(frozen=True)
class Totals:
    capacity_cost: float
    used_cost: float  # Σ usage_cost (activity and resources)
    used_resource_cost: float  # the CPU and memory part of it
    idle_cost: float
    total_cost: float
    cpu_utilisation: float | None
    memory_utilisation: float | None


@dataclass(frozen=True)
class Chargeback:
    tenants: pd.DataFrame  # RESULT_COLUMNS, one row per tenant, sorted by tenant_id
    totals: Totals


def month_hours(month: str) -> float:
    """Hours in a month given as YYYY-MM."""
    year, number = (int(part) for part in month.split("-"))
    return calendar.monthrange(year, number)[1] * 24.0


def _units(values: "pd.Series[float]") -> "np.ndarray[tuple[int], np.dtype[np.int64]]":
    return np.rint(values.to_numpy(dtype="float64") * UNIT).astype("int64")


def share_out(
    total_units: int, weights: "np.ndarray[tuple[int], np.dtype[np.float64]]"
) -> "np.ndarray[tuple[int], np.dtype[np.int64]]":
    """Divide `total_units` (an integer) in proportion to `weights` by largest remainders: the
    parts are integers and add up to the total exactly. All-zero weights share equally."""
    count = len(weights)
    if count == 0:
        return np.zeros(0, dtype="int64")
    weight_sum = float(weights.sum())
    fractions = weights / weight_sum if weight_sum > 0 else np.full(count, 1.0 / count)
    raw = fractions * total_units
    parts = np.floor(raw).astype("int64")
    left = int(total_units - parts.sum())
    if left > 0:
        # Stable: equal remainders go to the earlier rows (sorted by tenant id).
        order = np.argsort(-(raw - parts), kind="stable")
        parts[order[:left]] += 1
    return parts


def compute(
    usage: pd.DataFrame,
    rates: Rates,
    capacity: Capacity,
    hours: float,
    prices: Mapping[str, Price | None] | None = None,
) -> Chargeback:
    """The chargeback of one month from its daily usage rows (USAGE_COLUMNS).

    `prices`: each tenant's `Price` by tenant id (missing or None: revenue unknown).
    """
    missing = set(USAGE_COLUMNS) - set(usage.columns)
    if missing:
        raise ValueError(f"usage lacks columns {sorted(missing)}")
    numbers = usage.loc[:, list(USAGE_COLUMNS)].astype(
        {
            "executions": "int64",
            "duration_ms_sum": "int64",
            "cpu_seconds": "float64",
            "memory_gb_hours": "float64",
        }
    )
    numbers["tenant_id"] = numbers["tenant_id"].astype(str)
    grouped = numbers.groupby("tenant_id", sort=True).sum()
    frame = pd.DataFrame(index=grouped.index)
    frame["executions"] = grouped["executions"].astype("int64")
    frame["duration_hours"] = grouped["duration_ms_sum"].astype("float64") / MS_PER_HOUR
    frame["cpu_core_hours"] = grouped["cpu_seconds"].astype("float64") / 3600
    frame["memory_gb_hours"] = grouped["memory_gb_hours"].astype("float64")

    resource_cost = (
        frame["cpu_core_hours"] * rates.per_cpu_core_hour
        + frame["memory_gb_hours"] * rates.per_memory_gb_hour
    )
    activity_cost = (
        frame["executions"] * rates.per_execution
        + frame["duration_hours"] * rates.per_duration_hour
    )
    usage_units = _units(activity_cost + resource_cost)

    idle_cpu_hours = max(capacity.cpu_cores * hours - float(frame["cpu_core_hours"].sum()), 0.0)
    idle_memory_gb_hours = max(
        capacity.memory_gb * hours - float(frame["memory_gb_hours"].sum()), 0.0
    )
    idle_cost = (
        idle_cpu_hours * rates.per_cpu_core_hour + idle_memory_gb_hours * rates.per_memory_gb_hour
    )
    # Idle capacity is charged to the month's tenants; with none, none is allocated.
    idle_units = round(idle_cost * UNIT) if len(frame) else 0
    idle_parts = share_out(idle_units, usage_units.astype("float64"))

    frame["usage_cost"] = usage_units / UNIT
    frame["idle_cost"] = idle_parts / UNIT
    frame["total_cost"] = (usage_units + idle_parts) / UNIT
    frame["revenue"] = _revenue(frame, prices)
    frame["margin"] = (frame["revenue"] - frame["total_cost"]).round(4)
    result = frame.reset_index().loc[:, list(RESULT_COLUMNS)]

    capacity_cost = (
        capacity.cpu_cores * hours * rates.per_cpu_core_hour
        + capacity.memory_gb * hours * rates.per_memory_gb_hour
    )
    cpu_capacity, memory_capacity = capacity.cpu_cores * hours, capacity.memory_gb * hours
    totals = Totals(
        capacity_cost=round(capacity_cost, 4),
        used_cost=int(usage_units.sum()) / UNIT,
        used_resource_cost=round(float(resource_cost.sum()), 4),
        idle_cost=idle_units / UNIT,
        total_cost=int(usage_units.sum() + idle_parts.sum()) / UNIT,
        cpu_utilisation=(
            float(frame["cpu_core_hours"].sum()) / cpu_capacity if cpu_capacity else None
        ),
        memory_utilisation=(
            float(frame["memory_gb_hours"].sum()) / memory_capacity if memory_capacity else None
        ),
    )
    return Chargeback(result, totals)


def _revenue(frame: pd.DataFrame, prices: Mapping[str, Price | None] | None) -> "pd.Series[float]":
    prices = prices or {}
    known = [prices.get(str(tenant_id)) for tenant_id in frame.index]
    base = pd.Series([p.base if p else np.nan for p in known], index=frame.index, dtype="float64")
    per_execution = pd.Series(
        [p.per_execution if p else np.nan for p in known], index=frame.index, dtype="float64"
    )
    return (base + frame["executions"] * per_execution).round(4)
