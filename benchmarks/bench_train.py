"""Forecasting speed and memory: train 1,000 devices x 2 years (backtests included), forecast 10,000 x 56 days.

The networks are generated in a child process and handed over as Parquet, so the printed peak RSS is
training/forecasting (plus the loaded data), not the generator's. The largest child's peak
(RUSAGE_CHILDREN) is the generator's, printed for reference. Forecasting 10,000 devices uses the model trained on
1,000 of them with every device set to the blend (ETS and LightGBM both run: the worst case).

    python benchmarks/bench_train.py [--train-devices 1000] [--forecast-devices 10000] [--days 730]
        [--dask-workers N | --dask-address tcp://host:8786] [--devices-per-task 2000]

With --dask-workers or --dask-address, training's fits run on a Dask cluster (a LocalCluster of N
single-thread worker processes, or an existing one), as `[flows] task_runner = "dask"` makes them run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd

from cashcast.config import load_config
from cashcast.synthetic import generate_network
from flows.runners import training_on_configured_runner
from forecasting import train


def write_network(folder: str, n_devices: int, days: int, seed: int) -> None:
    network = generate_network(
        n_atms=n_devices * 8 // 10,
        n_branches=n_devices * 12 // 100,
        n_recyclers=n_devices - n_devices * 8 // 10 - n_devices * 12 // 100,
        days=days,
        seed=seed,
    )
    network.daily.to_parquet(Path(folder) / "daily.parquet", index=False)
    network.devices.to_parquet(Path(folder) / "devices.parquet", index=False)


def generated(folder: str, n_devices: int, days: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    child = multiprocessing.get_context("spawn").Process(target=write_network, args=(folder, n_devices, days, seed))
    child.start()
    child.join()
    return pd.read_parquet(Path(folder) / "daily.parquet"), pd.read_parquet(Path(folder) / "devices.parquet")


def current_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def peak_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-devices", type=int, default=1000)
    parser.add_argument("--forecast-devices", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument("--horizon", type=int, default=56)
    parser.add_argument("--dask-workers", type=int, default=0)
    parser.add_argument("--dask-address", default="")
    parser.add_argument("--devices-per-task", type=int, default=0)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    config = load_config()
    if args.devices_per_task:
        config = config.updated(forecast={"train_devices_per_task": args.devices_per_task})
    if args.dask_workers or args.dask_address:
        flows = {"task_runner": "dask", "dask_address": args.dask_address, "dask_workers": max(args.dask_workers, 1)}
        config = config.updated(flows=flows)
    with tempfile.TemporaryDirectory() as folder:
        daily, devices = generated(folder, args.train_devices, args.days, seed=1)
        as_of = daily["date"].max() + pd.Timedelta(days=1)
        with training_on_configured_runner(config):
            start = time.perf_counter()  # a LocalCluster's start-up is not training
            result = train(daily, devices, as_of, config)
            train_s = time.perf_counter() - start
        where = f"on Dask ({config.flows.dask_address or f'{config.flows.dask_workers} local workers'})"
        where = where if config.flows.task_runner == "dask" else "locally"
        print(f"train {args.train_devices} devices x {args.days} days (3 folds + final) {where}: {train_s:.1f} s wall")
        print(f"  selection: {result.selection['model'].value_counts().to_dict()}")
        print(
            f"  backtest sMAPE {result.metrics['smape_mean']:.1f}  MASE {result.metrics['mase_mean']:.3f}  "
            f"coverage q95 {result.metrics['coverage_q95']:.3f}"
        )
        print(f"  peak RSS after training: {peak_mb(resource.RUSAGE_SELF):.0f} MB (main process)")
        del daily
        daily, devices = generated(folder, args.forecast_devices, args.days, seed=2)
    as_of = daily["date"].max() + pd.Timedelta(days=1)
    print(f"  current RSS with the 10,000-device history loaded: {current_mb():.0f} MB")
    model = result.model
    ids = pd.Index(sorted(daily["device_id"].astype(str).unique()), name="device_id")
    model.withdrawals_.choice_ = pd.Series("blend", index=ids)
    start = time.perf_counter()
    forecast = model.predict(daily, devices, as_of, args.horizon)
    predict_s = time.perf_counter() - start
    print(
        f"forecast {len(forecast.device_ids)} devices x {args.horizon} days: {predict_s:.1f} s wall "
        f"({len(forecast.frame):,} rows, paths {forecast.withdrawal_paths.shape})"
    )
    print(
        f"peak RSS: main {peak_mb(resource.RUSAGE_SELF):.0f} MB, largest child (generator) "
        f"{peak_mb(resource.RUSAGE_CHILDREN):.0f} MB"
    )


if __name__ == "__main__":
    main()
