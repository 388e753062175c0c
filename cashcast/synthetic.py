"""A seeded synthetic cash network: ATMs, branches and recyclers with realistic cash demand.

It feeds the demo, the scale benchmarks and the tests, so it has to carry the patterns a cash-ops
team plans around. Everything is vectorised over devices x days (one Python loop over days for the
cash-in-device simulation), so 10,000 devices x 730 days take seconds. Amounts are CNY.

What the generator models, in cash-ops terms:

- Device kinds. ATMs only dispense (deposits NaN). Branch counters take deposits and pay out;
  merchants' takings make deposits exceed withdrawals (net deposits: the carrier mostly *picks up*).
  Recyclers do both and re-dispense what was deposited, so their net flow is small and noisy.
- Level. Mean daily withdrawals are lognormal across devices (ATMs ~60k-350k CNY/day), with a slow
  trend per device: most lose ~5 %/year to mobile payment, a few grow.
- Location type sets the weekly cycle: office-district ATMs go quiet at weekends, malls and
  transport hubs peak then; branches serve little on Sundays and take Monday's weekend takings.
- Calendar (from `features.holidays.holiday_table`, so China's make-up weekend workdays count as
  workdays and holiday weekdays as days off): month start/end lift; paydays (10th and 15th, moved to
  the previous working day when they fall on a day off) lift withdrawals that day and the next.
- Holiday blocks (runs of days off containing a public holiday; strength grows with the length of
  the block, Spring Festival strongest): withdrawals surge over the 5 working days before a block,
  ramping up to the eve (red envelopes, travel money); during the block office and branch demand
  collapses while transport/tourist ATMs and malls rise; merchants' deposits surge right after.
- Noise is multiplicative: an AR(1) day-to-day component (busy spells last), daily scatter, and
  rare spikes (1.4-2.5x). Counts (n_withdrawals, n_deposits) follow the amounts through a per-device
  average ticket, so amount / count stays plausible (withdrawals are whole 100-CNY notes).
- Cash in the device is simulated with a simple cover rule on the carrier's visit weekdays, so the
  closing balances are consistent with the history. When demand outruns the cash, the device is
  *cash_out* from the moment it empties until an emergency visit the next day; device-side
  *offline* faults (a few hours, or 1-3 days) also stop service. Both are written to `status`; on
  those days the observed amount is only what was served (a censored lower bound, zero for a full
  day), while `true_demand` keeps the uncensored truth for evaluation. Status intervals start and
  end inside service hours (07:00-23:00, demand spread evenly), so every day they touch has lost
  demand.
- Some device-days are not recorded at all (single dropped days and multi-day feed gaps): no row,
  never zero. A few devices were installed during the history, one of them only 2-3 weeks ago
  (a cold start).
- Device master with carrier terms: capacity 7-20 days of mean demand (rounded to 10,000),
  visit_cost 600-1,500 CNY by region, emergency visits ~3x, holding_rate 3-6 %/year, mostly
  Mon-Fri visits (some Mon,Wed,Fri), lead time 1-2 days, loads in 10,000-CNY bundles (100 notes of
  100 CNY), service level 0.99; branches and recyclers have an insurance max_balance. One device
  name starts with "+" so CSV formula escaping gets exercised downstream.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from scipy.signal import lfilter

from cashcast.io import atomic_path
from cashcast.schema import BALANCE_COLUMNS, DEVICE_COLUMNS, STATUS_COLUMNS
from features.holidays import holiday_table

LOCATIONS = ("office", "residential", "mall", "transport", "branch")
# Mon..Sun withdrawal multipliers per location type (normalised per device to mean 1).
WEEKLY = np.array(
    [
        [1.12, 1.08, 1.08, 1.10, 1.22, 0.55, 0.45],  # office district: quiet weekends
        [0.95, 0.92, 0.93, 0.97, 1.10, 1.12, 1.00],  # residential
        [0.80, 0.78, 0.80, 0.88, 1.10, 1.40, 1.30],  # mall: weekend peak
        [0.95, 0.90, 0.90, 0.95, 1.25, 1.10, 1.10],  # transport hub / tourist spot
        [1.25, 1.05, 1.00, 1.00, 1.15, 0.45, 0.30],  # branch counter: little Sunday service
    ]
)
DEPOSIT_WEEKLY_BRANCH = np.array([1.35, 1.05, 1.00, 1.00, 1.05, 0.55, 0.35])  # Monday: weekend takings
PRE_HOLIDAY_GAIN = np.array([0.60, 0.70, 0.50, 0.45, 0.80])  # at full block strength, on the eve
IN_HOLIDAY_EFFECT = np.array([-0.35, -0.20, 0.15, 0.60, -0.60])  # during the block
PAYDAY_GAIN = np.array([0.25, 0.30, 0.15, 0.10, 0.30])
MONTH_EDGE_GAIN = 0.10  # first two and last two days of the month
PRE_HOLIDAY_RAMP = np.array([1.0, 0.85, 0.65, 0.40, 0.20])  # k-th working day before the block
MAKE_UP_WORKDAY, DAY_OFF = 2, 6  # weekly-profile rows used for swapped days (a Wednesday, a Sunday)
REGIONS = ("Huangpu", "Jing'an", "Xuhui", "Pudong", "Minhang", "Baoshan", "Jiading", "Songjiang")
REGION_VISIT_COST = np.linspace(700.0, 1300.0, len(REGIONS))  # outer districts cost more to reach
LOAD_MULTIPLE = 10_000.0
SERVICE_OPEN_H, SERVICE_HOURS = 7.0, 16.0
ID_PREFIX = {"atm": ("ATM", 5), "branch": ("BR", 4), "recycler": ("RC", 4)}
SAMPLE_START, SAMPLE_DAYS = "2024-11-01", 730
AR_SD, AR_PHI = 0.10, 0.6  # the day-to-day AR(1) part of the log-noise: busy spells last
SPIKE_RATE, SPIKE_GAIN = 0.006, (1.4, 2.5)  # rare busy days: their rate and range of multipliers


@dataclass
class SyntheticNetwork:
    """Observed inputs (daily, devices, balances, status) plus the truth behind them."""

    daily: pd.DataFrame  # the daily contract as the bank would record it (censored, gaps)
    true_demand: pd.DataFrame  # device_id, date, withdrawals, deposits: uncensored, every installed day
    devices: pd.DataFrame  # device master, CONTRACT.md columns
    balances: pd.DataFrame  # device_id, as_of, balance: the morning after the last day
    status: pd.DataFrame  # device_id, start, end, state: cash_out / offline intervals
    profiles: pd.DataFrame  # device_id, location, installed: hidden traits, for evaluation
    law: dict[str, DemandLaw] | None = None  # "withdrawals" / "deposits": the draws' law (keep_law=True)


@dataclass
class DemandLaw:
    """The law one flow (withdrawals or deposits) was drawn from: what a forecaster that knew the
    generator would know on the morning of any day. Sampling it gives the best forecast paths there
    can be, the yardstick for the real forecaster and the limit of the replenishment policy.

    Daily demand = mean x exp(AR(1) state + scatter - variance / 2) x a rare spike.
    """

    device_ids: np.ndarray  # (n,) str
    start: pd.Timestamp  # the date of column 0
    mean: np.ndarray  # (n, days) noise-free level: base x weekly x calendar lift x trend (0 before install)
    ar_state: np.ndarray  # (n, days) the AR(1) part of the log-noise as drawn
    scatter_sd: np.ndarray  # (n,) sd of the independent daily part of the log-noise

    def sample_paths(self, as_of: pd.Timestamp, horizon: int, n_paths: int, rng: np.random.Generator) -> np.ndarray:
        """(n, n_paths, horizon) demand paths from `as_of` on, given everything drawn before it;
        NaN past the generated days (the law of those days' calendar was never built)."""
        first = (pd.Timestamp(as_of) - self.start).days
        if first < 1:
            raise ValueError(
                f"as_of {as_of:%Y-%m-%d} leaves no drawn day before it (the law starts {self.start:%Y-%m-%d})"
            )
        n, days = self.mean.shape
        state = np.repeat(self.ar_state[:, first - 1, None].astype("float64"), n_paths, axis=1)
        sd = self.scatter_sd[:, None]
        paths = np.full((n, n_paths, horizon), np.nan)
        for k, t in enumerate(range(first, min(first + horizon, days))):
            state = AR_PHI * state + AR_SD * math.sqrt(1 - AR_PHI**2) * rng.standard_normal(state.shape)
            log_noise = state + sd * rng.standard_normal(state.shape) - (AR_SD**2 + sd**2) / 2
            paths[:, :, k] = _with_spikes(self.mean[:, t, None] * np.exp(log_noise), rng)
        return paths


def _served_share(hour: np.ndarray) -> np.ndarray:
    """Share of a day's demand that falls before `hour` (demand spread evenly over service hours)."""
    return np.clip((hour - SERVICE_OPEN_H) / SERVICE_HOURS, 0.0, 1.0)


def _holiday_calendar(dates: pd.DatetimeIndex, country: str, subdivision: str, paydays: tuple[int, ...]) -> dict:
    """Per-day calendar drivers shared by all devices of one country."""
    margin = pd.Timedelta(days=20)  # see blocks and paydays that straddle the window edges
    table = holiday_table(country, subdivision, dates[0] - margin, dates[-1] + margin)
    working = table["is_working_day"].to_numpy(bool)
    names = table["holiday_name"].astype(str).to_numpy()
    is_holiday = table["is_holiday"].to_numpy(bool)
    day = table["date"]
    weekday = day.dt.day_of_week.to_numpy()
    n = len(table)

    # Runs of consecutive days off; a run holding a public holiday is a holiday block.
    off = ~working
    run_id = np.cumsum(np.r_[True, off[1:] != off[:-1]])
    pre, in_block, post = np.zeros(n), np.zeros(n), np.zeros(n)
    working_idx = np.flatnonzero(working)
    for rid in np.unique(run_id[off]):
        members = np.flatnonzero(run_id == rid)
        if not is_holiday[members].any():
            continue
        strength = np.clip((len(members) - 2) / 6.0, 0.0, 1.0)
        if any("Spring Festival" in names[i] for i in members):
            strength *= 1.5
        if strength == 0:
            continue
        in_block[members] = strength
        before = working_idx[working_idx < members[0]][::-1][: len(PRE_HOLIDAY_RAMP)]
        pre[before] = np.maximum(pre[before], strength * PRE_HOLIDAY_RAMP[: len(before)])
        after = working_idx[working_idx > members[-1]][:2]
        post[after] = np.maximum(post[after], strength)

    payday = np.zeros(n)
    for period in day.dt.to_period("M").drop_duplicates():
        for dom in paydays:
            target = pd.Timestamp(year=period.year, month=period.month, day=min(dom, period.days_in_month))
            i = int((target - day.iloc[0]).days)
            while 0 <= i < n and not working[i]:
                i -= 1
            if 0 <= i < n - 1:
                payday[i] = 1.0
                payday[i + 1] = max(payday[i + 1], 0.5)
    dom = day.dt.day.to_numpy()
    month_edge = ((dom <= 2) | (dom >= day.dt.days_in_month.to_numpy() - 1)).astype(float)

    weekday_type = weekday.copy()
    weekday_type[working & (weekday >= 5)] = MAKE_UP_WORKDAY
    weekday_type[~working & (weekday < 5)] = DAY_OFF
    keep = slice(margin.days, margin.days + len(dates))
    return {
        "working": working[keep],
        "weekday": weekday[keep],
        "weekday_type": weekday_type[keep],
        "pre": pre[keep],
        "in_block": in_block[keep],
        "post": post[keep],
        "payday": payday[keep],
        "month_edge": month_edge[keep],
    }


def _device_ids(kinds: np.ndarray) -> np.ndarray:
    ids = np.empty(len(kinds), dtype=object)
    for kind, (prefix, width) in ID_PREFIX.items():
        where = np.flatnonzero(kinds == kind)
        ids[where] = [f"{prefix}-{k + 1:0{width}d}" for k in range(len(where))]
    return ids


def _calendar_lift(calendar: dict, gains: dict) -> np.ndarray:
    """Calendar multiplier per location type and day (locations x days): paydays, month edges,
    pre-holiday surge, holiday block, post-holiday."""
    lift = (1 + gains["payday"][:, None] * calendar["payday"][None, :]) * (
        1 + MONTH_EDGE_GAIN * calendar["month_edge"][None, :]
    )
    lift *= 1 + gains["pre"][:, None] * calendar["pre"][None, :]
    lift *= np.maximum(0.15, 1 + gains["in"][:, None] * calendar["in_block"][None, :])
    lift *= 1 + gains["post"][:, None] * calendar["post"][None, :]
    return lift.astype(np.float32)


def _demand(
    rng: np.random.Generator,
    base: np.ndarray,
    weekly: np.ndarray,
    lift: np.ndarray,
    trend: np.ndarray,
    calendar: dict,
    keep_law: bool = False,
) -> tuple[np.ndarray, dict | None]:
    """Daily demand (devices x days) = level x weekly x calendar lift x trend x noise, in float32;
    with keep_law, also the DemandLaw parts (mean, ar_state, scatter_sd) it was drawn from."""
    n, days = lift.shape
    exponent = rng.standard_normal((n, days), dtype=np.float32)
    exponent *= AR_SD * math.sqrt(1 - AR_PHI**2)
    exponent = lfilter([1.0], [1.0, -AR_PHI], exponent, axis=1).astype(np.float32)
    law = {"ar_state": exponent.copy()} if keep_law else None
    scatter_sd = rng.uniform(0.10, 0.22, n).astype(np.float32)[:, None]
    exponent += scatter_sd * rng.standard_normal((n, days), dtype=np.float32)
    exponent += (-(AR_SD**2 + scatter_sd**2) / 2).astype(np.float32)
    drift = np.outer(trend, np.arange(days) / 365.25)
    exponent += drift.astype(np.float32)
    level = np.exp(exponent, out=exponent)
    level *= weekly.astype(np.float32)[:, calendar["weekday_type"]]
    level *= lift
    level *= base.astype(np.float32)[:, None]
    if law is not None:
        law["scatter_sd"] = scatter_sd[:, 0].astype("float64")
        law["mean"] = weekly[:, calendar["weekday_type"]] * lift * base[:, None] * np.exp(drift)
    return _with_spikes(level, rng), law


def _with_spikes(level: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`level` with rare busy days (SPIKE_RATE of them, times SPIKE_GAIN), in place, in its own float type."""
    spikes = rng.random(level.shape, dtype=level.dtype) < SPIKE_RATE
    level[spikes] *= rng.uniform(*SPIKE_GAIN, int(spikes.sum())).astype(level.dtype)
    return level


def _profiles(rng: np.random.Generator, n_atms: int, n_branches: int, n_recyclers: int) -> pd.DataFrame:
    """Hidden per-device traits: kind, location type, demand level, ticket sizes, trend."""
    kinds = np.array(["atm"] * n_atms + ["branch"] * n_branches + ["recycler"] * n_recyclers, dtype=object)
    n = len(kinds)
    location = np.where(kinds == "branch", 4, rng.choice(4, size=n, p=[0.30, 0.35, 0.20, 0.15]))  # index into LOCATIONS
    median_w = np.select([kinds == "atm", kinds == "branch"], [150_000.0, 250_000.0], 180_000.0)
    mean_w = median_w * rng.lognormal(0.0, 0.45, n)
    deposit_ratio = np.select(
        [kinds == "branch", kinds == "recycler"],
        [np.maximum(1.1, rng.lognormal(np.log(1.35), 0.15, n)), rng.lognormal(np.log(0.85), 0.15, n)],
        0.0,
    )
    return pd.DataFrame(
        {
            "kind": kinds,
            "location": location,
            "mean_withdrawals": mean_w,
            "mean_deposits": mean_w * deposit_ratio,
            "withdrawal_ticket": rng.lognormal(np.log(700.0), 0.25, n),
            "deposit_ticket": np.where(kinds == "branch", 5000.0, 1500.0) * rng.lognormal(0.0, 0.3, n),
            "trend": rng.normal(-0.05, 0.06, n),
        }
    )


def _true_flows(
    rng: np.random.Generator, prof: pd.DataFrame, calendar: dict, days: int, keep_law: bool = False
) -> tuple[np.ndarray, np.ndarray, dict | None, dict | None]:
    """Uncensored withdrawals (whole 100-CNY notes) and deposits (whole 10 CNY), devices x days; with
    keep_law, the law parts of each (the deposits' for the deposit takers only)."""
    n = len(prof)
    loc = prof["location"].to_numpy()
    weekly = WEEKLY[loc] * np.exp(rng.normal(0.0, 0.04, (n, 7)))
    weekly /= weekly.mean(axis=1, keepdims=True)
    trend = prof["trend"].to_numpy()
    gains = {"payday": PAYDAY_GAIN, "pre": PRE_HOLIDAY_GAIN, "in": IN_HOLIDAY_EFFECT, "post": np.full(5, 0.10)}
    lift = _calendar_lift(calendar, gains)[loc]
    withdrawals, withdrawal_law = _demand(
        rng, prof["mean_withdrawals"].to_numpy(), weekly, lift, trend, calendar, keep_law
    )
    del lift
    deposits = np.zeros((n, days))
    takers = np.flatnonzero((prof["kind"] != "atm").to_numpy())
    deposit_weekly = np.where(loc[takers, None] == 4, DEPOSIT_WEEKLY_BRANCH, weekly[takers])
    deposit_weekly /= deposit_weekly.mean(axis=1, keepdims=True)
    deposit_gains = {
        "payday": np.zeros(5),
        "pre": np.full(5, 0.20),
        "in": np.r_[IN_HOLIDAY_EFFECT[:4], -0.75],
        "post": np.full(5, 0.50),  # merchants bank their holiday takings
    }
    deposit_lift = _calendar_lift(calendar, deposit_gains)[loc[takers]]
    deposits[takers], deposit_law = _demand(
        rng, prof["mean_deposits"].to_numpy()[takers], deposit_weekly, deposit_lift, trend[takers], calendar, keep_law
    )
    withdrawals = (np.round(withdrawals / 100) * 100).astype(np.float64)
    return withdrawals, np.round(deposits / 10.0) * 10.0, withdrawal_law, deposit_law


def _installed(rng: np.random.Generator, kinds: np.ndarray, days: int) -> np.ndarray:
    """First day with history: most devices predate the window, ~3 % were installed during it,
    and one ATM is a cold start with 14-21 days of history."""
    n = len(kinds)
    installed = np.zeros(n, dtype=np.int64)
    mid = rng.random(n) < 0.03
    installed[mid] = rng.integers(days // 5, 4 * days // 5, int(mid.sum()))
    atms = np.flatnonzero(kinds == "atm")
    if len(atms) > 2 and days > 60:
        installed[atms[-1]] = days - int(rng.integers(14, 22))
    return installed


def _offline_intervals(
    rng: np.random.Generator, installed: np.ndarray, days: int, outage_rate: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Device faults (device index, start, end in fractional days): a few hours, or 1-3 days.

    Starts and ends fall inside service hours; overlapping faults of one device are dropped.
    """
    n = len(installed)
    starts = (rng.random((n, days)) < outage_rate) & (np.arange(days)[None, :] >= installed[:, None])
    device, day = np.nonzero(starts)
    m = len(device)
    start_h = rng.uniform(SERVICE_OPEN_H + 0.5, 21.0, m)
    long_fault = rng.random(m) < 0.25
    short_h = np.minimum(rng.lognormal(np.log(3.0), 0.6, m), 22.5 - start_h)
    end = np.where(
        long_fault,
        day + rng.integers(1, 4, m) + rng.uniform(8.0, 20.0, m) / 24.0,
        day + (start_h + np.maximum(short_h, 0.25)) / 24.0,
    )
    start = day + start_h / 24.0
    end = np.minimum(end, float(days))
    key_span = days + 10.0  # device-major keys: a running max never leaks across devices
    previous_end = np.maximum.accumulate(device * key_span + end)
    previous_end = np.r_[-np.inf, previous_end[:-1]]
    keep = device * key_span + start > previous_end
    return device[keep], start[keep], end[keep]


def _interval_loss(device: np.ndarray, start: np.ndarray, end: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Share of each device-day's demand that falls inside the given intervals."""
    loss = np.zeros((shape[0], shape[1] + 5))
    span = (np.ceil(end) - np.floor(start)).astype(np.int64)
    rep = np.repeat(np.arange(len(device)), span)
    offset = np.arange(len(rep)) - np.repeat(np.cumsum(span) - span, span)
    day = np.floor(start[rep]).astype(np.int64) + offset
    a = np.clip((start[rep] - day) * 24.0, 0.0, 24.0)
    b = np.clip((end[rep] - day) * 24.0, 0.0, 24.0)
    np.add.at(loss, (device[rep], day), _served_share(b) - _served_share(a))
    return np.clip(loss[:, : shape[1]], 0.0, 1.0)


def _device_master(
    rng: np.random.Generator,
    prof: pd.DataFrame,
    ids: np.ndarray,
    true_w: np.ndarray,
    true_d: np.ndarray,
    active: np.ndarray,
    country: str,
    subdivision: str,
) -> pd.DataFrame:
    """Carrier terms per device, sized on each device's realised mean demand."""
    n = len(prof)
    kinds = prof["kind"].to_numpy()
    observed_days = np.maximum(active.sum(axis=1), 1)
    mean_w = true_w.sum(axis=1) / observed_days
    mean_d = true_d.sum(axis=1) / observed_days

    def bundles(x: np.ndarray) -> np.ndarray:
        return np.maximum(LOAD_MULTIPLE, np.round(x / LOAD_MULTIPLE) * LOAD_MULTIPLE)

    is_atm, is_branch = kinds == "atm", kinds == "branch"
    flow = np.maximum(mean_w, mean_d)
    capacity = bundles(
        np.select(
            [is_atm, is_branch],
            [rng.uniform(7, 20, n) * mean_w, rng.uniform(15, 30, n) * flow],
            rng.uniform(7, 14, n) * flow,
        )
    )
    max_balance = np.select(
        [is_atm, is_branch], [capacity, bundles(capacity * rng.uniform(0.5, 0.7, n))], bundles(capacity * 0.8)
    )
    min_balance = np.select([is_branch], [bundles(rng.uniform(1.0, 2.0, n) * mean_w)], 0.0)
    region = rng.integers(0, len(REGIONS), n)
    visit_cost = np.round(np.clip(REGION_VISIT_COST[region] * rng.uniform(0.85, 1.15, n), 600, 1500), -1)
    weekdays = np.where(~is_branch & (rng.random(n) < 0.25), "Mon,Wed,Fri", "Mon,Tue,Wed,Thu,Fri")
    label = np.array(["Office Tower", "Residential", "Mall", "Metro Hall", "Sub-branch"])[prof["location"]]
    kind_label = np.select([is_atm, is_branch], ["ATM", "Counter"], "Recycler")
    names = np.array(
        [
            f"{REGIONS[r]} {lab} {kl} {i + 1}"
            for i, (r, lab, kl) in enumerate(zip(region, label, kind_label, strict=True))
        ],
        dtype=object,
    )
    if n > 1:
        names[1] = "+1F " + names[1]  # floor labels like "+1F" are formulas to a spreadsheet
    return pd.DataFrame(
        {
            "device_id": ids,
            "kind": kinds,
            "capacity": capacity,
            "min_balance": min_balance,
            "max_balance": max_balance,
            "visit_cost": visit_cost,
            "emergency_visit_cost": np.round(visit_cost * rng.uniform(2.7, 3.3, n), -1),
            "holding_rate": np.round(rng.uniform(0.03, 0.06, n), 3),
            "visit_weekdays": weekdays,
            "lead_time_days": np.where(rng.random(n) < 0.75, 1, 2),
            "load_multiple": LOAD_MULTIPLE,
            "service_level": 0.99,
            "country": country,
            "subdivision": subdivision,
            "region": np.array(REGIONS, dtype=object)[region],
            "name": names,
        }
    ).astype(
        {
            "device_id": "string",
            "kind": "string",
            "visit_weekdays": "string",
            "country": "string",
            "subdivision": "string",
            "region": "string",
            "name": "string",
        }
    )[DEVICE_COLUMNS]


def _simulate_cash(
    rng: np.random.Generator,
    master: pd.DataFrame,
    demand_w: np.ndarray,
    demand_d: np.ndarray,
    calendar: dict,
    installed: np.ndarray,
) -> dict:
    """Run each device's cash through the history under a cover rule on its visit weekdays.

    A planned visit comes when the cash will not cover the days to the next visit opportunity
    (with 30 % margin), or a branch/recycler will pass its max_balance; it resets the device to its
    target balance. Demand beyond the cash in the device is lost: a cash_out from the moment it
    empties until an emergency visit late next morning.
    """
    n, days = demand_w.shape
    kinds = master["kind"].to_numpy(object)
    capacity = master["capacity"].to_numpy(float)
    max_balance = master["max_balance"].to_numpy(float)
    min_balance = master["min_balance"].to_numpy(float)
    target = np.select(
        [kinds == "atm", kinds == "branch"],
        [capacity, np.round(0.4 * max_balance / LOAD_MULTIPLE) * LOAD_MULTIPLE],
        np.round(0.5 * (max_balance + min_balance) / LOAD_MULTIPLE) * LOAD_MULTIPLE,
    )
    day_index = np.arange(days)
    active = day_index[None, :] >= installed[:, None]
    n_active = np.maximum(active.sum(axis=1), 1)
    net_out = (demand_w.sum(axis=1) - demand_d.sum(axis=1)) / n_active
    visit_mask = np.zeros((n, 7), dtype=bool)
    for code, day_names in enumerate(("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")):
        visit_mask[:, code] = master["visit_weekdays"].str.contains(day_names).to_numpy(bool)
    # Day-major copies: the loop below walks days, so each day's devices sit together in memory.
    visit_ok = np.ascontiguousarray((visit_mask[:, calendar["weekday"]] & calendar["working"][None, :]).T)
    active = np.ascontiguousarray(active.T)
    demand_w, demand_d = np.ascontiguousarray(demand_w.T), np.ascontiguousarray(demand_d.T)
    # Days from t to the next visit opportunity after t (a week when the history ends first).
    next_ok = np.empty((days + 1, n), dtype=np.int64)
    next_ok[days] = days + 7
    for t in range(days - 1, -1, -1):
        next_ok[t] = np.where(visit_ok[t], t, next_ok[t + 1])
    gap = next_ok[1:] - day_index[:, None]

    balance = np.where(installed == 0, target, 0.0)
    pending = np.zeros(n, dtype=bool)
    served_w = np.zeros((days, n))
    served_d = np.zeros((days, n))
    out_device, out_start, out_end = [], [], []
    for t in range(days):
        margin = 1.3 * gap[t]
        planned = visit_ok[t] & (
            (balance < min_balance + margin * np.maximum(net_out, 0.0))
            | (balance + margin * np.maximum(-net_out, 0.0) > max_balance)
        )
        visit = active[t] & (pending | planned | (installed == t))
        balance = np.where(visit, target, balance)
        visit_hour = rng.uniform(9.0, 14.0, n)
        lost_waiting = np.where(pending, _served_share(visit_hour), 0.0)
        want_w = np.floor(demand_w[t] * (1 - lost_waiting) / 100.0) * 100.0
        got_d = np.floor(demand_d[t] * (1 - lost_waiting) / 10.0) * 10.0
        available = balance + got_d
        empty = want_w > available
        served_w[t] = np.where(empty, np.floor(available / 100.0) * 100.0, want_w)  # whole notes only
        served_d[t] = got_d
        balance = available - served_w[t]
        if pending.any():
            waited = np.flatnonzero(pending)
            out_end.append(t + visit_hour[waited] / 24.0)
        if empty.any():
            emptied = np.flatnonzero(empty)
            share = available[emptied] / want_w[emptied]
            opened = np.where(pending[emptied], visit_hour[emptied], SERVICE_OPEN_H)
            out_device.append(emptied)
            out_start.append(t + (opened + (SERVICE_OPEN_H + SERVICE_HOURS - opened) * share) / 24.0)
        pending = empty
    if pending.any():
        out_end.append(np.full(int(pending.sum()), float(days)))  # still out at the end of history
    return {
        "served_w": np.ascontiguousarray(served_w.T),
        "served_d": np.ascontiguousarray(served_d.T),
        "balance": balance,
        "cash_out": (
            np.concatenate(out_device) if out_device else np.empty(0, np.int64),
            np.concatenate(out_start) if out_start else np.empty(0),
            np.concatenate(out_end) if out_end else np.empty(0),
        ),
    }


def _counts(rng: np.random.Generator, amount: np.ndarray, ticket: np.ndarray, note: float) -> np.ndarray:
    """Transactions behind an amount: about amount / ticket, at least 1, at most one per note."""
    mean = amount / ticket
    n = np.round(mean + np.sqrt(mean) * rng.standard_normal(len(mean), dtype=np.float32))  # ~Poisson
    return np.where(amount > 0, np.clip(n, 1.0, np.floor(amount / note)), 0.0)


def _absent(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Not-recorded device-days: scattered single days plus a few multi-day feed gaps."""
    n, days = shape
    absent = rng.random(shape) < 0.003
    gap_device = np.flatnonzero(rng.random(n) < 0.15)
    gap_start = rng.integers(0, max(days - 7, 1), len(gap_device))
    gap_len = rng.integers(2, 7, len(gap_device))
    for offset in range(7):
        on = offset < gap_len
        absent[gap_device[on], np.minimum(gap_start[on] + offset, days - 1)] = True
    return absent


def _string_column(ids: np.ndarray, index: np.ndarray) -> pd.Series:
    """A `string` column of device ids repeated by index, built in Arrow (fast at millions of rows)."""
    taken = pa.array(ids.astype(str)).take(pa.array(index))
    return pd.Series(pd.array(taken, dtype="string"))


def _status_frame(ids: np.ndarray, dates: pd.DatetimeIndex, parts: list[tuple]) -> pd.DataFrame:
    frames = []
    origin = dates[0].to_datetime64()
    for state, (device, start, end) in parts:
        frames.append(
            pd.DataFrame(
                {
                    "device_id": _string_column(ids, device),
                    "start": origin + np.round(start * 1440).astype("timedelta64[m]"),
                    "end": origin + np.round(end * 1440).astype("timedelta64[m]"),
                    "state": pd.array([state] * len(device), dtype="string"),
                }
            )
        )
    status = pd.concat(frames, ignore_index=True)
    status["start"] = status["start"].astype("datetime64[ns]")
    status["end"] = status["end"].astype("datetime64[ns]")
    return status.sort_values(["device_id", "start"], ignore_index=True)[STATUS_COLUMNS]


def generate_network(
    n_atms: int = 20,
    n_branches: int = 6,
    n_recyclers: int = 4,
    start: str = "2024-11-01",
    days: int = 730,
    seed: int = 0,
    country: str = "CN",
    subdivision: str = "",
    outage_rate: float = 0.01,
    paydays: tuple[int, ...] = (10, 15),
    keep_law: bool = False,
) -> SyntheticNetwork:
    """Generate a seeded network of devices with history over `days` days from `start`; keep_law also
    returns the law the demand was drawn from (network.law: 12 more bytes per device-day, 24 for deposit takers)."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range(pd.Timestamp(start).normalize(), periods=days, freq="D")
    calendar = _holiday_calendar(dates, country, subdivision, paydays)
    prof = _profiles(rng, n_atms, n_branches, n_recyclers)
    kinds = prof["kind"].to_numpy()
    ids = _device_ids(kinds)
    n = len(ids)
    true_w, true_d, withdrawal_law, deposit_law = _true_flows(rng, prof, calendar, days, keep_law)
    installed = _installed(rng, kinds, days)
    active = np.arange(days)[None, :] >= installed[:, None]
    true_w[~active] = 0.0
    true_d[~active] = 0.0
    law = None
    if keep_law:
        takers = kinds != "atm"
        withdrawal_law["mean"][~active] = 0.0
        deposit_law["mean"][~active[takers]] = 0.0
        law = {
            "withdrawals": DemandLaw(ids.astype(str), dates[0], **withdrawal_law),
            "deposits": DemandLaw(ids[takers].astype(str), dates[0], **deposit_law),
        }
    master = _device_master(rng, prof, ids, true_w, true_d, active, country, subdivision)

    offline = _offline_intervals(rng, installed, days, outage_rate)
    offline_loss = _interval_loss(*offline, (n, days))
    demand_w = np.floor(true_w * (1 - offline_loss) / 100.0) * 100.0
    demand_d = np.floor(true_d * (1 - offline_loss) / 10.0) * 10.0
    cash = _simulate_cash(rng, master, demand_w, demand_d, calendar, installed)
    censored = (offline_loss > 0) | (_interval_loss(*cash["cash_out"], (n, days)) > 0)

    has_deposits = kinds != "atm"
    recorded = active & ~_absent(rng, (n, days))
    device, day = np.nonzero(recorded)
    served_w = cash["served_w"][recorded]
    served_d = np.where(has_deposits[device], cash["served_d"][recorded], np.nan)
    n_deposits = np.full(len(device), np.nan)
    with_deposits = np.flatnonzero(has_deposits[device])
    n_deposits[with_deposits] = _counts(
        rng, served_d[with_deposits], prof["deposit_ticket"].to_numpy()[device[with_deposits]], 10.0
    )
    # Built straight in the daily contract's dtypes and order (validate_daily would re-sort 7M rows).
    daily = pd.DataFrame(
        {
            "device_id": _string_column(ids, device),
            "date": dates.to_numpy("datetime64[ns]")[day],
            "withdrawals": served_w,
            "deposits": served_d,
            "n_withdrawals": _counts(rng, served_w, prof["withdrawal_ticket"].to_numpy()[device], 100.0),
            "n_deposits": n_deposits,
            "censored": censored[recorded],
        }
    )
    t_device, t_day = np.nonzero(active)
    true_demand = pd.DataFrame(
        {
            "device_id": _string_column(ids, t_device),
            "date": dates.to_numpy("datetime64[ns]")[t_day],
            "withdrawals": true_w[active],
            "deposits": np.where(has_deposits[t_device], true_d[active], np.nan),
        }
    )
    balances = pd.DataFrame(
        {
            "device_id": pd.array(ids.astype(str), dtype="string"),
            "as_of": np.full(n, (dates[-1] + pd.Timedelta(days=1)).to_datetime64().astype("datetime64[ns]")),
            "balance": np.round(cash["balance"]),
        }
    )[BALANCE_COLUMNS]
    status = _status_frame(ids, dates, [("cash_out", cash["cash_out"]), ("offline", offline)])
    profiles = pd.DataFrame(
        {
            "device_id": pd.array(ids.astype(str), dtype="string"),
            "location": pd.array(np.array(LOCATIONS, dtype=object)[prof["location"]], dtype="string"),
            "installed": dates.to_numpy("datetime64[ns]")[installed],
        }
    )
    return SyntheticNetwork(
        daily=daily,
        true_demand=true_demand,
        devices=master,
        balances=balances,
        status=status,
        profiles=profiles,
        law=law,
    )


def write_transactions_csv(
    path: str | Path,
    n_rows: int,
    seed: int = 0,
    n_devices: int = 1000,
    start: str = SAMPLE_START,
    with_duplicates: float = 0.001,
    chunk_rows: int = 1_000_000,
    span_days: int | None = None,
) -> Path:
    """Stream a raw transactions file (device_id, timestamp, amount, type, txn_id) in bounded memory.

    Rows are in time order (re-sent duplicates aside) over `span_days` (default: ~100 transactions per device
    and day) between 06:00 and 24:00 local time; withdrawals are whole 100-CNY notes, deposits (branches and recyclers
    only) whole 10 CNY. A share
    `with_duplicates` of rows re-sends an earlier row of the same chunk verbatim (same txn_id), as
    switch feeds do after a retry, for the ingest's de-duplication.
    """
    rng = np.random.default_rng(seed)
    n_branches = max(n_devices // 10, 1) if n_devices > 2 else 0
    n_recyclers = max(n_devices // 10, 1) if n_devices > 2 else 0
    kinds = np.array(
        ["atm"] * (n_devices - n_branches - n_recyclers) + ["branch"] * n_branches + ["recycler"] * n_recyclers,
        dtype=object,
    )
    ids = pa.array(_device_ids(kinds).astype(str))
    takes_deposits = kinds != "atm"
    span_days = span_days or max(1, math.ceil(n_rows / (100 * n_devices)))
    origin = np.datetime64(pd.Timestamp(start).normalize().to_datetime64(), "s")
    withdrawal_notes = np.array([1, 2, 3, 5, 10, 20, 30, 50])
    note_p = np.array([0.10, 0.15, 0.10, 0.20, 0.20, 0.15, 0.05, 0.05])
    path = Path(path)
    header = b"device_id,timestamp,amount,type,txn_id\n"
    options = pa_csv.WriteOptions(include_header=False, quoting_style="none")  # ids and codes hold no commas
    with atomic_path(path) as tmp, tmp.open("wb") as sink:
        sink.write(header)
        for first in range(0, n_rows, chunk_rows):
            size = min(chunk_rows, n_rows - first)
            # This chunk covers its share of the time span, so the whole file is in time order.
            lo, hi = first / n_rows * span_days, (first + size) / n_rows * span_days
            day_float = np.sort(rng.uniform(lo, hi, size))
            seconds = np.floor(day_float) * 86400 + 21600 + (day_float % 1.0) * 64800
            device = rng.integers(0, n_devices, size)
            deposit = takes_deposits[device] & (rng.random(size) < 0.45)
            amount = np.where(
                deposit,
                np.round(rng.lognormal(np.log(3000.0), 0.9, size), -1),
                100 * rng.choice(withdrawal_notes, size=size, p=note_p),
            ).astype(np.int64)
            txn = np.arange(first, first + size)
            dup = np.flatnonzero(rng.random(size) < with_duplicates)
            dup = dup[dup > 0]
            source = rng.integers(0, dup, len(dup)) if len(dup) else dup
            original = ~np.isin(source, dup)  # re-send rows that were themselves sent once
            dup, source = dup[original], source[original]
            for column in (seconds, device, deposit, amount, txn):
                column[dup] = column[source]
            table = pa.table(
                {
                    "device_id": ids.take(pa.array(device)),
                    "timestamp": pa.array(origin + seconds.astype("timedelta64[s]")),
                    "amount": amount,
                    "type": pa.array(np.where(deposit, "deposit", "withdrawal")),
                    "txn_id": _txn_ids(txn),
                }
            )
            pa_csv.write_csv(table, sink, options)
    return path


def _txn_ids(number: np.ndarray) -> pa.Array:
    """Switch reference numbers like T0000012345, formatted in Arrow."""
    digits = pc.utf8_lpad(pc.cast(pa.array(number), pa.string()), width=10, padding="0")
    return pc.binary_join_element_wise("T", digits, "")


def write_sample(out_dir: str | Path, seed: int = 0) -> list[Path]:
    """Write the shipped sample (30 devices, two years to 2026-10-31) as CSV files into `out_dir`.

    The files are the raw inputs a bank would hand over, so names are not formula-escaped here;
    escaping is the job of whatever writes CSV *for* spreadsheet users.
    """
    net = generate_network(n_atms=20, n_branches=6, n_recyclers=4, start=SAMPLE_START, days=SAMPLE_DAYS, seed=seed)
    out_dir = Path(out_dir)
    daily = net.daily.drop(columns="censored")  # the daily input has no censored flag: status carries it
    tables = {"daily.csv": daily, "devices.csv": net.devices, "balances.csv": net.balances, "status.csv": net.status}
    formats = {"daily.csv": "%Y-%m-%d", "balances.csv": "%Y-%m-%d", "status.csv": "%Y-%m-%d %H:%M"}
    written = []
    for name, frame in tables.items():
        with atomic_path(out_dir / name) as tmp:
            frame.to_csv(tmp, index=False, date_format=formats.get(name), float_format="%.15g", lineterminator="\n")
        written.append(out_dir / name)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the synthetic sample network as CSV files.")
    parser.add_argument("--out", default="data/sample", help="folder for daily/devices/balances/status.csv")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in write_sample(args.out, seed=args.seed):
        print(path)


if __name__ == "__main__":
    main()
