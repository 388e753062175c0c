"""Custom events (file validation, scope matching) and censoring from status and balances."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cashcast.config import load_config
from features import build, calendar_features, feature_columns, load_events, mark_censored, resolve_events_file
from features.events import EventsError, event_features

CONFIG = load_config()
EVENTS_CSV = """date_start,date_end,scope,scope_value,name
2024-03-01,2024-03-03,all,,Trade Fair!
2024-03-10,,region,north,Marathon
2024-03-05,2024-03-06,device,d2,Concert
"""


@pytest.fixture
def events(tmp_path) -> pd.DataFrame:
    path = tmp_path / "events.csv"
    path.write_text(EVENTS_CSV)
    return load_events(path)


def test_load_events_parses_and_sanitises(events):
    assert list(events["flag"]) == ["event_trade_fair", "event_marathon", "event_concert"]
    assert events.loc[1, "date_end"] == pd.Timestamp("2024-03-10")  # empty end: one-day event
    assert events["date_start"].dtype == "datetime64[ns]" and events.loc[0, "scope_value"] == ""


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ("2024-13-01,2024-03-03,all,,Fair", r"line 1, column date_start: not an ISO date"),
        ("05/11/2024,2024-03-03,all,,Fair", r"line 1, column date_start: not an ISO date \(YYYY-MM-DD\): '05/11/2024'"),
        ("2024-03-01,2024,all,,Fair", r"line 1, column date_end: not an ISO date"),
        ("2024-03-04,2024-03-03,all,,Fair", r"line 1, column date_end: ends before date_start"),
        ("2024-03-01,2024-03-03,city,x,Fair", r"line 1, column scope"),
        ("2024-03-01,2024-03-03,device,,Fair", r"line 1, column scope_value"),
        ("2024-03-01,2024-03-03,all,,!!", r"line 1, column name"),
    ],
)
def test_load_events_names_file_row_and_column(tmp_path, row, match):
    path = tmp_path / "bad_events.csv"
    path.write_text("date_start,date_end,scope,scope_value,name\n2024-01-01,2024-01-01,all,,ok\n" + row + "\n")
    with pytest.raises(EventsError, match=match.replace("line 1", "line 3")) as caught:
        load_events(path)
    assert "bad_events.csv" in str(caught.value)


def test_load_events_missing_column(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("date_start,scope,name\n2024-01-01,all,x\n")
    with pytest.raises(EventsError, match=r"events.csv: missing column\(s\) \['date_end', 'scope_value'\]"):
        load_events(path)


def test_events_file_resolves_against_the_workspace(tmp_path):
    assert resolve_events_file(CONFIG, tmp_path) is None
    relative = CONFIG.updated(calendar={"events_file": "cal/events.csv"})
    assert resolve_events_file(relative, tmp_path) == tmp_path / "cal" / "events.csv"
    absolute = CONFIG.updated(calendar={"events_file": str(tmp_path / "x.csv")})
    assert resolve_events_file(absolute, "/elsewhere") == tmp_path / "x.csv"


def test_event_features_match_by_scope(events):
    dates = pd.date_range("2024-02-28", "2024-03-12", freq="D")
    north_d1 = event_features(dates, events, "d1", "north", distance_cap=30).set_index("date")
    south_d2 = event_features(dates, events, "d2", "south", distance_cap=30).set_index("date")
    assert north_d1["event_trade_fair"].sum() == 3 and south_d2["event_trade_fair"].sum() == 3
    assert north_d1["event_marathon"].sum() == 1 and south_d2["event_marathon"].sum() == 0
    assert north_d1["event_concert"].sum() == 0 and south_d2["event_concert"].sum() == 2
    assert north_d1.loc["2024-02-28", "days_to_event"] == 2 and north_d1.loc["2024-03-02", "days_to_event"] == 0
    assert north_d1.loc["2024-03-04", "days_to_event"] == 6  # next for d1 is the north marathon
    assert south_d2.loc["2024-03-04", "days_to_event"] == 1
    assert south_d2.loc["2024-03-07", "days_to_event"] == 30  # nothing ahead in range: the cap
    assert list(north_d1["event_active"]) == list((north_d1["event_trade_fair"] + north_d1["event_marathon"]) > 0)


def test_calendar_and_build_carry_event_flags(events):
    devices = pd.DataFrame({"device_id": ["d1", "d2", "d3"], "region": ["north", "south", ""]})
    frame = calendar_features(devices, pd.Timestamp("2024-03-01"), pd.Timestamp("2024-03-10"), CONFIG, events)
    active = frame.groupby("device_id")["event_active"].sum()
    assert active.to_dict() == {"d1": 4, "d2": 5, "d3": 3}
    daily = pd.DataFrame({"device_id": ["d1"], "date": [pd.Timestamp("2024-02-20")], "withdrawals": [100.0]})
    built = build(daily, devices, pd.Timestamp("2024-03-01"), 10, CONFIG, events=events)
    assert {"event_trade_fair", "event_marathon", "event_concert"} <= set(feature_columns(built))
    assert built.groupby("device_id")["event_active"].sum().to_dict() == {"d1": 4, "d2": 5, "d3": 3}


def test_mark_censored_from_status_intervals_and_empty_mornings():
    days = pd.date_range("2024-05-01", periods=10, freq="D")
    daily = pd.DataFrame(
        {
            "device_id": np.repeat(["a", "b"], 10),
            "date": np.tile(days, 2),
            "withdrawals": 1000.0,
            "censored": [False] * 19 + [True],
        }
    )
    status = pd.DataFrame(
        {
            "device_id": ["a", "a", "b", "zz"],
            "start": pd.to_datetime(["2024-05-02 22:00", "2024-05-08 09:00", "2024-05-05 10:00", "2024-05-01 00:00"]),
            "end": pd.to_datetime(["2024-05-03 07:30", None, "2024-05-05 12:00", "2024-05-09 00:00"]),
            "state": ["cash_out", "offline", "maintenance", "cash_out"],
        }
    )
    balances = pd.DataFrame(
        {"device_id": ["b", "b"], "as_of": pd.to_datetime(["2024-05-06", "2024-05-07"]), "balance": [0.0, 5000.0]}
    )
    marked = mark_censored(daily, status, balances)
    censored = marked.loc[marked["censored"], ["device_id", "date"]]
    got = {(d, t.strftime("%m-%d")) for d, t in censored.itertuples(index=False)}
    expected = {("a", "05-02"), ("a", "05-03"), ("a", "05-08"), ("a", "05-09"), ("a", "05-10")}
    expected |= {("b", "05-06"), ("b", "05-10")}  # empty morning; already censored stays censored
    assert got == expected
    assert not daily["censored"].iloc[:19].any()  # the input is not modified
    assert mark_censored(daily.drop(columns="censored"), status.iloc[:0])["censored"].sum() == 0
    stamp = status["start"].iloc[:1].dt.tz_localize("Asia/Shanghai")  # 2024-05-02 22:00 local
    zoned = mark_censored(daily, status.iloc[:1].assign(start=stamp, end=stamp))  # zone-aware: the local day
    assert set(zoned.loc[zoned["censored"] & (zoned["device_id"] == "a"), "date"].dt.day) == {2}
