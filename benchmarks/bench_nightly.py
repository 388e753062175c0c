"""Nightly flow wall time on synthetic networks (issue targets: <= 90 s each on 2 cores).

1. `nightly` on 1,000 devices x 2 years with retraining (ingest of the landing files included);
2. `forecast-and-plan` on 10,000 devices x 2 years without retraining (the champion is trained first,
   untimed), in device chunks on the configured task runner.

Prints wall times, the per-device cost and peak RSS.
Run: python benchmarks/bench_nightly.py [--small N] [--large N] [--config FILE]
(e.g. a config with `[flows] task_runner = "dask"` to time the flows on a Dask LocalCluster).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def network_workspace(root: Path, n_devices: int, seed: int):
    """A workspace whose landing folder holds a synthetic network of about n_devices devices."""
    from cashcast.synthetic import generate_network
    from cashcast.workspace import Workspace

    ws = Workspace.resolve(root / f"ws-{n_devices}").ensure()
    n_branches = max(1, n_devices // 10)
    n_recyclers = max(1, n_devices // 20)
    net = generate_network(
        n_atms=n_devices - n_branches - n_recyclers,
        n_branches=n_branches,
        n_recyclers=n_recyclers,
        start="2024-11-01",
        days=730,
        seed=seed,
    )
    ws.landing.mkdir(parents=True, exist_ok=True)
    net.devices.to_parquet(ws.landing / "devices.parquet", index=False)
    net.daily.drop(columns=["censored"]).to_parquet(ws.landing / "daily.parquet", index=False)
    net.status.to_parquet(ws.landing / "status.parquet", index=False)
    net.balances.to_parquet(ws.landing / "balances.parquet", index=False)
    return ws, len(net.devices)


def peak_rss_gib() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024**2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", type=int, default=1000, help="devices for the nightly run with retraining")
    parser.add_argument("--large", type=int, default=10000, help="devices for forecast-and-plan without retraining")
    parser.add_argument("--config", help="config file merged over the defaults, as for cashcast --config")
    args = parser.parse_args()

    from prefect.testing.utilities import prefect_test_harness

    from cashcast import jobs
    from cashcast.config import load_config
    from flows import commands
    from flows.nightly import forecast_and_plan_flow, on_configured_runner

    config = load_config(args.config)
    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=120):
        ws, n = network_workspace(Path(tmp), args.small, seed=1)
        started = time.perf_counter()
        result = commands.run_nightly(ws, args.config, None, force_train=True)
        small = time.perf_counter() - started
        print(
            f"nightly with retrain, {n} devices x 730 days: {small:.1f} s wall "
            f"({1000 * small / n:.1f} ms per device); plan {result['planned']['plan']}"
        )

        ws, n = network_workspace(Path(tmp), args.large, seed=2)
        for path in sorted(
            ws.landing.iterdir(), key=lambda p: ["devices", "daily", "status", "balances"].index(p.stem)
        ):
            import ingest

            ingest.ingest_file(path, path.stem, ws, config)
        as_of = jobs.next_as_of(ws)
        started = time.perf_counter()
        jobs.run_train(ws, config, as_of)
        print(f"(untimed set-up) training {n} devices: {time.perf_counter() - started:.1f} s")
        flow = on_configured_runner(forecast_and_plan_flow, config)
        started = time.perf_counter()
        planned = flow(str(ws.home), args.config, f"{as_of:%Y-%m-%d}")
        large = time.perf_counter() - started
        print(
            f"forecast-and-plan without retrain, {n} devices: {large:.1f} s wall "
            f"({1000 * large / n:.1f} ms per device) in {planned['n_chunks']} chunks"
        )
    print(f"peak RSS: {peak_rss_gib():.2f} GiB; cores: {os.cpu_count()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
