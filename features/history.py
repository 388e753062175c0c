"""Origin-anchored history features: what the demand looked like before the forecast origin.

Every feature of an (origin, target day) sample is read from a dense device x day matrix restricted to
days strictly before the origin, with absent and censored days as NaN (missing, never zero), so no
value on or after the origin can leak in. Windows are gathered explicitly per sample rather than
differenced from running sums, which keeps a sample's features bit-identical whatever else is in the
call (other origins, later data).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cashcast.config import Config
from features.keys import positions, take_ids, unique_ids

LEVEL_WINDOWS = (7, 28, 91)
DOW_WEEKS = (4, 8)
LAST_YEAR_DAYS = 364  # 52 weeks: same weekday one year back
LOOKBACK_DAYS = LAST_YEAR_DAYS  # no feature reads further back than this from an origin
VALUE_FEATURES = [
    *(f"level_{w}" for w in LEVEL_WINDOWS),
    *(f"dow_mean_{k}w" for k in DOW_WEEKS),
    "same_day_last_year",
    "missing_share_28",
    "trend_ratio",
    "std_28",
]
HISTORY_COLUMNS = [
    "horizon",
    *VALUE_FEATURES,
    "days_since_observed",
    "observed_days_364",
    *(f"dep_{name}" for name in VALUE_FEATURES),
]


def history_features(
    daily: pd.DataFrame, origins: pd.DatetimeIndex | pd.DataFrame, horizon: int, config: Config
) -> pd.DataFrame:
    """Features keyed device_id, origin, date for date in [origin, origin + horizon), from days < origin.

    `origins` is a DatetimeIndex (applied to every device of `daily`) or a frame (device_id, origin).
    `config` is accepted for symmetry with the other builders; the windows are fixed by name.
    Rows come device-major, then origin, then date.
    """
    pairs = origin_pairs(daily, origins)
    return pair_history(daily, pairs, horizon)


def origin_pairs(daily: pd.DataFrame, origins: pd.DatetimeIndex | pd.DataFrame) -> pd.DataFrame:
    """(device_id, origin) pairs, sorted, from an origin index (x every device of daily) or a frame."""
    if isinstance(origins, pd.DataFrame):
        pairs = origins[["device_id", "origin"]]
    else:
        stamps = pd.DatetimeIndex(origins).normalize().unique()
        ids = unique_ids(daily["device_id"])
        pairs = pd.DataFrame(
            {
                "device_id": take_ids(ids, np.repeat(np.arange(len(ids)), len(stamps))),
                "origin": np.tile(stamps, len(ids)),
            }
        )
    pairs = pairs.assign(
        device_id=pairs["device_id"].astype("string"),
        origin=pd.to_datetime(pairs["origin"]).dt.normalize().astype("datetime64[ns]"),
    )
    return pairs.drop_duplicates().sort_values(["device_id", "origin"], ignore_index=True)


def pair_history(daily: pd.DataFrame, pairs: pd.DataFrame, horizon: int) -> pd.DataFrame:
    """History features for given (device_id, origin) pairs x horizon days (the builders' core)."""
    if horizon < 1:
        raise ValueError(f"horizon must be at least 1 day, got {horizon}")
    ids = unique_ids(pairs["device_id"])
    n_pairs = len(pairs)
    origin = pairs["origin"].to_numpy("datetime64[ns]")
    if n_pairs:
        day0 = origin.min() - np.timedelta64(LOOKBACK_DAYS, "D")
        n_days = int((origin.max() - day0) // np.timedelta64(1, "D"))
    else:
        day0, n_days = np.datetime64("1970-01-01", "ns"), 0
    device = positions(pairs["device_id"], ids)
    origin_col = ((origin - day0) // np.timedelta64(1, "D")).astype(np.int64)
    steps = np.arange(1, horizon + 1)
    amounts = dense_amounts(daily, ids, day0, n_days)

    withdrawals = amounts["withdrawals"]
    features = {"horizon": np.tile(steps, n_pairs).astype(np.int16)}
    features |= _value_family(withdrawals, device, origin_col, steps, prefix="")
    seen = ~np.isnan(withdrawals)
    seen_before = np.concatenate([np.zeros((len(ids), 1), np.int32), np.cumsum(seen, axis=1, dtype=np.int32)], 1)
    last_seen = np.maximum.accumulate(np.where(seen, np.arange(n_days), -1), axis=1) if n_days else seen
    last = last_seen[device, origin_col - 1] if n_days else np.full(n_pairs, -1)
    since = np.where(last >= 0, origin_col - last, np.nan).astype(np.float32)
    features["days_since_observed"] = np.repeat(since, horizon)
    count = seen_before[device, origin_col] - seen_before[device, origin_col - LOOKBACK_DAYS]
    features["observed_days_364"] = np.repeat(count.astype(np.int16), horizon)
    features |= _value_family(amounts["deposits"], device, origin_col, steps, prefix="dep_")

    out = pd.DataFrame(
        {
            "device_id": take_ids(ids, np.repeat(device, horizon)),
            "origin": np.repeat(origin, horizon),
            "date": (origin[:, None] + (steps - 1).astype("timedelta64[D]")).ravel().astype("datetime64[ns]"),
        }
    )
    return pd.concat([out, pd.DataFrame(features)[HISTORY_COLUMNS]], axis=1)


def dense_amounts(daily: pd.DataFrame, ids: pd.Index, day0: np.datetime64, n_days: int) -> dict[str, np.ndarray]:
    """(device x day) float64 matrices of withdrawals and deposits for days day0 .. day0 + n_days - 1.

    NaN where there is no row, and on censored days: a censored amount is a lower bound, never demand.
    """
    day = (pd.to_datetime(daily["date"]).to_numpy("datetime64[ns]") - day0) // np.timedelta64(1, "D")
    keep = (day >= 0) & (day < n_days)
    if "censored" in daily:
        keep &= ~daily["censored"].fillna(False).to_numpy(bool)
    row = positions(daily["device_id"][keep], ids)
    col = day[keep].astype(np.int64)
    known = row >= 0
    matrices = {}
    for column in ("withdrawals", "deposits"):
        matrix = np.full((len(ids), n_days), np.nan)
        if column in daily:
            matrix[row[known], col[known]] = daily[column].to_numpy(float)[keep][known]
        matrices[column] = matrix
    return matrices


def _value_family(
    matrix: np.ndarray, device: np.ndarray, origin_col: np.ndarray, steps: np.ndarray, prefix: str
) -> dict[str, np.ndarray]:
    """Levels, weekday means, last-year value, missing share, trend and spread of one amount series."""
    horizon = len(steps)
    longest = max(LEVEL_WINDOWS)
    window = _gather(matrix, device[:, None], origin_col[:, None] + np.arange(-longest, 0))  # (pairs, 91)
    out: dict[str, np.ndarray] = {}
    for days in LEVEL_WINDOWS:
        out[f"level_{days}"] = nan_mean(window[:, -days:])
    recent, before = window[:, -28:], window[:, -56:-28]
    out["missing_share_28"] = np.isnan(recent).mean(axis=1)
    previous = nan_mean(before)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["trend_ratio"] = np.where(previous > 0, out["level_28"] / previous, np.nan)
    out["std_28"] = _nanstd(recent)
    per_pair = {name: np.repeat(values.astype(np.float32), horizon) for name, values in out.items()}

    # Weekday means depend on the target's weekday only: compute the first week, repeat every 7 days.
    first_week = steps[:7]
    latest_same_weekday = origin_col[:, None] + first_week - 8  # the target's weekday, last week before origin
    weeks = np.arange(max(DOW_WEEKS))
    same_weekday = _gather(matrix, device[:, None, None], latest_same_weekday[:, :, None] - 7 * weeks)
    for k in DOW_WEEKS:
        weekday_mean = nan_mean(same_weekday[:, :, :k])  # (pairs, first week)
        per_pair[f"dow_mean_{k}w"] = weekday_mean[:, (steps - 1) % 7].astype(np.float32).ravel()
    target_col = origin_col[:, None] + steps - 1  # (pairs, horizon)
    last_year = target_col - LAST_YEAR_DAYS
    value = _gather(matrix, device[:, None], last_year)
    per_pair["same_day_last_year"] = np.where(last_year < origin_col[:, None], value, np.nan).astype(np.float32).ravel()
    return {prefix + name: per_pair[name] for name in VALUE_FEATURES}


def _gather(matrix: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """matrix[rows, cols] with NaN for columns outside the matrix."""
    inside = (cols >= 0) & (cols < matrix.shape[1])
    if matrix.shape[1] == 0:
        return np.full(np.broadcast(rows, cols).shape, np.nan)
    values = matrix[rows, np.clip(cols, 0, matrix.shape[1] - 1)]
    return np.where(inside, values, np.nan)


def nan_mean(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN where nothing was observed, with no warning (np.nanmean's
    would need `warnings.catch_warnings`, which threads, such as the flows' task runners, undo for one another)."""
    count = (~np.isnan(values)).sum(axis=-1)
    total = np.where(np.isnan(values), 0.0, values).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, total / count, np.nan)


def _nanstd(values: np.ndarray) -> np.ndarray:
    """Population standard deviation over the last axis ignoring NaN; NaN with fewer than 2 values."""
    count = (~np.isnan(values)).sum(axis=-1)
    mean = nan_mean(values)
    squares = np.where(np.isnan(values), 0.0, (values - mean[..., None]) ** 2).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 1, np.sqrt(squares / count), np.nan)
