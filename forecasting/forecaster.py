"""Public entry points: `train` (backtest + select + calibrate) and the fitted `CashForecaster`.

A CashForecaster holds fitted parameters only, never data: `predict` rebuilds the history panel from
the daily table it is given, so a model trained weekly forecasts every night from the newest
history. Devices unseen at training time get the pooled LightGBM forecast (cold start).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cashcast.config import Config
from cashcast.schema import DemandForecast, quantile_column
from features.panel import Panel, build_panel, quiet_nan
from forecasting.backtest import CANDIDATES, NO_HISTORY, TargetModel, run_tasks
from forecasting.metrics import mase, smape


def _deposit_devices(daily: pd.DataFrame, as_of: pd.Timestamp) -> np.ndarray:
    """Devices that recorded a positive deposit before as_of (recyclers, branches)."""
    past = daily.loc[(daily["date"] < as_of) & (daily["deposits"] > 0), "device_id"]
    return np.sort(past.astype(str).unique())


class NoHistoryError(ValueError):
    """No usable day in the training window before the morning asked for."""


def no_history_message(config: Config, as_of: pd.Timestamp, last: pd.Timestamp | None) -> str:
    recorded = "no day is recorded" if last is None or pd.isna(last) else f"the last recorded day is {last:%Y-%m-%d}"
    return (
        f"no usable withdrawals in the {config.forecast.max_history_days} days before {as_of:%Y-%m-%d}"
        f" ({recorded}): ingest newer history, or raise [forecast] max_history_days"
    )


@dataclass
class TrainResult:
    """What one training run produced: the model and the evidence to log and to compare it by."""

    model: CashForecaster
    backtest: pd.DataFrame  # device_id, model, smape, mase, wape, bias, n_points, coverage_q.. (selected rows)
    selection: pd.DataFrame  # device_id, model, reason
    metrics: dict[str, float]
    window: dict[str, Any]


class CashForecaster:
    """Fitted withdrawal (and deposit) models of a device network."""

    def __init__(
        self, config: Config, max_horizon: int = 56, progress: bool = False, events: pd.DataFrame | None = None
    ):
        self.config = config
        self.max_horizon = max_horizon
        self.progress = progress
        self.events = events  # custom events calendar, known ahead like holidays

    def _pad(self, horizon: int) -> int:
        return max(horizon, self.max_horizon) + 7

    def _panel(
        self, daily, devices, as_of, horizon: int, device_ids, column: str = "withdrawals", events=None, fit=False
    ) -> Panel:
        """The panel every fit and predict reads: history before as_of, calendar `horizon` days ahead
        (a fit forecasts none of them)."""
        return build_panel(
            daily,
            devices,
            as_of,
            self.config,
            column=column,
            pad=self._pad(horizon),
            horizon=0 if fit else horizon,
            device_ids=device_ids,
            events=self.events if events is None else events,
        )

    def fit(self, daily: pd.DataFrame, devices: pd.DataFrame | None, as_of: pd.Timestamp | str) -> CashForecaster:
        as_of = pd.Timestamp(as_of).normalize()
        known = np.sort(daily.loc[daily["date"] < as_of, "device_id"].astype(str).unique())
        panel = self._panel(daily, devices, as_of, self.max_horizon, known, fit=True)
        self._require_history(panel, daily, as_of)
        self.withdrawals_ = TargetModel(self.config, self.max_horizon)
        tasks = self.withdrawals_.tasks(panel)
        n_withdrawal_tasks = len(tasks)
        self.deposit_devices_ = _deposit_devices(daily, as_of)
        self.deposits_ = None
        if len(self.deposit_devices_):
            dep_panel = self._panel(
                daily, devices, as_of, self.max_horizon, self.deposit_devices_, "deposits", fit=True
            )
            self.deposits_ = TargetModel(self.config, self.max_horizon)
            tasks += self.deposits_.tasks(dep_panel)
        # One pool for both targets' fits: workers start once and stay busy.
        results = run_tasks(self.config, self.max_horizon, tasks, self.progress)
        self.withdrawals_.finish(panel, tasks[:n_withdrawal_tasks], results[:n_withdrawal_tasks])
        if self.deposits_ is not None:
            self.deposits_.finish(dep_panel, tasks[n_withdrawal_tasks:], results[n_withdrawal_tasks:])
        self.as_of_ = as_of
        self.train_start_ = panel.start
        return self

    def _require_history(self, panel: Panel, daily: pd.DataFrame, as_of: pd.Timestamp) -> None:
        """Refuse a window without one usable day: every forecast from it would be zero, silently."""
        if not np.isfinite(panel.values).any():
            raise NoHistoryError(no_history_message(self.config, as_of, daily.loc[daily["date"] < as_of, "date"].max()))

    def predict(
        self,
        daily: pd.DataFrame,
        devices: pd.DataFrame | None,
        as_of: pd.Timestamp | str,
        horizon: int,
        n_paths: int | None = None,
        events: pd.DataFrame | None = None,
        quantiles: Sequence[float] | None = None,
        require_history: bool = True,
        twins: Mapping[str, str] | None = None,
    ) -> DemandForecast:
        """Forecast days as_of .. as_of + horizon - 1 from history before as_of.

        `quantiles` are the levels of the quantile columns (default: those the model was trained with): a
        config that asks for other levels gets them from the same model.

        `events` is the custom events calendar as it stands now (default: the one the model was trained
        with): an event added after training reaches tomorrow's forecast through the generic event
        features the model learned from earlier events.

        `twins` maps a device with no history yet to the recorded device it forecasts as (model "like <twin>");
        without one it gets the median day of the devices forecast with it, without deposits.
        """
        as_of = pd.Timestamp(as_of).normalize()
        n_paths = self.config.forecast.n_paths if n_paths is None else n_paths  # 0: quantiles only, no paths
        stream = f"paths-{self.config.forecast.seed}"  # the paths' own random stream, per target and device
        levels = list(quantiles) if quantiles is not None else self.config.forecast.quantiles
        panel = self._panel(daily, devices, as_of, horizon, None, events=events)
        if require_history:  # False: a part of a network whose window the caller has checked (a nightly chunk)
            self._require_history(panel, daily, as_of)
        dates = pd.date_range(as_of, periods=horizon, freq="D")
        yhat, names, quant, paths, failures = self.withdrawals_.predict(
            panel, horizon, n_paths, f"{stream}-withdrawals", levels
        )
        ids = panel.device_ids
        deposit_ids = np.intersect1d(ids, _deposit_devices(daily, as_of)) if self.deposits_ is not None else []
        deposits = None  # (yhat, quantiles, paths) of every device, zeros for those without deposits
        if len(deposit_ids):
            dep_panel = self._panel(daily, devices, as_of, horizon, deposit_ids, "deposits", events=events)
            d_hat, _, d_quant, d_paths, d_fail = self.deposits_.predict(
                dep_panel, horizon, n_paths, f"{stream}-deposits", levels
            )
            failures.update({k: f"deposits {v}" for k, v in d_fail.items()})
            rows = pd.Index(ids).get_indexer(deposit_ids)
            deposits = (np.full(yhat.shape, np.nan), np.full(quant.shape, np.nan), np.zeros_like(paths))
            for whole, part in zip(deposits, (d_hat, d_quant, d_paths), strict=True):
                whole[rows] = part
        takes_deposits = np.isin(ids, deposit_ids)
        position = pd.Index(ids)
        for device, twin in (twins or {}).items():
            # A device with no history yet forecasts as its twin, the typical recorded device of its kind
            # (replenishment.typical_devices), deposits included: a new branch is no withdrawal-only median of
            # ATMs, recyclers and branches.
            row, source = position.get_indexer([device, twin])
            if row < 0 or source < 0 or names[row] != NO_HISTORY or names[source] == NO_HISTORY:
                continue  # (a twin on the seasonal-naive fallback still forecasts a real device's days)
            for array in (yhat, quant, paths, *(deposits or ())):
                array[row] = array[source]
            takes_deposits[row] = takes_deposits[source]
            names[row] = f"like {twin}"
        frame = pd.DataFrame(
            {
                "device_id": pd.array(np.repeat(ids, horizon), dtype="string"),
                "date": np.tile(dates.values, len(ids)),
                "model": pd.array(np.repeat(names, horizon), dtype="string"),
                "yhat": yhat.ravel(),
            }
        )
        for k, q in enumerate(levels):
            frame[quantile_column(q)] = quant[:, :, k].ravel()
        deposit_paths = None
        if deposits is not None:
            d_hat, d_quant, deposit_paths = deposits
            d_hat[~takes_deposits], d_quant[~takes_deposits] = np.nan, np.nan
            frame["deposits_yhat"] = d_hat.ravel()
            for k, q in enumerate(levels):
                frame[f"deposits_{quantile_column(q)}"] = d_quant[:, :, k].ravel()
        return DemandForecast(frame, np.asarray(ids, dtype=str), dates, paths, deposit_paths, dict(failures))


def train(
    daily: pd.DataFrame,
    devices: pd.DataFrame | None,
    as_of: pd.Timestamp | str,
    config: Config,
    progress: bool = False,
    events: pd.DataFrame | None = None,
) -> TrainResult:
    """Fit every device's candidates on history before as_of, backtest, select and calibrate."""
    as_of = pd.Timestamp(as_of).normalize()
    longest = max(56, config.forecast.backtest_horizon_days, config.plan.horizon_days)
    model = CashForecaster(config, max_horizon=longest, progress=progress, events=events).fit(daily, devices, as_of)
    target = model.withdrawals_
    backtest = target.backtest_.copy()
    chosen = backtest.merge(target.choice_.rename("model").reset_index(), on=["device_id", "model"])
    chosen = chosen.assign(model="selected").merge(target.coverage_.reset_index(), on="device_id", how="left")
    backtest = pd.concat([backtest, chosen], ignore_index=True)
    metrics: dict[str, float] = {}
    for name in [*CANDIDATES, "selected"]:
        part = backtest[backtest["model"] == name]
        if len(part):
            suffix = "" if name == "selected" else f"_{name}"
            for col in ("smape", "mase", "wape", "bias"):
                metrics[f"{col}_mean{suffix}"] = float(part[col].mean())
    for col in target.coverage_.columns:
        metrics[f"coverage_{col}"] = float(target.coverage_[col].mean())
    metrics["n_devices"] = float(len(target.choice_))
    origins = [model.train_start_ + pd.Timedelta(days=o) for o in target.origins_]
    window = {
        "train_start": model.train_start_.date().isoformat(),
        "train_end": (as_of - pd.Timedelta(days=1)).date().isoformat(),
        "backtest_origins": [o.date().isoformat() for o in origins],
        "horizon": config.forecast.backtest_horizon_days,
    }
    selection = pd.DataFrame(
        {
            "device_id": target.choice_.index.astype(str),
            "model": target.choice_.to_numpy(),
            "reason": target.reason_.to_numpy(),
        }
    )
    return TrainResult(model, backtest, selection, metrics, window)


def score_window(
    model: CashForecaster,
    daily: pd.DataFrame,
    devices: pd.DataFrame | None,
    origins: list,
    horizon: int,
    config: Config,
) -> dict[str, float]:
    """Mean sMAPE and MASE of `model` over devices and origins (champion vs challenger on one window).

    MASE is scaled on the training window before each origin (config.forecast.max_history_days), as in
    the backtest. Returns smape_mean, mase_mean and n_scores (device-origin pairs scored).
    """
    scores = []
    observed = daily.loc[~daily["censored"]]
    for origin in origins:
        origin = pd.Timestamp(origin).normalize()
        forecast = model.predict(daily, devices, origin, horizon, n_paths=10).frame
        end = origin + pd.Timedelta(days=horizon)
        actual = observed.loc[
            (observed["date"] >= origin) & (observed["date"] < end), ["device_id", "date", "withdrawals"]
        ]
        joined = forecast.merge(actual, on=["device_id", "date"], how="inner")
        history = dict(tuple(observed.loc[observed["date"] < origin].groupby("device_id", sort=False)))
        for device, part in joined.groupby("device_id", sort=False):
            past = history.get(device)
            if past is None:
                continue
            first = max(past["date"].min(), origin - pd.Timedelta(days=config.forecast.max_history_days))
            days = pd.date_range(first, origin - pd.Timedelta(days=1))
            series = past.set_index("date")["withdrawals"].reindex(days).to_numpy()
            scores.append((smape(part["withdrawals"], part["yhat"]), mase(part["withdrawals"], part["yhat"], series)))
    arr = np.array(scores, dtype=float).reshape(-1, 2)
    with quiet_nan():
        return {
            "smape_mean": float(np.nanmean(arr[:, 0])),
            "mase_mean": float(np.nanmean(arr[:, 1])),
            "n_scores": float(len(arr)),
        }
