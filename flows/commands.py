"""What each `cashcast` command does: resolve workspace and config, call a job or a flow, report."""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from pathlib import Path

from cashcast import jobs
from cashcast.config import Config, load_config
from cashcast.landing import pending_files
from cashcast.locking import workspace_lock
from cashcast.workspace import SAMPLE_DIR, SAMPLE_KINDS, Workspace


def _progress() -> bool:
    return sys.stderr.isatty()


def cmd_ingest(ws: Workspace, config: Config, args: argparse.Namespace) -> int:
    import ingest
    from flows.cli import print_json

    for path in args.files:  # every file readable with its columns before any is loaded: a bad one loads none
        ingest.open_source(path, args.kind, config)
    status = 0
    for path in args.files:
        report = ingest.ingest_file(path, args.kind, ws, config, progress=_progress())
        if args.json:
            print_json(report.to_dict())
        else:
            print(report.line())
        if report.rows_read and report.rows_rejected == report.rows_read:
            status = 1  # a failed file, as the nightly run counts it: its warning names the first row at fault
    return status


def cmd_train(ws: Workspace, config: Config, args: argparse.Namespace) -> int:
    from flows.runners import training_on_configured_runner

    with training_on_configured_runner(config):
        outcome = jobs.run_train(ws, config, jobs.parse_date(args.as_of), progress=_progress())
    state = "promoted to champion" if outcome.promoted else "registered but NOT promoted"
    smape, mase = (outcome.metrics.get(name, float("nan")) for name in ("smape_mean", "mase_mean"))
    scores = (
        f"sMAPE {smape:.2f}, MASE {mase:.3f}"
        if math.isfinite(smape)
        else "not backtested (too little history for a backtest window)"
    )
    devices = f"{outcome.n_devices} device{'s' if outcome.n_devices != 1 else ''}"
    print(
        f"trained {devices} on history before {outcome.as_of:%Y-%m-%d}: {scores}; "
        f"version {outcome.version} {state} ({outcome.reason}); MLflow run {outcome.run_id}"
    )
    return 0


def cmd_forecast(ws: Workspace, config: Config, args: argparse.Namespace) -> int:
    path = jobs.run_forecast(ws, config, jobs.parse_date(args.as_of), args.horizon, args.out, progress=_progress())
    print(f"forecast written to {path}")
    return 0


def cmd_plan(ws: Workspace, config: Config, args: argparse.Namespace) -> int:
    files = jobs.run_plan(
        ws, config, jobs.parse_date(args.as_of), args.horizon, args.balances, args.out, progress=_progress()
    )
    print(f"plan written to {files.plan} (projection {files.projection}, summary {files.summary})")
    return 0


def cmd_backtest(ws: Workspace, config: Config, args: argparse.Namespace) -> int:
    from flows.runners import training_on_configured_runner

    with training_on_configured_runner(config):  # the replay retrains as the nightly run would
        out = jobs.run_backtest(ws, config, jobs.parse_date(args.start), jobs.parse_date(args.end), args.out)
    print(f"backtest KPIs written to {out / 'kpis.csv'} (per device: {out / 'per_device.csv'})")
    return 0


def run_nightly(
    ws: Workspace,
    config_file: str | None,
    as_of: str | None,
    force_train: bool = False,
    wait: float = 0.0,
) -> dict:
    """Run the nightly flow; its forecast-and-plan chunks run on the configured task runner."""
    from flows.nightly import nightly_flow

    # A busy workspace is said in one line before Prefect starts (a failed flow run prints its traceback first),
    # and held until the flow ends, so a second run cannot slip in during Prefect's start-up.
    # A relative --config would be looked for in each Dask worker's own folder: handed over absolute, as `serve` does.
    config_file = str(Path(config_file).resolve()) if config_file else None
    with workspace_lock(ws, timeout=wait):
        return nightly_flow(str(ws.home), config_file, as_of, force_train, wait)


def cmd_nightly(ws: Workspace, config: Config, args: argparse.Namespace) -> int:
    if not ws.table("daily").exists() and not pending_files(ws):
        # Said before Prefect starts: a flow run that fails on it logs a traceback a first-time user reads as a crash.
        raise jobs.NoDataError(
            f"{ws.home}: nothing to forecast: the lake has no daily history and {ws.landing} holds no files;"
            " drop files there or run `cashcast ingest`"
        )
    result = run_nightly(ws, args.config, args.as_of, args.force_train, args.wait)
    print(f"plan written to {result['planned']['plan']}")
    print(f"report written to {result['report']}")
    return 0


def stage_sample(ws: Workspace) -> list[Path]:
    """Copy the shipped synthetic network into the landing folder (the raw files are never edited)."""
    staged = []
    for kind in SAMPLE_KINDS:
        source = SAMPLE_DIR / f"{kind}.csv"
        target = ws.landing / f"{kind}-sample.csv"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        staged.append(target)
    return staged


def cmd_demo(ws: Workspace, config: Config, args: argparse.Namespace) -> int:
    stage_sample(ws)
    store = ws.tracking_uri(config.forecast.tracking_uri)
    print(f"demo: synthetic network staged in {ws.landing}; running the nightly flow (Prefect, MLflow at {store})")
    result = run_nightly(ws, args.config, None)
    print(f"plan written to {result['planned']['plan']}")
    print(f"report written to {result['report']}")
    return 0


def cmd_serve(ws: Workspace, config: Config, args: argparse.Namespace) -> int:
    from flows import serve

    deployment = serve.build_deployment(ws, config, args.config)
    if args.once:
        deployment_id = deployment.apply()
        print(
            f"deployment {serve.full_name(config)} registered ({deployment_id}); cron {config.flows.cron} "
            f"{config.schedule_zone}"
        )
        return 0
    serve.serve_forever(deployment)
    return 0


COMMANDS = {
    "ingest": cmd_ingest,
    "train": cmd_train,
    "forecast": cmd_forecast,
    "plan": cmd_plan,
    "backtest": cmd_backtest,
    "nightly": cmd_nightly,
    "demo": cmd_demo,
    "serve": cmd_serve,
}


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    ws = Workspace.resolve(args.home, config.workspace.landing_dir).ensure()
    ws.keep_tool_state_inside()
    return COMMANDS[args.command](ws, config, args)
