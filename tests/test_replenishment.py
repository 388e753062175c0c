"""The replenishment optimiser: terms, the seasonal-naive paths, the DP and the network plan."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.special import ndtri

from cashcast.config import load_config
from cashcast.schema import PLAN_COLUMNS, DemandForecast
from replenishment import (
    naive_forecast,
    new_device_twins,
    plan_network,
    resolve_terms,
    roll_balances_forward,
    typical_devices,
)
from replenishment.dp import (
    DeviceArrays,
    _path_quantile,
    chosen_loads,
    cycle_cost_per_day,
    need_quantile,
    prefix_costs,
    segment_table,
    solve_visits,
)
from replenishment.plan import TAIL_LEVEL, tame_tails

AS_OF = pd.Timestamp("2025-03-03")  # a Monday
NO_HOLIDAYS = pd.DataFrame({"device_id": [], "date": pd.to_datetime([]), "holiday_name": []})


def lognormal_forecast(
    means, horizon: int, n_paths: int = 100, sigma: float = 0.3, deposits=None, seed: int = 0, start=AS_OF
) -> DemandForecast:
    """Paths around constant daily means with lognormal day noise (deposits likewise)."""
    rng = np.random.default_rng(seed)
    means = np.asarray(means, dtype="float64")
    ids = np.array([f"D{i}" for i in range(len(means))], dtype=object)
    dates = pd.date_range(start, periods=horizon, freq="D")

    def paths(level):
        noise = rng.lognormal(-0.5 * sigma**2, sigma, (len(level), n_paths, horizon))
        return (np.asarray(level, dtype="float64")[:, None, None] * noise).astype("float32")

    withdrawals = paths(means)
    frame = pd.DataFrame(
        {
            "device_id": np.repeat(ids, horizon),
            "date": np.tile(dates, len(ids)),
            "model": "test",
            "yhat": np.repeat(means, horizon),
        }
    )
    return DemandForecast(frame, ids, dates, withdrawals, None if deposits is None else paths(deposits))


def make_terms(config, n: int, **columns) -> pd.DataFrame:
    devices = pd.DataFrame({"device_id": [f"D{i}" for i in range(n)], **columns})
    return resolve_terms(devices, None, config)


@pytest.fixture(scope="module")
def config():
    return load_config().updated(plan={"horizon_days": 10}, devices={"load_multiple": 10.0, "visit_cost": 50.0})


# ---------------------------------------------------------------- terms


def test_resolve_terms_fills_defaults_and_derives_capacity(config):
    dates = pd.date_range("2025-01-01", periods=120, freq="D")
    daily = pd.DataFrame(
        {
            "device_id": np.repeat(["A", "B"], len(dates)),
            "date": np.tile(dates, 2),
            "withdrawals": np.r_[np.full(120, 1000.0), np.full(120, 333.0)],
        }
    )
    devices = pd.DataFrame({"device_id": ["A", "C"], "capacity": [50_000.0, np.nan], "visit_weekdays": ["", "Mon,Thu"]})
    terms = resolve_terms(devices, daily, config).set_index("device_id")
    assert sorted(terms.index) == ["A", "B", "C"]
    assert terms.loc["A", "capacity"] == 50_000.0 and terms.loc["A", "capacity_source"] == "master"
    # 14 days x 333 = 4662, rounded up to the 10-unit bundle.
    assert terms.loc["B", "capacity"] == 4670.0
    assert terms.loc["B", "max_balance"] == 4670.0
    assert terms.loc["A", "visit_weekdays"] == config.devices.visit_weekdays
    assert terms.loc["C", "weekday_set"] == (0, 3)
    # C has no recorded day: forecast as the typical ATM, its cassette is sized on it too (of A's 1000 and B's 333
    # a day, the lower middle one: B), not one bundle loaded every allowed day (contract audit).
    assert terms.loc["C", "capacity"] == 4670.0 and terms.loc["C", "mean_daily_demand"] == 0
    assert terms.loc["C", "capacity_source"] == "no history: 14 x the typical atm's mean daily demand"
    assert typical_devices(terms.reset_index()) == {"": "B", "atm": "B"}
    # A device that stopped reporting long ago is nobody's twin (review: a branch closed in 2022).
    retired = pd.concat(
        [daily, pd.DataFrame({"device_id": "Z", "date": dates[:10] - pd.Timedelta(days=400), "withdrawals": 500.0})]
    )
    assert "Z" not in typical_devices(resolve_terms(devices, retired, config)).values()
    assert new_device_twins(terms.reset_index()) == {"C": "B"}
    branch = resolve_terms(devices.assign(kind=["atm", "branch"]), daily, config).set_index("device_id")
    assert branch.loc["C", "capacity"] == 4670.0  # no branch recorded: the typical device of any kind
    assert new_device_twins(branch.reset_index()) == {"C": "B"}
    assert branch.loc["C", "capacity_source"] == "no history: 14 x the typical recorded device's mean daily demand"
    # A nightly chunk is handed the network's typical demand, so a new device's cassette is the same in every chunk.
    network = {"": 500.0, "atm": 1000.0, "branch": 4000.0}
    handed = resolve_terms(devices.assign(kind=["atm", "branch"]), daily, config, network).set_index("device_id")
    assert handed.loc["C", "capacity"] == 56_000.0 and handed.loc["B", "capacity"] == 4670.0  # B: its own
    assert resolve_terms(devices, daily.iloc[:0], config).set_index("device_id").loc["C", "capacity_source"] == (
        "no history"
    )
    assert terms.loc["B", "visit_cost"] == 50.0 and terms.loc["B", "country"] == "CN"
    # A free visit would price stockouts at nothing and plan no visit at all: refused, naming the device.
    with pytest.raises(ValueError, match=r"visit_cost must be above 0 .* \['C'\]"):
        resolve_terms(devices.assign(visit_cost=[10.0, 0.0]), daily, config)
    # A master's dear visit against the config's emergency default: the emergency costs at least the visit.
    dear = resolve_terms(devices.assign(visit_cost=[10.0, 9000.0]), daily, config).set_index("device_id")
    assert dear["emergency_visit_cost"].to_dict() == {"A": 4500.0, "B": 4500.0, "C": 9000.0}


# ---------------------------------------------------------------- naive forecast


def test_naive_forecast_repeats_a_clean_weekly_pattern():
    dates = pd.date_range("2025-01-06", periods=8 * 7, freq="D")
    pattern = np.array([100.0, 200, 300, 400, 500, 600, 700])
    daily = pd.DataFrame({"device_id": "A", "date": dates, "withdrawals": pattern[dates.day_of_week]})
    as_of = dates[-1] + pd.Timedelta(days=1)
    forecast = naive_forecast(daily, as_of, 14, n_paths=20, seed=1)
    assert forecast.withdrawal_paths.shape == (1, 20, 14)
    assert forecast.dates[0] == as_of
    expected = pattern[forecast.dates.day_of_week]
    np.testing.assert_allclose(forecast.withdrawal_paths[0], np.tile(expected, (20, 1)), rtol=1e-6)
    assert list(forecast.frame["yhat"]) == list(expected)
    assert {"q50", "q90", "q95", "q99"} <= set(forecast.frame.columns)


def test_naive_forecast_noise_comes_from_history_and_ignores_the_future():
    rng = np.random.default_rng(3)
    dates = pd.date_range("2025-01-01", periods=200, freq="D")
    daily = pd.DataFrame({"device_id": "A", "date": dates, "withdrawals": 1000 * rng.lognormal(0, 0.3, len(dates))})
    as_of = dates[150]
    with_future = naive_forecast(daily, as_of, 7, n_paths=300, seed=5)
    without = naive_forecast(daily[daily["date"] < as_of], as_of, 7, n_paths=300, seed=5)
    np.testing.assert_array_equal(with_future.withdrawal_paths, without.withdrawal_paths)
    spread = with_future.withdrawal_paths[0].std(axis=0) / with_future.withdrawal_paths[0].mean(axis=0)
    assert 0.15 < spread.mean() < 0.6


# ---------------------------------------------------------------- the DP against brute force


def _brute_force_cost(net, allowed, balance, dev: DeviceArrays) -> float:
    """Cheapest schedule by enumerating every subset of allowed days, simulated day by day."""
    horizon = len(net)
    days = np.flatnonzero(allowed)
    best = np.inf
    floor = dev.min_balance[0]
    for size in range(len(days) + 1):
        for subset in itertools.combinations(days, size):
            bounds = [*subset, horizon]
            cost = dev.visit_cost[0] * size
            loads = {}
            for first, nxt in itertools.pairwise(bounds):
                need = max(0.0, np.max(np.cumsum(net[first:nxt])))
                wanted = np.ceil((need + floor) / dev.load_multiple[0] - 1e-9) * dev.load_multiple[0]
                loads[first] = min(wanted, dev.max_load[0])
            # A start below the floor counts every day before the first visit as a breach.
            breaches = bounds[0] if balance < floor - 1e-6 else 0
            cash = max(balance - floor, 0.0)
            for day in range(horizon):
                if day in loads:
                    cash = loads[day] - floor
                elif day > 0 and cash + floor > dev.max_balance[0] + 1e-6:
                    breaches += 1
                cost += dev.daily_holding_rate[0] * (cash + floor)
                cash -= net[day]
                if cash < 0:
                    breaches += 1
                    cash = 0.0
            best = min(best, cost + dev.breach_penalty[0] * breaches)
    return best


@settings(max_examples=40, deadline=None)
@given(
    net=st.lists(st.integers(-40, 120), min_size=3, max_size=7),  # whole amounts: exact in float32
    balance=st.integers(0, 300),
    min_balance=st.sampled_from([0.0, 30.0]),
    capacity=st.sampled_from([150.0, 400.0, 2000.0]),
    mask=st.integers(0, 127),
    holding=st.sampled_from([0.05, 3.0, 30.0]),
)
def test_perfect_foresight_dp_equals_brute_force(net, balance, min_balance, capacity, mask, holding):
    horizon = len(net)
    allowed = np.array([(mask >> day) & 1 for day in range(horizon)], dtype=bool)[None, :]
    terms = pd.DataFrame(
        {
            "capacity": [capacity],
            "max_balance": [capacity],
            "min_balance": [min_balance],
            "load_multiple": [10.0],
            "service_level": [0.99],
            "holding_rate": [holding],
            "visit_cost": [20.0],
        }
    )
    dev = DeviceArrays.from_terms(terms, stockout_penalty_visits=20)
    path = np.array(net, dtype="float32")[None, None, :]
    loads, costs = segment_table(path, dev, allowed)
    first = prefix_costs(path, np.array([0]), np.array([balance]), dev)
    visits, next_day, total = solve_visits(costs, first, allowed)
    assert not visits[~allowed].any()
    expected = _brute_force_cost(path[0, 0].astype("float64"), allowed[0], balance, dev)
    assert total[0] == pytest.approx(expected, rel=1e-4, abs=1e-4)
    targets = chosen_loads(next_day, loads)
    assert np.all(np.isnan(targets) == ~visits)


def test_segments_start_only_on_visit_days_and_the_day_price_survives():
    """Segments starting on a day no device of the chunk may visit are skipped (the fleet's weekends,
    the lead time); the rest are unchanged, and the price of a day of cash (the end-of-plan credit)
    comes from the segments computed, even when the first day is not among them."""
    rng = np.random.default_rng(3)
    net = rng.lognormal(np.log(100.0), 0.2, (2, 30, 10)).astype("float32")
    terms = pd.DataFrame(
        {
            "capacity": [2000.0, 600.0],
            "max_balance": [2000.0, 600.0],
            "min_balance": [0.0, 50.0],
            "load_multiple": [10.0, 10.0],
            "service_level": [0.99, 0.95],
            "holding_rate": [3.0, 3.0],
            "visit_cost": [20.0, 40.0],
        }
    )
    dev = DeviceArrays.from_terms(terms, stockout_penalty_visits=3)
    allowed = np.ones((2, 10), dtype=bool)
    allowed[:, [0, 5, 6]] = False
    loads, costs = segment_table(net, dev, allowed)
    full_loads, full_costs = segment_table(net, dev)
    assert np.isinf(costs[:, [0, 5, 6]]).all()
    kept = [1, 2, 3, 4, 7, 8, 9]
    np.testing.assert_array_equal(costs[:, kept], full_costs[:, kept])
    np.testing.assert_array_equal(loads[:, kept], full_loads[:, kept])
    expected = [min(full_costs[d, i, j] / (j - i) for i in kept for j in range(i + 1, 11)) for d in range(2)]
    np.testing.assert_allclose(cycle_cost_per_day(costs), expected)


def test_segment_table_threads_follow_omp_num_threads(monkeypatch):
    """Dask's nanny sets OMP_NUM_THREADS=1 in each worker process, which already runs tasks side by
    side: the optimiser then stays on one thread, with the same numbers as on all cores."""
    from replenishment import dp

    rng = np.random.default_rng(5)
    n = 40
    net = rng.lognormal(np.log(100.0), 0.3, (n, 50, 12)).astype("float32")
    ones = np.ones(n)
    dev = DeviceArrays.from_terms(
        pd.DataFrame(
            {
                "capacity": 900.0 * ones,
                "max_balance": 900.0 * ones,
                "min_balance": 0.0 * ones,
                "load_multiple": 10.0 * ones,
                "service_level": 0.99 * ones,
                "holding_rate": 3.0 * ones,
                "visit_cost": 30.0 * ones,
            }
        ),
        stockout_penalty_visits=3,
    )
    monkeypatch.setattr(dp, "CHUNK_ELEMENTS", 50 * 12 * 5)  # chunks of 5 devices: 8 items to share out
    pools = []
    real_pool = dp.ThreadPoolExecutor

    def recording_pool(max_workers):
        pools.append(max_workers)
        return real_pool(max_workers)

    monkeypatch.setattr(dp, "ThreadPoolExecutor", recording_pool)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    many = segment_table(net, dev)
    assert pools[-1] == min(8, dp.usable_threads())
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert dp.usable_threads() == 1
    one = segment_table(net, dev)
    assert pools[-1] == 1
    for a, b in zip(many, one, strict=True):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- plan properties


device_strategy = st.fixed_dictionaries(
    {
        "mean": st.sampled_from([0.0, 40.0, 100.0, 250.0]),
        "capacity": st.sampled_from([60.0, 300.0, 800.0, 2000.0]),
        "min_balance": st.sampled_from([0.0, 20.0, 100.0]),
        "max_share": st.sampled_from([0.0, 0.7]),
        "load_multiple": st.sampled_from([10.0, 50.0]),
        "lead": st.integers(0, 3),
        "weekdays": st.sets(st.integers(0, 6), min_size=1, max_size=7),
        "service_level": st.sampled_from([0.9, 0.99]),
        "balance": st.floats(0, 1.0),
        "deposits": st.sampled_from([None, 0.5, 2.0]),
        "holiday": st.integers(0, 9),
    }
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(devices=st.lists(device_strategy, min_size=1, max_size=4), swap=st.booleans(), seed=st.integers(0, 99))
def test_plan_respects_capacity_floor_bundles_and_visit_days(config, devices, swap, seed):
    horizon = config.plan.horizon_days
    names = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
    means = [d["mean"] for d in devices]
    deposits = [d["mean"] * (d["deposits"] or 0.0) for d in devices]
    has_deposits = any(d["deposits"] for d in devices)
    forecast = lognormal_forecast(means, horizon, n_paths=60, deposits=deposits if has_deposits else None, seed=seed)
    terms = make_terms(
        config,
        len(devices),
        kind=["branch" if d["deposits"] else "atm" for d in devices],
        capacity=[d["capacity"] for d in devices],
        max_balance=[d["capacity"] * d["max_share"] for d in devices],
        min_balance=[d["min_balance"] for d in devices],
        load_multiple=[d["load_multiple"] for d in devices],
        lead_time_days=[d["lead"] for d in devices],
        visit_weekdays=[",".join(names[w] for w in sorted(d["weekdays"])) for d in devices],
        service_level=[d["service_level"] for d in devices],
    )
    balances = pd.DataFrame(
        {"device_id": terms["device_id"], "balance": terms["max_balance"] * [d["balance"] for d in devices]}
    )
    holidays = pd.DataFrame(
        {
            "device_id": terms["device_id"],
            "date": [AS_OF + pd.Timedelta(days=d["holiday"]) for d in devices],
            "holiday_name": "Test Day",
        }
    )
    cfg = config.updated(plan={"cassette_swap": swap})
    result = plan_network(forecast, terms, balances, AS_OF, cfg, holidays=holidays)
    plan = result.plan.merge(terms, on="device_id", suffixes=("", "_terms"))
    assert list(result.plan.columns[: len(PLAN_COLUMNS)]) == PLAN_COLUMNS
    tol = 1e-6
    assert (plan["balance_after"] <= plan["capacity"] + tol).all()
    assert (plan["balance_after"] <= plan["max_balance"] + tol).all()
    for row in plan.itertuples():
        assert row.visit_date.weekday() in row.weekday_set
        assert row.visit_date >= AS_OF + pd.Timedelta(days=row.lead_time_days)
        assert row.order_by == row.visit_date - pd.Timedelta(days=row.lead_time_days)
        holiday = holidays.set_index("device_id").loc[row.device_id, "date"]
        assert row.visit_date != holiday
        assert row.action in ("load", "pickup")
        if swap or row.action == "pickup":
            assert row.balance_after / row.load_multiple == pytest.approx(round(row.balance_after / row.load_multiple))
        if swap:  # CONTRACT.md: the residual goes back and amount = balance_after, pickups included
            assert row.amount == row.balance_after
        elif row.action == "pickup":
            assert row.amount == pytest.approx(row.expected_balance_before - row.balance_after, abs=0.02)
        else:  # a top-up adds whole bundles to the cash expected in the device
            assert row.amount == pytest.approx(row.balance_after - row.expected_balance_before, abs=0.02)
            assert row.amount / row.load_multiple == pytest.approx(round(row.amount / row.load_multiple))
        capped = row.stockout_risk > 1 - row.service_level + 1e-9
        if swap and not capped and row.balance_after >= row.min_balance:
            # An uncapped load keeps at least service_level of the paths at or above the floor until the next
            # visit, and cash never goes below 0: the expected cash stays at or above service_level x the floor.
            days = result.projection[
                (result.projection["device_id"] == row.device_id)
                & (result.projection["date"] > row.visit_date)
                & (result.projection["date"] < row.visit_date + pd.Timedelta(days=row.days_covered))
            ]
            assert (days["expected_opening_balance"] >= row.service_level * row.min_balance - 1e-3).all()
        if swap:
            max_load = np.floor(min(row.capacity, row.max_balance) / row.load_multiple + 1e-9) * row.load_multiple
            assert row.balance_after >= min(row.min_balance, max_load) - tol
    covered = plan.groupby("device_id")["days_covered"].sum()
    first = plan.groupby("device_id")["visit_date"].min()
    for device, days in covered.items():
        # The last load may cover the lookahead and a week past it (the repeated last forecast week).
        assert horizon <= days + (first[device] - AS_OF).days <= horizon + config.plan.lookahead_days + 7
    summary = result.summary.set_index("device_id")
    assert summary.loc["TOTAL", "visits"] == len(result.plan)
    # The projection shows the plan's visits, no others (an empty top-up has no row and no visit flag), and the
    # cash right after each is what the row says: exactly for a swap, within a bundle for a top-up (each path is
    # topped up to the level in whole bundles, the row's amount is the bundles the expected cash needs).
    shown = result.projection[result.projection["visit"]]
    assert set(zip(shown["device_id"], shown["date"], strict=True)) == set(
        zip(result.plan["device_id"], result.plan["visit_date"], strict=True)
    )
    day = plan.merge(
        result.projection, left_on=["device_id", "visit_date"], right_on=["device_id", "date"], suffixes=("", "_day")
    )
    gap = (day["balance_after_day"] - day["balance_after"]).abs()
    assert (gap <= (0.02 if swap else day["load_multiple"] + 0.02)).all()
    # A row's risk answers for every day it covers: no day of its span runs out more often than it says.
    chance = result.projection.set_index(["device_id", "date"])["stockout_probability"]
    for row in plan.itertuples():
        span = pd.date_range(row.visit_date, periods=row.days_covered, freq="D")
        days = chance.reindex(pd.MultiIndex.from_product([[row.device_id], span])).dropna()
        assert days.max() <= row.stockout_risk + 1e-3, (row.device_id, row.visit_date)


def test_chance_constraint_holds_on_the_paths(config):
    forecast = lognormal_forecast([100.0, 300.0], 10, n_paths=200, sigma=0.5, seed=4)
    terms = make_terms(config, 2, capacity=[100_000.0, 100_000.0], service_level=[0.95, 0.99])
    result = plan_network(forecast, terms, None, AS_OF, config, holidays=NO_HOLIDAYS)
    plan = result.plan.merge(terms[["device_id", "service_level"]], on="device_id")
    assert len(plan) >= 2
    # Above the 90% level loads are extrapolated from the paths' body (q50, q90) rather than read off their
    # sample tail (see dp.need_quantile), so the raw paths' risk may exceed 1 - service_level by a little.
    assert (plan["stockout_risk"] <= 1 - plan["service_level"] + 0.01).all()
    # Loads cover the multi-day sum at the service level, so they exceed days x mean.
    row = plan[plan["device_id"] == "D1"].iloc[0]
    assert row["balance_after"] > 300.0 * row["days_covered"]


def test_the_risk_before_each_visit_is_in_the_plan_and_named_when_above_target(config):
    """Cash ops read rows, not the projection: a device that may run dry before its first visit says so there."""
    forecast = lognormal_forecast([100.0], 10, n_paths=100, seed=5)
    terms = make_terms(config, 1, capacity=[3000.0], lead_time_days=[2])
    balances = pd.DataFrame({"device_id": ["D0"], "balance": [150.0]})  # gone on the 2nd day; first visit on the 3rd
    plan = plan_network(forecast, terms, balances, AS_OF, config, holidays=NO_HOLIDAYS).plan
    first = plan.iloc[0]
    assert first["stockout_risk_before"] > 0.5
    assert f"{first['stockout_risk_before'] * 100:.3g}% risk of running out before this visit" in first["reason"]
    # Later visits: the risk before is the risk after the visit before.
    assert (plan["stockout_risk_before"].iloc[1:].to_numpy() == plan["stockout_risk"].iloc[:-1].to_numpy()).all()


def test_the_projection_shows_the_forecasts_own_quantiles(config):
    """Cash ops compare projection.csv with forecast.csv: the same device-day must show the same q50."""
    forecast = lognormal_forecast([100.0, 200.0], 12, n_paths=60, seed=6)
    forecast.frame["q50"] = np.arange(len(forecast.frame), dtype="float64")  # unlike any path quantile
    result = plan_network(forecast, make_terms(config, 2), None, AS_OF, config, holidays=NO_HOLIDAYS)
    joined = result.projection.merge(forecast.frame, on=["device_id", "date"])
    assert len(joined) == len(result.projection) and (joined["demand_q50"] == joined["q50"]).all()
    # A level the forecast lacks comes from the paths, as before.
    assert joined["demand_q90"].between(100.0, 600.0).all()


def test_a_top_up_that_adds_nothing_is_no_visit_and_the_row_before_answers_for_its_days(config):
    """A top-up planned where the cash is already within a bundle of the level sends no crew: it has no row, and
    the visit before it covers (and risks) the days up to the next real visit. Its risk was once read only up
    to the dropped top-up, as if that had been made: 6.7% on a row whose later days ran dry on 93% of paths."""
    forecast = lognormal_forecast([100.0], 10, n_paths=60, deposits=[50.0], seed=7)
    terms = make_terms(
        config,
        1,
        kind=["branch"],
        capacity=[300.0],
        max_balance=[210.0],
        min_balance=[100.0],
        load_multiple=[50.0],
        lead_time_days=[0],
        visit_weekdays=["Sat,Sun"],
        service_level=[0.99],
    )
    balances = pd.DataFrame({"device_id": ["D0"], "balance": [2.0]})
    top_up = config.updated(plan={"cassette_swap": False})
    result = plan_network(forecast, terms, balances, AS_OF, top_up, holidays=NO_HOLIDAYS)
    row = result.plan.iloc[0]
    assert len(result.plan) == 1 and row["visit_date"] == pd.Timestamp("2025-03-08")  # Sunday's top-up: dropped
    assert row["days_covered"] == 7 and row["stockout_risk"] == 1.0
    projection = result.projection.set_index("date")
    assert projection["visit"].sum() == 1
    assert projection.loc["2025-03-12", "stockout_probability"] > 0.9


def test_a_swap_that_leaves_less_cash_than_it_finds_says_how_much_goes_back(config):
    from replenishment.dp import DeviceArrays
    from replenishment.plan import _reason

    dev = DeviceArrays.from_terms(make_terms(config, 1, capacity=[5000.0]), 3.0)
    days = ["Mon", "Tue", "Wed", "Thu"]
    text = _reason(days, 0, 3, 4, ["", "", ""], dev, 0, (0.0, 0.0), (False, False, 500.0, 2000.0, (0.0, 0.0)))
    assert text == "covers Mon-Wed (3 days) at 99.5%; swaps out about 2,000 expected in it: 1,500 goes back"
    kept = _reason(days, 0, 3, 4, ["", "", ""], dev, 0, (0.0, 0.0), (False, False, 500.0, 300.0, (0.0, 0.0)))
    assert "goes back" not in kept


def test_a_reason_states_the_level_a_capped_load_reaches_not_the_target(config):
    """Cash ops read the first clause: "at 99.5%" beside a 24.5% risk would contradict the rest."""
    from replenishment.dp import DeviceArrays
    from replenishment.plan import _reason

    dev = DeviceArrays.from_terms(make_terms(config, 1, capacity=[5000.0]), 3.0)
    days = ["Fri", "Sat", "Sun", "Mon"]
    text = _reason(days, 0, 3, 4, ["", "", ""], dev, 0, (0.245, 0.0), (False, True, 5000.0, 100.0, (0.0, 0.0)))
    assert text.startswith("covers Fri-Sun (3 days) at 75.5%;")
    assert "stockout risk 24.5% above the 0.5% target: load capped at 5,000" in text


def test_a_reason_warns_when_deposits_are_expected_to_pass_max_balance(config):
    from replenishment.dp import DeviceArrays
    from replenishment.plan import _reason

    terms = make_terms(config, 1, kind=["branch"], capacity=[2000.0], max_balance=[1500.0])
    dev = DeviceArrays.from_terms(terms, 3.0)
    days = ["Mon", "Tue", "Wed", "Thu"]
    text = _reason(days, 0, 3, 4, ["", "", ""], dev, 0, (0.0, 0.0), (True, False, 600.0, 1400.0, (1820.0, 1610.0)))
    assert "deposits expected to take the cash to 1,820, above max_balance 1,500, before the next visit" in text
    assert "deposits expected to take the cash to 1,610, above max_balance 1,500, before this visit" in text
    quiet = _reason(days, 0, 3, 4, ["", "", ""], dev, 0, (0.0, 0.0), (True, False, 600.0, 1400.0, (1500.0, 0.0)))
    assert "max_balance" not in quiet


def test_a_count_above_max_balance_is_not_blamed_on_deposits(config):
    """An ATM counted at 5,000 with room for 2,000: its cash only falls until the visit, so no deposit takes it above
    max_balance; the balance note says what is wrong (plan audit: 'deposits expected to take the cash to 5,000')."""
    forecast = lognormal_forecast([100.0], 21, n_paths=50, seed=4)
    terms = make_terms(config, 1, capacity=[2000.0])
    balances = pd.DataFrame({"device_id": ["D0"], "balance": [5000.0]})
    result = plan_network(forecast, terms, balances, AS_OF, config, holidays=NO_HOLIDAYS)
    assert not result.plan["reason"].str.contains("deposits").any()
    assert result.plan["reason"].str.contains("above the most the device may hold").any()


def test_branch_with_net_deposits_gets_pickups(config):
    forecast = lognormal_forecast([100.0], 10, n_paths=80, deposits=[400.0], seed=2)
    terms = make_terms(config, 1, kind=["branch"], capacity=[2000.0], max_balance=[1500.0], visit_cost=[5.0])
    balances = pd.DataFrame({"device_id": ["D0"], "balance": [1200.0]})
    result = plan_network(forecast, terms, balances, AS_OF, config, holidays=NO_HOLIDAYS)
    pickups = result.plan[result.plan["action"] == "pickup"]
    assert len(pickups) >= 2
    assert (pickups["balance_after"] < pickups["expected_balance_before"]).all()
    assert (pickups["amount"] == pickups["balance_after"]).all()  # a swap brings balance_after
    back = (pickups["expected_balance_before"] - pickups["balance_after"]).map("about {:,.0f}".format)
    assert all(text in reason for text, reason in zip(back, pickups["reason"], strict=True))
    emptied = pickups["balance_after"] == 0
    assert pickups.loc[~emptied, "reason"].str.startswith("pickup: takes the cash down to").all()
    assert pickups.loc[emptied, "reason"].str.startswith("pickup: takes all the cash out").all()
    summary = result.summary.set_index("device_id")
    assert summary.loc["D0", "cash_deployed"] == pytest.approx(result.plan["amount"].sum())
    projection = result.projection
    assert (projection["expected_opening_balance"] <= 1500.0 + 400.0 * 2).all()


def test_deposits_piling_past_max_balance_are_named_on_the_rows(config):
    """A branch taking in 400 a day against 100 paid out, visited Mon and Fri: its cash passes max_balance before its
    first pickup and again before the next one (the next visit's morning, when it holds the most, included)."""
    forecast = lognormal_forecast([100.0], 14, n_paths=80, deposits=[400.0], seed=2, sigma=0.01)
    fourteen = config.updated(plan={"horizon_days": 14})
    terms = make_terms(
        config,
        1,
        kind=["branch"],
        capacity=[5000.0],
        max_balance=[1000.0],
        visit_cost=[5.0],
        visit_weekdays=["Mon,Fri"],
    )
    balances = pd.DataFrame({"device_id": ["D0"], "balance": [1200.0]})
    plan = plan_network(forecast, terms, balances, AS_OF, fourteen, holidays=NO_HOLIDAYS).plan
    first, second = plan.iloc[0], plan.iloc[1]
    assert re.search(
        r"deposits expected to take the cash to 2,[34]\d\d, above max_balance 1,000, before this visit", first.reason
    )
    assert second.days_covered == 4 and "above max_balance 1,000, before the next visit" in second.reason  # Fri morning
    assert (plan["amount"].astype(str) != "-0.0").all() and (plan["balance_after"] >= 0).all()
    assert str(plan["amount"].iloc[0]) == "0.0"


def test_idle_cash_in_an_atm_with_no_demand_is_a_pickup(config):
    """Holding 100,000 at 50% a year costs more than a visit: the swap that leaves nothing is a pickup, not a
    'load' of 0. Over 40 days no empty 'load' follows it: it did every 14 days (`max_cover_days`), each a paid
    crew visit that moved nothing (contract audit)."""
    forty = config.updated(plan={"horizon_days": 40})
    forecast = lognormal_forecast([100.0], forty.plan.forecast_days, n_paths=40, seed=3)
    forecast.withdrawal_paths[0] = 0.0
    terms = make_terms(config, 1, capacity=[200_000.0], holding_rate=[0.5], visit_cost=[50.0])
    balances = pd.DataFrame({"device_id": ["D0"], "balance": [100_000.0]})
    result = plan_network(forecast, terms, balances, AS_OF, forty, holidays=NO_HOLIDAYS)
    assert len(result.plan) == 1
    row = result.plan.iloc[0]
    assert row["action"] == "pickup" and row["amount"] == 0 and row["balance_after"] == 0
    assert row["reason"].startswith("pickup: takes all the cash out, the days it covers need none: about 100,000")


def test_a_deposit_taker_without_a_count_is_assumed_to_hold_a_week_of_withdrawals(config):
    """Not a week of net outflow: for a recycler taking in more than it pays out that is negative, so it was
    assumed empty and planned as running dry on its first morning."""
    forecast = lognormal_forecast([100.0], 10, n_paths=60, deposits=[150.0], seed=4)
    terms = make_terms(config, 1, kind=["recycler"], capacity=[5000.0], max_balance=[4000.0])
    result = plan_network(forecast, terms, None, AS_OF, config, holidays=NO_HOLIDAYS)
    opening = result.projection.iloc[0]["expected_opening_balance"]
    assert 500.0 <= opening <= 1000.0  # about 700: 7 days of ~100 withdrawn
    assert result.projection.iloc[0]["stockout_probability"] < 0.05
    assert any("assumed" in w and "7 days of forecast withdrawals" in w for w in result.warnings)
    three_days = config.updated(plan={"horizon_days": 3})  # a week's need, though the plan is shorter
    short = plan_network(forecast, terms, None, AS_OF, three_days, holidays=NO_HOLIDAYS).projection
    assert short.iloc[0]["expected_opening_balance"] == opening


def test_capacity_below_one_day_means_daily_visits_and_a_warning(config):
    forecast = lognormal_forecast([500.0], 10, n_paths=50, seed=1)
    terms = make_terms(config, 1, capacity=[300.0], lead_time_days=[1])
    result = plan_network(forecast, terms, None, AS_OF, config, holidays=NO_HOLIDAYS)
    allowed_days = [d for d in pd.date_range(AS_OF + pd.Timedelta(days=1), periods=9) if d.weekday() < 5]
    assert list(result.plan["visit_date"]) == allowed_days
    assert (result.plan["balance_after"] == 300.0).all()
    assert "below one day's demand" in result.plan["reason"].iloc[0]
    assert any("below one day's demand" in w for w in result.warnings)
    # A visit already on order inside the lead time stays in the projection and the counts (it was dropped:
    # daily visits were laid over every day, the ordered one's included).
    two_day_lead = make_terms(config, 1, capacity=[300.0], lead_time_days=[2])
    tomorrow = AS_OF + pd.Timedelta(days=1)
    ordered = pd.DataFrame({"device_id": ["D0"], "visit_date": [tomorrow], "balance_after": [300.0]})
    kept = plan_network(forecast, two_day_lead, None, AS_OF, config, holidays=NO_HOLIDAYS, ordered_visits=ordered)
    day = kept.projection.set_index("date")
    assert day.loc[tomorrow, "visit"] and day.loc[tomorrow, "balance_after"] == 300.0
    assert kept.summary.set_index("device_id").loc["D0", "visits_on_order"] == 1
    assert list(kept.plan["visit_date"]) == allowed_days[1:]
    assert kept.plan["stockout_risk_before"].notna().all()


def test_whole_plan_warnings_reach_the_reader(config):
    """Warnings about the plan's inputs as a whole are raised (the command line prints them), not only listed."""
    from replenishment.plan import PlanWarning

    forecast = lognormal_forecast([100.0, 100.0], 8, n_paths=20, seed=2)  # the plan has 10 days
    terms = make_terms(config, 2)
    balances = pd.DataFrame({"device_id": ["D0", "GONE-7"], "balance": [500.0, 800.0]})
    with pytest.warns(PlanWarning) as caught:
        result = plan_network(forecast, terms, balances, AS_OF, config, holidays=NO_HOLIDAYS)
    raised = [str(w.message) for w in caught if w.category is PlanWarning]
    assert "balances of 1 device(s) not in the plan were ignored: ['GONE-7']" in raised
    assert "forecast covers only 8 of the 10 plan days" in raised
    assert set(raised) <= set(result.warnings)


def test_a_count_from_an_earlier_morning_is_named_in_the_plan(config):
    """Cash counted days ago is not this morning's cash: the plan says how old it is, and which count is
    today's (a later row of the same device wins; an undated one counts as this morning's)."""
    forecast = lognormal_forecast([100.0, 100.0, 100.0], 10, n_paths=20, seed=2)
    terms = make_terms(config, 3)
    balances = pd.DataFrame(
        {
            "device_id": ["D0", "D1", "D1", "D2"],
            "balance_as_of": [AS_OF - pd.Timedelta(days=4), AS_OF - pd.Timedelta(days=3), AS_OF, AS_OF],
            "balance": [700.0, 100.0, 600.0, 500.0],
        }
    )
    result = plan_network(forecast, terms, balances, AS_OF, config, holidays=NO_HOLIDAYS)
    notes = result.summary.set_index("device_id")["notes"]
    assert "balance 700 was counted 4 day(s) before this plan" in notes["D0"]
    assert "counted" not in notes["D1"] and "counted" not in notes["D2"]
    opening = result.projection.sort_values("date").groupby("device_id").first()
    assert opening.loc["D1", "expected_opening_balance"] == pytest.approx(600.0)


def test_an_old_count_is_brought_forward_over_the_visits_and_demand_since(config):
    """Yesterday's count knows nothing of yesterday's swap: the plan starts from the count, the visits made
    since (their balance_after) and the recorded withdrawals less deposits; a day with no record takes the
    device's usual net outflow (a missing Sunday froze the cash while the days after it were withdrawn: a UK
    nightly audit saw the visit slide day after day towards a stockout)."""
    # D0 swapped since its count, D1 has a day without a record, D2 was counted this morning, D3 too long ago
    # to bring forward, D4 recorded more than it held, D5 was visited yesterday, a day with no record and no
    # recorded day at all to go by.
    day = [AS_OF - pd.Timedelta(days=k) for k in range(5)]  # day[1] is yesterday
    balances = pd.DataFrame(
        {
            "device_id": ["D0", "D1", "D2", "D3", "D4", "D5", "D6"],
            "balance": [1000.0, 1000.0, 400.0, 900.0, 300.0, 5000.0, 1000.0],
            "balance_as_of": [day[3], day[3], day[0], AS_OF - pd.Timedelta(days=40), day[1], day[1], day[2]],
        }
    )
    rows = [("D0", day[3], 100.0, None), ("D0", day[2], 200.0, 50.0), ("D0", day[1], 300.0, None)]
    rows += [("D1", day[3], 100.0, None), ("D1", day[1], 300.0, None), ("D4", day[1], 500.0, None)]
    # D1's usual: 200 on the weekday of day[2] (its median there over the weeks before), whatever else it did.
    rows += [("D1", day[2] - pd.Timedelta(weeks=k), 200.0, None) for k in (1, 2, 3)]
    # D6 records only day[2]'s weekday: day[1]'s, never recorded in the weeks before, is no guide (a branch that
    # sends no Sunday rows): it stops there.
    rows += [("D6", day[2] - pd.Timedelta(weeks=k), 100.0, None) for k in (0, 1, 2, 3)]
    daily = pd.DataFrame(rows, columns=["device_id", "date", "withdrawals", "deposits"])
    visits = pd.DataFrame({"device_id": ["D0", "D5"], "visit_date": [day[2], day[1]], "balance_after": [2000.0, 570.0]})
    rolled = roll_balances_forward(balances, daily, visits, AS_OF).set_index("device_id")
    # 1000 - 100; swapped to 2000 - (200 - 50); - 300.
    assert rolled.loc["D0", "balance"] == 1550.0 and rolled.loc["D0", "balance_as_of"] == AS_OF
    # No record on day[2]: its usual 200 that weekday, then day[1]'s 300 recorded: 1000 - 100 - 200 - 300.
    assert (rolled.loc["D1", "balance"], rolled.loc["D1", "balance_as_of"]) == (400.0, AS_OF)
    assert rolled["estimated_days"].to_dict() == {"D0": 0, "D1": 1, "D2": 0, "D3": 0, "D4": 0, "D5": 0, "D6": 0}
    assert (rolled.loc["D6", "balance"], rolled.loc["D6", "balance_as_of"]) == (900.0, day[1])
    assert rolled.loc["D2", "balance"] == 400.0 and rolled.loc["D3", "balance"] == 900.0  # untouched
    assert rolled.loc["D4", "balance"] == 0.0  # recorded more than it held: empty, never negative
    assert rolled.loc["D0", "counted_on"] == day[3]
    # The pickup down to 570 is known though the day's deposits are not: after it, dated that morning.
    assert (rolled.loc["D5", "balance"], rolled.loc["D5", "balance_as_of"]) == (570.0, day[1])
    assert rolled["after_visit"].to_dict() == {
        "D0": False,
        "D1": False,
        "D2": False,
        "D3": False,
        "D4": False,
        "D5": True,
        "D6": False,
    }

    forecast = lognormal_forecast([100.0] * 7, 10, n_paths=20, seed=2)
    terms = resolve_terms(balances[["device_id"]], None, config)
    result = plan_network(forecast, terms, rolled.reset_index(), AS_OF, config, holidays=NO_HOLIDAYS)
    notes = result.summary.set_index("device_id")["notes"]
    assert "balance 1,550 brought forward from the count of 3 day(s) ago" in notes["D0"]
    assert "1 day(s) with no record taken at the device's usual demand" in notes["D1"]
    assert "balance 900 dates from 1 day(s) before this plan: brought forward from a count 2 day(s) old" in notes["D6"]
    assert "was counted 40 day(s) before this plan" in notes["D3"]
    assert "balance 570 is what the visit of 1 day(s) before this plan left" in notes["D5"]
    opening = result.projection.sort_values("date").groupby("device_id").first()
    assert opening.loc["D0", "expected_opening_balance"] == pytest.approx(1550.0)


def test_degenerate_devices_get_a_plan_and_a_note(config):
    forecast = lognormal_forecast([0.0, 100.0, 100.0, 100.0], 10, n_paths=40, seed=3)
    forecast.withdrawal_paths[0] = 1e-5  # a device that recorded only zeros: the forecaster's arithmetic
    forecast.withdrawal_paths[3] = np.nan
    forecast.withdrawal_paths[2, :, 4] = np.nan
    terms = make_terms(
        config,
        5,
        visit_weekdays=["Mon,Tue,Wed,Thu,Fri", "Sun", "Mon,Tue,Wed,Thu,Fri", "Mon,Tue,Wed,Thu,Fri", "Mon"],
        min_balance=[0.0, 0.0, 500.0, 0.0, 0.0],
        capacity=[1000.0, 1000.0, 3000.0, 1000.0, 1000.0],
    )
    terms["mean_daily_demand"] = [0.0, 100.0, 100.0, 80.0, 60.0]  # D4 has no forecast at all
    balances = pd.DataFrame({"device_id": ["D0", "D1", "D2", "D3"], "balance": [0.0, 900.0, 100.0, 5000.0]})
    horizon_cfg = config.updated(plan={"horizon_days": 6})  # Mon..Sat: D1 (Sundays only) cannot be visited
    result = plan_network(forecast, terms, balances, AS_OF, horizon_cfg, holidays=NO_HOLIDAYS)
    notes = result.summary.set_index("device_id")["notes"]
    assert "zero forecast demand" in notes["D0"] and result.plan[result.plan["device_id"] == "D0"].empty
    assert "no allowed visit day" in notes["D1"]
    # A device with no plan row says so in the summary, with the risk its cash runs (no crew, no row to read).
    assert notes["D0"].startswith("no visit planned in the 6 days: 0% risk of running out on the cash on hand;")
    assert re.match(r"no visit planned in the 6 days: (\d+(\.\d+)?)% risk", notes["D1"])
    assert not any(n.startswith("no visit planned") for n in notes[["D2", "D3"]])  # both get visits
    assert not any("no visit planned" in w for w in result.warnings)  # the summary only
    assert "below min_balance" in notes["D2"]
    first_d2 = result.plan[result.plan["device_id"] == "D2"].iloc[0]
    assert first_d2["visit_date"] == AS_OF + pd.Timedelta(days=1)  # the first day the lead time allows
    assert "gaps" in notes["D2"] and "no forecast" in notes["D3"]
    # A feed error worth a look:
    assert "balance 5,000 is above the most the device may hold, 1,000 (max_balance, else capacity)" in notes["D3"]
    assert "balance unknown" in notes["D4"] and "no forecast" in notes["D4"]
    assert "no demand recorded yet: planned on the network's typical device" in notes["D4"]
    assert result.plan[result.plan["device_id"] == "D1"].empty
    assert np.isfinite(result.plan[["amount", "balance_after", "stockout_risk"]].to_numpy()).all()


def test_reason_names_the_span_holiday_and_service_level(config):
    forecast = lognormal_forecast([100.0], 10, n_paths=50, seed=6)
    terms = make_terms(config, 1, capacity=[5000.0], visit_cost=[1000.0])
    holidays = pd.DataFrame(
        {"device_id": "D0", "date": [AS_OF + pd.Timedelta(days=k) for k in (5, 6)], "holiday_name": ["Fest", "Eve"]}
    )
    balances = pd.DataFrame({"device_id": ["D0"], "balance": [0.0]})
    result = plan_network(forecast, terms, balances, AS_OF, config, holidays=holidays)
    row = result.plan.iloc[0]
    assert row["reason"].startswith("covers Tue-")
    # In date order (a UK audit read "Boxing Day, Christmas Day, New Year's Day" from the alphabet).
    assert "incl. holiday (Fest, Eve)" in row["reason"] and "at 99.5%" in row["reason"]
    # An expensive visit: the load stretches past the 10-day plan, into the optimiser's lookahead.
    assert row["days_covered"] > 9
    assert f"{row['days_covered'] - 9} past the plan horizon" in row["reason"]


def test_ordered_visits_inside_the_lead_time_are_kept(config):
    forecast = lognormal_forecast([100.0], 10, n_paths=50, seed=7)
    terms = make_terms(config, 1, capacity=[5000.0], lead_time_days=[2])
    ordered = pd.DataFrame(
        {"device_id": ["D0"], "visit_date": [AS_OF + pd.Timedelta(days=1)], "balance_after": [700.0]}
    )
    balances = pd.DataFrame({"device_id": ["D0"], "balance": [0.0]})
    result = plan_network(forecast, terms, balances, AS_OF, config, holidays=NO_HOLIDAYS, ordered_visits=ordered)
    # The ordered visit is an earlier plan's row: this plan lists only its own, after the lead time ...
    assert len(result.plan) and (result.plan["visit_date"] >= AS_OF + pd.Timedelta(days=2)).all()
    # ... but plans around it: the projection fills the device with 700 on the ordered day.
    day = result.projection.set_index("date")
    assert (
        day.loc[AS_OF + pd.Timedelta(days=1), "visit"]
        and day.loc[AS_OF + pd.Timedelta(days=2), "expected_opening_balance"] < 700
    )
    assert result.plan.iloc[0]["expected_balance_before"] < 700
    # Empty this morning, it runs dry before the ordered visit: the plan's first row says so (no row is the ordered
    # visit's, so the report ranking devices by their rows would otherwise never show it).
    assert result.plan.iloc[0]["stockout_risk_before"] > 0.9
    assert "risk of running out before this visit" in result.plan.iloc[0]["reason"]
    # The fixed-schedule baseline is compared on the same footing: the ordered refill is its too.
    summary = result.summary.set_index("device_id").loc["D0"]
    assert summary["baseline_expected_stockout_days"] < 1.5 and summary["expected_stockout_days"] < 1.5
    assert summary["visits_on_order"] == 1 and summary["visits"] == len(result.plan)


def test_visits_on_order_are_those_due_to_be_ordered_before_the_morning():
    from replenishment import visits_on_order

    earlier = pd.DataFrame(
        {
            "device_id": ["A", "A", "B", "C"],
            "visit_date": ["2026-11-02", "2026-11-09", "2026-11-03", "2026-11-01"],
            "order_by": ["2026-11-01", "2026-11-08", "2026-11-01", "2026-10-31"],
            "balance_after": [100.0, 200.0, 300.0, 400.0],
        }
    )
    on_order = visits_on_order(earlier, pd.Timestamp("2026-11-02"))
    # A's visit today and B's tomorrow were ordered yesterday; A's next week is not yet; C's is past.
    assert on_order["device_id"].tolist() == ["A", "B"]
    assert on_order["balance_after"].tolist() == [100.0, 300.0]


def test_plan_uses_public_holidays_by_default(config):
    # 2025-10-01..07 is China's National Day block: no routine visit falls inside it.
    start = pd.Timestamp("2025-09-29")
    forecast = lognormal_forecast([100.0], 10, n_paths=40, seed=8, start=start)
    terms = make_terms(config, 1, capacity=[3000.0], visit_cost=[5.0], country=["CN"])
    result = plan_network(forecast, terms, None, start, config)
    assert not result.plan["visit_date"].between("2025-10-01", "2025-10-07").any()
    assert result.plan["reason"].str.contains("National Day").any()


def test_tame_tails_scales_only_the_runaway_weeks():
    rng = np.random.default_rng(5)
    paths = rng.lognormal(np.log(100.0), 0.2, (2, 200, 14)).astype("float32")
    paths[0, :3, :7] *= 4.0  # three paths of device 0 run away in the first week only
    tamed = tame_tails(paths)
    weeks, after = paths.reshape(2, 200, 2, 7).sum(axis=3), tamed.reshape(2, 200, 2, 7).sum(axis=3)
    moved = ~np.isclose(weeks, after)
    assert moved[0, :3, 0].all() and moved[0, 3:, 0].sum() <= 2
    np.testing.assert_array_equal(tamed[0, :3, 7:], paths[0, :3, 7:])  # their second week was normal
    # Runaway weeks land on one cap, the body's normal extrapolation to TAIL_LEVEL, keeping their shape.
    q50, q90 = np.quantile(weeks[0, :, 0], [0.5, 0.9])
    cap = q50 * (q90 / q50) ** (ndtri(TAIL_LEVEL) / ndtri(0.9))
    np.testing.assert_allclose(after[0, :3, 0], cap, rtol=1e-3)
    np.testing.assert_allclose(tamed[0, 0, :7] / paths[0, 0, :7], tamed[0, 0, 0] / paths[0, 0, 0], rtol=1e-5)
    # A device without runaway weeks keeps its body: at most its top path or two per week is touched.
    assert moved[1].sum(axis=0).max() <= 2
    np.testing.assert_allclose(np.quantile(after[1], 0.9, axis=0), np.quantile(weeks[1], 0.9, axis=0), rtol=1e-6)


def test_need_quantile_reads_the_tail_from_the_body():
    rng = np.random.default_rng(8)
    body = np.sort(rng.normal(1000.0, 100.0, (1, 2000)), axis=-1)
    level = np.array([0.99])
    # A lognormal sample: the extrapolation lands near the true 99% quantile.
    body = np.exp(body / 1000.0 * np.log(1000.0))  # lognormal, median 1000, log-sd 0.1 x log(1000)
    assert abs(need_quantile(body, level)[0] / (1000.0 * np.exp(2.326 * 0.1 * np.log(1000.0))) - 1) < 0.05
    # Runaway paths move the sample quantile, not the extrapolated one.
    runaway = np.sort(np.r_[body[0, :-40], np.full(40, 50_000.0)])[None, :]
    assert _path_quantile(runaway, level)[0] == 50_000.0
    assert abs(need_quantile(runaway, level)[0] - need_quantile(body, level)[0]) < 15
    # Up to the body level, and with one path (perfect foresight), it is the sample quantile.
    np.testing.assert_array_equal(need_quantile(runaway, np.array([0.8])), _path_quantile(runaway, np.array([0.8])))
    np.testing.assert_array_equal(need_quantile(np.array([[700.0]]), level), [700.0])
    # A body that needs nothing (a branch whose deposits cover it on 95.5% of paths): the sample's tail, not 0.
    deposit_taker = np.sort(np.r_[np.zeros(191), np.full(9, 300_000.0)])[None, :]
    np.testing.assert_array_equal(need_quantile(deposit_taker, level), [300_000.0])
    # Nor when more than half the paths need nothing: 0 + 2 x q90 left 9% of them short against 0.5% (review).
    mostly = np.sort(np.r_[np.zeros(170), np.linspace(10_000.0, 300_000.0, 30)])[None, :]
    np.testing.assert_array_equal(need_quantile(mostly, np.array([0.995])), _path_quantile(mostly, np.array([0.995])))


def test_a_branch_picked_up_keeps_cash_for_the_days_its_withdrawals_beat_its_deposits(config):
    """Deposits cover withdrawals on most days, but not on every path: the pickup leaves what the service level
    asks for, not the bare floor (plan audit: min_balance left at 4.5-8% risk against a 1% target)."""
    forecast = lognormal_forecast([100.0], 21, n_paths=200, deposits=[300.0], seed=5, sigma=0.01)
    forecast.deposit_paths[0, :9, :3] = 0.0  # 4.5% of paths: three days without deposits to pay the 100 a day out
    terms = make_terms(
        config, 1, kind=["branch"], capacity=[50_000.0], max_balance=[9000.0], min_balance=[100.0], visit_cost=[5.0]
    )
    balances = pd.DataFrame({"device_id": ["D0"], "balance": [8900.0]})
    first = plan_network(forecast, terms, balances, AS_OF, config, holidays=NO_HOLIDAYS).plan.iloc[0]
    assert first["visit_date"] == AS_OF + pd.Timedelta(days=1) and first["action"] == "pickup"
    assert first["balance_after"] >= 100.0 + 2 * 99.0  # from day 1: two of those days, beyond the floor
    assert first["stockout_risk"] <= 1 - terms["service_level"].iloc[0]


def test_loads_follow_the_body_of_the_paths_not_their_runaway_tail(config):
    forecast = lognormal_forecast([1000.0], 30, n_paths=200, sigma=0.2, seed=9)  # past plan and lookahead
    forecast.withdrawal_paths[0, :8] *= 3.0  # 4% runaway paths: the sample q99 is one of them
    terms = make_terms(config, 1, capacity=[1e6], load_multiple=[1.0])
    result = plan_network(forecast, terms, None, AS_OF, config, holidays=NO_HOLIDAYS)
    first = result.plan.iloc[0]
    runaway_free = np.sort(forecast.withdrawal_paths[0, 8:, : first["days_covered"]].sum(axis=1))
    assert first["balance_after"] < 1.3 * runaway_free[-1]  # far below 3x: the runaway paths did not set it
    assert first["balance_after"] >= np.quantile(runaway_free, 0.95)
    # The runaway paths still run out under it, so the plan says so without blaming the capacity.
    assert first["stockout_risk"] > 0.01
    assert "rare demand surges" in first["reason"] and "capped" not in first["reason"]


def test_max_cover_days_bounds_how_long_one_load_is_planned_to_last(config):
    """An expensive visit and a huge cassette make the longest cover the cheapest; [plan] max_cover_days
    caps it (the optimiser's work grows with its square)."""
    forecast = lognormal_forecast([100.0], 40, n_paths=50, seed=3)
    terms = make_terms(config, 1, capacity=[100_000.0], visit_cost=[5000.0])
    empty = pd.DataFrame({"device_id": ["D0"], "balance": [0.0]})
    capped = config.updated(plan={"horizon_days": 28})
    plan = plan_network(forecast, terms, empty, AS_OF, capped, holidays=NO_HOLIDAYS).plan
    assert len(plan) >= 2 and plan["days_covered"].max() <= 14
    longer = capped.updated(plan={"max_cover_days": 28})
    plan = plan_network(forecast, terms, empty, AS_OF, longer, holidays=NO_HOLIDAYS).plan
    assert plan["days_covered"].max() > 14


def test_order_deadlines_fall_on_the_carriers_order_days():
    from replenishment.terms import order_deadlines

    dates = pd.date_range("2026-10-31", periods=10)  # Sat .. Mon
    every_day = order_deadlines(dates, np.array([1]), "")
    assert every_day[0].tolist() == [-1, 0, 1, 2, 3, 4, 5, 6, 7, 8]  # lead time in calendar days
    weekdays = order_deadlines(dates, np.array([1, 2]), "Mon-Fri")
    # Lead 1: Monday's visit is due Sunday, so Friday, before this Saturday morning: too late.
    assert weekdays[0].tolist() == [-1, -1, -1, 2, 3, 4, 5, 6, 6, 6]
    assert weekdays[1].tolist() == [-1, -1, -1, -1, 2, 3, 4, 5, 6, 6]
    # The carrier's office keeps the device's bank holidays: with Tuesday (index 3) a holiday of the first device,
    # its Wednesday visit is ordered on Monday; the second device's country works that day (UK audit: orders
    # were due on Boxing Day and New Year's Day).
    closed = np.zeros((2, 10), dtype=bool)
    closed[0, 3] = True
    holiday = order_deadlines(dates, np.array([1, 1]), "Mon-Fri", closed)
    assert holiday[0].tolist() == [-1, -1, -1, 2, 2, 4, 5, 6, 6, 6] and holiday[1].tolist() == weekdays[0].tolist()
    assert order_deadlines(dates, np.array([1]), "", closed[:1])[0].tolist() == every_day[0].tolist()  # any day


def test_a_carrier_taking_orders_on_weekdays_orders_before_a_bank_holiday(config):
    """Through the plan, not just order_deadlines: with Friday 6 November a holiday of the device, a visit on
    Monday the 9th is ordered on Thursday the 5th (UK audit: due on Boxing Day and New Year's Day)."""
    saturday = pd.Timestamp("2026-10-31")
    forecast = lognormal_forecast([100.0], 21, n_paths=50, seed=9, start=saturday)
    terms = make_terms(config, 1, capacity=[600.0], visit_cost=[50.0], lead_time_days=[1])
    empty = pd.DataFrame({"device_id": ["D0"], "balance": [0.0]})
    friday = pd.DataFrame({"device_id": ["D0"], "date": [pd.Timestamp("2026-11-06")], "holiday_name": ["Fest"]})
    weekdays = config.updated(plan={"order_weekdays": "Mon-Fri"})
    plan = plan_network(forecast, terms, empty, saturday, weekdays, holidays=friday).plan
    monday = plan[plan["visit_date"] == pd.Timestamp("2026-11-09")]
    assert len(monday) == 1 and monday["order_by"].item() == pd.Timestamp("2026-11-05")
    assert pd.Timestamp("2026-11-06") not in set(plan["order_by"])


def test_a_carrier_taking_orders_on_weekdays_moves_order_by_off_the_weekend(config):
    saturday = pd.Timestamp("2026-10-31")
    forecast = lognormal_forecast([100.0], 21, n_paths=50, seed=9, start=saturday)
    terms = make_terms(config, 1, capacity=[600.0], visit_cost=[50.0], lead_time_days=[1])
    empty = pd.DataFrame({"device_id": ["D0"], "balance": [0.0]})
    daily = plan_network(forecast, terms, empty, saturday, config, holidays=NO_HOLIDAYS)
    assert daily.plan["visit_date"].iloc[0] == pd.Timestamp("2026-11-02")  # Monday, ordered on Sunday
    assert (daily.plan["order_by"] == daily.plan["visit_date"] - pd.Timedelta(days=1)).all()
    weekdays = config.updated(plan={"order_weekdays": "Mon-Fri"})
    plan = plan_network(forecast, terms, empty, saturday, weekdays, holidays=NO_HOLIDAYS).plan
    assert plan["visit_date"].iloc[0] == pd.Timestamp("2026-11-03")  # Monday's order was due Friday
    assert len(plan) >= 2 and (plan["order_by"] >= saturday).all()
    for visit, order_by in zip(plan["visit_date"], plan["order_by"], strict=True):
        due = visit - pd.Timedelta(days=1)
        while due.day_of_week >= 5:  # the last weekday at least a day before the visit
            due -= pd.Timedelta(days=1)
        assert order_by == due, visit


def test_an_unvisited_devices_risk_is_counted_over_the_plans_days(config):
    """Cash for 17 days, a shorter plan: no visit in it, and the summary said "no visit planned in the 10 days:
    100% risk of running out", counting the lookahead simulated after the plan (README audit)."""
    forecast = lognormal_forecast([100.0], config.plan.forecast_days, n_paths=100, sigma=0.1, seed=5)
    terms = make_terms(config, 1, capacity=[5000.0], visit_cost=[50.0])
    balances = pd.DataFrame({"device_id": ["D0"], "balance": [1700.0]})
    result = plan_network(forecast, terms, balances, AS_OF, config, holidays=NO_HOLIDAYS)
    assert result.plan.empty
    note = result.summary.set_index("device_id").loc["D0", "notes"]
    said = f"no visit planned in the {config.plan.horizon_days} days: 0% risk of running out on the cash on hand"
    assert config.plan.horizon_days < 17 and note.startswith(said), note
