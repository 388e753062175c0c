"""The served nightly deployment: cron schedule and time zone from [flows], no parameters needed."""

from __future__ import annotations

from prefect import serve
from prefect.schedules import Cron

from cashcast.config import Config
from cashcast.workspace import Workspace
from flows.nightly import nightly_flow


def full_name(config: Config) -> str:
    return f"{nightly_flow.name}/{config.flows.deployment_name}"


def build_deployment(ws: Workspace, config: Config, config_file: str | None):
    """The nightly deployment for this workspace (parameters pin the workspace and config file)."""
    return nightly_flow.to_deployment(
        name=config.flows.deployment_name,
        schedule=Cron(config.flows.cron, timezone=config.flows.timezone),
        parameters={"home": str(ws.home), "config_file": config_file},
        description="Cashcast nightly: ingest landing files, train when due, forecast, plan, report.",
        tags=["cashcast"],
    )


def serve_forever(deployment) -> None:
    serve(deployment)
