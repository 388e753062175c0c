"""The network plan: least-cost visit days and loads per device, with reasons cash ops can read.

`plan_network` turns a DemandForecast (sample paths), the resolved device terms and the morning
balances into CONTRACT.md plan rows, a day-by-day projection and a cost summary that compares
the plan with a fixed weekly fill. Degenerate devices get a sensible plan and a note, never an
exception, so one bad device never blocks the nightly plan of the fleet.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd

from cashcast.config import Config
from cashcast.schema import PLAN_COLUMNS, STALE_HISTORY_DAYS, DemandForecast, days_unrecorded, quantile_column
from replenishment.dp import (
    BODY_LEVEL,
    MIN_BODY_PATHS,
    DeviceArrays,
    chosen_loads,
    cycle_cost_per_day,
    extrapolate_body,
    prefix_costs,
    segment_table,
    solve_visits,
)
from replenishment.naive import day_matrix, weekday_medians
from replenishment.terms import (
    allowed_visit_days,
    device_holidays,
    holiday_matrix,
    order_deadlines,
    round_up_to_multiple,
)

WEEKDAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
UNKNOWN_BALANCE_DAYS = 7
HALF_CENT = 0.005  # an amount below this is zero: a day's forecast demand, a load, lost demand in the replay
TAIL_LEVEL = 0.995  # weekly path sums beyond the body's extrapolation to this level are tamed (tame_tails)
EXTENSION_DAYS = 7  # days past the optimiser's last visit day a load may cover (last forecast week repeated)
QUIET_DEVICE_NOTE = "no usable record since"  # how a plan names a device whose feed stopped
SIMULATE_BLOCK = 512  # devices simulated together: their paths (~30 MB at 200 paths x 28 days) stay in cache


class PlanWarning(UserWarning):
    """Something about the whole plan's inputs (not one device's) that its reader should know."""


@dataclass
class PlanResult:
    """What `plan_network` returns; `plan` follows CONTRACT.md, the rest explains it."""

    plan: pd.DataFrame
    projection: pd.DataFrame
    summary: pd.DataFrame
    warnings: list[str] = field(default_factory=list)


@dataclass
class PathRun:
    """Expected trajectory of a visit schedule over sample paths, all arrays (n, H)."""

    before: np.ndarray  # expected cash on the morning, before any visit
    after: np.ndarray  # expected cash held through the day (after the visit)
    short: np.ndarray  # P(the day ends below min_balance: running out, to the plan)
    segment_risk: np.ndarray  # on visit days: P(running out before the next visit), else NaN
    opening_risk: np.ndarray  # (n,): P(running out before the first visit, or in the horizon without one)

    def first_days(self, days: int) -> PathRun:
        daily = (values[:, :days] for values in (self.before, self.after, self.short, self.segment_risk))
        return PathRun(*daily, self.opening_risk)

    def risk_before(
        self, targets: np.ndarray, fixed: np.ndarray, rows: np.ndarray, days: np.ndarray, first: np.ndarray
    ) -> np.ndarray:
        """P(running out before the visit on (rows, days)): the risk of the segment that ends there, the
        previous visit's (of `targets`, visits on order included) or the opening one. A device's `first`
        visit of the plan answers for this morning's cash too: through the visits already on order (`fixed`,
        which have no rows of their own), the riskiest stretch before it, so a device running dry before
        tomorrow's ordered visit shows on a row."""
        visited = ~np.isnan(targets)
        index = np.where(visited, np.arange(targets.shape[1]), -1)
        previous = np.concatenate([np.full((len(targets), 1), -1), np.maximum.accumulate(index, axis=1)[:, :-1]], 1)
        earlier = previous[rows, days]
        before = np.where(earlier >= 0, self.segment_risk[rows, np.maximum(earlier, 0)], self.opening_risk[rows])
        on_order = self.on_order_risk(fixed)
        through = np.concatenate([np.zeros((len(fixed), 1)), np.maximum.accumulate(on_order, axis=1)[:, :-1]], 1)
        return np.where(first, np.maximum.reduce([before, self.opening_risk[rows], through[rows, days]]), before)

    def on_order_risk(self, fixed: np.ndarray) -> np.ndarray:
        """(n, H): P(running out after each visit already on order, before the next visit); 0 on other days."""
        return np.where(~np.isnan(fixed), self.segment_risk, 0.0)


def fill_level(
    balance: np.ndarray,
    target: np.ndarray,
    top_up: bool,
    is_atm: np.ndarray,
    multiple: np.ndarray | None = None,
    ceiling: np.ndarray | None = None,
) -> np.ndarray:
    """Cash right after a visit aiming at `target`.

    Cassette swap replaces the cash. A top-up adds whole `multiple`s (the target rounded up, unless that
    passes `ceiling`) and never takes cash out of an ATM; branches and recyclers above the target are
    brought down to it (a pickup: the crew takes what is there above it).
    """
    if not top_up:
        return np.broadcast_to(target, balance.shape).copy()
    gap = target - balance
    added = np.maximum(gap, 0.0)
    if multiple is not None:
        whole = round_up_to_multiple(added, multiple)
        added = np.where(balance + whole <= ceiling + 1e-6, whole, np.maximum(whole - multiple, 0.0))
    return np.where(is_atm | (gap > 0), balance + added, target)


def simulate_paths(
    net: np.ndarray,
    start_balance: np.ndarray,
    targets: np.ndarray,
    top_up: bool,
    is_atm: np.ndarray,
    final_end: np.ndarray | None = None,
    bundles: tuple[np.ndarray, np.ndarray] | None = None,
    floor: np.ndarray | None = None,
    plan_days: int | None = None,
) -> PathRun:
    """Run a schedule (targets (n, H), NaN = no visit) over the paths with lost demand.

    `bundles` (load_multiple, max_load per device) make top-ups whole bundles, as `fill_level` does.
    `floor` (n,), the devices' min_balance: a day whose cash ends below it counts as running out, as the
    optimiser counts it (default 0: only an empty device). Demand is lost only once the cash is gone.

    The last visit's segment_risk counts running out before day `final_end` (default H). A device with no
    visit in the first `plan_days` (default H) gets as opening_risk its risk of running out in those days: the
    plan's horizon, not the lookahead simulated after it.
    Devices run in blocks of SIMULATE_BLOCK: a day's column of `net` is strided, and a block's
    paths stay in cache across its days (10,000 devices x 200 paths: 1.7x faster than all at once).
    """
    n, _, horizon = net.shape
    final_end = np.full(n, horizon) if final_end is None else final_end
    floor = np.zeros(n) if floor is None else floor
    blocks = [
        _simulate_block(
            net[rows],
            start_balance[rows],
            targets[rows],
            top_up,
            is_atm[rows],
            final_end[rows],
            None if bundles is None else tuple(values[rows] for values in bundles),
            floor[rows],
            horizon if plan_days is None else plan_days,
        )
        for rows in (slice(lo, lo + SIMULATE_BLOCK) for lo in range(0, max(n, 1), SIMULATE_BLOCK))
    ]
    return PathRun(*(np.concatenate([getattr(b, name) for b in blocks]) for name in PathRun.__dataclass_fields__))


def _simulate_block(net, start_balance, targets, top_up, is_atm, final_end, bundles, floor, plan_days) -> PathRun:
    n, n_paths, horizon = net.shape
    below = (floor.astype("float64") - 1e-6)[:, None]
    cash = np.repeat(start_balance.astype("float64")[:, None], n_paths, axis=1)
    before, after, short = (np.zeros((n, horizon)) for _ in range(3))
    risk = np.full((n, horizon), np.nan)
    opening_risk = np.full(n, np.nan)
    ran_out = np.zeros((n, n_paths), dtype=bool)
    out = np.empty((n, n_paths), dtype=bool)
    last_visit = np.full(n, -1)
    rows = np.arange(n)
    for day in range(horizon):
        visit = ~np.isnan(targets[:, day])
        before[:, day] = cash.mean(axis=1)
        done = (visit | (day == final_end)) & (last_visit >= 0)
        risk[rows[done], last_visit[done]] = ran_out[done].mean(axis=1)
        last_visit[done] = -1
        after[:, day] = before[:, day]
        first = visit & np.isnan(opening_risk)
        opening_risk[first] = ran_out[first].mean(axis=1)
        if visit.any():
            whole = (None, None) if bundles is None else (values[visit][:, None] for values in bundles)
            level = fill_level(cash[visit], targets[visit, day][:, None], top_up, is_atm[visit][:, None], *whole)
            cash[visit] = level
            ran_out[visit] = False
            last_visit[visit] = day
            after[visit, day] = level.mean(axis=1)
        np.subtract(cash, net[:, :, day], out=cash)  # the day's closing cash (demand beyond it is lost)
        np.less(cash, below, out=out)
        short[:, day] = np.count_nonzero(out, axis=1) / n_paths
        ran_out |= out
        np.maximum(cash, 0.0, out=cash)
        if day == plan_days - 1:  # no visit in the plan's days: the risk in them, not in the lookahead
            unvisited = np.isnan(opening_risk)
            opening_risk[unvisited] = ran_out[unvisited].mean(axis=1)
    open_end = last_visit >= 0
    risk[rows[open_end], last_visit[open_end]] = ran_out[open_end].mean(axis=1)
    never = np.isnan(opening_risk)
    opening_risk[never] = ran_out[never].mean(axis=1)
    return PathRun(before=before, after=after, short=short, segment_risk=risk, opening_risk=opening_risk)


def _clean_paths(
    forecast: DemandForecast, device_ids: np.ndarray, days: slice, fallback: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Withdrawal and net paths aligned to `device_ids`, NaN filled; plus a note per device.

    A NaN cell takes that day's mean over the other paths; a device with no finite value at all
    takes its trailing mean daily demand on every path, so the plan stays usable.
    """
    index = pd.Index(np.asarray(forecast.device_ids, dtype=str)).get_indexer(device_ids)
    found = index >= 0
    same_rows = len(index) == len(forecast.device_ids) and np.array_equal(index, np.arange(len(index)))

    def aligned(paths: np.ndarray) -> np.ndarray:
        if same_rows:  # the usual case: a view, nothing below writes to it (a 10,000-device copy is ~1 s)
            return paths[:, :, days].astype("float32", copy=False)
        shape = (len(device_ids), paths.shape[1], days.stop - days.start)
        out = np.full(shape, np.nan, dtype="float32")
        out[found] = np.take(paths, index[found], axis=0)[:, :, days]
        return out

    withdrawals = aligned(forecast.withdrawal_paths)
    deposits = aligned(forecast.deposit_paths) if forecast.deposit_paths is not None else None
    notes = [""] * len(device_ids)
    missing = np.isnan(withdrawals)
    if missing.any():
        empty = missing.all(axis=(1, 2))
        finite = (~missing).sum(axis=1)
        day_sum = np.where(missing, 0.0, withdrawals).sum(axis=1)
        day_mean = np.where(finite > 0, day_sum / np.maximum(finite, 1), fallback[:, None])
        withdrawals = np.where(missing, day_mean[:, None, :], withdrawals).astype("float32")
        for row in np.flatnonzero(missing.any(axis=(1, 2))):
            notes[row] = (
                f"no forecast: trailing mean demand {fallback[row]:,.0f}/day assumed"
                if empty[row]
                else "forecast had gaps: filled with the day's mean"
            )
    # Below half a cent a day is the forecaster's arithmetic (a device that recorded only zeros gets 1e-5s), not
    # demand a crew should come for; np.where keeps NaN, which the fill above has already replaced.
    withdrawals = tame_tails(np.where(withdrawals < HALF_CENT, np.float32(0.0), withdrawals))
    if deposits is None:
        return withdrawals, withdrawals.copy(), notes
    net = withdrawals - np.nan_to_num(np.maximum(deposits, 0.0), copy=False)
    return withdrawals, net.astype("float32", copy=False), notes


def tame_tails(paths: np.ndarray, level: float = TAIL_LEVEL) -> np.ndarray:
    """Paths (n, P, H) with the runaway weeks scaled down: a path whose sum over a week (days 0-6,
    7-13, ...) lies beyond the extrapolation of that week's body (q50, q90) to `level` is
    scaled onto it over that week (dp.extrapolate_body); the rest are untouched.

    Why: the forecaster's paths (resampled 7-day blocks of backtest errors) carry a few runaway
    weeks, one bad backtest week drawn again and again; left alone they make the planner price
    stockouts that do not happen and buy idle cash and extra visits against them. See
    dp.need_quantile for the loads.
    """
    if paths.shape[1] < MIN_BODY_PATHS:
        return paths
    tamed = paths.copy()
    for first in range(0, paths.shape[2], 7):
        week = slice(first, first + 7)
        totals = paths[:, :, week].sum(axis=2, dtype="float64")
        q50, q90 = np.quantile(totals, [0.5, BODY_LEVEL], axis=1)
        cap = extrapolate_body(q50, q90, level)
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(totals > cap[:, None], cap[:, None] / totals, 1.0)
        tamed[:, :, week] *= scale[:, :, None].astype(paths.dtype)
    return tamed


MAX_ROLL_DAYS = 31  # a count older than a month is not brought forward: ask for a new one


def roll_balances_forward(
    balances: pd.DataFrame, daily: pd.DataFrame, visits: pd.DataFrame | None, as_of: pd.Timestamp | str
) -> pd.DataFrame:
    """Counts taken before the morning of `as_of` (device_id, balance, balance_as_of) brought to it.

    Day by day from the count: the visit made that morning sets the cash to its balance_after (`visits`:
    device_id, visit_date, balance_after, as they stood on order), then the day's recorded withdrawals
    less deposits leave, floored at 0. A day with no record takes the device's usual net outflow that weekday
    (its median over the USUAL_WEEKS weeks before as_of; counted in `estimated_days`): a missing Sunday must not
    freeze the cash while the days after it are withdrawn. A device that recorded no such weekday then stops
    there, after that morning's visit: its balance keeps that morning's date
    (`after_visit` says the visit is in it), and the plan says how old it is. Counts over MAX_ROLL_DAYS days old
    stay as they are. Adds `counted_on`, the day of the count itself. Why: yesterday's count knows nothing of
    yesterday's swap, so a plan built on it sends the crew for cash that is gone or leaves a device to run dry.
    """
    as_of = pd.Timestamp(as_of).normalize()
    out = balances.reset_index(drop=True).copy()
    if "balance_as_of" not in out:
        return out
    counted = pd.to_datetime(out["balance_as_of"]).dt.normalize()
    out["counted_on"] = counted
    stale = (counted < as_of) & (counted >= as_of - pd.Timedelta(days=MAX_ROLL_DAYS)) & out["balance"].notna()
    stale = stale.to_numpy()
    if not stale.any():
        return out
    first = counted[stale].min()
    dates = pd.date_range(first, as_of - pd.Timedelta(days=1), freq="D")
    ids = out.loc[stale, "device_id"].astype(str).to_numpy(dtype=object)
    recent = daily[(daily["date"] >= first) & (daily["date"] < as_of)]
    recent = recent.assign(device_id=recent["device_id"].astype(str))
    recent = recent[recent["device_id"].isin(set(ids))]

    def matrix(frame: pd.DataFrame, day_column: str, value: str) -> np.ndarray:
        table = frame.pivot_table(index="device_id", columns=day_column, values=value, aggfunc="last")
        return table.reindex(index=ids, columns=dates).to_numpy(dtype="float64")

    net = matrix(recent, "date", "withdrawals")
    if "deposits" in recent:
        net = net - np.nan_to_num(matrix(recent, "date", "deposits"))
    usual = _usual_net_outflow(daily, ids, as_of)[:, dates.day_of_week]  # (n, days): what a day with no record took
    made = np.full(net.shape, np.nan)
    if visits is not None and len(visits):
        visits = visits.assign(
            device_id=visits["device_id"].astype(str), visit_date=pd.to_datetime(visits["visit_date"]).dt.normalize()
        )
        made = matrix(visits, "visit_date", "balance_after")
    balance = out.loc[stale, "balance"].to_numpy(dtype="float64").copy()
    reached = (counted[stale] - first).dt.days.to_numpy(dtype=int, copy=True)
    rolling = np.ones(len(ids), dtype=bool)
    after_visit = np.zeros(len(ids), dtype=bool)
    estimated = np.zeros(len(ids), dtype=int)
    for day in range(len(dates)):
        on = rolling & (day >= reached)
        visited = on & ~np.isnan(made[:, day])
        balance[visited] = made[visited, day]
        unrecorded = on & np.isnan(net[:, day])
        stop = unrecorded & np.isnan(usual[:, day])  # nothing to go by: stop there, after its visit (that is known)
        after_visit |= stop & visited
        rolling &= ~stop
        go = on & rolling
        estimated[go & unrecorded] += 1
        balance[go] = np.maximum(balance[go] - np.where(unrecorded, usual[:, day], net[:, day])[go], 0.0)
        reached[go] = day + 1
    out.loc[stale, "balance"] = balance
    out.loc[stale, "balance_as_of"] = first + pd.to_timedelta(reached, unit="D")
    out["after_visit"] = False
    out.loc[stale, "after_visit"] = after_visit
    out["estimated_days"] = 0
    out.loc[stale, "estimated_days"] = estimated
    return out


USUAL_WEEKS = 8  # a day with no record is brought forward at the device's usual net outflow over these weeks


def _usual_net_outflow(daily: pd.DataFrame, device_ids: np.ndarray, as_of: pd.Timestamp) -> np.ndarray:
    """(n, 7) each device's median recorded net outflow (withdrawals less deposits) per weekday, Monday first, over
    the USUAL_WEEKS weeks before as_of; NaN for a weekday it never recorded then (a branch that sends no Sunday rows
    is no guide to what a Sunday takes)."""
    dates = pd.date_range(end=as_of - pd.Timedelta(days=1), periods=7 * USUAL_WEEKS, freq="D")
    net = day_matrix(daily, "withdrawals", device_ids, dates, censored_as_missing=False)
    if "deposits" in daily:
        net = net - np.nan_to_num(day_matrix(daily, "deposits", device_ids, dates, censored_as_missing=False))
    return weekday_medians(net, dates)


class BalanceSeen(NamedTuple):
    """Where each device's opening balance came from (n,) arrays: the plan's notes for cash ops."""

    known: np.ndarray  # a count was given, not assumed
    days_old: np.ndarray  # days before as_of the balance dates from (0 when undated or unknown)
    counted_days_ago: np.ndarray  # days before as_of it was counted (more, when roll_balances_forward moved it)
    after_visit: np.ndarray  # that morning's visit is in it
    estimated_days: np.ndarray  # days with no record brought forward at the device's usual net outflow


def _start_balances(
    balances: pd.DataFrame | None, device_ids: np.ndarray, as_of: pd.Timestamp, assumed: np.ndarray
) -> tuple[np.ndarray, BalanceSeen]:
    """Morning balance per device (latest row on or before as_of; `assumed` where none) and where it came from."""
    known = pd.Series(np.nan, index=device_ids)
    age = np.zeros(len(device_ids), dtype=int)
    count_age = age
    after_visit = np.zeros(len(device_ids), dtype=bool)
    estimated = np.zeros(len(device_ids), dtype=int)
    if balances is not None and not balances.empty:
        frame = balances.rename(columns={"balance_as_of": "as_of"}).dropna(subset=["balance"])
        frame["device_id"] = frame["device_id"].astype(str)
        if "as_of" in frame:
            frame["as_of"] = pd.to_datetime(frame["as_of"])
            frame = frame[frame["as_of"] <= as_of].sort_values("as_of", kind="stable")
        latest = frame.groupby("device_id").last()
        known = latest["balance"].reindex(device_ids).astype("float64")
        if "as_of" in latest:
            dated = latest["as_of"].reindex(device_ids)
            age = (as_of.normalize() - dated.dt.normalize()).dt.days.fillna(0).to_numpy(dtype=int)
            count_age = age
        if "counted_on" in latest:
            counted = pd.to_datetime(latest["counted_on"]).reindex(device_ids)
            count_age = (as_of.normalize() - counted.dt.normalize()).dt.days.fillna(0).to_numpy(dtype=int)
        if "after_visit" in latest:
            after_visit = latest["after_visit"].reindex(device_ids).fillna(False).to_numpy(dtype=bool)
        if "estimated_days" in latest:
            estimated = latest["estimated_days"].reindex(device_ids).fillna(0).to_numpy(dtype=int)
    values = known.to_numpy(dtype="float64")
    is_known = ~np.isnan(values)
    return np.where(is_known, values, assumed), BalanceSeen(is_known, age, count_age, after_visit, estimated)


def _ordered_targets(
    ordered_visits: pd.DataFrame | None, device_ids: np.ndarray, dates: pd.DatetimeIndex
) -> np.ndarray:
    """(n, H) balance after each visit already ordered, NaN elsewhere.

    Uses `balance_after` when given, else `amount` (cassette swap: the amount is what stays).
    """
    targets = np.full((len(device_ids), len(dates)), np.nan)
    if ordered_visits is None or ordered_visits.empty:
        return targets
    level = ordered_visits["balance_after"] if "balance_after" in ordered_visits else ordered_visits["amount"]
    row = pd.Index(device_ids).get_indexer(ordered_visits["device_id"].astype(str))
    col = dates.get_indexer(pd.DatetimeIndex(pd.to_datetime(ordered_visits["visit_date"])).normalize())
    keep = (row >= 0) & (col >= 0)
    targets[row[keep], col[keep]] = np.asarray(level, dtype="float64")[keep]
    return targets


def visits_on_order(
    earlier_plan: pd.DataFrame, as_of: pd.Timestamp | str, ordered_before: pd.Timestamp | None = None
) -> pd.DataFrame:
    """The visits of an earlier plan that the carrier already has on the morning of `as_of`: due to be
    ordered before it (`order_by` < as_of, or < `ordered_before` when given) for as_of or later. Today's
    plan takes them as given (device_id, visit_date, balance_after); the rest of the earlier plan is free
    to change."""
    as_of = pd.Timestamp(as_of).normalize()
    deadline = as_of if ordered_before is None else pd.Timestamp(ordered_before).normalize()
    visit = pd.to_datetime(earlier_plan["visit_date"])
    ordered = (pd.to_datetime(earlier_plan["order_by"]) < deadline) & (visit >= as_of)
    return pd.DataFrame(
        {
            "device_id": earlier_plan.loc[ordered, "device_id"].astype(str).to_numpy(dtype=object),
            "visit_date": visit[ordered].to_numpy(),
            "balance_after": earlier_plan.loc[ordered, "balance_after"].to_numpy(dtype="float64"),
        }
    )


def weekly_fill_targets(allowed: np.ndarray, dates: pd.DatetimeIndex, max_load: np.ndarray) -> np.ndarray:
    """Fixed-schedule baseline: fill to capacity on the first allowed day of each calendar week."""
    week = np.asarray((dates - pd.to_timedelta(dates.day_of_week, unit="D")).normalize().asi8)
    targets = np.full(allowed.shape, np.nan)
    for value in np.unique(week):
        cols = np.flatnonzero(week == value)
        has = allowed[:, cols].any(axis=1)
        first = cols[np.argmax(allowed[:, cols], axis=1)]
        targets[np.flatnonzero(has), first[has]] = max_load[has]
    return targets


def _day_span(weekdays: list[str], first: int, days: int) -> str:
    """'Fri-Tue' from the weekday names of the days (names, not Timestamps: ~30,000 visits a plan)."""
    last = first + days - 1
    return weekdays[first] if days == 1 else f"{weekdays[first]}-{weekdays[last]}"


def _percent(value: float) -> str:
    return f"{value * 100:.3g}%"


def plan_network(
    forecast: DemandForecast,
    terms: pd.DataFrame,
    balances: pd.DataFrame | None,
    as_of: pd.Timestamp | str,
    config: Config,
    holidays: pd.DataFrame | None = None,
    ordered_visits: pd.DataFrame | None = None,
) -> PlanResult:
    """Least-cost visit and load plan for every device in `terms` from the morning of `as_of`.

    Devices without a balance start at min_balance + 7 days of forecast withdrawals (noted in the
    reason); `holidays` (device_id, date, holiday_name) defaults to each device's public holidays;
    `ordered_visits` (device_id, visit_date, balance_after or amount) inside the lead time are
    kept as given and planned around.
    """
    as_of = pd.Timestamp(as_of).normalize()
    messages: list[str] = []
    offset = forecast.dates.get_loc(as_of) if as_of in forecast.dates else None
    if offset is None:
        raise ValueError(f"forecast covers {forecast.dates[0]:%Y-%m-%d}.. but the plan starts {as_of:%Y-%m-%d}")
    forecast_days = len(forecast.dates) - offset
    horizon = min(config.plan.horizon_days, forecast_days)
    if horizon < config.plan.horizon_days:
        messages.append(f"forecast covers only {horizon} of the {config.plan.horizon_days} plan days")
    dates = forecast.dates[offset : offset + horizon]
    # The optimiser plans visits on past the horizon (lookahead), so the plan's last loads are
    # weighed against the visits that follow; only the horizon's visits are emitted. Its last
    # loads may cover a week further, credited at the cheapest cost per day of cash.
    planned_days = horizon + config.plan.lookahead_days
    total_days = planned_days + min(EXTENSION_DAYS, planned_days)
    seen_days = min(planned_days, forecast_days)
    terms = terms.reset_index(drop=True)
    device_ids = terms["device_id"].astype(str).to_numpy(dtype=object)
    unplanned = sorted(set(np.asarray(forecast.device_ids, dtype=str)) - set(device_ids))
    if unplanned:
        messages.append(f"{len(unplanned)} forecast device(s) without terms were not planned: {unplanned[:5]}")
    if balances is not None and len(balances):
        strangers = sorted(set(balances["device_id"].astype(str)) - set(device_ids))
        if strangers:
            messages.append(f"balances of {len(strangers)} device(s) not in the plan were ignored: {strangers[:5]}")
    for message in messages:
        warnings.warn(PlanWarning(message), stacklevel=2)
    dev = DeviceArrays.from_terms(terms, config.plan.stockout_penalty_visits)
    withdrawals, net, forecast_notes = _clean_paths(
        forecast, device_ids, slice(offset, offset + seen_days), terms["mean_daily_demand"].to_numpy(dtype="float64")
    )
    # The week's withdrawals, not its net outflow: a device taking in more deposits than it pays out would
    # otherwise be assumed empty, and planned as one running dry. Read before the cut to the horizon, which may
    # be shorter than a week.
    week_need = withdrawals[:, :, :UNKNOWN_BALANCE_DAYS].sum(axis=2).mean(axis=1)
    withdrawals = withdrawals[:, :, :horizon]
    assumed = np.maximum(round_up_to_multiple(dev.min_balance + week_need, dev.load_multiple), dev.min_balance)
    start_balance, balance_seen = _start_balances(balances, device_ids, as_of, np.minimum(assumed, dev.max_load))

    net = extend_weekly(net, total_days)  # days the forecast does not reach: its last week repeated
    all_dates = pd.date_range(dates[0], periods=total_days, freq="D")
    if holidays is None:
        holidays = device_holidays(terms, all_dates[0], all_dates[-1])
    is_holiday, holiday_names = holiday_matrix(device_ids, all_dates, holidays)
    lead = terms["lead_time_days"].to_numpy(dtype=int)
    deadlines = order_deadlines(
        all_dates[:planned_days], lead, config.plan.order_weekdays, is_holiday[:, :planned_days]
    )
    allowed_ahead = allowed_visit_days(
        terms, all_dates[:planned_days], is_holiday[:, :planned_days], config.plan.allow_holiday_visits, deadlines
    )
    fixed = _ordered_targets(ordered_visits, device_ids, dates)
    has_fixed = ~np.isnan(fixed).all(axis=1)
    start_day = np.where(has_fixed, horizon - 1 - np.argmax(~np.isnan(fixed[:, ::-1]), axis=1), 0)
    allowed_ahead &= np.arange(planned_days)[None, :] > np.where(has_fixed, start_day, -1)[:, None]
    allowed = allowed_ahead[:, :horizon]
    prefix_balance = np.where(has_fixed, fixed[np.arange(len(device_ids)), start_day], start_balance)

    loads, seg_costs = segment_table(net, dev, allowed_ahead, max_length=config.plan.max_cover_days)
    first_costs = prefix_costs(net, start_day, prefix_balance, dev)
    end_value = -cycle_cost_per_day(seg_costs)[:, None] * np.arange(total_days - planned_days + 1)[None, :]
    _, next_day, _ = solve_visits(seg_costs, first_costs, allowed_ahead, end_value)
    next_day = next_day[:, :horizon]
    targets = np.where(has_fixed[:, None] & ~np.isnan(fixed), fixed, chosen_loads(next_day, loads[:, :horizon]))
    tiny = visit_daily_where_too_small(targets, net[:, :, :horizon].mean(axis=1), allowed, dev, ~np.isnan(fixed))
    final_end = np.where(tiny | (next_day.max(axis=1) < horizon), horizon, next_day.max(axis=1))
    segment_end = _segment_ends(targets, final_end)
    top_up = not config.plan.cassette_swap
    is_atm = terms["kind"].to_numpy() == "atm"
    bundles = (dev.load_multiple, dev.max_load)

    def run_schedule(targets: np.ndarray) -> PathRun:
        padded = np.concatenate([targets, np.full((len(targets), total_days - horizon), np.nan)], axis=1)
        run = simulate_paths(
            net, start_balance, padded, top_up, is_atm, final_end, bundles, dev.min_balance, plan_days=horizon
        )
        return run.first_days(horizon)

    run = run_schedule(targets)
    while True:
        # A visit that moves no cash is no visit: a top-up within a bundle of the level, or a swap loading
        # nothing into a device expected empty (a device with no demand after its pickup, kept from running
        # `max_cover_days` without a visit). No crew goes, so the risks and the projection run on to the next
        # visit. Each pass drops at least one visit (a dropped one can change what a later one finds), so this
        # ends.
        rows, days = np.nonzero(~np.isnan(targets) & np.isnan(fixed))
        *_, adds = _visit_amounts(run.before[rows, days], targets[rows, days], top_up, is_atm, dev, rows)
        if adds.all():
            break
        targets = targets.copy()
        targets[rows[~adds], days[~adds]] = np.nan
        segment_end = _segment_ends(targets, final_end)
        run = run_schedule(targets)
    baseline_targets = weekly_fill_targets(allowed, dates, dev.max_load)
    # The baseline gets the visits already on order too (it cannot change them either), and is
    # credited, like the plan, only with the visits it orders itself.
    with_orders = np.where(np.isnan(fixed), baseline_targets, fixed)
    baseline = simulate_paths(
        net[:, :, :horizon], start_balance, with_orders, top_up, is_atm, bundles=bundles, floor=dev.min_balance
    )

    device_notes = _device_notes(
        dev, withdrawals, net[:, :, :horizon], (allowed, tiny), start_balance, balance_seen, forecast_notes, run
    )
    standing_notes = _standing_notes(terms, forecast.failures, as_of)
    for device, notes, standing in zip(device_ids, device_notes, standing_notes, strict=True):
        messages.extend(f"{device}: {note}" for note in [*notes, *standing])
    plan = _plan_rows(
        terms,
        dev,
        all_dates,
        targets,
        segment_end,
        fixed,
        run,
        holiday_names,
        (device_notes, standing_notes),
        top_up,
        is_atm,
        deadlines,
    )
    demand = _demand_quantiles(forecast.frame, device_ids, dates, withdrawals, config.forecast.quantiles)
    # The projection's visits are the plan's rows and those on order: the targets, empty top-ups dropped above.
    projection = _projection(device_ids, dates, net[:, :, :horizon], ~np.isnan(targets), run, demand)
    summary_notes = [[*notes, *standing] for notes, standing in zip(device_notes, standing_notes, strict=True)]
    for row, note in _unvisited_notes(device_ids, plan, fixed, run, horizon):
        summary_notes[row].insert(0, note)
    summary = _summary(terms, dev, plan, fixed, run, baseline, baseline_targets, summary_notes, top_up)
    return PlanResult(plan=plan, projection=projection, summary=summary, warnings=messages)


def visit_daily_where_too_small(
    targets: np.ndarray, daily_need: np.ndarray, allowed: np.ndarray, dev: DeviceArrays, keep: np.ndarray | None = None
) -> np.ndarray:
    """Fill to the ceiling on every allowed day the devices whose cassette is smaller than a typical (median)
    day's need (`daily_need` (n, days), the plan's expected or the replay's actual net outflow); rewrites
    their rows of `targets` (n, days) and returns their mask. `keep` (n, days) marks the visits that stay
    as they are (those already on order, on days no longer allowed).

    Such a cassette runs dry every day whatever the visit days: the DP counts a stockout day either way
    and would save the visits, yet each visit serves a cassette's worth more demand. The median, not the
    largest day: one festival day above the cassette is a day the DP plans around, not a reason to visit
    every day of the month.
    """
    one_day = typical_day(daily_need)
    tiny = (one_day > 0) & (one_day + dev.min_balance > dev.max_load)
    stays = np.nan if keep is None else np.where(keep[tiny], targets[tiny], np.nan)
    targets[tiny] = np.where(allowed[tiny], dev.max_load[tiny, None], stays)
    return tiny


def typical_day(daily_need: np.ndarray) -> np.ndarray:
    """A device's typical day's need (n,) from (n, days): the median, which one festival day does not move."""
    return np.median(daily_need, axis=1)


def extend_weekly(paths: np.ndarray, total_days: int) -> np.ndarray:
    """Paths continued past their last day by repeating their last week (weekly seasonality), so
    the final visit's load can be weighed against the days just after the plan."""
    days = paths.shape[-1]
    period = min(7, days)
    last_period = paths[..., days - period :]
    repeats = -(-(total_days - days) // period)
    return np.concatenate([paths, *[last_period] * repeats], axis=-1)[..., :total_days]


def _segment_ends(targets: np.ndarray, final_end: np.ndarray) -> np.ndarray:
    """(n, H): for each visit day, the day of the next visit (or final_end for the last), else -1."""
    ends = np.full(targets.shape, -1)
    following = final_end.copy()
    for day in range(targets.shape[1] - 1, -1, -1):
        visit = ~np.isnan(targets[:, day])
        ends[visit, day] = following[visit]
        following = np.where(visit, day, following)
    return ends


def _device_notes(
    dev, withdrawals, net, visit_days, start_balance, seen: BalanceSeen, forecast_notes, run
) -> list[list]:
    """Per-device warnings for cash ops: the inputs that made this plan unusual. `visit_days` is (allowed
    (n, H), visited daily as too small (n,)), `seen` where the opening balances came from."""
    allowed, tiny = visit_days
    n, n_paths, horizon = net.shape
    one_day = typical_day(net.mean(axis=1))
    no_demand = withdrawals.max(axis=(1, 2)) <= 0
    first_allowed = np.where(allowed.any(axis=1), np.argmax(allowed, axis=1), horizon)
    notes: list[list[str]] = []
    for row in range(n):
        found = [forecast_notes[row]] if forecast_notes[row] else []
        if not seen.known[row]:
            found.append(
                f"balance unknown: assumed {start_balance[row]:,.0f} (min_balance + 7 days of forecast withdrawals,"
                " at most the largest load)"
            )
        elif seen.days_old[row] > 0 and seen.after_visit[row]:
            found.append(
                f"balance {start_balance[row]:,.0f} is what the visit of {seen.days_old[row]} day(s) before this"
                f" plan left (its balance_after; counted {seen.counted_days_ago[row]} day(s) ago): the withdrawals"
                " since are not recorded, send this morning's count"
            )
        elif seen.days_old[row] > 0 and seen.counted_days_ago[row] > seen.days_old[row]:
            found.append(
                f"balance {start_balance[row]:,.0f} dates from {seen.days_old[row]} day(s) before this plan:"
                f" brought forward from a count {seen.counted_days_ago[row]} day(s) old as far as withdrawals are"
                " recorded; send this morning's count"
            )
        elif seen.days_old[row] > 0:
            found.append(
                f"balance {start_balance[row]:,.0f} was counted {seen.days_old[row]} day(s) before this plan: "
                "withdrawals and visits since are not deducted, send this morning's count"
            )
        elif seen.counted_days_ago[row] > 0:
            unrecorded = seen.estimated_days[row]
            found.append(
                f"balance {start_balance[row]:,.0f} brought forward from the count of"
                f" {seen.counted_days_ago[row]} day(s) ago: recorded withdrawals and deposits since, and the visits on"
                " order then"
                + (f"; {unrecorded} day(s) with no record taken at the device's usual demand" if unrecorded else "")
            )
        if start_balance[row] < dev.min_balance[row] - 1e-6:
            found.append(f"balance {start_balance[row]:,.0f} is below min_balance {dev.min_balance[row]:,.0f}")
        elif start_balance[row] > dev.max_balance[row] + 1e-6:
            found.append(
                f"balance {start_balance[row]:,.0f} is above the most the device may hold,"
                f" {dev.max_balance[row]:,.0f} (max_balance, else capacity)"
            )
        if no_demand[row]:
            found.append("zero forecast demand")
        if not allowed[row].any():
            found.append("no allowed visit day in the horizon (visit weekdays, holidays, lead time)")
        if dev.min_balance[row] > dev.max_load[row]:
            found.append(
                f"min_balance {dev.min_balance[row]:,.0f} is above the largest load {dev.max_load[row]:,.0f} "
                "(capacity, max_balance and bundle size)"
            )
        elif tiny[row]:
            found.append(
                f"capacity {dev.max_load[row]:,.0f} is below one day's demand (typically {one_day[row]:,.0f}): "
                "visit every allowed day"
            )
        early_short = run.short[row, : first_allowed[row]].sum() if first_allowed[row] > 0 else 0.0
        if early_short > 1 - dev.service_level[row]:
            found.append(
                f"may run out before the first possible visit ({early_short:.2g} expected stockout"
                f" day{'' if f'{early_short:.2g}' == '1' else 's'})"
            )
        notes.append(found)
    return notes


def _unvisited_notes(device_ids, plan: pd.DataFrame, fixed, run: PathRun, horizon: int) -> list[tuple[int, str]]:
    """(row, note) for the devices this plan sends no crew to: cash ops filtering the summary for a device
    should read why it has no plan row (the cash on hand, with any visits on order, serves the horizon) and at
    what risk.
    Only in the summary: a line per quiet device on standard error would bury the warnings that matter."""
    unvisited = np.flatnonzero(~pd.Index(np.asarray(device_ids, dtype=str)).isin(plan["device_id"].astype(str)))
    risk = np.maximum(run.opening_risk, run.on_order_risk(fixed).max(axis=1, initial=0.0))
    orders = np.where(np.isnan(fixed).all(axis=1), "", " and the visits on order")
    said = f"no visit planned in the {horizon} days: {{}} risk of running out on the cash on hand{{}}"
    return [(row, said.format(_percent(risk[row]), orders[row])) for row in unvisited]


def _standing_notes(terms: pd.DataFrame, failures: dict[str, str], as_of: pd.Timestamp) -> list[list[str]]:
    """Notes on the device rather than on this plan, for every row of it: its model failed (the plan
    rests on the fallback forecast), its last usable record is over STALE_HISTORY_DAYS old (a
    stopped feed, a device out of service) or it has none yet (a new device), so someone should check it."""
    last = pd.DatetimeIndex(terms["last_observed"])
    silent = days_unrecorded(last, as_of)
    notes: list[list[str]] = []
    for device, last_day, days in zip(terms["device_id"].astype(str), last, silent, strict=True):
        found = ["model failed, fallback forecast used"] if device in failures else []
        if days > STALE_HISTORY_DAYS:
            found.append(f"{QUIET_DEVICE_NOTE} {last_day:%Y-%m-%d} ({days:.0f} days): check the device and its feed")
        elif pd.isna(last_day):
            found.append("no demand recorded yet: planned on the network's typical device; check it once it runs")
        notes.append(found)
    return notes


def _plan_rows(
    terms, dev, dates, targets, segment_end, fixed, run, holiday_names, notes, top_up, is_atm, deadlines
) -> pd.DataFrame:
    """CONTRACT.md plan rows, one per device and visit, with a reason for cash ops.

    `dates` and `holiday_names` run past the horizon as far as a final load may cover; `deadlines`
    index the day each visit's order is due (`order_deadlines`). `notes` are
    per-device lists: the plan's notes (on a device's first row) and the standing notes (on every row).
    Visits already ordered (`fixed`, inside the lead time) shape the plan but are an earlier plan's
    rows: a plan lists only the visits it orders, none before as_of + lead_time_days.
    """
    device_notes, standing_notes = notes
    horizon = targets.shape[1]
    rows, days = np.nonzero(~np.isnan(targets) & np.isnan(fixed))
    covered = segment_end[rows, days] - days
    before = run.before[rows, days]
    after, pickup, amount, _ = _visit_amounts(before, targets[rows, days], top_up, is_atm, dev, rows)
    risk = run.segment_risk[rows, days]
    first_visit = np.diff(rows, prepend=-1) != 0  # visits come sorted by device, then day
    risk_before = run.risk_before(targets, fixed, rows, days, first_visit)
    held = np.concatenate([np.zeros((len(targets), 1)), np.cumsum(run.after, axis=1)], axis=1)
    holding = (held[rows, np.minimum(days + covered, horizon)] - held[rows, days]) * dev.daily_holding_rate[rows]
    capped = np.maximum(after, targets[rows, days]) >= dev.max_load[rows] - 1e-6
    # The most cash expected on a morning after the visit, the next visit's included (deposits pile up until it),
    # and, for a device's first row, on the mornings up to it where deposits took it above the morning's count (a
    # count above max_balance is said by its own note, and is no deposit's doing).
    peak = _most_cash(run.before, rows, days + 1, np.minimum(days + covered, horizon - 1) + 1)
    risen = _most_cash(run.before, rows, np.ones_like(days), days + 1)
    peak_before = np.where(first_visit & (risen > run.before[rows, 0] + 1e-6), risen, 0.0)
    flags = zip(pickup, capped, after, before, zip(peak, peak_before, strict=True), strict=True)
    weekdays = [WEEKDAY_NAMES[day] for day in dates.day_of_week]
    reasons = [
        _reason(weekdays, int(day), int(span), horizon, holiday_names[row, day : day + span], dev, row, p_out, flag)
        for row, day, span, p_out, flag in zip(
            rows, days, covered, zip(risk, risk_before, strict=True), flags, strict=True
        )
    ]
    reasons = [
        "; ".join([text, *(device_notes[row] if first else []), *standing_notes[row]])
        for text, row, first in zip(reasons, rows, first_visit, strict=True)
    ]
    visit_dates = dates[days]
    plan = pd.DataFrame(
        {
            "device_id": pd.array(terms["device_id"].astype(str).to_numpy()[rows], dtype="string"),
            "visit_date": visit_dates,
            "order_by": dates[deadlines[rows, days]],
            "action": np.where(pickup, "pickup", "load"),
            "amount": np.round(amount, 2) + 0.0,  # + 0.0: a full pickup's -0.0 read "-0" in the CSV
            "expected_balance_before": np.round(before, 2),
            "balance_after": np.round(after, 2) + 0.0,
            "days_covered": covered.astype(int),
            "stockout_risk": np.round(risk, 4),
            "reason": reasons,
            "name": terms["name"].to_numpy()[rows],
            "region": terms["region"].to_numpy()[rows],
            "kind": terms["kind"].to_numpy()[rows],
            "visit_cost": dev.visit_cost[rows],
            "expected_holding_cost": np.round(holding, 2),  # within the plan horizon
            "stockout_risk_before": np.round(risk_before, 4),
        }
    )
    extra = ["name", "region", "kind", "visit_cost", "expected_holding_cost", "stockout_risk_before"]
    return plan[[*PLAN_COLUMNS, *extra]]


def _most_cash(cash: np.ndarray, rows: np.ndarray, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """Per row, the largest cash[row, start:stop] (0 where the range is empty), as one array operation: a
    Python loop over 40,000 plan rows took 8 times as long."""
    if not len(rows):
        return np.zeros(0)
    width = max(int((stop - start).max()), 1)
    day = start[:, None] + np.arange(width)[None, :]
    inside = day < stop[:, None]
    values = cash[rows[:, None], np.minimum(day, cash.shape[1] - 1)]
    return np.where(inside, values, 0.0).max(axis=1)


def _visit_amounts(before, target, top_up: bool, is_atm, dev: DeviceArrays, rows: np.ndarray):
    """(balance_after, pickup, amount, adds_something) of visits on devices `rows` finding `before` in
    expectation and aiming at `target`; a top-up within a bundle of the level adds nothing."""
    after = fill_level(before, target, top_up, is_atm[rows], dev.load_multiple[rows], dev.max_load[rows])
    # An ATM's swap that leaves no cash (no demand forecast) only takes idle cash out: a pickup too.
    pickup = (~is_atm[rows] | (after < HALF_CENT)) & (after < before - 1e-6)
    # A swap brings `balance_after` whatever is found (the residual goes back); a top-up moves the difference.
    amount = np.where(pickup, before - after, after - before) if top_up else after
    return after, pickup, amount, pickup | (amount > HALF_CENT)


def _reason(weekdays, day, covered, horizon, holiday_names, dev, row, risks, flags) -> str:
    """'covers Fri-Tue (5 days) incl. holiday (National Day) at 99%' plus what cash ops must know.

    `risks` are the chances of running out after the visit (to the next) and before it; `flags` say
    whether it is a pickup, whether the load is at the ceiling, the cash it leaves, the cash expected before and
    the most cash expected on a morning after it to the next visit's and, for a first row, up to it."""
    pickup, capped, level, expected, (peak, peak_before) = flags
    risk, risk_before = risks
    sl = dev.service_level[row]
    beyond = day + covered - horizon
    until = f", {beyond} past the plan horizon" if beyond > 0 else ""
    names = list(dict.fromkeys(h for h in holiday_names if h))  # in date order: Christmas before Boxing Day
    holiday = f" incl. holiday ({', '.join(names)})" if names else ""
    days = f"{covered} day{'s' if covered > 1 else ''}{until}"
    short = risk > 1 - sl + 1e-9
    # The level the load reaches: the service level, or less where the load falls short of it (cash ops
    # read the first clause; "at 99%" beside a 24% risk contradicted it).
    reached = 1 - risk if short else sl
    parts = [f"covers {_day_span(weekdays, day, covered)} ({days}){holiday} at {_percent(reached)}"]
    if pickup and level < HALF_CENT:
        parts.insert(
            0, f"pickup: takes all the cash out, the days it covers need none: about {expected:,.0f} comes back"
        )
    elif pickup:
        parts.insert(
            0,
            f"pickup: takes the cash down to {level:,.0f}, what the days it covers need (deposits pile up):"
            f" about {expected - level:,.0f} of the {expected:,.0f} expected comes back",
        )
    elif level < expected - dev.load_multiple[row] + 1e-6:  # a swap that leaves less than it finds
        parts.append(f"swaps out about {expected:,.0f} expected in it: {expected - level:,.0f} goes back")
    for most, until in ((peak_before, "this"), (peak, "the next")):
        if most > dev.max_balance[row] + 1e-6:
            parts.append(
                f"deposits expected to take the cash to {most:,.0f}, above max_balance {dev.max_balance[row]:,.0f},"
                f" before {until} visit"
            )
    target = f"above the {_percent(1 - sl)} target"
    if risk_before > 1 - sl + 1e-9:
        parts.append(f"{_percent(risk_before)} risk of running out before this visit, {target}")
    if short and capped:
        parts.append(f"stockout risk {_percent(risk)} {target}: load capped at {dev.max_load[row]:,.0f}")
    elif short:
        parts.append(
            f"stockout risk {_percent(risk)} in simulation, {target} (rare demand surges the load does not chase)"
        )
    return "; ".join(parts)


def _demand_quantiles(
    frame: pd.DataFrame, device_ids: np.ndarray, dates: pd.DatetimeIndex, withdrawals: np.ndarray, levels
) -> dict[str, np.ndarray]:
    """Demand quantiles (n, H) per column name: the forecast's own columns, so the projection shows what
    forecast.csv says for the same device-day; the paths' quantiles for a level the forecast lacks."""
    index = pd.MultiIndex.from_product([pd.Index(device_ids, dtype="string"), dates], names=["device_id", "date"])
    keyed = frame.assign(device_id=frame["device_id"].astype("string")).set_index(["device_id", "date"])
    ordered = None
    out = {}
    for level in levels:
        column = quantile_column(level)
        if column in keyed:
            out[f"demand_{column}"] = (
                keyed[column].reindex(index).to_numpy(dtype="float64").reshape(len(device_ids), -1)
            )
            continue
        ordered = np.sort(withdrawals, axis=1) if ordered is None else ordered  # one sort serves every level
        out[f"demand_{column}"] = _sorted_quantile(ordered, level)
    return out


def _projection(device_ids, dates, net, visited, run, demand: dict[str, np.ndarray]) -> pd.DataFrame:
    """Day-by-day expected cash per device under the plan, in cents and risks to 4 places as in the
    plan rows (a 10,000-device projection is 140,000 rows: full float digits made its CSV 40% larger
    and slower to write, for nothing cash ops can use)."""
    n, horizon = visited.shape
    frame = pd.DataFrame(
        {
            "device_id": pd.array(np.repeat(device_ids, horizon), dtype="string"),
            "date": np.tile(dates.to_numpy(), n),
            "expected_opening_balance": np.round(run.before.ravel(), 2),
            "expected_net_outflow": np.round(net.mean(axis=1, dtype="float64").ravel(), 2),
        }
    )
    for column, values in demand.items():
        frame[column] = np.round(values.ravel(), 2)
    frame["visit"] = visited.ravel()
    frame["balance_after"] = np.round(run.after.ravel(), 2)
    frame["stockout_probability"] = np.round(run.short.ravel(), 4)
    return frame


def _sorted_quantile(ordered: np.ndarray, level: float) -> np.ndarray:
    """np.quantile(paths, level, axis=1) (its default linear rule, same float steps) of path-sorted
    `ordered` (n, P, H): sorting once and reading two order statistics per level is 3x faster than
    np.quantile on 10,000 devices, which partitions the paths again for every call."""
    n_paths = ordered.shape[1]
    virtual = np.float64(level) * (n_paths - 1)
    lower = min(int(np.floor(virtual)), n_paths - 1)
    gamma = virtual - lower
    below, above = ordered[:, lower], ordered[:, min(lower + 1, n_paths - 1)]
    step = above - below
    return above - step * (1 - gamma) if gamma >= 0.5 else below + step * gamma


def _summary(terms, dev, plan, fixed, run, baseline, baseline_targets, device_notes, top_up) -> pd.DataFrame:
    """One row per device and a fleet TOTAL: the plan's expected cost against the weekly fill.

    Visits already on order (`fixed`) are counted apart: both the plan and the baseline are simulated
    with them, and neither is charged for them (an earlier plan ordered them). Cash deployed is the cash
    the crews bring: every swap's, a top-up's loads."""
    horizon = run.after.shape[1]
    loads = plan[(plan["action"] == "load") | (not top_up)].groupby("device_id")["amount"].sum()
    visits = plan.groupby("device_id").size()
    ids = terms["device_id"].astype(str)
    summary = pd.DataFrame(
        {
            "device_id": ids,
            "name": terms["name"],
            "region": terms["region"],
            "kind": terms["kind"],
            "last_observed": terms["last_observed"].to_numpy(),
            "visits": ids.map(visits).fillna(0).astype(int).to_numpy(),
            "visits_on_order": (~np.isnan(fixed)).sum(axis=1),
            "cash_deployed": ids.map(loads).fillna(0.0).to_numpy(),
            "expected_idle_cash": run.after.mean(axis=1),
            "expected_holding_cost": run.after.sum(axis=1) * dev.daily_holding_rate,
            "expected_stockout_days": run.short.sum(axis=1),
        }
    )
    summary["visit_cost"] = summary["visits"] * dev.visit_cost
    summary["expected_cost"] = summary["visit_cost"] + summary["expected_holding_cost"]
    base_visits = (~np.isnan(baseline_targets)).sum(axis=1)
    summary["baseline_visits"] = base_visits
    summary["baseline_cash_deployed"] = np.nansum(baseline_targets, axis=1)
    summary["baseline_expected_idle_cash"] = baseline.after.mean(axis=1)
    summary["baseline_expected_stockout_days"] = baseline.short.sum(axis=1)
    baseline_holding = baseline.after.sum(axis=1) * dev.daily_holding_rate
    summary["baseline_expected_cost"] = base_visits * dev.visit_cost + baseline_holding
    summary["horizon_days"] = horizon
    summary["notes"] = ["; ".join(notes) for notes in device_notes]
    return with_fleet_total(summary)


TOTAL_ID = "TOTAL"
_LABELS = ["device_id", "name", "region", "kind", "last_observed", "notes", "horizon_days"]


def device_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """The per-device rows of a summary, without its fleet TOTAL row."""
    return summary[summary["device_id"].astype(str) != TOTAL_ID]


def with_fleet_total(per_device: pd.DataFrame) -> pd.DataFrame:
    """Per-device summary rows plus one fleet TOTAL row (so chunked runs can merge summaries)."""
    floats = per_device.select_dtypes("float").columns
    rounding = {column: 4 if column.endswith("stockout_days") else 2 for column in floats}
    rows = device_rows(per_device).round(rounding)  # the TOTAL adds up the rows as printed
    total = rows.drop(columns=_LABELS).sum()
    horizon = int(rows["horizon_days"].max()) if len(rows) else 0
    total_row = {**total.to_dict(), "device_id": TOTAL_ID, "name": "fleet", "region": "", "kind": "", "notes": ""}
    total_row["last_observed"] = rows["last_observed"].max()  # the fleet's newest record
    total_row["horizon_days"] = horizon
    summary = pd.concat([rows, pd.DataFrame([total_row])], ignore_index=True)
    summary["device_id"] = summary["device_id"].astype("string")
    return summary.round(rounding)
