"""Backtest replay: run the nightly plan cycle over past days against the demand that happened.

Every policy goes through the same executor, day by day:
- morning: a routine visit (if scheduled) fills the device (cassette swap: the cash becomes the
  visit's balance_after; with [plan] cassette_swap = false it adds whole bundles, but for the optimum's
  visits, which swap: the limit of both); an emergency visit (see below) fills it to capacity;
- the day: deposits are usable at once; withdrawals beyond the cash on hand are lost, and a day
  with lost demand is a stockout device-day;
- emergency rule: after a stockout day the carrier comes on the device's next allowed visit day
  (visit weekday, not a holiday; no lead time) at emergency_visit_cost and fills to capacity,
  unless a routine visit falls on that day anyway; likewise after a day whose deposits took the cash
  above max_balance (and above the morning's level) the carrier comes for an emergency pickup down to
  min_balance + 7 days of its trailing mean demand. Deposits beyond capacity are refused (a full device
  takes no more; cash it already holds stays). Days held above max_balance, or with deposits refused,
  are overflow device-days.
Holding cost per day = holding_rate / 365 x the cash held after the morning visit, the rule the
planner prices with, so the policies and the perfect-foresight optimum are comparable. The
optimum plans on past the window's end, as every plan must, and is scored inside it.
Missing actual days (not recorded) take the device's median of the same weekday in the window (else
in the eight weeks before it), so every policy faces the same demand; their count is reported per device.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cashcast.config import Config
from cashcast.schema import DemandForecast, validate_daily
from replenishment.dp import DeviceArrays, chosen_loads, prefix_costs, segment_table, solve_visits
from replenishment.naive import day_matrix, weekday_medians
from replenishment.plan import (
    HALF_CENT,
    extend_weekly,
    fill_level,
    plan_network,
    visit_daily_where_too_small,
    weekly_fill_targets,
)
from replenishment.terms import (
    allowed_visit_days,
    device_holidays,
    holiday_matrix,
    order_deadlines,
    round_up_to_multiple,
    trailing_mean_demand,
)

Forecaster = Callable[[pd.DataFrame, pd.Timestamp, int], DemandForecast]
COVER_WINDOW_DAYS = 28
IMPUTE_WEEKS_BEFORE = 8  # a weekday the window never recorded takes its median over these weeks before the window
# Lost demand below this share of the day's withdrawals (or half a cent) is rounding, not a stockout: the optimum's
# loads come from float32 sums, a few units off on a cassette of millions.
LOST_SHARE_TOLERANCE = 1e-5


@dataclass
class ReplayResult:
    """KPIs per policy, per policy x device, and the daily trajectories behind them."""

    kpis: pd.DataFrame
    per_device: pd.DataFrame
    daily: pd.DataFrame
    notes: list[str] = field(default_factory=list)


@dataclass
class _Window:
    """Everything a policy needs about the replay window, aligned (n devices, W days)."""

    terms: pd.DataFrame
    dev: DeviceArrays
    dates: pd.DatetimeIndex
    withdrawals: np.ndarray
    deposits: np.ndarray
    imputed: np.ndarray  # bool: actual day not recorded, demand imputed
    allowed: np.ndarray  # routine/emergency visit allowed (weekday, holiday rule), lead time ignored
    deadlines: np.ndarray  # int: the day each visit's order is due (terms.order_deadlines), -1 before the start
    beyond_net: np.ndarray  # (n, E) net outflow after the window: recorded, else the last week repeated
    beyond_allowed: np.ndarray  # (n, E) visit days allowed after the window
    holidays: pd.DataFrame
    initial: np.ndarray
    reset_level: np.ndarray  # an overflow pickup's level: min_balance + 7 days of trailing mean demand
    capacity: np.ndarray  # the most cash the device can physically take: deposits beyond it are refused
    emergency_cost: np.ndarray
    is_atm: np.ndarray
    top_up: bool

    @property
    def after_lead(self) -> np.ndarray:
        """Visit days allowed and still orderable on the replay's first morning."""
        return self.allowed & (self.deadlines >= 0)

    @functools.cached_property
    def lost_tolerance(self) -> np.ndarray:
        """(n, days): the lost demand each device-day may have before it counts as a stockout (once per window:
        every policy's execution and its KPIs read it)."""
        return np.maximum(HALF_CENT, LOST_SHARE_TOLERANCE * self.withdrawals)


def _actual_matrix(daily: pd.DataFrame, device_ids, dates, column: str) -> np.ndarray:
    """The days as recorded, censored ones included: the replay executes what happened."""
    return day_matrix(daily, column, device_ids, dates, censored_as_missing=False)


def _impute_same_weekday(
    values: np.ndarray, dates: pd.DatetimeIndex, before: np.ndarray, before_dates: pd.DatetimeIndex
) -> np.ndarray:
    """Fill NaN days with the device's median of that weekday in the window; where the window has none (a short
    window, a feed without Sundays), its median of that weekday in `before` (the weeks before the window), else
    of every day recorded in the window. Never 0: a day with no row is not a day without demand."""
    median = weekday_medians(values, dates)
    median = np.where(np.isnan(median), weekday_medians(before, before_dates), median)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN row stays NaN
        median = np.where(np.isnan(median), np.nanmedian(values, axis=1)[:, None], median)
    usual = median[:, np.asarray(dates.day_of_week)]
    return np.where(np.isnan(values), usual, values)


def _recorded_in_window(actual: pd.DataFrame, terms: pd.DataFrame, start, end) -> tuple[pd.DataFrame, list[str]]:
    """The devices with demand recorded in [start, end] and before it, and a note on those left out.

    A replay executes plans against what happened: a device with no record in the window (not yet
    installed, closed, its feed lost) has nothing to replay, and imputing all its days would score
    the policies on made-up demand. Nor does a device installed inside the window: its days before
    the first record would be made-up demand on an empty cassette, stockouts for every policy.
    """
    first, last = pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize()
    inside = actual[(actual["date"] >= first) & (actual["date"] <= last) & actual["withdrawals"].notna()]
    if inside.empty:
        span = f"{actual['date'].min():%Y-%m-%d}..{actual['date'].max():%Y-%m-%d}" if len(actual) else "empty"
        raise ValueError(
            f"no demand recorded between {first:%Y-%m-%d} and {last:%Y-%m-%d} to replay (daily history: {span})"
        )
    ids = terms["device_id"].astype(str)
    recorded = ids.isin(set(inside["device_id"]))
    started = actual.loc[actual["withdrawals"].notna()].groupby("device_id")["date"].min()
    late = recorded & (ids.map(started) > first)
    # Devices the terms do not know (no master row, nothing before the window) were installed inside it too.
    unknown = sorted(set(inside["device_id"].astype(str)) - set(ids))
    notes = []
    if not recorded.all():
        missing = ids[~recorded].tolist()
        notes.append(f"{len(missing)} device(s) with no record in the window left out: {missing[:5]}")
    if late.any() or unknown:
        installed = [*ids[late].tolist(), *unknown]
        notes.append(
            f"{len(installed)} device(s) first recorded inside the window (installed after {first:%Y-%m-%d})"
            f" left out: {installed[:5]}"
        )
    return terms[(recorded & ~late).to_numpy()].reset_index(drop=True), notes


def _window(actual: pd.DataFrame, terms: pd.DataFrame, start, end, config, initial_balances) -> _Window:
    terms = terms.reset_index(drop=True)
    device_ids = terms["device_id"].astype(str).to_numpy(dtype=object)
    dates = pd.date_range(pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize(), freq="D")
    withdrawals = _actual_matrix(actual, device_ids, dates, "withdrawals")
    imputed = np.isnan(withdrawals)
    deposits = np.nan_to_num(_actual_matrix(actual, device_ids, dates, "deposits"))
    dev = DeviceArrays.from_terms(terms, config.plan.stockout_penalty_visits)
    extended = pd.date_range(dates[0], periods=len(dates) + config.plan.horizon_days, freq="D")
    holidays = device_holidays(terms, dates[0], extended[-1])
    is_holiday, _ = holiday_matrix(device_ids, extended, holidays)
    allowed = allowed_visit_days(terms, extended, is_holiday, config.plan.allow_holiday_visits)
    allowed, beyond_allowed = allowed[:, : len(dates)], allowed[:, len(dates) :]
    lead = terms["lead_time_days"].to_numpy(dtype=int)
    deadlines = order_deadlines(dates, lead, config.plan.order_weekdays, is_holiday[:, : len(dates)])
    before = trailing_mean_demand(actual[actual["date"] < dates[0]]).reindex(device_ids).fillna(0.0).to_numpy()
    default = np.minimum(round_up_to_multiple(dev.min_balance + 7 * before, dev.load_multiple), dev.max_load)
    initial = default
    if initial_balances is not None:
        given = initial_balances.assign(device_id=initial_balances["device_id"].astype(str))
        given = given.groupby("device_id")["balance"].last().reindex(device_ids).to_numpy(dtype="float64")
        initial = np.where(np.isnan(given), initial, given)
    weeks_before = pd.date_range(dates[0] - pd.Timedelta(days=IMPUTE_WEEKS_BEFORE * 7), periods=IMPUTE_WEEKS_BEFORE * 7)
    before_window = _actual_matrix(actual, device_ids, weeks_before, "withdrawals")
    withdrawals = np.clip(_impute_same_weekday(withdrawals, dates, before_window, weeks_before), 0.0, None)
    deposits = np.clip(deposits, 0.0, None)
    after = extended[len(dates) :]
    repeated = extend_weekly(withdrawals - deposits, len(extended))[:, len(dates) :]
    recorded = np.clip(_actual_matrix(actual, device_ids, after, "withdrawals"), 0.0, None) - np.clip(
        np.nan_to_num(_actual_matrix(actual, device_ids, after, "deposits")), 0.0, None
    )
    return _Window(
        terms=terms,
        dev=dev,
        dates=dates,
        withdrawals=withdrawals,
        deposits=deposits,
        imputed=imputed,
        allowed=allowed,
        deadlines=deadlines,
        beyond_net=np.where(np.isnan(recorded), repeated, recorded),
        beyond_allowed=beyond_allowed,
        holidays=holidays,
        initial=initial,
        reset_level=default,
        capacity=terms["capacity"].to_numpy(dtype="float64"),
        emergency_cost=terms["emergency_visit_cost"].to_numpy(dtype="float64"),
        is_atm=terms["kind"].to_numpy() == "atm",
        top_up=not config.plan.cassette_swap,
    )


Decide = Callable[[int, np.ndarray, np.ndarray], None]


def _execute(win: _Window, decide: Decide | None, schedule: np.ndarray, top_up: bool) -> dict[str, np.ndarray]:
    """Run a policy over the window; `decide(day, cash, schedule)` may rewrite future visits. `top_up`: visits
    add whole bundles to the cash found (else they swap the cassette)."""
    n, days = win.withdrawals.shape
    cash = win.initial.astype("float64").copy()
    pending = np.zeros(n, dtype=bool)
    record = {k: np.zeros((n, days)) for k in ("opening", "level", "served", "lost", "load", "refused")}
    record["visit"] = np.zeros((n, days), dtype=bool)
    record["emergency"] = np.zeros((n, days), dtype=bool)
    piled_up = np.zeros(n, dtype=bool)  # deposits took the cash above max_balance: a pickup is due
    for day in range(days):
        if decide is not None:
            decide(day, cash, schedule)
        routine = ~np.isnan(schedule[:, day])
        refill = pending & win.allowed[:, day] & ~routine
        piled_up &= cash > win.dev.max_balance + HALF_CENT  # withdrawals since may have taken it back under
        pickup = piled_up & win.allowed[:, day] & ~routine & ~refill
        emergency = refill | pickup
        record["opening"][:, day] = cash
        level = cash.copy()
        if routine.any():
            level[routine] = fill_level(
                cash[routine],
                schedule[routine, day],
                top_up,
                win.is_atm[routine],
                win.dev.load_multiple[routine],
                win.dev.max_load[routine],
            )
        level[refill] = np.maximum(cash[refill], win.dev.max_load[refill])
        level[pickup] = win.reset_level[pickup]
        pending &= ~(routine | emergency)
        piled_up &= ~(routine | emergency)
        available = level + win.deposits[:, day]
        served = np.minimum(win.withdrawals[:, day], available)
        lost = win.withdrawals[:, day] - served
        # A full device takes no more deposits; the cash it already holds (a count above capacity) stays.
        room = np.maximum(win.capacity, level) - (available - served)
        refused = np.minimum(win.deposits[:, day], np.maximum(-room, 0.0))
        cash = available - served - refused
        pending |= lost > win.lost_tolerance[:, day]
        piled_up |= (win.deposits[:, day] > 0) & (cash > np.maximum(win.dev.max_balance, level) + HALF_CENT)
        record["level"][:, day] = level
        record["refused"][:, day] = refused
        record["served"][:, day] = served
        record["lost"][:, day] = lost
        record["visit"][:, day] = routine | emergency
        record["emergency"][:, day] = emergency
        record["load"][:, day] = np.where(routine | emergency, level, 0.0)
    return record


def _empty_schedule(win: _Window) -> np.ndarray:
    return np.full(win.withdrawals.shape, np.nan)


def _perfect_foresight(win: _Window) -> np.ndarray:
    """The optimum schedule: the planner's DP on one path, the actual net outflow.

    The DP runs on past the window (actual demand where recorded, else the last week repeated)
    and its schedule is then scored inside the window like every policy's. Stopping the DP at the
    window's last day would let the optimum run its cash down to zero there, a saving no plan can
    make (a plan does not know where the replay stops), so the ratios would overstate the gap.
    """
    days = win.withdrawals.shape[1]
    net = np.concatenate([win.withdrawals - win.deposits, win.beyond_net], axis=1)[:, None, :].astype("float32")
    allowed = np.concatenate([win.after_lead, win.beyond_allowed], axis=1)
    loads, costs = segment_table(net, win.dev, allowed)
    first = prefix_costs(net, np.zeros(len(net), dtype=int), win.initial, win.dev)
    _, next_day, _ = solve_visits(costs, first, allowed)
    targets = chosen_loads(next_day, loads)[:, :days]
    visit_daily_where_too_small(targets, win.withdrawals - win.deposits, win.after_lead, win.dev)
    return targets


def _cover_rule(win: _Window, actual: pd.DataFrame, config) -> Decide:
    """Forecast-free baseline, a weekly cover with a buffer: load cover_rule_days x (1 + buffer)
    days of trailing mean demand; order again when, on the next reachable visit day, the cash
    would be down to the buffer (cover_rule_days x buffer days), or, deposits piling up, above
    max_balance (the cash run forward at the trailing mean net outflow)."""
    cover_days = config.backtest.cover_rule_days
    buffer = config.backtest.cover_rule_buffer
    device_ids = win.terms["device_id"].astype(str).to_numpy(dtype=object)
    history_dates = pd.date_range(win.dates[0] - pd.Timedelta(days=COVER_WINDOW_DAYS), win.dates[-1], freq="D")
    history = _actual_matrix(actual, device_ids, history_dates, "withdrawals")
    paid_in = np.nan_to_num(_actual_matrix(actual, device_ids, history_dates, "deposits"))
    n, days = win.withdrawals.shape
    rows = np.arange(n)
    # next_allowed[d, t]: the first allowed visit day >= t (days when there is none).
    next_allowed = np.full((n, days + 1), days)
    for day in range(days - 1, -1, -1):
        next_allowed[:, day] = np.where(win.allowed[:, day], day, next_allowed[:, day + 1])

    def decide(day: int, cash: np.ndarray, schedule: np.ndarray) -> None:
        recent = history[:, day : day + COVER_WINDOW_DAYS]
        seen = (~np.isnan(recent)).sum(axis=1)
        mean = np.nansum(recent, axis=1) / np.maximum(seen, 1)
        net = mean - paid_in[:, day : day + COVER_WINDOW_DAYS].sum(axis=1) / np.maximum(seen, 1)
        first_orderable = np.where((win.deadlines >= day).any(axis=1), np.argmax(win.deadlines >= day, axis=1), days)
        visit_day = next_allowed[rows, first_orderable]
        reachable = visit_day < days
        planned = np.concatenate([np.zeros((n, 1)), np.cumsum(~np.isnan(schedule), axis=1)], axis=1)
        free = planned[rows, np.minimum(visit_day + 1, days)] == planned[:, day]  # none in [day, visit_day]
        projected = cash - (visit_day - day) * net
        low = projected < win.dev.min_balance + cover_days * buffer * mean
        order = reachable & free & (low | (projected > win.dev.max_balance))
        target = round_up_to_multiple(win.dev.min_balance + cover_days * mean * (1 + buffer), win.dev.load_multiple)
        schedule[rows[order], visit_day[order]] = np.minimum(target, win.dev.max_load)[order]

    return decide


def _cashcast(win: _Window, actual: pd.DataFrame, forecaster: Forecaster, config) -> Decide:
    """The nightly cycle: every replan_every_days, forecast from history before the day and plan."""
    every = config.backtest.replan_every_days
    horizon = config.plan.forecast_days
    device_ids = win.terms["device_id"].astype(str).to_numpy(dtype=object)

    def decide(day: int, cash: np.ndarray, schedule: np.ndarray) -> None:
        if day % every:
            return
        as_of = win.dates[day]
        forecast = forecaster(actual[actual["date"] < as_of], as_of, horizon)
        cols = np.arange(day, min(day + horizon, schedule.shape[1]))
        inside_lead = (win.deadlines[:, cols] < day) & ~np.isnan(schedule[:, cols])  # their order is placed
        rows, col_index = np.nonzero(inside_lead)
        ordered = pd.DataFrame(
            {
                "device_id": device_ids[rows],
                "visit_date": win.dates[cols[col_index]],
                "balance_after": schedule[rows, cols[col_index]],
            }
        )
        # The forecaster learns from the whole network; the devices left out of the window (said once, in the
        # replay's notes) are not planned, so they are not handed over (every re-plan would warn of them).
        result = plan_network(
            forecast.subset(device_ids),
            win.terms,
            pd.DataFrame({"device_id": device_ids, "balance": cash}),
            as_of,
            config,
            holidays=win.holidays,
            ordered_visits=ordered,
        )
        schedule[:, day:] = np.nan  # the new plan's visits replace the old plan's, but for those on order
        schedule[rows, cols[col_index]] = ordered["balance_after"].to_numpy()
        plan = result.plan[result.plan["visit_date"] <= win.dates[-1]]
        row = pd.Index(device_ids).get_indexer(plan["device_id"].astype(str))
        col = win.dates.get_indexer(plan["visit_date"])
        schedule[row, col] = plan["balance_after"].to_numpy(dtype="float64")

    return decide


def _tables(policy: str, win: _Window, record: dict[str, np.ndarray]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-device KPIs and the daily trajectory of one policy."""
    n, days = win.withdrawals.shape
    device_ids = win.terms["device_id"].astype(str).to_numpy(dtype=object)
    routine = record["visit"] & ~record["emergency"]
    stockout = record["lost"] > win.lost_tolerance
    # Cash held above max_balance through a day (its insured limit), or deposits a full device turned away.
    overflow = (record["level"] > win.dev.max_balance[:, None] + HALF_CENT) | (record["refused"] > HALF_CENT)
    per_device = pd.DataFrame(
        {
            "policy": policy,
            "device_id": device_ids,
            "holding_cost": record["level"].sum(axis=1) * win.dev.daily_holding_rate,
            "visit_cost": routine.sum(axis=1) * win.dev.visit_cost,
            "emergency_cost": record["emergency"].sum(axis=1) * win.emergency_cost,
            "visits": routine.sum(axis=1),
            "emergency_visits": record["emergency"].sum(axis=1),
            "stockout_device_days": stockout.sum(axis=1),
            "overflow_device_days": overflow.sum(axis=1),
            "device_days": days,
            "lost_demand": record["lost"].sum(axis=1),
            "avg_idle_cash": record["level"].mean(axis=1),
            "imputed_days": win.imputed.sum(axis=1),
        }
    )
    per_device["total_cost"] = per_device["holding_cost"] + per_device["visit_cost"] + per_device["emergency_cost"]
    per_device["stockout_rate"] = per_device["stockout_device_days"] / days
    daily = pd.DataFrame(
        {
            "policy": policy,
            "device_id": np.repeat(device_ids, days),
            "date": np.tile(win.dates.to_numpy(), n),
            "opening_balance": record["opening"].ravel(),
            "demand": win.withdrawals.ravel(),
            "deposits": win.deposits.ravel(),
            "served": record["served"].ravel(),
            "lost": record["lost"].ravel(),
            "refused_deposits": record["refused"].ravel(),
            "visit": record["visit"].ravel(),
            "emergency": record["emergency"].ravel(),
            "load": record["load"].ravel(),
            "balance_after_visit": record["level"].ravel(),
        }
    )
    return per_device, daily


def replay(
    actual_daily: pd.DataFrame,
    terms: pd.DataFrame,
    start: pd.Timestamp | str,
    end: pd.Timestamp | str,
    forecaster: Forecaster,
    config: Config,
    initial_balances: pd.DataFrame | None = None,
) -> ReplayResult:
    """Replay [start, end] for the cashcast cycle, the configured baselines and perfect foresight.

    `forecaster(history, as_of, horizon)` sees only rows dated before as_of. Every policy starts
    from the same balances (`initial_balances` device_id, balance; default min_balance + 7 days
    of trailing mean demand, capped at capacity).
    """
    if config.backtest.replan_every_days > config.plan.horizon_days:
        raise ValueError(
            f"[backtest] replan_every_days {config.backtest.replan_every_days} is longer than [plan] horizon_days"
            f" {config.plan.horizon_days}: the days between a plan's end and the next re-plan would have no plan"
        )
    actual = validate_daily(actual_daily, source="replay actuals")
    actual["device_id"] = actual["device_id"].astype(str)
    terms, notes = _recorded_in_window(actual, terms, start, end)
    win = _window(actual, terms, start, end, config, initial_balances)
    policies: dict[str, tuple[Decide | None, np.ndarray]] = {
        "cashcast": (_cashcast(win, actual, forecaster, config), _empty_schedule(win))
    }
    for baseline in config.backtest.baselines:
        if baseline == "fixed_weekly":
            policies[baseline] = (None, weekly_fill_targets(win.after_lead, win.dates, win.dev.max_load))
        elif baseline == "cover_rule":
            policies[baseline] = (_cover_rule(win, actual, config), _empty_schedule(win))
    policies["perfect_foresight"] = (None, _perfect_foresight(win))
    device_tables, daily_tables = [], []
    for name, (decide, schedule) in policies.items():
        # The optimum swaps whatever the config: its DP sets any level in whole bundles, which a top-up (the residual
        # plus bundles, under the ceiling) cannot always reach; as a swap it stays the limit for both.
        top_up = win.top_up and name != "perfect_foresight"
        per_device, daily = _tables(name, win, _execute(win, decide, schedule, top_up))
        device_tables.append(per_device)
        daily_tables.append(daily)
    per_device = pd.concat(device_tables, ignore_index=True)
    sums = per_device.groupby("policy", sort=False)[
        [
            "holding_cost",
            "visit_cost",
            "emergency_cost",
            "total_cost",
            "visits",
            "emergency_visits",
            "stockout_device_days",
            "overflow_device_days",
            "device_days",
            "lost_demand",
        ]
    ].sum()
    sums["stockout_rate"] = sums["stockout_device_days"] / sums["device_days"]
    sums["avg_idle_cash"] = per_device.groupby("policy", sort=False)["avg_idle_cash"].mean()
    sums["cost_vs_optimum"] = sums["total_cost"] / sums.loc["perfect_foresight", "total_cost"]
    money = ["holding_cost", "visit_cost", "emergency_cost", "total_cost", "lost_demand", "avg_idle_cash"]
    kpis = sums.reset_index().round(dict.fromkeys(money, 2))
    per_device = per_device.round(dict.fromkeys(money, 2))
    if win.imputed.any():
        notes.append(f"{int(win.imputed.sum())} device-days not recorded: demand imputed (same-weekday median)")
        mostly = win.imputed.mean(axis=1) > 0.5  # scored more on made-up demand than on what happened
        if mostly.any():
            names = win.terms["device_id"].astype(str)[mostly].tolist()
            notes.append(
                f"{len(names)} device(s) with over half the window imputed, read their rows with care: {names[:5]}"
            )
    return ReplayResult(kpis=kpis, per_device=per_device, daily=pd.concat(daily_tables, ignore_index=True), notes=notes)
