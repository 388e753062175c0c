"""Feature-layer benchmark: 10,000 devices x 2 years of daily history from `cashcast.synthetic`.

Times mark_censored (status + balances), calendar_features for every device-day, build for a 56-day
horizon, and the history features of training samples (8 weekly origins x 56 days on 1,000 devices, as
the forecaster draws them from one panel), and prints peak RSS.
The network is generated in a child process and handed over as Parquet, so the printed peak RSS is
the feature layer's (plus the loaded data), not the generator's. A fifth of the devices are moved to
GB/ENG and a fifth to IN/TN so the calendar is computed for three places and broadcast.

    python benchmarks/bench_features.py [--devices 10000] [--days 730]
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import features
from cashcast.config import load_config
from cashcast.synthetic import generate_network
from features.calendar import CALENDAR_COLUMNS
from features.history import HistorySums, history_columns
from features.panel import build_panel


def write_network(folder: str, n_devices: int, days: int) -> None:
    """Generate the network (80% ATMs, 12% branches, 8% recyclers) and write its tables as Parquet."""
    network = generate_network(
        n_atms=n_devices * 8 // 10, n_branches=n_devices * 12 // 100, n_recyclers=n_devices * 8 // 100, days=days
    )
    for name in ("daily", "devices", "status", "balances"):
        getattr(network, name).to_parquet(Path(folder) / f"{name}.parquet", index=False)


def training_history(daily: pd.DataFrame, devices: pd.DataFrame, as_of: pd.Timestamp, config) -> list[np.ndarray]:
    """History features (features.history) of every device at 8 weekly origins before as_of, 1-56 days ahead."""
    panel = build_panel(daily, devices, as_of, config, pad=1)
    n, origins, steps = len(panel.device_ids), panel.n_days - 56 - 7 * np.arange(8), np.arange(1, 57)
    dev = np.repeat(np.arange(n), len(origins) * len(steps))
    origin = np.tile(np.repeat(origins, len(steps)), n)
    target = origin + np.tile(steps, n * len(origins)) - 1
    year_back = panel.calendar[panel.group[dev], target, CALENDAR_COLUMNS.index("year_back_days")]
    return history_columns(HistorySums(panel), dev, origin, target, year_back)[0]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument("--training-devices", type=int, default=1_000)
    args = parser.parse_args()
    config = load_config()
    with tempfile.TemporaryDirectory() as folder:
        child = multiprocessing.get_context("spawn").Process(
            target=write_network, args=(folder, args.devices, args.days)
        )
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"generating the synthetic network failed (exit code {child.exitcode})")
        tables = {name: pd.read_parquet(Path(folder) / f"{name}.parquet") for name in ("daily", "devices", "status")}
        balances = pd.read_parquet(Path(folder) / "balances.parquet")
    daily, devices, status = tables["daily"], tables["devices"], tables["status"]
    place = np.random.default_rng(0).choice(3, len(devices), p=[0.6, 0.2, 0.2])
    devices["country"] = np.array(["CN", "GB", "IN"])[place]
    devices["subdivision"] = np.array(["", "ENG", "TN"])[place]
    as_of = daily["date"].max() + pd.Timedelta(days=1)
    print(
        f"data: {len(devices):,} devices x {args.days} days, {len(daily):,} daily rows, {len(status):,} status "
        f"intervals; peak RSS after loading {peak_rss_mb():.0f} MB"
    )

    timings = {}

    def timed(name: str, run, rows=len):  # noqa: ANN001 - a tiny local helper
        start = time.perf_counter()
        result = run()
        timings[name] = (time.perf_counter() - start, rows(result))
        return result

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", features.HolidayEstimateWarning)
        daily = timed("mark_censored (status + balances)", lambda: features.mark_censored(daily, status, balances))
        timed(
            "calendar_features (all device-days)",
            lambda: features.calendar_features(devices, daily["date"].min(), daily["date"].max(), config),
        )
        timed("build (56-day horizon)", lambda: features.build(daily, devices, as_of, 56, config))
        subset = devices["device_id"].iloc[: args.training_devices]
        timed(
            f"training samples' history ({len(subset)} devices x 8 origins x 56 days)",
            lambda: training_history(
                daily[daily["device_id"].isin(subset)], devices[devices["device_id"].isin(subset)], as_of, config
            ),
            rows=lambda columns: len(columns[0]),
        )
    total = 0.0
    for name, (seconds, rows) in timings.items():
        total += seconds
        print(f"{name}: {seconds:.2f} s, {rows:,} rows")
    print(f"total: {total:.2f} s (2 shared cores, contended); peak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
