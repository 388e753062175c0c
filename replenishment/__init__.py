"""Replenishment: least-cost CIT visit and load plans from demand sample paths, and the backtest replay."""

from replenishment.naive import naive_forecast
from replenishment.plan import (
    PlanResult,
    device_rows,
    plan_network,
    roll_balances_forward,
    visits_on_order,
    with_fleet_total,
)
from replenishment.replay import ReplayResult, replay
from replenishment.terms import device_holidays, new_device_twins, resolve_terms, typical_demand, typical_devices

__all__ = [
    "PlanResult",
    "ReplayResult",
    "device_holidays",
    "naive_forecast",
    "new_device_twins",
    "device_rows",
    "plan_network",
    "roll_balances_forward",
    "visits_on_order",
    "with_fleet_total",
    "replay",
    "resolve_terms",
    "typical_demand",
    "typical_devices",
]
