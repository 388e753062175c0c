"""The long-format data contracts every stage trades in, checked at the boundary.

`daily` is the heart: one row per device and business day that was recorded. A day with no row
is "not recorded", never zero demand; a censored day (cash-out, offline) keeps its row with
`censored = True` and its observed amount is a lower bound, not demand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

DAILY_COLUMNS = {
    "device_id": "string",
    "date": "datetime64[ns]",
    "withdrawals": "float64",
    "deposits": "float64",  # NaN where the device takes no deposits or none were recorded
    "n_withdrawals": "float64",
    "n_deposits": "float64",
}

DEVICE_COLUMNS = [
    "device_id",
    "kind",
    "capacity",
    "min_balance",
    "max_balance",
    "visit_cost",
    "emergency_visit_cost",
    "holding_rate",
    "visit_weekdays",
    "lead_time_days",
    "load_multiple",
    "service_level",
    "country",
    "subdivision",
    "region",
    "name",
]
DEVICE_TEXT_COLUMNS = ["kind", "visit_weekdays", "country", "subdivision", "region", "name"]
DEVICE_NUMERIC_COLUMNS = [c for c in DEVICE_COLUMNS if c != "device_id" and c not in DEVICE_TEXT_COLUMNS]
BALANCE_COLUMNS = ["device_id", "as_of", "balance"]
STATUS_COLUMNS = ["device_id", "start", "end", "state"]
STATUS_STATES = ("cash_out", "offline")

# A record older than this many days before the as-of morning is stale: the lake-wide warning of
# load_history, each plan's note on a device whose feed stopped and the report all go by it.
STALE_HISTORY_DAYS = 7


def days_unrecorded(last_recorded: pd.Timestamp | pd.DatetimeIndex, as_of: pd.Timestamp) -> int | pd.Index:
    """Days with no record between the last recorded day (a day, or a DatetimeIndex of them) and the
    morning of `as_of`: 0 when the day before was recorded; above STALE_HISTORY_DAYS is stale."""
    return (as_of - last_recorded).days - 1


PLAN_COLUMNS = [
    "device_id",
    "visit_date",
    "order_by",
    "action",
    "amount",
    "expected_balance_before",
    "balance_after",
    "days_covered",
    "stockout_risk",
    "reason",
]


class ContractError(ValueError):
    """A frame does not honour its data contract."""


def quantile_column(level: float) -> str:
    """0.95 -> 'q95', 0.5 -> 'q50', 0.975 -> 'q97.5'."""
    pct = round(level * 100, 6)
    return f"q{int(pct)}" if pct == int(pct) else f"q{pct:g}"


def validate_daily(daily: pd.DataFrame, source: str = "daily") -> pd.DataFrame:
    """Coerce to the daily contract, sorted by device and date; raise on a broken key.

    Missing optional columns are added (deposits and counts as NaN, censored as False).
    """
    missing = [c for c in ("device_id", "date", "withdrawals") if c not in daily.columns]
    if missing:
        raise ContractError(f"{source}: missing required column(s) {missing}")
    out = daily.copy()
    for column, dtype in DAILY_COLUMNS.items():
        if column not in out.columns:
            out[column] = float("nan")
        if column == "date":
            out[column] = pd.to_datetime(out[column]).dt.tz_localize(None).dt.normalize().astype("datetime64[ns]")
        else:
            out[column] = out[column].astype(dtype)
    out["censored"] = out["censored"].fillna(False).astype(bool) if "censored" in out else False
    if out["device_id"].isna().any():
        raise ContractError(f"{source}: device_id is empty on row {int(out['device_id'].isna().to_numpy().argmax())}")
    dup = out.duplicated(["device_id", "date"])
    if dup.any():
        row = out[dup].iloc[0]
        raise ContractError(f"{source}: duplicate device-day {row['device_id']} {row['date']:%Y-%m-%d}")
    extra = [c for c in out.columns if c not in DAILY_COLUMNS and c != "censored"]
    return out[[*DAILY_COLUMNS, "censored", *extra]].sort_values(["device_id", "date"], ignore_index=True)


@dataclass
class DemandForecast:
    """Forecasts for a set of devices over consecutive days, with sample paths for the planner.

    The planner needs demand summed over several days, whose quantiles are not sums of daily
    quantiles; joint sample paths carry that (day-to-day dependence included).
    """

    frame: pd.DataFrame  # device_id, date, model, yhat, q50.. (+ deposits_yhat where deposits exist)
    device_ids: np.ndarray  # (n_devices,) str, row order of the path arrays
    dates: pd.DatetimeIndex  # (horizon,) the forecast days as_of .. as_of + horizon - 1
    withdrawal_paths: np.ndarray  # float32 (n_devices, n_paths, horizon), >= 0
    deposit_paths: np.ndarray | None = None  # same shape; zeros for devices without deposits
    failures: dict[str, str] = field(default_factory=dict)  # device_id -> why it got the fallback forecast

    def subset(self, device_ids: Sequence[str] | np.ndarray) -> DemandForecast:
        """The forecasts of those of `device_ids` it has, in its own row order (a replay plans only its window's
        devices from a forecast of the whole network)."""
        keep = np.isin(self.device_ids.astype(str), np.asarray(device_ids).astype(str))
        kept = self.device_ids[keep]
        names = set(kept.astype(str))
        return replace(
            self,
            frame=self.frame[self.frame["device_id"].astype(str).isin(names)].reset_index(drop=True),
            device_ids=kept,
            withdrawal_paths=self.withdrawal_paths[keep],
            deposit_paths=None if self.deposit_paths is None else self.deposit_paths[keep],
            failures={device: why for device, why in self.failures.items() if device in names},
        )


def balance_limit_checks(terms: pd.DataFrame) -> list[tuple[str, str, np.ndarray]]:
    """(column, reason, mask) of device terms no plan can keep: a cassette smaller than one bundle, a floor at or
    above the cassette or the ceiling (no cash left to serve). `terms` maps the four columns to values; a 0 or
    empty capacity or ceiling is not given (a master's empty cells take the config's defaults later)."""
    floor, capacity, ceiling, bundle = (
        np.asarray(terms[c], dtype="float64") for c in ("min_balance", "capacity", "max_balance", "load_multiple")
    )
    with np.errstate(invalid="ignore"):
        return [
            (
                "load_multiple",
                "load_multiple above capacity (no whole bundle fits)",
                (capacity > 0) & (bundle > capacity),
            ),
            ("min_balance", "min_balance at or above capacity", (capacity > 0) & (floor >= capacity)),
            ("max_balance", "max_balance at or below min_balance", (ceiling > 0) & (floor >= ceiling)),
        ]
