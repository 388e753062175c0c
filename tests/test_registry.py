"""MLflow tracking and registry: run contents, champion promotion and refusal, reload in a fresh process."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

import forecasting
import ingest
from cashcast import jobs
from cashcast.config import load_config
from cashcast.workspace import Workspace
from forecasting import registry

SAMPLE_DEVICES = ["ATM-00001", "ATM-00002", "ATM-00006", "BR-0001", "RC-0001"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A workspace with five sample devices ingested and one training job registered."""
    root = tmp_path_factory.mktemp("registry")
    ws = Workspace.resolve(root / "home").ensure()
    config = load_config().updated(forecast={"backtest_folds": 2, "backtest_horizon_days": 14, "n_paths": 50})
    sample = pd.read_csv(Path(__file__).resolve().parents[1] / "data" / "sample" / "daily.csv")
    daily = root / "daily.csv"
    sample[sample["device_id"].isin(SAMPLE_DEVICES)].to_csv(daily, index=False)
    ingest.ingest_file(daily, "daily", ws, config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome = jobs.run_train(ws, config, pd.Timestamp("2026-10-01"))
    # MLflow's advice for other kinds of model stays out of the user's terminal.
    assert not [w for w in caught if "input example" in str(w.message)]
    return ws, config, outcome


def test_one_run_per_training_job_with_params_metrics_and_tables(trained):
    ws, config, outcome = trained
    registry.use_store(ws, config)
    run = MlflowClient().get_run(outcome.run_id)
    params = run.data.params
    assert params["as_of"] == "2026-10-01" and len(params["data_fingerprint"]) == 16
    assert params["forecast.backtest_folds"] == "2" and params["plan.horizon_days"] == "14"
    assert "window.train_start" in params and "window.backtest_origins" in params
    assert {"smape_mean", "mase_mean", "coverage_q95"} <= set(run.data.metrics)
    tables = {a.path for a in MlflowClient().list_artifacts(outcome.run_id, "tables")}
    assert tables == {"tables/backtest_per_device.csv", "tables/selection.csv"}
    local = mlflow.artifacts.download_artifacts(run_id=outcome.run_id, artifact_path="tables/backtest_per_device.csv")
    per_device = pd.read_csv(local)
    assert set(per_device["device_id"]) == set(SAMPLE_DEVICES)
    runs = mlflow.search_runs(experiment_names=[config.forecast.experiment])
    assert len(runs) == 1  # never one run per device
    assert str(ws.home) in run.info.artifact_uri  # the workspace keeps its own artifacts


def test_first_model_becomes_champion(trained):
    ws, config, outcome = trained
    assert outcome.promoted and outcome.version == "1"
    version = registry.champion_version(ws, config)
    assert str(version.version) == "1" and version.tags["as_of"] == "2026-10-01"


def test_worse_challenger_is_kept_but_not_promoted_then_better_one_is(trained, monkeypatch):
    ws, config, _ = trained
    challenger_score = None

    def champion_scores(score):
        def fake(model, *args, **kwargs):
            return {registry.SCORE_KEY: score}

        return fake

    # The champion (as of 10-01) has not seen the challenger's backtest window (origins 10-01 and 10-15).
    monkeypatch.setattr(forecasting, "score_window", champion_scores(1.0))  # a champion hard to beat
    refused = jobs.run_train(ws, config, pd.Timestamp("2026-10-29"))
    challenger_score = refused.metrics[registry.SCORE_KEY]
    assert not refused.promoted and challenger_score > 1.0
    assert str(registry.champion_version(ws, config).version) == "1"
    client = MlflowClient()
    flagged = client.get_model_version(config.forecast.registered_model, refused.version)
    assert flagged.tags["flagged"] == "worse than champion"
    assert client.get_run(refused.run_id).data.tags["cashcast.promoted"] == "false"

    monkeypatch.setattr(forecasting, "score_window", champion_scores(challenger_score + 50))
    accepted = jobs.run_train(ws, config, pd.Timestamp("2026-10-29"))
    assert accepted.promoted
    assert str(registry.champion_version(ws, config).version) == accepted.version

    # A champion fitted on the days a window scores would be graded in-sample against the challenger's
    # out-of-sample backtest and never lose: it is not scored, and the refit on newer history replaces it.
    monkeypatch.setattr(forecasting, "score_window", champion_scores(0.0))
    refreshed = jobs.run_train(ws, config, pd.Timestamp("2026-10-30"))
    assert refreshed.promoted and "(as of 2026-10-29) was fitted on part of this backtest window" in refreshed.reason

    # A backfill (training for a morning before the champion's) never replaces the newer champion, however it
    # scores: it serves only that morning's forecasts (a past-date nightly run promoted it, as unscored above).
    backfill = jobs.run_train(ws, config, pd.Timestamp("2026-10-20"))
    assert not backfill.promoted
    assert backfill.reason.startswith("trained for 2026-10-20, a morning before the champion's (2026-10-30)")
    assert str(registry.champion_version(ws, config).version) == refreshed.version
    tags = client.get_model_version(config.forecast.registered_model, backfill.version).tags
    assert tags["flagged"] == "trained for an earlier morning" and tags["as_of"] == "2026-10-20"
    # A nightly run for that morning again needs no training: its own version serves it (each re-run trained and
    # registered another); a past morning without one still does.
    due, why = jobs.training_due(ws, config, pd.Timestamp("2026-10-20"))
    assert not due and why == f"version {backfill.version} was trained for 2026-10-20, before the newer champion's"
    assert jobs.training_due(ws, config, pd.Timestamp("2026-10-21"))[0]


def test_registered_model_reloads_in_fresh_process_with_identical_forecasts(trained, tmp_path):
    ws, config, _ = trained
    history = jobs.load_history(ws, pd.Timestamp("2026-10-15"))
    here = registry.load_champion(ws, config).predict(history.daily, None, pd.Timestamp("2026-10-20"), 10).frame
    history.daily.to_parquet(tmp_path / "history.parquet")
    script = textwrap.dedent(
        f"""
        import mlflow, pandas as pd
        mlflow.set_tracking_uri({ws.tracking_uri()!r})
        model = mlflow.pyfunc.load_model("models:/{config.forecast.registered_model}@champion")
        daily = pd.read_parquet({str(tmp_path / "history.parquet")!r})
        out = model.predict(daily, params={{"as_of": "2026-10-20", "horizon": 10}})
        out.to_parquet({str(tmp_path / "there.parquet")!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, capture_output=True)
    there = pd.read_parquet(tmp_path / "there.parquet")
    assert len(there) == 10 * len(SAMPLE_DEVICES) and there["date"].min() == pd.Timestamp("2026-10-20")
    pd.testing.assert_frame_equal(here.reset_index(drop=True), there.reset_index(drop=True), check_dtype=False)


def test_champion_built_by_other_code_is_retrained_not_loaded(trained, monkeypatch):
    """A pickled champion from another code version is treated as absent: the night retrains, never crashes."""
    ws, config, _ = trained
    assert registry.load_champion(ws, config) is not None
    monkeypatch.setattr(registry, "code_fingerprint", lambda: "another-version")
    assert registry.champion_version(ws, config) is None
    assert registry.load_champion(ws, config) is None
    assert registry.champion_version(ws, config, any_code=True) is not None
    due, why = jobs.training_due(ws, config, pd.Timestamp("2026-10-09"))
    assert due and "another version of the code" in why


def test_champion_fitted_under_other_model_settings_is_refitted_by_the_nightly_run_only(trained, monkeypatch):
    """A corrected default country or payday must reach the model: the nightly run's training is due. An ad-hoc
    forecast with another config keeps the champion (and says so) rather than replacing the nightly run's model.
    Quantile levels, path counts and operations settings are read at predict time and change nothing."""
    ws, config, _ = trained
    champion = registry.champion_version(ws, config)
    for same in (
        config.updated(forecast={"quantiles": [0.1, 0.5, 0.9], "n_paths": 50, "retrain_every_days": 3}),
        config.updated(plan={"horizon_days": 7}, flows={"task_runner": "dask"}),
    ):
        assert not registry.settings_differ(champion, same)
    # ... and the forecast follows them, from the same champion.
    later = config.updated(forecast={"quantiles": [0.2, 0.5], "n_paths": 37})
    history = jobs.load_history(ws, pd.Timestamp("2026-10-15"))
    forecast = jobs.forecast_devices(registry.load_champion(ws, later), history, later, 5)
    assert forecast.withdrawal_paths.shape[1] == 37
    assert {"q20", "q50"} <= set(forecast.frame.columns) and "q90" not in forecast.frame.columns
    for other in (
        config.updated(devices={"country": "GB"}),
        config.updated(calendar={"paydays": [25]}),
        config.updated(forecast={"backtest_folds": config.forecast.backtest_folds + 1}),
    ):
        assert registry.settings_differ(champion, other)
        due, why = jobs.training_due(ws, other, pd.Timestamp("2026-10-31"))
        assert due and "other model settings" in why
        with pytest.warns(jobs.ModelSettingsWarning, match="other model settings"):
            assert jobs.ensure_champion(ws, other, pd.Timestamp("2026-10-31")).version == champion.version
    due, _ = jobs.training_due(ws, config, pd.Timestamp("2026-10-31"))
    assert not due
    # Once a model was fitted under the new settings, losing to the champion does not make every night
    # retrain: the cadence and drift rules take over again.
    other = config.updated(calendar={"paydays": [25]})
    monkeypatch.setattr(forecasting, "score_window", lambda *args, **kwargs: {registry.SCORE_KEY: 0.0})
    fitted_before_the_window = registry.load_champion

    def champion_from_january(ws, config):  # older than the backtest window: scored, and it wins
        model = fitted_before_the_window(ws, config)
        model.as_of_ = pd.Timestamp("2026-01-01")
        return model

    monkeypatch.setattr(registry, "load_champion", champion_from_january)
    assert not jobs.run_train(ws, other, pd.Timestamp("2026-10-31")).promoted
    _, why = jobs.training_due(ws, other, pd.Timestamp("2026-11-01"))
    assert "other model settings" not in why


def test_a_copied_or_moved_workspace_keeps_and_reads_its_models_in_its_own_folder(trained, tmp_path):
    """MLflow keeps absolute artifact paths: a workspace restored to another path went on writing its models into
    the old one, and without the old one could not load its champion ("No such artifact")."""
    ws, config, _ = trained
    shutil.copytree(ws.home, tmp_path / "restored")
    copy = Workspace.resolve(tmp_path / "restored")
    away = ws.home / "mlartifacts.away"
    ws.mlflow_artifacts.rename(away)  # the old workspace gone, as after a move
    try:
        with pytest.warns(registry.StoreMovedWarning, match=f"copied or moved from {ws.mlflow_artifacts.as_uri()}"):
            model = registry.load_champion(copy, config)
        history = jobs.load_history(copy, pd.Timestamp("2026-10-15"))
        assert len(model.predict(history.daily, None, pd.Timestamp("2026-10-15"), 7).frame) == 7 * len(SAMPLE_DEVICES)
        client = MlflowClient(tracking_uri=copy.tracking_uri())
        experiment = client.get_experiment_by_name(config.forecast.experiment)
        assert experiment.artifact_location == copy.mlflow_artifacts.as_uri()  # new runs write here
        runs = client.search_runs([experiment.experiment_id])
        assert runs and all(r.info.artifact_uri.startswith(copy.mlflow_artifacts.as_uri() + "/") for r in runs)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once re-pointed, nothing more to say
            registry.use_store(copy, config)
    finally:
        away.rename(ws.mlflow_artifacts)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert registry.load_champion(ws, config) is not None  # the original is untouched


def test_the_embedded_store_is_built_whole_or_not_at_all(tmp_path, monkeypatch):
    """A first command killed while MLflow built its tables left a half-built mlflow.db that every later command
    failed on ("table ... already exists"). The tables are built in a temporary file and renamed into place."""
    from mlflow.store.tracking import sqlalchemy_store

    ws = Workspace.resolve(tmp_path / "home").ensure()
    config = load_config()
    (ws.home / ".mlflow.db.999999.tmp").write_bytes(b"half a database")  # a creation killed earlier
    (ws.home / ".mlflow.db.999999.tmp-journal").write_bytes(b"and its journal")
    real_store = sqlalchemy_store.SqlAlchemyStore

    def killed_midway(uri, root):
        Path(uri.removeprefix("sqlite:///")).write_bytes(b"some tables")
        raise KeyboardInterrupt

    monkeypatch.setattr(sqlalchemy_store, "SqlAlchemyStore", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        registry.use_store(ws, config)
    assert not ws.mlflow_db.exists() and not list(ws.home.glob(".mlflow.db.*.tmp*"))
    monkeypatch.setattr(sqlalchemy_store, "SqlAlchemyStore", real_store)
    uri = registry.use_store(ws, config)  # the next command builds it
    assert ws.mlflow_db.exists() and not list(ws.home.glob(".mlflow.db.*.tmp*"))
    experiment = MlflowClient(tracking_uri=uri).get_experiment_by_name(config.forecast.experiment)
    assert experiment is not None and experiment.artifact_location == ws.mlflow_artifacts.as_uri()


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` (sqlite backend, proxied artifacts) on a free local port, stopped afterwards."""
    import socket
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = tmp_path / "server"
    store.mkdir()
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        f"sqlite:///{store / 'mlflow.db'}",
        "--serve-artifacts",
        "--artifacts-destination",
        str(store / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=store)
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=1).read()
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start in 60 s")
        yield uri
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_a_shared_mlflow_server_keeps_workspaces_apart_and_leaves_no_download_behind(
    mlflow_server, tmp_path, monkeypatch
):
    """Production audit: two workspaces on one server served each other's champion silently; every model load
    left its download in /tmp; an unreachable server meant four silent minutes of retries."""
    import tempfile
    import time

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    config = load_config().updated(
        forecast={"backtest_folds": 1, "backtest_horizon_days": 14, "n_paths": 50, "tracking_uri": mlflow_server}
    )
    sample = pd.read_csv(Path(__file__).resolve().parents[1] / "data" / "sample" / "daily.csv")
    daily = tmp_path / "daily.csv"
    sample[sample["device_id"].isin(SAMPLE_DEVICES[:2])].to_csv(daily, index=False)
    north, south = (Workspace.resolve(tmp_path / name).ensure() for name in ("north", "south"))
    for ws in (north, south):
        ingest.ingest_file(daily, "daily", ws, config)
    jobs.run_train(ws=north, config=config, as_of=pd.Timestamp("2026-10-01"))
    assert not (north.home / "mlflow.db").exists() and not (north.home / "mlartifacts").exists()
    before = set(scratch.iterdir())
    model = registry.load_champion(north, config)
    assert model is not None and set(scratch.iterdir()) == before  # the download is gone once unpickled
    with pytest.raises(registry.WorkspaceClashError, match="belongs to another workspace.*own \\[forecast\\]"):
        registry.champion_version(south, config)
    own = config.updated(forecast={"registered_model": "cashcast-south"})
    assert registry.champion_version(south, own) is None  # its own name: no champion yet, nobody else's
    settings = tmp_path / "south.toml"
    settings.write_text(
        f'[forecast]\ntracking_uri = "{mlflow_server}"\nregistered_model = "cashcast-south"\n'
        "backtest_folds = 1\nbacktest_horizon_days = 14\nn_paths = 50\n"
    )
    cli = [sys.executable, "-m", "flows", "train", "--home", str(south.home), "--config", str(settings)]
    done = subprocess.run([*cli, "--as-of", "2026-10-01"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # The command's result line alone: no run links (the server's) among them, no download bars.
    assert done.stdout.startswith("trained 2 devices") and len(done.stdout.splitlines()) == 1, done.stdout
    down = config.updated(forecast={"tracking_uri": "http://127.0.0.1:9"})
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="tracking server at http://127.0.0.1:9 .*does not answer"):
        registry.use_store(north, down)
    assert time.monotonic() - started < 15


def test_a_workspace_has_one_id_whoever_asks_first(tmp_path):
    """The id's draft file was named by process: threads of one process overwrote and removed each other's, and
    some read an empty id or got two (review)."""
    from concurrent.futures import ThreadPoolExecutor

    for trial in range(20):
        ws = Workspace.resolve(tmp_path / f"ws{trial}")
        with ThreadPoolExecutor(max_workers=8) as pool:
            ids = set(pool.map(registry.workspace_id, [ws] * 8))
        assert len(ids) == 1 and len(next(iter(ids))) == 32
        assert not list(ws.home.glob(".workspace-id.*"))  # no draft left behind
