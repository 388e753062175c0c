"""The `cashcast` command line (also `python -m flows`), as fixed in CONTRACT.md.

Single-stage commands (ingest, train, forecast, plan, backtest) call the jobs directly and start no
Prefect server; `nightly`, `demo` and `serve` run the Prefect flows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from datetime import date
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The temporary local API can take well over Prefect's default 20 s to start on a busy 2-core machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

KINDS = ("transactions", "daily", "devices", "balances", "status")


def _date(text: str) -> str:
    """An ISO day only: `01/08/2017` or `2017` would be read as some day, not necessarily the one meant."""
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()):
            return date.fromisoformat(text.strip()).isoformat()
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be a whole number >= 1")
    return value


def _days_up_to(limit: int) -> Callable[[str], int]:
    """A horizon argument: a whole number of days from 1 to `limit` (MAX_PLAN_DAYS, the limit on [plan]
    horizon_days; MAX_FORECAST_DAYS: past a year the calendar is all a model has left)."""

    def days(text: str) -> int:
        value = _positive(text)
        if value > limit:
            raise argparse.ArgumentTypeError(f"must be at most {limit} days")
        return value

    return days


def _output(text: str) -> Path:
    if not text.lower().endswith((".csv", ".parquet")):
        raise argparse.ArgumentTypeError(f"{text}: output name must end in .csv or .parquet")
    return Path(text)


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr, like every other error of the command line
    (the usage block it would print first is what `--help` is for)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _workspace_options(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--home", default=default, help="workspace folder (default: $CASHCAST_HOME, else data/ of the checkout)"
    )
    parser.add_argument("--config", default=default, help="TOML file merged over configs/default.toml")


def build_parser() -> argparse.ArgumentParser:
    """`--home` and `--config` go before or after the command; after it, they win."""
    from cashcast.config import MAX_FORECAST_DAYS, MAX_PLAN_DAYS

    common = argparse.ArgumentParser(add_help=False)
    _workspace_options(common, argparse.SUPPRESS)  # absent after the command: keep what came before it
    parser = _Parser(
        prog="cashcast",
        description="Forecast ATM and branch cash demand and plan least-cost replenishment.",
    )
    _workspace_options(parser, None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "ingest",
        parents=[common],
        help="load CSV or Parquet files into the lake",
        description="Validate, de-duplicate and load files into the Parquet lake. Idempotent: "
        "re-ingesting a file changes nothing; bad rows go to the rejects table with their reason.",
    )
    p.add_argument("--kind", required=True, choices=KINDS, help="what the files hold (see CONTRACT.md)")
    p.add_argument("--json", action="store_true", help="print one JSON object per file instead of a sentence")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")

    p = sub.add_parser(
        "train",
        parents=[common],
        help="fit, backtest, select, log to MLflow and register",
        description="Fit every device's models on history before the as-of date, backtest them, "
        "select per device, log the run to MLflow and register the bundle; the champion alias "
        "moves only when the new model is no worse on the same backtest window (a champion fitted on part of "
        "that window is replaced: it would be graded in-sample).",
    )
    p.add_argument("--as-of", type=_date, help="train on history before this day (default: after the last day)")

    p = sub.add_parser(
        "forecast",
        parents=[common],
        help="daily forecasts from the registered champion",
        description="Daily forecasts for days D..D+N-1 from the registered model's champion "
        "(models:/<[forecast] registered_model>@champion; trains first when none exists). "
        "Columns: device_id, date, model, yhat, q50.. .",
    )
    p.add_argument("--as-of", type=_date, required=True, help="first forecast day D (history through D-1)")
    p.add_argument(
        "--horizon",
        type=_days_up_to(MAX_FORECAST_DAYS),
        required=True,
        help=f"number of days N (at most {MAX_FORECAST_DAYS})",
    )
    p.add_argument("--out", type=_output, help="output .csv or .parquet (default: <home>/forecasts/D/forecast.csv)")

    p = sub.add_parser(
        "plan",
        parents=[common],
        help="replenishment plan from the as-of day on",
        description="Least-cost visit and load plan per device at its service level. Writes the "
        "plan CSV (one row per device and visit), a daily projection and a summary.",
    )
    p.add_argument("--as-of", type=_date, required=True, help="plan from the morning of this day")
    p.add_argument(
        "--balances",
        type=Path,
        help="balances file (device_id, balance[, as_of]); default: the latest ingested balances",
    )
    p.add_argument(
        "--horizon", type=_days_up_to(MAX_PLAN_DAYS), help="plan horizon in days (default [plan] horizon_days)"
    )
    p.add_argument("--out", type=_output, help="plan output .csv or .parquet (default: <home>/plans/D/plan.csv)")

    p = sub.add_parser(
        "nightly",
        parents=[common],
        help="the whole nightly Prefect flow",
        description="Ingest the landing folder, train when due, forecast, plan and report, as "
        "one Prefect flow run. A second run on the same workspace waits or refuses.",
    )
    p.add_argument("--as-of", type=_date, help="default: the day after the last recorded day")
    p.add_argument("--force-train", action="store_true", help="retrain even when not due")
    p.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for another run on the workspace to finish (default: refuse at once)",
    )

    p = sub.add_parser(
        "backtest",
        parents=[common],
        help="replay the nightly cycle over past days",
        description="Replay re-planning over past days against actual demand: KPIs for Cashcast, "
        "the baselines and the perfect-foresight optimum (kpis.csv, per_device.csv, and daily.parquet: every "
        "policy's balance, visit and lost demand per device and day).",
    )
    p.add_argument("--start", type=_date, required=True, help="first replayed day")
    p.add_argument("--end", type=_date, required=True, help="last replayed day")
    p.add_argument("--out", type=Path, help="output folder (default: <home>/backtests/START_END)")

    p = sub.add_parser(
        "demo",
        parents=[common],
        help="synthetic network, nightly flow end to end",
        description="Put the shipped synthetic sample network into the workspace's landing "
        "folder, run the nightly flow end to end and print where the plan is.",
    )

    p = sub.add_parser(
        "serve",
        parents=[common],
        help="serve the nightly deployment on its cron schedule",
        description="Register the nightly deployment with the Prefect API (cron and time zone "
        "from [flows]) and serve it until interrupted. Needs a running `prefect server start` "
        "and PREFECT_API_URL pointing at it.",
    )
    p.add_argument("--once", action="store_true", help="register the deployment and exit without serving")
    return parser


_warned: set[str] = set()  # the messages this command has printed


def _short_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings for people: one line, no source location, each message once (training and forecasting
    both meet the same estimated holiday year, say)."""
    text = str(message)
    if text not in _warned:
        _warned.add(text)
        print(f"cashcast: warning: {text}", file=sys.stderr)


INTERRUPT_GRACE_SECONDS = 10.0  # after a Ctrl-C or SIGTERM, the most a command may take to wind down


class _Interrupts:
    """Ctrl-C and SIGTERM (a service manager's stop, `timeout`) end a command the same way: KeyboardInterrupt, so
    locks are let go and Prefect's temporary server is stopped; exit 130. Should winding down hang (a Ctrl-C in a
    terminal also stops Prefect's temporary server, and its client then retries for minutes), a second signal or
    INTERRUPT_GRACE_SECONDS end the process at once: every output is written whole or not at all."""

    def __init__(self, command: str) -> None:
        self.command, self.count, self.timer = command, 0, None
        self.previous: dict[int, object] = {}

    def message(self) -> str:
        return f"cashcast {self.command}: interrupted; outputs are written whole or not at all, so run it again"

    def stop_now(self) -> None:
        print(self.message(), file=sys.stderr, flush=True)
        _stop_temporary_servers()  # os._exit skips the atexit hook that stops them: none may outlive the command
        os._exit(130)

    def handle(self, signum, frame) -> None:
        self.count += 1
        if self.count > 1:
            self.stop_now()
        self.timer = threading.Timer(INTERRUPT_GRACE_SECONDS, self.stop_now)
        self.timer.daemon = True
        self.timer.start()
        raise KeyboardInterrupt

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(signum) is not signal.SIG_IGN:  # a shell's background job ignores Ctrl-C
                    self.previous[signum] = signal.signal(signum, self.handle)
        return self

    def __exit__(self, *exc) -> None:
        if self.timer is not None:
            self.timer.cancel()
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def _stop_temporary_servers() -> None:
    """Stop the temporary Prefect servers this process started (Prefect's own, and the one its Dask workers
    share), as their atexit hook would."""
    server = sys.modules.get("prefect.server.api.server")
    if server is None:
        return
    for instance in list(server.SubprocessASGIServer._instances.values()):
        with contextlib.suppress(Exception):  # stopping on the way out: nothing left to report a failure to
            instance.stop()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _warned.clear()
    warnings.showwarning = _short_warning
    from flows import commands

    interrupts = _Interrupts(args.command)
    try:
        with interrupts:
            status = commands.run(args)
        if interrupts.count:  # a command that caught the interrupt itself (Prefect's `serve` does) still was
            print(interrupts.message(), file=sys.stderr)
            return 130
        return status
    except KeyboardInterrupt:  # say so: a silent 130 left the operator guessing what was kept
        print(interrupts.message(), file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line on stderr; the traceback is for --debug users of python -m
        if interrupts.count:  # what the interrupted work failed on afterwards is no error of its own
            print(interrupts.message(), file=sys.stderr)
            return 130
        if os.environ.get("CASHCAST_DEBUG"):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, OSError) and exc.strerror:  # "[Errno 21] ..." says nothing to a cash-ops reader
            message = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
        api = os.environ.get("PREFECT_API_URL")
        if api and _is_refused_http(exc):  # MLflow's server is checked up front; Prefect's client speaks httpx
            message = f"{message} (the Prefect API at {api}: is `prefect server start` running?)"
        print(f"cashcast {args.command}: error: {message}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError | FileNotFoundError | LookupError) else 1


def _is_refused_http(exc: BaseException) -> bool:
    """An httpx connection failure (Prefect's client) anywhere in the exception's chain."""
    while exc is not None:
        if type(exc).__name__ in ("ConnectError", "ConnectTimeout") and type(exc).__module__.startswith("httpx"):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def print_json(obj: object) -> None:
    print(json.dumps(obj, default=str))


if __name__ == "__main__":
    sys.exit(main())
