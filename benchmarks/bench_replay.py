"""Backtest replay benchmark: 8 weekly re-plans over the last 56 days, every policy against the optimum.

Setting (the replenishment brief): 14-day plans, Mon-Fri visits, capacity = 14 days of mean
demand, visit cost = 1.36% of mean daily demand, 5%/year holding, forecaster = naive_forecast.
Runs on the real CUB ATM data and on a synthetic network, prints each policy's cost ratio to
perfect foresight and its stockout rate. Usage: python benchmarks/bench_replay.py [--devices N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cashcast.config import load_config
from cashcast.synthetic import generate_network
from replenishment import naive_forecast, replay, resolve_terms

ROOT = Path(__file__).resolve().parents[1]
WINDOW_DAYS = 56
VISIT_COST_SHARE = 0.0136


def cub_daily() -> pd.DataFrame:
    raw = pd.read_csv(ROOT / "data" / "cub_atm" / "daily.csv", parse_dates=["date"])
    return raw.rename(columns={"series_id": "device_id", "total_amount_withdrawn": "withdrawals"})[
        ["device_id", "date", "withdrawals"]
    ]


def synthetic_daily(n_devices: int, days: int, seed: int = 7) -> pd.DataFrame:
    """The project's synthetic network (ATMs, branches, recyclers): its uncensored true demand."""
    network = generate_network(
        n_atms=n_devices * 7 // 10, n_branches=n_devices * 2 // 10, n_recyclers=n_devices // 10, days=days, seed=seed
    )
    return network.true_demand


def device_master(daily: pd.DataFrame, before: pd.Timestamp) -> pd.DataFrame:
    """Visit cost = 1.36% of each device's mean daily demand; devices with deposits are branches."""
    mean = daily[daily["date"] < before].groupby("device_id")["withdrawals"].mean()
    master = pd.DataFrame({"device_id": mean.index, "visit_cost": (VISIT_COST_SHARE * mean).round(2).to_numpy()})
    master["emergency_visit_cost"] = 3 * master["visit_cost"]
    if "deposits" in daily:
        takes_deposits = daily.groupby("device_id")["deposits"].apply(lambda s: s.notna().any())
        master["kind"] = np.where(takes_deposits.reindex(mean.index).to_numpy(), "branch", "atm")
    return master


def oracle_forecaster(actual: pd.DataFrame, n_paths: int, sigma: float = 0.15):
    """Paths = the actual future x lognormal noise: not a forecaster, a check of the optimiser alone."""
    def forecast(history, as_of, horizon):
        base = naive_forecast(history, as_of, horizon, n_paths)
        rng = np.random.default_rng(int(as_of.value % 2**32))

        def paths(column: str, fallback: np.ndarray) -> np.ndarray:
            """Noisy actual future; days never recorded keep the naive paths."""
            table = actual.pivot_table(index="device_id", columns="date", values=column)
            future = table.reindex(index=base.device_ids, columns=base.dates).to_numpy(dtype="float64")
            noise = rng.lognormal(-0.5 * sigma**2, sigma, fallback.shape)
            known = ~np.isnan(future)[:, None, :]
            return np.where(known, np.nan_to_num(future)[:, None, :] * noise, fallback).astype("float32")

        base.withdrawal_paths = paths("withdrawals", base.withdrawal_paths)
        if base.deposit_paths is not None:
            base.deposit_paths = paths("deposits", base.deposit_paths)
        return base

    return forecast


def run(name: str, daily: pd.DataFrame, config) -> None:
    end = daily["date"].max()
    start = end - pd.Timedelta(days=WINDOW_DAYS - 1)
    terms = resolve_terms(device_master(daily, start), daily[daily["date"] < start], config)
    forecasters = {
        "naive_forecast": lambda history, as_of, horizon: naive_forecast(
            history, as_of, horizon, config.forecast.n_paths, config.forecast.seed
        ),
        "oracle paths (optimiser check)": oracle_forecaster(daily, config.forecast.n_paths),
    }
    print(f"\n{name}: {len(terms)} devices, {start:%Y-%m-%d}..{end:%Y-%m-%d}")
    for label, forecaster in forecasters.items():
        began = time.perf_counter()
        result = replay(daily, terms, start, end, forecaster, config)
        elapsed = time.perf_counter() - began
        print(f"  forecaster = {label}: replay {elapsed:.1f} s (contended machine)")
        for note in result.notes:
            print(f"    note: {note}")
        for row in result.kpis.itertuples():
            print(
                f"    {row.policy:<18} cost x{row.cost_vs_optimum:5.2f}  stockouts {row.stockout_rate:6.2%}"
                f"  visits {row.visits:4.0f} (+{row.emergency_visits:.0f} emergency)  total {row.total_cost:,.0f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=100, help="synthetic network size")
    args = parser.parse_args()
    base = load_config().updated(
        devices={"capacity_days": 14.0, "visit_weekdays": "Mon,Tue,Wed,Thu,Fri", "holding_rate": 0.05},
        plan={"horizon_days": 14},
        backtest={"replan_every_days": 7},
    )
    run("CUB ATMs (real)", cub_daily(), base.updated(devices={"country": "IN", "subdivision": "TN"}))
    run("synthetic", synthetic_daily(args.devices, 7 * 30 + WINDOW_DAYS), base)


if __name__ == "__main__":
    main()
