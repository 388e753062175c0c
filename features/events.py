"""Custom events calendar (fairs, festivals, local closures) matched to devices by scope.

Events are known in advance, so they are legitimate forecast-time features: a CSV with
`date_start, date_end, scope, scope_value, name`; scope `all` hits every device, `region` the devices
whose region equals scope_value, `device` the one device named by scope_value.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from cashcast.config import Config
from ingest.parse import NAT, days_of, to_timestamps

EVENT_COLUMNS = ["date_start", "date_end", "scope", "scope_value", "name"]
EVENT_SCOPES = ("all", "region", "device")
EVENT_PREFIX = "event_"
RESERVED_FLAGS = (EVENT_PREFIX, "event_active")


class EventsError(ValueError):
    """The events file is unreadable or holds an invalid row."""


def resolve_events_file(config: Config, home: str | Path) -> Path | None:
    """The configured events CSV: absolute, or relative to the workspace home; None when not configured."""
    configured = config.calendar.events_file.strip()
    if not configured:
        return None
    path = Path(configured).expanduser()
    return path if path.is_absolute() else Path(home) / path


def load_events(path: str | Path) -> pd.DataFrame:
    """Read and validate an events CSV; errors name the file, the line (1 = the header) and column.

    An empty `date_end` means a one-day event. Adds `flag`, the sanitised feature column of the name.
    """
    path = Path(path)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise EventsError(f"{path}: events file not found") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise EventsError(f"{path}: not a readable CSV: {exc}") from None
    raw.columns = [str(c).strip().lower() for c in raw.columns]
    missing = [c for c in EVENT_COLUMNS if c not in raw.columns]
    if missing:
        raise EventsError(f"{path}: missing column(s) {missing}")
    text = raw[EVENT_COLUMNS].apply(lambda column: column.str.strip())
    text["date_end"] = text["date_end"].where(text["date_end"] != "", text["date_start"])
    text["scope"] = text["scope"].str.lower()

    def fail(row: int, column: str, message: str) -> EventsError:
        return EventsError(f"{path}: line {row + 2}, column {column}: {message}")  # line 1 is the header

    dates = {}
    for column in ("date_start", "date_end"):
        # The lake's date reader: ISO days only ('05/11/2026' is May or November), as written.
        ns, _ = to_timestamps(pa.array(text[column].to_numpy(dtype=object), pa.string()), as_written=True)
        if (ns == NAT).any():
            row = int((ns == NAT).argmax())
            raise fail(row, column, f"not an ISO date (YYYY-MM-DD): {text[column].iloc[row]!r}")
        dates[column] = pd.Series(days_of(ns).astype("datetime64[ns]"), index=text.index)
    checks = [
        (dates["date_end"] < dates["date_start"], "date_end", "ends before date_start"),
        (~text["scope"].isin(EVENT_SCOPES), "scope", f"must be one of {list(EVENT_SCOPES)}"),
        ((text["scope"] != "all") & (text["scope_value"] == ""), "scope_value", "empty for a region/device scope"),
        (text["name"].map(_flag_name).isin(RESERVED_FLAGS), "name", "empty, without letters/digits or reserved"),
    ]
    for bad, column, message in checks:
        if bad.any():
            row = int(bad.to_numpy().argmax())
            raise fail(row, column, f"{message} (value {text[column].iloc[row]!r})")
    return pd.DataFrame(
        {
            "date_start": dates["date_start"],
            "date_end": dates["date_end"],
            "scope": text["scope"].astype("string"),
            "scope_value": text["scope_value"].where(text["scope"] != "all", "").astype("string"),
            "name": text["name"].astype("string"),
            "flag": text["name"].map(_flag_name).astype("string"),
        }
    )


def _flag_name(name: str) -> str:
    """'Diwali Fair 2024!' -> 'event_diwali_fair_2024'."""
    return EVENT_PREFIX + re.sub(r"[^0-9a-z]+", "_", str(name).lower()).strip("_")


def event_features(
    dates: pd.DatetimeIndex, events: pd.DataFrame, device_id: str, region: str, distance_cap: int
) -> pd.DataFrame:
    """Per day: event_active, days_to_event (0 while active, capped) and one flag per event name.

    Only events whose scope matches this device (all / its region / its id) count; every flag column of
    `events` is present, so all devices share the same columns.
    """
    n = len(dates)
    flags = sorted(events["flag"].unique()) if len(events) else []
    out = pd.DataFrame({"date": dates})
    active = np.zeros(n, bool)
    columns = {flag: np.zeros(n, np.int8) for flag in flags}
    scope, value = events["scope"].to_numpy(object), events["scope_value"].to_numpy(object)
    matches = (
        (scope == "all") | ((scope == "region") & (value == region)) | ((scope == "device") & (value == device_id))
    )
    day0 = dates[0] if n else pd.Timestamp(0)
    for row in events[matches].itertuples(index=False):
        first = max((row.date_start - day0).days, 0)
        last = min((row.date_end - day0).days, n - 1)
        if first <= last:
            active[first : last + 1] = True
            columns[row.flag][first : last + 1] = 1
    upcoming = np.where(active, np.arange(n), n)
    next_active = np.minimum.accumulate(upcoming[::-1])[::-1] if n else upcoming
    out["event_active"] = active.astype(np.int8)
    out["days_to_event"] = np.where(
        next_active < n, np.minimum(next_active - np.arange(n), distance_cap), distance_cap
    ).astype(np.int16)
    for flag in flags:
        out[flag] = columns[flag]
    return out
