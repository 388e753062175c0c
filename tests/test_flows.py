"""The nightly Prefect flows, run for real against one session-scoped Prefect test harness.

One workspace is built once per module from the shipped sample (ingest + train are the slow part)
and each test works on its own copy of the lake where it needs to change things.
"""

from __future__ import annotations

import os
import shutil
import socket
import warnings
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_device_fail
from mlflow import MlflowClient

import ingest
from cashcast import jobs
from cashcast.config import load_config
from cashcast.schema import PLAN_COLUMNS
from cashcast.workspace import Workspace
from flows import commands
from forecasting.registry import StoreMovedWarning
from ingest.report import IngestWarning
from replenishment.plan import PlanWarning

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fast_config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "fast.toml"
    path.write_text("[forecast]\nbacktest_folds = 1\nbacktest_horizon_days = 14\n[flows]\ndevices_per_task = 8\n")
    return path


@pytest.fixture(scope="module")
def nightly_run(tmp_path_factory, prefect_harness, fast_config_file):
    """The demo path: sample staged in the landing folder, nightly flow end to end."""
    ws = Workspace.resolve(tmp_path_factory.mktemp("nightly") / "home").ensure()
    config = load_config(fast_config_file)
    staged = commands.stage_sample(ws)
    result = commands.run_nightly(ws, str(fast_config_file), None)
    return ws, config, staged, result


def test_nightly_end_to_end_on_sample(nightly_run, fast_config_file):
    ws, config, staged, result = nightly_run
    plan = pd.read_csv(result["planned"]["plan"])
    assert list(plan.columns[: len(PLAN_COLUMNS)]) == PLAN_COLUMNS
    assert plan["device_id"].nunique() >= 20
    assert set(plan["action"]) <= {"load", "pickup"}
    assert (pd.to_datetime(plan["visit_date"]) >= pd.Timestamp("2026-11-01")).all()
    assert all(not p.exists() for p in staged)  # moved out of landing
    assert sorted(p.name for p in ws.processed.iterdir()) == sorted(p.name for p in staged)
    assert result["trained"]["trained"] and result["trained"]["promoted"]
    report = Path(result["report"])
    assert report.exists() and "data:image/png;base64," in report.read_text()
    forecast = pd.read_csv(result["planned"]["forecast"])
    assert {"device_id", "date", "model", "yhat", "q50", "q90", "q95", "q99"} <= set(forecast.columns)
    # The second night (same config) finds nothing new, does not retrain, and plans again.
    with pytest.warns(jobs.StaleHistoryWarning, match="planning the morning of 2026-11-01 again"):
        again = commands.run_nightly(ws, str(fast_config_file), None)  # a stopped feed looks like this: said
    assert again["ingested"] == [] and not again["trained"]["trained"]


def test_a_morning_planned_again_keeps_the_orders_its_plan_placed(nightly_run, fast_config_file, tmp_path):
    """A stalled feed and a recount: the night planned the same morning again and overwrote its plan, dropping the
    visits it had ordered (the carrier still came) from every later plan (nightly audit). Orders due before today
    (by the clock: every one of them here) stand, in the new plan's file, where the next nights find them."""
    ws, config, _, result = nightly_run
    shutil.copytree(ws.home, tmp_path / "home")
    copy = Workspace.resolve(tmp_path / "home")
    first = pd.read_csv(copy.plans / "2026-11-01" / "plan.csv", dtype={"device_id": str})
    balances = pd.read_csv(REPO / "data" / "sample" / "balances.csv", dtype={"device_id": str})
    recount = balances[balances["as_of"] == balances["as_of"].max()].assign(balance=lambda b: 0.3 * b["balance"])
    copy.landing.mkdir(parents=True, exist_ok=True)
    recount.to_csv(copy.landing / "balances-recount.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the copy's store re-pointed; the morning planned again: both said
        again = commands.run_nightly(copy, str(fast_config_file), None)
    assert again["planned"]["as_of"] == "2026-11-01"
    second = pd.read_csv(again["planned"]["plan"], dtype={"device_id": str})
    key = ["device_id", "visit_date", "order_by", "balance_after"]
    assert len(first) and len(first[key].merge(second[key])) == len(first)
    on_order = jobs.visits_on_order(copy, pd.Timestamp("2026-11-02"))
    assert (
        len(
            on_order.merge(
                first[first["visit_date"] >= "2026-11-02"][["device_id", "visit_date"]].assign(
                    visit_date=lambda f: pd.to_datetime(f["visit_date"])
                )
            )
        )
        > 0
    )


def test_nightly_publishes_prefect_artifacts(nightly_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["cashcast-nightly-summary"]))
            )

    import asyncio

    artifacts = asyncio.run(read())
    assert artifacts, "no markdown summary artifact"
    text = artifacts[-1].data
    assert "MLflow run id" in text and "cash deployed" in text


def test_a_correction_dropped_beside_its_original_is_loaded_after_it(tmp_path):
    """By the plain name, 'daily-2026-10-30-corrected.csv' sorted before 'daily-2026-10-30.csv' ('-' before '.'),
    so the original's values won (nightly audit). The master still comes first."""
    from cashcast.landing import pending_files

    ws = Workspace.resolve(tmp_path / "home").ensure()
    ws.landing.mkdir(parents=True, exist_ok=True)
    names = ["daily-2026-10-30-corrected.csv", "daily-2026-10-30 (1).csv", "daily-2026-10-30.csv", "devices.csv"]
    for name in names:
        (ws.landing / name).write_text("device_id\n")
    assert [path.name for path in pending_files(ws)] == [
        "devices.csv",
        "daily-2026-10-30.csv",
        "daily-2026-10-30 (1).csv",
        "daily-2026-10-30-corrected.csv",
    ]


@pytest.mark.filterwarnings("ignore:.*column\\(s\\) state, currency ignored:ingest.report.IngestWarning")
def test_a_landing_file_whose_name_says_nothing_is_known_by_its_columns(tmp_path):
    """An export named by the bank's system (`ATM_export_20261030.csv`) is daily by its header; the master is
    still loaded first, and a file whose columns fit no kind (or two) fails with the reason (contract audit)."""
    from cashcast.landing import pending_files, process_file

    ws = Workspace.resolve(tmp_path / "home").ensure()
    ws.landing.mkdir(parents=True, exist_ok=True)
    (ws.landing / "ATM_export_20261030.csv").write_text("device_id,date,withdrawals\nA1,2026-10-30,5000\n")
    (ws.landing / "terminals.csv").write_text("device_id,kind,capacity,state,currency\nA1,atm,200000,NY,USD\n")
    pq.write_table(
        pa.table({"device_id": ["A1"], "as_of": ["2026-10-31"], "balance": [150000.0]}), ws.landing / "x.parquet"
    )
    (ws.landing / "notes.csv").write_text("device_id,remark\nA1,new lock\n")
    # A misspelt daily export with a master column is no master: loaded as one, it overwrote A1's kind. (A real
    # master with a US `state` or a `currency` column, as terminals.csv above, still is one.)
    (ws.landing / "export_b.csv").write_text("device_id,kind,date,withdrawal\nA1,branch,2026-10-31,7\n")
    (ws.landing / "both.csv").write_text("device_id,date,withdrawals,as_of,balance\nA1,2026-10-31,7,2026-11-01,9\n")
    pq.write_table(pa.table({"device_id": ["A1"], "amounts": [[1, 2]]}), ws.landing / "lists.parquet")
    assert [p.name for p in pending_files(ws)][0] == "terminals.csv"
    outcomes = {p.name: process_file(ws, load_config(), p) for p in pending_files(ws)}
    assert {name: (o["outcome"], o.get("kind")) for name, o in outcomes.items()} == {
        "terminals.csv": ("processed", "devices"),
        "ATM_export_20261030.csv": ("processed", "daily"),
        "x.parquet": ("processed", "balances"),
        "notes.csv": ("failed", None),
        "export_b.csv": ("failed", None),
        "both.csv": ("failed", None),
        "lists.parquet": ("failed", None),
    }
    for name in ("notes.csv", "export_b.csv", "both.csv"):
        assert "cannot tell the kind of file from its name or its columns" in outcomes[name]["reason"]
    assert "hold lists or records" in outcomes["lists.parquet"]["reason"]  # its own reason, not the kind's
    assert ingest.read_daily(ws)["withdrawals"].tolist() == [5000.0]
    master = ingest.read_table(ws, "devices")
    assert master["capacity"].tolist() == [200000.0] and master["kind"].tolist() == ["atm"]


def test_corrupt_landing_file_goes_to_failed(nightly_run, fast_config_file):
    ws, config, _, _ = nightly_run
    (ws.landing).mkdir(exist_ok=True)
    (ws.landing / "daily-corrupt.csv").write_text("device,when,how much\nx,y,z\n")
    (ws.landing / "daily-book.xlsx").write_bytes(b"PK\x03\x04 a workbook")  # not left lying there unseen
    # A column of lists: pyarrow's own error type, which once stopped the night (and every night after).
    nested = pa.table({"device_id": ["ATM-00001"], "date": ["2026-11-01"], "withdrawals": [[1, 2]]})
    pq.write_table(nested, ws.landing / "daily-nested.parquet")
    # Read, but nothing of it loaded (day-first dates): not "processed", or nobody looks at it again.
    (ws.landing / "daily-dayfirst.csv").write_text("device_id,date,withdrawals\nATM-00001,31/10/2026,100\n")
    good = ws.landing / "balances-late.csv"
    good.write_text("device_id,as_of,balance\nATM-00001,2026-11-01,900000\n")
    (ws.landing / "balances").mkdir()  # its kind from the folder, which it keeps in processed/
    (ws.landing / "balances" / "counts.csv").write_text(good.read_text())
    # Loaded but for a bad row (its good row is a day the lake holds already, as it holds it): processed, and said.
    known = ingest.read_daily(ws).dropna(subset=["withdrawals"]).iloc[-1]
    device, day, amount = known["device_id"], f"{known['date']:%Y-%m-%d}", float(known["withdrawals"])
    (ws.landing / "daily-partial.csv").write_text(
        f"device_id,date,withdrawals\n{device},{day},{amount}\n{device},2026-10-3x,5\n"
    )
    with pytest.warns(Warning) as said:
        result = commands.run_nightly(ws, str(fast_config_file), None)
    notes = [str(w.message) for w in said if w.category is IngestWarning]
    failures = {note.split(" failed and was moved to ")[0] for note in notes if " failed and was moved to " in note}
    names = ("corrupt.csv", "book.xlsx", "nested.parquet", "dayfirst.csv")
    assert failures == {f"landing file daily-{name}" for name in names}
    assert any(w.category is jobs.StaleHistoryWarning for w in said)  # the same morning again: said
    outcomes = {item["file"]: item["outcome"] for item in result["ingested"]}
    assert outcomes == {
        "daily-corrupt.csv": "failed",
        "daily-book.xlsx": "failed",
        "daily-nested.parquet": "failed",
        "daily-dayfirst.csv": "failed",
        "balances-late.csv": "processed",
        "counts.csv": "processed",
        "daily-partial.csv": "processed",
    }
    partial = next(item for item in result["ingested"] if item["file"] == "daily-partial.csv")
    assert (partial["rows_read"], partial["rows_rejected"]) == (2, 1)
    rejected = "landing file daily-partial.csv: 1 of 2 rows rejected and not loaded; the rows and their reasons are in"
    assert any(note.startswith(rejected) for note in notes)
    assert "every row (1) was rejected; the reasons are in" in (ws.failed / "daily-dayfirst.csv.reason.txt").read_text()
    nested_reason = (ws.failed / "daily-nested.parquet.reason.txt").read_text()
    assert "withdrawals (list<element: int64>) hold lists" in nested_reason
    reason = (ws.failed / "daily-corrupt.csv.reason.txt").read_text()
    assert "daily-corrupt.csv" in reason and "column" in reason
    assert (ws.processed / "balances-late.csv").exists() and (ws.processed / "balances" / "counts.csv").exists()
    page = Path(result["report"]).read_text()  # cash ops read the report, not the logs
    assert "Files not ingested, rows rejected" in page and "daily-corrupt.csv failed" in page
    assert "daily-partial.csv: 1 of 2 rows rejected" in page


def test_crash_between_stages_then_clean_rerun(nightly_run, fast_config_file, monkeypatch):
    ws, config, _, first = nightly_run
    plan_path = Path(first["planned"]["plan"])
    before = plan_path.read_bytes()
    lake_before = sorted((p.relative_to(ws.lake), p.stat().st_size) for p in ws.lake.rglob("*") if p.is_file())

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash while writing the plan")

    monkeypatch.setattr(jobs, "write_plan", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        commands.run_nightly(ws, str(fast_config_file), "2026-11-01")
    assert plan_path.read_bytes() == before  # earlier output intact
    lake_after = sorted((p.relative_to(ws.lake), p.stat().st_size) for p in ws.lake.rglob("*") if p.is_file())
    assert lake_after == lake_before
    monkeypatch.undo()
    rerun = commands.run_nightly(ws, str(fast_config_file), "2026-11-01")
    assert Path(rerun["planned"]["plan"]) == plan_path and plan_path.exists()


def test_device_whose_model_raises_gets_fallback(nightly_run, fast_config_file, monkeypatch):
    ws, config, _, _ = nightly_run
    import cloudpickle

    from flows import runners

    model = cloudpickle.loads(cloudpickle.dumps(runners.cached_model(ws, config)))
    victim = "ATM-00003"
    make_device_fail(model, victim)
    monkeypatch.setattr(runners, "cached_model", lambda *args: model)
    result = commands.run_nightly(ws, str(fast_config_file), "2026-11-01")
    assert victim in result["planned"]["failures"]
    plan = pd.read_csv(result["planned"]["plan"])
    assert plan["device_id"].nunique() >= 20  # the flow completed for everyone
    victim_rows = plan[plan["device_id"] == victim]
    assert len(victim_rows) and victim_rows["reason"].str.contains("fallback").all()
    forecast = pd.read_csv(result["planned"]["forecast"])
    assert set(forecast.loc[forecast["device_id"] == victim, "model"]) == {"fallback"}


def test_plan_for_a_morning_before_the_champion_uses_no_future(nightly_run, fast_config_file, monkeypatch):
    """A past morning's chunks must not forecast with a champion trained on later days."""
    from flows import nightly, runners
    from forecasting import registry

    ws, config, _, _ = nightly_run
    champion = registry.champion_version(ws, config)
    assert pd.Timestamp(champion.tags["as_of"]) > pd.Timestamp("2026-09-01")
    used, models = [], []
    real_cached_model = runners.cached_model

    def recording(*args):
        used.append(args[2])
        models.append(real_cached_model(*args))
        return models[-1]

    monkeypatch.setattr(runners, "cached_model", recording)
    with pytest.warns(PlanWarning, match="kept apart in .*2026-09-01/late"):  # 2026-11-01 was planned already
        result = nightly.forecast_and_plan_flow(str(ws.home), str(fast_config_file), "2026-09-01")
    assert Path(result["plan"]) == ws.plans / "2026-09-01" / "late" / "plan.csv"
    model_file = ws.models / "before-2026-09-01.pkl"
    assert used and set(used) == {jobs.ModelRef(file=str(model_file))}
    assert {model.as_of_ for model in models} == {pd.Timestamp("2026-09-01")}
    assert not model_file.exists()  # removed once the chunks are done: past mornings do not pile up
    forecast = pd.read_csv(result["forecast"])
    assert pd.to_datetime(forecast["date"]).min() == pd.Timestamp("2026-09-01")
    assert registry.champion_version(ws, config).version == champion.version  # the champion is untouched
    # On the champion's own morning the chunks load the champion.
    used.clear()
    nightly.forecast_and_plan_flow(str(ws.home), str(fast_config_file), champion.tags["as_of"])
    assert set(used) == {jobs.ModelRef()}


def test_a_version_trained_for_a_past_morning_serves_it_without_refitting(nightly_run, fast_config_file, monkeypatch):
    """A past-date nightly run trains for its morning; if that version loses to the later champion, the
    morning's forecast still uses it instead of fitting a second model for the same morning."""
    import forecasting
    from flows import nightly, runners
    from forecasting import registry

    ws, config, _, _ = nightly_run
    champion = registry.champion_version(ws, config)
    jobs.run_train(ws, config, pd.Timestamp("2026-08-20"))
    own = registry.version_trained_for(ws, config, pd.Timestamp("2026-08-20"))
    assert own is not None and own.version != champion.version
    MlflowClient(tracking_uri=ws.tracking_uri(config.forecast.tracking_uri)).set_registered_model_alias(
        config.forecast.registered_model, registry.CHAMPION, champion.version
    )  # as if the morning's version had lost the comparison

    def no_fitting(*args, **kwargs):
        raise AssertionError("fitted a second model for a morning that has a registered one")

    monkeypatch.setattr(forecasting, "train", no_fitting)
    models, refs = [], []
    real_cached_model = runners.cached_model
    monkeypatch.setattr(
        runners, "cached_model", lambda *a: refs.append(a[2]) or models.append(real_cached_model(*a)) or models[-1]
    )
    with pytest.warns(PlanWarning, match="kept apart"):
        result = nightly.forecast_and_plan_flow(str(ws.home), str(fast_config_file), "2026-08-20")
    assert {model.as_of_ for model in models} == {pd.Timestamp("2026-08-20")}
    assert set(refs) == {jobs.ModelRef(version=str(own.version))}  # loaded from the registry, not copied to a file
    assert not list(ws.models.glob("before-*.pkl"))
    assert pd.to_datetime(pd.read_csv(result["forecast"])["date"]).min() == pd.Timestamp("2026-08-20")
    assert registry.champion_version(ws, config).version == champion.version


def test_dask_local_cluster_gives_identical_plans(nightly_run, fast_config_file):
    ws, config, _, first = nightly_run
    dask_config_file = fast_config_file.with_name("dask.toml")
    dask_config_file.write_text(fast_config_file.read_text() + 'task_runner = "dask"\ndask_workers = 2\n')  # [flows]
    local_run = commands.run_nightly(ws, str(fast_config_file), "2026-11-01")
    local = pd.read_csv(local_run["planned"]["plan"])
    here = f"{socket.gethostname()}:{os.getpid()}"
    assert local_run["planned"]["workers"] == [here]  # threads of this process
    result = commands.run_nightly(ws, str(dask_config_file), "2026-11-01")
    assert result["planned"]["n_chunks"] >= 2
    # The chunks ran in the LocalCluster's worker processes, not in the flow's (subflows do not inherit
    # their parent's task runner: the nightly flow sets it on forecast-and-plan from the config).
    assert result["planned"]["workers"] and here not in result["planned"]["workers"]
    dask_plan = pd.read_csv(result["planned"]["plan"])
    pd.testing.assert_frame_equal(
        local.sort_values(["device_id", "visit_date"], ignore_index=True),
        dask_plan.sort_values(["device_id", "visit_date"], ignore_index=True),
    )


def test_the_nightly_plan_in_chunks_is_the_plan_made_in_one_piece(nightly_run, tmp_path):
    """Each device's sample paths are its own: the nightly's chunks of 8 devices plan what `cashcast plan`
    plans for the whole network at once (one generator per chunk once gave the i-th device of every chunk
    the same draws, and a plan that changed with the chunk size)."""
    ws, config, _, result = nightly_run
    assert result["planned"]["n_chunks"] >= 2
    nightly = pd.read_csv(result["planned"]["plan"])
    files = jobs.run_plan(ws, config, pd.Timestamp("2026-11-01"), out=tmp_path / "one.csv")
    pd.testing.assert_frame_equal(nightly, pd.read_csv(files.plan))


def test_a_device_in_the_master_with_no_day_recorded_yet_is_planned_by_the_nightly_run(
    nightly_run, fast_config_file, tmp_path
):
    """An ATM installed and counted before its first transaction: the nightly's chunks came from the recorded
    days alone, so it was in no plan, projection, summary or report until its first day was recorded."""
    from flows import nightly

    ws, config, _, _ = nightly_run
    shutil.copytree(ws.home, tmp_path / "home")
    copy = Workspace.resolve(tmp_path / "home")
    new = tmp_path / "devices-new.csv"
    new.write_text("device_id,kind,capacity,visit_weekdays\nATM-NEW,atm,2000000,Mon-Sun\nBR-NEW,branch,,Mon-Fri\n")
    ingest.ingest_file(new, "devices", copy, config)
    recorded = jobs.lake_device_ids(copy)
    typical = jobs.network_typicals(copy, config, pd.Timestamp("2026-11-01"))
    chunks = jobs.device_chunks(recorded, jobs.unrecorded_devices(copy, recorded), 8, typical.twins)
    assert sum(chunk.count("ATM-NEW") for chunk in chunks) == 1
    assert all(set(chunk) & set(jobs.lake_device_ids(copy)) for chunk in chunks)  # none without history
    # Each joins the chunk of its twin, the network's typical device of its kind (a branch: deposits and all).
    twin = typical.twins["BR-NEW"]
    assert twin.startswith("BR-") and any({"BR-NEW", twin} <= set(chunk) for chunk in chunks)
    with pytest.warns(StoreMovedWarning):  # the copy's MLflow store is re-pointed at it
        result = nightly.forecast_and_plan_flow(str(copy.home), str(fast_config_file), "2026-11-01")
    summary = pd.read_csv(result["summary"]).set_index("device_id")
    assert "no demand recorded yet" in summary.loc["ATM-NEW", "notes"]
    assert pd.read_csv(result["projection"]).query("device_id == 'ATM-NEW'")["expected_opening_balance"].gt(0).all()
    forecast = pd.read_csv(result["forecast"]).set_index(["device_id", "date"])
    assert (forecast.loc["BR-NEW", "model"] == f"like {twin}").all()
    assert forecast.loc["BR-NEW", "deposits_yhat"].equals(forecast.loc[twin, "deposits_yhat"])


def test_served_deployment_schedule_and_parameters(tmp_path, prefect_harness, monkeypatch):
    import asyncio

    from prefect.client.orchestration import get_client

    from flows import serve

    ws = Workspace.resolve(tmp_path / "served").ensure()
    config = load_config().updated(flows={"cron": "30 1 * * *", "timezone": "Europe/London"})
    (tmp_path / "prod.toml").write_text("")
    monkeypatch.chdir(tmp_path)
    deployment_id = serve.build_deployment(ws, config, "prod.toml").apply()

    async def read():
        async with get_client() as client:
            return await client.read_deployment(deployment_id)

    deployment = asyncio.run(read())
    assert deployment.name == config.flows.deployment_name
    assert deployment.parameters["home"] == str(ws.home)
    # The run starts wherever the server or worker does: the config path is pinned absolute.
    assert deployment.parameters["config_file"] == str(tmp_path / "prod.toml")
    # By module: loaded from its file the flow is the module `nightly`, whose tasks an external Dask cluster's
    # workers (importing the package as `flows`) cannot unpickle.
    assert deployment.entrypoint == "flows.nightly.nightly_flow"
    schedule = deployment.schedules[0].schedule
    assert schedule.cron == "30 1 * * *" and schedule.timezone == "Europe/London"
    # No [flows] timezone: the bank's own clock, not Shanghai's (UK audit: 02:00 there is 18:00 in London).
    lisbon = load_config().updated(workspace={"timezone": "Europe/Lisbon"})
    assert serve.build_deployment(ws, lisbon, None).schedules[0].schedule.timezone == "Europe/Lisbon"


def test_the_work_pool_deployment_names_the_flow_by_module():
    """prefect.yaml's entrypoint imports as the package does (see the served deployment above)."""
    import importlib

    import yaml

    from flows.nightly import nightly_flow

    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "prefect.yaml").read_text())
    module, name = spec["deployments"][0]["entrypoint"].rsplit(".", 1)
    assert getattr(importlib.import_module(module), name) is nightly_flow


def test_workspace_isolation(nightly_run):
    ws, _, _, _ = nightly_run
    written = {p.relative_to(ws.home).parts[0] for p in ws.home.iterdir()}
    assert {"lake", "plans", "forecasts", "reports"} <= written


def test_worker_model_cache_keeps_only_the_latest_models(tmp_path):
    """A served process or Dask worker lives for months: it must not keep every model it ever loaded."""
    import pickle

    from flows import runners

    ws, config = Workspace(tmp_path), load_config()
    files = []
    for day in range(runners.CACHED_MODELS + 2):
        files.append(tmp_path / f"before-2026-01-0{day + 1}.pkl")
        files[-1].write_bytes(pickle.dumps({"morning": day}))
        assert runners.cached_model(ws, config, jobs.ModelRef(file=str(files[-1]))) == {"morning": day}
    assert len(runners._cache) == runners.CACHED_MODELS
    last = jobs.ModelRef(file=str(files[-1]))
    assert runners.cached_model(ws, config, last) == {"morning": len(files) - 1}  # still cached


def test_worker_model_cache_tells_apart_two_workspaces_models_of_one_server(tmp_path, monkeypatch):
    """Keyed by (server, version) alone, a Dask worker served one workspace's version 1 to another workspace whose
    own model, under its own name on the same MLflow server, was version 1 too (production audit)."""
    from flows import runners

    monkeypatch.setattr(runners, "load_model", lambda ws, config, ref: (config.forecast.registered_model, ref.version))
    ws = Workspace(tmp_path)
    server = load_config().updated(forecast={"tracking_uri": "http://mlflow.bank:5000"})
    first = runners.cached_model(
        ws, server.updated(forecast={"registered_model": "cash-north"}), jobs.ModelRef(version="1")
    )
    second = runners.cached_model(
        ws, server.updated(forecast={"registered_model": "cash-south"}), jobs.ModelRef(version="1")
    )
    assert (first, second) == (("cash-north", "1"), ("cash-south", "1"))


def test_training_fans_out_over_the_configured_dask_cluster(nightly_run, fast_config_file, monkeypatch):
    """With task_runner = "dask", the nightly run's training fits go to the cluster chunk by chunk, and the
    plan's chunks to the same cluster: one LocalCluster is started for the whole run."""
    from flows import runners
    from forecasting import backtest

    ws, config, _, _ = nightly_run
    dask_config_file = fast_config_file.with_name("dask-train.toml")
    small_chunks = "[forecast]\ntrain_devices_per_task = 10\n"
    dask_config_file.write_text(
        fast_config_file.read_text().replace("[forecast]\n", small_chunks) + 'task_runner = "dask"\ndask_workers = 2\n'
    )
    submitted, real_executor = [], backtest.training_executor

    class Recording:
        def __init__(self, inner):
            self.inner = inner

        def submit(self, fn, *args, **kwargs):
            submitted.append(args[-1])  # the Task
            return self.inner.submit(fn, *args, **kwargs)

    monkeypatch.setattr(backtest, "training_executor", lambda executor: real_executor(Recording(executor)))
    started, real_cluster = [], runners.local_cluster
    monkeypatch.setattr(runners, "local_cluster", lambda n: started.append(real_cluster(n)) or started[-1])
    result = commands.run_nightly(ws, str(dask_config_file), "2026-11-01", force_train=True)
    assert result["trained"]["trained"]
    assert len(started) == 1
    here = f"{socket.gethostname()}:{os.getpid()}"
    assert result["planned"]["workers"] and here not in result["planned"]["workers"]
    n_devices = len(jobs.lake_device_ids(ws))
    chunks = sum(task.part == "devices" and task.stage == 0 for task in submitted if task.panel.values.shape[0] <= 10)
    assert chunks >= -(-n_devices // 10)  # every withdrawal chunk of the backtest went to the cluster
    assert {task.part for task in submitted} == {"devices", "network"}


def test_the_next_mornings_chunks_plan_around_the_visits_on_order(nightly_run, fast_config_file):
    from flows import nightly

    ws, _, _, first = nightly_run
    earlier = pd.read_csv(first["planned"]["plan"], dtype={"device_id": str})
    on_order = earlier[(earlier["order_by"] < "2026-11-02") & (earlier["visit_date"] >= "2026-11-02")]
    assert len(on_order)
    result = nightly.forecast_and_plan_flow(str(ws.home), str(fast_config_file), "2026-11-02")
    projection = pd.read_csv(result["projection"], dtype={"device_id": str}).set_index(["device_id", "date"])
    assert all(projection.loc[(row.device_id, row.visit_date), "visit"] for row in on_order.itertuples())
    plan = pd.read_csv(result["plan"], dtype={"device_id": str})
    kept = plan.merge(on_order[["device_id", "visit_date"]], on=["device_id", "visit_date"])
    assert kept.empty  # listed by the plan that ordered them, not again
