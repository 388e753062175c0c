"""The candidate models. Each fits on a `Panel` and forecasts the days right after its last column.

- `SeasonalNaive`: the most recent observed value of the same weekday (the baseline and fallback).
- `ETS`: additive-error Holt-Winters with weekly seasonality and optional damped trend on log1p demand
  (multiplicative weekly pattern on the cash scale). Missing days skip the update, so the state
  space coasts over absent/censored days instead of fitting them; errors are Huber-clipped at three
  robust sigmas so one zero day or festival spike does not throw the level. Parameters come from a
  grid chosen per device by AICc. The recursions are vectorised over devices x grid in numpy: the
  statsmodels fit loop (tens of ms per device and fit) cannot meet the 1,000-devices-with-backtests
  budget, and the same recursions re-run with fitted parameters give forecasts at any later as_of.
- `PooledGBM`: one LightGBM over all devices (direct multi-step: each (origin, target day) pair is a
  sample with its horizon), target = demand / level_91 of the origin under an L1 loss (the median
  ratio: what sMAPE/MASE reward, and robust to festival spikes; beat Huber on CUB and synthetic), features are
  the feature layer's: the calendar of the device's place (`features.calendar`: holiday blocks, paydays) and
  its history before the origin (`features.history`: recent levels, weekday profiles, last-year pattern, read
  from prefix sums of the panel, so a training set of 150,000 sampled (device, origin, horizon) rows costs well
  under a second). Normalising the target lets a new ATM with two weeks of data borrow the network's shape.
"""

from __future__ import annotations

import copy
import itertools

import lightgbm as lgb
import numpy as np
import pandas as pd

from features.calendar import CALENDAR_COLUMNS
from features.history import HISTORY_FEATURES, HistorySums, history_columns
from features.panel import Panel, quiet_nan

SEASON = 7


def _last_same_weekday(values: np.ndarray, horizon: int, weeks: int | None = 8) -> np.ndarray:
    """(n, horizon): latest observed value on the target's weekday in the last `weeks` weeks (None: any week)."""
    n, t_end = values.shape
    out = np.full((n, horizon), np.nan)
    for j in range(horizon):
        back = SEASON - (j % SEASON)  # the most recent history day on the same weekday as t_end + j
        if t_end < back:
            continue
        same = values[:, t_end - back :: -SEASON][:, :weeks]  # newest first
        seen = ~np.isnan(same)
        out[:, j] = np.where(seen.any(axis=1), same[np.arange(n), seen.argmax(axis=1)], np.nan)
    return out


def _last_observed_mean(values: np.ndarray, days: int) -> np.ndarray:
    """(n,): mean of each device's last `days` observed values, however long ago (NaN for no history)."""
    seen = ~np.isnan(values)
    from_end = np.cumsum(seen[:, ::-1], axis=1)[:, ::-1]  # observed days from here to the end
    recent = seen & (from_end <= days)
    with quiet_nan():
        return np.where(recent, values, 0.0).sum(axis=1) / recent.sum(axis=1)


class SeasonalNaive:
    """Weekly seasonal naive that steps over missing days to the last observed same weekday."""

    def __init__(self, weeks: int = 8):
        self.weeks = weeks

    def fit(self, panel: Panel) -> SeasonalNaive:
        self.fitted_ = True
        return self

    @classmethod
    def merged(cls, parts: list[SeasonalNaive]) -> SeasonalNaive:
        """The fits of device chunks as one model (it learns nothing per device)."""
        return parts[0]

    def predict(self, panel: Panel, horizon: int) -> np.ndarray:
        """The last `weeks` weeks' same weekday, else their mean; a device silent for longer gets what it last
        showed (its latest same weekday, else its last four observed weeks' mean): not recorded is not zero."""
        out = _last_same_weekday(panel.values, horizon, self.weeks)
        recent = panel.values[:, -SEASON * self.weeks :]
        with quiet_nan():
            mean = np.nanmean(recent, axis=1) if recent.size else np.full(len(out), np.nan)
        out = np.where(np.isnan(out), mean[:, None], out)
        silent = np.isnan(out).any(axis=1)
        if silent.any():
            older = _last_same_weekday(panel.values[silent], horizon, None)
            level = _last_observed_mean(panel.values[silent], 4 * SEASON)
            out[silent] = np.where(np.isnan(older), level[:, None], older)
        return out


ETS_ALPHA = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5)
ETS_GAMMA = (0.0, 0.02, 0.05, 0.1, 0.2)
ETS_TREND = ((0.0, 0.0), (0.01, 0.9), (0.03, 0.95))  # (beta, phi); beta=0 means no trend


def _ets_init(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Initial level, weekly states (7, n) and Huber clip per device from each device's first 8 weeks."""
    n, t_end = z.shape
    observed = np.isfinite(z)
    first = np.where(observed.any(axis=1), observed.argmax(axis=1), 0)
    cols = np.minimum(first[:, None] + np.arange(8 * SEASON), t_end - 1)
    window = np.take_along_axis(z, cols, axis=1)
    with quiet_nan():
        level = np.nanmean(window[:, : 4 * SEASON], axis=1)
        level = np.where(np.isfinite(level), level, np.nanmean(window, axis=1))
        level = np.nan_to_num(level)
        seasonal = np.zeros((SEASON, n))
        dev = window - level[:, None]
        for k in range(SEASON):
            mask = (cols % SEASON) == k
            seasonal[k] = np.nan_to_num(np.nanmean(np.where(mask, dev, np.nan), axis=1))
        seasonal -= seasonal.mean(axis=0)
        lag_diff = np.abs(z[:, SEASON:] - z[:, :-SEASON]) if t_end > SEASON else np.full((n, 1), np.nan)
        sigma = 1.4826 * np.nanmedian(lag_diff, axis=1) / np.sqrt(2)
    clip = np.maximum(np.nan_to_num(3 * sigma, nan=1.0), 0.05)
    return level, seasonal, clip


def ets_filter(
    z: np.ndarray, alpha: np.ndarray, beta: np.ndarray, phi: np.ndarray, gamma: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run the recursions over z (n, T); parameters broadcast as (n, m).

    Returns final level (n, m), trend (n, m), weekly states (7, n, m) indexed by column mod 7,
    the sum of squared clipped one-step errors and their count after a 4-week warm-up.
    """
    n, t_end = z.shape
    level0, seasonal0, clip = _ets_init(z)
    shape = np.broadcast_shapes(alpha.shape, (n, 1))
    level = np.broadcast_to(level0[:, None], shape).copy()
    trend = np.zeros(shape)
    seasonal = np.broadcast_to(seasonal0[:, :, None], (SEASON, *shape)).copy()
    sse = np.zeros(shape)
    count = np.zeros((n, 1))
    observed = np.isfinite(z)
    seen = np.zeros(n)
    clip = clip[:, None]
    for t in range(t_end):
        k = t % SEASON
        damped = phi * trend
        fitted = level + damped + seasonal[k]
        obs = observed[:, t][:, None]
        err = np.where(obs, np.clip(np.nan_to_num(z[:, t])[:, None] - fitted, -clip, clip), 0.0)
        level = level + damped + alpha * err
        trend = damped + beta * err
        seasonal[k] = seasonal[k] + gamma * err
        scored = obs & (seen[:, None] >= 4 * SEASON)
        sse += np.where(scored, err * err, 0.0)
        count += scored
        seen += observed[:, t]
    return level, trend, seasonal, sse, count


class ETS:
    """Holt-Winters on log1p demand, parameters chosen per device by AICc over a grid."""

    def __init__(self, alphas=ETS_ALPHA, gammas=ETS_GAMMA, trends=ETS_TREND, chunk: int = 512):
        self.alphas = alphas
        self.gammas = gammas
        self.trends = trends
        self.chunk = chunk

    def _grid(self) -> np.ndarray:
        rows = [(a, b, p, g) for a, g, (b, p) in itertools.product(self.alphas, self.gammas, self.trends)]
        return np.array(rows, dtype=float)  # columns alpha, beta, phi, gamma

    def fit(self, panel: Panel) -> ETS:
        grid = self._grid()
        z = np.log1p(panel.values)
        chosen = np.zeros((panel.values.shape[0], 4))
        for lo in range(0, len(z), self.chunk):
            block = z[lo : lo + self.chunk]
            _, _, _, sse, count = ets_filter(block, *(grid[None, :, i] for i in range(4)))
            k = 2 + 2 * (grid[:, 1] > 0) + SEASON + 1
            n_eff = np.maximum(count, 1)
            aicc = n_eff * np.log(np.maximum(sse, 1e-12) / n_eff) + 2 * k * n_eff / np.maximum(n_eff - k - 1, 1)
            chosen[lo : lo + len(block)] = grid[np.argmin(aicc, axis=1)]
        self.params_ = pd.DataFrame(
            chosen, index=pd.Index(panel.device_ids, name="device_id"), columns=["alpha", "beta", "phi", "gamma"]
        )
        self._set_default(grid)
        return self

    def _set_default(self, grid: np.ndarray) -> None:
        """Parameters for devices unseen at fit time: the median device's."""
        self.default_params_ = self.params_.median().to_numpy() if len(self.params_) else grid[len(grid) // 2]

    @classmethod
    def merged(cls, parts: list[ETS]) -> ETS:
        """The fits of device chunks as one model: the same as one fit on all their devices."""
        model = copy.copy(parts[0])
        model.params_ = pd.concat([part.params_ for part in parts])
        model._set_default(model._grid())
        return model

    def predict(self, panel: Panel, horizon: int) -> np.ndarray:
        params = self.params_.reindex(panel.device_ids).to_numpy()
        params = np.where(np.isnan(params), self.default_params_, params)
        z = np.log1p(panel.values)
        level, trend, seasonal, _, _ = ets_filter(z, *(params[:, i : i + 1] for i in range(4)))
        steps = np.arange(1, horizon + 1)
        phi = params[:, 2:3]
        damp_sum = np.cumsum(phi ** steps[None, :], axis=1)
        weekly = seasonal[(panel.n_days + steps - 1) % SEASON, :, 0].T
        zhat = level + trend * damp_sum + weekly
        out = np.expm1(zhat).clip(min=0)
        out[~np.isfinite(panel.values).any(axis=1)] = np.nan
        return out


# Calendar columns that are lookups, not demand drivers: `year_back_days` says where last year's analogue
# day is (read into the last-year features), not how much cash a day draws.
LOOKUP_COLUMNS = ("year_back_days",)
MODEL_CALENDAR = [column for column in CALENDAR_COLUMNS if column not in LOOKUP_COLUMNS]
_MODEL_CALENDAR_AT = [CALENDAR_COLUMNS.index(column) for column in MODEL_CALENDAR]
_YEAR_BACK_AT = CALENDAR_COLUMNS.index("year_back_days")
GBM_FEATURES = ["horizon", *MODEL_CALENDAR, *HISTORY_FEATURES]


def design(
    panel: Panel, sums: HistorySums, dev: np.ndarray, origin: np.ndarray, horizon: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Feature matrix (float32, GBM_FEATURES order) and level for samples (device row, origin col, h): the
    horizon, the target day's calendar and the device's history before the origin (`features.history`)."""
    target = origin + horizon - 1
    cal = panel.calendar_at(dev, target)
    history, level = history_columns(sums, dev, origin, target, cal[:, _YEAR_BACK_AT])
    cols = [horizon, *cal[:, _MODEL_CALENDAR_AT].T, *history]
    X = np.column_stack([np.asarray(c, dtype=np.float32) for c in cols])
    return X, level


def forecast_design(panel: Panel, rows: np.ndarray, horizon: int, max_horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Design rows for days 1..horizon ahead of the panel's end, device by device (`rows`); horizons past
    the trained max_horizon are read as max_horizon."""
    dev, origin, h = panel.samples_ahead(rows, horizon)
    X, level = design(panel, HistorySums(panel), dev, origin, h)
    X[:, 0] = np.minimum(h, max_horizon)
    return X, level


def _gbm_params(
    objective: str, learning_rate: float, num_leaves: int, min_data_in_leaf: int, seed: int, threads: int
) -> dict:
    """LightGBM settings shared by the pooled and the per-device models (deterministic, row-wise)."""
    return {
        "objective": objective,
        "learning_rate": learning_rate,
        "num_leaves": num_leaves,
        "min_data_in_leaf": min_data_in_leaf,
        "max_bin": 63,
        "feature_fraction": 0.8,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": threads,
        "verbosity": -1,
    }


MIN_POOLED_SAMPLES = 50  # the pooled model's min_data_in_leaf


class PooledGBM:
    """One LightGBM for all devices on demand/level ratios (direct multi-horizon).

    A network with hardly any device past its first week has too few samples to learn from (every
    feature needs a week of history); it then forecasts each device's level, the mean of its observed days.
    """

    def __init__(
        self,
        max_horizon: int = 56,
        max_rows: int = 150_000,
        n_estimators: int = 150,
        learning_rate: float = 0.08,
        num_leaves: int = 31,
        objective: str = "l1",
        seed: int = 42,
        n_jobs: int = 0,
    ):
        self.max_horizon = max_horizon
        self.max_rows = max_rows
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.objective = objective
        self.seed = seed
        self.n_jobs = n_jobs

    def _samples(self, panel: Panel, sums: HistorySums) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Random (device, origin, horizon) triples whose target day was observed."""
        rng = np.random.default_rng(self.seed)
        dev_obs, col_obs = np.nonzero(np.isfinite(panel.values))
        # ~150 samples a device is plenty once the network is large; small networks use every target twice.
        budget = min(self.max_rows, max(150 * len(panel.device_ids), 2 * len(dev_obs) // 3, 20_000))
        pick = rng.choice(len(dev_obs), size=int(budget * 1.5), replace=True)
        dev, target = dev_obs[pick], col_obs[pick]
        horizon = rng.integers(1, self.max_horizon + 1, size=len(pick))
        origin = target - horizon + 1
        keep = sums.count_in(dev, origin, 10**6) >= SEASON
        return dev[keep][:budget], origin[keep][:budget], horizon[keep][:budget]

    def fit(self, panel: Panel) -> PooledGBM:
        sums = HistorySums(panel)
        dev, origin, horizon = self._samples(panel, sums)
        X, level = design(panel, sums, dev, origin, horizon)
        y = panel.values[dev, origin + horizon - 1]
        keep = level > 0
        self.booster_: lgb.Booster | None = None
        if keep.sum() >= MIN_POOLED_SAMPLES:  # fewer cannot split a leaf (and bagging may leave none)
            params = _gbm_params(
                self.objective, self.learning_rate, self.num_leaves, MIN_POOLED_SAMPLES, self.seed, self.n_jobs
            )
            data = lgb.Dataset(X[keep], y[keep] / level[keep], feature_name=GBM_FEATURES, free_raw_data=True)
            self.booster_ = lgb.train(params, data, num_boost_round=self.n_estimators)
        return self

    def predict(self, panel: Panel, horizon: int) -> np.ndarray:
        n = len(panel.device_ids)
        X, level = forecast_design(panel, np.arange(n), horizon, self.max_horizon)
        ratio = 1.0 if self.booster_ is None else self.booster_.predict(X, num_threads=self.n_jobs).clip(min=0)
        return (ratio * level).reshape(n, horizon)


class DeviceGBM:
    """Per-device LightGBM: the pooled model's features and target, fitted on one device's own rows.

    A device's own trees pick up responses the network does not share (its payday or holiday lift).
    Alone it was no better than the pooled model (CUB 37.2 vs 36.0 sMAPE, synthetic 17.6 vs 17.0), but
    the mean of both beat the pooled model on both (35.6, 16.7); one small booster per device costs
    ~50 ms, so it runs on networks up to `forecast.device_gbm_max_devices` (the 1,000-device training
    budget would not hold).
    Devices with fewer than `min_rows` usable days get NaN (the pooled forecast stands alone).
    """

    def __init__(
        self,
        max_horizon: int = 56,
        n_estimators: int = 50,
        learning_rate: float = 0.1,
        num_leaves: int = 7,
        min_rows: int = 100,
        seed: int = 42,
    ):
        self.max_horizon = max_horizon
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_rows = min_rows
        self.seed = seed

    def fit(self, panel: Panel) -> DeviceGBM:
        sums = HistorySums(panel)
        rng = np.random.default_rng(self.seed)
        dev, target = np.nonzero(np.isfinite(panel.values))  # row-major: grouped by device
        horizon = rng.integers(1, self.max_horizon + 1, size=len(dev))
        origin = target - horizon + 1
        keep = sums.count_in(dev, origin, 10**6) >= 4 * SEASON
        dev, origin, horizon = dev[keep], origin[keep], horizon[keep]
        X, level = design(panel, sums, dev, origin, horizon)
        ok = level > 0
        dev, X, y = dev[ok], X[ok], panel.values[dev, origin + horizon - 1][ok] / level[ok]
        params = _gbm_params("l1", self.learning_rate, self.num_leaves, 20, self.seed, 1)
        bounds = np.searchsorted(dev, np.arange(len(panel.device_ids) + 1))
        self.boosters_: dict[str, lgb.Booster] = {}
        for i, device in enumerate(panel.device_ids):
            lo, hi = bounds[i], bounds[i + 1]
            if hi - lo >= self.min_rows:
                data = lgb.Dataset(X[lo:hi], y[lo:hi], feature_name=GBM_FEATURES, free_raw_data=True)
                self.boosters_[str(device)] = lgb.train(params, data, num_boost_round=self.n_estimators)
        return self

    def predict(self, panel: Panel, horizon: int) -> np.ndarray:
        n = len(panel.device_ids)
        out = np.full((n, horizon), np.nan)
        rows = np.array([i for i, device in enumerate(panel.device_ids) if str(device) in self.boosters_], int)
        if not len(rows):
            return out
        X, level = forecast_design(panel, rows, horizon, self.max_horizon)
        for k, i in enumerate(rows):
            part = slice(k * horizon, (k + 1) * horizon)
            ratio = self.boosters_[str(panel.device_ids[i])].predict(X[part], num_threads=1).clip(min=0)
            out[i] = ratio * level[part]
        return out
