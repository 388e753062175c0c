"""Forecast accuracy on the real CUB ATM history: the last 56 days held out, earlier history for training.

Prints per device and on average the sMAPE (Monash, percent) and MASE (lag-7 scale on the training
part) of every candidate and of the per-device selection, and the share of held-out days under each
quantile. Anchors from the issue (same split): weekly seasonal naive 50.5 / 1.153, statsmodels
Holt-Winters 40.6 / 0.976, AutoETS 40.4 / 0.975, mlforecast global LightGBM 39.7 / 0.931.

    python benchmarks/bench_accuracy.py [--horizon 56] [--config FILE]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from cashcast.config import load_config
from cashcast.schema import validate_daily
from forecasting import mase, smape, train
from forecasting.backtest import predict_candidates
from forecasting.panel import build_panel

CUB = Path(__file__).resolve().parents[1] / "data" / "cub_atm" / "daily.csv"


def cub_daily() -> pd.DataFrame:
    raw = pd.read_csv(CUB)
    frame = raw.rename(columns={"series_id": "device_id", "total_amount_withdrawn": "withdrawals"})
    return validate_daily(frame[["device_id", "date", "withdrawals"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--horizon", type=int, default=56)
    parser.add_argument("--config", default=None)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    config = load_config(args.config).updated(devices={"country": "IN", "subdivision": "TN"})
    daily = cub_daily()
    as_of = daily["date"].max() + pd.Timedelta(days=1 - args.horizon)
    history = daily[daily["date"] < as_of]
    start = time.perf_counter()
    result = train(history, None, as_of, config)
    elapsed = time.perf_counter() - start
    forecast = result.model.predict(history, None, as_of, args.horizon)

    panel = build_panel(history, None, as_of, config, pad=args.horizon + 7)
    candidates = predict_candidates(result.model.withdrawals_.models_, panel, args.horizon)
    dates = pd.date_range(as_of, periods=args.horizon, freq="D")
    actual = (
        daily[daily["date"] >= as_of]
        .pivot(index="device_id", columns="date", values="withdrawals")
        .reindex(index=panel.device_ids, columns=dates)
        .to_numpy()
    )
    # MASE scale: lag-7 error over all training history (the models themselves see max_history_days).
    everything = build_panel(history, None, as_of, config.updated(forecast={"max_history_days": 10_000}))
    scale_history = everything.values[pd.Index(everything.device_ids).get_indexer(panel.device_ids)]
    selected = forecast.frame.pivot(index="device_id", columns="date", values="yhat").reindex(panel.device_ids)
    candidates["selected"] = selected.to_numpy()
    table = pd.DataFrame(
        {
            (name, metric): [
                smape(actual[i], fcst[i]) if metric == "sMAPE" else mase(actual[i], fcst[i], scale_history[i])
                for i in range(len(panel.device_ids))
            ]
            for name, fcst in candidates.items()
            for metric in ("sMAPE", "MASE")
        },
        index=panel.device_ids,
    )
    table.loc["mean"] = table.mean()
    choice = result.selection.set_index("device_id")["model"].reindex(panel.device_ids)
    print(f"CUB ATMs, {len(panel.device_ids)} devices, holdout {dates[0]:%Y-%m-%d}..{dates[-1]:%Y-%m-%d}")
    print(f"train (3 folds + final) {elapsed:.1f} s wall (machine shared with other jobs)")
    with pd.option_context("display.width", 200, "display.precision", 3):
        print(table.round(3).to_string())
    print("selection:", choice.to_dict())
    joined = forecast.frame.merge(daily, on=["device_id", "date"])
    levels = [c for c in forecast.frame.columns if c.startswith("q")]
    held_out = {c: float(np.mean(joined["withdrawals"] <= joined[c])) for c in levels}
    backtest = {c: round(result.metrics[f"coverage_{c}"], 3) for c in levels}
    print("held-out coverage:", {k: round(v, 3) for k, v in held_out.items()}, " backtest (LOO folds):", backtest)
    print(
        "anchors: seasonal naive 50.5/1.153  Holt-Winters 40.6/0.976  AutoETS 40.4/0.975  "
        "mlforecast LightGBM 39.7/0.931  target <= 36/0.88"
    )


if __name__ == "__main__":
    main()
