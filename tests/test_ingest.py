"""Ingestion: raw CSV/Parquet files into the Parquet lake, with exact row accounting."""

from __future__ import annotations

import warnings
from pathlib import Path

import holidays
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import ingest
from cashcast.config import load_config
from cashcast.workspace import Workspace
from ingest import IngestError, ingest_file, read_daily, read_table
from ingest import lake as lk
from ingest.adapters import cub_to_daily, nn5_to_daily
from ingest.parse import hash_strings
from ingest.report import IngestWarning

PINNED_T1 = 9920327468531923532
CUB = Path(__file__).resolve().parents[1] / "data" / "cub_atm" / "daily.csv"


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.resolve(tmp_path / "ws")


@pytest.fixture
def config():
    return load_config().updated(ingest={"batch_rows": 1000})


def write(path: Path, body: str) -> Path:
    path.write_text(body.lstrip("\n"))
    return path


def lake_snapshot(ws: Workspace) -> dict[str, pd.DataFrame]:
    """Every lake file's content, by relative path (what 'the lake is unchanged' means)."""
    return {
        str(p.relative_to(ws.lake)): pd.read_parquet(p)
        for p in sorted(ws.lake.rglob("*.parquet"))
        if ".staging" not in str(p)
    }


def assert_same_lake(before: dict[str, pd.DataFrame], after: dict[str, pd.DataFrame]) -> None:
    assert sorted(before) == sorted(after)
    for name, frame in before.items():
        pd.testing.assert_frame_equal(frame, after[name])


def accounted(report) -> bool:
    return report.rows_read == report.rows_loaded + report.rows_rejected + report.rows_duplicate


def test_daily_ingest_round_trips_and_plain_pandas_reads_the_lake(tmp_path, ws, config):
    path = write(
        tmp_path / "daily.csv",
        """
device_id,date,withdrawals,deposits
A,2024-01-30,100,
A,2024-02-01,200,5
B,2024-01-31,300,
""",
    )
    report = ingest_file(path, "daily", ws, config)
    assert (report.rows_read, report.rows_loaded, report.rows_rejected, report.rows_duplicate) == (3, 3, 0, 0)
    assert report.rejects_path is None
    assert report.line() == "daily.csv: read 3, loaded 3, rejected 0, duplicates 0; no rejects"
    assert set(report.to_dict()) == {
        "file",
        "rows_read",
        "rows_loaded",
        "rows_rejected",
        "rows_duplicate",
        "rejects_path",
    }

    daily = read_daily(ws)
    assert list(daily["device_id"]) == ["A", "A", "B"]
    assert daily["withdrawals"].tolist() == [100.0, 200.0, 300.0]
    assert np.isnan(daily["deposits"].iloc[0]) and daily["deposits"].iloc[1] == 5.0
    assert not daily["censored"].any()
    # Absent days stay absent: nothing was invented for A on 2024-01-31.
    assert len(daily[daily["device_id"] == "A"]) == 2

    plain = pd.read_parquet(ws.table("daily"))
    assert sorted(plain["month"].astype(str).unique()) == ["2024-01", "2024-02"]
    assert sorted(p.parent.name for p in ws.table("daily").rglob("*.parquet")) == ["month=2024-01", "month=2024-02"]

    assert list(read_daily(ws, start="2024-01-31", end="2024-01-31")["device_id"]) == ["B"]
    assert read_daily(ws, device_ids=["A"])["date"].dt.strftime("%m-%d").tolist() == ["01-30", "02-01"]


def test_reingest_is_idempotent_and_reports_duplicates(tmp_path, ws, config):
    daily = write(tmp_path / "d.csv", "device_id,date,withdrawals\nA,2024-01-01,10\nA,2024-01-02,20\n")
    txns = write(
        tmp_path / "t.csv",
        "device_id,timestamp,amount,txn_id\nB,2024-01-01 10:00,5,x1\nB,2024-01-01 11:00,7,x2\nB,2024-01-03 09:00,1,\n",
    )
    ingest_file(daily, "daily", ws, config)
    ingest_file(txns, "transactions", ws, config)
    before = lake_snapshot(ws)

    again_daily = ingest_file(daily, "daily", ws, config)
    again_txns = ingest_file(txns, "transactions", ws, config)

    assert (again_daily.rows_loaded, again_daily.rows_duplicate) == (0, 2)
    assert (again_txns.rows_loaded, again_txns.rows_duplicate) == (0, 3)
    assert_same_lake(before, lake_snapshot(ws))


def test_corrected_daily_file_replaces_device_days(tmp_path, ws, config):
    ingest_file(
        write(tmp_path / "d1.csv", "device_id,date,withdrawals\nA,2024-01-01,10\nA,2024-01-02,20\n"),
        "daily",
        ws,
        config,
    )
    body = "device_id,date,withdrawals\nA,2024-01-02,25\nA,2024-01-03,30\nA,2024-01-03,31\nA,2024-01-02,25\n"
    with pytest.warns(IngestWarning, match="1 device-day.* replaced .* A on 2024-01-02: withdrawals 20 -> 25"):
        report = ingest_file(write(tmp_path / "d2.csv", body), "daily", ws, config)
    # Within one file the later row of a device-day wins: a repeat is a duplicate, a different value a reject
    # that names the row replacing it (two demands for one day are a question for the sender).
    assert accounted(report) and (report.rows_loaded, report.rows_duplicate, report.rows_rejected) == (2, 1, 1)
    assert read_daily(ws)["withdrawals"].tolist() == [10.0, 25.0, 31.0]
    rejects = pd.read_csv(report.rejects_path, dtype=str, keep_default_na=False)
    assert rejects[["row", "reason", "date", "withdrawals"]].values.tolist() == [
        ["3", "same device_id and date as row 4, a later row with other values, which wins", "2024-01-03", "30"]
    ]


def test_transactions_sum_to_local_days_and_late_files_top_up(tmp_path, ws, config):
    path = write(
        tmp_path / "t1.csv",
        """
device_id,timestamp,amount,type,txn_id
A,2024-01-01 23:59:59,100,withdrawal,1
A,2024-01-02 00:00:00,40,,2
A,2024-01-01 12:00:00,30,deposit,3
A,2024-01-01 12:00:00,30,deposit,3
""",
    )
    first = ingest_file(path, "transactions", ws, config)
    assert (first.rows_loaded, first.rows_duplicate) == (3, 1)
    late = write(
        tmp_path / "t2.csv",
        """
device_id,timestamp,amount,type,txn_id
A,2024-01-01 08:00:00,11,withdrawal,4
A,2024-01-01 23:59:59,100,withdrawal,1
""",
    )
    second = ingest_file(late, "transactions", ws, config)
    assert (second.rows_loaded, second.rows_duplicate) == (1, 1)

    daily = read_daily(ws).set_index("date")
    assert daily.loc["2024-01-01", "withdrawals"] == 111.0
    assert daily.loc["2024-01-01", "n_withdrawals"] == 2
    assert daily.loc["2024-01-01", "deposits"] == 30.0
    assert daily.loc["2024-01-02", "withdrawals"] == 40.0
    assert np.isnan(daily.loc["2024-01-02", "deposits"])  # no deposit recorded that day
    assert len(read_table(ws, "transactions")) == 4


def test_transactions_without_txn_id_deduplicate_on_the_whole_row(tmp_path, ws, config):
    path = write(
        tmp_path / "t.csv",
        """
device_id,timestamp,amount
A,2024-03-01 10:00,50
A,2024-03-01 10:00,50
A,2024-03-01 10:00,60
B,2024-03-01 10:00,50
""",
    )
    with pytest.warns(IngestWarning, match="1 row.* repeat an earlier row of the file exactly .* row 3"):
        report = ingest_file(path, "transactions", ws, config)
    assert (report.rows_loaded, report.rows_duplicate) == (3, 1)
    assert read_daily(ws)["withdrawals"].tolist() == [110.0, 50.0]
    # An export pasted twice into one file: the repeats fall in later batches than their first rows (review).
    stamps = pd.date_range("2024-04-01", periods=1500, freq="30s")  # 1,000-row batches: the copy falls later
    rows = [f"C,{stamp:%Y-%m-%d %H:%M:%S},{10 + k % 2}\n" for k, stamp in enumerate(stamps)]
    twice = write(tmp_path / "twice.csv", "device_id,timestamp,amount\n" + "".join(rows) * 2)
    with pytest.warns(IngestWarning, match=f"{len(rows)} row.* repeat an earlier row of the file exactly"):
        report = ingest_file(twice, "transactions", ws, config)
    assert (report.rows_loaded, report.rows_duplicate) == (len(rows), len(rows))
    again = write(tmp_path / "again.csv", "device_id,timestamp,amount\n" + "".join(rows))
    with warnings.catch_warnings():  # sent again later: the lake's own rows, no news about the file
        warnings.simplefilter("error", IngestWarning)
        assert ingest_file(again, "transactions", ws, config).rows_duplicate == len(rows)


def test_zoned_timestamps_use_the_device_time_zone(tmp_path, ws, config):
    ingest_file(write(tmp_path / "devices.csv", "device_id,timezone\nLON,Europe/London\nSHA,\n"), "devices", ws, config)
    path = write(
        tmp_path / "t.csv",
        """
device_id,timestamp,amount
LON,2024-06-30T23:30:00Z,1
SHA,2024-06-30T23:30:00Z,2
SHA,2024-06-30T15:59:59+00:00,4
LON,2024-06-30 23:30:00,8
""",
    )
    report = ingest_file(path, "transactions", ws, config)
    assert report.rows_loaded == 4
    got = read_daily(ws).set_index(["device_id", "date"])["withdrawals"]
    # London is UTC+1 in summer: 23:30Z is 00:30 on 1 July. Shanghai (the workspace default) is UTC+8.
    # The naive London row is local time already and stays on 30 June.
    assert got[("LON", pd.Timestamp("2024-07-01"))] == 1.0
    assert got[("LON", pd.Timestamp("2024-06-30"))] == 8.0
    assert got[("SHA", pd.Timestamp("2024-07-01"))] == 2.0
    assert got[("SHA", pd.Timestamp("2024-06-30"))] == 4.0


def test_typed_parquet_input_with_zoned_timestamps(tmp_path, ws, config, capsys):
    frame = pd.DataFrame(
        {
            "device_id": ["A", "A"],
            "timestamp": pd.to_datetime(["2024-02-29 15:30", "2024-02-29 16:30"]).tz_localize("UTC"),
            "amount": [10, 20],  # integers: typed columns need no parsing
        }
    )
    path = tmp_path / "zoned.parquet"
    frame.to_parquet(path)
    report = ingest_file(path, "transactions", ws, config, progress=True)
    assert report.rows_loaded == 2
    assert "zoned.parquet" in capsys.readouterr().err  # the progress bar names the file
    got = read_daily(ws).set_index("date")["withdrawals"]
    # Shanghai is UTC+8: 15:30Z is 23:30 on 29 Feb, 16:30Z is 00:30 on 1 March (a new month partition).
    assert got.to_dict() == {pd.Timestamp("2024-02-29"): 10.0, pd.Timestamp("2024-03-01"): 20.0}
    assert sorted(p.name for p in ws.table("transactions").iterdir()) == ["month=2024-02", "month=2024-03"]


def test_messy_transactions_file_accounts_for_every_row_with_every_reason(tmp_path, ws, config):
    ingest_file(write(tmp_path / "devices.csv", "device_id\nA\nB\n"), "devices", ws, config)
    limit = config.ingest.max_amount
    path = write(
        tmp_path / "messy.csv",
        f"""
device_id,timestamp,amount,type,txn_id
A,2024-05-01 10:00,100,withdrawal,ok1
A,not a time,100,,r1
A,,100,,r2
A,2024-05-01 10:00,abc,,r3
A,2024-05-01 10:00,,,r4
A,2024-05-01 10:00,-1,,r5
A,2024-05-01 10:00,{limit * 2:.0f},,r6
A,2024-05-01 10:00,1,refund,r7
A,2999-01-01 10:00,1,,r8
ZZZ,2024-05-01 10:00,1,,r9
,2024-05-01 10:00,1,,r10
A,2024-05-01 10:00,1,withdrawal,r11,extra
A,2024-05-01 10:00,0,withdrawal,r12
A,1900-01-01 00:00,7,withdrawal,r13
A,2024-05-01 11:00,5,deposit,ok2
A,2024-05-01 12:00,100,withdrawal,ok1
""",
    )
    with pytest.warns(
        IngestWarning, match=r"1 row\(s\) repeat a txn_id already loaded .* e\.g\. row 17 \(txn_id ok1\)"
    ):
        report = ingest_file(path, "transactions", ws, config)  # ok1 again at 12:00: a duplicate by its txn_id
    assert accounted(report)
    assert (report.rows_read, report.rows_loaded, report.rows_rejected, report.rows_duplicate) == (16, 2, 13, 1)
    rejects = pd.read_csv(report.rejects_path, dtype=str, keep_default_na=False)
    assert list(rejects.columns[:4]) == ["file", "row", "column", "reason"]
    by_row = dict(zip(rejects["row"].astype(int), rejects["reason"], strict=True))
    assert by_row == {
        3: "unparseable timestamp",
        4: "missing timestamp",
        5: "unparseable amount",
        6: "missing amount",
        7: "negative amount",
        8: f"amount above max_amount {limit:g}",
        9: "unknown type (expected withdrawal or deposit)",
        10: "timestamp is in the future",
        11: "device_id not in the device master",
        12: "missing device_id",
        13: "wrong number of fields (expected 5)",
        14: "amount 0 (a transaction moves cash: amounts are positive)",
        15: "timestamp before 1970 (cash history starts later: an empty spreadsheet date?)",
    }
    assert set(rejects["file"]) == {str(path)}
    assert rejects.loc[rejects["row"] == "3", "timestamp"].item() == "not a time"
    assert Path(report.rejects_path).name.startswith("transactions-messy-")


def test_reject_rows_are_the_rows_a_spreadsheet_shows_past_blank_lines_and_multi_line_cells(tmp_path, ws, config):
    """Excel shows a blank line as an empty row and a quoted cell spanning lines as one row: so do the rejects."""
    ingest_file(write(tmp_path / "devices.csv", "device_id,name\nA,x\nB,y\n"), "devices", ws, config)
    body = (
        "device_id,date,withdrawals\n"  # row 1
        "A,2024-05-01,100\n"  # 2
        "\n"  # 3
        "A,2024-05-02,abc\n"  # 4
        '"B",2024-05-03,"1\n2"\n'  # 5: one cell over two lines
        "\r\n"  # 6
        "A,2024-05-04,1,9\n"  # 7: one field too many
        "\n"  # 8
        "B,2024-05-05,-3\n"  # 9
        "B,2024-05-06,4\n"  # 10
        "\n\n"  # trailing blank lines: no rows after them
    )
    report = ingest_file(write(tmp_path / "gaps.csv", body), "daily", ws, config)
    assert accounted(report) and (report.rows_read, report.rows_loaded, report.rows_rejected) == (6, 2, 4)
    rejects = pd.read_csv(report.rejects_path, dtype=str, keep_default_na=False)
    assert rejects[["row", "column"]].values.tolist() == [
        ["4", "withdrawals"],
        ["5", "withdrawals"],
        ["7", ""],
        ["9", "withdrawals"],
    ]
    assert rejects.loc[rejects["row"] == "7", "line"].item() == "A,2024-05-04,1,9"


@pytest.mark.parametrize(
    ("kind", "header", "column", "meant"),
    [
        ("devices", "device_id,capcity", "capcity", "capacity"),
        ("devices", "device_id,lead_time", "lead_time", "lead_time_days"),
        ("devices", "device_id,visit_weekday", "visit_weekday", "visit_weekdays"),
        ("daily", "device_id,date,withdrawals,deposit", "deposit", "deposits"),
        ("transactions", "device_id,timestamp,amount,txnid", "txnid", "txn_id"),
    ],
)
def test_a_misspelt_column_refuses_the_file_instead_of_being_ignored(tmp_path, ws, config, kind, header, column, meant):
    """A device master's `capcity` would leave every device on the default cassette without a word."""
    path = write(tmp_path / f"{kind}.csv", header + "\n")
    with pytest.raises(IngestError, match=f"column '{column}' is not a {kind} column: is it '{meant}'"):
        ingest_file(path, kind, ws, config)
    assert not ws.lake.exists() or not any(p.is_file() and p.suffix == ".parquet" for p in ws.lake.rglob("*"))


def test_other_columns_are_ignored_with_a_warning_and_blank_excel_headers_are_no_duplicates(tmp_path, ws, config):
    body = "device_id,date,withdrawals,terminal_model,,\nA,2024-05-01,100,NCR,,\n"
    with pytest.warns(IngestWarning, match="column\\(s\\) terminal_model, unnamed_5, unnamed_6 ignored: not daily"):
        report = ingest_file(write(tmp_path / "export.csv", body), "daily", ws, config)
    assert (report.rows_loaded, report.rows_rejected) == (1, 0)


def test_parquet_dates_written_as_numbers_read_like_the_csv_text(tmp_path, ws, config):
    """20261101 in an integer column is the 1st of November 2026, as in a CSV, not 20 million ns after 1970."""
    path = tmp_path / "daily.parquet"
    pq.write_table(pa.table({"device_id": ["A", "A"], "date": [20241101, 99], "withdrawals": [100.0, 200.0]}), path)
    report = ingest_file(path, "daily", ws, config)
    assert (report.rows_loaded, report.rows_rejected) == (1, 1)
    assert read_daily(ws)["date"].tolist() == [pd.Timestamp("2024-11-01")]
    assert pd.read_csv(report.rejects_path)["reason"].tolist() == ["unparseable date"]


def test_dates_that_name_no_day_are_rejected_not_read_as_the_first(tmp_path, ws, config):
    """ISO's reduced forms '2024' and '2024-05' are a year and a month: pandas would load them as 1 January and
    1 May, a device-day that never happened. The basic form 20240502 names a day and loads."""
    body = (
        "device_id,date,withdrawals\nA,2024,100\nA,2024-05,200\nA,20240502,300\nA,2024-05-03T00:00,400\nA,2024-5-4,5\n"
    )
    report = ingest_file(write(tmp_path / "daily.csv", body), "daily", ws, config)
    assert (report.rows_loaded, report.rows_rejected) == (3, 2)
    assert pd.read_csv(report.rejects_path)["reason"].tolist() == ["unparseable date"] * 2
    assert read_daily(ws)["date"].tolist() == [pd.Timestamp(f"2024-05-0{day}") for day in (2, 3, 4)]


def test_year_first_dates_with_slashes_or_dots_load_day_first_ones_stay_refused(tmp_path, ws, config):
    """2024/05/02 and 2024.5.3 (East Asian exports) can only be one day; 04/05/2024 could be two."""
    body = "device_id,date,withdrawals\nA,2024/05/02,1\nA,2024.5.3,2\nA,2024/05/04 00:00:00,3\nA,04/05/2024,4\n"
    report = ingest_file(write(tmp_path / "daily.csv", body), "daily", ws, config)
    assert (report.rows_loaded, report.rows_rejected) == (3, 1)
    assert pd.read_csv(report.rejects_path)["row"].tolist() == [5]
    assert read_daily(ws)["date"].tolist() == [pd.Timestamp(f"2024-05-0{day}") for day in (2, 3, 4)]
    body = "device_id,timestamp,amount\nB,2024/05/02 23:30:00,10\nB,2024.05.02T08:00+08:00,5\n"
    assert ingest_file(write(tmp_path / "txn.csv", body), "transactions", ws, config).rows_loaded == 2
    assert read_daily(ws).query("device_id == 'B'")["withdrawals"].tolist() == [15.0]


def test_amounts_of_a_many_digit_currency_are_cash_not_absurd(tmp_path, ws, config):
    """A Vietnamese ATM dispenses ~1.5 billion VND on a busy day: the absurd-amount limit must not reject it."""
    body = "device_id,date,withdrawals\nV,2024-05-01,1450000000\nV,2024-05-02,2300000000\n"
    report = ingest_file(write(tmp_path / "daily.csv", body), "daily", ws, config)
    assert (report.rows_loaded, report.rows_rejected) == (2, 0)
    assert read_daily(ws)["withdrawals"].tolist() == [1.45e9, 2.3e9]


def test_transactions_in_another_currency_are_rejected_not_summed(tmp_path, ws, config):
    """CNY and USD added into one device-day would be neither: the odd currency goes to the rejects."""
    body = """
device_id,timestamp,amount,currency
A,2024-05-01 10:00,100,CNY
A,2024-05-01 11:00,50,usd
A,2024-05-01 12:00,30,
A,2024-05-01 13:00,20, cny
"""
    report = ingest_file(write(tmp_path / "mixed.csv", body), "transactions", ws, config)
    assert accounted(report) and (report.rows_loaded, report.rows_rejected) == (3, 1)
    rejects = pd.read_csv(report.rejects_path, dtype=str, keep_default_na=False)
    assert rejects[["row", "column"]].values.tolist() == [["3", "currency"]]
    assert rejects["reason"].item().startswith("currency other than CNY (the file's main currency")
    assert read_daily(ws)["withdrawals"].tolist() == [150.0]  # the empty cell is the network's currency

    # Named in the config, the network's currency wins even where a file holds mostly another one.
    usd = load_config().updated(ingest={"batch_rows": 1000, "currency": "usd"})
    assert usd.ingest.currency == "USD"
    report = ingest_file(write(tmp_path / "mixed2.csv", body.replace("13:00", "14:00")), "transactions", ws, usd)
    rejects = pd.read_csv(report.rejects_path, dtype=str, keep_default_na=False)
    assert rejects["row"].tolist() == ["2", "5"] and set(rejects["reason"]) == {
        "currency other than USD (the network's, [ingest] currency)"
    }
    with pytest.raises(ValueError, match="currency"):
        load_config().updated(ingest={"currency": "yuan"})


def test_every_reject_reason_of_the_small_tables(tmp_path, ws, config):
    ingest_file(write(tmp_path / "dev0.csv", "device_id\nA\n"), "devices", ws, config)
    devices = write(
        tmp_path / "devices.csv",
        """
device_id,kind,capacity,visit_weekdays,service_level,timezone,country,subdivision,load_multiple,min_balance,max_balance,visit_cost,emergency_visit_cost
A,atm,100000,"Mon,Thu",0.99,Asia/Kolkata,in,tn,100,,,,
B,vault,,,,,,,,,,,
C,atm,lots,,,,,,,,,,
D,atm,-5,,,,,,,,,,
E,atm,,Someday,,,,,,,,,
F,atm,,,1.5,,,,,,,,
G,atm,,,,Mars/Olympus,,,,,,,
,atm,,,,,,,,,,,
H,atm,,Mon-Fri,,,XX,,,,,,
I,atm,,,,,IN,ZZ,,,,,
J,atm,,,,,,,0,,,,
K,atm,100000,,,,,,,100000,,,
L,branch,,,,,,,,50000,20000,,
M,atm,5000,,,,,,10000,,,,
N,atm,,,0,,,,,,,,
O,branch,,,,,,,,20000,20000,,
P,atm,,,,,,,,,,0,
Q,atm,,,,,,,,,,2000,1000
""",
    )
    report = ingest_file(devices, "devices", ws, config)
    assert (report.rows_loaded, report.rows_rejected, report.rows_duplicate) == (1, 17, 0)
    rejects = pd.read_csv(report.rejects_path)
    assert rejects["reason"].tolist() == [
        "unknown kind (expected atm, branch or recycler)",
        "unparseable capacity",
        "negative capacity",
        "unparseable visit_weekdays (expected e.g. Mon,Wed,Fri or Mon-Fri)",
        "service_level must be below 1",
        "unknown timezone",
        "missing device_id",
        "unknown country 'XX' (expected an ISO code such as CN, GB or IN)",
        f"unknown subdivision 'ZZ' of IN (known: {', '.join(holidays.list_supported_countries()['IN'])})",
        "load_multiple must be above 0 (the size of one bundle)",
        "min_balance at or above capacity",
        "max_balance at or below min_balance",
        "load_multiple above capacity (no whole bundle fits)",
        "service_level must be above 0 (e.g. 0.99)",
        "max_balance at or below min_balance",
        "visit_cost must be above 0 (stockouts are priced in visits: a free visit prices them at 0)",
        "emergency_visit_cost below visit_cost",
    ]
    assert rejects["column"].tolist()[-10:] == [
        "country",
        "subdivision",
        "load_multiple",
        "min_balance",
        "max_balance",
        "load_multiple",
        "service_level",
        "max_balance",
        "visit_cost",
        "emergency_visit_cost",
    ]
    master = ingest.read_table(ws, "devices").set_index("device_id")
    assert tuple(master.loc["A", ["country", "subdivision"]]) == ("IN", "TN")  # as the holidays package spells them
    balances = write(
        tmp_path / "balances.csv",
        "device_id,as_of,balance\nA,2024-01-01,500\nA,2024-13-01,1\nA,2024-01-02,-1\nQ,2024-01-02,1\nA,2999-01-01,1\n",
    )
    report = ingest_file(balances, "balances", ws, config)
    assert accounted(report) and report.rows_loaded == 1
    assert pd.read_csv(report.rejects_path)["reason"].tolist() == [
        "unparseable as_of",
        "negative balance",
        "device_id not in the device master",
        "as_of is in the future",
    ]
    status = write(
        tmp_path / "status.csv",
        """
device_id,start,end,state
A,2024-01-01 10:00,2024-01-01 18:00,cash_out
A,2024-01-05,2024-01-04,offline
A,2024-01-06,2024-01-07,asleep
A,2024-01-06,soon,offline
A,2024-01-08,,offline
""",
    )
    report = ingest_file(status, "status", ws, config)
    assert (report.rows_loaded, report.rows_rejected) == (2, 3)
    assert pd.read_csv(report.rejects_path)["reason"].tolist() == [
        "end before start",
        "unknown state (expected cash_out or offline)",
        "unparseable end",
    ]
    stored = read_table(ws, "status")
    assert stored["end"].isna().tolist() == [False, True]  # an empty end: the interval is still open


def test_daily_rejects_and_accounting(tmp_path, ws, config):
    path = write(
        tmp_path / "daily.csv",
        """
device_id,date,withdrawals,deposits
A,2024-01-01,10,
A,01/02/2024x,10,
A,2024-01-03,,
A,2024-01-04,5,-3
A,2099-01-01,5,
A,2024-01-01,12,
""",
    )
    report = ingest_file(path, "daily", ws, config)
    assert accounted(report)
    assert (report.rows_loaded, report.rows_rejected, report.rows_duplicate) == (1, 5, 0)
    assert pd.read_csv(report.rejects_path)["reason"].tolist() == [
        "same device_id and date as row 7, a later row with other values, which wins",
        "unparseable date",
        "missing withdrawals",
        "negative deposits",
        "date is in the future",
    ]
    assert read_daily(ws)["withdrawals"].tolist() == [12.0]


def test_semicolon_and_tab_separated_files_from_spreadsheets_load(tmp_path, ws, config):
    """Spreadsheets in decimal-comma locales save CSV with semicolons: read by the header's separator."""
    semicolons = write(tmp_path / "semi.csv", "device_id;date;withdrawals\nA;2024-01-01;10\nA;2024-01-02;2,5\n")
    report = ingest_file(semicolons, "daily", ws, config)
    assert (report.rows_loaded, report.rows_rejected) == (1, 1)  # a decimal comma is refused, not misread as 25
    assert pd.read_csv(report.rejects_path)["reason"].tolist() == ["unparseable withdrawals"]
    tabs = write(tmp_path / "tab.csv", "device_id\tdate\twithdrawals\nB\t2024-01-01\t7\n")
    assert ingest_file(tabs, "daily", ws, config).rows_loaded == 1
    assert read_daily(ws).set_index("device_id")["withdrawals"].to_dict() == {"A": 10.0, "B": 7.0}


def test_a_file_of_only_bad_rows_loads_nothing_and_keeps_the_lake(tmp_path, ws, config):
    ingest_file(write(tmp_path / "good.csv", "device_id,date,withdrawals\nA,2024-01-01,10\n"), "daily", ws, config)
    before = lake_snapshot(ws)
    for kind, body in [
        ("daily", "device_id,date,withdrawals\nA,someday,10\n"),
        ("transactions", "device_id,timestamp,amount\nA,2024-01-01 10:00,-1\n"),
        ("balances", "device_id,as_of,balance\nA,2024-01-01,x\n"),
        ("status", "device_id,start,end,state\nA,2024-01-01,2024-01-02,offline,extra\n"),
    ]:
        with pytest.warns(IngestWarning, match="every row was rejected, e.g. row 2") as said:
            report = ingest_file(write(tmp_path / f"{kind}.csv", body), kind, ws, config)
        assert "column :" not in str(said[0].message)  # a wrong-width line has no column to name
        assert (report.rows_read, report.rows_loaded, report.rows_rejected) == (1, 0, 1)
    assert_same_lake(before, lake_snapshot(ws))


def test_latest_wins_for_devices_balances_and_status(tmp_path, ws, config):
    ingest_file(write(tmp_path / "d1.csv", "device_id,kind,capacity\nA,atm,100\nB,branch,\n"), "devices", ws, config)
    report = ingest_file(write(tmp_path / "d2.csv", "device_id,capacity\nA,200\nB,\n"), "devices", ws, config)
    # A row replaces the values its file gives: a file of capacities leaves kinds (and names) as they were, so
    # B, whose capacity stays empty, is unchanged. It used to reset every column the file lacked to the default.
    assert (report.rows_loaded, report.rows_duplicate) == (1, 1)
    devices = read_table(ws, "devices").set_index("device_id")
    assert devices.loc["A", "capacity"] == 200.0 and devices["kind"].to_dict() == {"A": "atm", "B": "branch"}
    report = ingest_file(write(tmp_path / "d3.csv", "device_id,kind\nB,\n"), "devices", ws, config)
    assert report.rows_loaded == 1 and pd.isna(read_table(ws, "devices").set_index("device_id").loc["B", "kind"])
    assert list(read_table(ws, "devices").columns) == lk.DEVICE_TABLE_COLUMNS

    ingest_file(
        write(tmp_path / "b1.csv", "device_id,as_of,balance\nA,2024-01-01,5\nA,2024-01-02,6\n"), "balances", ws, config
    )
    ingest_file(write(tmp_path / "b2.csv", "device_id,as_of,balance\nA,2024-01-02,7\n"), "balances", ws, config)
    assert read_table(ws, "balances")["balance"].tolist() == [5.0, 7.0]

    ingest_file(
        write(tmp_path / "s1.csv", "device_id,start,end,state\nA,2024-01-01,2024-01-02,offline\n"), "status", ws, config
    )
    ingest_file(
        write(tmp_path / "s2.csv", "device_id,start,end,state\nA,2024-01-01,2024-01-03,offline\n"), "status", ws, config
    )
    assert read_table(ws, "status")["end"].tolist() == [pd.Timestamp("2024-01-03")]

    # Within one file as across files the later row wins; an earlier one that differs is a reject naming it.
    twice = write(tmp_path / "d3.csv", "device_id,capacity,name\nA,300,x\nB,5,y\nA,400,x\nB,5,y\n")
    report = ingest_file(twice, "devices", ws, config)
    assert accounted(report) and (report.rows_loaded, report.rows_duplicate, report.rows_rejected) == (2, 1, 1)
    rejects = pd.read_csv(report.rejects_path, dtype=str, keep_default_na=False)
    assert rejects[["row", "reason", "capacity"]].values.tolist() == [
        ["2", "same device_id as row 4, a later row with other values, which wins", "300"]
    ]
    assert read_table(ws, "devices").set_index("device_id")["capacity"].to_dict() == {"A": 400.0, "B": 5.0}


def test_absent_tables_read_as_empty_frames_with_columns(ws):
    for name in ("devices", "balances", "status", "transactions"):
        frame = read_table(ws, name)
        assert frame.empty and "device_id" in frame.columns
    daily = read_daily(ws)
    assert daily.empty and {"device_id", "date", "withdrawals", "censored"} <= set(daily.columns)
    with pytest.raises(ValueError, match="unknown lake table"):
        read_table(ws, "forecasts")


@pytest.mark.parametrize("kind", ["daily", "status"])
def test_a_file_with_a_header_and_no_rows_is_an_empty_day_not_an_error(tmp_path, ws, config, kind):
    """A nightly extract with nothing to report (no outages today) must not land in failed/."""
    header = {"daily": "device_id,date,withdrawals\n", "status": "device_id,start,end,state\n"}[kind]
    path = write(tmp_path / f"{kind}.csv", header)
    report = ingest_file(path, kind, ws, config)
    assert (report.rows_read, report.rows_loaded, report.rows_rejected, report.rejects_path) == (0, 0, 0, None)
    assert not ws.rejects.exists()


@pytest.mark.parametrize(
    ("name", "body", "kind", "message"),
    [
        (
            "nocol.csv",
            "device_id,date\nA,2024-01-01\n",
            "daily",
            r"nocol\.csv: missing required column\(s\) \['withdrawals'\]",
        ),
        ("empty.csv", "", "daily", r"empty\.csv: the file is empty"),
        (
            "latin.csv",
            "device_id,date,withdrawals\nM\xfcnchen,2024-01-01,1\n",
            "daily",
            r"latin\.csv: row 2: not UTF-8 text",
        ),
        ("bad.parquet", "not parquet at all", "daily", r"bad\.parquet: not a readable Parquet file"),
        ("ok.csv", "device_id,date,withdrawals\nA,2024-01-01,1\n", "weekly", r"ok\.csv: unknown kind 'weekly'"),
        ("book.xlsx", "PK\x03\x04 a workbook", "daily", r"book\.xlsx: not a CSV or Parquet file"),
        ("gap.csv", "\n\ndevice_id,date,withdrawals\nA,2024-01-01,1\n", "daily", r"gap\.csv: line 1 is blank"),
    ],
)
def test_unusable_files_raise_one_line_naming_the_file_and_write_nothing(
    tmp_path, ws, config, name, body, kind, message
):
    path = tmp_path / name
    path.write_bytes(body.encode("latin-1"))
    with pytest.raises(IngestError, match=message) as caught:
        ingest_file(path, kind, ws, config)
    assert "\n" not in str(caught.value)
    assert not list(ws.lake.rglob("*.parquet")) and not ws.rejects.exists()


def test_missing_file_raises(tmp_path, ws, config):
    with pytest.raises(IngestError, match="nowhere.csv: file not found"):
        ingest_file(tmp_path / "nowhere.csv", "daily", ws, config)
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(IngestError, match="folder.csv: a folder, not a file"):
        ingest_file(tmp_path / "folder.csv", "daily", ws, config)


def test_crash_mid_ingest_leaves_the_lake_unchanged(tmp_path, ws, config, monkeypatch):
    ingest_file(
        write(tmp_path / "d1.csv", "device_id,date,withdrawals\nA,2024-01-01,10\nA,2024-02-01,20\n"),
        "daily",
        ws,
        config,
    )
    before = lake_snapshot(ws)
    writes = []
    real_write = lk.write_parquet

    def crash_on_second(table, path):
        writes.append(path)
        if len(writes) == 2:
            raise OSError("disk full")
        real_write(table, path)

    monkeypatch.setattr(lk, "write_parquet", crash_on_second)
    fix = write(tmp_path / "d2.csv", "device_id,date,withdrawals\nA,2024-01-01,11\nA,2024-02-01,21\nA,2024-03-01,31\n")
    with pytest.raises(OSError, match="disk full"):
        ingest_file(fix, "daily", ws, config)
    assert len(writes) == 2
    assert_same_lake(before, lake_snapshot(ws))
    assert not list(ws.lake.glob(".staging-*"))
    assert read_daily(ws)["withdrawals"].tolist() == [10.0, 20.0]

    monkeypatch.setattr(lk, "write_parquet", real_write)
    with pytest.warns(IngestWarning, match="replaced"):
        assert ingest_file(fix, "daily", ws, config).rows_loaded == 3
    assert read_daily(ws)["withdrawals"].tolist() == [11.0, 21.0, 31.0]


def test_crash_after_the_commit_point_is_rolled_forward(tmp_path, ws, config, monkeypatch):
    ingest_file(write(tmp_path / "d1.csv", "device_id,date,withdrawals\nA,2024-01-01,10\n"), "daily", ws, config)
    fix = write(tmp_path / "d2.csv", "device_id,date,withdrawals\nA,2024-01-01,11\nA,2024-02-01,21\n")
    real_replace = lk.os.replace
    moves = []

    def crash_after_first_move(source, target):
        if str(target).endswith("part-0.parquet"):
            moves.append(target)
            if len(moves) == 2:
                raise OSError("power cut")
        real_replace(source, target)

    monkeypatch.setattr(lk.os, "replace", crash_after_first_move)
    with pytest.raises(OSError, match="power cut"):
        ingest_file(fix, "daily", ws, config)
    monkeypatch.setattr(lk.os, "replace", real_replace)
    assert list(ws.lake.glob(".staging-*"))  # committed, half applied
    assert read_daily(ws)["withdrawals"].tolist() == [11.0, 21.0]  # the reader finished the commit
    assert not list(ws.lake.glob(".staging-*"))


@pytest.mark.filterwarnings("ignore::ingest.report.IngestWarning")  # the replaced values, said
def test_a_read_during_a_commit_sees_the_lake_before_or_after_the_file_never_half(tmp_path, ws, config, monkeypatch):
    """A commit moves its month files into place one by one: a plan reading meanwhile forecast from half a file's
    load (kill audit: 4 torn reads in 439). Readers now wait for the moves to end."""
    import threading
    import time

    ingest_file(
        write(tmp_path / "d1.csv", "device_id,date,withdrawals\nA,2024-01-01,10\nA,2024-02-01,20\n"),
        "daily",
        ws,
        config,
    )
    fix = write(tmp_path / "d2.csv", "device_id,date,withdrawals\nA,2024-01-01,11\nA,2024-02-01,21\n")
    real_replace = lk.os.replace
    moving = threading.Event()

    def slow_replace(source, target):
        real_replace(source, target)
        if str(target).endswith("part-0.parquet"):
            moving.set()  # one month is in place, the other not yet
            time.sleep(0.5)

    monkeypatch.setattr(lk.os, "replace", slow_replace)
    writer = threading.Thread(target=ingest_file, args=(fix, "daily", ws, config))
    writer.start()
    assert moving.wait(10)
    seen = read_daily(ws)["withdrawals"].tolist()
    writer.join()
    assert seen == [11.0, 21.0]


def test_a_lake_the_reader_may_not_write_to_is_still_read(tmp_path, ws, config, monkeypatch):
    """The commit lock is a file in the lake: an analyst reading a read-only mount got 'Read-only file system'
    from every read (review). Such a reader reads without it."""
    import errno
    import os

    ingest_file(write(tmp_path / "d1.csv", "device_id,date,withdrawals\nA,2024-01-01,10\n"), "daily", ws, config)
    real_open = os.open

    def read_only(path, flags, *args):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    def read_only_builtin(path, mode="r", *args, **kwargs):
        if str(path).endswith(".lock") and set(mode) & set("wax+"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_builtin(path, mode, *args, **kwargs)

    real_builtin = open
    monkeypatch.setattr(lk.os, "open", read_only)
    monkeypatch.setattr("builtins.open", read_only_builtin)
    assert read_daily(ws)["withdrawals"].tolist() == [10.0]
    (ws.lake / ".commit.lock").unlink()  # not even a lock file to open for reading
    assert read_table(ws, "devices").empty and read_daily(ws)["withdrawals"].tolist() == [10.0]


def test_an_ingest_waiting_for_another_says_so(tmp_path, ws, config):
    """A nightly whose landing folder had files waited in silence, without end, on a stopped `cashcast ingest`
    holding the lake (kill audit). It says it waits, then loads once the other ends."""
    import threading
    import time

    ws.lake.mkdir(parents=True, exist_ok=True)
    held = threading.Event()

    def other_ingest() -> None:
        with lk.writer_lock(ws.lake):
            held.set()
            time.sleep(0.5)

    other = threading.Thread(target=other_ingest)
    other.start()
    assert held.wait(5)
    with pytest.warns(IngestWarning, match="another ingest is writing to .*; waiting for it to end"):
        report = ingest_file(
            write(tmp_path / "d.csv", "device_id,date,withdrawals\nA,2024-01-01,10\n"), "daily", ws, config
        )
    other.join()
    assert report.rows_loaded == 1


def test_a_read_inside_a_read_does_not_wait_for_itself(tmp_path, ws, config):
    """Inside a read (holding the commit lock shared), a nested read that found a crashed commit to finish waited
    for the exclusive lock its own thread held: a hang (review). It reads under the outer lock instead."""
    import threading

    ingest_file(write(tmp_path / "d1.csv", "device_id,date,withdrawals\nA,2024-01-01,10\n"), "daily", ws, config)
    seen = []

    def nested() -> None:
        with lk.consistent_read(ws.lake):
            crashed = ws.lake / ".staging-crashed"  # a commit decided, its files not moved yet
            crashed.mkdir()
            (crashed / "COMMIT").write_text("[]")
            seen.append(read_daily(ws)["withdrawals"].tolist())

    reader = threading.Thread(target=nested, daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive() and seen == [[10.0]]
    assert read_daily(ws)["withdrawals"].tolist() == [10.0] and not list(ws.lake.glob(".staging-*"))


def test_streaming_batches_match_a_pandas_reference(tmp_path, ws, config):
    rng = np.random.default_rng(7)
    n = 5000
    frame = pd.DataFrame(
        {
            "device_id": rng.choice(["A", "B", "C"], n),
            "timestamp": pd.Timestamp("2024-01-25") + pd.to_timedelta(rng.integers(0, 20 * 86400, n), unit="s"),
            "amount": rng.integers(1, 500, n) * 100.0,
            "type": rng.choice(["withdrawal", "deposit"], n, p=[0.8, 0.2]),
            "txn_id": [f"T{i}" for i in range(n)],
        }
    )
    repeats = frame.sample(300, random_state=1)  # re-sent transactions spread over later batches
    raw = pd.concat([frame, repeats], ignore_index=True)
    path = tmp_path / "big.csv"
    raw.to_csv(path, index=False)

    report = ingest_file(path, "transactions", ws, config)
    assert (report.rows_read, report.rows_loaded, report.rows_duplicate) == (n + 300, n, 300)

    frame["date"] = frame["timestamp"].dt.normalize()
    frame["w"] = frame["amount"].where(frame["type"] == "withdrawal", 0.0)
    expected = frame.groupby(["device_id", "date"])["w"].sum()
    got = read_daily(ws).set_index(["device_id", "date"])["withdrawals"]
    pd.testing.assert_series_equal(got, expected, check_names=False, check_index_type=False)
    # Same file as Parquet, typed columns: everything is already there.
    raw.to_parquet(tmp_path / "big.parquet")
    again = ingest_file(tmp_path / "big.parquet", "transactions", ws, config)
    assert (again.rows_loaded, again.rows_duplicate) == (0, n + 300)


def test_string_hash_is_stable_and_offset_safe():
    values = pa.array(["ATM-001", "", None, "ATM-001", "ATM-002", "é"])
    hashed = hash_strings(values)
    assert hashed[0] == hashed[3] and len(set(hashed[[0, 1, 4, 5]])) == 4
    assert hashed[1] == hashed[2]  # null hashes like the empty string
    np.testing.assert_array_equal(hash_strings(values.slice(3)), hashed[3:])
    # Pinned: keys are stored in the lake, so the function must never change.
    assert int(hash_strings(pa.array(["T1"]))[0]) == PINNED_T1


def test_real_cub_atm_file_ingests_after_mapping(tmp_path, ws, config):
    raw = pd.read_csv(CUB)
    daily = cub_to_daily(raw)
    path = tmp_path / "cub.parquet"
    daily.to_parquet(path)
    report = ingest_file(path, "daily", ws, config)
    assert (report.rows_read, report.rows_loaded, report.rows_rejected) == (11589, 11589, 0)
    lake = read_daily(ws)
    assert lake["device_id"].nunique() == 5
    assert lake["withdrawals"].sum() == raw["total_amount_withdrawn"].sum()
    assert lake["date"].min() == pd.Timestamp("2011-01-01") and lake["deposits"].isna().all()
    airport = ingest.read_daily(ws, start="2011-01-01", end="2011-01-02", device_ids=["Airport ATM"])
    assert airport["withdrawals"].tolist() == [503400.0, 268600.0]


def test_nn5_wide_table_maps_to_daily_rows_with_blanks_not_recorded(tmp_path, ws, config):
    """The NN5 layout: one column per ATM, blank cells, a trailing semicolon (an unnamed empty column)."""
    wide = tmp_path / "nn5.csv"
    wide.write_text("Date;N101;N102;\n1996-03-18;21.499;12.911\n1996-03-19;;0\n")
    daily = nn5_to_daily(pd.read_csv(wide, sep=";"), days_later=1)
    assert daily.to_dict("list") == {
        "device_id": ["N101", "N102", "N102"],
        "date": [pd.Timestamp("1996-03-19"), pd.Timestamp("1996-03-19"), pd.Timestamp("1996-03-20")],
        "withdrawals": [21499.0, 12911.0, 0.0],
    }
    path = tmp_path / "nn5.parquet"
    daily.to_parquet(path)
    assert ingest_file(path, "daily", ws, config).rows_loaded == 3


def test_a_lead_time_in_part_days_is_refused_not_rounded(tmp_path, ws, config):
    devices = write(tmp_path / "lead.csv", "device_id,lead_time_days\nA,1\nB,1.5\n")
    report = ingest_file(devices, "devices", ws, config)
    rejects = pd.read_csv(report.rejects_path)
    assert report.rows_loaded == 1 and rejects[["row", "column", "reason"]].values.tolist() == [
        [3, "lead_time_days", "lead_time_days must be whole days"]
    ]


def test_a_lake_that_cannot_be_written_is_named_with_what_was_loaded(tmp_path, ws, config, monkeypatch):
    """A full disk or a read-only lake folder: one line naming the lake, the file and the cause (it was pyarrow's
    "Error writing bytes to file"), and whether any of the file went in."""
    import errno

    daily = tmp_path / "daily.csv"
    daily.write_text("device_id,date,withdrawals\nA,2026-11-01,100\nA,2026-11-02,120\n")

    def disk_full(self):
        raise OSError("Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(lk.Staging, "commit", disk_full)
    with pytest.raises(IngestError) as caught:
        ingest_file(daily, "daily", ws, config)
    assert str(caught.value) == (
        f"{ws.lake}: cannot write the lake (Error writing bytes to file. Detail: [errno 28] No space left on"
        f" device) while loading {daily}: nothing of the file was loaded"
    )
    monkeypatch.undo()
    assert read_table(ws, "daily").empty and not list(ws.lake.glob(".staging-*"))

    real_apply = lk._apply

    def read_only(root, lake):
        raise OSError(errno.EROFS, "Read-only file system", str(lake / "daily"))

    monkeypatch.setattr(lk, "_apply", read_only)  # the change is recorded, moving it into place fails
    with pytest.raises(IngestError, match="Read-only file system.*its load is recorded and completes at the next"):
        ingest_file(daily, "daily", ws, config)
    monkeypatch.setattr(lk, "_apply", real_apply)
    assert len(read_table(ws, "daily")) == 2  # the next reader finished it, as the message said


def test_a_loaded_txn_id_sent_again_with_another_amount_is_a_duplicate_that_is_pointed_out(tmp_path, ws, config):
    """The contract de-duplicates by txn_id, so a corrected amount re-sent under a loaded id changes nothing; it
    used to be counted with the exact repeats in silence. Exact repeats stay quiet."""
    import warnings

    first = write(
        tmp_path / "t1.csv", "device_id,timestamp,amount,txn_id\nA,2024-05-01 10:00,100,t1\nA,2024-05-01 11:00,50,t2\n"
    )
    ingest_file(first, "transactions", ws, config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = ingest_file(first, "transactions", ws, config)
    assert (again.rows_loaded, again.rows_duplicate) == (0, 2)
    corrected = write(
        tmp_path / "t1-fixed.csv",
        "device_id,timestamp,amount,txn_id\n"
        "A,2024-05-01 11:00,50,t2\nA,2024-05-01 10:00,150,t1\nA,2024-05-02 09:00,70,t3\n",
    )
    with pytest.warns(
        IngestWarning, match=r"t1-fixed\.csv: 1 row\(s\) repeat a txn_id already loaded .* row 3 \(txn_id t1\)"
    ):
        report = ingest_file(corrected, "transactions", ws, config)
    assert (report.rows_read, report.rows_loaded, report.rows_rejected, report.rows_duplicate) == (3, 1, 0, 2)
    daily = read_table(ws, "daily").set_index("date")["withdrawals"]
    assert daily[pd.Timestamp("2024-05-01")] == 150.0 and daily[pd.Timestamp("2024-05-02")] == 70.0  # 100 + 50 kept
    # Repeats within a file are measured against what is kept, the loaded values: only the 150 differs.
    both = write(
        tmp_path / "t1-both.csv",
        "device_id,timestamp,amount,txn_id\nA,2024-05-01 10:00,150,t1\nA,2024-05-01 10:00,100,t1\n",
    )
    with pytest.warns(IngestWarning, match=r"t1-both\.csv: 1 row\(s\) repeat .* row 2 \(txn_id t1\)"):
        assert ingest_file(both, "transactions", ws, config).rows_duplicate == 2


def test_first_rows_of_each_key_in_a_batch():
    from ingest.load import _first_rows

    key = np.array([7, 3, 7, 7, 9, 3], dtype=np.uint64)
    assert _first_rows(key).tolist() == [0, 1, 0, 0, 4, 1]
    assert _first_rows(np.array([], dtype=np.uint64)).tolist() == []


def test_an_unclosed_quote_stops_the_file_instead_of_swallowing_the_rows_after_it(tmp_path, ws, config):
    """pyarrow read everything after an unclosed quote as one cell: rows_read 3 of 6, exit 0 (input audit)."""
    ingest_file(write(tmp_path / "good.csv", "device_id,date,withdrawals\nA,2024-01-01,10\n"), "daily", ws, config)
    before = lake_snapshot(ws)
    rows = "".join(f"A,2024-01-{day:02d},{day},ok\n" for day in range(4, 9))
    body = f'device_id,date,withdrawals,note\nA,2024-01-02,2,12" screen\nA,2024-01-03,3,"unclosed\n{rows}'
    says = "quote.csv: line 3, column note: a quote opens a cell there and is never closed"
    with pytest.warns(IngestWarning, match="note ignored"), pytest.raises(IngestError, match=says):
        ingest_file(write(tmp_path / "quote.csv", body), "daily", ws, config)
    assert_same_lake(before, lake_snapshot(ws))
    # A stray quote earlier ("a"b, read as it stands) does not hide it; nor a quote opened in a middle column.
    stray = body.replace('12" screen', '"a"b')
    with pytest.warns(IngestWarning), pytest.raises(IngestError, match="line 3, column note: a quote opens"):
        ingest_file(write(tmp_path / "stray.csv", stray), "daily", ws, config)
    middle = 'device_id,date,note,withdrawals\nA,2024-01-02,ok,2\nA,2024-01-03,"open,3\nA,2024-01-04,ok,4\n'
    with pytest.warns(IngestWarning), pytest.raises(IngestError, match="middle.csv: line 3: a quote opens"):
        ingest_file(write(tmp_path / "middle.csv", middle), "daily", ws, config)
    assert_same_lake(before, lake_snapshot(ws))
    # A quoted memo over several lines is one row, however the reader's blocks fall (they used to split it).
    memos = "device_id,date,withdrawals,memo\n" + "".join(
        f'B,{day:%Y-%m-%d},{i},"line one, of {i}\nline two"\n'
        for i, day in enumerate(pd.date_range("2000-01-01", periods=3000))
    )
    with pytest.warns(IngestWarning, match="memo ignored"):
        report = ingest_file(write(tmp_path / "memos.csv", memos), "daily", ws, config)
    assert (report.rows_read, report.rows_loaded) == (3000, 3000)


def test_odd_text_files_are_read_or_refused_by_row(tmp_path, ws, config):
    # The header alone, without a line end (an export of no outages): no rows, not a parser error.
    status = ingest_file(write(tmp_path / "s.csv", "device_id,start,end,state"), "status", ws, config)
    assert (status.rows_read, status.rows_loaded) == (0, 0)
    # A byte that is not UTF-8 deep in the file: named by row, with what to do.
    latin = tmp_path / "latin.csv"
    days = b"".join(b"A,2020-01-%02d,1\n" % day for day in range(1, 29))
    latin.write_bytes(b"device_id,date,withdrawals\n" + days * 200 + b"Caf\xe9,2020-02-01,1\n")
    with pytest.raises(IngestError, match=r"latin.csv: row 5602: not UTF-8 text; save it as UTF-8 CSV"):
        ingest_file(latin, "daily", ws, config)
    utf16 = tmp_path / "unicode.txt"
    utf16.write_text("device_id\tdate\twithdrawals\nA\t2024-01-05\t500\n", encoding="utf-16")
    with pytest.raises(IngestError, match="row 1: not UTF-8 text .UTF-16, as Excel's 'Unicode Text' saves"):
        ingest_file(utf16, "daily", ws, config)
    early = tmp_path / "early.csv"  # within the header's first read: still named by row
    early.write_bytes(b"device_id,date,withdrawals\nA,2020-01-01,1\nCaf\xe9,2020-01-02,1\n")
    with pytest.raises(IngestError, match="early.csv: row 3: not UTF-8 text .another encoding"):
        ingest_file(early, "daily", ws, config)
    # 12.000 in a semicolon file (a decimal-comma locale's) may be twelve thousand: refused, not read as 12.
    semicolons = write(tmp_path / "semi.csv", "device_id;date;withdrawals\nA;2024-01-01;12.000\nA;2024-01-02;12.5\n")
    report = ingest_file(semicolons, "daily", ws, config)
    assert (report.rows_loaded, report.rows_rejected) == (1, 1)
    assert "without thousands dots" in pd.read_csv(report.rejects_path)["reason"][0]
    fractions = write(tmp_path / "fractions.csv", "device_id;date;withdrawals\nC;2024-01-01;0.500\n")
    assert ingest_file(fractions, "daily", ws, config).rows_loaded == 1  # 0.500 is a half either way
    commas = write(tmp_path / "comma.csv", "device_id,date,withdrawals\nB,2024-01-01,12.000\n")
    assert ingest_file(commas, "daily", ws, config).rows_loaded == 1
    assert read_daily(ws).set_index("device_id")["withdrawals"].to_dict() == {"A": 12.5, "B": 12.0, "C": 0.5}


def test_zone_offsets_of_every_form_and_business_dates_as_written(tmp_path, ws, config):
    """+08 (PostgreSQL's form) was taken as no zone and the UTC time kept as local; a column mixing it with
    plain times crashed; a daily date sent as midnight UTC became the day before for a device west of UTC."""
    master = "device_id,timezone\nSHA,Asia/Shanghai\nNY1,America/New_York\n"
    ingest_file(write(tmp_path / "devices.csv", master), "devices", ws, config)
    body = """
device_id,timestamp,amount
SHA,2024-01-08 07:30:00+08,100
SHA,2024-01-08 07:31:00,50
SHA,2024-01-08 07:32:00+08:00,1
SHA,2024-01-08 07:33:00 UTC,7
SHA,2024-01-08 07:34:00+8,9
"""
    report = ingest_file(write(tmp_path / "t.csv", body), "transactions", ws, config)
    assert (report.rows_loaded, report.rows_rejected) == (3, 2)  # ' UTC', '+8': no ISO offsets: refused, not guessed
    assert read_daily(ws)[["device_id", "date", "withdrawals"]].values.tolist() == [
        ["SHA", pd.Timestamp("2024-01-08"), 151.0]
    ]
    midnight_utc = write(tmp_path / "d.csv", "device_id,date,withdrawals\nNY1,2024-01-08T00:00:00Z,9\n")
    ingest_file(midnight_utc, "daily", ws, config)
    stamps = pa.array([pd.Timestamp("2024-02-01", tz="UTC")])
    pq.write_table(pa.table({"device_id": ["NY1"], "date": stamps, "withdrawals": [4.0]}), tmp_path / "d.parquet")
    ingest_file(tmp_path / "d.parquet", "daily", ws, config)
    ny = read_daily(ws).query("device_id == 'NY1'")
    assert ny["date"].tolist() == [pd.Timestamp("2024-01-08"), pd.Timestamp("2024-02-01")]
    # Beside a zoned one, a bare date keeps its day: -08 ends 2024-03-08 and is no offset.
    mixed = "device_id,date,withdrawals\nNY1,2024-03-07T00:00:00Z,1\nNY1,2024-03-08,2\nNY1,2024-03-17,3\n"
    ingest_file(write(tmp_path / "mixed.csv", mixed), "daily", ws, config)
    march = read_daily(ws).query("device_id == 'NY1' and date >= '2024-03-01'")
    assert march["date"].dt.day.tolist() == [7, 8, 17]


def test_zoned_times_read_in_a_zone_not_of_the_device_country_are_said(tmp_path, ws, config):
    """A London ATM's 23:30Z read in the workspace's Shanghai is the next morning: the day moves silently unless
    the sender is told to set the device's zone (contract audit). A zone of the country, or an alias of one
    (US/Pacific), says nothing."""
    master = "device_id,country\nLON,UK\nSHA,CN\nLAX,US\n"  # UK: GB as the holidays package reads it
    ingest_file(write(tmp_path / "devices.csv", master), "devices", ws, config)
    status = "device_id,start,end,state\nLON,2024-01-08T23:00:00Z,2024-01-09T01:00:00Z,offline\n"
    with pytest.warns(IngestWarning, match=r"converted to Asia/Shanghai for device\(s\) of another country"):
        ingest_file(write(tmp_path / "s.csv", status), "status", ws, config)  # a status file is told too
    body = "device_id,timestamp,amount\nSHA,2024-01-08T23:30:00Z,1\nLON,2024-01-08T23:30:00Z,1\n"
    with pytest.warns(
        IngestWarning, match=r"converted to Asia/Shanghai for device\(s\) of another country, e\.g\. LON"
    ):
        ingest_file(write(tmp_path / "t.csv", body), "transactions", ws, config)
    pacific = config.updated(workspace={"timezone": "US/Pacific"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", IngestWarning)
        ingest_file(
            write(tmp_path / "u.csv", "device_id,timestamp,amount\nLAX,2024-01-08T20:00:00-08:00,1\n"),
            "transactions",
            ws,
            pacific,
        )
        ingest_file(
            write(tmp_path / "c.csv", "device_id,timestamp,amount\nSHA,2024-01-09T08:00:00+08:00,1\n"),
            "transactions",
            ws,
            config,
        )


def test_a_file_without_a_column_keeps_the_values_the_lake_holds_for_it(tmp_path, ws, config):
    first = "device_id,date,withdrawals,deposits\nA,2024-01-01,100,50\n"
    ingest_file(write(tmp_path / "d1.csv", first), "daily", ws, config)
    later = write(tmp_path / "d2.csv", "device_id,date,withdrawals\nA,2024-01-01,120\n")
    with pytest.warns(IngestWarning, match="withdrawals 100 -> 120"):
        ingest_file(later, "daily", ws, config)
    assert read_daily(ws)[["withdrawals", "deposits"]].values.tolist() == [[120.0, 50.0]]
    deposits_only = write(tmp_path / "d3.csv", "device_id,date,withdrawals,deposits\nA,2024-01-01,120,70\n")
    with pytest.warns(IngestWarning, match="e.g. A on 2024-01-01: deposits 50 -> 70"):  # the column that changed
        ingest_file(deposits_only, "daily", ws, config)


def test_device_terms_no_plan_can_use_are_rejected_at_ingest(tmp_path, ws, config):
    """inf and a lead time of 1,000 years loaded, then failed every plan of the network with a numpy message."""
    body = "device_id,capacity,lead_time_days,visit_cost\nA,inf,1,10\nB,1e400,1,10\nC,100,365000,10\nD,100,1,-inf\n"
    report = ingest_file(write(tmp_path / "devices.csv", body + "E,100,2,10\nF,100,,10\n"), "devices", ws, config)
    rejects = pd.read_csv(report.rejects_path)
    assert rejects[["row", "column"]].values.tolist() == [
        [2, "capacity"],
        [3, "capacity"],
        [4, "lead_time_days"],
        [5, "visit_cost"],
    ]
    assert (
        rejects["reason"][2].startswith("lead_time_days above 90") and report.rows_loaded == 2
    )  # F: the default lead time


def test_an_exports_word_for_no_value_is_no_device_id(tmp_path, ws, config):
    """Before any master existed, NULL, N/A and - were loaded as three devices."""
    body = "device_id,date,withdrawals\n" + "".join(f"{i},2024-01-01,1\n" for i in ("NULL", "N/A", "-", "nan", "A"))
    report = ingest_file(write(tmp_path / "d.csv", body), "daily", ws, config)
    assert (report.rows_loaded, report.rows_rejected) == (1, 4)
    assert set(pd.read_csv(report.rejects_path)["reason"]) == {
        "device_id is an export's word for no value (NULL, N/A, -)"
    }
    assert read_daily(ws)["device_id"].tolist() == ["A"]
