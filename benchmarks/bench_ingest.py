"""Ingest throughput and memory: a large transactions CSV (with txn_id and re-sent rows) into a fresh lake.

Usage: python benchmarks/bench_ingest.py [--rows 10000000] [--devices 2000] [--dup-share 0.01]
Prints the generated file size, rows/s of the ingest and its peak RSS (measured in a child process,
so the generator's memory does not count). Targets: >= 500,000 rows/s and <= 1 GiB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cashcast.synthetic import write_transactions_csv

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import json, resource, sys, time
from cashcast.config import load_config
from cashcast.workspace import Workspace
from ingest import ingest_file
started = time.perf_counter()
report = ingest_file(sys.argv[1], "transactions", Workspace.resolve(sys.argv[2]), load_config())
elapsed = time.perf_counter() - started
usage = resource.getrusage(resource.RUSAGE_SELF)
cpu = usage.ru_utime + usage.ru_stime
print(json.dumps({**report.to_dict(), "elapsed": elapsed, "cpu": cpu, "peak_kib": usage.ru_maxrss}))
"""


def measure_ingest(csv_path: Path, home: Path) -> dict:
    """Ingest in a fresh interpreter so its peak RSS is the ingest's alone."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(csv_path), str(home)], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise SystemExit(f"ingest failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def show(label: str, run: dict) -> None:
    print(
        f"{label}: {run['rows_read']:,} rows in {run['elapsed']:.1f} s"
        f" = {run['rows_read'] / run['elapsed']:,.0f} rows/s (CPU {run['cpu']:.1f} s incl. start-up)"
        f" (target >= 500,000); peak RSS {run['peak_kib'] / 2**20:.2f} GiB (target <= 1 GiB); loaded"
        f" {run['rows_loaded']:,}, duplicates {run['rows_duplicate']:,}, rejected {run['rows_rejected']:,}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--dup-share", type=float, default=0.01)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        csv_path = Path(tmp) / "transactions.csv"
        started = time.perf_counter()
        # A year of a network's switch feed, a share re-sent after retries (txn_id repeated), as the demo's.
        write_transactions_csv(
            csv_path, args.rows, n_devices=args.devices, with_duplicates=args.dup_share, span_days=366
        )
        print(
            f"generated {args.rows:,} rows in {time.perf_counter() - started:.1f} s, "
            f"{csv_path.stat().st_size / 2**20:,.0f} MiB"
        )
        show("ingest", measure_ingest(csv_path, Path(tmp) / "ws"))
        show("re-ingest of the same file", measure_ingest(csv_path, Path(tmp) / "ws"))


if __name__ == "__main__":
    main()
