"""Backtest replay benchmark: 8 weekly re-plans over the last 56 days, every policy against the optimum.

Setting (the replenishment brief): 14-day plans, Mon-Fri visits, capacity = 14 days of mean
demand, visit cost = 1.36% of mean daily demand, emergency visits 3x, 5%/year holding, lead time
1 day, 100-unit bundles. The forecaster is the real one, as `cashcast backtest` runs it
(`forecasting.train` every retrain_every_days, `model.predict`); `--forecasters` adds the seasonal
naive paths, "oracle" paths (actual future x 15% lognormal noise: a check of the optimiser
alone) and, on the synthetic network, "truth" paths (drawn from the generator's own demand law given
every day before the plan: the best forecast there can be, so its cost is the policy's limit there).
Runs on the real CUB ATM data and a synthetic network; prints each policy's cost ratio to
perfect foresight and its stockout rate, and how often the realised 3-10-day withdrawal sums from each
plan origin beat the paths' quantiles (the calibration the loads rely on). `--cache DIR` keeps the real
forecasts (pickled per data set and as-of) so policy changes can be re-measured without retraining.
Usage: python benchmarks/bench_replay.py [--devices N] [--forecasters real,naive,oracle,truth] [--cache DIR]
       [--data cub,synthetic] [--stockout-penalty-visits X] [--replan-every-days N]
"""

from __future__ import annotations

import argparse
import pickle
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cashcast.config import load_config
from cashcast.jobs import retraining_forecaster
from cashcast.schema import validate_daily
from cashcast.synthetic import generate_network
from replenishment import naive_forecast, replay, resolve_terms
from replenishment.dp import extrapolate_body
from replenishment.plan import tame_tails

ROOT = Path(__file__).resolve().parents[1]
WINDOW_DAYS = 56
VISIT_COST_SHARE = 0.0136
EMERGENCY_VISITS = 3.0
# 406 days from 2024-11-01: the replay window (Oct 17 - Dec 11 2025) is clear of China's holiday
# blocks, whose 7-9 days without visits a 14-day cassette cannot always bridge whatever the plan.
SYNTHETIC_DAYS = 7 * 50 + 56


def cub_daily() -> pd.DataFrame:
    raw = pd.read_csv(ROOT / "data" / "cub_atm" / "daily.csv", parse_dates=["date"])
    daily = raw.rename(columns={"series_id": "device_id", "total_amount_withdrawn": "withdrawals"})
    return validate_daily(daily[["device_id", "date", "withdrawals"]], source="CUB")


def synthetic_network(n_devices: int, days: int, seed: int = 7) -> tuple[pd.DataFrame, dict]:
    """The project's synthetic network (ATMs, branches, recyclers): its uncensored true demand and its law."""
    network = generate_network(
        n_atms=n_devices * 7 // 10,
        n_branches=n_devices * 2 // 10,
        n_recyclers=n_devices // 10,
        days=days,
        seed=seed,
        keep_law=True,
    )
    return validate_daily(network.true_demand, source="synthetic"), network.law


def device_master(daily: pd.DataFrame, before: pd.Timestamp) -> pd.DataFrame:
    """Visit cost = 1.36% of each device's mean daily demand; devices with deposits are branches."""
    mean = daily[daily["date"] < before].groupby("device_id")["withdrawals"].mean()
    master = pd.DataFrame({"device_id": mean.index, "visit_cost": (VISIT_COST_SHARE * mean).round(2).to_numpy()})
    master["emergency_visit_cost"] = EMERGENCY_VISITS * master["visit_cost"]
    takes_deposits = daily.groupby("device_id")["deposits"].apply(lambda s: s.notna().any())
    master["kind"] = np.where(takes_deposits.reindex(mean.index).to_numpy(), "branch", "atm")
    return master


def real_forecaster(config, cache: Path | None, label: str):
    """jobs.retraining_forecaster, the one `cashcast backtest` runs, with its forecasts cached in `cache`."""
    forecaster = retraining_forecaster(config)

    def forecast(history, as_of, horizon):
        path = None if cache is None else cache / f"{label}_{as_of:%Y%m%d}_{horizon}.pkl"
        if path is not None and path.exists():
            return pickle.loads(path.read_bytes())
        result = forecaster(history, as_of, horizon)
        if path is not None:
            path.write_bytes(pickle.dumps(result))
        return result

    return forecast


def replaced_paths(base, paths):
    """`base` (a naive forecast) with its withdrawal and deposit paths replaced by `paths(flow, shape)`, where
    those are not NaN (days past the data, devices the source does not hold keep the naive paths)."""

    def replace(flow: str, fallback: np.ndarray) -> np.ndarray:
        drawn = paths(flow, fallback.shape)
        return np.where(np.isnan(drawn), fallback, drawn).astype("float32")

    base.withdrawal_paths = replace("withdrawals", base.withdrawal_paths)
    if base.deposit_paths is not None:
        base.deposit_paths = replace("deposits", base.deposit_paths)
    return base


def oracle_forecaster(actual: pd.DataFrame, n_paths: int, sigma: float = 0.15):
    """Paths = the actual future x lognormal noise: not a forecaster, a check of the optimiser alone."""

    def forecast(history, as_of, horizon):
        base = naive_forecast(history, as_of, horizon, n_paths)
        rng = np.random.default_rng(int(as_of.value % 2**32))

        def paths(column: str, shape: tuple) -> np.ndarray:
            """Noisy actual future, NaN on days never recorded."""
            table = actual.pivot_table(index="device_id", columns="date", values=column)
            future = table.reindex(index=base.device_ids, columns=base.dates).to_numpy(dtype="float64")
            return future[:, None, :] * rng.lognormal(-0.5 * sigma**2, sigma, shape)

        return replaced_paths(base, paths)

    return forecast


def truth_forecaster(law: dict, n_paths: int):
    """Paths drawn from the generator's law given every day before the plan (DemandLaw.sample_paths);
    days past the generated history, and devices the law does not hold, keep the naive paths."""

    def forecast(history, as_of, horizon):
        base = naive_forecast(history, as_of, horizon, n_paths)
        rng = np.random.default_rng(int(as_of.value % 2**32))

        def paths(flow: str, shape: tuple) -> np.ndarray:
            rows = pd.Index(law[flow].device_ids).get_indexer(base.device_ids)
            drawn = law[flow].sample_paths(as_of, len(base.dates), n_paths, rng)[np.maximum(rows, 0)]
            drawn[rows < 0] = np.nan
            return drawn

        return replaced_paths(base, paths)

    return forecast


def recording(forecaster, kept: list):
    """The forecaster, keeping every forecast it returns."""

    def forecast(history, as_of, horizon):
        kept.append(forecaster(history, as_of, horizon))
        return kept[-1]

    return forecast


def sum_exceedance(daily: pd.DataFrame, forecasts: list) -> str:
    """Share of realised k-day withdrawal sums (k = 3..10 from each plan origin) above the paths' q50, q90 and
    q99 (sample, and the body extrapolation dp.need_quantile loads from); nominal 50%, 10%, 1%, 1%."""
    table = daily.pivot_table(index="device_id", columns="date", values="withdrawals")
    above: dict[str, list] = {"q50": [], "q90": [], "q99": [], "q99 body": []}
    for fc in forecasts:
        paths = tame_tails(fc.withdrawal_paths.astype("float64"))  # as the planner sees them
        sums = np.cumsum(paths, axis=2)[:, :, 2:10]
        actual = np.cumsum(table.reindex(index=fc.device_ids, columns=fc.dates).to_numpy(), axis=1)[:, 2:10]
        q50, q90, q99 = np.quantile(sums, [0.5, 0.9, 0.99], axis=1)
        known = np.isfinite(actual)
        for name, bound in zip(above, (q50, q90, q99, extrapolate_body(q50, q90, 0.99)), strict=True):
            above[name].append((actual > bound)[known])
    return "  ".join(f"{name} {np.concatenate(hits).mean():.2%}" for name, hits in above.items())


def run(name: str, daily: pd.DataFrame, config, chosen: list[str], cache: Path | None, law: dict | None = None) -> None:
    end = daily["date"].max()
    start = end - pd.Timedelta(days=WINDOW_DAYS - 1)
    terms = resolve_terms(device_master(daily, start), daily[daily["date"] < start], config)
    forecasters = {
        "real": lambda: real_forecaster(config, cache, name.split()[0]),
        "naive": lambda: (
            lambda history, as_of, horizon: naive_forecast(
                history, as_of, horizon, config.forecast.n_paths, config.forecast.seed
            )
        ),
        "oracle": lambda: oracle_forecaster(daily, config.forecast.n_paths),
        "truth": lambda: truth_forecaster(law, config.forecast.n_paths),
    }
    if law is None:
        chosen = [label for label in chosen if label != "truth"]  # real data has no known law
    print(f"\n{name}: {len(terms)} devices, {start:%Y-%m-%d}..{end:%Y-%m-%d}")
    for label in chosen:
        began = time.perf_counter()
        forecasts: list = []
        result = replay(daily, terms, start, end, recording(forecasters[label](), forecasts), config)
        elapsed = time.perf_counter() - began
        print(f"  forecaster = {label}: replay {elapsed:.1f} s (contended machine)")
        print(f"    realised 3-10-day sums above the paths': {sum_exceedance(daily, forecasts)}")
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
    parser.add_argument("--forecasters", default="real,naive,oracle", help="comma list of real, naive, oracle, truth")
    parser.add_argument("--data", default="cub,synthetic", help="comma list of cub, synthetic")
    parser.add_argument("--cache", type=Path, default=None, help="folder caching the real forecasts")
    parser.add_argument(
        "--stockout-penalty-visits", type=float, default=None, help="[plan] stockout_penalty_visits (default: config)"
    )
    parser.add_argument(
        "--replan-every-days", type=int, default=7, help="re-planning cadence (the brief's is weekly; the nightly's 1)"
    )
    args = parser.parse_args()
    if args.cache is not None:
        args.cache.mkdir(parents=True, exist_ok=True)
    chosen = args.forecasters.split(",")
    base = load_config().updated(
        devices={
            "capacity": 0.0,
            "capacity_days": 14.0,
            "visit_weekdays": "Mon,Tue,Wed,Thu,Fri",
            "holding_rate": 0.05,
            "lead_time_days": 1,
            "load_multiple": 100.0,
        },
        plan={"horizon_days": 14},
        backtest={"replan_every_days": args.replan_every_days},
    )
    if args.stockout_penalty_visits is not None:
        base = base.updated(plan={"stockout_penalty_visits": args.stockout_penalty_visits})
    print(f"stockout_penalty_visits = {base.plan.stockout_penalty_visits:g}")
    if "cub" in args.data:
        cub = base.updated(devices={"country": "IN", "subdivision": "TN"})
        run("CUB ATMs (real)", cub_daily(), cub, chosen, args.cache)
    if "synthetic" in args.data:
        daily, law = synthetic_network(args.devices, SYNTHETIC_DAYS)
        run("synthetic", daily, base, chosen, args.cache, law)


if __name__ == "__main__":
    main()
