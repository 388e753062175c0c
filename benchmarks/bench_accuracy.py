"""Forecast accuracy: the real CUB ATM history and the synthetic network, last 56 days held out.

CUB (`data/cub_atm/daily.csv`, 5 Indian ATMs, IN/TN calendar): per device and on average the sMAPE
(Monash: 2|F-Y|/(|F|+|Y|) in percent, 0/0 and blank actuals dropped) and MASE (mean absolute error over
the in-sample lag-7 naive error of all training history, pairs observed on both days) of every
candidate and of the per-device selection, and the share of held-out days under each quantile.

Anchors from the issue (same split): weekly seasonal naive 50.5 / 1.153, statsmodels Holt-Winters
40.6 / 0.976, AutoETS 40.4 / 0.975, mlforecast global LightGBM 39.7 / 0.931. The anchor's seasonal
naive is reproduced (50.55 / 1.147) by a *rolling* lag-7 naive, the same weekday one week earlier
taken from the actuals including the held-out weeks (stepping back over absent days); it is printed
as `lag7_rolling`. A true 56-day-ahead seasonal naive (our `seasonal_naive`, the last observed same
weekday before the holdout, repeated) cannot see the holdout and scores worse.

Synthetic (`cashcast.synthetic.generate_network`, CN calendar): forecasts scored against
`true_demand` (uncensored), once with the censored flags as generated and once with every flag
cleared (outages and cash-outs unmarked, as in a bank export without a status feed).

    python benchmarks/bench_accuracy.py [--horizon 56] [--config FILE] [--synthetic-devices 100] [--statsmodels]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from cashcast.config import Config, load_config
from cashcast.schema import validate_daily
from cashcast.synthetic import generate_network
from features.panel import Panel, build_panel
from forecasting import mase, smape, train
from forecasting.backtest import predict_candidates

CUB = Path(__file__).resolve().parents[1] / "data" / "cub_atm" / "daily.csv"


def cub_daily() -> pd.DataFrame:
    raw = pd.read_csv(CUB)
    frame = raw.rename(columns={"series_id": "device_id", "total_amount_withdrawn": "withdrawals"})
    return validate_daily(frame[["device_id", "date", "withdrawals"]])


def wide(frame: pd.DataFrame, ids: np.ndarray, dates: pd.DatetimeIndex, column: str = "withdrawals") -> np.ndarray:
    return frame.pivot(index="device_id", columns="date", values=column).reindex(index=ids, columns=dates).to_numpy()


def lag7_rolling(observed: pd.DataFrame, ids: np.ndarray, dates: pd.DatetimeIndex) -> np.ndarray:
    """The anchor's naive: each day's value is the latest observed same weekday at least 7 days earlier."""
    days = pd.date_range(dates[0] - pd.Timedelta(days=7 * 9), dates[-1])
    values = wide(observed, ids, days)
    filled = values.copy()
    for k in range(1, 9):
        shifted = np.full_like(values, np.nan)
        shifted[:, 7 * k :] = values[:, : -7 * k]
        filled = np.where(np.isnan(filled), shifted, filled)
    return filled[:, -len(dates) - 7 : -7]


def evaluate(
    history: pd.DataFrame, devices: pd.DataFrame | None, as_of: pd.Timestamp, horizon: int, config: Config
) -> tuple[pd.DataFrame, dict, object, float]:
    """Train, forecast `horizon` days and return (per-device forecasts by candidate, selection, result, seconds)."""
    start = time.perf_counter()
    result = train(history, devices, as_of, config)
    elapsed = time.perf_counter() - start
    forecast = result.model.predict(history, devices, as_of, horizon)
    panel = build_panel(history, devices, as_of, config, pad=horizon + 7)
    candidates = predict_candidates(result.model.withdrawals_.models_, panel, horizon)
    dates = pd.date_range(as_of, periods=horizon, freq="D")
    candidates["selected"] = wide(forecast.frame, panel.device_ids, dates, "yhat")
    return panel, candidates, (result, forecast), elapsed


def score(candidates: dict, actual: np.ndarray, scale_history: np.ndarray, ids: np.ndarray) -> pd.DataFrame:
    table = pd.DataFrame(
        {
            (name, metric): [
                smape(actual[i], fcst[i]) if metric == "sMAPE" else mase(actual[i], fcst[i], scale_history[i])
                for i in range(len(ids))
            ]
            for name, fcst in candidates.items()
            for metric in ("sMAPE", "MASE")
        },
        index=ids,
    )
    table.loc["mean"] = table.mean()
    return table


def scale_history(history: pd.DataFrame, ids: np.ndarray) -> np.ndarray:
    """The recorded, uncensored training history as a device x day matrix (outage masking is the models' business)."""
    observed = history[~history["censored"]]
    return wide(observed, ids, pd.date_range(observed["date"].min(), observed["date"].max()))


def statsmodels_ets(panel: Panel, horizon: int) -> dict[str, np.ndarray]:
    """statsmodels `ExponentialSmoothing` per device (damped additive trend, weekly season add/mul).

    Same input as our ETS (the panel: outages masked, max_history_days); statsmodels needs a gap-free
    series, so missing days are linearly interpolated.
    """
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    out: dict[str, np.ndarray] = {}
    for seasonal in ("add", "mul"):
        rows = []
        for values in panel.values:
            series = pd.Series(values).interpolate(limit_direction="both").clip(lower=1.0)
            fit = ExponentialSmoothing(
                series.to_numpy(), trend="add", damped_trend=True, seasonal=seasonal, seasonal_periods=7
            ).fit()
            rows.append(np.clip(fit.forecast(horizon), 0, None))
        out[f"statsmodels_hw_{seasonal}"] = np.vstack(rows)
    return out


def cub(horizon: int, config: Config, with_statsmodels: bool) -> None:
    config = config.updated(devices={"country": "IN", "subdivision": "TN"})
    daily = cub_daily()
    as_of = daily["date"].max() + pd.Timedelta(days=1 - horizon)
    history = daily[daily["date"] < as_of]
    panel, candidates, (result, forecast), elapsed = evaluate(history, None, as_of, horizon, config)
    dates = pd.date_range(as_of, periods=horizon, freq="D")
    ids = panel.device_ids
    candidates["lag7_rolling"] = lag7_rolling(daily, ids, dates)
    if with_statsmodels:
        # Our ETS alone, without deferring to LightGBM on holidays, against the library's Holt-Winters.
        candidates["ets_alone"] = result.model.withdrawals_.models_["ets"].predict(panel, horizon)
        candidates.update(statsmodels_ets(panel, horizon))
    table = score(candidates, wide(daily, ids, dates), scale_history(history, ids), ids)
    print(f"CUB ATMs, {len(ids)} devices, holdout {dates[0]:%Y-%m-%d}..{dates[-1]:%Y-%m-%d}")
    print(f"train (3 folds + final) {elapsed:.1f} s wall (machine shared with other jobs)")
    with pd.option_context("display.width", 250):
        print(table.round(3).to_string())
    print("selection:", result.selection.set_index("device_id")["model"].to_dict())
    joined = forecast.frame.merge(daily, on=["device_id", "date"])
    levels = [c for c in forecast.frame.columns if c.startswith("q")]
    held_out = {c: round(float(np.mean(joined["withdrawals"] <= joined[c])), 3) for c in levels}
    backtest = {c: round(result.metrics[f"coverage_{c}"], 3) for c in levels}
    print("held-out coverage:", held_out, " backtest (LOO folds):", backtest)
    print(
        "anchors: seasonal naive 50.5/1.153 (= lag7_rolling)  Holt-Winters 40.6/0.976  AutoETS 40.4/0.975  "
        "mlforecast LightGBM 39.7/0.931  target <= 36/0.88"
    )


def synthetic(horizon: int, config: Config, n_devices: int) -> None:
    n_branches = max(n_devices // 10, 1)
    network = generate_network(
        n_atms=n_devices - 2 * n_branches, n_branches=n_branches, n_recyclers=n_branches, days=730, seed=11
    )
    as_of = network.daily["date"].max() + pd.Timedelta(days=1 - horizon)
    dates = pd.date_range(as_of, periods=horizon, freq="D")
    for label, daily in (
        ("censored flags kept", network.daily),
        ("censored flags cleared", network.daily.assign(censored=False)),
    ):
        history = daily[daily["date"] < as_of]
        panel, candidates, _, elapsed = evaluate(history, network.devices, as_of, horizon, config)
        ids = panel.device_ids
        table = score(candidates, wide(network.true_demand, ids, dates), scale_history(history, ids), ids)
        print(f"synthetic {len(ids)} devices x 730 days, {label}: train {elapsed:.1f} s; mean over devices")
        with pd.option_context("display.width", 250):
            print(table.loc[["mean"]].round(3).to_string())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--horizon", type=int, default=56)
    parser.add_argument("--config", default=None)
    parser.add_argument("--synthetic-devices", type=int, default=100, help="0 skips the synthetic network")
    parser.add_argument("--statsmodels", action="store_true", help="also score statsmodels Holt-Winters on CUB")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    config = load_config(args.config)
    cub(args.horizon, config, args.statsmodels)
    if args.synthetic_devices:
        synthetic(args.horizon, config, args.synthetic_devices)


if __name__ == "__main__":
    main()
