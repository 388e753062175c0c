"""`cashcast plan` end to end on a 10,000-device network (issue #5 target: <= 30 s on 2 cores).

Builds a workspace with a synthetic network (~2 years of daily history; or reuses one with
--workspace DIR), trains a champion once with `cashcast train` (untimed; again only when the
champion is missing or was built by other code), then times `cashcast plan --home WS --as-of D`
as a subprocess (wall time, peak RSS) and breaks it down by stage in-process with the same
`cashcast.jobs` functions the command calls.

    python benchmarks/bench_plan_cli.py [--devices 10000] [--workspace DIR] [--repeat 1] [--no-stages]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from bench_nightly import network_workspace


def cashcast(home: Path, command: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "flows", command, "--home", str(home), *args]


def timed_run(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GiB) of one child process (its own rusage, not the bench's)."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if child.returncode:
        raise SystemExit(f"{' '.join(command)} failed with status {child.returncode}")
    return wall, usage.ru_maxrss / 1024**2


def ensure_workspace(root: Path, n_devices: int):
    """The benchmark workspace: synthetic landing files ingested into the lake once."""
    from cashcast.config import load_config
    from cashcast.landing import pending_files, process_file
    from cashcast.workspace import Workspace

    ws = Workspace.resolve(root / f"ws-{n_devices}")
    if ws.table("daily").exists():
        return ws
    ws, _ = network_workspace(root, n_devices, seed=2)
    config = load_config()
    for path in pending_files(ws):
        outcome = process_file(ws, config, path)
        if outcome["outcome"] != "processed":
            raise SystemExit(f"{path}: {outcome['reason']}")
    return ws


def stage_times(ws, as_of: pd.Timestamp) -> list[tuple[str, float]]:
    """Seconds per stage of `jobs.run_plan`, measured in-process one after the other (the command
    overlaps the lake read with the champion load, the terms with the forecast and the forecast
    file with the planner)."""
    import replenishment
    from cashcast import jobs
    from cashcast.config import load_config
    from forecasting import registry

    config = load_config()
    times: list[tuple[str, float]] = []

    def clock(name: str, started: float) -> float:
        now = time.perf_counter()
        times.append((name, now - started))
        return now

    mark = time.perf_counter()
    model = registry.load_champion(ws, config)
    mark = clock("champion load (MLflow + unpickle)", mark)
    history = jobs.load_history(ws, as_of)
    mark = clock("load_history (lake, censoring)", mark)
    forecast = jobs.forecast_devices(model, history, config, config.plan.forecast_days)
    mark = clock("forecast_devices (with sample paths)", mark)
    terms = jobs.device_terms(history, config)
    opening = jobs.latest_balances(history.balances, as_of)
    mark = clock("device_terms + latest_balances", mark)
    result = replenishment.plan_network(forecast, terms, opening, as_of, config)
    mark = clock("plan_network", mark)
    jobs.write_plan(ws, as_of, forecast.frame, result, None)
    clock("write_plan (plan, projection, summary, forecast)", mark)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--workspace", type=Path, help="folder to build the workspace in, or reuse it from")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs of the command")
    parser.add_argument("--no-stages", action="store_true", help="skip the in-process stage breakdown")
    args = parser.parse_args()

    from cashcast import jobs
    from cashcast.config import load_config
    from cashcast.workspace import Workspace
    from forecasting import registry

    with tempfile.TemporaryDirectory() as tmp:
        root = args.workspace or Path(tmp)
        started = time.perf_counter()
        ws = ensure_workspace(root, args.devices)
        print(f"(untimed) workspace {ws.home}: {time.perf_counter() - started:.1f} s")
        as_of = jobs.next_as_of(Workspace.resolve(ws.home))
        day = f"{as_of:%Y-%m-%d}"
        if registry.champion_version(ws, load_config()) is None:
            wall, rss = timed_run(cashcast(ws.home, "train", "--as-of", day))
            print(f"(untimed) cashcast train: {wall:.1f} s, peak RSS {rss:.2f} GiB")
        for run in range(args.repeat):
            wall, rss = timed_run(cashcast(ws.home, "plan", "--as-of", day))
            print(
                f"cashcast plan --as-of {day}, {args.devices} devices (run {run + 1}): {wall:.1f} s wall, "
                f"peak RSS {rss:.2f} GiB (target <= 30 s; {os.cpu_count()} shared cores, contended)"
            )
        if not args.no_stages:
            print("stages in-process (same jobs functions):")
            times = stage_times(ws, as_of)
            for name, seconds in times:
                print(f"  {name:<52} {seconds:6.1f} s")
            print(f"  {'sum':<52} {sum(s for _, s in times):6.1f} s (plus interpreter and imports in the CLI)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
