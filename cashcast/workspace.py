"""Where a workspace keeps its files.

Every command works in one workspace folder (`--home`, else `CASHCAST_HOME`, else `data/` of the
checkout) and touches nothing outside it, so two workspaces never interfere.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

CHECKOUT_DATA_DIR = Path(__file__).resolve().parents[1] / "data"
SAMPLE_DIR = CHECKOUT_DATA_DIR / "sample"  # the shipped demo network (python -m cashcast.synthetic --out data/sample)
SAMPLE_KINDS = ("devices", "daily", "status", "balances")  # its files, <kind>.csv, the device master first


@dataclass(frozen=True)
class Workspace:
    """Paths of one workspace; creating the object creates nothing on disk."""

    home: Path
    landing_dir: str = "landing"  # [workspace] landing_dir: inside the workspace, or an absolute path

    @classmethod
    def resolve(cls, home: str | Path | None = None, landing_dir: str = "landing") -> Workspace:
        chosen = home or os.environ.get("CASHCAST_HOME") or CHECKOUT_DATA_DIR
        return cls(Path(chosen).expanduser().resolve(), landing_dir)

    @property
    def lake(self) -> Path:
        return self.home / "lake"

    def table(self, name: str) -> Path:
        """Folder of one lake table (daily, devices, balances, status, transactions)."""
        return self.lake / name

    @property
    def rejects(self) -> Path:
        return self.home / "rejects"

    @property
    def landing(self) -> Path:
        """Where the nightly flow picks up new files (a drop folder elsewhere, e.g. an SFTP inbox, works too).

        Never the workspace, a folder holding it, or one of its own folders: the nightly run moves every file
        it finds there to processed/ or failed/, so a landing_dir of "" or "." would sweep up the lake."""
        folder = (self.home / Path(self.landing_dir).expanduser()).resolve()
        home = self.home.resolve()
        folders = (self.lake, self.processed, self.failed, self.plans, self.forecasts, self.reports, self.models)
        own = [path.resolve() for path in (*folders, self.rejects, self.backtests, self.mlflow_artifacts)]
        own.append(home / ".cache")
        if (
            not self.landing_dir.strip()
            or folder == home
            or folder in home.parents
            or any(folder.is_relative_to(path) for path in own)
        ):
            raise ValueError(
                f"[workspace] landing_dir = {self.landing_dir!r} is {folder}: the nightly run moves whatever it finds"
                " there, so it must be a folder of its own, not the workspace, one holding it or one of its folders"
                " (the default is 'landing')"
            )
        return folder

    @property
    def processed(self) -> Path:
        return self.home / "processed"

    @property
    def failed(self) -> Path:
        return self.home / "failed"

    @property
    def forecasts(self) -> Path:
        return self.home / "forecasts"

    @property
    def plans(self) -> Path:
        return self.home / "plans"

    @property
    def reports(self) -> Path:
        return self.home / "reports"

    @property
    def backtests(self) -> Path:
        return self.home / "backtests"

    @property
    def models(self) -> Path:
        """Local model cache and state (champion metadata, last training date)."""
        return self.home / "models"

    @property
    def mlflow_db(self) -> Path:
        return self.home / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def lock_file(self) -> Path:
        return self.home / ".nightly.lock"

    def tracking_uri(self, configured: str = "") -> str:
        """The MLflow store: the configured URI, else the embedded sqlite file in the workspace."""
        return configured or f"sqlite:///{self.mlflow_db}"

    def ensure(self) -> Workspace:
        if self.home.exists() and not self.home.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{self.home}: the workspace (--home) is a file, not a folder")
        self.home.mkdir(parents=True, exist_ok=True)
        return self

    def keep_tool_state_inside(self) -> None:
        """Point the libraries' own caches at this workspace: a command writes nothing outside it (the
        Prefect API aside). Matplotlib keeps its font cache under `<home>/.cache/matplotlib` (0.2 s to
        build once); a temporary Dask cluster's scratch space (lock files, spilled data) goes under
        `<home>/.cache/dask`, not `/tmp/dask-scratch-space`; MLflow's usage telemetry, which writes
        `~/.config/mlflow` and calls out to the network, is off; so are the run links an MLflow server prints to
        standard output (among the command's own result lines) and its download progress bars. Values already
        set in the environment win. Call before those libraries load."""
        os.environ.setdefault("MPLCONFIGDIR", str(self.home / ".cache" / "matplotlib"))
        os.environ.setdefault("DASK_TEMPORARY_DIRECTORY", str(self.home / ".cache" / "dask"))
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
