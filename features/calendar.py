"""Forecast-time calendar features: everything known in advance about a device-day.

Calendars differ only by place (country, subdivision) and by the events that reach a device, so they
are computed once per distinct place/event key over the dates and then broadcast to devices by
position, which keeps 10,000 devices x 2 years cheap.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from cashcast.config import CalendarSettings, Config
from features.events import event_features
from features.holidays import BLOCK_COLUMNS, SAME_HOLIDAY_GAP, holiday_blocks, holiday_table
from features.keys import take_ids

MAX_PAYDAY_DISTANCE = 31
DATE_COLUMNS = [
    "day_of_week",
    "day_of_month",
    "days_to_month_end",
    "week_of_year",
    "month",
    "days_to_quarter_end",
    "doy_sin",
    "doy_cos",
    "is_weekend",
]
HOLIDAY_COLUMNS = ["is_holiday", "is_working_day", *BLOCK_COLUMNS]
PAYDAY_COLUMNS = ["is_payday", "days_since_payday", "days_to_payday", "is_pension_day"]
EVENT_BASE_COLUMNS = ["event_active", "days_to_event"]
CALENDAR_COLUMNS = [*DATE_COLUMNS, *HOLIDAY_COLUMNS, *PAYDAY_COLUMNS, *EVENT_BASE_COLUMNS]


def date_features(dates: pd.DatetimeIndex) -> pd.DataFrame:
    """Position of each day in week, month, quarter and year (year-day as a smooth sin/cos pair)."""
    dates = pd.DatetimeIndex(dates).astype("datetime64[ns]")
    quarter_end = dates + pd.offsets.QuarterEnd(0)
    year_fraction = 2 * np.pi * (dates.day_of_year.to_numpy() - 1) / 365.25
    return pd.DataFrame(
        {
            "date": dates,
            "day_of_week": dates.day_of_week.to_numpy(np.int8),
            "day_of_month": dates.day.to_numpy(np.int8),
            "days_to_month_end": (dates.days_in_month - dates.day).to_numpy(np.int8),
            "week_of_year": dates.isocalendar()["week"].to_numpy(np.int8),
            "month": dates.month.to_numpy(np.int8),
            "days_to_quarter_end": (quarter_end - dates).days.to_numpy(np.int16),
            "doy_sin": np.sin(year_fraction).astype(np.float32),
            "doy_cos": np.cos(year_fraction).astype(np.float32),
            "is_weekend": (dates.day_of_week >= 5).astype(np.int8),
        }
    )


def shifted_month_days(
    dates: pd.DatetimeIndex, is_working_day: np.ndarray, days_of_month: list[int], last_working_day: bool
) -> np.ndarray:
    """Mask of the days that are pay/pension days in `dates` (contiguous days).

    Day 31 in a 30-day month means the month's last day; a day falling on a non-working day moves to
    the previous working day (salaries arrive early, not late). Days whose shifted date would fall
    before `dates[0]` are dropped, so callers pad the range.
    """
    dates = pd.DatetimeIndex(dates)
    working = np.asarray(is_working_day, bool)
    idx = np.arange(len(dates))
    last_working_at = np.maximum.accumulate(np.where(working, idx, -1)) if len(dates) else idx
    month_seen = idx[(dates.day == 1) | (idx == 0)]  # first index of each month in range
    month_length = dates.days_in_month.to_numpy()[month_seen]
    first_of_month = month_seen - dates.day.to_numpy()[month_seen] + 1  # may be < 0 for a partial month
    targets = [first_of_month + np.minimum(day, month_length) - 1 for day in days_of_month]
    if last_working_day:
        targets.append(first_of_month + month_length - 1)
    mask = np.zeros(len(dates), bool)
    for target in targets:
        inside = (target >= 0) & (target < len(dates))
        shifted = last_working_at[target[inside]]
        mask[shifted[shifted >= 0]] = True
    return mask


def payday_features(dates: pd.DatetimeIndex, is_working_day: np.ndarray, settings: CalendarSettings) -> pd.DataFrame:
    """Payday and pension-day flags plus days since / to the nearest payday (0 on a payday)."""
    payday = shifted_month_days(dates, is_working_day, settings.paydays, settings.payday_last_working_day)
    pension = shifted_month_days(dates, is_working_day, settings.pension_days, False)
    idx = np.arange(len(dates))
    last = np.maximum.accumulate(np.where(payday, idx, -1)) if len(idx) else idx
    upcoming = np.where(payday, idx, len(idx))
    following = np.minimum.accumulate(upcoming[::-1])[::-1] if len(idx) else idx
    return pd.DataFrame(
        {
            "date": pd.DatetimeIndex(dates),
            "is_payday": payday.astype(np.int8),
            "days_since_payday": np.where(
                last >= 0, np.minimum(idx - last, MAX_PAYDAY_DISTANCE), MAX_PAYDAY_DISTANCE
            ).astype(np.int16),
            "days_to_payday": np.where(
                following < len(idx), np.minimum(following - idx, MAX_PAYDAY_DISTANCE), MAX_PAYDAY_DISTANCE
            ).astype(np.int16),
            "is_pension_day": pension.astype(np.int8),
        }
    )


def place_calendar(
    country: str,
    subdivision: str,
    start: pd.Timestamp,
    end: pd.Timestamp,
    config: Config,
    used_until: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Date, holiday, block and payday features for one country/subdivision over [start, end].

    Computed on a padded range and cut, so blocks, windows and distances at the edges are exact. A caller
    whose range runs past the last day it forecasts gives that day (`used_until`): holiday estimates are
    warned about only as far as the features of days up to it can reach.
    """
    cap = config.calendar.holiday_distance_cap
    pad = pd.Timedelta(days=max(cap, MAX_PAYDAY_DISTANCE) + 45)
    start, end = pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize()
    reach = end if used_until is None else min(end, pd.Timestamp(used_until) + pd.Timedelta(days=cap))
    first = start - pad - pd.Timedelta(days=SAME_HOLIDAY_GAP[1])  # last year's blocks, to align this year's
    try:
        table = holiday_table(country, subdivision, first, end + pad, needed=(start, reach))
    except ValueError as exc:  # one mistyped country must not stop the whole network's features
        warnings.warn(f"no holiday calendar for {country!r}/{subdivision!r} ({exc}): weekends only", stacklevel=2)
        days = pd.date_range(first, end + pad, freq="D", unit="ns")
        table = pd.DataFrame(
            {"date": days, "is_holiday": False, "is_working_day": days.day_of_week < 5, "holiday_name": ""}
        )
    dates = pd.DatetimeIndex(table["date"])
    working = table["is_working_day"].to_numpy(bool)
    parts = [
        date_features(dates),
        table[["is_holiday", "is_working_day"]].astype(np.int8),
        holiday_blocks(table, cap, country).drop(columns="date"),
        payday_features(dates, working, config.calendar).drop(columns="date"),
    ]
    frame = pd.concat([part.reset_index(drop=True) for part in parts], axis=1)
    inside = (frame["date"] >= start) & (frame["date"] <= end)
    return frame[inside].reset_index(drop=True)


def device_places(devices: pd.DataFrame, config: Config, device_ids: pd.Index | None = None) -> pd.DataFrame:
    """device_id, country, subdivision, region per device, empty cells from the config's defaults.

    `device_ids` adds devices missing from the master (they take the defaults). The default subdivision
    only applies to devices in the default country: a GB device must not inherit 'TN'.
    """
    defaults = config.devices
    master = devices if "device_id" in devices.columns else pd.DataFrame({"device_id": []})
    master = master.assign(device_id=master["device_id"].astype("string")).drop_duplicates("device_id")
    ids = pd.Index(master["device_id"], dtype="string")
    if device_ids is not None:
        ids = ids.union(pd.Index(device_ids, dtype="string"))
    ids = ids.sort_values()
    master = master.set_index("device_id").reindex(ids)

    def column(name: str) -> pd.Series:
        values = master[name] if name in master.columns else pd.Series(pd.NA, index=ids, dtype="string")
        return values.astype("string").str.strip().fillna("")

    country = column("country").str.upper()
    country = country.where(country != "", defaults.country.upper())
    subdivision = column("subdivision")
    subdivision = subdivision.where((subdivision != "") | (country != defaults.country.upper()), defaults.subdivision)
    region = column("region")
    region = region.where(region != "", defaults.region)
    return pd.DataFrame(
        {
            "device_id": ids,
            "country": country.to_numpy(),
            "subdivision": subdivision.to_numpy(),
            "region": region.to_numpy(),
        }
    ).astype("string")


def calendar_lookup(
    places: pd.DataFrame,
    dates: pd.DatetimeIndex,
    config: Config,
    events: pd.DataFrame | None = None,
    used_until: pd.Timestamp | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Calendars of the distinct keys stacked (len(dates) rows each) and each device's key number.

    The row of device i on dates[j] is `key[i] * len(dates) + j`. Keys are (country, subdivision) plus
    region/device only where events make them differ, so without events a whole country shares one.
    """
    if not len(places):
        return pd.DataFrame({column: np.zeros(0, np.int16) for column in CALENDAR_COLUMNS}), np.zeros(0, np.int64)
    events = events if events is not None and len(events) else no_events()
    scoped_regions = set(events.loc[events["scope"] == "region", "scope_value"])
    scoped_devices = set(events.loc[events["scope"] == "device", "scope_value"])
    keys = pd.DataFrame(
        {
            "country": places["country"].to_numpy(),
            "subdivision": places["subdivision"].to_numpy(),
            "region": places["region"].where(places["region"].isin(scoped_regions), "").to_numpy(),
            "device": places["device_id"].where(places["device_id"].isin(scoped_devices), "").to_numpy(),
        }
    )
    key_of_device = keys.groupby(list(keys.columns), sort=True).ngroup().to_numpy()
    distinct = keys.drop_duplicates().assign(key=key_of_device[~keys.duplicated().to_numpy()])
    distinct = distinct.sort_values("key")
    cap = config.calendar.holiday_distance_cap
    by_place = {
        place: place_calendar(place[0], place[1], dates[0], dates[-1], config, used_until).drop(columns="date")
        for place in distinct[["country", "subdivision"]].drop_duplicates().itertuples(index=False, name=None)
    }
    blocks = []
    for row in distinct.itertuples(index=False):
        calendar = by_place[(row.country, row.subdivision)]
        happening = event_features(dates, events, row.device, row.region, cap).drop(columns="date")
        blocks.append(pd.concat([calendar, happening], axis=1))
    return pd.concat(blocks, ignore_index=True), key_of_device


UNUSUAL_COLUMNS = ("is_holiday", "holiday_block_length", "pre_holiday_window", "post_holiday_window")


def unusual_days(calendar: np.ndarray) -> np.ndarray:
    """bool (...) from calendar rows (..., len(CALENDAR_COLUMNS)): days the calendar marks as unusual for the
    device's place: holidays, holiday blocks and the working days around long blocks, and days whose working status
    differs from their weekday's (a weekday off, a make-up working Saturday). Models defer to the calendar-aware
    one there, and a forecast's error there says little about drift."""
    at = [CALENDAR_COLUMNS.index(name) for name in UNUSUAL_COLUMNS]
    weekend, working = (CALENDAR_COLUMNS.index(name) for name in ("is_weekend", "is_working_day"))
    return (calendar[..., at] > 0).any(axis=-1) | (calendar[..., weekend] == calendar[..., working])


def calendar_features(
    devices: pd.DataFrame,
    start: pd.Timestamp,
    end: pd.Timestamp,
    config: Config,
    events: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Known-in-advance features keyed device_id, date for every device and every day in [start, end].

    `devices` needs device_id; country/subdivision/region are optional (empty: config defaults).
    `events` is a `load_events` frame (None: no custom events).
    """
    dates = pd.date_range(pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize(), freq="D", unit="ns")
    places = device_places(devices, config)
    table, key = calendar_lookup(places, dates, config, events)
    rows = (key[:, None] * len(dates) + np.arange(len(dates))).ravel()
    out = table.take(rows).reset_index(drop=True)
    out.insert(0, "date", np.tile(dates.to_numpy(), len(places)))
    out.insert(0, "device_id", take_ids(pd.Index(places["device_id"]), np.repeat(np.arange(len(places)), len(dates))))
    return out


def no_events() -> pd.DataFrame:
    """An events calendar without events (the `load_events` columns)."""
    return pd.DataFrame(
        {c: pd.Series(dtype="string") for c in ("scope", "scope_value", "flag")}
        | {"date_start": pd.Series(dtype="datetime64[ns]"), "date_end": pd.Series(dtype="datetime64[ns]")}
    )
