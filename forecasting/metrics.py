"""Point-forecast accuracy measures, on arrays where NaN actuals (absent or censored days) are dropped.

sMAPE follows the Monash archive: 2|F-Y|/(|F|+|Y|) in percent (0..200), 0/0 points dropped. MASE
scales the mean absolute error by the in-sample lag-7 seasonal-naive error of the training part.
"""

from __future__ import annotations

import numpy as np


def _pairs(actual: np.ndarray, forecast: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    actual = np.asarray(actual, float).ravel()
    forecast = np.asarray(forecast, float).ravel()
    keep = np.isfinite(actual) & np.isfinite(forecast)
    return actual[keep], forecast[keep]


def smape(actual: np.ndarray, forecast: np.ndarray) -> float:
    """Symmetric MAPE in percent, 0..200; NaN when nothing is left to score."""
    y, f = _pairs(actual, forecast)
    denom = np.abs(y) + np.abs(f)
    keep = denom > 0
    if not keep.any():
        return float("nan")
    return float(np.mean(200.0 * np.abs(f - y)[keep] / denom[keep]))


def seasonal_scale(history: np.ndarray, season: int = 7) -> float:
    """Mean |y_t - y_{t-season}| over pairs observed in `history` (the MASE denominator)."""
    history = np.asarray(history, float)
    diffs = np.abs(history[season:] - history[:-season])
    diffs = diffs[np.isfinite(diffs)]
    return float(diffs.mean()) if len(diffs) else float("nan")


def mase(actual: np.ndarray, forecast: np.ndarray, history: np.ndarray, season: int = 7) -> float:
    """Mean absolute error over the lag-`season` naive error on the training history."""
    y, f = _pairs(actual, forecast)
    scale = seasonal_scale(history, season)
    if not len(y) or not scale > 0:
        return float("nan")
    return float(np.mean(np.abs(f - y)) / scale)


def wape(actual: np.ndarray, forecast: np.ndarray) -> float:
    """Sum |F-Y| / sum |Y|: the error share of the cash actually moved."""
    y, f = _pairs(actual, forecast)
    total = np.abs(y).sum()
    return float(np.abs(f - y).sum() / total) if total > 0 else float("nan")


def bias(actual: np.ndarray, forecast: np.ndarray) -> float:
    """Sum (F-Y) / sum Y: positive means over-forecasting (idle cash), negative under (stockouts)."""
    y, f = _pairs(actual, forecast)
    total = np.abs(y).sum()
    return float((f - y).sum() / total) if total > 0 else float("nan")


def coverage(actual: np.ndarray, upper: np.ndarray) -> float:
    """Share of observed days whose actual did not exceed the quantile forecast."""
    y, q = _pairs(actual, upper)
    return float(np.mean(y <= q)) if len(y) else float("nan")
