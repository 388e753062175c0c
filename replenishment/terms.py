"""Device terms (the master with every gap filled) and the days each device may be visited.

The planner and the replay read one fully resolved row per device, so no downstream code ever has
to guess a default or handle an empty cell.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from cashcast.config import Config, parse_weekdays
from cashcast.schema import DEVICE_COLUMNS, DEVICE_NUMERIC_COLUMNS, DEVICE_TEXT_COLUMNS
from features.holidays import holiday_table

DEMAND_WINDOW_DAYS = 91


def recent_demand(daily: pd.DataFrame, window_days: int = DEMAND_WINDOW_DAYS) -> pd.DataFrame:
    """Per device: `mean_daily_demand` over its last `window_days` observed, uncensored days, and
    `last_observed`, the last of them (a device whose feed stopped shows here).

    On integer device codes: a network's whole history (10,000 devices x 2 years, 7M rows) takes
    under a second. Rows in the daily contract's order (device, then date) need no sort.
    """
    if daily is None or daily.empty:
        return pd.DataFrame(
            {"mean_daily_demand": pd.Series(dtype="float64"), "last_observed": pd.Series(dtype="datetime64[ns]")}
        )
    usable = daily["withdrawals"].notna().to_numpy(bool, copy=True)
    if "censored" in daily:
        usable &= ~daily["censored"].fillna(False).to_numpy(bool)
    codes, ids = pd.factorize(daily["device_id"].astype("string")[usable])
    dates = daily["date"].to_numpy("datetime64[ns]")[usable]
    amounts = daily["withdrawals"].to_numpy("float64")[usable]
    same = codes[1:] == codes[:-1]
    if (np.diff(codes) < 0).any() or (dates[1:][same] <= dates[:-1][same]).any():
        order = np.lexsort((dates, codes))
        codes, amounts, dates = codes[order], amounts[order], dates[order]
    ends = np.cumsum(np.bincount(codes, minlength=len(ids)))  # each device's last row, plus one
    recent = ends[codes] - np.arange(len(codes)) <= window_days
    total = np.bincount(codes[recent], weights=amounts[recent], minlength=len(ids))
    days = np.bincount(codes[recent], minlength=len(ids))
    index = pd.Index(np.asarray(ids, dtype=object).astype(str), dtype="string", name="device_id")
    return pd.DataFrame({"mean_daily_demand": total / days, "last_observed": dates[ends - 1]}, index=index)


def trailing_mean_demand(daily: pd.DataFrame, window_days: int = DEMAND_WINDOW_DAYS) -> pd.Series:
    """Mean daily withdrawals over each device's last `window_days` observed, uncensored days."""
    return recent_demand(daily, window_days)["mean_daily_demand"].rename("withdrawals")


def round_up_to_multiple(amount: np.ndarray | float, multiple: np.ndarray | float) -> np.ndarray:
    """Smallest whole number of `multiple` at or above `amount` (loads come in whole bundles)."""
    # The small tolerance keeps 300.0000001 (float noise) from becoming 400.
    return np.ceil(np.asarray(amount, dtype="float64") / multiple - 1e-9) * multiple


def resolve_terms(
    devices: pd.DataFrame | None, daily: pd.DataFrame, config: Config, typical: dict[str, float] | None = None
) -> pd.DataFrame:
    """One row per device in `devices` ∪ `daily`, every CONTRACT.md device field filled.

    Empty cells take `config.devices` (an emergency visit then costs at least the device's visit); an
    unknown capacity (0 or empty) becomes capacity_days x mean daily withdrawals (last 91 observed
    days) rounded up to the load multiple; an unknown max_balance becomes the capacity. Extra columns:
    `weekday_set` (tuple of allowed weekdays, Monday = 0), `mean_daily_demand`, `capacity_source` and
    `last_observed` (see recent_demand).
    """
    defaults = config.devices
    master = pd.DataFrame(columns=["device_id"]) if devices is None else devices.copy()
    master["device_id"] = master["device_id"].astype("string")
    known = set(master["device_id"].dropna())
    seen = [] if daily is None else daily["device_id"].dropna().unique()  # unique first: millions of rows
    extra_ids = sorted({str(device) for device in seen} - known)
    master = pd.concat([master, pd.DataFrame({"device_id": pd.array(extra_ids, dtype="string")})], ignore_index=True)
    terms = pd.DataFrame({"device_id": master["device_id"].to_numpy(dtype=object)})
    for column in DEVICE_NUMERIC_COLUMNS:
        default = float(getattr(defaults, column))
        values = pd.to_numeric(master[column], errors="coerce") if column in master else np.nan
        terms[column] = pd.Series(values, index=terms.index, dtype="float64").fillna(default)
    for column in DEVICE_TEXT_COLUMNS:
        default = str(getattr(defaults, column, "")) if column != "name" else ""
        values = master[column].astype("string") if column in master else pd.Series(pd.NA, index=terms.index)
        filled = values.fillna("").astype(str).str.strip().to_numpy(dtype=object)
        terms[column] = np.where(filled == "", default, filled).astype(object)
    free = terms.loc[terms["visit_cost"] <= 0, "device_id"].tolist()
    if free:  # ingest rejects these; a device frame handed in directly is checked here
        raise ValueError(f"visit_cost must be above 0 (stockouts are priced in visits) for device(s) {free[:5]}")
    # A master's visit_cost above the config's emergency default: an unplanned visit costs at least a planned one.
    terms["emergency_visit_cost"] = np.maximum(terms["emergency_visit_cost"], terms["visit_cost"])
    terms["name"] = np.where(terms["name"] == "", terms["device_id"], terms["name"]).astype(object)
    terms["kind"] = terms["kind"].str.lower()
    terms["lead_time_days"] = terms["lead_time_days"].round().astype(int)
    terms["weekday_set"] = [parse_weekdays(text) for text in terms["visit_weekdays"]]

    recent = recent_demand(daily).reindex(pd.Index(terms["device_id"], dtype="string"))
    terms["mean_daily_demand"] = recent["mean_daily_demand"].fillna(0.0).to_numpy(dtype="float64")
    terms["last_observed"] = recent["last_observed"].to_numpy(dtype="datetime64[ns]")
    unknown = terms["capacity"] <= 0
    # A device with no recorded day yet is forecast at the network's typical day: its cassette is sized on the
    # typical device of its kind too (it was one bundle, so the plan loaded one bundle every allowed day).
    unrecorded = pd.isna(terms["last_observed"]).to_numpy()
    typical = typical_demand(terms) if typical is None else typical
    of_kind = terms["kind"].isin([kind for kind in typical if kind]).to_numpy()
    like = terms["kind"].map(typical).fillna(typical.get("", 0.0)).to_numpy(dtype="float64")
    basis = np.where(unrecorded, like, terms["mean_daily_demand"])
    derived = round_up_to_multiple(defaults.capacity_days * basis, terms["load_multiple"])
    # A device with no demand at all still needs a cassette: one bundle keeps the arithmetic sane.
    derived = np.maximum(derived, terms["load_multiple"].to_numpy())
    days = f"{defaults.capacity_days:g} x"
    terms["capacity_source"] = np.select(
        [~unknown, unrecorded & (like > 0), basis > 0],
        [
            "master",
            f"no history: {days} the typical "
            + np.where(of_kind, terms["kind"], "recorded device")
            + "'s mean daily demand",
            f"{days} mean daily demand",
        ],
        "no history",
    )
    terms["capacity"] = np.where(unknown, derived, terms["capacity"])
    terms["max_balance"] = np.where(terms["max_balance"] <= 0, terms["capacity"], terms["max_balance"])
    extra = ["weekday_set", "mean_daily_demand", "capacity_source", "last_observed"]
    columns = [c for c in DEVICE_COLUMNS if c in terms] + extra
    return terms[columns].drop_duplicates("device_id").reset_index(drop=True)


def typical_devices(terms: pd.DataFrame) -> dict[str, str]:
    """The typical recorded device of `terms` (resolved) per kind, and under "" over all kinds: of the devices still
    reporting, the one whose mean daily demand is the median (the lower of two middle ones). A device with no
    recorded day yet is forecast as its kind's (deposits included: a new branch is no median of ATMs) and sized
    on its mean daily demand. The nightly run takes them from the whole network, so a new device does not
    depend on the chunk it lands in."""
    seen = terms["last_observed"]
    # Only devices still reporting (within a demand window of the newest record): a branch closed in 2022 is
    # nobody's twin, and the forecaster no longer sees its history.
    active = seen.notna() & (seen >= seen.max() - pd.Timedelta(days=DEMAND_WINDOW_DAYS))
    recorded = terms[active].sort_values(["mean_daily_demand", "device_id"], kind="stable")

    def middle(devices: pd.DataFrame) -> str:
        return str(devices["device_id"].iloc[(len(devices) - 1) // 2])

    typical = {"": middle(recorded)} if len(recorded) else {}
    typical.update({str(kind): middle(devices) for kind, devices in recorded.groupby("kind", sort=False)})
    return typical


def typical_demand(terms: pd.DataFrame) -> dict[str, float]:
    """The mean daily demand of each kind's typical device (`typical_devices`): what a device with no recorded day
    yet is sized on."""
    demand = terms.set_index(terms["device_id"].astype(str))["mean_daily_demand"]
    typical = {kind: float(demand.loc[device]) for kind, device in typical_devices(terms).items()}
    return typical if "" in typical else {"": 0.0, **typical}


def new_device_twins(terms: pd.DataFrame) -> dict[str, str]:
    """Each device of `terms` with no recorded day yet -> the typical device (`typical_devices`) of its kind, else
    of the network."""
    typical = typical_devices(terms)
    new = terms[terms["last_observed"].isna()]
    pairs = zip(new["device_id"].astype(str), new["kind"].astype(str), strict=True)
    twins = {device: typical.get(kind, typical.get("")) for device, kind in pairs}
    return {device: twin for device, twin in twins.items() if twin is not None}


def device_holidays(terms: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """Public holidays per device in [start, end]: device_id, date, holiday_name.

    One `holiday_table` call per distinct country/subdivision; an unknown country yields no
    holidays and a Python warning rather than a failed plan.
    """
    parts = []
    for (country, subdivision), group in terms.groupby(["country", "subdivision"], sort=False):
        try:
            table = holiday_table(country, subdivision, start, end)
        except (NotImplementedError, KeyError, ValueError) as exc:
            warnings.warn(f"no holiday calendar for {country}/{subdivision or '-'}: {exc}", stacklevel=2)
            continue
        table = table[table["is_holiday"]]
        parts.append(
            pd.DataFrame(
                {
                    "device_id": np.repeat(group["device_id"].to_numpy(dtype=object), len(table)),
                    "date": np.tile(table["date"].to_numpy(), len(group)),
                    "holiday_name": np.tile(table["holiday_name"].to_numpy(dtype=object), len(group)),
                }
            )
        )
    if not parts:
        return pd.DataFrame({"device_id": [], "date": pd.to_datetime([]), "holiday_name": []})
    return pd.concat(parts, ignore_index=True)


def holiday_matrix(
    device_ids: np.ndarray, dates: pd.DatetimeIndex, holidays: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray]:
    """(is_holiday bool (n, H), holiday_name object (n, H)) aligned to devices and dates."""
    is_holiday = np.zeros((len(device_ids), len(dates)), dtype=bool)
    names = np.full(is_holiday.shape, "", dtype=object)
    if holidays is None or holidays.empty:
        return is_holiday, names
    row = pd.Index(device_ids).get_indexer(holidays["device_id"].astype(str))
    col = dates.get_indexer(pd.DatetimeIndex(pd.to_datetime(holidays["date"])).normalize())
    keep = (row >= 0) & (col >= 0)
    is_holiday[row[keep], col[keep]] = True
    if "holiday_name" in holidays:
        label = holidays["holiday_name"].fillna("holiday").astype(str).to_numpy(dtype=object)
    else:
        label = np.full(len(holidays), "holiday", dtype=object)
    names[row[keep], col[keep]] = label[keep]
    return is_holiday, names


def allowed_visit_days(
    terms: pd.DataFrame,
    dates: pd.DatetimeIndex,
    is_holiday: np.ndarray,
    allow_holidays: bool,
    deadlines: np.ndarray | None = None,
) -> np.ndarray:
    """bool (n, H): a routine visit may happen on this device-day.

    Allowed = one of the device's visit weekdays, not a public holiday (unless allowed), and, with
    `deadlines` (see `order_deadlines`), a day whose order can still be placed on or after dates[0].
    """
    codes, sets = pd.factorize(terms["weekday_set"])
    weekdays = np.asarray(dates.day_of_week)
    by_set = np.array([np.isin(weekdays, list(days)) for days in sets], dtype=bool).reshape(len(sets), len(dates))
    allowed = by_set[codes] & (allow_holidays | ~is_holiday)
    return allowed if deadlines is None else allowed & (deadlines >= 0)


def order_deadlines(
    dates: pd.DatetimeIndex, lead: np.ndarray, order_weekdays: str, closed: np.ndarray | None = None
) -> np.ndarray:
    """int (n, H): for a visit on each day, the index of the day its order is due: the last of the
    carrier's `order_weekdays` (empty: any day) at least `lead` days before it; -1 when that is
    before dates[0], the morning of planning (the visit can no longer be ordered). A carrier that takes
    orders on set weekdays keeps the device's public holidays too (`closed`, bool (n, H)): a Monday visit
    after Boxing Day on a Friday is ordered on Christmas Eve."""
    lead = np.asarray(lead, dtype=int)
    days = np.arange(len(dates))
    last_order_day = np.broadcast_to(days, (len(lead), len(dates)))
    if order_weekdays.strip():
        takes_orders = np.isin(np.asarray(dates.day_of_week), parse_weekdays(order_weekdays))[None, :]
        if closed is not None:
            takes_orders = takes_orders & ~closed
        takes_orders = np.broadcast_to(takes_orders, last_order_day.shape)
        last_order_day = np.maximum.accumulate(np.where(takes_orders, days, -1), axis=1)
    due = days[None, :] - lead[:, None]
    return np.where(due >= 0, np.take_along_axis(last_order_day, np.clip(due, 0, None), axis=1), -1)
