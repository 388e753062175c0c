"""Origin-anchored history features: what a device's demand looked like before the forecast origin.

They are read from a `Panel` (features.panel: demand per device and day, missing, censored and unflagged-outage
days NaN) through prefix sums, so a (device, origin, target day) sample costs O(1) whatever its windows, and
reads only columns before its origin: nothing on or after the origin can leak in. Amounts enter as ratios to the
device's level (the mean of its last 91 observed days), so a new ATM with two weeks of data borrows the network's
shape. One implementation serves the forecaster's design matrix (forecasting.models) and the feature table an
analyst reads (`features.build`).
"""

from __future__ import annotations

import numpy as np

from features.calendar import CALENDAR_COLUMNS
from features.panel import SEASON_DAYS, Panel, quiet_nan

LEVEL_DAYS = 91  # the normaliser's window: a quarter
LAST_YEAR_DAYS = 364  # 52 weeks: same weekday one year back
SAME_WEEKDAYS = 8  # weeks of the same weekday read before the origin
HISTORY_FEATURES = [
    "log_level",  # log1p of the level: the mean of the last 91 observed days, else of all history
    "level_7_ratio",  # mean of the last 7 / 28 / 364 days over the level
    "level_28_ratio",
    "level_364_ratio",
    "last_ratio",  # the day before the origin
    "dow_mean_4w_ratio",  # the target's weekday over the last 4 / 8 weeks
    "dow_mean_8w_ratio",
    "same_weekday_last_ratio",  # its last occurrence
    "last_year_ratio",  # the week around last year's analogue day (calendar `year_back_days`), over that level
    "last_year_day_ratio",
    "days_off_ratio",  # demand on days off over all days, last year: an office ATM empties, a mall's fills
    "missing_share_28",  # of the last 28 days, not observed
    "history_days",  # since the first observed day, capped at 400
]


def nan_mean(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN where nothing was observed, with no warning (np.nanmean's
    would need `warnings.catch_warnings`, which threads, such as the flows' task runners, undo for one another)."""
    count = (~np.isnan(values)).sum(axis=-1)
    total = np.where(np.isnan(values), 0.0, values).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, total / count, np.nan)


def _prefix(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    observed = np.isfinite(values)
    pad = np.zeros((len(values), 1))
    return (
        np.hstack([pad, np.cumsum(np.where(observed, values, 0.0), axis=1)]),
        np.hstack([pad, np.cumsum(observed, axis=1)]),
    )


class HistorySums:
    """Prefix sums of observed demand and counts (all days, and days off): O(1) windowed means at any origin."""

    def __init__(self, panel: Panel):
        values = panel.values
        observed = np.isfinite(values)
        self.values = values
        self.total, self.count = _prefix(values)
        working = panel.calendar[:, : values.shape[1], CALENDAR_COLUMNS.index("is_working_day")][panel.group] > 0
        self.off_total, self.off_count = _prefix(np.where(working, np.nan, values))
        self.first = np.where(observed.any(axis=1), observed.argmax(axis=1), values.shape[1])

    def mean(self, dev: np.ndarray, end: np.ndarray, days: int, days_off: bool = False) -> np.ndarray:
        """Mean of observed values (only on days off with `days_off`) in columns [end - days, end); NaN when none."""
        total, count = (self.off_total, self.off_count) if days_off else (self.total, self.count)
        end = np.clip(end, 0, self.values.shape[1])
        lo = np.clip(end - days, 0, None)
        n = count[dev, end] - count[dev, lo]
        with quiet_nan():
            return np.where(n > 0, (total[dev, end] - total[dev, lo]) / n, np.nan)

    def count_in(self, dev: np.ndarray, end: np.ndarray, days: int) -> np.ndarray:
        end = np.clip(end, 0, self.values.shape[1])
        return self.count[dev, end] - self.count[dev, np.clip(end - days, 0, None)]

    def at(self, dev: np.ndarray, col: np.ndarray) -> np.ndarray:
        ok = (col >= 0) & (col < self.values.shape[1])
        return np.where(ok, self.values[dev, np.clip(col, 0, self.values.shape[1] - 1)], np.nan)


def origin_level(sums: HistorySums, dev: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """The normaliser: mean of the observed days among the last 91, else of all history.

    A quarter is long enough that a week of outage-depressed or festival days barely moves it (the
    28-day level was clearly noisier on the CUB ATMs); recent levels enter as ratio features.
    """
    level = sums.mean(dev, origin, LEVEL_DAYS)
    return np.where(np.isnan(level), sums.mean(dev, origin, 10**6), level)


def history_columns(
    sums: HistorySums, dev: np.ndarray, origin: np.ndarray, target: np.ndarray, year_back_days: np.ndarray
) -> tuple[list[np.ndarray], np.ndarray]:
    """(HISTORY_FEATURES columns, level) of samples: device row `dev`, origin column (the first day not known)
    and target column, with the calendar's `year_back_days` of the target day (where last year's analogue is)."""
    level = origin_level(sums, dev, origin)
    with quiet_nan():
        inv = np.where(level > 0, 1.0 / level, np.nan)
        # Same weekday as the target, last seen before the origin; then the weeks before it.
        recent = origin - 1 - ((origin - 1 - target) % SEASON_DAYS)
        weekly = np.stack([sums.at(dev, recent - SEASON_DAYS * k) for k in range(SAME_WEEKDAYS)], axis=1)
        # Last year's analogue: 364 days back, or the same day of last year's Easter, Spring Festival...
        analogue = target - year_back_days.astype(np.int64)
        last_year = np.stack([sums.at(dev, analogue + k) for k in range(-3, 4)], axis=1)
        last_year_level = origin_level(sums, dev, origin - LAST_YEAR_DAYS)
        columns = [
            np.log1p(np.nan_to_num(level)),
            sums.mean(dev, origin, 7) * inv,
            sums.mean(dev, origin, 28) * inv,
            sums.mean(dev, origin, LAST_YEAR_DAYS) * inv,
            sums.at(dev, origin - 1) * inv,
            nan_mean(weekly[:, :4]) * inv,
            nan_mean(weekly) * inv,
            weekly[:, 0] * inv,
            nan_mean(last_year) / last_year_level,
            last_year[:, 3] / last_year_level,
            sums.mean(dev, origin, LAST_YEAR_DAYS, days_off=True) / sums.mean(dev, origin, LAST_YEAR_DAYS),
            1 - sums.count_in(dev, origin, 28) / 28,
            np.minimum(origin - sums.first[dev], 400),
        ]
    return columns, level
