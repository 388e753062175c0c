"""The served nightly deployment: cron schedule and time zone from [flows], no parameters needed."""

from __future__ import annotations

from pathlib import Path

from prefect import serve
from prefect.deployments.runner import EntrypointType
from prefect.schedules import Cron

from cashcast.config import Config
from cashcast.workspace import Workspace
from flows.nightly import nightly_flow


def full_name(config: Config) -> str:
    return f"{nightly_flow.name}/{config.flows.deployment_name}"


def build_deployment(ws: Workspace, config: Config, config_file: str | None):
    """The nightly deployment for this workspace (parameters pin the workspace and config file).

    Named by module (`flows.nightly.nightly_flow`), not by file: a flow loaded from its file path is the
    top-level module `nightly`, its tasks reach a Dask cluster as `nightly.plan_chunk`, and workers that
    import the package as `flows` cannot find them. A relative config path is made absolute: the run starts
    wherever the server or worker does."""
    return nightly_flow.to_deployment(
        name=config.flows.deployment_name,
        schedule=Cron(config.flows.cron, timezone=config.schedule_zone),
        parameters={"home": str(ws.home), "config_file": str(Path(config_file).resolve()) if config_file else None},
        description="Cashcast nightly: ingest landing files, train when due, forecast, plan, report.",
        tags=["cashcast"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def serve_forever(deployment) -> None:
    serve(deployment)
