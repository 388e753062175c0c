"""A forecast-free-of-models baseline: weekly seasonal naive with empirical ratio noise paths.

The backtest needs a forecaster that exists without training, and the tests need realistic
DemandForecasts; both use this one. Each day's point is the median of the last four same weekdays
(a median, because real ATM history holds near-zero fault days that would wreck a mean); sample
paths multiply it by blocks of consecutive historical ratios actual / naive point, clipped to
MAX_RATIO, so the paths carry the device's own error spread and its day-to-day dependence.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from cashcast.schema import DemandForecast, quantile_column

SAME_WEEKDAYS = 4
RATIO_WEEKS = 26
MIN_RATIOS = 14
MAX_RATIO = 4.0  # a ratio above this is a fault-day artefact (tiny base), not demand
FALLBACK_SIGMA = 0.3  # lognormal spread when a device has too little history for ratios
DEFAULT_QUANTILES = (0.5, 0.9, 0.95, 0.99)


def day_matrix(
    daily: pd.DataFrame, column: str, device_ids, days: pd.DatetimeIndex, censored_as_missing: bool = True
) -> np.ndarray:
    """(n_devices, n_days) of `column`, NaN where not recorded (or censored, with `censored_as_missing`: a forecast
    must not learn from a cash-out's served amount; a replay executes the day as recorded)."""
    frame = daily[daily["date"].isin(days)]
    if censored_as_missing and "censored" in frame:
        frame = frame[~frame["censored"].fillna(False).astype(bool)]
    table = frame.pivot_table(index="device_id", columns="date", values=column, aggfunc="sum", dropna=False)
    return table.reindex(index=device_ids, columns=days).to_numpy(dtype="float64")


def weekday_medians(values: np.ndarray, dates: pd.DatetimeIndex) -> np.ndarray:
    """(n, 7) each row's median of `values` (n, len(dates)) per weekday, Monday first; NaN for a weekday with no
    value (the caller says what stands in: an earlier window, every day, or nothing)."""
    out = np.full((len(values), 7), np.nan)
    weekday = np.asarray(dates.day_of_week)
    for day in np.unique(weekday):
        out[:, day] = _nanmedian(values[:, weekday == day], axis=1)
    return out


def _same_weekday_median(values: np.ndarray, lags: range) -> np.ndarray:
    """Median over lags (in weeks) of the value 7*lag days earlier, NaN-aware; column t uses t-7.. ."""
    n_dev, n_days = values.shape
    stacked = np.full((len(lags), n_dev, n_days), np.nan)
    for index, lag in enumerate(lags):
        shift = 7 * lag
        stacked[index, :, shift:] = values[:, : n_days - shift]
    return _nanmedian(stacked, axis=0)


def _nanmedian(values: np.ndarray, axis: int) -> np.ndarray:
    """np.nanmedian without the all-NaN warning (an all-NaN slice is simply NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(values, axis=axis)


def _ratio_blocks(values: np.ndarray, base: np.ndarray, n_paths: int, horizon: int, rng) -> np.ndarray:
    """(n_dev, n_paths, horizon) multipliers: circular blocks of each device's valid ratios."""
    with np.errstate(all="ignore"):
        ratios = values / base
    valid = np.isfinite(ratios) & (base > 0)
    n_dev = len(values)
    n_valid = valid.sum(axis=1)
    # Stable sort moves valid ratios to the front in time order: blocks stay consecutive days.
    order = np.argsort(~valid, axis=1, kind="stable")
    packed = np.take_along_axis(np.where(valid, ratios, 1.0), order, axis=1)
    starts = rng.integers(0, np.maximum(n_valid, 1)[:, None], size=(n_dev, n_paths))
    offsets = (starts[:, :, None] + np.arange(horizon)[None, None, :]) % np.maximum(n_valid, 1)[:, None, None]
    blocks = np.take_along_axis(packed[:, None, :], offsets, axis=2)
    sparse = n_valid < MIN_RATIOS
    if sparse.any():
        noise = rng.normal(-0.5 * FALLBACK_SIGMA**2, FALLBACK_SIGMA, size=(int(sparse.sum()), n_paths, horizon))
        blocks[sparse] = np.exp(noise)
    return np.clip(blocks, 0.0, MAX_RATIO)


def naive_forecast(
    daily: pd.DataFrame,
    as_of: pd.Timestamp | str,
    horizon: int,
    n_paths: int = 200,
    seed: int = 42,
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES,
) -> DemandForecast:
    """Seasonal-naive DemandForecast for every device in `daily`, from history before `as_of`.

    Devices with no usable history get zero demand (the planner warns about it).
    """
    as_of = pd.Timestamp(as_of).normalize()
    dates = pd.date_range(as_of, periods=horizon, freq="D")
    history_days = pd.date_range(as_of - pd.Timedelta(days=7 * (RATIO_WEEKS + SAME_WEEKDAYS)), as_of, freq="D")[:-1]
    history = daily[daily["date"] < as_of]
    device_ids = np.array(sorted(daily["device_id"].astype(str).unique()), dtype=object)
    rng = np.random.default_rng(seed)
    frame_parts = {}
    paths = {}
    has_deposits = "deposits" in daily and daily["deposits"].notna().any()
    for column in ["withdrawals", "deposits"] if has_deposits else ["withdrawals"]:
        values = day_matrix(history, column, device_ids, history_days)
        base = _same_weekday_median(values, range(1, SAME_WEEKDAYS + 1))
        # The point for forecast day h: median of the last 4 observed same weekdays before as_of.
        extended = np.concatenate([values, np.full((len(device_ids), horizon), np.nan)], axis=1)
        point = np.full((len(device_ids), horizon), np.nan)
        # Beyond a week ahead the lag-1 value is itself a forecast: use the last 4 *observed* weeks.
        for h in range(horizon):
            weeks_ahead = h // 7
            cols = [len(history_days) + h - 7 * (lag + weeks_ahead) for lag in range(1, SAME_WEEKDAYS + 1)]
            point[:, h] = _nanmedian(extended[:, cols], axis=1)
        fallback = _nanmedian(values, axis=1) if values.size else np.zeros(len(device_ids))
        point = np.where(np.isnan(point), np.nan_to_num(fallback, nan=0.0)[:, None], point)
        multipliers = _ratio_blocks(values, base, n_paths, horizon, rng)
        paths[column] = (point[:, None, :] * multipliers).astype("float32")
        frame_parts[column] = point
    withdrawal_paths = paths["withdrawals"]
    frame = pd.DataFrame(
        {
            "device_id": np.repeat(device_ids, horizon),
            "date": np.tile(dates.to_numpy(), len(device_ids)),
            "model": "seasonal_naive_paths",
            "yhat": frame_parts["withdrawals"].ravel(),
        }
    )
    levels = np.quantile(withdrawal_paths, list(quantiles), axis=1) if len(device_ids) else None
    for index, level in enumerate(quantiles):
        frame[quantile_column(level)] = levels[index].ravel() if levels is not None else []
    if has_deposits:
        frame["deposits_yhat"] = frame_parts["deposits"].ravel()
    frame["device_id"] = frame["device_id"].astype("string")
    return DemandForecast(
        frame=frame,
        device_ids=device_ids,
        dates=dates,
        withdrawal_paths=withdrawal_paths,
        deposit_paths=np.nan_to_num(paths["deposits"]) if has_deposits else None,
    )
