"""The command line as CONTRACT.md fixes it: ingest, train, forecast, plan, backtest on real files."""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cashcast import jobs
from cashcast.locking import workspace_lock
from cashcast.schema import PLAN_COLUMNS
from cashcast.workspace import SAMPLE_KINDS, Workspace
from flows.cli import build_parser, main
from flows.commands import stage_sample
from forecasting.registry import StoreMovedWarning

REPO = Path(__file__).resolve().parents[1]
FAST_CONFIG = "[forecast]\nbacktest_folds = 1\nbacktest_horizon_days = 14\nn_paths = 100\n"


@pytest.fixture(scope="module")
def cli_home(tmp_path_factory, sample_dir=REPO / "data" / "sample"):
    """A workspace with the sample network ingested through the CLI, and a fast config."""
    home = tmp_path_factory.mktemp("cli") / "home"
    config = home.parent / "fast.toml"
    config.write_text(FAST_CONFIG)
    for kind in ("devices", "daily", "status", "balances"):
        assert main(["ingest", "--home", str(home), "--kind", kind, str(sample_dir / f"{kind}.csv")]) == 0
    return home, config


def test_ingest_json_accounting_and_idempotence(tmp_path, capsys):
    home = tmp_path / "home"
    messy = tmp_path / "daily-messy.csv"
    messy.write_text(
        "device_id,date,withdrawals\nA1,2025-01-01,100\nA1,2025-01-02,-5\nA1,not-a-date,10\nA1,2025-01-01,100\n"
    )
    assert main(["ingest", "--home", str(home), "--kind", "daily", "--json", str(messy)]) == 0
    first = json.loads(capsys.readouterr().out.strip())
    assert set(first) == {"file", "rows_read", "rows_loaded", "rows_rejected", "rows_duplicate", "rejects_path"}
    assert first["rows_read"] == 4 == first["rows_loaded"] + first["rows_rejected"] + first["rows_duplicate"]
    assert first["rows_rejected"] == 2 and Path(first["rejects_path"]).exists()
    rejects = pd.read_csv(first["rejects_path"])
    assert {"file", "row", "column", "reason"} <= set(rejects.columns)
    assert main(["ingest", "--home", str(home), "--kind", "daily", "--json", str(messy)]) == 0
    second = json.loads(capsys.readouterr().out.strip())
    assert second["rows_loaded"] == 0 and second["rows_read"] == 4


def test_a_second_nightly_on_a_busy_workspace_says_so_in_one_line(tmp_path, capsys):
    """Two nightly runs must not write one workspace at once: the second refuses, before any flow starts."""
    home = tmp_path / "home"
    ws = Workspace.resolve(home).ensure()
    stage_sample(ws)
    with open(ws.lock_file, "a+") as other:  # another run's hold: this process's own lock is re-entrant
        other.write("pid 4242 since 2026-11-29 01:00:00")
        other.flush()
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["nightly", "--home", str(home)]) == 1
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and "workspace is busy (pid 4242" in err
    assert "Traceback" not in out + err and not (home / "plans").exists()
    assert len(list(ws.landing.iterdir())) == len(SAMPLE_KINDS)  # nothing ingested either


STUCK_COMMAND = """
import sys, time
import flows.cli as cli
import flows.commands as commands
cli.INTERRUPT_GRACE_SECONDS = 1.0

def run(args):
    print("started", flush=True)
    try:
        time.sleep(60)
    except KeyboardInterrupt:
        if sys.argv[1] == "hangs":  # as Prefect's client retrying a temporary server the Ctrl-C also stopped
            time.sleep(60)
        if sys.argv[1] == "swallows":  # as Prefect's `serve`, which returns on a signal
            return 0
        raise

commands.run = run
raise SystemExit(cli.main(["train", "--home", sys.argv[2]]))
"""


@pytest.mark.parametrize(
    ("behaviour", "signals", "at_most"),
    [("winds_down", 1, 5.0), ("hangs", 1, 8.0), ("hangs", 2, 5.0), ("swallows", 1, 5.0)],
)
def test_sigterm_and_ctrl_c_end_a_command_with_130_and_never_hang(tmp_path, behaviour, signals, at_most):
    """SIGTERM (a service manager, `timeout`) killed a command with 143 and no word, leaving Prefect's temporary
    server running; a Ctrl-C in a terminal, which stops that server too, hung the nightly for 4 minutes and ended it
    with 'Connection refused', exit 1 (kill audit). Now both wind down to 130, within the grace or at a second
    signal."""
    import signal
    import time

    process = subprocess.Popen(
        [sys.executable, "-c", STUCK_COMMAND, behaviour, str(tmp_path / "home")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "started"
    began = time.monotonic()
    for number in range(signals):
        process.send_signal(signal.SIGTERM if number == 0 else signal.SIGINT)
        time.sleep(0.3)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130 and time.monotonic() - began < at_most
    assert (
        err.strip().splitlines()[-1]
        == "cashcast train: interrupted; outputs are written whole or not at all, so run it again"
    )


def test_a_command_started_with_ctrl_c_ignored_keeps_ignoring_it(tmp_path):
    """A shell script's background job ignores Ctrl-C; the handler installed over that made a Ctrl-C meant for the
    script end a background nightly (review). SIGTERM still ends it."""
    import signal
    import time

    process = subprocess.Popen(
        [sys.executable, "-c", STUCK_COMMAND, "winds_down", str(tmp_path / "home")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert process.stdout.readline().strip() == "started"
    process.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert process.poll() is None  # still at work
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)
    assert process.returncode == 130


def test_an_interrupted_command_says_so(tmp_path, capsys, monkeypatch):
    """Ctrl-C: exit 130 with one line saying what is kept (it exited 130 in silence)."""
    from flows import commands

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "run", interrupted)
    assert main(["train", "--home", str(tmp_path / "home")]) == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        "cashcast train: interrupted; outputs are written whole or not at all, so run it again"
    ]


def test_the_workspace_lock_is_held_across_the_run_and_is_re_entrant(tmp_path):
    """The command line holds the lock across the nightly flow, which takes it again for itself: the inner take
    is a no-op, and the lock is free once the outer one ends."""
    ws = Workspace.resolve(tmp_path / "home").ensure()
    with workspace_lock(ws), workspace_lock(ws), open(ws.lock_file) as other, pytest.raises(BlockingIOError):
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(ws.lock_file) as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again


def test_the_command_line_holds_the_workspace_across_the_nightly_flow(tmp_path, monkeypatch):
    """Held from before Prefect starts until the flow ends: a second run cannot slip in during the start-up."""
    from flows import commands, nightly

    ws = Workspace.resolve(tmp_path / "home").ensure()
    seen = []

    def flow(*args):
        with open(ws.lock_file) as other:
            try:
                fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen.append("free")
            except BlockingIOError:
                seen.append("held")
        return {}

    monkeypatch.setattr(nightly, "nightly_flow", flow)
    commands.run_nightly(ws, None, None)
    assert seen == ["held"]


def test_a_workspace_that_is_a_file_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "home").write_text("not a folder")
    assert main(["train", "--home", str(tmp_path / "home")]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"cashcast train: error: {tmp_path / 'home'}: the workspace (--home) is a file, not a folder"
    ]


def test_a_forecast_before_the_first_recorded_day_says_where_history_starts(tmp_path, capsys):
    home = tmp_path / "home"
    daily = tmp_path / "daily.csv"
    daily.write_text("device_id,date,withdrawals\nA,2026-03-02,100\nA,2026-03-03,120\n")
    assert main(["ingest", "--home", str(home), "--kind", "daily", str(daily)]) == 0
    capsys.readouterr()
    assert main(["forecast", "--home", str(home), "--as-of", "2025-06-01", "--horizon", "7"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"cashcast forecast: error: {home}: no daily history before 2025-06-01; the lake's starts in 2026-03"
    ]


def test_training_a_network_too_young_to_backtest_says_so_not_nan(tmp_path, capsys):
    home = tmp_path / "home"
    dates = pd.date_range("2026-03-02", periods=20, freq="D")
    daily = pd.DataFrame({"device_id": np.repeat(["A", "B"], 20), "date": np.tile(dates, 2), "withdrawals": 100.0})
    daily.to_csv(tmp_path / "daily.csv", index=False, date_format="%Y-%m-%d")
    assert main(["ingest", "--home", str(home), "--kind", "daily", str(tmp_path / "daily.csv")]) == 0
    assert main(["train", "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert "trained 2 devices on history before 2026-03-22: not backtested" in out and "nan" not in out


def test_nightly_with_nothing_to_forecast_says_so_in_one_line(tmp_path, capsys):
    """A first run before any data arrived: one line naming the workspace and the landing folder, no flow run."""
    home = tmp_path / "home"
    assert main(["nightly", "--home", str(home)]) == 1
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [
        f"cashcast nightly: error: {home}: nothing to forecast: the lake has no daily history and {home / 'landing'}"
        " holds no files; drop files there or run `cashcast ingest`"
    ]
    assert "Traceback" not in out + err and not (home / "plans").exists()


def test_the_configured_landing_folder_is_the_one_read(tmp_path, capsys):
    """`[workspace] landing_dir` names the drop folder (it was read nowhere): the command line and the nightly
    flow's tasks both look there, inside the workspace or at an absolute path."""
    from flows import nightly

    home, inbox = tmp_path / "home", tmp_path / "sftp" / "inbox"
    (home / "landing").mkdir(parents=True)
    (home / "landing" / "daily-old.csv").write_text("device_id,date,withdrawals\nA,2026-11-01,100\n")
    config = tmp_path / "inbox.toml"
    config.write_text(f'[workspace]\nlanding_dir = "{inbox}"\n')
    assert main(["nightly", "--home", str(home), "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"the lake has no daily history and {inbox} holds no files" in err
    ws, _ = nightly._context(str(home), str(config))
    assert ws.landing == inbox
    config.write_text('[workspace]\nlanding_dir = "inbox"\n')
    assert nightly._context(str(home), str(config))[0].landing == home / "inbox"
    # The run moves whatever it finds there: the workspace itself, a folder above it or one of its own is refused
    # (a landing_dir of "" swept the lake and mlflow.db into failed/).
    for wrong in ("", ".", "lake", "processed/daily", str(tmp_path)):
        config.write_text(f'[workspace]\nlanding_dir = "{wrong}"\n')
        assert main(["nightly", "--home", str(home), "--config", str(config)]) == 2  # a bad setting
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"[workspace] landing_dir = '{wrong}' is" in err[0] and "a folder of its own" in err[0]
    assert (home / "landing" / "daily-old.csv").exists()  # nothing moved


def test_visits_made_since_a_count_are_each_days_visits_on_order(tmp_path):
    """What the carrier did between a count and this morning: each day, the visits on order that morning."""
    from cashcast import jobs
    from cashcast.workspace import Workspace

    ws = Workspace.resolve(tmp_path / "home")
    header = "device_id,visit_date,order_by,action,amount,balance_after\n"
    for day, rows in {
        "2026-11-01": ["A,2026-11-02,2026-11-01,load,500,500", "B,2026-11-05,2026-11-04,load,90,90"],
        "2026-11-02": ["A,2026-11-03,2026-11-02,load,700,700"],  # the next plan orders A again for the 3rd
        "2026-11-03": ["B,2026-11-03,2026-11-03,load,400,400"],  # lead time 0: ordered and made that day
    }.items():
        (ws.plans / day).mkdir(parents=True)
        (ws.plans / day / "plan.csv").write_text(header + "\n".join(rows) + "\n")
    counts = pd.DataFrame(
        {"device_id": ["A", "B"], "as_of": pd.to_datetime(["2026-11-01", "2026-11-01"]), "balance": [100.0, 50.0]}
    )
    made = jobs.visits_made(ws, pd.Timestamp("2026-11-04"), counts)
    assert made[["device_id", "balance_after"]].values.tolist() == [["A", 500.0], ["A", 700.0], ["B", 400.0]]
    days = pd.to_datetime(["2026-11-02", "2026-11-03", "2026-11-03"])
    assert list(pd.to_datetime(made["visit_date"])) == list(days)
    assert jobs.visits_made(ws, pd.Timestamp("2026-11-01"), counts) is None  # counted this morning: nothing since


def test_a_plan_for_a_morning_older_than_one_planned_is_kept_apart_and_orders_nothing(tmp_path):
    """A missed night run late: the carrier had worked from the plans written at the time, but the late plan
    was read as the one in force that morning, its visits taken as ordered and made (soak audit)."""
    from types import SimpleNamespace

    from cashcast import jobs
    from replenishment.plan import PlanWarning

    ws = Workspace.resolve(tmp_path / "home")
    header = "device_id,visit_date,order_by,action,amount,balance_after\n"
    for day, row in {
        "2026-09-22": "A,2026-09-24,2026-09-23,load,960,960",
        "2026-09-24": "B,2026-09-27,2026-09-25,load,5,5",
    }.items():
        (ws.plans / day).mkdir(parents=True)
        (ws.plans / day / "plan.csv").write_text(header + row + "\n")
    frame = pd.DataFrame(
        {
            "device_id": ["A"],
            "visit_date": ["2026-09-24"],
            "order_by": ["2026-09-23"],
            "action": ["load"],
            "amount": [970.0],
            "balance_after": [970.0],
        }
    )
    late = SimpleNamespace(
        plan=frame, projection=pd.DataFrame({"device_id": ["A"]}), summary=pd.DataFrame({"device_id": ["A"]})
    )
    with pytest.warns(PlanWarning, match="the morning of 2026-09-24 was planned before this plan for 2026-09-23"):
        files = jobs.write_plan(ws, pd.Timestamp("2026-09-23"), frame, late, None)
    assert files.plan == ws.plans / "2026-09-23" / "late" / "plan.csv" and files.summary.parent == files.plan.parent
    assert files.forecast == ws.forecasts / "2026-09-23" / "late" / "forecast.csv"  # not the one made that morning
    ordered = jobs.visits_on_order(ws, pd.Timestamp("2026-09-24"))
    assert ordered[["device_id", "balance_after"]].values.tolist() == [["A", 960.0]]  # what the carrier was sent
    tonight = SimpleNamespace(plan=frame.assign(device_id="C"), projection=frame, summary=frame)
    assert (
        jobs.write_plan(ws, pd.Timestamp("2026-09-25"), frame, tonight, None).plan
        == ws.plans / "2026-09-25" / "plan.csv"
    )


def test_a_look_ahead_at_a_morning_to_come_is_a_preview_that_leaves_tonights_plan_in_force(tmp_path):
    """An analyst's plan for next week's Monday was read as a plan in force: tonight's real plan then counted
    as late, went to late/ and ordered nothing."""
    import warnings
    from types import SimpleNamespace

    from cashcast import jobs
    from replenishment.plan import PlanWarning

    home = tmp_path / "home"
    daily = tmp_path / "daily.csv"
    daily.write_text("device_id,date,withdrawals\nA,2026-09-23,100\nA,2026-09-24,120\n")
    assert main(["ingest", "--home", str(home), "--kind", "daily", str(daily)]) == 0
    ws = Workspace.resolve(home)
    eve, clock = pd.Timestamp("2026-09-24"), pd.Timestamp("2026-09-24")
    assert jobs.kept_apart(ws, eve + pd.Timedelta(days=1), today=clock) is None  # tonight's plan
    assert jobs.kept_apart(ws, eve + pd.Timedelta(days=2), today=clock + pd.Timedelta(days=1)) is None
    ahead = jobs.kept_apart(ws, eve + pd.Timedelta(days=5), today=clock)
    assert ahead.folder == "preview" and "the lake's last recorded day is 2026-09-24" in ahead.why
    stopped_feed = clock + pd.Timedelta(days=9)  # the lake stayed behind, but the morning has come
    assert jobs.kept_apart(ws, eve + pd.Timedelta(days=9), today=stopped_feed) is None

    def plan(device: str, visit: str, order_by: str) -> SimpleNamespace:
        frame = pd.DataFrame(
            {
                "device_id": [device],
                "visit_date": [visit],
                "order_by": [order_by],
                "action": ["load"],
                "amount": [500.0],
                "balance_after": [500.0],
            }
        )
        return SimpleNamespace(plan=frame, projection=frame, summary=frame)

    preview = plan("A", "2099-06-03", "2099-06-02")
    with pytest.warns(PlanWarning, match="the morning of 2099-06-01 has not come .* a preview, so this plan is kept"):
        files = jobs.write_plan(ws, pd.Timestamp("2099-06-01"), preview.plan, preview, None)
    assert files.plan == ws.plans / "2099-06-01" / "preview" / "plan.csv"
    assert files.forecast == ws.forecasts / "2099-06-01" / "preview" / "forecast.csv"
    tonight = plan("A", "2026-09-27", "2026-09-26")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PlanWarning)
        files = jobs.write_plan(ws, pd.Timestamp("2026-09-25"), tonight.plan, tonight, None)
    assert files.plan == ws.plans / "2026-09-25" / "plan.csv"
    assert jobs.visits_on_order(ws, pd.Timestamp("2099-06-03")) is None  # the preview ordered nothing


def test_a_visit_ordered_mornings_ago_stays_on_order_though_later_plans_do_not_list_it(tmp_path):
    """Lead time 2: the plan of the 28th orders C for the 30th; the plan of the 29th takes it as given and does not
    list it; on the 30th it is still on order (it used to vanish on its second night, and be planned again)."""
    from cashcast import jobs
    from cashcast.workspace import Workspace

    ws = Workspace.resolve(tmp_path / "home")
    header = "device_id,visit_date,order_by,action,amount,balance_after\n"
    for day, rows in {
        "2026-10-28": [
            "C,2026-10-30,2026-10-28,load,800,800",  # ordered on the 28th: stands
            "D,2026-11-02,2026-10-31,load,600,600",  # not yet ordered when the 29th's plan replaced it
        ],
        "2026-10-29": ["E,2026-10-31,2026-10-29,load,300,300", "D,2026-11-03,2026-11-01,load,650,650"],
    }.items():
        (ws.plans / day).mkdir(parents=True)
        (ws.plans / day / "plan.csv").write_text(header + "\n".join(rows) + "\n")
    ordered = jobs.visits_on_order(ws, pd.Timestamp("2026-10-30"))
    assert ordered[["device_id", "balance_after"]].values.tolist() == [["C", 800.0], ["E", 300.0]]
    assert jobs.visits_on_order(ws, pd.Timestamp("2026-10-31"))["device_id"].tolist() == ["E"]  # C was yesterday


def test_a_file_whose_every_row_is_rejected_is_pointed_out(tmp_path, capsys):
    """Day-first dates (a spreadsheet's export) reject every row: the rows are kept in the rejects table as
    always, the other files still load, and the command fails saying what the first row got wrong instead of
    a quiet "loaded 0" (the nightly run moves such a file to failed/)."""
    slash, good = tmp_path / "daily-slash.csv", tmp_path / "daily-good.csv"
    slash.write_text("device_id,date,withdrawals\nA1,01/02/2017,100\nA1,13/02/2017,200\n")
    good.write_text("device_id,date,withdrawals\nA1,2017-02-01,100\nA1,2017-02-xx,200\n")
    home = str(tmp_path / "home")
    assert main(["ingest", "--home", home, "--kind", "daily", str(slash), str(good)]) == 1
    out, err = capsys.readouterr()
    assert "read 2, loaded 0, rejected 2" in out and "read 2, loaded 1, rejected 1" in out
    assert f"{slash}: every row was rejected, e.g. row 2, column date: unparseable date" in err
    assert main(["ingest", "--home", home, "--kind", "daily", str(good)]) == 0  # some rows loaded: success


def test_bad_input_exits_non_zero_with_one_line_naming_the_file(tmp_path):
    good, bad = tmp_path / "good.csv", tmp_path / "daily.csv"
    good.write_text("device_id,date,withdrawals\nA1,2024-01-01,100\n")
    bad.write_text("device,when\nx,y\n")
    result = subprocess.run(  # the good file comes first, and is not loaded either: the ingest failed
        [
            sys.executable,
            "-m",
            "flows",
            "ingest",
            "--home",
            str(tmp_path / "h"),
            "--kind",
            "daily",
            str(good),
            str(bad),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(bad) in lines[0] and "column" in lines[0]
    assert not (tmp_path / "h" / "lake" / "daily").exists()


def test_bad_config_key_is_named(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text("[plan]\nhorizon_days = 0\n")
    assert main(["train", "--home", str(tmp_path / "h"), "--config", str(config)]) == 2
    assert "plan.horizon_days" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["forecast", "--as-of", "2026-11-01", "--horizon", "0"], "argument --horizon: must be a whole number >= 1"),
        (["forecast", "--as-of", "2026-13-01", "--horizon", "3"], "argument --as-of: not a date (YYYY-MM-DD)"),
        (["forecast", "--as-of", "2026-11-01", "--horizon", "3", "--out", "f.txt"], "must end in .csv or .parquet"),
        (["plan", "--as-of", "2026-11-01", "--horizon", "100"], "argument --horizon: must be at most 90 days"),
        (["forecast", "--as-of", "2026-11-01", "--horizon", "100000"], "argument --horizon: must be at most 366 days"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(tmp_path, capsys, args, error):
    with pytest.raises(SystemExit) as done:
        main([*args, "--home", str(tmp_path / "h")])
    err = capsys.readouterr().err
    assert done.value.code == 2 and error in err and len(err.strip().splitlines()) == 1  # one line, no usage block
    assert not (tmp_path / "h").exists()


@pytest.mark.parametrize("day", ["01/08/2017", "2017", "20170108", "now", "2017-02-30"])
def test_dates_on_the_command_line_are_iso_days_only(tmp_path, capsys, day):
    """pandas would read `01/08/2017` as 8 January and `2017` as New Year's Day: a plan for a day nobody meant."""
    with pytest.raises(SystemExit):
        main(["backtest", "--home", str(tmp_path / "h"), "--start", day, "--end", "2017-03-01"])
    assert f"argument --start: not a date (YYYY-MM-DD): {day!r}" in capsys.readouterr().err


def test_workspace_options_go_before_or_after_the_command():
    parser = build_parser()
    before = parser.parse_args(["--home", "a", "--config", "c.toml", "train"])
    after = parser.parse_args(["train", "--home", "b"])
    both = parser.parse_args(["--home", "a", "train", "--home", "b"])
    assert (before.home, before.config, after.home, after.config, both.home) == ("a", "c.toml", "b", None, "b")


def test_train_forecast_plan_through_the_cli(cli_home, tmp_path, capsys):
    home, config = cli_home
    common = ["--home", str(home), "--config", str(config)]
    assert main(["train", *common, "--as-of", "2026-10-01"]) == 0
    assert "promoted to champion" in capsys.readouterr().out
    out = tmp_path / "forecast.parquet"
    assert main(["forecast", *common, "--as-of", "2026-11-01", "--horizon", "10", "--out", str(out)]) == 0
    forecast = pd.read_parquet(out)
    assert list(forecast.columns[:8]) == ["device_id", "date", "model", "yhat", "q50", "q90", "q95", "q99"]
    assert len(forecast) == 10 * forecast["device_id"].nunique()
    assert pd.to_datetime(forecast["date"]).min() == pd.Timestamp("2026-11-01")
    assert (forecast[["q50", "q90", "q95", "q99"]].diff(axis=1).iloc[:, 1:] >= -1e-6).all().all()
    # Other levels from a later config come from the same champion, without retraining.
    levels = tmp_path / "levels.toml"
    levels.write_text(config.read_text().replace("[forecast]\n", "[forecast]\nquantiles = [0.05, 0.5, 0.975]\n"))
    other = tmp_path / "levels.csv"
    assert main(["forecast", "--home", str(home), "--config", str(levels), "--as-of", "2026-11-01", "--horizon", "10",
                 "--out", str(other)]) == 0  # fmt: skip
    assert "promoted" not in capsys.readouterr().out
    again = pd.read_csv(other)
    assert list(again.columns[:7]) == ["device_id", "date", "model", "yhat", "q5", "q50", "q97.5"]
    assert ((again["q5"] <= again["q50"] + 1e-6) & (again["q50"] <= again["q97.5"] + 1e-6)).all()
    assert (again["q97.5"] > again["q50"]).mean() > 0.9 and (again["q5"] < again["q50"]).mean() > 0.9
    np.testing.assert_allclose(again["q50"], forecast["q50"], rtol=1e-6)  # the trained level: unchanged
    np.testing.assert_allclose(again["yhat"], forecast["yhat"], rtol=1e-6)
    between = (forecast["q95"] <= again["q97.5"] + 1e-6) & (again["q97.5"] <= forecast["q99"] + 1e-6)
    assert between.all()

    plan_out = tmp_path / "plan.csv"
    assert main(["plan", *common, "--as-of", "2026-11-01", "--horizon", "7", "--out", str(plan_out)]) == 0
    plan = pd.read_csv(plan_out)
    assert list(plan.columns[: len(PLAN_COLUMNS)]) == PLAN_COLUMNS
    # --horizon sets the plan's horizon: visits inside it, the forecast behind it runs the lookahead further.
    assert (pd.to_datetime(plan["visit_date"]) < pd.Timestamp("2026-11-08")).all()
    summary = pd.read_csv(home / "plans" / "2026-11-01" / "summary.csv")
    assert (summary["horizon_days"] == 7).all()
    behind = pd.read_csv(home / "forecasts" / "2026-11-01" / "forecast.csv", parse_dates=["date"])
    assert behind["date"].max() == pd.Timestamp("2026-11-07") + pd.Timedelta(days=7)
    devices = pd.read_csv(REPO / "data" / "sample" / "devices.csv")
    terms = plan.merge(devices[["device_id", "lead_time_days", "capacity"]], on="device_id")
    earliest = pd.Timestamp("2026-11-01") + pd.to_timedelta(terms["lead_time_days"], unit="D")
    assert (pd.to_datetime(terms["visit_date"]) >= earliest).all()
    assert (pd.to_datetime(terms["visit_date"]).dt.day_of_week < 5).all()  # sample devices visit Mon-Fri
    loads = terms[terms["action"] == "load"]
    assert (loads["balance_after"] <= loads["capacity"] + 1e-6).all()
    assert not plan["name"].astype(str).str.startswith("+").any()  # formula-looking names are escaped

    # A plan that cannot reach --out leaves the workspace's plan as it was: tomorrow reads it as on order.
    kept = (home / "plans" / "2026-11-01" / "plan.csv").read_bytes()
    (tmp_path / "taken.csv").mkdir()
    args = ["plan", *common, "--as-of", "2026-11-01", "--horizon", "3", "--out", str(tmp_path / "taken.csv")]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cashcast plan: error: cannot write {tmp_path / 'taken.csv'}: a folder of that name is in the way"]
    assert (home / "plans" / "2026-11-01" / "plan.csv").read_bytes() == kept


def test_plan_on_a_workspace_without_champion_trains_and_reads_the_lake_once(tmp_path, monkeypatch):
    """The first `plan` trains a champion, then forecasts from the same read of the lake."""
    import ingest
    from cashcast.config import load_config
    from cashcast.workspace import Workspace
    from forecasting import registry

    home, config = tmp_path / "home", tmp_path / "fast.toml"
    config.write_text(FAST_CONFIG)
    sample = REPO / "data" / "sample"
    for kind in ("devices", "daily", "status", "balances"):
        assert main(["ingest", "--home", str(home), "--kind", kind, str(sample / f"{kind}.csv")]) == 0
    reads = []
    real_read_daily = ingest.read_daily
    monkeypatch.setattr(ingest, "read_daily", lambda *a, **k: reads.append(k) or real_read_daily(*a, **k))
    out = tmp_path / "plan.csv"
    args = ["plan", "--home", str(home), "--config", str(config), "--as-of", "2026-11-01", "--out", str(out)]
    assert main(args) == 0
    version = registry.champion_version(Workspace.resolve(home), load_config(config))
    assert version is not None and version.tags["as_of"] == "2026-11-01"
    assert len(reads) == 1 and reads[0]["end"] == pd.Timestamp("2026-10-31")
    assert pd.read_csv(out)["device_id"].nunique() >= 20


def test_a_plan_that_fails_leaves_last_nights_files_whole_forecast_included(cli_home, tmp_path, monkeypatch):
    """`plan` renamed tonight's forecast into place while the planner still worked: a Ctrl-C or an error then left
    it beside yesterday's plan, projection and summary (review). Now the forecast joins the plan's set."""
    source, config = cli_home
    home = tmp_path / "home"  # a copy: a plan for a later morning would make the module's others late
    shutil.copytree(source, home)
    args = ["plan", "--home", str(home), "--config", str(config), "--as-of", "2026-11-03"]
    with warnings.catch_warnings():  # the copy's MLflow store, if the module trained one already, is re-pointed
        warnings.simplefilter("ignore", StoreMovedWarning)
        assert main(args) == 0
    ws = Workspace.resolve(home)
    folders = [ws.forecasts / "2026-11-03", ws.plans / "2026-11-03"]
    before = {path: path.read_bytes() for folder in folders for path in folder.iterdir() if path.is_file()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(jobs, "plan_forecast", interrupted)
    other_levels = tmp_path / "levels.toml"  # read when forecasting: tonight's forecast file differs
    other_levels.write_text(config.read_text().replace("[forecast]\n", "[forecast]\nquantiles = [0.5, 0.8]\n"))
    assert main([*args[:3], "--config", str(other_levels), *args[5:]]) == 130
    after = {path: path.read_bytes() for folder in folders for path in folder.iterdir() if path.is_file()}
    assert after == before  # every file as it was, and no temporary file left beside them


def test_plan_with_balances_file(cli_home, tmp_path, capsys):
    home, config = cli_home
    devices = pd.read_csv(REPO / "data" / "sample" / "devices.csv")
    empty = pd.DataFrame({"device_id": devices["device_id"], "as_of": "2026-10-30", "balance": 0.0})
    full = pd.DataFrame({"device_id": devices["device_id"][:1], "as_of": "2026-11-05", "balance": 1e6})
    balances = tmp_path / "balances.csv"
    # Semicolon-separated, as a spreadsheet in a decimal-comma locale saves it; a later count is ignored.
    pd.concat([empty, full]).to_csv(balances, index=False, sep=";")
    out = tmp_path / "urgent.csv"
    args = [
        "plan",
        "--home",
        str(home),
        "--config",
        str(config),
        "--as-of",
        "2026-10-30",  # before any other plan of this workspace: no visit is on order yet
        "--balances",
        str(balances),
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert "1 balance row(s) dated after the plan's morning 2026-10-30 were ignored" in capsys.readouterr().err
    plan = pd.read_csv(out)
    atms = devices.loc[devices["kind"] == "atm", "device_id"]
    first_visit = plan[plan["device_id"].isin(atms)].groupby("device_id")["visit_date"].min()
    # Empty ATMs are visited on the first allowed weekday their lead time permits, and the reason warns.
    from cashcast.config import parse_weekdays

    for device in devices[devices["kind"] == "atm"].itertuples():
        day = pd.Timestamp("2026-10-30") + pd.Timedelta(days=int(device.lead_time_days))
        while day.weekday() not in parse_weekdays(device.visit_weekdays):
            day += pd.Timedelta(days=1)
        assert pd.Timestamp(first_visit[device.device_id]) == day, device.device_id
    first_rows = plan[plan["device_id"].isin(atms)].sort_values("visit_date").drop_duplicates("device_id")
    assert first_rows["reason"].str.contains("run out").all()


def test_a_balances_file_naming_some_devices_leaves_the_others_their_ingested_counts(cli_home, tmp_path):
    from cashcast import jobs
    from cashcast.config import load_config
    from cashcast.workspace import Workspace

    home, config = cli_home
    ws, cfg = Workspace.resolve(home), load_config(config)
    balances = tmp_path / "one.csv"
    balances.write_text("device_id,balance\nATM-00001,5000\n")  # undated: this morning's count
    files = jobs.run_plan(ws, cfg, pd.Timestamp("2026-11-01"), balances_file=balances, out=tmp_path / "p.csv")
    opening = pd.read_csv(files.projection, dtype={"device_id": str}).groupby("device_id")["expected_opening_balance"]
    ingested = pd.read_csv(REPO / "data" / "sample" / "balances.csv").set_index("device_id")["balance"]
    assert opening.first()["ATM-00001"] == 5000
    assert opening.first()["ATM-00002"] == ingested["ATM-00002"]  # not "balance unknown: assumed ..."
    notes = pd.read_csv(files.summary, dtype={"device_id": str}).set_index("device_id")["notes"].fillna("")
    assert not notes.str.contains("balance unknown").any()


def test_a_balances_file_with_ids_copied_from_a_plan_counts_those_devices(tmp_path):
    """Every CSV escapes an id like -5 as '-5 for Excel; a count copied from the plan was ignored as a stranger."""
    from cashcast import jobs

    counts = tmp_path / "counts.csv"
    counts.write_text(
        "device_id,as_of,balance\n'-5,2026-11-02,100\n'+44 ATM,2026-11-02T08:00+08:00,7\nA'1,2026-11-02,3\n"
    )
    read = jobs.read_balances_file(counts, pd.Timestamp("2026-11-02"))
    assert read["device_id"].tolist() == ["-5", "+44 ATM", "A'1"]
    # The morning as written, offset or not, as `cashcast ingest --kind balances` reads it (review).
    assert read["as_of"].dt.strftime("%Y-%m-%d").tolist() == ["2026-11-02"] * 3
    home = tmp_path / "home"
    assert main(["ingest", "--home", str(home), "--kind", "balances", str(counts)]) == 0
    from ingest import read_table

    lake = read_table(Workspace.resolve(home), "balances")
    assert sorted(lake["device_id"]) == sorted(["-5", "+44 ATM", "A'1"])  # the same devices, the same morning
    assert (lake["as_of"] == pd.Timestamp("2026-11-02")).all()


@pytest.mark.parametrize(
    ("rows", "error"),
    [
        ("device_id,balance\nA1,100\nA2,abc\n", "row 3, column balance: not a number (abc)"),
        ("device_id,balance\nA1,-5000\n", "row 2, column balance: negative (-5000)"),
        ("device_id,balance\nA1,100\n,200\n", "row 3, column device_id: empty"),
        ("device_id,balance\nA1,\n", "row 2, column balance: empty"),
        (
            "device_id,as_of,balance\nA1,2026-11-02,100\nA2,soon,200\n",
            "row 3, column as_of: not a YYYY-MM-DD date (soon)",
        ),
        ("device_id,as_of,balance\nA1,03/11/2026,100\n", "row 2, column as_of: not a YYYY-MM-DD date"),
        (
            "device_id,as_of,balance\nA1,2026-11-01,1\nA1,2026-11-02 08:00,2\nA1,2026-11-01,3\nA1,2026-11-02 09:30,4\n",
            "rows 2 and 4 both give A1's balance on the morning of 2026-11-01",
        ),
        (
            "device_id,balance\nA1,100\nA2,5\nA1,200\n",
            "rows 2 and 4 both give A1's balance on the morning of 2026-11-02",
        ),
        ("device_id,balance\nA1,100,7\n", "row 2: wrong number of fields (expected 2)"),
        ("device_id,balance\nA1,100\n\nA2,1,2\n\nA3,x\n", "row 4: wrong number of fields (expected 2)"),
        ("device_id,balance\nA1,100\n\nA3,x\n", "row 4, column balance: not a number (x)"),
        ("device_id,bal\nA1,100\n", "missing required column(s) ['balance']"),
        ("", "the file is empty"),
    ],
)
def test_bad_balances_file_names_row_and_column(tmp_path, capsys, rows, error):
    balances = tmp_path / "balances.csv"
    balances.write_text(rows)
    assert main(["plan", "--home", str(tmp_path / "ws"), "--as-of", "2026-11-02", "--balances", str(balances)]) != 0
    assert f"{balances}: {error}" in capsys.readouterr().err


def test_backtest_through_the_cli(cli_home, tmp_path, capsys):
    home, config = cli_home
    out = tmp_path / "bt"
    args = [
        "backtest",
        "--home",
        str(home),
        "--config",
        str(config),
        "--start",
        "2026-09-07",
        "--end",
        "2026-10-04",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    kpis = pd.read_csv(out / "kpis.csv")
    assert {"cashcast", "fixed_weekly", "cover_rule", "perfect_foresight"} == set(kpis["policy"])
    for column in ("holding_cost", "visit_cost", "total_cost", "visits", "stockout_device_days", "avg_idle_cash"):
        assert column in kpis.columns
    best = kpis.set_index("policy")["total_cost"]
    assert best["perfect_foresight"] <= best.min() + 1e-6
    # The figures are logged to MLflow, one run, with the config and data it ran on.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cashcast")
    (run,) = client.search_runs([experiment.experiment_id], "tags.`cashcast.kind` = 'backtest'")
    ratio = kpis.set_index("policy").loc["cashcast", "cost_vs_optimum"]
    assert run.data.metrics["cashcast.cost_vs_optimum"] == pytest.approx(ratio, rel=1e-3)
    assert run.data.metrics["perfect_foresight.total_cost"] == pytest.approx(best["perfect_foresight"], rel=1e-6)
    params = run.data.params
    assert params["plan.horizon_days"] == "14" and params["output"] == str(out)
    assert len(params["data_fingerprint"]) == 16
    assert params["forecast.backtest_folds"] == "1"  # the --config file's value, merged over the defaults
    per_device = pd.read_csv(out / "per_device.csv")
    # ATM-00020 is installed after the window (2026-10-16): nothing to replay, so it is left out.
    assert per_device["device_id"].nunique() == 29 and "ATM-00020" not in set(per_device["device_id"])
    # Days after the last recorded one would be replayed on made-up demand.
    capsys.readouterr()
    assert main([*args[:-4], "--end", "2026-11-10", "--out", str(tmp_path / "late")]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # one line: no stale-history warning ahead of it
    assert len(err) == 1 and "--end 2026-11-10 is after the last recorded day 2026-10-31" in err[0]


def test_backtest_arguments_and_store_are_checked_before_the_replay(cli_home, tmp_path, capsys, monkeypatch):
    """A bad --out, a window before the history or an MLflow server that does not answer is said at once, as bad
    input (exit 2) or a state to retry (1), not after minutes of replay; and nothing is written."""
    home, config = cli_home

    def no_replay(*args, **kwargs):
        raise AssertionError("the replay ran before the arguments were checked")

    monkeypatch.setattr(jobs, "retraining_forecaster", no_replay)
    window = ["--start", "2026-09-07", "--end", "2026-10-04"]
    base = ["backtest", "--home", str(home), "--config", str(config)]
    a_file = tmp_path / "bt"
    a_file.write_text("mine")
    assert main([*base, *window, "--out", str(a_file)]) == 2
    assert f"{a_file}: --out names a file" in capsys.readouterr().err
    (tmp_path / "mixed" / "daily.parquet").mkdir(parents=True)
    assert main([*base, *window, "--out", str(tmp_path / "mixed")]) == 2
    assert "daily.parquet: a folder of that name is in the way" in capsys.readouterr().err
    first = pd.read_csv(REPO / "data" / "sample" / "daily.csv")["date"].min()
    assert main([*base, "--start", "2020-01-06", "--end", "2020-01-31", "--out", str(tmp_path / "early")]) == 2
    assert f"--start 2020-01-06 is before the lake's history, which starts in {first[:7]}" in capsys.readouterr().err
    straddling = ["--start", first, "--end", str(pd.Timestamp(first) + pd.Timedelta(days=20))[:10]]
    assert main([*base, *straddling, "--out", str(tmp_path / "early")]) == 2
    assert f"--start {first} is not after the first recorded day {first}" in capsys.readouterr().err
    deaf = tmp_path / "deaf.toml"
    deaf.write_text(config.read_text().replace("[forecast]\n", '[forecast]\ntracking_uri = "http://127.0.0.1:9"\n'))
    assert main([*base[:-1], str(deaf), *window, "--out", str(tmp_path / "deaf")]) == 1
    assert "tracking_uri" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in ("early", "deaf")) and a_file.read_text() == "mine"


def test_a_last_day_held_by_few_devices_is_said_before_it_sets_the_morning(tmp_path):
    """Two withdrawals after midnight in an extract cut at 00:30 made one device's next day the lake's last: the
    nightly planned every device a morning later, in silence (nightly audit)."""
    home = tmp_path / "home"
    dates = pd.date_range("2026-10-01", periods=10, freq="D")
    ids = [f"A{i}" for i in range(10)]
    daily = pd.DataFrame({"device_id": np.repeat(ids, 10), "date": np.tile(dates, 10), "withdrawals": 100.0})
    daily.to_csv(tmp_path / "daily.csv", index=False, date_format="%Y-%m-%d")
    assert main(["ingest", "--home", str(home), "--kind", "daily", str(tmp_path / "daily.csv")]) == 0
    ws = Workspace.resolve(home)
    assert jobs.thin_last_day(ws, jobs.last_recorded_day(ws)) is None
    (tmp_path / "stray.csv").write_text("device_id,date,withdrawals\nA4,2026-10-11,800\n")
    assert main(["ingest", "--home", str(home), "--kind", "daily", str(tmp_path / "stray.csv")]) == 0
    said = jobs.thin_last_day(ws, jobs.last_recorded_day(ws))
    assert said.startswith("the last recorded day 2026-10-11 holds 1 device(s) against 10 on a day of the week")
    assert "run with --as-of 2026-10-11" in said


def test_help_explains_each_command(capsys):
    for command in ("ingest", "train", "forecast", "plan", "nightly", "backtest", "demo", "serve"):
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
        text = capsys.readouterr().out
        assert "--home" in text and "--config" in text


def test_forecast_before_the_champion_uses_no_future(cli_home, tmp_path, monkeypatch):
    """A champion trained on later days must not forecast an earlier morning: a model is fitted for it."""
    import forecasting
    from cashcast.config import load_config
    from cashcast.workspace import Workspace
    from forecasting import registry

    home, config_file = cli_home
    config = load_config(config_file)
    ws = Workspace.resolve(home)
    assert main(["train", "--home", str(home), "--config", str(config_file), "--as-of", "2026-10-01"]) == 0
    champion = registry.champion_version(ws, config).version
    seen = []
    real_train = forecasting.train
    monkeypatch.setattr(
        forecasting, "train", lambda daily, *a, **k: seen.append(daily["date"].max()) or real_train(daily, *a, **k)
    )
    out = tmp_path / "past.csv"
    args = [
        "forecast",
        "--home",
        str(home),
        "--config",
        str(config_file),
        "--as-of",
        "2026-08-01",
        "--horizon",
        "7",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert seen and max(seen) < pd.Timestamp("2026-08-01")
    assert pd.to_datetime(pd.read_csv(out)["date"]).min() == pd.Timestamp("2026-08-01")
    assert registry.champion_version(ws, config).version == champion  # the champion is untouched


def test_a_plan_keeps_the_visits_an_earlier_plan_already_ordered(cli_home, tmp_path):
    """Monday's plan orders Tuesday's visits (lead time 1): Tuesday's plan cannot change them, so it plans
    around them (the projection shows the visit) and lists only visits from Wednesday on."""
    shared, config = cli_home
    home = tmp_path / "home"  # without the module's later plans: planned after them, these would be late ones
    shutil.copytree(shared, home, ignore=shutil.ignore_patterns("plans"))
    common = ["--home", str(home), "--config", str(config)]
    assert main(["plan", *common, "--as-of", "2026-10-19", "--out", str(tmp_path / "monday.csv")]) == 0
    monday = pd.read_csv(home / "plans" / "2026-10-19" / "plan.csv", dtype={"device_id": str})  # also kept here
    pd.testing.assert_frame_equal(monday, pd.read_csv(tmp_path / "monday.csv", dtype={"device_id": str}))
    ordered = monday[(monday["order_by"] < "2026-10-20") & (monday["visit_date"] >= "2026-10-20")]
    assert len(ordered), "the sample should have visits ordered on Monday for Tuesday"
    assert main(["plan", *common, "--as-of", "2026-10-20"]) == 0
    tuesday = pd.read_csv(home / "plans" / "2026-10-20" / "plan.csv", dtype={"device_id": str})
    lead = pd.read_csv(REPO / "data" / "sample" / "devices.csv", dtype={"device_id": str}).set_index("device_id")
    earliest = pd.Timestamp("2026-10-20") + pd.to_timedelta(tuesday["device_id"].map(lead["lead_time_days"]), unit="D")
    assert (pd.to_datetime(tuesday["visit_date"]) >= earliest).all()
    projection = pd.read_csv(home / "plans" / "2026-10-20" / "projection.csv", dtype={"device_id": str})
    visits = projection.set_index(["device_id", "date"])["visit"]
    for row in ordered.itertuples():
        assert visits[(row.device_id, row.visit_date)], (row.device_id, row.visit_date)


def test_numeric_device_ids_keep_their_leading_zeros(tmp_path, capsys):
    """Terminal ids are often digits ("00017"): a balances file, the plan files read back by the analyst
    helpers and the report must all keep them as the lake does, not turn them into numbers (17)."""
    from cashcast import analyst
    from cashcast.workspace import Workspace

    sample = REPO / "data" / "sample"
    devices = pd.read_csv(sample / "devices.csv", dtype=str).head(4)
    ids = {old: f"{k:05d}" for k, old in enumerate(devices["device_id"], start=17)}
    daily = pd.read_csv(sample / "daily.csv", dtype=str)
    daily = daily[daily["device_id"].isin(ids)].assign(device_id=lambda f: f["device_id"].map(ids))
    devices = devices.assign(device_id=devices["device_id"].map(ids), name="")
    files = {"daily": tmp_path / "daily.csv", "devices": tmp_path / "devices.csv"}
    daily.to_csv(files["daily"], index=False)
    devices.to_csv(files["devices"], index=False)
    balances = tmp_path / "balances.csv"
    balances.write_text("device_id,balance\n" + "".join(f"{new},0\n" for new in ids.values()))
    home, config = tmp_path / "home", tmp_path / "fast.toml"
    config.write_text(FAST_CONFIG)
    for kind, path in files.items():
        assert main(["ingest", "--home", str(home), "--kind", kind, str(path)]) == 0
    capsys.readouterr()
    args = ["plan", "--home", str(home), "--config", str(config), "--as-of", "2026-11-02", "--balances", str(balances)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "ignored" not in err  # every balance found its device
    warned = [line for line in err.splitlines() if line.startswith("cashcast: warning:")]
    # Each warning is said once, however many stages meet it.
    assert len(warned) == len(set(warned))
    plan = analyst.latest_plan(Workspace.resolve(home))
    assert set(plan.plan["device_id"]) <= set(ids.values()) and set(plan.plan["device_id"])
    first_day = plan.projection[plan.projection["date"] == "2026-11-02"]
    assert set(first_day["device_id"]) == set(ids.values())
    assert (first_day.set_index("device_id").loc[list(ids.values()), "expected_opening_balance"] == 0).all()
    assert set(plan.summary["device_id"]) == {*ids.values(), "TOTAL"}


def test_each_warning_is_printed_once_on_one_line(capsys):
    """Training and forecasting meet the same estimated holiday year, say: the reader needs it once."""
    from flows import cli

    cli._warned.clear()
    for _ in range(2):
        cli._short_warning(UserWarning("holidays estimated for CN [2031]"), UserWarning, "features/x.py", 7)
    assert capsys.readouterr().err == "cashcast: warning: holidays estimated for CN [2031]\n"


def test_an_analysts_plan_what_if_is_cashcast_plans_plan_and_writes_nothing(cli_home, tmp_path):
    """ "This ATM at 90% in tomorrow's plan" could only be asked of a past window (analyst audit)."""
    from cashcast import analyst, jobs
    from cashcast.config import load_config

    home, config = cli_home
    ws, cfg = Workspace.resolve(home), load_config(config)
    as_of = pd.Timestamp("2026-11-01")
    out = tmp_path / "plan.csv"
    jobs.run_plan(ws, cfg, as_of, out=out)
    before = sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file() and "mlflow" not in p.name)
    scenarios = {"as is": {}, "cheap visits": {"visit_cost": 1.0}}
    results = analyst.plan_what_if(ws, cfg, scenarios, as_of, device_ids=["ATM-00001"])
    after = sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file() and "mlflow" not in p.name)
    assert after == before  # no plan, forecast or model written
    written = pd.read_csv(out, dtype={"device_id": str, "visit_date": str})
    same = results["as is"].plan
    assert same[["device_id", "amount"]].values.tolist() == written[["device_id", "amount"]].values.tolist()
    assert pd.to_datetime(same["visit_date"]).dt.strftime("%Y-%m-%d").tolist() == written["visit_date"].tolist()
    cheap = results["cheap visits"].plan
    visits = cheap.groupby("device_id").size()
    assert visits["ATM-00001"] > same.groupby("device_id").size()["ATM-00001"]  # cheap visits: more of them
    others = cheap[cheap["device_id"] != "ATM-00001"].reset_index(drop=True)
    pd.testing.assert_frame_equal(others, same[same["device_id"] != "ATM-00001"].reset_index(drop=True))
    with pytest.raises(KeyError, match="NOPE"):
        analyst.plan_what_if(ws, cfg, scenarios, as_of, device_ids=["NOPE"])


def test_the_nightly_hands_its_config_over_by_absolute_path(tmp_path, monkeypatch):
    """A relative --config was looked for in each Dask worker's own folder: every chunk failed (production audit)."""
    from flows import commands, nightly

    seen = []
    monkeypatch.setattr(nightly, "nightly_flow", lambda home, config_file, *rest: seen.append(config_file) or {})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.toml").write_text(FAST_CONFIG)
    commands.run_nightly(Workspace.resolve(tmp_path / "home"), "net.toml", None)
    assert seen == [str(tmp_path / "net.toml")]


def test_a_prefect_api_that_went_away_is_named(monkeypatch, capsys):
    """A nightly whose Prefect server died mid-run ended in '[Errno 111] Connection refused', naming nothing."""
    import httpx

    from flows import commands

    def refused(args):
        raise httpx.ConnectError("[Errno 111] Connection refused")

    monkeypatch.setattr(commands, "run", refused)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4250/api")
    assert main(["nightly", "--home", "/nonexistent"]) == 1
    assert capsys.readouterr().err.strip() == (
        "cashcast nightly: error: [Errno 111] Connection refused (the Prefect API at http://127.0.0.1:4250/api: is"
        " `prefect server start` running?)"
    )


def test_the_nightly_refuses_a_morning_past_the_lakes_window_once_for_the_network(tmp_path):
    from cashcast import jobs
    from cashcast.config import load_config
    from forecasting.forecaster import NoHistoryError

    daily = tmp_path / "daily.csv"
    daily.write_text("device_id,date,withdrawals\nA,2020-01-01,5\n")
    ws = Workspace.resolve(tmp_path / "home")
    assert main(["ingest", "--home", str(ws.home), "--kind", "daily", str(daily)]) == 0
    config = load_config()
    jobs.require_history_window(ws, config, pd.Timestamp("2020-06-01"))  # within the window: fine
    with pytest.raises(NoHistoryError, match="last recorded day is 2020-01-01.*max_history_days"):
        jobs.require_history_window(ws, config, pd.Timestamp("2024-01-01"))
