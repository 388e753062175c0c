"""Atomic output, CSV formula escaping, and the workspace lock."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cashcast import io as cashcast_io
from cashcast.io import atomic_path, escape_formulas, read_table, write_table, write_tables
from cashcast.locking import WorkspaceBusyError, workspace_lock
from cashcast.workspace import Workspace


def test_atomic_path_leaves_old_file_on_crash(tmp_path: Path):
    target = tmp_path / "plan.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half written")
        raise RuntimeError("crash")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["plan.csv"]


def test_an_unwritable_target_is_named_not_its_temporary_neighbour(tmp_path: Path):
    blocked = tmp_path / "file"
    blocked.write_text("a file where a folder should be")
    with pytest.raises(OSError, match=f"cannot write {blocked / 'plan.csv'}"):
        write_table(pd.DataFrame({"a": [1]}), blocked / "plan.csv")
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(OSError, match=f"cannot write {tmp_path / 'folder.csv'}: a folder of that name is in the way"):
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "folder.csv")
    assert [p.name for p in (tmp_path / "folder.csv").iterdir()] == []  # nothing written into or beside it


def test_a_set_of_files_is_replaced_whole_or_not_at_all(tmp_path: Path, monkeypatch):
    """A plan's projection, summary and plan were renamed into place one by one as each was written: a kill
    between them left a new projection beside the old plan (kill audit). Now nothing moves until all are written."""
    paths = [tmp_path / "plans" / name for name in ("projection.csv", "summary.csv", "plan.csv")]
    write_tables([(pd.DataFrame({"run": ["old"]}), path) for path in paths])
    real = cashcast_io._write_csv
    written = []

    def dies_on_the_last(frame, path, *args, **kwargs):
        written.append(path)
        if len(written) == 3:
            raise KeyboardInterrupt  # the operator's Ctrl-C while the last file is written
        return real(frame, path, *args, **kwargs)

    monkeypatch.setattr(cashcast_io, "_write_csv", dies_on_the_last)
    with pytest.raises(KeyboardInterrupt):
        write_tables([(pd.DataFrame({"run": ["new"]}), path) for path in paths])
    assert [pd.read_csv(path)["run"].iloc[0] for path in paths] == ["old"] * 3
    assert sorted(p.name for p in paths[0].parent.iterdir()) == ["plan.csv", "projection.csv", "summary.csv"]
    monkeypatch.setattr(cashcast_io, "_write_csv", real)
    write_tables([(pd.DataFrame({"run": ["new"]}), path) for path in paths])
    assert [pd.read_csv(path)["run"].iloc[0] for path in paths] == ["new"] * 3


def test_csv_cells_that_look_like_formulas_are_escaped(tmp_path: Path):
    frame = pd.DataFrame({"name": ["=HYPERLINK(1)", "+1", "-x", "@sum", "Plain"], "amount": [1, -2, 3, 4, 5]})
    escaped = escape_formulas(frame)
    assert escaped["name"].tolist() == ["'=HYPERLINK(1)", "'+1", "'-x", "'@sum", "Plain"]
    assert escaped["amount"].tolist() == [1, -2, 3, 4, 5]  # numbers stay numbers
    path = write_table(frame, tmp_path / "out.csv")
    assert read_table(path)["name"].iloc[0] == "'=HYPERLINK(1)"
    assert read_table(write_table(frame, tmp_path / "out.parquet"))["name"].iloc[0] == "=HYPERLINK(1)"
    with pytest.raises(ValueError, match="must end in"):
        write_table(frame, tmp_path / "out.xlsx")


def _hold_lock(home: str, seconds: float) -> None:
    with workspace_lock(Workspace.resolve(home)):
        time.sleep(seconds)


def test_second_run_refuses_or_waits(tmp_path: Path):
    ws = Workspace.resolve(tmp_path).ensure()
    holder = multiprocessing.get_context("spawn").Process(target=_hold_lock, args=(str(ws.home), 3.0))
    holder.start()
    deadline = time.monotonic() + 20
    while not ws.lock_file.exists() or "pid" not in ws.lock_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    with pytest.raises(WorkspaceBusyError, match="busy"), workspace_lock(ws, timeout=0):
        pass
    started = time.monotonic()
    with workspace_lock(ws, timeout=30):
        waited = time.monotonic() - started
    holder.join()
    assert waited > 0.5


def test_csv_conventions_for_people_reading_the_files(tmp_path: Path):
    """Dates as days, text quoted only where it must be, missing as empty, a fleet's total cash in plain digits."""
    frame = pd.DataFrame(
        {
            "device_id": pd.array(["ATM-1", "TOTAL"], dtype="string"),
            "reason": ["covers Fri-Tue, incl. holiday", 'the "Airport" ATM\nmoved'],
            "region": pd.Categorical(["Chennai, TN", "all"]),
            "visit_date": pd.to_datetime(["2026-11-03", None]),
            "visit": [True, False],
            "cash_deployed": [1_470_000.0, 16_275_310_000.0],
            "expected_idle_cash": [np.nan, 12_082_138_845.137367],
            "stockout_risk": [0.005, np.nan],
        }
    )
    lines = write_table(frame, tmp_path / "out.csv").read_text().splitlines()
    assert lines == [
        "device_id,reason,region,visit_date,visit,cash_deployed,expected_idle_cash,stockout_risk",
        'ATM-1,"covers Fri-Tue, incl. holiday","Chennai, TN",2026-11-03,true,1470000.00,,0.005',
        'TOTAL,"the ""Airport"" ATM',
        'moved",all,,false,16275310000.00,12082138845.14,',
    ]
    back = read_table(tmp_path / "out.csv")
    assert back["reason"].tolist() == frame["reason"].tolist() and back["region"].tolist() == ["Chennai, TN", "all"]
    assert back["cash_deployed"].tolist() == [1_470_000.0, 16_275_310_000.0]
    repeated = pd.DataFrame([["=1", "+2"]], columns=["note", "note"])  # e.g. a raw file's rows in a rejects table
    assert write_table(repeated, tmp_path / "rep.csv").read_text().splitlines() == ["note,note", "'=1,'+2"]


def test_library_caches_stay_inside_the_workspace(tmp_path: Path):
    """CONTRACT.md: a command writes nothing outside its workspace (the Prefect API aside). Matplotlib's font
    cache and MLflow's telemetry file would land in the user's home, a Dask cluster's scratch space in the
    system's temporary folder: run them in a fresh process to see."""
    user, system_tmp = tmp_path / "user", tmp_path / "tmp"
    user.mkdir()
    system_tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MPL", "MLFLOW", "XDG_", "DO_NOT_TRACK", "DASK_"))}
    env["HOME"], env["TMPDIR"] = str(user), str(system_tmp)
    script = f"""
import mlflow
from cashcast.workspace import Workspace
ws = Workspace.resolve({str(tmp_path / "ws")!r}).ensure()
ws.keep_tool_state_inside()
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
plt.plot([1, 2]); plt.savefig(ws.home / "figure.png")
mlflow.set_tracking_uri(ws.tracking_uri())
with mlflow.start_run():
    mlflow.log_metric("x", 1.0)
from flows.runners import local_cluster
local_cluster(1).close()
"""
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=tmp_path, capture_output=True)
    written = [p for p in [*user.rglob("*"), *system_tmp.rglob("*")] if ".prefect" not in p.parts]  # the API's
    assert not written, "written outside the workspace"
    assert (tmp_path / "ws" / ".cache" / "matplotlib").is_dir() and (tmp_path / "ws" / "figure.png").exists()
    assert (tmp_path / "ws" / ".cache" / "dask").is_dir()
