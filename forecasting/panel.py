"""Dense device x day panels: the shape every forecasting model works on.

The daily contract is long and sparse; models want a matrix. `Panel.values[i, t]` is the demand of
device i on day `start + t`, NaN where the day was not recorded or censored (cash-out, offline):
such days are missing, never zero demand, so no model ever fits them. Calendar features of the
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


@contextmanager
def quiet_nan() -> Iterator[None]:
    """All-missing rows are expected (new devices, gaps); their NaN results are handled, not warned about."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


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


def build_panel(
    daily: pd.DataFrame,
    devices: pd.DataFrame | None,
    as_of: pd.Timestamp,
    config: Config,
    column: str = "withdrawals",
    pad: int = 120,
    device_ids: np.ndarray | None = None,
) -> Panel:
    """Panel of `column` over the training window before `as_of` (history on/after as_of is ignored).

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
        known = names[np.unique(codes[past])]
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
    values[rows[keep], cols[keep]] = demand[keep]
    # The feature layer's calendars (holidays, blocks, paydays of each device's place), one per place.
    master = devices if devices is not None and len(devices) else pd.DataFrame({"device_id": []})
    places = device_places(master, config, device_ids=pd.Index(device_ids, dtype="string"))
    places = places.set_index("device_id").loc[pd.Index(device_ids, dtype="string")].reset_index()
    days = pd.date_range(start, periods=n_days + pad, freq="D", unit="ns")
    table, group = calendar_lookup(places, days, config)
    n_places = int(group.max()) + 1 if len(group) else 1
    calendar = table[CALENDAR_COLUMNS].to_numpy(np.float32).reshape(n_places, len(days), len(CALENDAR_COLUMNS))
    return Panel(device_ids, start, values, calendar, group)
