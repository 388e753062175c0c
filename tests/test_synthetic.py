"""The synthetic network must carry the patterns forecasting and planning are judged on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cashcast.config import parse_weekdays
from cashcast.schema import BALANCE_COLUMNS, DEVICE_COLUMNS, STATUS_COLUMNS, STATUS_STATES, validate_daily
from cashcast.synthetic import SyntheticNetwork, generate_network, write_sample, write_transactions_csv
from features.holidays import holiday_table

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "data" / "sample"


@pytest.fixture(scope="module")
def net() -> SyntheticNetwork:
    """The shipped sample's network: 20 ATMs, 6 branches, 4 recyclers, 2024-11-01 .. 2026-10-31."""
    return generate_network(seed=0)


@pytest.fixture(scope="module")
def truth(net: SyntheticNetwork) -> pd.DataFrame:
    return net.true_demand.merge(net.profiles, on="device_id")


def _blocks(name: str) -> list[pd.DatetimeIndex]:
    """Runs of days off in the sample window that hold a holiday called `name`."""
    table = holiday_table("CN", "", pd.Timestamp("2024-11-01"), pd.Timestamp("2026-10-31"))
    off = ~table["is_working_day"]
    run = (off != off.shift()).cumsum()
    return [
        pd.DatetimeIndex(group["date"])
        for _, group in table[off].groupby(run[off])
        if group["holiday_name"].str.contains(name).any()
    ]


def _working_days_before(block: pd.DatetimeIndex, k: int) -> pd.DatetimeIndex:
    table = holiday_table("CN", "", block[0] - pd.Timedelta(days=15), block[0] - pd.Timedelta(days=1))
    return pd.DatetimeIndex(table.loc[table["is_working_day"], "date"].iloc[-k:])


def test_same_seed_same_network_other_seed_differs() -> None:
    first = generate_network(n_atms=4, n_branches=2, n_recyclers=1, days=90, seed=7)
    again = generate_network(n_atms=4, n_branches=2, n_recyclers=1, days=90, seed=7)
    for field in ("daily", "true_demand", "devices", "balances", "status", "profiles"):
        pd.testing.assert_frame_equal(getattr(first, field), getattr(again, field))
    other = generate_network(n_atms=4, n_branches=2, n_recyclers=1, days=90, seed=8)
    assert not other.true_demand["withdrawals"].equals(first.true_demand["withdrawals"])


def test_demand_law_brackets_the_demand_drawn_from_it_and_keeping_it_changes_nothing() -> None:
    """network.law is the yardstick forecast of the replay benchmark: its paths must bracket the realised
    weekly sums as a calibrated forecast would, and asking for it must not change a drawn number."""
    shape = {"n_atms": 30, "n_branches": 8, "n_recyclers": 2, "days": 240, "seed": 3}
    plain, kept = generate_network(**shape), generate_network(**shape, keep_law=True)
    assert plain.law is None
    for field in ("daily", "true_demand", "devices", "balances", "status", "profiles"):
        pd.testing.assert_frame_equal(getattr(plain, field), getattr(kept, field))
    below_median, above_q90 = [], []
    for flow, law in kept.law.items():
        actual = kept.true_demand.pivot(index="device_id", columns="date", values=flow).reindex(law.device_ids)
        assert list(actual.columns) == list(pd.date_range(law.start, periods=law.mean.shape[1]))
        for origin in range(100, 233, 7):
            paths = law.sample_paths(law.start + pd.Timedelta(days=origin), 7, 400, np.random.default_rng(origin))
            week = actual.iloc[:, origin : origin + 7].to_numpy().sum(axis=1)
            q50, q90 = np.quantile(paths.sum(axis=2), [0.5, 0.9], axis=1)
            known = np.isfinite(week) & (q50 > 0)
            below_median.append(week[known] < q50[known])
            above_q90.append(week[known] > q90[known])
    assert 0.44 < np.concatenate(below_median).mean() < 0.56
    assert 0.06 < np.concatenate(above_q90).mean() < 0.14
    law = kept.law["withdrawals"]
    past_end = law.sample_paths(law.start + pd.Timedelta(days=236), 7, 5, np.random.default_rng(0))
    assert np.isfinite(past_end[:, :, :4]).all() and np.isnan(past_end[:, :, 4:]).all()
    with pytest.raises(ValueError, match="no drawn day before it"):
        law.sample_paths(law.start, 7, 5, np.random.default_rng(0))


def test_frames_honour_the_contracts(net: SyntheticNetwork) -> None:
    pd.testing.assert_frame_equal(validate_daily(net.daily), net.daily)
    assert list(net.devices.columns) == DEVICE_COLUMNS
    assert list(net.balances.columns) == BALANCE_COLUMNS
    assert list(net.status.columns) == STATUS_COLUMNS
    assert set(net.status["state"]) == set(STATUS_STATES)
    assert (net.status["end"] > net.status["start"]).all()
    ids = net.devices["device_id"]
    assert ids.str.fullmatch(r"ATM-\d{5}|BR-\d{4}|RC-\d{4}").all() and ids.is_unique
    assert net.devices["kind"].value_counts().to_dict() == {"atm": 20, "branch": 6, "recycler": 4}
    assert (net.balances["as_of"] == pd.Timestamp("2026-11-01")).all()
    assert net.daily["date"].max() == pd.Timestamp("2026-10-31")


def test_withdrawals_are_whole_notes_and_counts_follow_amounts(net: SyntheticNetwork) -> None:
    daily = net.daily
    assert (daily["withdrawals"] % 100 == 0).all() and (daily["withdrawals"] >= 0).all()
    served = daily["withdrawals"] > 0
    ticket = daily.loc[served, "withdrawals"] / daily.loc[served, "n_withdrawals"]
    assert ticket.between(100, 5000).all() and 400 < ticket.median() < 1200
    assert (daily.loc[~served, "n_withdrawals"] == 0).all()


def test_atms_only_dispense_branches_take_net_deposits(net: SyntheticNetwork) -> None:
    kind = net.daily["device_id"].str.split("-").str[0]
    assert net.daily.loc[kind == "ATM", ["deposits", "n_deposits"]].isna().all().all()
    assert net.daily.loc[kind != "ATM", "deposits"].notna().all()
    totals = net.daily[kind == "BR"].groupby("device_id")[["withdrawals", "deposits"]].sum()
    assert len(totals) == 6 and (totals["deposits"] > totals["withdrawals"]).all()


def test_atm_means_are_heterogeneous(truth: pd.DataFrame) -> None:
    means = truth[truth["device_id"].str.startswith("ATM")].groupby("device_id")["withdrawals"].mean()
    assert means.min() > 30_000 and means.max() < 800_000 and means.max() / means.min() > 2.5


def test_cash_piles_up_before_spring_festival(truth: pd.DataFrame) -> None:
    atm = truth[truth["device_id"].str.startswith("ATM")]
    blocks = _blocks("Spring Festival")
    assert len(blocks) == 2
    surge_days = [day for block in blocks for day in _working_days_before(block, 3)]
    table = holiday_table("CN", "", pd.Timestamp("2024-11-01"), pd.Timestamp("2026-10-31"))
    ordinary = set(table.loc[table["is_working_day"], "date"]) - set(surge_days)
    ordinary -= {d for b in blocks for d in pd.date_range(b[0] - pd.Timedelta(days=14), b[-1] + pd.Timedelta(days=7))}
    surge = atm.loc[atm["date"].isin(surge_days), "withdrawals"].mean()
    normal = atm.loc[atm["date"].isin(ordinary), "withdrawals"].mean()
    assert surge > 1.3 * normal


def test_office_atms_empty_and_transport_atms_busy_in_holiday_blocks(truth: pd.DataFrame) -> None:
    in_block = truth["date"].isin([d for name in ("Spring Festival", "National Day") for b in _blocks(name) for d in b])
    weekday = truth["date"].dt.day_of_week < 5
    ordinary = ~in_block & weekday
    by_location = truth.assign(in_block=in_block, ordinary=ordinary)
    office = by_location[by_location["location"] == "office"]
    transport = by_location[by_location["location"] == "transport"]
    assert len(office) and len(transport)
    assert (
        office.loc[office["in_block"], "withdrawals"].mean()
        < 0.6 * office.loc[office["ordinary"], "withdrawals"].mean()
    )
    assert (
        transport.loc[transport["in_block"], "withdrawals"].mean()
        > transport.loc[transport["ordinary"], "withdrawals"].mean()
    )


def test_office_atms_are_quiet_at_weekends(truth: pd.DataFrame) -> None:
    office = truth[(truth["location"] == "office") & truth["device_id"].str.startswith("ATM")]
    weekend = office["date"].dt.day_of_week >= 5
    assert office.loc[weekend, "withdrawals"].mean() < 0.7 * office.loc[~weekend, "withdrawals"].mean()


def _censored_by_status(status: pd.DataFrame) -> set[tuple[str, pd.Timestamp]]:
    """Device-days that a status interval overlaps for a positive time."""
    days = set()
    for row in status.itertuples():
        day = row.start.normalize()
        while day < row.end:
            days.add((row.device_id, day))
            day += pd.Timedelta(days=1)
    return days


def test_censored_days_are_the_status_days_and_fall_short_of_demand(net: SyntheticNetwork) -> None:
    daily = net.daily
    flagged = set(zip(daily.loc[daily["censored"], "device_id"], daily.loc[daily["censored"], "date"], strict=True))
    recorded = set(zip(daily["device_id"], daily["date"], strict=True))
    assert flagged == _censored_by_status(net.status) & recorded
    assert 0.005 < daily["censored"].mean() < 0.06
    both = daily.merge(net.true_demand, on=["device_id", "date"], suffixes=("", "_true"))
    assert len(both) == len(daily)
    censored = both[both["censored"]]
    assert (censored["withdrawals"] < censored["withdrawals_true"]).all()
    assert (censored["withdrawals"] == 0).any()  # full days offline or out of cash
    clean = both[~both["censored"]]
    np.testing.assert_array_equal(clean["withdrawals"], clean["withdrawals_true"])


def test_some_days_are_not_recorded_rather_than_zero(net: SyntheticNetwork) -> None:
    keys = ["device_id", "date"]
    missing = net.true_demand.merge(net.daily[keys], on=keys, how="left", indicator=True)
    missing = missing[missing["_merge"] == "left_only"]
    assert 20 < len(missing) < 0.02 * len(net.true_demand)
    assert (missing["withdrawals"] > 0).all()  # demand happened; only the record is lost


def test_cold_start_device_has_two_to_three_weeks_of_history(net: SyntheticNetwork) -> None:
    days = net.true_demand.groupby("device_id").size()
    assert days.between(14, 21).sum() == 1
    assert days.max() == 730


def test_device_master_carrier_terms(net: SyntheticNetwork, truth: pd.DataFrame) -> None:
    devices = net.devices.set_index("device_id")
    assert (devices["capacity"] % 10_000 == 0).all() and (devices["load_multiple"] == 10_000).all()
    atm = devices[devices["kind"] == "atm"]
    cover = atm["capacity"] / truth.groupby("device_id")["withdrawals"].mean().loc[atm.index]
    assert cover.between(6.5, 20.5).all()
    assert (devices["max_balance"] <= devices["capacity"]).all()
    assert (devices["min_balance"] < devices["max_balance"]).all()
    assert (
        devices.loc[devices["kind"] != "atm", "max_balance"] < devices.loc[devices["kind"] != "atm", "capacity"]
    ).all()
    assert devices["visit_cost"].between(600, 1500).all()
    assert (devices["emergency_visit_cost"] / devices["visit_cost"]).between(2.5, 3.5).all()
    assert devices["holding_rate"].between(0.03, 0.06).all()
    assert devices["lead_time_days"].isin([1, 2]).all() and (devices["service_level"] == 0.99).all()
    assert all(set(parse_weekdays(w)) <= {0, 1, 2, 3, 4} for w in devices["visit_weekdays"])
    assert (devices["country"] == "CN").all() and devices["region"].str.len().gt(0).all()
    assert devices["name"].str.startswith(("=", "+")).sum() == 1
    balance = net.balances.set_index("device_id")["balance"]
    assert (balance >= 0).all() and (balance <= devices["capacity"]).all()


def test_outage_rate_zero_leaves_only_cash_outs() -> None:
    quiet = generate_network(n_atms=5, n_branches=1, n_recyclers=1, days=120, seed=1, outage_rate=0.0)
    assert set(quiet.status["state"]) <= {"cash_out"}


def test_other_countries_use_their_own_calendar() -> None:
    net = generate_network(n_atms=3, n_branches=1, n_recyclers=0, start="2025-12-01", days=60, country="GB", seed=2)
    assert (net.devices["country"] == "GB").all()
    pd.testing.assert_frame_equal(validate_daily(net.daily), net.daily)


def test_shipped_sample_regenerates_byte_for_byte(tmp_path: Path) -> None:
    written = write_sample(tmp_path, seed=0)
    assert sorted(p.name for p in written) == ["balances.csv", "daily.csv", "devices.csv", "status.csv"]
    for path in written:
        assert path.read_bytes() == (SAMPLE_DIR / path.name).read_bytes(), path.name
    assert sum((SAMPLE_DIR / p.name).stat().st_size for p in written) < 3_000_000
    devices = pd.read_csv(SAMPLE_DIR / "devices.csv", keep_default_na=False)
    assert devices["name"].str.startswith("+").any()  # raw input, not formula-escaped
    status = pd.read_csv(SAMPLE_DIR / "status.csv", parse_dates=["start", "end"])
    assert status["start"].dt.hour.between(7, 23).all()


def test_transactions_csv_rows_columns_and_resent_duplicates(tmp_path: Path) -> None:
    path = write_transactions_csv(
        tmp_path / "txn.csv", 25_000, seed=3, n_devices=50, with_duplicates=0.01, chunk_rows=10_000
    )
    txn = pd.read_csv(path, parse_dates=["timestamp"])
    assert list(txn.columns) == ["device_id", "timestamp", "amount", "type", "txn_id"]
    assert len(txn) == 25_000
    assert set(txn["type"]) == {"withdrawal", "deposit"}
    assert (txn["amount"] > 0).all()
    assert (txn.loc[txn["type"] == "withdrawal", "amount"] % 100 == 0).all()
    assert txn.loc[txn["type"] == "deposit", "device_id"].str.match(r"BR-|RC-").all()
    resent = txn.duplicated("txn_id")
    assert 100 < resent.sum() < 500
    assert txn.duplicated().sum() == resent.sum()  # a re-send repeats the whole row
    assert txn.loc[~resent, "timestamp"].is_monotonic_increasing
    assert txn["timestamp"].dt.hour.min() >= 6
