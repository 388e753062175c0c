"""Censoring: days whose recorded withdrawals are a lower bound, not demand.

A cash-out or offline device turns customers away, so the day's amount understates demand; such
days keep their row (the amount is still true cash movement) but are flagged and never fitted.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cashcast.schema import STATUS_STATES
from features.keys import positions, unique_ids


def mark_censored(daily: pd.DataFrame, status: pd.DataFrame, balances: pd.DataFrame | None = None) -> pd.DataFrame:
    """A copy of `daily` with censored=True on device-days hit by a status interval or an empty morning.

    Status intervals (`cash_out`, `offline`) censor every date from start's date to end's date inclusive
    (an empty end: still open, up to the last recorded day). A balance of 0 (or less) taken on the
    morning of a day censors that day. Already censored days stay censored.
    """
    out = daily.copy(deep=False)  # copy-on-write: setting `censored` below never touches `daily`
    previous = out["censored"].fillna(False).astype(bool) if "censored" in out else False
    ids = unique_ids(out["device_id"])
    keys = _day_keys(ids, out["device_id"], out["date"])
    hit = np.zeros(len(out), bool)
    if status is not None and len(status) and len(out):
        dates = pd.to_datetime(out["date"])
        hit |= np.isin(keys, _status_day_keys(ids, status, dates.min(), dates.max()))
    if balances is not None and len(balances):
        empty = balances[pd.to_numeric(balances["balance"], errors="coerce") <= 0]
        hit |= np.isin(keys, _day_keys(ids, empty["device_id"], empty["as_of"]))
    out["censored"] = previous | hit
    return out


def _day_keys(ids: pd.Index, device_id: pd.Series, when: pd.Series) -> np.ndarray:
    """One integer per (device, day) so membership is a single vectorised isin; -1 for unknown devices."""
    return _encode(positions(device_id, ids), _naive_day(pd.Series(when)).to_numpy("datetime64[D]"))


def _encode(code: np.ndarray, day: np.ndarray) -> np.ndarray:
    return np.where(code >= 0, code * 1_000_000 + day.astype(np.int64), -1)


def _status_day_keys(
    ids: pd.Index, status: pd.DataFrame, first_day: pd.Timestamp, last_day: pd.Timestamp
) -> np.ndarray:
    """Every (device, day) key inside a censoring status interval (ends inclusive), within the daily range."""
    censoring = status[status["state"].astype("string").str.strip().str.lower().isin(STATUS_STATES)]
    start = _naive_day(censoring["start"]).clip(lower=first_day.normalize())
    end = _naive_day(censoring["end"]).fillna(last_day.normalize()).clip(upper=last_day.normalize())
    valid = (start.notna() & (end >= start)).to_numpy(bool)
    start, end = start[valid], end[valid]
    code = positions(censoring["device_id"][valid], ids)
    lengths = ((end - start).dt.days + 1).to_numpy(np.int64)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    days = np.repeat(start.to_numpy("datetime64[D]"), lengths) + offsets
    keys = _encode(np.repeat(code, lengths), days)
    return keys[keys >= 0]


def _naive_day(when: pd.Series) -> pd.Series:
    """Local calendar day of a timestamp column (zone dropped, time of day cut)."""
    stamps = pd.to_datetime(when)
    return (stamps.dt.tz_localize(None) if stamps.dt.tz is not None else stamps).dt.normalize()
