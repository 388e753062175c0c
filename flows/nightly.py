"""Prefect flows: thin wiring around `cashcast.jobs`.

`nightly` = ingest the landing folder -> train when due -> forecast and plan in device chunks ->
report. Every parameter has a default so a deployment needs none. Tasks take device chunks (never
one task per device) and read their own devices from the lake, so on Dask the work runs where the
data is read and only small frames travel back.
"""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from cashcast import jobs, landing, report
from cashcast.config import Config, load_config
from cashcast.io import read_written
from cashcast.locking import workspace_lock
from cashcast.workspace import Workspace
from flows import runners
from ingest.report import IngestWarning


def _context(home: str | None, config_file: str | None) -> tuple[Workspace, Config]:
    config = load_config(config_file)
    return Workspace.resolve(home, config.workspace.landing_dir).ensure(), config


@task(name="ingest-landing-file")
def ingest_landing_file(home: str, config_file: str | None, path: str) -> dict[str, Any]:
    ws, config = _context(home, config_file)
    return landing.process_file(ws, config, Path(path))


@flow(name="ingest")
def ingest_flow(home: str | None = None, config_file: str | None = None) -> list[dict[str, Any]]:
    """Ingest every new file in the landing folder; each moves to processed/ or failed/ with a reason."""
    ws, config = _context(home, config_file)
    logger = get_run_logger()
    files = landing.pending_files(ws)
    ingest_task = ingest_landing_file.with_options(**runners.retry_options(config))
    results = [ingest_task(str(ws.home), config_file, str(path)) for path in files]
    for item in results:
        logger.info("%s: %s", item["file"], item["outcome"])
        note = landing.attention_note(item)
        if note:  # the run goes on without it (or its bad rows): say so where the operator looks
            warnings.warn(IngestWarning(note), stacklevel=2)
    return results


@flow(name="train")
def train_flow(
    home: str | None = None,
    config_file: str | None = None,
    as_of: str | None = None,
    force: bool = False,
    dask_address: str | None = None,
) -> dict[str, Any]:
    """Retrain when due (cadence or drift) or when forced; log and register in MLflow. With Dask
    configured, `dask_address` names the cluster to fit on (the nightly run's), else the config's."""
    ws, config = _context(home, config_file)
    if dask_address:
        config = config.updated(flows={"dask_address": dask_address})
    logger = get_run_logger()
    due, why = jobs.training_due(ws, config, jobs.parse_date(as_of))
    if not (due or force):
        logger.info("training not due: %s", why)
        return jobs.training_record(ws, config, why)
    with runners.training_on_configured_runner(config):
        outcome = jobs.run_train(ws, config, jobs.parse_date(as_of))
    logger.info(
        "trained %d device%s as of %s: run %s, version %s, %s (%s)",
        outcome.n_devices,
        "" if outcome.n_devices == 1 else "s",
        f"{outcome.as_of:%Y-%m-%d}",
        outcome.run_id,
        outcome.version,
        "promoted to champion" if outcome.promoted else "NOT promoted",
        outcome.reason,
    )
    return jobs.training_record(ws, config, why, outcome)


@task(name="forecast-and-plan-chunk")
def plan_chunk(
    home: str,
    config_file: str | None,
    as_of: str,
    horizon: int,
    device_ids: list[str],
    model: jobs.ModelRef,
    on_order: pd.DataFrame | None = None,
    made: pd.DataFrame | None = None,
    typical: jobs.NetworkTypicals | None = None,
) -> dict[str, Any]:
    """Forecast and plan one chunk of devices with the `model` of the morning, around their visits
    `on_order`, from their counts brought forward over the visits `made`; reads only those devices' history.
    `typical`: the network's typical devices, which forecast and size a device with no recorded day yet."""
    ws, config = _context(home, config_file)
    model = runners.cached_model(ws, config, model)
    history = jobs.load_history(ws, jobs.parse_date(as_of), device_ids=device_ids)
    config = config.updated(plan={"horizon_days": horizon})
    forecast, result, failures = jobs.plan_devices(
        model, history, config, on_order=on_order, made=made, part=True, typical=typical
    )
    return {
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "forecast": forecast.frame,
        "plan": result.plan,
        "projection": result.projection,
        "summary": result.summary,
        "failures": failures,
    }


@flow(name="forecast-and-plan")
def forecast_and_plan_flow(
    home: str | None = None,
    config_file: str | None = None,
    as_of: str | None = None,
    horizon: int | None = None,
    own_ordered_before: str | None = None,
) -> dict[str, Any]:
    """Forecast and plan every device in chunks, then write plan, projection, summary and forecast.
    `own_ordered_before`: planning a morning planned already, the day before which its plan's orders were placed
    (`jobs.own_plan_orders`)."""
    ws, config = _context(home, config_file)
    logger = get_run_logger()
    as_of_ts = jobs.parse_date(as_of) or jobs.next_as_of(ws)
    horizon = horizon or config.plan.horizon_days
    jobs.require_history_window(ws, config, as_of_ts)  # once for the network; no chunk refuses on its own
    model = jobs.morning_model(ws, config, as_of_ts)  # the chunks load it where they run
    if model != jobs.ModelRef():
        logger.info(
            "the champion saw days after %s: forecasting with a model trained before it", f"{as_of_ts:%Y-%m-%d}"
        )
    recorded = jobs.lake_device_ids(ws)
    new = jobs.unrecorded_devices(ws, recorded)
    # A device with no recorded day is forecast as the network's typical one of its kind and sized on it, as
    # `cashcast plan` does: it joins that device's chunk.
    typical = jobs.network_typicals(ws, config, as_of_ts) if new else None
    chunks = jobs.device_chunks(recorded, new, config.flows.devices_per_task, typical and typical.twins)
    ordered_before = jobs.parse_date(own_ordered_before)
    kept = jobs.own_plan_orders(ws, as_of_ts, ordered_before)
    on_order = jobs.visits_on_order(ws, as_of_ts, kept, ordered_before)
    made = jobs.visits_made(ws, as_of_ts)
    chunk_task = plan_chunk.with_options(**runners.retry_options(config))
    day = f"{as_of_ts:%Y-%m-%d}"
    try:
        futures = [
            chunk_task.submit(
                str(ws.home),
                config_file,
                day,
                horizon,
                chunk,
                model,
                _for_devices(on_order, chunk),
                _for_devices(made, chunk),
                typical,
            )
            for chunk in chunks
        ]
        parts = [f.result() for f in futures]
    finally:
        if model.file is not None:  # ~1 kB a device: one per past morning would pile up
            Path(model.file).unlink(missing_ok=True)
    merged = jobs.merge_chunks(parts, kept)
    files = jobs.write_plan(ws, as_of_ts, merged["forecast"], merged["result"], None)
    failures = merged["failures"]
    if failures:
        logger.warning("%d device(s) used the fallback forecast: %s", len(failures), ", ".join(sorted(failures)))
    workers = sorted({part["worker"] for part in parts})  # host:pid of the processes that ran the chunks
    logger.info("plan written to %s; %d chunk(s) ran on %s", files.plan, len(chunks), ", ".join(workers))
    return {
        "as_of": f"{as_of_ts:%Y-%m-%d}",
        "plan": str(files.plan),
        "summary": str(files.summary),
        "projection": str(files.projection),
        "forecast": str(files.forecast),
        "failures": failures,
        "n_chunks": len(chunks),
        "workers": workers,
    }


def _for_devices(frame: pd.DataFrame | None, device_ids: list[str]) -> pd.DataFrame | None:
    """The rows of `frame` for `device_ids` (a chunk's share of a small network-wide table)."""
    return None if frame is None else frame[frame["device_id"].isin(device_ids)].reset_index(drop=True)


def on_configured_runner(subflow, config: Config):
    """`subflow` with the task runner `[flows]` configures (threads, or Dask).

    Prefect gives a subflow its own default runner, not its parent's, and a served deployment runs the
    flow as decorated: so the runner is chosen here, from the config the run reads. Ingest stays on
    threads (a few landing files, I/O bound); forecast-and-plan is where the chunks are.
    """
    return subflow.with_options(task_runner=runners.make_task_runner(config))


@flow(name="nightly")
def nightly_flow(
    home: str | None = None,
    config_file: str | None = None,
    as_of: str | None = None,
    force_train: bool = False,
    lock_timeout_seconds: float = 0.0,
) -> dict[str, Any]:
    """The whole night: ingest landing files, train when due, forecast, plan, report."""
    ws, config = _context(home, config_file)
    logger = get_run_logger()
    with workspace_lock(ws, timeout=lock_timeout_seconds):
        ingested = ingest_flow(str(ws.home), config_file)
        as_of_ts = jobs.parse_date(as_of) or jobs.next_as_of(ws)
        day = f"{as_of_ts:%Y-%m-%d}"
        again = jobs.same_morning_again(ws, as_of_ts) if as_of is None else None
        if again is not None:
            logger.warning(again[1])
            warnings.warn(jobs.StaleHistoryWarning(again[1]), stacklevel=2)
        ordered_before = None if again is None else f"{again[0]:%Y-%m-%d}"
        thin = jobs.thin_last_day(ws, as_of_ts - pd.Timedelta(days=1)) if as_of is None else None
        if thin is not None:
            logger.warning(thin)
            warnings.warn(jobs.ThinDayWarning(thin), stacklevel=2)
        with runners.dask_cluster(config, prefect_tasks=True) as on_cluster:  # one for training and the chunks
            trained = train_flow(str(ws.home), config_file, day, force_train, on_cluster.flows.dask_address)
            planned = on_configured_runner(forecast_and_plan_flow, on_cluster)(
                str(ws.home), config_file, day, own_ordered_before=ordered_before
            )
        report_path = report.write_report(ws, config, as_of_ts, planned, trained, ingested)
    summary = read_written(planned["summary"])
    create_markdown_artifact(
        key="cashcast-nightly-summary",
        markdown=report.summary_markdown(as_of_ts, ingested, trained, planned, summary, report_path),
        description=f"Cashcast nightly run for {as_of_ts:%Y-%m-%d}",
    )
    at_risk = report.devices_at_risk(read_written(planned["plan"]))
    create_table_artifact(
        key="cashcast-devices-at-risk",
        table=at_risk.to_dict(orient="records"),
        description="Devices most at risk of running out before their next visit",
    )
    logger.info("nightly run done: plan %s, report %s", planned["plan"], report_path)
    return {"ingested": ingested, "trained": trained, "planned": planned, "report": str(report_path)}
