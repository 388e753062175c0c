"""Training: rolling-origin backtest, per-device model selection, calibrated quantiles and sample paths.

Backtest: `backtest_folds` origins spaced `backtest_horizon_days` apart at the end of the training
window; every candidate is refitted on the history before each origin and scored on the following
days (sMAPE, MASE, WAPE, bias). Candidates: seasonal naive, ETS, pooled LightGBM and their blend
(mean of ETS and LightGBM). ETS only knows the weekly cycle, so on the calendar's special days
(holidays, blocks, the days around long blocks, weekdays off, make-up working days) ETS defers to
LightGBM, in the backtest and in production alike. Selection scores each candidate by sMAPE and
MASE relative to seasonal naive, shrinks each device's scores towards the network median (a few
weeks of backtest is a noisy judge; the network's view is worth 250 points, which measured best),
picks the best, and falls back to seasonal naive wherever the pick is worse than it on the device's
own backtest: never worse than the baseline in the backtest. Devices with fewer than
`min_history_days` observed days (or no backtest) use the pooled LightGBM, which learns from the whole
network. Each fit (the backtest, the final fit) of each target is one task for the models that learn
across devices and one per chunk of `train_devices_per_task` devices for the per-device ones; the
tasks run in a local process pool (`n_jobs`) or on a Dask cluster (`training_executor`).

Uncertainty: backtest errors of the chosen forecast on a log ratio scale,
r = log((y + c) / (yhat + c)) with c = 5% of the device's recent mean (zero days stay finite), are
divided by a per-device spread (robust std, shrunk to the network's) and pooled per horizon bucket
(days 1-7, 8-14, 15+). Quantile q of a device is (yhat + c) * exp(spread * Q_bucket(q)) - c: conformal
quantiles, monotone in q and >= 0. Coverage is measured leave-one-fold-out (each fold scored with
quantiles calibrated on the other folds) and reported. Sample paths for the planner multiply the
forecast by exp(spread * z) where z is made of contiguous 7-day blocks of standardised backtest
errors: day-to-day dependence inside a week is kept, so multi-day sums get a realistic spread. The
blocks are standardised per horizon week (median and robust scale of the errors k weeks ahead) and
put back on week k's scale in a path's week k: near days are as sure as the backtest proved them.
A path's draws are a hash of (seed, target, device, path, week): a device gets the same paths whatever
the horizon, the other devices in the network or the chunking, so a 14-day and a 30-day plan (or
tonight's plan before and after 50 new ATMs) load the same cash for the same days.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from hashlib import blake2b

import numpy as np
import pandas as pd
from scipy.special import ndtri
from tqdm.auto import tqdm

from cashcast.config import Config
from cashcast.schema import quantile_column
from features.calendar import unusual_days
from features.panel import Panel, quiet_nan
from forecasting.metrics import bias, mase, smape, wape
from forecasting.models import ETS, DeviceGBM, PooledGBM, SeasonalNaive

CANDIDATES = ("seasonal_naive", "ets", "lightgbm", "blend")
BUCKETS = (0, 7, 14)  # horizon buckets start at these 0-based days ahead
BLOCK = 7
MIN_WEEK_POINTS = 50  # backtest errors a horizon week needs for its own centre and scale (else 0 and 1)
# Levels the error quantiles are kept at (plus the configured ones, exactly), so a forecast can give any
# quantile a later config asks for without retraining: linear between neighbours 0.005 apart.
QUANTILE_GRID = np.round(np.r_[0.001, 0.0025, np.arange(0.005, 0.9951, 0.005), 0.9975, 0.999], 4)
SHRINK_POINTS = 60  # backtest points the network's error spread is worth when calibrating one device
# Backtest points the network's view is worth when picking one device's model: a few weeks of one
# device's errors rarely justify leaving the network's best (measured on CUB and the synthetic network).
SELECT_SHRINK_POINTS = 250
FALLBACK = "fallback"
NO_HISTORY = "network_median"
PARALLEL_MIN_CELLS = 100_000  # below this (device-days) worker start-up costs more than it saves
PATH_CHUNK = 256  # devices whose path draws are hashed at once (256 x 200 paths x 56 days of uint64 is 23 MB)
# Per-device LightGBM joins the pooled one on networks up to this size: ~50 ms a device and fit, so
# 300 devices add ~15 s to training while 1,000 would break the 60 s budget.
# The forecasts each choice needs.
USES = {
    "ets": ("ets", "blend"),
    "lightgbm": ("lightgbm", "blend", "ets"),
    "lightgbm_device": ("lightgbm", "blend", "ets"),
}


def _offset(level: np.ndarray) -> np.ndarray:
    """c in the log ratio: keeps zero-demand days finite without distorting busy days."""
    return 0.05 * np.nan_to_num(level, nan=0.0) + 1e-6


def _recent_mean(panel: Panel) -> np.ndarray:
    with quiet_nan():
        recent = np.nanmean(panel.values[:, -28:], axis=1) if panel.n_days else np.full(len(panel.device_ids), np.nan)
        overall = np.nanmean(panel.values, axis=1)
    return np.where(np.isnan(recent), overall, recent)


def _robust_center_scale(values: np.ndarray, axis: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Median and normal-consistent MAD (NaN ignored): error spreads that a few runaway days do not move."""
    center = np.nanmedian(values, axis=axis, keepdims=True)
    scale = 1.4826 * np.nanmedian(np.abs(values - center), axis=axis)
    return np.squeeze(center, axis=axis), scale


def _bucket(days_ahead: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.array(BUCKETS), days_ahead, side="right") - 1


def _n_jobs(config: Config) -> int:
    return config.forecast.n_jobs or os.cpu_count() or 1


def fit_candidates(config: Config, max_horizon: int, panel: Panel, part: str, n_network: int) -> dict:
    """Enabled candidates fitted on `panel` (one LightGBM thread: parallelism is across tasks).

    `part` "devices" fits the per-device candidates (seasonal naive, ETS), which can be fitted chunk
    by chunk of devices with the same result; "network" the ones that learn across devices (pooled
    LightGBM, and the per-device LightGBM on networks up to `device_gbm_max_devices` devices, which
    draws its training rows from one random stream). `n_network` is the size of the whole network.
    """
    fc = config.forecast
    models: dict = {}
    if part == "devices":
        models["seasonal_naive"] = SeasonalNaive().fit(panel)
        if "ets" in fc.models:
            models["ets"] = ETS().fit(panel)
    if part == "network" and "lightgbm" in fc.models:
        models["lightgbm"] = PooledGBM(
            max_horizon=max_horizon,
            max_rows=fc.gbm_max_rows,
            n_estimators=fc.gbm_rounds,
            seed=fc.seed,
            n_jobs=1,
        ).fit(panel)
        if n_network <= fc.device_gbm_max_devices:
            models["lightgbm_device"] = DeviceGBM(max_horizon=max_horizon, seed=fc.seed).fit(panel)
    return models


def merge_fitted(parts: list[dict]) -> dict:
    """One dict of fitted candidates from the dicts of the tasks that fitted them (chunks in row order)."""
    merged: dict = {}
    for name in dict.fromkeys(name for part in parts for name in part):
        fitted = [part[name] for part in parts if name in part]
        merged[name] = fitted[0] if len(fitted) == 1 else type(fitted[0]).merged(fitted)
    return merged


def special_days(panel: Panel, horizon: int) -> np.ndarray:
    """(n, horizon) bool: days ahead that the calendar marks as unusual for the device's place
    (`features.calendar.unusual_days`)."""
    return unusual_days(panel.calendar[:, panel.n_days : panel.n_days + horizon][panel.group])


def combine(out: dict[str, np.ndarray], panel: Panel, horizon: int) -> dict[str, np.ndarray]:
    """The pooled and (opt-in) per-device LightGBM averaged; calendar-blind ETS defers to LightGBM on
    special days; then the blend of ETS and LightGBM.

    ETS only knows the weekly cycle, so a holiday inside its horizon is forecast as a normal day: the
    holiday effects it would need are exactly what the pooled model learns across the network.
    """
    if "lightgbm_device" in out:
        # The per-device trees join the pooled model as an equal-weight mean where they exist.
        device = out.pop("lightgbm_device")
        out["lightgbm"] = np.where(np.isfinite(device), 0.5 * (out["lightgbm"] + device), out["lightgbm"])
    if "ets" in out and "lightgbm" in out:
        out["ets"] = np.where(special_days(panel, horizon), out["lightgbm"], out["ets"])
        out["blend"] = 0.5 * (out["ets"] + out["lightgbm"])
    return out


def predict_candidates(models: dict, panel: Panel, horizon: int) -> dict[str, np.ndarray]:
    return combine({name: model.predict(panel, horizon) for name, model in models.items()}, panel, horizon)


@dataclass
class Task:
    """One unit of training work: fit `part` of the candidates on `panel` before `fit_end`, then
    forecast from each of `origins` (none: return the fitted models). `stage` groups the tasks of
    one fit (a backtest, or the final fit) across device chunks."""

    panel: Panel
    fit_end: int
    origins: list[int]
    horizon: int
    part: str
    stage: int
    n_network: int


def _task(config: Config, max_horizon: int, task: Task):
    """Fit on the history before `fit_end`; raw forecasts of every candidate from each origin, else the models.

    Forecasting a later origin with parameters fitted earlier is exactly how a weekly-trained model
    serves daily forecasts, so a backtest fitted once at its first origin is still leak-free.
    """
    models = fit_candidates(config, max_horizon, task.panel.truncated(task.fit_end), task.part, task.n_network)
    if not task.origins:
        return models
    return [
        {name: model.predict(task.panel.truncated(origin), task.horizon) for name, model in models.items()}
        for origin in task.origins
    ]


_executor: ContextVar[Executor | None] = ContextVar("training_executor", default=None)


@contextmanager
def training_executor(executor: Executor | None) -> Iterator[None]:
    """Run the training tasks on `executor` (a Dask cluster's, say) instead of the local process pool."""
    token = _executor.set(executor)
    try:
        yield
    finally:
        _executor.reset(token)


def run_tasks(config: Config, max_horizon: int, tasks: list[Task], progress: bool = False) -> list:
    """Backtests and final fits (of every target and device chunk) on the `training_executor`, else in
    local worker processes when the panels pay for them.

    Workers come from a forkserver (LightGBM's OpenMP state does not survive a plain fork); results
    come back in task order, so the outcome never depends on the number of workers or where they run.
    """
    weights = [len(task.panel.device_ids) for task in tasks]
    bar = tqdm(total=sum(weights), unit="device-fit", disable=not progress)
    executor = _executor.get()
    workers = min(_n_jobs(config), len(tasks))
    cells = max(task.panel.values.size for task in tasks)
    if executor is None and (workers < 2 or cells < PARALLEL_MIN_CELLS):
        results = []
        for task, weight in zip(tasks, weights, strict=True):
            results.append(_task(config, max_horizon, task))
            bar.update(weight)
        bar.close()
        return results
    own_pool = None
    if executor is None:
        context = mp.get_context("forkserver")
        context.set_forkserver_preload(["forecasting.backtest"])
        executor = own_pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
    try:
        pairs = zip(tasks, weights, strict=True)
        futures = {executor.submit(_task, config, max_horizon, task): weight for task, weight in pairs}
        for future in as_completed(futures):
            future.result()
            bar.update(futures[future])
        bar.close()
        return [f.result() for f in futures]
    finally:
        if own_pool is not None:
            own_pool.shutdown()


def _join_rows(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Forecasts of device chunks (in row order) joined into one (n, H) array per candidate."""
    if len(parts) == 1:
        return dict(parts[0])
    return {name: np.concatenate([part[name] for part in parts], axis=0) for name in parts[0]}


class TargetModel:
    """All candidates, the per-device choice and the error model for one demand column."""

    def __init__(self, config: Config, max_horizon: int = 56):
        self.config = config
        self.max_horizon = max_horizon

    def _candidates(self) -> list[str]:
        enabled = set(self.config.forecast.models)
        names = ["seasonal_naive"]
        names += ["ets"] if "ets" in enabled else []
        names += ["lightgbm"] if "lightgbm" in enabled else []
        return names + (["blend"] if {"ets", "lightgbm"} <= enabled else [])

    def tasks(self, panel: Panel) -> list[Task]:
        """The backtest (one fit at the first origin, or one per fold with `backtest_refit`), then the final fit.

        Each fit is one task for the candidates that learn across devices and one per chunk of
        `[forecast] train_devices_per_task` devices for the per-device ones.
        """
        fc = self.config.forecast
        horizon = fc.backtest_horizon_days
        origins = [panel.n_days - k * horizon for k in range(fc.backtest_folds, 0, -1)]
        self.origins_ = [o for o in origins if o >= 4 * BLOCK]
        if fc.backtest_refit:
            fits = [(o, [o]) for o in self.origins_]
        else:
            fits = [(self.origins_[0], self.origins_)] if self.origins_ else []
        fits.append((panel.n_days, []))
        n = len(panel.device_ids)
        size = fc.train_devices_per_task
        chunks = [np.arange(lo, min(lo + size, n)) for lo in range(0, n, size)]
        parts = [panel] if len(chunks) <= 1 else [panel.subset(rows) for rows in chunks]
        tasks = []
        for stage, (fit_end, fit_origins) in enumerate(fits):
            if "lightgbm" in fc.models:
                tasks.append(Task(panel, fit_end, fit_origins, horizon, "network", stage, n))
            tasks += [Task(part, fit_end, fit_origins, horizon, "devices", stage, n) for part in parts]
        return tasks

    def finish(self, panel: Panel, tasks: list[Task], results: list) -> TargetModel:
        """Score the folds, select per device and calibrate, from the `results` of `tasks`."""
        horizon = self.config.forecast.backtest_horizon_days
        final = max(task.stage for task in tasks)
        self.models_ = merge_fitted([r for task, r in zip(tasks, results, strict=True) if task.stage == final])
        fold_forecasts = []
        for stage in range(final):
            done = [(task, r) for task, r in zip(tasks, results, strict=True) if task.stage == stage]
            for j, origin in enumerate(done[0][0].origins):
                raw = _join_rows([r[j] for task, r in done if task.part != "network"])
                raw.update(*[r[j] for task, r in done if task.part == "network"])
                fold_forecasts.append(combine(raw, panel.truncated(origin), horizon))
        rows = []
        for fold, (origin, forecasts) in enumerate(zip(self.origins_, fold_forecasts, strict=True)):
            past = panel.truncated(origin)
            actual = panel.values[:, origin : origin + horizon]
            level = _recent_mean(past)
            for name, fcst in forecasts.items():
                rows.append((fold, name, fcst, actual, past.values, level))
        self.backtest_, self.choice_, self.reason_ = self._select(panel, rows)
        self._calibrate(panel, rows)
        return self

    def _select(self, panel: Panel, rows: list) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
        """Per device and candidate metrics over all folds; the choice per device."""
        ids = panel.device_ids
        names = self._candidates()
        table = []
        for name in names:
            folds = [r for r in rows if r[1] == name]
            for i, device in enumerate(ids):
                actual = np.concatenate([r[3][i] for r in folds]) if folds else np.array([])
                fcst = np.concatenate([r[2][i] for r in folds]) if folds else np.array([])
                history = folds[-1][4][i] if folds else np.array([])
                n_points = int((np.isfinite(actual) & np.isfinite(fcst)).sum())
                table.append(
                    {
                        "device_id": device,
                        "model": name,
                        "smape": smape(actual, fcst),
                        "mase": mase(actual, fcst, history),
                        "wape": wape(actual, fcst),
                        "bias": bias(actual, fcst),
                        "n_points": n_points,
                    }
                )
        backtest = pd.DataFrame(table)
        wide_s = backtest.pivot(index="device_id", columns="model", values="smape").reindex(ids)
        wide_m = backtest.pivot(index="device_id", columns="model", values="mase").reindex(ids)
        points = backtest.pivot(index="device_id", columns="model", values="n_points").reindex(ids)
        score = wide_s.div(wide_s["seasonal_naive"], axis=0) + wide_m.div(wide_m["seasonal_naive"], axis=0)
        score = score[names]
        scored = points["seasonal_naive"].fillna(0).to_numpy()
        observed = np.isfinite(panel.values).sum(axis=1)
        young = observed < self.config.forecast.min_history_days
        short = young | (scored < BLOCK * 2)
        default = "lightgbm" if "lightgbm" in names else names[-1]
        # A few weeks of backtest per device is a noisy judge: shrink each device's scores towards the
        # network's median before picking, then keep the guard on the device's own scores.
        weight = points["seasonal_naive"].fillna(0).to_numpy()[:, None]
        shrunk = (score * weight + score.median() * SELECT_SHRINK_POINTS) / (weight + SELECT_SHRINK_POINTS)
        best = shrunk.fillna(np.inf).idxmin(axis=1).where(score.notna().any(axis=1), default)
        own = np.array([score.iloc[i].get(name, np.nan) for i, name in enumerate(best)])
        best = best.where(~(own > score["seasonal_naive"].to_numpy()), "seasonal_naive")
        index = pd.Index(ids, name="device_id")
        choice = pd.Series(np.where(short, default, best.to_numpy()), index=index)
        best_smape = np.array([wide_s.iloc[i].get(name, np.nan) for i, name in enumerate(choice)])
        minimum = self.config.forecast.min_history_days
        reasons = [
            f"short history ({days} observed days, fewer than {minimum}): pooled model"
            if is_young
            else f"too few backtest days to judge ({n:.0f} scored, fewer than {BLOCK * 2}): pooled model"
            if is_short
            else f"best backtest score, shrunk to the network's (sMAPE {mine:.1f} vs seasonal naive {sn:.1f})"
            for is_young, is_short, days, n, mine, sn in zip(
                young, short, observed, scored, best_smape, wide_s["seasonal_naive"], strict=True
            )
        ]
        return backtest, choice, pd.Series(reasons, index=index)

    def _calibrate(self, panel: Panel, rows: list) -> None:
        """Standardised log-ratio errors of the chosen forecast: spreads, bucket quantiles, blocks."""
        fc = self.config.forecast
        levels = np.array(fc.quantiles)
        chosen = self.choice_.to_numpy()
        folds = sorted({r[0] for r in rows})
        err_by_fold = []
        for fold in folds:
            fold_rows = {r[1]: r for r in rows if r[0] == fold}
            any_row = next(iter(fold_rows.values()))
            actual, level = any_row[3], any_row[5]
            fcst = np.stack([fold_rows[c][2][i] for i, c in enumerate(chosen)]) if len(chosen) else actual
            c = _offset(level)[:, None]
            with quiet_nan():
                err_by_fold.append(np.log((actual + c) / (np.clip(fcst, 0, None) + c)))
        n_dev = len(panel.device_ids)
        errors = np.concatenate(err_by_fold, axis=1) if err_by_fold else np.full((n_dev, 0), np.nan)
        with quiet_nan():
            _, raw = _robust_center_scale(errors, axis=1)
        count = np.isfinite(errors).sum(axis=1)
        network = float(np.nanmedian(raw)) if np.isfinite(raw).any() else 0.3
        network = network if network > 0 else 0.3
        spread = (np.nan_to_num(raw, nan=network) * count + network * SHRINK_POINTS) / (count + SHRINK_POINTS)
        self.spread_ = pd.Series(spread, index=pd.Index(panel.device_ids, name="device_id"))
        self.network_spread_ = network
        z_by_fold = [e / spread[:, None] for e in err_by_fold]
        self.zq_levels_ = np.union1d(QUANTILE_GRID, levels)
        self.zq_ = self._bucket_quantiles(z_by_fold, self.zq_levels_)
        # Errors differ by horizon week (in bias and width; measured on CUB and synthetic data): each
        # backtest week k ahead gets its own centre and scale, its blocks are standardised by them, and
        # week k of a path is put back on week k's centre and scale.
        n_weeks = min((z.shape[1] for z in z_by_fold), default=0) // BLOCK
        self.week_center_, self.week_scale_ = np.zeros(max(n_weeks, 1)), np.ones(max(n_weeks, 1))
        blocks = []
        for k in range(n_weeks):
            week = np.concatenate([z[:, k * BLOCK : (k + 1) * BLOCK] for z in z_by_fold], axis=0)
            values = week[np.isfinite(week)]
            if len(values) >= MIN_WEEK_POINTS:
                center, scale = _robust_center_scale(values)
                self.week_center_[k], self.week_scale_[k] = center, scale if scale > 0 else 1.0
            complete = week[np.isfinite(week).all(axis=1)]
            blocks.append((complete - self.week_center_[k]) / self.week_scale_[k])
        self.blocks_ = np.concatenate(blocks).astype(np.float32) if blocks else np.zeros((0, BLOCK), np.float32)
        self.coverage_ = self._loo_coverage(z_by_fold, levels)

    @staticmethod
    def _bucket_quantiles(z_by_fold: list[np.ndarray], levels: np.ndarray) -> np.ndarray:
        """(len(BUCKETS), len(levels)) quantiles of standardised errors, forced monotone in level."""
        out = np.zeros((len(BUCKETS), len(levels)))
        if not z_by_fold:
            from scipy.stats import norm

            return np.tile(norm.ppf(levels), (len(BUCKETS), 1))
        z = np.concatenate(z_by_fold, axis=1)
        days = _bucket(np.tile(np.arange(z_by_fold[0].shape[1]), len(z_by_fold)))
        for b in range(len(BUCKETS)):
            vals = z[:, days == b]
            vals = vals[np.isfinite(vals)]
            if len(vals) < 20:
                vals = z[np.isfinite(z)]
            out[b] = np.quantile(vals, levels) if len(vals) else 0.0
        return np.maximum.accumulate(np.maximum.accumulate(out, axis=1), axis=0)

    def _loo_coverage(self, z_by_fold: list[np.ndarray], levels: np.ndarray) -> pd.DataFrame:
        """Per device share of held-out days under each quantile, calibrated without that fold."""
        n_dev = len(self.spread_)
        hits = np.zeros((n_dev, len(levels)))
        total = np.zeros((n_dev, 1))
        if len(z_by_fold) < 2:
            return pd.DataFrame(np.nan, index=self.spread_.index, columns=[quantile_column(q) for q in levels])
        for k, z in enumerate(z_by_fold):
            zq = self._bucket_quantiles([f for j, f in enumerate(z_by_fold) if j != k], levels)
            bound = zq[_bucket(np.arange(z.shape[1]))]  # (H, L)
            ok = np.isfinite(z)
            hits += ((z[:, :, None] <= bound[None]) & ok[:, :, None]).sum(axis=1)
            total += ok.sum(axis=1, keepdims=True)
        with quiet_nan():
            share = np.where(total > 0, hits / total, np.nan)
        return pd.DataFrame(share, index=self.spread_.index, columns=[quantile_column(q) for q in levels])

    def predict(self, panel: Panel, horizon: int, n_paths: int, stream: str, levels: Sequence[float]):
        """Point forecasts, chosen model names, quantiles (n, H, L) at `levels`, paths (n, P, H) and failures.

        `stream` names the paths' random stream (seed and target): see `device_draws`.
        """
        ids = panel.device_ids
        choice = self.choice_.reindex(ids).fillna("lightgbm" if "lightgbm" in self.models_ else "seasonal_naive")
        forecasts, failures = _guarded_predict(self.models_, panel, horizon, choice.to_numpy())
        names = choice.to_numpy().astype(object)
        yhat = np.zeros((len(ids), horizon))
        for name in set(names):
            rows = names == name
            yhat[rows] = forecasts[name][rows]
        fallback = forecasts["seasonal_naive"]
        bad = ~np.isfinite(yhat).all(axis=1) & np.isfinite(panel.values).any(axis=1)
        for i in np.flatnonzero(bad):
            failures.setdefault(ids[i], f"non-finite forecast from {names[i]}")
        for i, device in enumerate(ids):
            if device in failures:
                names[i] = FALLBACK
                yhat[i] = fallback[i]
        empty = ~np.isfinite(panel.values).any(axis=1)
        if empty.any() and not empty.all():
            # A device with no history yet (installed today): the network's median day is a safer load
            # plan than zero.
            with quiet_nan():
                yhat[empty] = np.nanmedian(yhat[~empty], axis=0)
            names[empty] = NO_HISTORY
        yhat = np.nan_to_num(yhat, nan=0.0).clip(min=0)
        spread = self.spread_.reindex(ids).fillna(self.network_spread_).to_numpy()[:, None]
        c = _offset(_recent_mean(panel))[:, None]
        at_levels = np.stack([np.interp(levels, self.zq_levels_, bucket) for bucket in self.zq_])
        zq = at_levels[_bucket(np.arange(horizon))]  # (H, L)
        quant = (yhat + c)[:, :, None] * np.exp(spread[:, :, None] * zq[None]) - c[:, :, None]
        quant = np.maximum.accumulate(quant.clip(min=0), axis=2)
        paths = self._paths(yhat, spread, c, n_paths, device_keys(ids, stream))
        return yhat, names, quant, paths, failures

    def _paths(self, yhat, spread, c, n_paths, keys: np.ndarray) -> np.ndarray:
        """(n, n_paths, H) float32, built in place: 10,000 devices x 200 paths x 56 days is 450 MB."""
        n, horizon = yhat.shape
        z = np.empty((n, n_paths, horizon), dtype=np.float32)
        if len(self.blocks_):
            n_blocks = -(-horizon // BLOCK)
            week = np.minimum(np.arange(horizon) // BLOCK, len(self.week_scale_) - 1)
            for start in range(0, n, PATH_CHUNK):
                part = slice(start, start + PATH_CHUNK)
                pick = (device_draws(keys[part], n_paths, n_blocks) % np.uint64(len(self.blocks_))).astype(np.intp)
                z[part] = self.blocks_[pick].reshape(len(pick), n_paths, n_blocks * BLOCK)[:, :, :horizon]
            z *= self.week_scale_[week].astype(np.float32)
            z += self.week_center_[week].astype(np.float32)
        else:
            # No backtest week to draw from: independent normal days, by the inverse of hashed uniforms.
            for start in range(0, n, PATH_CHUNK):
                part = slice(start, start + PATH_CHUNK)
                uniform = (device_draws(keys[part], n_paths, horizon) >> np.uint64(11)).astype(np.float64) + 0.5
                z[part] = ndtri(uniform / 2.0**53)
        z *= spread[:, :, None].astype(np.float32)
        np.exp(z, out=z)
        z *= (yhat + c)[:, None, :].astype(np.float32)
        z -= c[:, None, :].astype(np.float32)
        np.clip(z, 0, None, out=z)
        return np.ascontiguousarray(z)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays (wrapping multiplication is the point)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def device_keys(device_ids: Sequence[str], stream: str) -> np.ndarray:
    """One uint64 key per device for the random stream `stream`: the same in every process and run."""
    return np.array(
        [int.from_bytes(blake2b(f"{stream}\x1f{d}".encode(), digest_size=8).digest(), "little") for d in device_ids],
        dtype=np.uint64,
    )


def device_draws(keys: np.ndarray, n_paths: int, n_draws: int) -> np.ndarray:
    """(n, n_paths, n_draws) uniform uint64 draws: draw k of path p of a device depends on its key, p and k
    only, so a longer horizon extends a device's paths without changing their start."""
    counter = (np.arange(n_paths, dtype=np.uint64)[:, None] << np.uint64(32)) | np.arange(n_draws, dtype=np.uint64)
    return _mix(keys[:, None, None] ^ _mix(counter + np.uint64(0x9E3779B97F4A7C15))[None])


def _guarded_predict(models: dict, panel: Panel, horizon: int, choice: np.ndarray, chunk: int = 2048):
    """Each model's forecasts; a chunk that raises is retried device by device to isolate the culprit."""
    n = len(panel.device_ids)
    out: dict[str, np.ndarray] = {}
    failures: dict[str, str] = {}
    for name, model in models.items():
        needed = np.arange(n) if name == "seasonal_naive" else np.flatnonzero(np.isin(choice, USES[name]))
        result = np.full((n, horizon), np.nan)
        for lo in range(0, len(needed), chunk):
            rows = needed[lo : lo + chunk]
            try:
                result[rows] = model.predict(panel.subset(rows), horizon)
            except Exception:  # noqa: BLE001 - isolate the failing device, keep the rest
                for i in rows:
                    try:
                        result[i] = model.predict(panel.subset(np.array([i])), horizon)[0]
                    except Exception as exc:  # noqa: BLE001
                        failures[panel.device_ids[i]] = f"{name}: {type(exc).__name__}: {exc}"
        out[name] = result
    return combine(out, panel, horizon), failures
