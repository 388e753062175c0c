"""MLflow tracking and the model registry for the per-device forecasters.

One MLflow run per training job (never one per device): config, data window and fingerprint as
params, aggregate metrics, the per-device backtest table as an artifact, and every per-device fit
bundled in ONE pyfunc model registered as `cashcast-forecaster`. The alias `champion` moves to a
new version only when its backtest score is no worse than the serving champion's on the same window.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
import sqlite3
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from cashcast.config import Config
from cashcast.locking import file_lock
from cashcast.workspace import Workspace

CHAMPION = "champion"
SCORE_KEY = "smape_mean"
PIP_PACKAGES = ("pandas", "numpy", "pyarrow", "lightgbm", "statsmodels", "scipy", "holidays", "cloudpickle")


class ForecasterModel(mlflow.pyfunc.PythonModel):
    """pyfunc face of a CashForecaster: daily history in, forecast frame out.

    params: `as_of` (YYYY-MM-DD, default the day after the last history day) and `horizon` (days).
    """

    def __init__(self, forecaster: Any) -> None:
        self.forecaster = forecaster

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None):
        from cashcast.schema import validate_daily

        params = params or {}
        daily = validate_daily(model_input, source="model input")
        as_of = pd.Timestamp(params.get("as_of") or daily["date"].max() + pd.Timedelta(days=1))
        horizon = int(params.get("horizon", 14))
        return self.forecaster.predict(daily, None, as_of, horizon).frame


def model_signature() -> ModelSignature:
    """Daily history in (the daily contract), forecast frame out; as_of and horizon as params."""
    optional = ("deposits", "n_withdrawals", "n_deposits")
    inputs = Schema(
        [ColSpec("string", "device_id"), ColSpec("datetime", "date"), ColSpec("double", "withdrawals")]
        + [ColSpec("double", name, required=False) for name in optional]
        + [ColSpec("boolean", "censored", required=False)]
    )
    params = ParamSchema([ParamSpec("as_of", "string", ""), ParamSpec("horizon", "long", 14)])
    return ModelSignature(inputs=inputs, params=params)


@dataclass
class RegistryOutcome:
    """What a training job left in MLflow."""

    run_id: str
    version: str
    promoted: bool
    challenger_score: float
    champion_score: float | None
    reason: str


def _pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in PIP_PACKAGES:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return pins


def use_store(ws: Workspace, config: Config) -> str:
    """Point MLflow at the workspace's store and make sure the experiment keeps its artifacts there too."""
    uri = ws.tracking_uri(config.forecast.tracking_uri)
    ws.ensure()
    if not config.forecast.tracking_uri:
        create_embedded_store(ws)
        relocate_embedded_store(ws)
    elif uri.startswith("http://"):  # https: MLflow's certificate settings decide what reaches it, not a probe
        check_server(uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    if client.get_experiment_by_name(config.forecast.experiment) is None:
        location = None if config.forecast.tracking_uri else ws.mlflow_artifacts.as_uri()
        client.create_experiment(config.forecast.experiment, artifact_location=location)
    mlflow.set_experiment(config.forecast.experiment)
    return uri


SERVER_TIMEOUT_SECONDS = 10.0


@functools.cache
def check_server(uri: str) -> None:
    """Fail at once, naming the setting, when the MLflow server does not answer (once per process): MLflow's own
    retries spent about four silent minutes on every command before a line that never named the server."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=SERVER_TIMEOUT_SECONDS) as answer:
            answer.read()
    except urllib.error.HTTPError:
        return  # it answers (a proxy's 401 or 404 too): MLflow's own calls say what is wrong
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConnectionError(
            f"the MLflow tracking server at {uri} ([forecast] tracking_uri) does not answer: {reason}"
        ) from None


def create_embedded_store(ws: Workspace) -> None:
    """Create the workspace's sqlite store whole or not at all, once.

    MLflow builds its tables over a few seconds on first use: a run killed meanwhile left a half-built
    `mlflow.db` that every later command failed on ("table ... already exists"), and two first commands at
    once raced to build it. The tables are built in a temporary file and renamed into place, under a lock.
    """
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore  # SQLAlchemy: only when building

    if ws.mlflow_db.exists():
        return
    with file_lock(ws.home / ".mlflow.db.lock"):
        if ws.mlflow_db.exists():  # built by the command that held the lock first
            return
        for stale in ws.home.glob(".mlflow.db.*.tmp*"):  # left by a creation that was killed (and its journal)
            stale.unlink(missing_ok=True)
        building = ws.home / f".mlflow.db.{os.getpid()}.tmp"
        try:
            with _logger_at("mlflow.store.db.utils", logging.WARNING):  # "Creating initial ... tables"
                store = SqlAlchemyStore(f"sqlite:///{building}", ws.mlflow_artifacts.as_uri())
            store.engine.dispose()
            os.replace(building, ws.mlflow_db)
        finally:
            building.unlink(missing_ok=True)


class StoreMovedWarning(UserWarning):
    """The workspace was copied or moved: its embedded MLflow store was re-pointed at its own artifacts."""


def _artifact_roots(locations: list[str]) -> set[str]:
    """The `<home>/mlartifacts` URIs the embedded store's experiments keep their artifacts under (experiment 0
    keeps its own in a numbered sub-folder)."""
    found = (re.fullmatch(r"(file://.*/mlartifacts)(/\d+)?", location or "") for location in locations)
    return {match[1] for match in found if match}


def relocate_embedded_store(ws: Workspace) -> None:
    """Point a copied or moved workspace's store at the workspace's own `mlartifacts/`.

    MLflow keeps absolute artifact paths in `mlflow.db`: a workspace restored from a backup to another path (or
    copied) went on writing its models into the old workspace, and once that was gone it could not load its
    champion ("No such artifact"). Every path under the old root in the store's text columns is rewritten to
    the new root, in one transaction, under the store's lock; a store already at home costs one small read.
    """
    root = ws.mlflow_artifacts.as_uri()

    def old_roots(con: sqlite3.Connection) -> set[str]:
        return _artifact_roots([row[0] for row in con.execute("SELECT artifact_location FROM experiments")]) - {root}

    with closing(sqlite3.connect(ws.mlflow_db)) as con:
        if not old_roots(con):
            return
    with file_lock(ws.home / ".mlflow.db.lock"), closing(sqlite3.connect(ws.mlflow_db)) as con, con:
        old = old_roots(con)  # again under the lock: a command started beside this one may have done it
        if not old:
            return
        tables = [row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for column in con.execute(f'PRAGMA table_info("{table}")').fetchall():
                if not re.search("CHAR|TEXT|CLOB", column[2].upper()):
                    continue
                for prefix in old:
                    con.execute(
                        f'UPDATE "{table}" SET "{column[1]}" = ? || substr("{column[1]}", ?) '
                        f"WHERE substr(\"{column[1]}\", 1, ?) = ? AND substr(\"{column[1]}\", ?, 1) IN ('', '/')",
                        (root, len(prefix) + 1, len(prefix), prefix, len(prefix) + 1),
                    )
    warnings.warn(
        StoreMovedWarning(
            f"{ws.home}: the workspace was copied or moved from {', '.join(sorted(old))}: "
            "its MLflow store now keeps and reads its models here"
        ),
        stacklevel=2,
    )


@contextmanager
def _logger_at(name: str, level: int) -> Iterator[None]:
    """A library logger held at `level` for the block (MLflow's INFO and advice are not news to our users)."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


@functools.cache
def code_fingerprint() -> str:
    """Hash of the code a pickled forecaster depends on (forecasting, features, config and data contracts).

    A champion pickled by other code may not load or may silently mis-read its state, so it is
    treated as absent: the next run retrains instead of crashing or falling back everywhere.
    """
    import cashcast.config
    import cashcast.schema
    import features

    here = Path(__file__).resolve().parent
    files = sorted([*here.glob("*.py"), *Path(features.__file__).resolve().parent.glob("*.py")])
    files += [Path(cashcast.config.__file__), Path(cashcast.schema.__file__)]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# [forecast] settings that the fit does not read: predict-time levels and paths, and operations.
NOT_FITTED_SETTINGS = frozenset(
    {
        "quantiles",
        "n_paths",
        "n_jobs",
        "registered_model",
        "tracking_uri",
        "experiment",
        "retrain_every_days",
        "drift_threshold",
        "train_devices_per_task",
    }
)


def settings_fingerprint(config: Config) -> str:
    """Hash of the settings a fitted forecaster depends on: `[forecast]` (but NOT_FITTED_SETTINGS),
    `[calendar]` and the devices' default country and subdivision (their holidays are features).

    A champion fitted under other settings would go on forecasting with the old ones (a corrected
    default country, say) until its next scheduled retrain: the nightly run's training is due instead
    (`jobs.training_due`), and ad-hoc commands warn (`jobs.ensure_champion`).
    """
    fitted = {
        "forecast": config.forecast.model_dump(exclude=set(NOT_FITTED_SETTINGS)),
        "calendar": config.calendar.model_dump(),
        "place": [config.devices.country, config.devices.subdivision],
    }
    return hashlib.sha256(json.dumps(fitted, sort_keys=True, default=str).encode()).hexdigest()[:16]


def settings_differ(version: Any, config: Config) -> bool:
    """Whether a registered version was fitted under other model settings than `config`'s."""
    return version.tags.get("settings") != settings_fingerprint(config)


def champion_version(ws: Workspace, config: Config, any_code: bool = False) -> Any | None:
    """The registered champion version, or None before the first promotion.

    Unless `any_code`, a champion built by other code (see code_fingerprint) counts as none. One fitted
    under other settings still serves (see settings_differ): an ad-hoc command with another config must
    not retrain and replace the nightly run's model behind its back.
    """
    client = MlflowClient(tracking_uri=use_store(ws, config))
    try:
        version = client.get_model_version_by_alias(config.forecast.registered_model, CHAMPION)
    except MlflowException:
        return None
    owner = version.tags.get(WORKSPACE_TAG)
    if config.forecast.tracking_uri and owner is not None and owner != (mine := workspace_id(ws)):
        raise WorkspaceClashError(
            f"the registered model '{config.forecast.registered_model}' on {config.forecast.tracking_uri} belongs to"
            f" another workspace (id {owner}; {ws.home} is {mine}): give each workspace on a shared"
            " MLflow server its own [forecast] registered_model"
        )
    if not any_code and version.tags.get("code") != code_fingerprint():
        return None
    return version


WORKSPACE_TAG = "workspace"


class WorkspaceClashError(LookupError):
    """Two workspaces would share one registered model on a shared MLflow server."""


def workspace_id(ws: Workspace) -> str:
    """The workspace's own id (kept in `<home>/.workspace-id`, made on first use), tagged on its model versions:
    workspaces sharing an MLflow server must not serve each other's champion."""
    path = ws.home / ".workspace-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    ws.ensure()
    draft = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")  # one per caller: threads share a pid
    draft.write_text(uuid.uuid4().hex)
    try:
        os.link(draft, path)  # whole or not at all: of two commands started together, the first one's id stands
    except FileExistsError:
        pass
    finally:
        draft.unlink(missing_ok=True)
    return path.read_text().strip()


def _versions_of_this_code(ws: Workspace, config: Config) -> list[Any]:
    client = MlflowClient(tracking_uri=use_store(ws, config))
    try:
        versions = client.search_model_versions(f"name='{config.forecast.registered_model}'")
    except MlflowException:
        return []
    code = code_fingerprint()
    return [v for v in versions if v.tags.get("code") == code]


def latest_version(ws: Workspace, config: Config) -> Any | None:
    """The newest registered version of this code, promoted or not."""
    return max(_versions_of_this_code(ws, config), key=lambda v: int(v.version), default=None)


def version_trained_for(ws: Workspace, config: Config, as_of: pd.Timestamp) -> Any | None:
    """The newest registered version of this code and these settings trained for the morning of `as_of`,
    promoted or not.

    A past-date nightly run trains for its own morning; when that version loses to a later champion it
    is still the honest model for that morning, so it is reused instead of fitting another one.
    """
    day = f"{pd.Timestamp(as_of):%Y-%m-%d}"
    mine = [
        v for v in _versions_of_this_code(ws, config) if v.tags.get("as_of") == day and not settings_differ(v, config)
    ]
    return max(mine, key=lambda v: int(v.version), default=None)


def load_version(ws: Workspace, config: Config, number: str | int) -> Any:
    """The CashForecaster of the registered version `number`.

    From a server the model is downloaded into a temporary folder removed once it is unpickled: MLflow's own
    download folder stayed in /tmp, about 60 kB a device on every load, in every command and Dask worker.
    """
    use_store(ws, config)
    uri = f"models:/{config.forecast.registered_model}/{number}"
    # suppress_warnings skips MLflow's check of the logged requirements against this environment (~1 s).
    if not config.forecast.tracking_uri:  # the embedded store's artifacts are read where they lie
        return mlflow.pyfunc.load_model(uri, suppress_warnings=True).unwrap_python_model().forecaster
    with tempfile.TemporaryDirectory(prefix="cashcast-model-") as folder:
        model = mlflow.pyfunc.load_model(uri, suppress_warnings=True, dst_path=folder)
        return model.unwrap_python_model().forecaster


def load_champion(ws: Workspace, config: Config) -> Any | None:
    """The champion CashForecaster (the version `champion_version` checked), or None when there is none yet."""
    version = champion_version(ws, config)
    return None if version is None else load_version(ws, config, version.version)


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else key, inner, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, list) else str(value)


def config_params(config: Config) -> dict[str, str]:
    """The whole config as MLflow params ('plan.horizon_days': '14'): a run says what it ran under."""
    params: dict[str, str] = {}
    _flatten("", config.model_dump(), params)
    return params


def log_training(
    result: Any,
    config: Config,
    ws: Workspace,
    *,
    as_of: pd.Timestamp,
    fingerprint: str,
    champion_score: float | None,
    extra_tags: dict[str, str] | None = None,
    unscored_champion: str | None = None,
    keep_champion: str | None = None,
) -> RegistryOutcome:
    """Log one training job, register its bundle, and move `champion` when it is no worse.

    `champion_score` is the serving champion's score on this run's backtest window (None: no champion, or
    one that cannot be scored fairly there, whose reason is `unscored_champion`). `keep_champion`: why this
    version must not replace the champion whatever its score (it was trained for an earlier morning).
    """
    use_store(ws, config)
    params = config_params(config)
    window = {
        f"window.{k}": (v if isinstance(v, str) else json.dumps(v, default=str)) for k, v in result.window.items()
    }
    challenger = float(result.metrics[SCORE_KEY])
    promote = keep_champion is None and (
        champion_score is None or (math.isfinite(challenger) and challenger <= champion_score + 1e-9)
    )
    reason = keep_champion or (
        unscored_champion or "no comparable champion (first model, or one built by other code)"
        if champion_score is None
        else f"backtest sMAPE {challenger:.3f} vs champion {champion_score:.3f} on the same window"
    )
    with mlflow.start_run(run_name=f"train-{as_of:%Y-%m-%d}") as run:
        mlflow.log_params({**params, **window, "as_of": f"{as_of:%Y-%m-%d}", "data_fingerprint": fingerprint})
        mlflow.log_metrics({k: float(v) for k, v in result.metrics.items() if _is_number(v)})
        with tempfile.TemporaryDirectory() as tmp:
            for name, table in (("backtest_per_device", result.backtest), ("selection", result.selection)):
                path = Path(tmp) / f"{name}.csv"
                table.to_csv(path, index=False)
                mlflow.log_artifact(str(path), artifact_path="tables")
        with _quiet_model_logging():
            info = mlflow.pyfunc.log_model(
                name="forecaster",
                python_model=ForecasterModel(result.model),
                pip_requirements=_pip_requirements(),
                signature=model_signature(),
                registered_model_name=config.forecast.registered_model,
            )
        mlflow.set_tags(
            {
                "cashcast.as_of": f"{as_of:%Y-%m-%d}",
                "cashcast.promoted": str(promote).lower(),
                "cashcast.promotion_reason": reason,
                **(extra_tags or {}),
            }
        )
        if champion_score is not None:
            mlflow.log_metric("champion_smape_same_window", champion_score)
    version = str(info.registered_model_version)
    client = MlflowClient()
    client.set_model_version_tag(config.forecast.registered_model, version, "as_of", f"{as_of:%Y-%m-%d}")
    client.set_model_version_tag(config.forecast.registered_model, version, SCORE_KEY, f"{challenger:.6f}")
    client.set_model_version_tag(config.forecast.registered_model, version, "code", code_fingerprint())
    client.set_model_version_tag(config.forecast.registered_model, version, "settings", settings_fingerprint(config))
    client.set_model_version_tag(config.forecast.registered_model, version, WORKSPACE_TAG, workspace_id(ws))
    if promote:
        client.set_registered_model_alias(config.forecast.registered_model, CHAMPION, version)
    else:
        flag = "trained for an earlier morning" if keep_champion else "worse than champion"
        client.set_model_version_tag(config.forecast.registered_model, version, "flagged", flag)
    return RegistryOutcome(run.info.run_id, version, promote, challenger, champion_score, reason)


@contextmanager
def _quiet_model_logging() -> Iterator[None]:
    """MLflow's advice to pass an input example and to log models from code is for other models: the
    signature is given, and the bundle is pickled on purpose. Kept out of users' terminals."""
    with _logger_at("mlflow.pyfunc", logging.ERROR), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*input example was not provided", category=UserWarning)
        yield


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(float(value))
