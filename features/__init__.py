"""The feature layer: calendar, holidays, events, censoring and leak-free history features.

Multi-step strategy: DIRECT multi-step with origin-anchored history. Every training sample is one
(device, origin, target day) triple: its history features are computed only from days strictly before
the origin, its calendar features describe the target day (known in advance), and `horizon`
(h = target - origin + 1 days) tells the model how far ahead it looks. Forecasting day D+h never feeds
the forecast of an earlier day back in (no recursion), so 90-day horizons do not compound errors and
the training rows match exactly what is known at forecast time (`build` at as_of = origin).

Missing and censored days are missing, never zero: history features skip them, targets are NaN.
`level_28` is the natural scale for ratio targets (y / level_28). Deposit analogues carry `dep_`.
Custom events (`load_events`) are passed in by the caller as `events=`; without them `event_active`
is 0 and `days_to_event` is the cap.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cashcast.config import Config
from features.calendar import CALENDAR_COLUMNS, calendar_features, calendar_lookup, device_places, no_events
from features.censoring import mark_censored
from features.events import EVENT_PREFIX, load_events, resolve_events_file
from features.history import HISTORY_COLUMNS, dense_amounts, history_features, origin_pairs, pair_history
from features.holidays import HolidayEstimateWarning, holiday_table
from features.keys import positions, unique_ids

FEATURE_COLUMNS = [*CALENDAR_COLUMNS, *HISTORY_COLUMNS]
# Small-integer codes that LightGBM may treat as categories rather than ordered numbers.
CATEGORICAL_COLUMNS = ["day_of_week", "month"]
TARGET_COLUMNS = ["y", "y_deposits"]

__all__ = [
    "CATEGORICAL_COLUMNS",
    "FEATURE_COLUMNS",
    "TARGET_COLUMNS",
    "HolidayEstimateWarning",
    "build",
    "build_training",
    "calendar_features",
    "feature_columns",
    "history_features",
    "holiday_table",
    "load_events",
    "no_events",
    "mark_censored",
    "resolve_events_file",
]


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """The model inputs present in `frame`: the fixed features plus this frame's event flags."""
    fixed = [c for c in FEATURE_COLUMNS if c in frame.columns]
    flags = sorted(c for c in frame.columns if c.startswith(EVENT_PREFIX) and c not in FEATURE_COLUMNS)
    return fixed + flags


def build(
    daily: pd.DataFrame,
    devices: pd.DataFrame,
    as_of: pd.Timestamp,
    horizon: int,
    config: Config,
    events: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Forecast-time features keyed device_id, date for as_of .. as_of + horizon - 1.

    Covers every device of the master and of `daily`; only daily rows before as_of are read.
    """
    as_of = pd.Timestamp(as_of).normalize()
    before = pd.to_datetime(daily["date"]).to_numpy("datetime64[ns]") < as_of.to_datetime64()
    places = device_places(devices, config, device_ids=unique_ids(daily["device_id"][before]))
    pairs = pd.DataFrame({"device_id": places["device_id"], "origin": as_of}).astype({"origin": "datetime64[ns]"})
    frame = _with_calendar(pair_history(daily, pairs, horizon), places, config, events)
    return frame.drop(columns="origin")


def build_training(
    daily: pd.DataFrame,
    devices: pd.DataFrame,
    origins: pd.DatetimeIndex | pd.DataFrame,
    horizon: int,
    config: Config,
    events: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """`build`'s features for many origins stacked (key device_id, origin, date) plus targets.

    `y` (withdrawals) and `y_deposits` are NaN where the target day is absent or censored; drop those
    rows before fitting. `origins` as in `history_features` (an index applies to every device of daily).
    """
    pairs = origin_pairs(daily, origins)
    places = device_places(devices, config, device_ids=pairs["device_id"].unique())
    frame = _with_calendar(history_features(daily, pairs, horizon, config), places, config, events)
    if not len(frame):
        return frame.assign(y=np.zeros(0), y_deposits=np.zeros(0))
    ids = unique_ids(pairs["device_id"])
    day0 = frame["date"].min().to_datetime64()
    n_days = int((frame["date"].max().to_datetime64() - day0) // np.timedelta64(1, "D")) + 1
    row = positions(frame["device_id"], ids)
    col = ((frame["date"].to_numpy("datetime64[ns]") - day0) // np.timedelta64(1, "D")).astype(np.int64)
    for target, matrix in dense_amounts(daily, ids, day0, n_days).items():
        frame["y" if target == "withdrawals" else "y_deposits"] = matrix[row, col]
    return frame


def _with_calendar(
    history: pd.DataFrame, places: pd.DataFrame, config: Config, events: pd.DataFrame | None
) -> pd.DataFrame:
    """Join each (device, target day) row of `history` to its calendar row by position, no merge."""
    keys = history[["device_id", "origin", "date"]]
    if not len(history):
        empty = pd.DataFrame({c: np.zeros(0) for c in CALENDAR_COLUMNS})
        return pd.concat([keys, empty, history.drop(columns=keys.columns)], axis=1)
    dates = pd.date_range(history["date"].min(), history["date"].max(), freq="D", unit="ns")
    table, key = calendar_lookup(places, dates, config, events)
    device = positions(history["device_id"], pd.Index(places["device_id"]))
    offset = (history["date"].to_numpy("datetime64[ns]") - dates[0].to_datetime64()) // np.timedelta64(1, "D")
    calendar = table.take(key[device] * len(dates) + offset.astype(np.int64)).reset_index(drop=True)
    return pd.concat([keys.reset_index(drop=True), calendar, history.drop(columns=keys.columns)], axis=1)
