"""Acceptance rehearsal on real ATM data, driven only through the `cashcast` command line.

Given a daily history (default: the CUB ATMs), it holds out the last N days, then runs
`cashcast ingest`, `cashcast forecast --as-of D --horizon N` (which trains first) and scores mean sMAPE
and MASE over devices; then writes a device master with the issue's replenishment terms (capacity 14
days of mean demand, visit cost 1.36% of mean daily demand, 5%/year holding, Mon-Fri visits; bundle
size left to the default) and runs `cashcast backtest` over the held-out weeks, printing each policy's
cost against perfect foresight.

Run: python benchmarks/bench_cli_real.py [--daily FILE --country IN --subdivision TN --holdout 56 --config FILE]
NN5: python benchmarks/bench_cli_real.py --daily NN5_FINAL_DATASET_WITH_TEST_DATA.csv --country GB --subdivision ENG
     [--days-later 1]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def cashcast(*args: str) -> str:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "flows", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"cashcast {args[0]} failed: {done.stderr.strip().splitlines()[-1]}")
    print(f"  cashcast {args[0]}: {time.perf_counter() - started:.1f} s")
    return done.stdout


def load_daily(path: Path, days_later: int = 0) -> pd.DataFrame:
    """A `daily` file, the CUB table, or the NN5 competition's semicolon-separated wide table."""
    from ingest.adapters import cub_to_daily, nn5_to_daily

    raw = pd.read_csv(path, sep=None, engine="python", dtype={"device_id": str})
    if "series_id" in raw.columns:
        return cub_to_daily(raw)
    return nn5_to_daily(raw, days_later) if "Date" in raw.columns else raw


def scores(actual: pd.DataFrame, forecast: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """Per-device sMAPE (Monash, percent) and MASE (lag-7 in-sample scale on the training history)."""
    from forecasting.metrics import mase, smape

    joined = actual.merge(forecast, on=["device_id", "date"], how="left")
    rows = []
    for device, part in joined.groupby("device_id"):
        past = history[history["device_id"] == device].set_index("date")["withdrawals"]
        y, f = part["withdrawals"].to_numpy(float), part["yhat"].to_numpy(float)
        scale = np.nan  # a device new in the hold-out has no in-sample scale
        if len(past) > 7:
            scale = mase(y, f, past.reindex(pd.date_range(past.index.min(), past.index.max())).to_numpy(float))
        rows.append({"device_id": device, "smape": smape(y, f), "mase": scale})
    return pd.DataFrame(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--daily", type=Path, default=REPO / "data" / "cub_atm" / "daily.csv")
    parser.add_argument("--country", default="IN")
    parser.add_argument("--subdivision", default="TN")
    parser.add_argument("--holdout", type=int, default=56)
    parser.add_argument("--config", type=Path, default=None, help="TOML merged over the defaults (what-if runs)")
    parser.add_argument("--days-later", type=int, default=0, help="NN5 only: move its dates (1 aligns its holidays)")
    args = parser.parse_args()

    daily = load_daily(args.daily, args.days_later)
    daily["date"] = pd.to_datetime(daily["date"])
    as_of = daily["date"].max() - pd.Timedelta(days=args.holdout - 1)
    history, actual = daily[daily["date"] < as_of], daily[daily["date"] >= as_of]
    mean_demand = history[history["date"] >= as_of - pd.Timedelta(days=91)].groupby("device_id")["withdrawals"].mean()
    devices = pd.DataFrame(
        {
            "device_id": mean_demand.index,
            "kind": "atm",
            "capacity": (14 * mean_demand).round(2).to_numpy(),  # not to hundreds: NN5-like data runs ~10 a day
            "visit_cost": (0.0136 * mean_demand).round(2).to_numpy(),
            "emergency_visit_cost": (3 * 0.0136 * mean_demand).round(2).to_numpy(),
            "holding_rate": 0.05,
            "visit_weekdays": "Mon,Tue,Wed,Thu,Fri",
            "lead_time_days": 1,
            "country": args.country,
            "subdivision": args.subdivision,
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        home = ["--home", str(root / "home")] + (["--config", str(args.config.resolve())] if args.config else [])
        daily_file, devices_file = root / "daily.csv", root / "devices.csv"
        daily.assign(date=daily["date"].dt.strftime("%Y-%m-%d")).to_csv(daily_file, index=False)
        devices.to_csv(devices_file, index=False)
        print(f"{daily['device_id'].nunique()} devices; forecasting {args.holdout} days from {as_of:%Y-%m-%d}")
        cashcast("ingest", *home, "--kind", "devices", str(devices_file))
        cashcast("ingest", *home, "--kind", "daily", str(daily_file))
        out = root / "forecast.csv"
        cashcast("forecast", *home, "--as-of", f"{as_of:%Y-%m-%d}", "--horizon", str(args.holdout), "--out", str(out))
        forecast = pd.read_csv(out, parse_dates=["date"])[["device_id", "date", "yhat", "model"]]
        table = scores(actual[["device_id", "date", "withdrawals"]], forecast, history)
        print(table.round(3).to_string(index=False))
        print(f"mean sMAPE {table['smape'].mean():.2f}  mean MASE {table['mase'].mean():.3f}")
        print("models used:", forecast.drop_duplicates("device_id")["model"].value_counts().to_dict())

        start = as_of + pd.Timedelta(days=(7 - as_of.weekday()) % 7)  # first Monday of the hold-out
        end = start + pd.Timedelta(days=7 * (args.holdout // 7) - 1)
        end = min(end, daily["date"].max())
        cashcast(
            "backtest", *home, "--start", f"{start:%Y-%m-%d}", "--end", f"{end:%Y-%m-%d}", "--out", str(root / "bt")
        )
        kpis = pd.read_csv(root / "bt" / "kpis.csv")
        kpis["stockout_pct"] = 100 * kpis["stockout_rate"]
        print(
            kpis[["policy", "total_cost", "visits", "stockout_device_days", "stockout_pct", "cost_vs_optimum"]]
            .round(3)
            .to_string(index=False)
        )
    return 0 if np.isfinite(table["smape"].mean()) else 1


if __name__ == "__main__":
    sys.exit(main())
