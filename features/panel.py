"""Dense device x day panels: the shape every forecasting model works on.

The daily contract is long and sparse; models want a matrix. `Panel.values[i, t]` is the demand of
device i on day `start + t`, NaN where the day was not recorded or censored (cash-out, offline):
such days are missing, never zero demand, so no model ever fits them. Days far below the device's
usual demand on that weekday (`outage_share`) are treated the same way: on an ATM a zero or near-zero
day is an outage or cash-out the status feed missed, not demand. Calendar features of the
device's own place (`features.calendar`) run `pad` days past the history so forecasts see the
holidays ahead.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cashcast.config import Config
from features.calendar import CALENDAR_COLUMNS, calendar_lookup, device_places

SEASON_DAYS = 7


@contextmanager
def quiet_nan() -> Iterator[None]:
    """All-missing rows are expected (new devices, gaps); their NaN results are handled, not warned about."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


OUTAGE_SHARE = 0.4  # a non-holiday day below this share of its weekday reference is an unflagged outage
MAX_OUTAGE_DAYS = 7  # low for longer up to the end of the history: demand has changed, kept
LASTING_LOW_SHARE = 0.8  # of the usual days since a spell began: a payday or a spike does not end it
# The reference: the larger mean of the same weekday over 4 and 13 weeks either side; the longer
# window still sees normal demand through a partial outage that lasts weeks.
OUTAGE_WEEKS = (4, 13)


def mask_outages(values: np.ndarray, holiday: np.ndarray, share: float = OUTAGE_SHARE) -> np.ndarray:
    """`values` with unflagged outages set to NaN: days below `share` x the same-weekday neighbours' mean,
    except in a spell of more than MAX_OUTAGE_DAYS low days still going on at the end of the history.

    Comparing with the same weekday keeps a branch's regular closed day (always zero) as demand; public
    holidays of the device's place (`holiday`, (n, T) bool) are never masked: a closed branch on a
    holiday is real, forecastable demand. A low spell that ended, however long (a repair, India's
    2016 demonetisation), says nothing of normal demand; one still going on after a week is the
    device's demand now (a closure nearby, a lost employer), and masking it would keep forecasting
    the old level for months.
    """
    n, t_end = values.shape
    out = values.copy()
    if share <= 0 or t_end == 0:
        return out
    low = np.zeros(values.shape, dtype=bool)
    for k in range(SEASON_DAYS):
        column = values[:, k::SEASON_DAYS]
        observed = np.isfinite(column)
        pad = np.zeros((n, 1))
        total = np.hstack([pad, np.cumsum(np.where(observed, column, 0.0), axis=1)])
        count = np.hstack([pad, np.cumsum(observed, axis=1)])
        weeks = np.arange(column.shape[1])
        own = np.where(observed, column, 0.0)
        reference = np.zeros_like(column)
        for radius in OUTAGE_WEEKS:
            lo = np.clip(weeks - radius, 0, None)
            hi = np.clip(weeks + radius + 1, None, column.shape[1])
            # Neighbours only: the day itself does not pull its own reference down.
            n_ref = count[:, hi] - count[:, lo] - observed
            with quiet_nan():
                mean = np.where(n_ref > 0, (total[:, hi] - total[:, lo] - own) / n_ref, np.nan)
            reference = np.fmax(reference, mean)
        low[:, k::SEASON_DAYS] = observed & (column < share * reference) & ~holiday[:, k::SEASON_DAYS]
    out[low & ~_lasting_low_spell(low, np.isfinite(values) & ~holiday)] = np.nan
    return out


def _lasting_low_spell(low: np.ndarray, usual: np.ndarray) -> np.ndarray:
    """(n, T) bool: the low days of a spell still going on at the end of the history that holds more than
    MAX_OUTAGE_DAYS low days. A spell starts on a low day from which on at least LASTING_LOW_SHARE of
    the `usual` days (recorded, not holidays) to the end are low: a payday or a spike does not end it."""
    low_after = np.cumsum(low[:, ::-1], axis=1)[:, ::-1]
    usual_after = np.cumsum(usual[:, ::-1], axis=1)[:, ::-1]
    starts = low & (low_after > MAX_OUTAGE_DAYS) & (low_after >= LASTING_LOW_SHARE * usual_after)
    return low & np.logical_or.accumulate(starts, axis=1)


@dataclass(frozen=True)
class Panel:
    """Demand matrix of some devices on consecutive days, with their calendars."""

    device_ids: np.ndarray  # (n,) str
    start: pd.Timestamp  # date of column 0
    values: np.ndarray  # (n, T) float64, NaN = missing; T ends the day before as_of
    calendar: np.ndarray  # (n_places, T + pad, len(CALENDAR_COLUMNS)) float32, features.calendar
    group: np.ndarray  # (n,) int, row of `calendar` for each device

    @property
    def n_days(self) -> int:
        return self.values.shape[1]

    @property
    def as_of(self) -> pd.Timestamp:
        return self.start + pd.Timedelta(days=self.n_days)

    def dates(self, first: int, count: int) -> pd.DatetimeIndex:
        return pd.date_range(self.start + pd.Timedelta(days=first), periods=count, freq="D")

    def truncated(self, end: int) -> Panel:
        """The panel as it was known on the morning of day `end` (columns < end)."""
        return Panel(self.device_ids, self.start, self.values[:, :end], self.calendar, self.group)

    def subset(self, rows: np.ndarray) -> Panel:
        return Panel(self.device_ids[rows], self.start, self.values[rows], self.calendar, self.group[rows])

    def samples_ahead(self, rows: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(device row, origin column, horizon) of each day 1..horizon past the panel's end, device by device."""
        dev = np.repeat(rows, horizon)
        return dev, np.full(len(dev), self.n_days), np.tile(np.arange(1, horizon + 1), len(rows))

    def calendar_at(self, dev: np.ndarray, column: np.ndarray) -> np.ndarray:
        """The calendar rows (len(dev), len(CALENDAR_COLUMNS)) of device rows `dev` on day columns `column`."""
        return self.calendar[self.group[dev], np.minimum(column, self.calendar.shape[1] - 1)]


def build_panel(
    daily: pd.DataFrame,
    devices: pd.DataFrame | None,
    as_of: pd.Timestamp,
    config: Config,
    column: str = "withdrawals",
    pad: int = 120,
    device_ids: np.ndarray | None = None,
    events: pd.DataFrame | None = None,
    horizon: int | None = None,
) -> Panel:
    """Panel of `column` over the training window before `as_of` (history on/after as_of is ignored).

    `events` (a `features.load_events` frame) reach the calendar like holidays do. `horizon`: the days
    ahead that will be forecast (the calendar runs `pad` days; only those are warned about).

    Default rows: devices with history before as_of and devices of the master (no history: all NaN).
    """
    as_of = pd.Timestamp(as_of).normalize()
    first = as_of - pd.Timedelta(days=config.forecast.max_history_days)
    # Plain arrays, never a filtered copy of the table: 10,000 devices x 2 years is 7M rows.
    dates = daily["date"].to_numpy("datetime64[ns]")
    codes, names = pd.factorize(daily["device_id"])
    names = np.asarray(names, dtype=str)
    past = dates < as_of.to_datetime64()
    window = past & (dates >= first.to_datetime64())
    if device_ids is None:
        # Devices with history before as_of, plus master devices not yet recorded (they still need a plan).
        known = names[np.flatnonzero(np.bincount(codes[past], minlength=len(names)))]
        master = devices["device_id"].astype(str).to_numpy() if devices is not None and len(devices) else known[:0]
        device_ids = np.union1d(known, master.astype(str))
    device_ids = np.asarray(device_ids, dtype=object)
    start = pd.Timestamp(dates[window].min()) if window.any() else as_of - pd.Timedelta(days=28)
    n_days = max(int((as_of - start).days), 1)
    values = np.full((len(device_ids), n_days), np.nan)
    rows = pd.Index(device_ids).get_indexer(names)[codes[window]]
    cols = ((dates[window] - start.to_datetime64()) // np.timedelta64(1, "D")).astype(np.int64)
    demand = daily[column].to_numpy(float)[window]
    keep = (rows >= 0) & ~daily["censored"].to_numpy(bool)[window] & np.isfinite(demand) & (demand >= 0)
    values.ravel()[rows[keep] * n_days + cols[keep]] = demand[keep]  # flat: 2-D fancy indexing is 5x slower
    # The feature layer's calendars (holidays, blocks, paydays of each device's place), one per place.
    master = devices if devices is not None and len(devices) else pd.DataFrame({"device_id": []})
    places = device_places(master, config, device_ids=pd.Index(device_ids, dtype="string"))
    places = places.set_index("device_id").loc[pd.Index(device_ids, dtype="string")].reset_index()
    days = pd.date_range(start, periods=n_days + pad, freq="D", unit="ns")
    used_until = None if horizon is None else as_of + pd.Timedelta(days=horizon - 1)
    table, group = calendar_lookup(places, days, config, events, used_until)
    n_places = int(group.max()) + 1 if len(group) else 0
    calendar = table[CALENDAR_COLUMNS].to_numpy(np.float32).reshape(n_places, len(days), len(CALENDAR_COLUMNS))
    holiday = calendar[group, :n_days, CALENDAR_COLUMNS.index("is_holiday")] > 0
    share = config.forecast.outage_share
    return Panel(device_ids, start, mask_outages(values, holiday, share), calendar, group)
