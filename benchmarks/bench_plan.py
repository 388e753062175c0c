"""Plan benchmark: plan_network for a large fleet (default 10,000 devices x 14 days x 200 paths,
forecast 14 days further for the lookahead).

Target: <= 30 s. Paths are lognormal around per-device weekly profiles; every tenth device is a
branch with deposits. Usage: python benchmarks/bench_plan.py [--devices N] [--paths P]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from cashcast.config import load_config
from cashcast.schema import DemandForecast
from replenishment import plan_network, resolve_terms


def fleet(n_devices: int, n_paths: int, horizon: int, as_of: pd.Timestamp, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = np.array([f"D{i:05d}" for i in range(n_devices)], dtype=object)
    dates = pd.date_range(as_of, periods=horizon, freq="D")
    level = rng.lognormal(11.5, 0.5, n_devices)
    weekly = 1 + 0.3 * np.sin(2 * np.pi * (np.arange(7)[None, :] + rng.integers(0, 7, (n_devices, 1))) / 7)
    mean = level[:, None] * weekly[:, dates.day_of_week]
    noise = rng.lognormal(-0.045, 0.3, (n_devices, n_paths, horizon))
    withdrawals = (mean[:, None, :] * noise).astype("float32")
    branch = np.arange(n_devices) % 10 == 0
    deposits = np.where(branch[:, None, None], withdrawals * rng.lognormal(0.1, 0.3, withdrawals.shape), 0.0)
    frame = pd.DataFrame(
        {"device_id": np.repeat(ids, horizon), "date": np.tile(dates, n_devices), "model": "bench"}
    ).assign(yhat=mean.ravel())
    forecast = DemandForecast(frame, ids, dates, withdrawals, deposits.astype("float32"))
    devices = pd.DataFrame(
        {
            "device_id": ids,
            "kind": np.where(branch, "branch", "atm"),
            "capacity": np.round(level * rng.uniform(7, 20, n_devices), -4),
            "visit_cost": rng.uniform(600, 1500, n_devices).round(),
            "lead_time_days": rng.integers(1, 3, n_devices),
        }
    )
    balances = pd.DataFrame({"device_id": ids, "balance": np.round(level * rng.uniform(2, 8, n_devices), -2)})
    return forecast, devices, balances


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--paths", type=int, default=200)
    parser.add_argument("--horizon", type=int, default=14)
    args = parser.parse_args()
    as_of = pd.Timestamp("2025-09-01")  # clear of Golden Week (no visits Oct 1-8 in CN)
    config = load_config().updated(plan={"horizon_days": args.horizon}, devices={"load_multiple": 10_000.0})
    # The forecast runs on past the plan: the optimiser looks ahead ([plan] lookahead_days).
    forecast, devices, balances = fleet(args.devices, args.paths, config.plan.forecast_days, as_of)
    terms = resolve_terms(devices, None, config)
    began, cpu = time.perf_counter(), time.process_time()
    result = plan_network(forecast, terms, balances, as_of, config)
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    total = result.summary.set_index("device_id").loc["TOTAL"]
    print(
        f"plan_network: {args.devices} devices x {args.horizon} days x {args.paths} paths in {elapsed:.1f} s wall, "
        f"{cpu:.1f} s CPU (target <= 30 s; 2 shared cores, contended)"
    )
    print(
        f"  {len(result.plan)} visits ({(result.plan['action'] == 'pickup').sum()} pickups), expected cost "
        f"{total['expected_cost']:,.0f} vs weekly fill {total['baseline_expected_cost']:,.0f}; "
        f"expected stockout days {total['expected_stockout_days']:.1f} "
        f"vs {total['baseline_expected_stockout_days']:.1f}"
    )


if __name__ == "__main__":
    main()
