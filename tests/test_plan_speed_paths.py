"""The fast paths of `cashcast plan` give exactly what the straightforward code gave.

Each speed-up (lake read, terms input, path simulation in blocks, quantiles from one sort, formula
escaping) is checked against the plain computation on real components: the shipped sample network
ingested into a real Parquet lake, real forecaster-shaped paths.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from conftest import SAMPLE_DIR

import ingest
import replenishment
from cashcast import jobs
from cashcast.config import load_config
from cashcast.io import escape_formulas, write_table
from cashcast.schema import ContractError, DemandForecast, validate_daily
from features.censoring import mark_censored
from ingest.lake import DAILY_SCHEMA, _daily_frame
from replenishment import plan as plan_module


@pytest.fixture(scope="module")
def sample_lake(tmp_path_factory):
    """The shipped sample network ingested into a real lake (devices first, as the landing folder does)."""
    from cashcast.workspace import Workspace

    ws = Workspace.resolve(tmp_path_factory.mktemp("lake") / "home").ensure()
    config = load_config()
    for kind in ("devices", "daily", "status", "balances"):
        ingest.ingest_file(SAMPLE_DIR / f"{kind}.csv", kind, ws, config)
    return ws


def test_lake_read_is_the_validated_contract(sample_lake):
    import pyarrow.dataset as ds

    dataset = ds.dataset(sample_lake.table("daily"), format="parquet", partitioning="hive", schema=DAILY_SCHEMA)
    expected = validate_daily(dataset.to_table().to_pandas())
    pd.testing.assert_frame_equal(ingest.read_daily(sample_lake), expected, check_exact=True)
    some = sorted(expected["device_id"].unique())[:3]
    window = ingest.read_daily(sample_lake, start="2025-03-01", end="2025-03-31", device_ids=some)
    wanted = expected[expected["device_id"].isin(some) & expected["date"].between("2025-03-01", "2025-03-31")]
    pd.testing.assert_frame_equal(window, wanted.reset_index(drop=True), check_exact=True)


def test_lake_read_sorts_shuffled_rows_and_still_refuses_a_duplicate_day():
    rows = pd.DataFrame(
        {
            "device_id": ["B", "A", "B", "A"],
            "date": pd.to_datetime(["2025-01-02", "2025-01-03", "2025-01-01", "2025-01-01"]),
            "withdrawals": [3.0, 4.0, 1.0, np.nan],
            "deposits": [np.nan, 1.0, np.nan, np.nan],
            "n_withdrawals": [1.0, 2.0, 3.0, 4.0],
            "n_deposits": [np.nan] * 4,
        }
    )
    table = pa.Table.from_pandas(rows, schema=DAILY_SCHEMA, preserve_index=False)
    got = _daily_frame(table, "lake")
    pd.testing.assert_frame_equal(got, validate_daily(rows), check_exact=True)
    assert got["device_id"].tolist() == ["A", "A", "B", "B"]
    assert got["withdrawals"].tolist()[1:] == [4.0, 1.0, 3.0]
    duplicated = pa.concat_tables([table, table.slice(0, 1)])
    with pytest.raises(ContractError, match="duplicate device-day B 2025-01-02"):
        _daily_frame(duplicated, "lake")


def test_terms_from_contract_ordered_history_equal_the_terms_from_shuffled_rows(sample_lake):
    history = jobs.load_history(sample_lake, pd.Timestamp("2026-10-01"))
    daily = history.daily.copy()
    # A device whose every day is censored and one missing from the master still get terms.
    first = daily["device_id"] == daily["device_id"].iloc[0]
    daily.loc[first, "censored"] = True
    extra = daily[daily["device_id"] == daily["device_id"].iloc[-1]].assign(device_id="NEW-1")
    daily = validate_daily(pd.concat([daily, extra.iloc[:150]], ignore_index=True))
    config = load_config()
    # The contract's order (device, then date) skips the sort; any other order is sorted first.
    shuffled = daily.sample(frac=1.0, random_state=0)
    expected = replenishment.resolve_terms(history.devices, shuffled, config)
    pd.testing.assert_frame_equal(replenishment.resolve_terms(history.devices, daily, config), expected)
    assert "NEW-1" in set(expected["device_id"])
    means = replenishment.terms.trailing_mean_demand(daily)
    last = daily[~daily["censored"] & daily["withdrawals"].notna()].groupby("device_id").tail(91)
    np.testing.assert_allclose(means.loc[last["device_id"].unique()], last.groupby("device_id")["withdrawals"].mean())
    last_day = last.groupby("device_id")["date"].max()
    observed = expected.set_index("device_id")["last_observed"]
    assert (observed.loc[list(last_day.index)].to_numpy() == last_day.to_numpy()).all()


def test_a_device_whose_feed_stopped_says_so_in_its_plan(sample_lake):
    """Its forecast rests on weeks-old history: every plan row and its summary line tell cash ops to check it."""
    config = load_config().updated(plan={"horizon_days": 7})
    as_of = pd.Timestamp("2026-11-01")
    history = jobs.load_history(sample_lake, as_of, config=config)
    quiet = "ATM-00004"
    stopped = (history.daily["device_id"] == quiet) & (history.daily["date"] >= as_of - pd.Timedelta(days=20))
    history.daily = history.daily[~stopped]
    forecast = replenishment.naive_forecast(history.daily, as_of, config.plan.forecast_days, n_paths=50)
    failed = "BR-0004"  # visited twice in the week: the note is on both rows
    forecast.failures = {failed: "ets: ValueError: no convergence"}
    result = jobs.plan_forecast(forecast, history, config, jobs.device_terms(history, config))
    for device, note in (
        (quiet, "no usable record since 2026-10-11 (20 days): check the device and its feed"),
        (failed, "model failed, fallback forecast used"),
    ):
        reasons = result.plan["reason"].str.contains(note, regex=False).groupby(result.plan["device_id"]).all()
        assert reasons[device] and not reasons.drop(device).any()
        notes = result.summary.set_index("device_id")["notes"]
        assert note in notes[device] and not notes.drop(device).str.contains(note, regex=False).any()
    assert (result.plan["device_id"] == failed).sum() >= 2
    last = result.summary.set_index("device_id")["last_observed"]
    assert (
        last[quiet] == pd.Timestamp("2026-10-11") and last.drop([quiet, "TOTAL"]).eq(as_of - pd.Timedelta(days=1)).all()
    )
    assert last["TOTAL"] == as_of - pd.Timedelta(days=1)


def test_marking_censored_days_leaves_the_input_alone(sample_lake):
    daily = ingest.read_daily(sample_lake)
    status = ingest.read_table(sample_lake, "status")
    marked = mark_censored(daily, status)
    assert marked["censored"].any() and not daily["censored"].any()


def _paths(n: int, n_paths: int, days: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    level = rng.lognormal(10, 0.5, (n, 1, 1))
    return (level * rng.lognormal(0, 0.4, (n, n_paths, days))).astype("float32")


@pytest.mark.parametrize("top_up", [False, True])
def test_simulation_in_device_blocks_is_the_simulation_of_the_whole_fleet(monkeypatch, top_up):
    rng = np.random.default_rng(3)
    n, days = 23, 12
    net = _paths(n, 40, days)
    net[::4] -= _paths(len(net[::4]), 40, days, seed=1)  # branches: deposits can exceed withdrawals
    start = rng.uniform(0, 3e5, n)
    targets = np.where(rng.random((n, days)) < 0.25, rng.uniform(1e5, 4e5, (n, days)), np.nan)
    is_atm = rng.random(n) < 0.7
    final_end = rng.integers(days - 3, days + 1, n)
    monkeypatch.setattr(plan_module, "SIMULATE_BLOCK", 10**6)
    whole = plan_module.simulate_paths(net, start, targets, top_up, is_atm, final_end)
    monkeypatch.setattr(plan_module, "SIMULATE_BLOCK", 5)
    blocks = plan_module.simulate_paths(net, start, targets, top_up, is_atm, final_end)
    for name in ("before", "after", "short", "segment_risk"):
        np.testing.assert_array_equal(getattr(blocks, name), getattr(whole, name))


def test_simulation_by_hand():
    # One device, two paths, 100 cash: path 0 takes 30 a day, path 1 takes 80; visit on day 1 loads 100.
    net = np.array([[[30, 30, 30], [80, 80, 80]]], dtype="float32")
    targets = np.array([[np.nan, 100.0, np.nan]])
    run = plan_module.simulate_paths(net, np.array([100.0]), targets, False, np.array([True]))
    np.testing.assert_allclose(run.before[0], [100, 45, 45])
    np.testing.assert_allclose(run.after[0], [100, 100, 45])
    np.testing.assert_allclose(run.short[0], [0, 0, 0.5])
    assert run.segment_risk[0, 1] == 0.5 and np.isnan(run.segment_risk[0, [0, 2]]).all()
    # A min_balance of 30 is empty to the plan, as to the optimiser: path 1 ends days 0 and 1 at 20, below it, so
    # they count as running out too, while path 0 never goes below 40; the cash (and the demand served) is the same.
    floor = np.array([30.0])
    floored = plan_module.simulate_paths(net, np.array([100.0]), targets, False, np.array([True]), floor=floor)
    np.testing.assert_allclose(floored.before[0], run.before[0])
    np.testing.assert_allclose(floored.short[0], [0.5, 0.5, 0.5])
    assert floored.segment_risk[0, 1] == 0.5 and floored.opening_risk[0] == 0.5


@pytest.mark.parametrize("n_paths", [1, 2, 7, 200, 201])
def test_quantiles_from_one_sort_are_numpys(n_paths):
    paths = _paths(50, n_paths, 9)
    paths[0] = 0.0
    ordered = np.sort(paths, axis=1)
    levels = [0.0, 0.01, 0.5, 0.9, 0.95, 0.975, 0.99, 1.0]
    expected = np.quantile(paths, levels, axis=1)
    for k, level in enumerate(levels):
        got = plan_module._sorted_quantile(ordered, level)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected[k])


def test_clean_paths_align_by_device_and_never_touch_the_forecast():
    n, horizon = 6, 10
    withdrawals, deposits = _paths(n, 30, horizon), _paths(n, 30, horizon, seed=2)
    withdrawals[2, 5, 3] = np.nan
    ids = np.array([f"D{i}" for i in range(n)])
    dates = pd.date_range("2025-06-02", periods=horizon)
    forecast = DemandForecast(pd.DataFrame(), ids, dates, withdrawals.copy(), deposits.copy())
    fallback = np.full(n, 1000.0)
    same = plan_module._clean_paths(forecast, ids.astype(object), slice(2, 9), fallback)
    order = np.array([3, 1, 5, 0, 2, 4])
    moved = plan_module._clean_paths(forecast, ids[order].astype(object), slice(2, 9), fallback)
    np.testing.assert_array_equal(moved[0], same[0][order])
    np.testing.assert_array_equal(moved[1], same[1][order])
    assert [moved[2][k] for k in range(n)] == [same[2][i] for i in order]
    assert same[2][2] == "forecast had gaps: filled with the day's mean"
    assert same[1].dtype == np.float32 and not np.shares_memory(same[0], same[1])
    np.testing.assert_array_equal(forecast.withdrawal_paths, withdrawals)
    np.testing.assert_array_equal(forecast.deposit_paths, deposits)
    pair = np.array(["D1", "X"], dtype=object)
    unknown = plan_module._clean_paths(forecast, pair, slice(0, horizon), np.full(2, 1000.0))
    assert np.all(unknown[0][1] == 1000.0) and unknown[2][1].startswith("no forecast")


def test_formula_escaping_of_text_and_mixed_columns(tmp_path):
    frame = pd.DataFrame(
        {
            "name": pd.array(["=SUM(A1)", None, "ok", "-1 lobby", "@x"], dtype="string"),
            "mixed": ["+44", 3, None, "fine", "\tcmd"],
            "amount": [1.5, -2.0, np.nan, 4.0, 5.0],
        }
    )
    escaped = escape_formulas(frame)
    assert escaped["name"].tolist()[0] == "'=SUM(A1)" and escaped["name"].tolist()[3:] == ["'-1 lobby", "'@x"]
    assert escaped["mixed"].tolist()[:2] == ["'+44", 3] and escaped["mixed"].tolist()[4] == "'\tcmd"
    assert escaped["amount"].tolist()[:2] == [1.5, -2.0]
    assert frame["name"].tolist()[0] == "=SUM(A1)"
    text = write_table(frame, tmp_path / "out.csv").read_text()
    assert text.splitlines()[1] == "'=SUM(A1),'+44,1.5"


def test_backtest_window_terms_are_those_of_its_whole_known_history(sample_lake):
    config = load_config()
    with pytest.warns(jobs.ReplayWarning, match="30 device.* no cash count on the morning of 2026-09-01"):
        window = jobs.replay_window(sample_lake, config, pd.Timestamp("2026-09-01"), pd.Timestamp("2026-09-14"))
    expected = replenishment.resolve_terms(window.history.devices, window.known, config)
    pd.testing.assert_frame_equal(window.terms, expected)
