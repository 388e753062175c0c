"""Shared fixtures: isolated workspaces, the shipped sample, one Prefect test harness per session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

REPO = Path(__file__).resolve().parents[1]
CUB_DAILY = REPO / "data" / "cub_atm" / "daily.csv"
SAMPLE_DIR = REPO / "data" / "sample"


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A fresh workspace folder; CASHCAST_HOME points at it so nothing leaks into data/."""
    from cashcast.workspace import Workspace

    home = tmp_path / "home"
    monkeypatch.setenv("CASHCAST_HOME", str(home))
    return Workspace.resolve(home).ensure()


@pytest.fixture(scope="session")
def cub_daily() -> pd.DataFrame:
    """The real CUB ATM history in the daily contract."""
    from cashcast.schema import validate_daily

    raw = pd.read_csv(CUB_DAILY)
    frame = raw.rename(columns={"series_id": "device_id", "total_amount_withdrawn": "withdrawals"})
    return validate_daily(frame[["device_id", "date", "withdrawals"]])


@pytest.fixture(scope="session")
def prefect_harness():
    """ONE temporary Prefect API for the whole session (it takes 8-18 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def sample_files(tmp_path) -> Path:
    """A private copy of the shipped sample (raw input is never edited in place)."""
    target = tmp_path / "sample"
    shutil.copytree(SAMPLE_DIR, target)
    return target


class ExplodingModel:
    """Wraps a fitted candidate model; raises for one device as a corrupt parameter set would."""

    def __init__(self, inner, device: str):
        self.inner = inner
        self.device = device

    def predict(self, panel, horizon):
        if self.device in set(panel.device_ids):
            raise FloatingPointError(f"diverged for {self.device}")
        return self.inner.predict(panel, horizon)


def make_device_fail(model, device: str) -> None:
    """Route `device` to a candidate that raises, as if its fitted parameters were corrupt."""
    target = model.withdrawals_
    target.choice_.loc[device] = "ets"
    target.models_["ets"] = ExplodingModel(target.models_["ets"], device)
