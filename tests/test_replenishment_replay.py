"""The backtest replay: accounting identities, information hygiene and the optimum as the floor."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cashcast.config import load_config
from replenishment import naive_forecast, replay, resolve_terms
from replenishment.plan import PlanWarning

CUB = Path(__file__).resolve().parents[1] / "data" / "cub_atm" / "daily.csv"


@pytest.fixture(scope="module")
def cub_case():
    """The real CUB ATMs: 5 devices, a 28-day window at the end of the data (holidays: IN/TN)."""
    raw = pd.read_csv(CUB, parse_dates=["date"])
    daily = raw.rename(columns={"series_id": "device_id", "total_amount_withdrawn": "withdrawals"})[
        ["device_id", "date", "withdrawals"]
    ]
    daily = daily[daily["date"] >= "2016-12-01"]
    end = daily["date"].max()
    start = end - pd.Timedelta(days=27)
    config = load_config().updated(
        devices={"country": "IN", "subdivision": "TN", "visit_cost": 5000.0, "emergency_visit_cost": 15000.0},
        forecast={"n_paths": 60},
    )
    terms = resolve_terms(None, daily[daily["date"] < start], config)
    seen = []

    def forecaster(history, as_of, horizon):
        seen.append((history["date"].max(), as_of))
        return naive_forecast(history, as_of, horizon, n_paths=60, seed=1)

    result = replay(daily, terms, start, end, forecaster, config)
    return result, daily, start, end, config, seen


def test_every_policy_reports_kpis(cub_case):
    result, *_ = cub_case
    assert list(result.kpis["policy"]) == ["cashcast", "fixed_weekly", "cover_rule", "perfect_foresight"]
    kpis = result.kpis.set_index("policy")
    assert kpis.loc["perfect_foresight", "cost_vs_optimum"] == 1.0
    parts = kpis["holding_cost"] + kpis["visit_cost"] + kpis["emergency_cost"]
    np.testing.assert_allclose(kpis["total_cost"], parts)
    assert (kpis["stockout_rate"] == kpis["stockout_device_days"] / (5 * 28)).all()
    assert set(result.per_device["policy"]) == set(kpis.index)
    assert len(result.per_device) == 4 * 5


def test_served_plus_lost_is_demand_and_cash_never_negative(cub_case):
    result, *_ = cub_case
    daily = result.daily
    np.testing.assert_allclose(daily["served"] + daily["lost"], daily["demand"], rtol=1e-12, atol=1e-6)
    assert (daily["opening_balance"] >= 0).all() and (daily["balance_after_visit"] >= 0).all()
    assert (daily["served"] >= 0).all() and (daily["lost"] >= 0).all()
    # Cash carries over: tomorrow opens with what today left.
    for _, group in daily.groupby(["policy", "device_id"]):
        closing = group["balance_after_visit"] + group["deposits"] - group["served"] - group["refused_deposits"]
        np.testing.assert_allclose(group["opening_balance"].to_numpy()[1:], closing.to_numpy()[:-1], atol=1e-6)
    visits = daily[daily["visit"]]
    assert (visits["load"] == visits["balance_after_visit"]).all()


def test_forecaster_sees_only_the_past_and_replans_weekly(cub_case):
    _, _, start, _, config, seen = cub_case
    assert [as_of for _, as_of in seen] == list(pd.date_range(start, periods=4, freq="7D"))
    assert all(last < as_of for last, as_of in seen)


def test_visits_fall_on_allowed_days_after_the_lead_time(cub_case):
    result, _, start, _, config, _ = cub_case
    routine = result.daily[result.daily["visit"] & ~result.daily["emergency"]]
    assert (routine["date"].dt.day_of_week < 5).all()
    assert (routine["date"] >= start + pd.Timedelta(days=config.devices.lead_time_days)).all()


def test_perfect_foresight_is_the_floor_for_stockout_free_policies():
    """With ample capacity the optimum has no stockouts and costs no more than any policy without them."""
    rng = np.random.default_rng(11)
    dates = pd.date_range("2025-01-01", periods=160, freq="D")
    ids = ["A", "B", "C"]
    daily = pd.DataFrame(
        {
            "device_id": np.repeat(ids, len(dates)),
            "date": np.tile(dates, len(ids)),
            "withdrawals": np.round(np.repeat([1000.0, 3000.0, 500.0], len(dates)) * rng.lognormal(0, 0.25, 480)),
            "deposits": np.r_[np.full(320, np.nan), np.round(900 * rng.lognormal(0, 0.25, 160))],
        }
    )
    config = load_config().updated(
        devices={"visit_cost": 40.0, "emergency_visit_cost": 120.0, "capacity_days": 20.0, "load_multiple": 100.0},
        forecast={"n_paths": 80},
    )
    start, end = dates[-35], dates[-1]
    devices = pd.DataFrame({"device_id": ids, "kind": ["atm", "atm", "recycler"]})
    terms = resolve_terms(devices, daily[daily["date"] < start], config)
    result = replay(daily, terms, start, end, lambda h, a, n: naive_forecast(h, a, n, n_paths=80, seed=2), config)
    kpis = result.kpis.set_index("policy")
    assert kpis.loc["perfect_foresight", "stockout_device_days"] == 0
    clean = kpis[kpis["stockout_device_days"] == 0]
    assert (clean["total_cost"] >= kpis.loc["perfect_foresight", "total_cost"] - 1e-6).all()
    pf = result.daily[result.daily["policy"] == "perfect_foresight"]
    assert pf["lost"].sum() == 0


def test_cents_lost_to_rounding_are_not_stockouts():
    """The optimum's loads come from float32 sums: on cassettes of millions they can fall a few cents short of
    the day's demand, which made perfect foresight look like the policy that runs out most."""
    rng = np.random.default_rng(7)
    dates = pd.date_range("2025-03-03", periods=150, freq="D")
    ids = [f"A{i}" for i in range(20)]
    withdrawals = np.round(rng.uniform(100_000, 350_000, len(ids) * len(dates)), 2)
    daily = pd.DataFrame(
        {"device_id": np.repeat(ids, len(dates)), "date": np.tile(dates, len(ids)), "withdrawals": withdrawals}
    )
    config = load_config().updated(devices={"load_multiple": 1.0}, backtest={"baselines": []})
    start, end = dates[-56], dates[-1]
    terms = resolve_terms(None, daily[daily["date"] < start], config)
    result = replay(daily, terms, start, end, lambda h, a, n: naive_forecast(h, a, n, n_paths=40), config)
    optimum = result.kpis.set_index("policy").loc["perfect_foresight"]
    assert 0 < optimum["lost_demand"] < 5  # cents here and there: counted, but no stockout day
    assert optimum["stockout_device_days"] == 0 and optimum["emergency_visits"] == 0


def _steady_atm_replay(days: int, window: int, **devices):
    """One ATM drawing 1,000 a day from 2025-03-03 for `days` days, replayed over its last `window` days
    (no baselines; `devices` adds to the terms): the result, the window's first and last day."""
    dates = pd.date_range("2025-03-03", periods=days, freq="D")
    daily = pd.DataFrame({"device_id": "A", "date": dates, "withdrawals": 1000.0})
    config = load_config().updated(
        devices={"visit_cost": 50.0, "emergency_visit_cost": 150.0, "load_multiple": 100.0, **devices},
        backtest={"baselines": []},
    )
    start, end = dates[-window], dates[-1]
    terms = resolve_terms(None, daily[daily["date"] < start], config)
    result = replay(daily, terms, start, end, lambda h, a, n: naive_forecast(h, a, n, n_paths=20), config)
    return result, start, end


def test_a_weekday_the_window_never_recorded_takes_its_demand_from_the_weeks_before():
    """A 7-day window whose only Sunday has no row: it was replayed as 0 demand for every policy (backtest
    audit); it is that device's Sunday median before the window."""
    dates = pd.date_range("2025-03-03", periods=100, freq="D")
    daily = pd.DataFrame(
        {"device_id": "A", "date": dates, "withdrawals": np.where(dates.day_of_week == 6, 3000.0, 1000.0)}
    )
    start, end = dates[-7], dates[-1]
    sunday = [day for day in pd.date_range(start, end) if day.day_of_week == 6]
    assert len(sunday) == 1
    daily = daily[daily["date"] != sunday[0]]
    config = load_config().updated(
        devices={"visit_cost": 50.0, "emergency_visit_cost": 150.0}, backtest={"baselines": []}
    )
    terms = resolve_terms(None, daily[daily["date"] < start], config)
    result = replay(daily, terms, start, end, lambda h, a, n: naive_forecast(h, a, n, n_paths=20), config)
    demand = result.daily.drop_duplicates("date").set_index("date")["demand"]
    assert demand.loc[sunday[0]] == 3000.0
    assert (result.per_device["imputed_days"] == 1).all()


@pytest.mark.parametrize(("demand", "capacity"), [(1230.0, 10_000.0), (1170.0, 12_000.0), (1010.0, 12_000.0)])
def test_with_top_up_visits_the_optimum_is_still_the_limit(demand, capacity):
    """A top-up adds whole bundles to the residual under the ceiling, so it cannot always reach the level the
    optimum's DP set: the optimum ran dry (backtest audit) or cost more than the plan. It swaps, the limit of both."""
    dates = pd.date_range("2025-03-03", periods=90, freq="D")
    daily = pd.DataFrame({"device_id": "A", "date": dates, "withdrawals": demand})
    config = load_config().updated(
        devices={"visit_cost": 50.0, "emergency_visit_cost": 150.0, "load_multiple": 1000.0, "capacity": capacity},
        backtest={"baselines": []},
        plan={"cassette_swap": False},
    )
    start, end = dates[-28], dates[-1]
    terms = resolve_terms(None, daily[daily["date"] < start], config)
    result = replay(daily, terms, start, end, lambda h, a, n: naive_forecast(h, a, n, n_paths=20), config)
    kpis = result.kpis.set_index("policy")
    assert kpis.loc["perfect_foresight", "stockout_device_days"] == 0
    assert kpis.loc["cashcast", "cost_vs_optimum"] >= 1 - 1e-9


def test_deposits_piling_up_are_picked_up_by_every_policy_and_never_pass_capacity():
    """A branch taking in 400 a day against 100 paid out: the baselines used to let its cash climb past max_balance
    and capacity all window, charged as holding (backtest audit). Now deposits beyond capacity are refused, a
    morning above max_balance brings an emergency pickup, the cover rule orders pickups itself, and the days held
    above max_balance are counted; perfect foresight has none."""
    dates = pd.date_range("2025-03-03", periods=120, freq="D")
    daily = pd.DataFrame({"device_id": "B", "date": dates, "withdrawals": 100.0, "deposits": 400.0})
    config = load_config().updated(
        devices={"visit_cost": 50.0, "emergency_visit_cost": 150.0, "load_multiple": 100.0},
        plan={"horizon_days": 14},
    )
    devices = pd.DataFrame({"device_id": ["B"], "kind": ["branch"], "capacity": [5000.0], "max_balance": [3000.0]})
    start, end = dates[-28], dates[-1]
    terms = resolve_terms(devices, daily[daily["date"] < start], config)
    result = replay(daily, terms, start, end, lambda h, a, n: naive_forecast(h, a, n, n_paths=20), config)
    days = result.daily
    assert (days["balance_after_visit"] <= 5000.0).all()
    closing = days["balance_after_visit"] + days["deposits"] - days["served"] - days["refused_deposits"]
    assert (closing <= 5000.0 + 1e-6).all()
    kpis = result.kpis.set_index("policy")
    assert kpis.loc["perfect_foresight", ["overflow_device_days", "emergency_visits"]].eq(0).all()
    assert kpis.loc["cover_rule", "visits"] > 0  # it orders pickups, not only emergencies
    # The weekly fill loads to capacity; by the next morning deposits have passed max_balance: the carrier comes.
    weekly = days[days["policy"] == "fixed_weekly"].reset_index(drop=True)
    pickups = weekly[weekly["emergency"]]
    assert len(pickups) > 0 and (pickups["balance_after_visit"] < pickups["opening_balance"]).all()
    held_over = (weekly["balance_after_visit"] > 3000.0) | (weekly["refused_deposits"] > 0)
    assert kpis.loc["fixed_weekly", "overflow_device_days"] == held_over.sum()


def test_a_branch_back_under_max_balance_by_the_visit_day_gets_no_emergency_pickup():
    """Saturday's deposits pass max_balance, Sunday's withdrawals take the cash far below it: Monday's 'pickup'
    brought cash in, at the emergency price (review). The executor alone, with no routine visit planned."""
    from replenishment.replay import _execute, _window

    dates = pd.date_range("2025-03-01", periods=80, freq="D")  # a Saturday
    saturday, sunday = dates.day_of_week == 5, dates.day_of_week == 6
    daily = pd.DataFrame(
        {
            "device_id": "B",
            "date": dates,
            "withdrawals": np.where(sunday, 4300.0, 100.0),
            "deposits": np.where(saturday, 2500.0, 100.0),
        }
    )
    config = load_config().updated(devices={"visit_cost": 50.0, "emergency_visit_cost": 150.0})
    devices = pd.DataFrame({"device_id": ["B"], "kind": ["branch"], "capacity": [9000.0], "max_balance": [3000.0]})
    start = dates[saturday][-2]
    terms = resolve_terms(devices, daily[daily["date"] < start], config)
    win = _window(daily, terms, start, dates[-1], config, pd.DataFrame({"device_id": ["B"], "balance": [2000.0]}))
    record = _execute(win, None, np.full(win.withdrawals.shape, np.nan), top_up=False)
    monday = 2
    assert record["opening"][0, monday] == 2000.0 + 2500 - 100 + 100 - 4300  # 200: back under max_balance
    assert not record["emergency"][0, monday] and record["level"][0, monday] == 200.0


def test_an_atm_counted_above_its_limits_keeps_its_cash_and_gets_no_pickup():
    """Refusing deposits must not delete cash the device holds (it deleted the count's excess over capacity), and
    a withdrawals-only device above max_balance is the plans' to mend, not an emergency's (the optimum paid one)."""
    dates = pd.date_range("2025-03-03", periods=90, freq="D")
    daily = pd.DataFrame({"device_id": "A", "date": dates, "withdrawals": 1000.0})
    config = load_config().updated(
        devices={"visit_cost": 50.0, "emergency_visit_cost": 150.0, "load_multiple": 100.0}, backtest={"baselines": []}
    )
    devices = pd.DataFrame({"device_id": ["A"], "capacity": [20_000.0], "max_balance": [10_000.0]})
    start, end = dates[-28], dates[-1]
    terms = resolve_terms(devices, daily[daily["date"] < start], config)
    opening = pd.DataFrame({"device_id": ["A"], "balance": [25_000.0]})
    result = replay(daily, terms, start, end, lambda h, a, n: naive_forecast(h, a, n, n_paths=20), config, opening)
    days = result.daily
    assert (days["refused_deposits"] == 0).all() and not days["emergency"].any()
    first = days[(days["policy"] == "perfect_foresight") & (days["date"] == start + pd.Timedelta(days=1))]
    assert first["opening_balance"].iloc[0] == 24_000.0 or first["visit"].iloc[0]  # kept, unless a visit swapped it


def test_a_replan_interval_longer_than_the_plan_is_refused():
    """Re-planning every 21 days on 7-day plans leaves two weeks of every three unplanned: the replay blamed the
    forecaster for the gap with emergency visits (config audit). Valid in the nightly run, refused in a replay."""
    dates = pd.date_range("2025-03-03", periods=60, freq="D")
    daily = pd.DataFrame({"device_id": "A", "date": dates, "withdrawals": 1000.0})
    config = load_config().updated(plan={"horizon_days": 7}, backtest={"replan_every_days": 21})
    terms = resolve_terms(None, daily[daily["date"] < dates[-28]], config)
    with pytest.raises(ValueError, match=r"replan_every_days 21 is longer than \[plan\] horizon_days 7"):
        replay(daily, terms, dates[-28], dates[-1], lambda h, a, n: naive_forecast(h, a, n, n_paths=20), config)


def test_perfect_foresight_visits_daily_a_cassette_smaller_than_a_days_demand():
    """Every policy runs such a device dry every day; the optimum still serves the most by visiting every
    allowed day, as the plan does, instead of saving visits and paying emergency ones (it was the dearest)."""
    result, start, _ = _steady_atm_replay(90, 21, capacity=600.0)
    kpis = result.kpis.set_index("policy")
    pf = result.daily[result.daily["policy"] == "perfect_foresight"]
    weekdays = pf["date"].dt.day_of_week < 5
    assert (
        (pf.loc[weekdays & (pf["date"] > start), "visit"]).all()
        and kpis.loc["perfect_foresight", "emergency_visits"] == 0
    )
    assert kpis.loc["cashcast", "cost_vs_optimum"] >= 1 - 1e-9


def test_perfect_foresight_keeps_covering_past_the_window_end():
    """The optimum plans on past the window, as every plan must: it may not empty the device on the
    window's last day (a saving no plan can make) and stays comparable to the policies."""
    result, _, end = _steady_atm_replay(120, 28, capacity_days=14.0)
    pf = result.daily
    pf = pf[pf["policy"] == "perfect_foresight"].set_index("date")
    closing = pf["balance_after_visit"] + pf["deposits"] - pf["served"]
    assert pf["lost"].sum() == 0
    # Visits come on the weekdays, so Friday's load carries the weekend: never empty on a Friday night
    # inside the window, nor on its last night, although the window alone would allow it.
    assert closing.loc[end] >= 1000.0 - 1e-6
    last_visit = pf.index[pf["visit"]].max()
    assert pf.loc[last_visit, "load"] > 1000.0 * ((end - last_visit).days + 1)


def test_cover_rule_loads_a_week_and_buffer_and_reorders_at_the_buffer():
    """Constant demand of 100 a day, Mon-Fri visits, lead 1: loads of 875 (7 days + 25%), and an order
    whenever the cash on the next reachable visit day would be down to 175 (the buffer)."""
    dates = pd.date_range("2025-03-03", periods=90, freq="D")  # a Monday
    daily = pd.DataFrame({"device_id": "A", "date": dates, "withdrawals": 100.0})
    config = load_config().updated(
        devices={"country": "GB", "capacity": 5000.0, "load_multiple": 1.0},
        plan={"allow_holiday_visits": True},  # a bank-holiday Monday would stretch the buffer (see below)
        backtest={"baselines": ["cover_rule"]},
    )
    start, end = dates[56], dates[-1]
    terms = resolve_terms(None, daily[daily["date"] < start], config)

    def run(config):
        result = replay(daily, terms, start, end, lambda h, a, n: naive_forecast(h, a, n, n_paths=20), config)
        return result.daily[result.daily["policy"] == "cover_rule"].reset_index(drop=True)

    days = run(config)
    visits = days[days["visit"]]
    assert len(visits) >= 3 and (visits["load"] == 875.0).all()
    assert (days["lost"] == 0).all()
    # Each visit comes when the cash left is down to the buffer (less the days to a weekday), never sooner.
    assert (visits["opening_balance"] <= 175.0).all() and (visits["opening_balance"] >= 0.0).all()
    # Forecast-free: with visits barred on the bank-holiday Monday 2025-05-05 the buffer runs dry first.
    barred = run(config.updated(plan={"allow_holiday_visits": False}))
    lost = barred[barred["lost"] > 0]
    assert list(lost["date"]) == [pd.Timestamp("2025-05-05")]


def test_with_exact_forecasts_the_lookahead_brings_the_rolling_plan_nearer_the_optimum():
    """With the actual future as the only path, weekly 14-day plans that stop at their horizon load too
    little near their end and the next plan pays for it; planning 7 days past the horizon ([plan]
    lookahead_days) closes most of that gap. No stockouts either way: the forecasts are exact."""
    rng = np.random.default_rng(1)
    dates = pd.date_range("2025-01-06", periods=160, freq="D")
    level = np.geomspace(500.0, 3000.0, 12)
    ids = [f"D{i}" for i in range(len(level))]
    weekly = np.array([1.0, 0.9, 0.9, 1.0, 1.3, 1.2, 0.7])[np.asarray(dates.day_of_week)]
    demand = level[:, None] * weekly[None, :] * rng.lognormal(0.0, 0.15, (len(level), len(dates)))
    daily = pd.DataFrame(
        {
            "device_id": np.repeat(ids, len(dates)),
            "date": np.tile(dates, len(ids)),
            "withdrawals": demand.round().ravel(),
        }
    )
    actual = daily.pivot(index="device_id", columns="date", values="withdrawals")
    devices = pd.DataFrame(
        {"device_id": ids, "kind": "atm", "visit_cost": 0.0136 * level, "emergency_visit_cost": 3 * 0.0136 * level}
    )

    def exact(history, as_of, horizon):
        forecast = naive_forecast(history, as_of, horizon, n_paths=1)
        future = actual.reindex(index=forecast.device_ids, columns=forecast.dates).to_numpy()
        forecast.withdrawal_paths = future[:, None, :].astype("float32")
        return forecast

    start = dates[90]
    ratio = {}
    for lookahead in (0, 7):
        config = load_config().updated(
            devices={"capacity_days": 14.0, "load_multiple": 10.0, "country": "GB", "holding_rate": 0.05},
            plan={"lookahead_days": lookahead},
            backtest={"baselines": []},
        )
        terms = resolve_terms(devices, daily[daily["date"] < start], config)
        kpis = replay(daily, terms, start, start + pd.Timedelta(days=55), exact, config).kpis.set_index("policy")
        assert kpis.loc["cashcast", "stockout_device_days"] == 0
        ratio[lookahead] = kpis.loc["cashcast", "cost_vs_optimum"]
    assert ratio[7] < ratio[0] - 0.02  # measured 1.066 against 1.100
    assert ratio[7] < 1.08


def test_devices_without_a_record_in_the_window_are_left_out_and_an_empty_window_refused():
    """A device closed before the window, or installed inside it, has nothing (or half a window) to replay:
    scoring it on imputed demand would make the KPIs up. A window with no record at all is an error, not a
    table of zeros."""
    dates = pd.date_range("2025-01-01", periods=120, freq="D")
    daily = pd.DataFrame(
        {
            "device_id": np.repeat(["OPEN", "CLOSED"], len(dates)),
            "date": np.tile(dates, 2),
            "withdrawals": np.full(2 * len(dates), 1000.0),
        }
    )
    new = pd.DataFrame({"device_id": "NEW", "date": dates[100:], "withdrawals": 1000.0})  # installed on day 100
    daily = daily[(daily["device_id"] == "OPEN") | (daily["date"] < dates[90])]  # CLOSED stops on day 90
    sparse = pd.DataFrame({"device_id": "SPARSE", "date": dates[[*range(96), 110]], "withdrawals": 1000.0})
    daily = pd.concat([daily, new, sparse], ignore_index=True)
    config = load_config().updated(devices={"visit_cost": 40.0, "capacity_days": 14.0}, forecast={"n_paths": 40})
    start, end = dates[95], dates[-1]
    terms = resolve_terms(pd.DataFrame({"device_id": ["NEW"]}), daily[daily["date"] < start], config)
    assert set(terms["device_id"]) == {"OPEN", "CLOSED", "NEW", "SPARSE"}

    def forecast(history, as_of, horizon):
        return naive_forecast(history, as_of, horizon, n_paths=40, seed=3)

    # The forecast covers the network (CLOSED too); the replay hands the planner its window's devices only.
    network = forecast(daily[daily["date"] < start], start, 14)
    window = network.subset(["OPEN", "NEW", "ELSEWHERE"])
    assert set(network.device_ids) == {"OPEN", "CLOSED", "SPARSE"} and list(window.device_ids) == ["OPEN"]
    assert set(window.frame["device_id"]) == {"OPEN"} and window.withdrawal_paths.shape[0] == 1
    np.testing.assert_array_equal(window.withdrawal_paths[0], network.withdrawal_paths[network.device_ids == "OPEN"][0])
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        result = replay(daily, terms, start, end, forecast, config)
    assert [str(w.message) for w in said if w.category is PlanWarning] == []  # left out once, in the notes
    assert set(result.per_device["device_id"]) == {"OPEN", "SPARSE"}
    # Two of its 25 days recorded: scored mostly on imputed demand, which the notes say by name.
    assert any("over half the window imputed" in note and "SPARSE" in note for note in result.notes)
    assert (result.kpis["device_days"] == 2 * len(pd.date_range(start, end))).all()
    assert any("CLOSED" in note and "left out" in note for note in result.notes)
    # Its days before day 100 would be made-up demand on an empty cassette: stockouts for every policy.
    assert any("NEW" in note and "installed after 2025-04-06" in note for note in result.notes)
    assert result.kpis.set_index("policy").loc["perfect_foresight", "stockout_device_days"] == 0
    # Without a master row, a device first seen inside the window is not in the terms at all: said too.
    unlisted = replay(daily, terms[terms["device_id"] != "NEW"], start, end, forecast, config)
    assert any("NEW" in note and "installed after 2025-04-06" in note for note in unlisted.notes)
    assert set(unlisted.per_device["device_id"]) == {"OPEN", "SPARSE"}
    with pytest.raises(ValueError, match="no demand recorded between 2025-06-01 and 2025-06-30"):
        replay(daily, terms, pd.Timestamp("2025-06-01"), pd.Timestamp("2025-06-30"), forecast, config)


def test_a_replay_starts_from_the_counts_of_its_first_morning_only():
    """The latest count before --start was used as the opening cash however old: a count of 10 three months
    before the window made even perfect foresight run dry on CUB (contract audit); brought forward without the
    visits since (a replay knows none), a count of last week ran a refilled device dry (review)."""
    from cashcast.jobs import ReplayWarning, replay_opening

    start = pd.Timestamp("2024-03-01")
    counts = pd.DataFrame(
        {
            "device_id": ["A", "B", "C", "A"],
            "as_of": pd.to_datetime(["2024-03-01", "2024-02-26", "2023-12-01", "2024-03-02"]),
            "balance": [500.0, 300.0, 10.0, 1.0],
        }
    )
    with pytest.warns(ReplayWarning, match=r"3 device\(s\) have no cash count on the morning of 2024-03-01 \(e.g. B"):
        opening = replay_opening(counts, start, ["A", "B", "C", "D"])
    assert opening.set_index("device_id")["balance"].to_dict() == {"A": 500.0}
    with pytest.warns(ReplayWarning, match=r"^2 device\(s\) have no cash count"):  # none counted at all: said too
        assert replay_opening(counts.iloc[:0], start, ["A", "B"]) is None
