"""The feature layer: calendar, holidays, events, censoring, the device x day panel and leak-free history
features. The forecaster reads all of them from here (`features.panel`, `features.history`).

Multi-step strategy: DIRECT multi-step with origin-anchored history. Every sample is one (device, origin,
target day) triple: its history features are computed only from days strictly before the origin, its
calendar features describe the target day (known in advance), and `horizon` (h = target - origin + 1 days)
tells the model how far ahead it looks. Forecasting day D+h never feeds the forecast of an earlier day back
in (no recursion), so 90-day horizons do not compound errors and the training samples match exactly what is
known at forecast time (`build` at as_of = origin).

Missing and censored days are missing, never zero: history features skip them. Custom events (`load_events`)
are passed in by the caller as `events=`; without them `event_active` is 0 and `days_to_event` is the cap.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cashcast.config import Config
from features.calendar import CALENDAR_COLUMNS, calendar_features, calendar_lookup, device_places, no_events
from features.censoring import mark_censored
from features.events import EVENT_PREFIX, load_events, resolve_events_file
from features.history import HISTORY_FEATURES, HistorySums, history_columns
from features.holidays import HolidayEstimateWarning, holiday_table
from features.keys import positions
from features.panel import build_panel

FEATURE_COLUMNS = ["horizon", *CALENDAR_COLUMNS, *HISTORY_FEATURES]

__all__ = [
    "FEATURE_COLUMNS",
    "HolidayEstimateWarning",
    "build",
    "calendar_features",
    "feature_columns",
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
    devices: pd.DataFrame | None,
    as_of: pd.Timestamp,
    horizon: int,
    config: Config,
    events: pd.DataFrame | None = None,
    column: str = "withdrawals",
) -> pd.DataFrame:
    """Forecast-time features keyed device_id, date for as_of .. as_of + horizon - 1: `horizon`, the day's
    calendar (with a flag per custom event) and the history features of `column` before as_of, computed as the
    forecaster computes them (`features.history` on the same `build_panel` panel: outages masked, the
    `[forecast] max_history_days` window). Covers every device of the master and of `daily` (`daily` in the
    contract, `censored` flags where known); only rows before as_of are read."""
    as_of = pd.Timestamp(as_of).normalize()
    if "censored" not in daily:
        daily = daily.assign(censored=False)  # a daily file with no status feed: every recorded day is demand
    panel = build_panel(daily, devices, as_of, config, column=column, pad=horizon, events=events, horizon=horizon)
    dev, origin, step = panel.samples_ahead(np.arange(len(panel.device_ids)), horizon)
    target = origin + step - 1
    year_back = panel.calendar_at(dev, target)[:, CALENDAR_COLUMNS.index("year_back_days")]
    history, _ = history_columns(HistorySums(panel), dev, origin, target, year_back)
    dates = pd.date_range(as_of, periods=horizon, freq="D", unit="ns")
    keys = pd.DataFrame(
        {"device_id": pd.array(panel.device_ids[dev].astype(str), dtype="string"), "date": dates[step - 1]}
    )
    master = devices if devices is not None and len(devices) else pd.DataFrame({"device_id": []})
    places = device_places(master, config, device_ids=pd.Index(panel.device_ids, dtype="string"))
    calendar = _with_calendar(keys, places, dates, config, events)
    features = pd.DataFrame({"horizon": step, **dict(zip(HISTORY_FEATURES, history, strict=True))})
    return pd.concat([keys, calendar, features], axis=1)


def _with_calendar(
    keys: pd.DataFrame, places: pd.DataFrame, dates: pd.DatetimeIndex, config: Config, events: pd.DataFrame | None
) -> pd.DataFrame:
    """The calendar row (features.calendar, event flags included) of each (device_id, date) of `keys`, by
    position, no merge."""
    if not len(keys):
        return pd.DataFrame({c: np.zeros(0) for c in CALENDAR_COLUMNS})
    table, key = calendar_lookup(places, dates, config, events)
    device = positions(keys["device_id"], pd.Index(places["device_id"]))
    offset = (keys["date"].to_numpy("datetime64[ns]") - dates[0].to_datetime64()) // np.timedelta64(1, "D")
    return table.take(key[device] * len(dates) + offset.astype(np.int64)).reset_index(drop=True)
