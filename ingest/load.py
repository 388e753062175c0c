"""`ingest_file`: one raw file into the lake, with every row accounted for.

Rules (CONTRACT.md "Input files"):

- Every data row is loaded, rejected (to `rejects/<kind>-<stem>-<UTC time>.csv`, one line per row with
  the first reason found) or counted as a duplicate. A duplicate is a row that changes nothing: a
  transaction already in the lake or earlier in the file (by txn_id where given, as the contract says, within
  the month of its timestamp; one repeated with another timestamp, amount or type is kept as first loaded, and a
  warning says how many and where), a device-day / device / balance / status row
  identical to what the lake holds, or an earlier row of the file identical to a later one with its key. An
  earlier row with the same key and other values is rejected, naming the later row that wins.
  Re-ingesting a file therefore reports all its good rows as duplicates and leaves the lake identical.
- `transactions` are summed into device-days of the device's local business date. Naive timestamps are
  local already; zoned ones are converted to the device's zone (devices table `timezone`, else
  `[devices].timezone`, else `[workspace].timezone`). De-duplication key: (device_id, txn_id) when txn_id
  is present, else the whole row (device_id, timestamp, amount, type), with the month, hashed to 64 bits
  (odds of one false duplicate ~3e-6 for 10 million transactions in a month). Keys are kept per month,
  in sorted numpy arrays, so memory stays at 8 bytes per transaction of the months a file touches
  (10M rows: ~80 MB). New transactions ADD to the day already in the lake, so a late file tops up
  the day and a repeated one changes nothing.
- `daily` rows replace the device-day they name: the latest ingested wins. Absent days stay absent.
- `devices` (per device_id), `balances` (per device_id + as_of), `status` (per device_id + start + state):
  the latest ingested row wins; empty cells are stored empty and mean "the config's default". A column the
  file does not have keeps what the lake held for the key (daily files too).
- Reject reasons: missing or unparseable value, negative, zero (transactions) or above `[ingest].max_amount`
  amount, an `emergency_visit_cost` below the device's `visit_cost`, unknown
  type / kind / state, a transaction `currency` other than the network's (`[ingest].currency`, else the file's
  main one), a date later than today + `[ingest].future_tolerance_days` (today in the workspace
  time zone) or before 1970, end before start, a device missing from the device master (only once a master exists),
  and CSV lines with the wrong number of fields.
- All lake changes of one file are committed at once (see `ingest.lake`); a file that cannot be read at
  all raises IngestError before anything is written.
"""

from __future__ import annotations

import difflib
import errno
import functools
import importlib.resources
import warnings
import zoneinfo
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import holidays
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from cashcast.config import MAX_PLAN_DAYS, Config, UnknownRegionError, canonical_region, parse_weekdays
from cashcast.io import write_table
from cashcast.schema import DEVICE_NUMERIC_COLUMNS, STATUS_STATES, balance_limit_checks
from cashcast.workspace import Workspace
from ingest import lake as lk
from ingest.parse import (
    NAT,
    UNNAMED,
    Source,
    combine_hashes,
    days_of,
    device_ids,
    hash_strings,
    is_empty,
    mask_of,
    text,
    thousands_dots,
    to_float,
    to_local,
    to_timestamps,
)
from ingest.report import IngestError, IngestReport, IngestWarning

KINDS = ("transactions", "daily", "devices", "balances", "status")
# What exports write for no value, in the casings they write it (no lower-casing of every id on the hot path).
NO_ID = pa.array(
    sorted(
        {
            form
            for word in ("null", "n/a", "#n/a", "na", "nan", "none", "-", "--", "?")
            for form in (word, word.upper(), word.capitalize())
        }
    )
)
REQUIRED = {
    "transactions": ["device_id", "timestamp", "amount"],
    "daily": ["device_id", "date", "withdrawals"],
    "devices": ["device_id"],
    "balances": ["device_id", "as_of", "balance"],
    "status": ["device_id", "start", "end", "state"],
}
# Columns read when present (CONTRACT.md; `denomination` is accepted and not used). Any other column is ignored
# with a warning, and one that looks like a misspelt known column refuses the file.
OPTIONAL = {
    "transactions": ["type", "currency", "denomination", "txn_id"],
    "daily": ["deposits", "n_withdrawals", "n_deposits"],
    "devices": lk.DEVICE_TABLE_COLUMNS[1:],
    "balances": [],
    "status": [],
}
TXN_TYPES = ("withdrawal", "deposit")
DEVICE_KINDS = ("atm", "branch", "recycler")
REJECT_KEY = ["file", "row", "column", "reason"]
RECORD = "_record"  # a parsed row's index among the file's records, for rejects found after parsing
DAY_BITS, DAY_OFFSET = 21, 2**20  # device-day cells: device code << 21 | (days since 1970 + 2**20)
TXN_TYPES_ARRAY = pa.array(TXN_TYPES)
TRANSACTION_WRITE_SCHEMA = lk.TRANSACTION_SCHEMA.set(
    0, pa.field("device_id", pa.dictionary(pa.int32(), pa.string()))
).set(3, pa.field("type", pa.dictionary(pa.int8(), pa.string())))
TRANSACTION_WRITE_OPTIONS = {
    "compression": "lz4",
    "use_dictionary": ["device_id", "type"],
    "write_statistics": ["timestamp"],
}


# Device-master columns no other kind has: a header is a master's only with one of them and none of the other kinds'
# day columns (a daily export with a `kind` and a misspelt `withdrawal` is no master: loaded as one, it would
# overwrite terms).
MASTER_TERMS = ["kind", "visit_weekdays", *DEVICE_NUMERIC_COLUMNS]
DAY_COLUMNS = ["date", "timestamp", "as_of"]  # the other kinds' days: no master has one (a `state` or `type` it may)


@functools.cache
def _country_zones() -> dict[str, list[str]]:
    """IANA zones per ISO country code, from the tz database's zone.tab (the tzdata package pandas installs)."""
    table = importlib.resources.files("tzdata").joinpath("zoneinfo", "zone.tab").read_text()
    zones: dict[str, list[str]] = {}
    for line in table.splitlines():
        if line and not line.startswith("#"):
            code, _, zone, *_ = line.split("\t")
            zones.setdefault(code, []).append(zone)
    return zones


def _iso_country(country: str) -> str:
    """The ISO code of a country as the holidays package reads it ('UK' is GB there): the calendar's country."""
    code = country.strip().upper()
    try:
        return getattr(holidays.country_holidays(code), "country", code)
    except NotImplementedError:  # a country the holidays package does not know: taken as written
        return code


def _utc_offsets(zone: str) -> tuple:
    """A zone's UTC offsets in January and July: how aliases (US/Pacific) are matched to their zone."""
    clock = zoneinfo.ZoneInfo(zone)
    return tuple(datetime(2024, month, 1, 12, tzinfo=clock).utcoffset() for month in (1, 7))


@functools.cache
def zone_fits_country(zone: str, country: str) -> bool:
    """Whether `zone` keeps one of `country`'s clocks (True for a country the tz database does not list): a GB
    device's 23:30Z read in Shanghai is the next morning there, and its evening counts on the wrong day."""
    zones = _country_zones().get(_iso_country(country))
    if not zones or zone in zones:
        return True
    return _utc_offsets(zone) in {_utc_offsets(own) for own in zones}


def kind_from_header(path: str | Path) -> str | None:
    """The one kind whose required columns the file's header holds, or None (none, or several): how a landing file
    whose name says nothing is told apart. A file that cannot be read raises its own IngestError."""
    columns = set(Source.open(path, 1).columns)
    matches = [kind for kind in KINDS if kind != "devices" and set(REQUIRED[kind]) <= columns]
    master = columns & set(MASTER_TERMS) and not columns & set(DAY_COLUMNS)
    if not matches and "device_id" in columns and master:
        matches = ["devices"]
    return matches[0] if len(matches) == 1 else None


def open_source(path: str | Path, kind: str, config: Config) -> Source:
    """The file opened for reading, once it is known to be readable with the columns `kind` needs."""
    if kind not in KINDS:
        raise IngestError(f"{path}: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    source = Source.open(path, config.ingest.batch_rows)
    source.require(REQUIRED[kind])
    _check_other_columns(source, kind)
    return source


def _check_other_columns(source: Source, kind: str) -> None:
    """Refuse a column that looks like a misspelt known one (`capcity`, `lead_time`, `deposit`): its values would
    be ignored without a word, the config's defaults taken instead. Warn of the other unknown columns."""
    known = REQUIRED[kind] + OPTIONAL[kind]
    absent = [c for c in known if c not in source.columns]
    unknown = [c for c in source.columns if c not in known]
    for column in unknown:
        if column.startswith(UNNAMED):
            continue
        cut_short = [c for c in absent if c.startswith(column)] if len(column) >= 4 else []  # lead_time, visit_week
        guess = cut_short or difflib.get_close_matches(column, absent, 1, 0.8)
        if guess:
            raise IngestError(
                f"{source.path}: column {column!r} is not a {kind} column: is it {guess[0]!r}? (rename it, or its"
                " values would be ignored)"
            )
    if unknown:
        warnings.warn(
            IngestWarning(f"{source.path}: column(s) {', '.join(unknown)} ignored: not {kind} columns"), stacklevel=4
        )


def ingest_file(
    path: str | Path, kind: str, workspace: Workspace, config: Config, progress: bool = False
) -> IngestReport:
    """Load one CSV or Parquet file of `kind` into the workspace's lake; see the module docstring."""
    source = open_source(path, kind, config)
    lake = workspace.lake

    def waiting() -> None:
        said = f"{path}: another ingest is writing to {lake}; waiting for it to end"
        warnings.warn(IngestWarning(said), stacklevel=4)

    with lk.writer_lock(lake, on_wait=waiting):
        lk.recover(lake)
        run = _Run(source, config, lake, lk.read_small(lake, "devices"), progress)
        staging = lk.Staging(lake)
        try:
            try:
                loaded, duplicate = LOADERS[kind](run, staging)
                rejects = run.rejects_frame()
                staging.commit()  # a header with no rows is a day with nothing to report (no outages, say)
                for note in [*run.notes, *run.clock_notes()]:
                    warnings.warn(IngestWarning(note), stacklevel=2)
            except OSError as exc:
                if not _cannot_write(exc):
                    raise
                raise IngestError(_write_failure(lake, path, exc, staging.committed)) from None
            except pa.ArrowException as exc:  # a column type no reader rule covers: name the file, load nothing
                raise IngestError(f"{path}: cannot read its columns ({str(exc).splitlines()[0]})") from None
        finally:
            staging.abort()
    rejects_path = None
    if len(rejects):
        stamp = pd.Timestamp.now(tz="UTC").strftime("%Y%m%dT%H%M%S%fZ")
        rejects_path = str(write_table(rejects, workspace.rejects / f"{kind}-{source.path.stem}-{stamp}.csv"))
    if run.rows_read and len(rejects) == run.rows_read:  # a format problem, most likely (day-first dates, say)
        first = rejects.iloc[0]
        column = f", column {first['column']}" if first["column"] else ""  # a wrong-width line names none
        warnings.warn(
            IngestWarning(f"{path}: every row was rejected, e.g. row {first['row']}{column}: {first['reason']}"),
            stacklevel=2,
        )
    return IngestReport(str(path), run.rows_read, loaded, len(rejects), duplicate, rejects_path)


WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EXDEV}


def _cannot_write(exc: OSError) -> bool:
    """A full disk, a read-only or forbidden lake folder: pyarrow's writers give no errno, only the words."""
    text = str(exc)
    return exc.errno in WRITE_ERRNOS or any(f"[errno {code}]" in text for code in WRITE_ERRNOS)


def _write_failure(lake: Path, path: str | Path, exc: OSError, committed: bool) -> str:
    """One line naming the lake, the file and the cause, and whether any of the file was loaded."""
    cause = exc.strerror or str(exc).strip().splitlines()[0]
    if committed:
        return (
            f"{lake}: cannot write the lake ({cause}) while applying {path}: its load is recorded and completes at"
            " the next command once the lake is writable"
        )
    return f"{lake}: cannot write the lake ({cause}) while loading {path}: nothing of the file was loaded"


@dataclass
class _Run:
    """State of one ingest: the source, limits from the config, the master, and the rejects so far."""

    source: Source
    config: Config
    lake: Path
    devices: pd.DataFrame
    progress: bool
    rows_read: int = 0
    rejected: list[pd.DataFrame] = field(default_factory=list)
    bad_lines: list[tuple[int, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # warnings for the sender, given once the load is committed

    def __post_init__(self) -> None:
        today = pd.Timestamp.now(tz=self.config.workspace.timezone).normalize().tz_localize(None)
        self.first_future_ns = (today + pd.Timedelta(days=self.config.ingest.future_tolerance_days + 1)).value
        self.known_ids = pa.array(self.devices["device_id"].astype(object), pa.string())
        zones = self.devices.set_index("device_id")["timezone"].replace("", np.nan)
        self.zone_of = zones.dropna().to_dict()
        self.default_zone = self.config.devices.timezone or self.config.workspace.timezone
        countries = self.devices.set_index("device_id")["country"].fillna("").astype(str).str.strip()
        self.country_of = countries[countries != ""].to_dict()
        self.foreign_clock: dict[str, tuple[str, str]] = {}  # device -> (zone read in, its country): see local_ns
        self.currency = self.config.ingest.currency

    def batches(self) -> Iterator[tuple[pa.RecordBatch, int]]:
        """(batch, index of its first record among the file's parsed records)."""
        first = 0
        bar = tqdm(desc=self.source.path.name, unit="rows", disable=not self.progress)
        for batch in self.source.batches():
            if batch.num_rows:
                yield batch, first
                first += batch.num_rows
                bar.update(batch.num_rows)
        bar.close()
        self.bad_lines = self.source.bad_lines()
        self.rows_read = first + len(self.bad_lines)

    def local_ns(self, batch: pa.RecordBatch, column: str, ids: pa.Array) -> np.ndarray:
        """Wall-clock ns in each device's zone (NAT where empty or unparseable)."""
        ns, zoned = to_timestamps(batch[column])
        if not zoned.any():
            return ns
        devices = pd.Series(ids.to_pandas(), dtype=object)
        zones = devices.map(self.zone_of).fillna(self.default_zone)
        by_default = zoned & ~devices.isin(self.zone_of.keys()).to_numpy()  # a device's own timezone cell is its say
        pairs = pd.DataFrame({"device": devices[by_default], "zone": zones[by_default]}).drop_duplicates()
        for device, zone in pairs.itertuples(index=False):
            country = self.country_of.get(device, self.config.devices.country)
            if not zone_fits_country(zone, country):
                self.foreign_clock[device] = (zone, country)
        return to_local(ns, zoned, zones.to_numpy(dtype=object))

    def clock_notes(self) -> list[str]:
        """The warning for zoned timestamps read in a zone none of their device's country's (see local_ns)."""
        if not self.foreign_clock:
            return []
        device, (zone, country) = next(iter(self.foreign_clock.items()))
        return [
            f"{self.source.path}: timestamps with a zone were converted to {zone} for device(s) of another country,"
            f" e.g. {device} ({country}): a day's last or first hours may count on the wrong business day; set"
            " the device's timezone (device master) or [devices] / [workspace] timezone"
        ]

    def screen(self, batch: pa.RecordBatch, first: int, checks: list[tuple[str, str, np.ndarray]]) -> np.ndarray:
        """Record the rows failing any check (first failing reason wins); return the mask of good rows."""
        bad = np.zeros(batch.num_rows, dtype=bool)
        reason = np.full(batch.num_rows, -1)
        for index, (_, _, mask) in enumerate(checks):
            hit = mask & ~bad
            reason[hit] = index
            bad |= hit
        if bad.any():
            rows = np.flatnonzero(bad)
            raw = pa.Table.from_batches([batch.take(pa.array(rows))])
            frame = pd.DataFrame({name: raw[name].cast(pa.string()).to_pandas() for name in raw.column_names})
            frame.insert(0, "reason", [checks[i][1] for i in reason[rows]])
            frame.insert(0, "column", [checks[i][0] for i in reason[rows]])
            frame.insert(0, "row", rows + first)  # record index; made a spreadsheet row in rejects_frame
            self.rejected.append(frame)
        return ~bad

    def rejects_frame(self) -> pd.DataFrame:
        """All rejects with spreadsheet row numbers (header = row 1), wrong-width lines included."""
        bad_lines = self.bad_lines
        parts = []
        if self.rejected:
            records = pd.concat(self.rejected, ignore_index=True)
            records["row"] = self.source.spreadsheet_rows(records["row"].to_numpy())
            parts.append(records)
        if bad_lines:
            reason = f"wrong number of fields (expected {len(self.source.columns)})"
            parts.append(
                pd.DataFrame(
                    {
                        "row": [number for number, _ in bad_lines],
                        "column": "",
                        "reason": reason,
                        "line": [line for _, line in bad_lines],
                    }
                )
            )
        if not parts:
            return pd.DataFrame(columns=REJECT_KEY)
        out = pd.concat(parts, ignore_index=True)
        out.insert(0, "file", str(self.source.path))
        return out.sort_values("row", ignore_index=True, kind="stable")

    def id_checks(self, ids: pa.Array, master: bool = True) -> list[tuple[str, str, np.ndarray]]:
        missing = mask_of(pc.is_null(ids))
        placeholder = mask_of(pc.is_in(ids, value_set=NO_ID))
        checks = [
            ("device_id", "missing device_id", missing),
            ("device_id", "device_id is an export's word for no value (NULL, N/A, -)", placeholder),
        ]
        missing = missing | placeholder
        if master and len(self.known_ids):
            unknown = ~mask_of(pc.is_in(ids, value_set=self.known_ids)) & ~missing
            checks.append(("device_id", "device_id not in the device master", unknown))
        return checks

    def currency_checks(self, batch: pa.RecordBatch) -> list[tuple[str, str, np.ndarray]]:
        """Rows in another currency than the network's: CNY and USD summed into one day would be neither.

        The network's is `[ingest] currency`; when that is empty, the currency most rows of the file's
        first batch name (a million rows) stands for it. Empty cells are the network's currency.
        """
        codes = pc.utf8_upper(text(batch["currency"]))
        named = mask_of(pc.is_valid(codes))
        source = "the network's, [ingest] currency"
        if not self.config.ingest.currency:
            source = "the file's main currency; set [ingest] currency to name the network's"
            if not self.currency and named.any():
                counts = pc.value_counts(codes.filter(pa.array(named))).to_pylist()
                self.currency = min(counts, key=lambda c: (-c["counts"], c["values"]))["values"]
        if not self.currency:
            return []
        other = named & ~mask_of(pc.equal(codes, self.currency))
        return [("currency", f"currency other than {self.currency} ({source})", other)]

    def amount_checks(self, batch: pa.RecordBatch, column: str, required: bool = True):
        """(values, checks) for a money column: empty (if required), unparseable, negative, too large."""
        values = to_float(batch[column])
        empty = is_empty(batch[column])
        limit = self.config.ingest.max_amount
        checks = [
            *self.thousands_check(batch, column),
            (column, f"unparseable {column}", np.isnan(values) & ~empty),
            (column, f"negative {column}", values < 0),
            (column, f"{column} above max_amount {limit:g}", values > limit),
        ]
        if required:
            checks.insert(0, (column, f"missing {column}", empty))
        return values, checks

    def thousands_check(self, batch: pa.RecordBatch, column: str) -> list[tuple[str, str, np.ndarray]]:
        """In a semicolon or tab separated file (a decimal-comma locale's spreadsheet) 12.000 may be twelve
        thousand: such a cell is refused, not read as twelve."""
        if self.source.delimiter == ",":
            return []
        reason = f"{column} written like 1.234 in a file from a decimal-comma locale: write it without thousands dots"
        return [(column, reason, thousands_dots(batch[column]))]

    def date_checks(self, batch: pa.RecordBatch, column: str, ns: np.ndarray, required: bool = True):
        empty = is_empty(batch[column])
        early = (ns != NAT) & (ns < 0)  # 0 ns is 1970-01-01
        checks = [
            (column, f"unparseable {column}", (ns == NAT) & ~empty),
            (column, f"{column} is in the future", ns >= self.first_future_ns),
            (column, f"{column} before 1970 (cash history starts later: an empty spreadsheet date?)", early),
        ]
        if required:
            checks.insert(0, (column, f"missing {column}", empty))
        return checks


class _SeenKeys:
    """Transaction keys per month, each with its body (`lk.transaction_body`): those in the lake (keys read on
    first touch, their bodies only once a key repeats) plus those loaded from this file."""

    def __init__(self, lake: Path) -> None:
        self.lake = lake
        self.chunks: dict[np.datetime64, list[tuple[np.ndarray, np.ndarray | None]]] = {}

    def fresh(
        self, month: np.datetime64, keys: np.ndarray, bodies: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mask of keys not seen before, the body each seen key was first loaded with, mask of keys seen earlier in
        this file, not in the lake) for unique `keys`; the fresh ones are remembered from now on."""
        chunks = self.chunks.setdefault(month, [(lk.transaction_keys(self.lake, month), None)])
        seen = np.zeros(len(keys), dtype=bool)
        in_file = np.zeros(len(keys), dtype=bool)
        seen_bodies = np.zeros(len(keys), dtype=np.uint32)
        for index, (chunk, chunk_bodies) in enumerate(chunks):
            if not len(chunk):
                continue
            at = np.searchsorted(chunk, keys).clip(max=len(chunk) - 1)
            hit = chunk[at] == keys
            if hit.any() and chunk_bodies is None:  # the lake's keys: their bodies once one repeats
                # The same keys in the same order: the ingest holds the lake's writer lock, nothing changed them.
                chunk, chunk_bodies = lk.transaction_bodies(self.lake, month)
                chunks[index] = (chunk, chunk_bodies)
            if hit.any():
                seen_bodies[hit] = chunk_bodies[at[hit]]
            seen |= hit
            if index:  # chunk 0 is the lake's
                in_file |= hit
        chunks.append(_sorted_by_key(keys[~seen], bodies[~seen]))
        if len(chunks) > 8:  # the lake's chunk stays apart, its bodies perhaps unread
            merged = _sorted_by_key(*(np.concatenate(part) for part in zip(*chunks[1:], strict=True)))
            self.chunks[month] = [chunks[0], merged]
        return ~seen, seen_bodies, in_file


def _sorted_by_key(keys: np.ndarray, bodies: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(keys)
    return keys[order], bodies[order]


def _load_transactions(run: _Run, staging: lk.Staging) -> tuple[int, int]:
    seen = _SeenKeys(run.lake)
    writers: dict[np.datetime64, pq.ParquetWriter] = {}
    device_names: dict[str, int] = {}
    partial: list[pd.DataFrame] = []
    loaded = duplicate = n_changed = 0
    first_changed: tuple[np.ndarray, str] | None = None  # (record, txn_id) of the file's first repeat with other values
    identical: list[np.ndarray] = []  # records repeating an earlier row of the file exactly, when there is no txn_id
    columns = run.source.columns
    try:
        for batch, first in run.batches():
            ids = device_ids(batch["device_id"])
            amount, amount_checks = run.amount_checks(batch, "amount")
            amount_checks.append(("amount", "amount 0 (a transaction moves cash: amounts are positive)", amount == 0))
            if "type" in columns:
                kind = pc.utf8_lower(text(batch["type"]))
                unknown_type = mask_of(pc.invert(pc.is_in(kind, value_set=TXN_TYPES_ARRAY)))
                unknown_type &= mask_of(pc.is_valid(kind))
                is_deposit = mask_of(pc.equal(kind, "deposit"))
            else:
                unknown_type = is_deposit = np.zeros(batch.num_rows, dtype=bool)
            ns = run.local_ns(batch, "timestamp", ids)
            good = run.screen(
                batch,
                first,
                [
                    *run.id_checks(ids),
                    *run.date_checks(batch, "timestamp", ns),
                    *amount_checks,
                    ("type", "unknown type (expected withdrawal or deposit)", unknown_type),
                    *(run.currency_checks(batch) if "currency" in columns else []),
                ],
            )
            keep = pa.array(np.flatnonzero(good))
            ids = pc.dictionary_encode(ids.take(keep))  # written as is: the Parquet writer skips re-encoding
            ns, amount, is_deposit = ns[good], amount[good], is_deposit[good]
            txn_id = text(batch["txn_id"]).take(keep) if "txn_id" in columns else pa.nulls(len(keep), pa.string())
            month = days_of(ns).astype("datetime64[M]")
            key = _transaction_keys(ids, txn_id, ns, amount, is_deposit, month)
            body = lk.transaction_body(ns, amount, is_deposit)
            first_row = _first_rows(key)  # per row, the batch's first row of its key
            repeated = first_row != np.arange(len(key))
            again = repeated.copy()  # rows repeating an earlier row of this file (this batch or one before)
            new = ~repeated
            kept_body = body.copy()  # per row, the values its key is kept with: the loaded ones, else its own
            months = np.arange(month.min(), month.max() + 1) if len(month) else month
            for m in months:
                rows = np.flatnonzero(new & (month == m))
                if len(rows):
                    fresh, seen_body, in_file = seen.fresh(m, key[rows], body[rows])
                    again[rows[in_file]] = True
                    new[rows[~fresh]] = False
                    kept_body[rows[~fresh]] = seen_body[~fresh]
            if "txn_id" not in columns and again.any():
                identical.append(first + np.flatnonzero(good)[again])
            if repeated.any():  # a key again in this batch is kept with its first row's kept values
                kept_body = kept_body[first_row]
            # Only a txn_id can repeat with other values: a key without one hashes the values themselves.
            conflict = np.flatnonzero((body != kept_body) & mask_of(pc.is_valid(txn_id)))
            if len(conflict):
                if first_changed is None:
                    first_changed = (first + np.flatnonzero(good)[conflict[:1]], txn_id[int(conflict[0])].as_py())
                n_changed += len(conflict)
            duplicate += int(len(key) - new.sum())
            loaded += int(new.sum())
            rows = pa.array(np.flatnonzero(new))
            fresh = pa.table(
                {
                    "device_id": ids.take(rows),
                    "timestamp": pa.array(ns[new].view("datetime64[ns]")),
                    "amount": amount[new],
                    "type": pa.DictionaryArray.from_arrays(is_deposit[new].astype(np.int8), TXN_TYPES_ARRAY),
                    "txn_id": txn_id.take(rows),
                    "txn_key": key[new].view(np.int64),
                },
                schema=TRANSACTION_WRITE_SCHEMA,
            )
            fresh_month = month[new]
            for m in pd.unique(fresh_month):
                if m not in writers:
                    target = staging.path(f"transactions/{lk.month_name(m)}/part-{staging.token}.parquet")
                    writers[m] = pq.ParquetWriter(target, TRANSACTION_WRITE_SCHEMA, **TRANSACTION_WRITE_OPTIONS)
                writers[m].write_table(fresh.filter(pa.array(fresh_month == m)))
            amounts = fresh["amount"].to_numpy()
            partial.append(_device_day_sums(ids.take(rows), amounts, ns[new], is_deposit[new], device_names))
    finally:
        for writer in writers.values():
            writer.close()
    if partial:
        names = np.array(list(device_names), dtype=object)
        parts = pd.concat(partial, ignore_index=True)
        sums = _sum_cells(parts["cell"].to_numpy(), {c: parts[c].to_numpy() for c in parts.columns[1:]})
        cell = sums["cell"].to_numpy()
        daily = pd.DataFrame(
            {
                "device_id": names[cell >> DAY_BITS],
                "date": ((cell & (2**DAY_BITS - 1)) - DAY_OFFSET).astype("datetime64[D]").astype("datetime64[ns]"),
                "withdrawals": sums["withdrawals"].to_numpy(),
                "deposits": sums["deposits"].where(sums["n_deposits"] > 0).to_numpy(),
                "n_withdrawals": sums["n_withdrawals"].to_numpy(dtype=np.float64),
                "n_deposits": sums["n_deposits"].to_numpy(dtype=np.float64),
            }
        )
        _merge_daily(run.lake, staging, daily, _add_days)
    if first_changed is not None:  # the contract de-duplicates by txn_id; a changed repeat is news to its sender
        record, changed_id = first_changed
        row = run.source.spreadsheet_rows(record)[0]
        run.notes.append(
            f"{run.source.path}: {n_changed} row(s) repeat a txn_id already loaded with another timestamp, amount"
            f" or type, e.g. row {row} (txn_id {changed_id}): counted as duplicates, the first loaded is kept"
        )
    if identical:
        records = np.concatenate(identical)
        row = run.source.spreadsheet_rows(records[:1])[0]
        run.notes.append(
            f"{run.source.path}: {len(records)} row(s) repeat an earlier row of the file exactly (device,"
            f" timestamp, amount, type), e.g. row {row}, and were counted once: without a txn_id column two"
            " withdrawals of one amount in the same second cannot be told from one sent twice; send txn_id"
        )
    return loaded, duplicate


def _first_rows(key: np.ndarray) -> np.ndarray:
    """Index of the first row with each row's key: one hashing pass serves both telling repeats and reading
    their first row's values (a duplicated() and a groupby took 3 times as long on a million-row batch)."""
    codes, _ = pd.factorize(key)  # codes number the keys in the order they first appear
    seen_before = np.maximum.accumulate(np.r_[-1, codes[:-1]])
    first = np.flatnonzero(codes > seen_before)  # the first row of code 0, of code 1, ...
    return first[codes]


def _transaction_keys(
    ids: pa.DictionaryArray,
    txn_id: pa.Array,
    ns: np.ndarray,
    amount: np.ndarray,
    is_deposit: np.ndarray,
    month: np.ndarray,
) -> np.ndarray:
    """(month, device_id, txn_id) where txn_id is given, else (month, whole row), as uint64.

    The month is part of the key because keys are kept (and compared) per month partition.
    """
    device = combine_hashes(
        hash_strings(ids.dictionary)[ids.indices.to_numpy(zero_copy_only=False)], month.view(np.uint64)
    )
    has_id = mask_of(pc.is_valid(txn_id))
    if has_id.all():
        return combine_hashes(device, hash_strings(txn_id))
    by_row = combine_hashes(device, ns.view(np.uint64), amount.view(np.uint64), is_deposit)
    if not has_id.any():
        return by_row
    return np.where(has_id, combine_hashes(device, hash_strings(txn_id)), by_row)


def _device_day_sums(
    ids: pa.DictionaryArray, amount: np.ndarray, ns: np.ndarray, is_deposit: np.ndarray, device_names: dict[str, int]
) -> pd.DataFrame:
    """Sums of one batch per cell = device code << DAY_BITS | day; codes index `device_names`."""
    codes = np.array(
        [device_names.setdefault(name, len(device_names)) for name in ids.dictionary.to_pylist()], dtype=np.int64
    )
    cells = (codes[ids.indices.to_numpy(zero_copy_only=False)] << DAY_BITS) + days_of(ns).astype(np.int64)
    cells += DAY_OFFSET
    withdrawals = np.where(is_deposit, 0.0, amount)
    return _sum_cells(
        cells,
        {
            "withdrawals": withdrawals,
            "deposits": amount - withdrawals,
            "n_withdrawals": (~is_deposit).astype(np.float64),
            "n_deposits": is_deposit.astype(np.float64),
        },
    )


def _sum_cells(cells: np.ndarray, values: dict[str, np.ndarray]) -> pd.DataFrame:
    """Sum each value array per distinct cell (hash-based, no sort: the hot path of every batch)."""
    inverse, unique = pd.factorize(cells)
    sums = {name: np.bincount(inverse, weights=v, minlength=len(unique)) for name, v in values.items()}
    return pd.DataFrame({"cell": unique, **sums})


def _add_days(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Late transactions top up the day; deposits stay NaN only where neither side has any."""
    if old.empty:
        return new
    both = pd.concat([old, new], ignore_index=True)
    return both.groupby(["device_id", "date"], as_index=False).sum(min_count=1)


def _replace_days(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """A daily file's device-days replace what the lake held for them."""
    keys = ["device_id", "date"]
    kept = old.merge(new[keys], on=keys, how="left", indicator=True)
    return pd.concat([kept[kept["_merge"] == "left_only"].drop(columns="_merge"), new], ignore_index=True)


def _merge_daily(
    lake: Path,
    staging: lk.Staging,
    daily: pd.DataFrame,
    combine: Callable[[pd.DataFrame, pd.DataFrame], pd.DataFrame],
) -> None:
    """Rewrite each month partition `daily` touches as combine(old rows, new rows)."""
    months = daily["date"].to_numpy().astype("datetime64[M]")
    for month in np.unique(months):
        relative = lk.daily_partition(month)
        old = lk.read_partition(lake, relative, lk.DAILY_SCHEMA)
        merged = combine(old, daily[months == month]).sort_values(["device_id", "date"], ignore_index=True)
        staging.write(lk.frame_to_table(merged, lk.DAILY_SCHEMA), relative)


def _load_daily(run: _Run, staging: lk.Staging) -> tuple[int, int]:
    value_columns = [c for c in ("deposits", "n_withdrawals", "n_deposits") if c in run.source.columns]
    parts = []
    for batch, first in run.batches():
        ids = device_ids(batch["device_id"])
        ns = to_timestamps(batch["date"], as_written=True)[0]  # a business date, wherever the device is
        withdrawals, checks = run.amount_checks(batch, "withdrawals")
        values = {"withdrawals": withdrawals}
        for column in value_columns:
            values[column], more = run.amount_checks(batch, column, required=False)
            checks += more
        good = run.screen(batch, first, [*run.id_checks(ids), *run.date_checks(batch, "date", ns), *checks])
        frame = pd.DataFrame({name: v[good] for name, v in values.items()})
        frame.insert(0, "date", days_of(ns[good]).astype("datetime64[ns]"))
        frame.insert(0, "device_id", ids.filter(pa.array(good)).to_pandas())
        parts.append(frame.assign(**{RECORD: first + np.flatnonzero(good)}))
    if not parts:
        return 0, 0
    daily = pd.concat(parts, ignore_index=True).reindex(columns=[*lk.DAILY_SCHEMA.names, RECORD])
    keys = ["device_id", "date"]
    daily, superseded = _latest_per_key(run, daily, keys)
    months = np.unique(daily["date"].to_numpy().astype("datetime64[M]"))
    old = [lk.read_partition(run.lake, lk.daily_partition(m), lk.DAILY_SCHEMA) for m in months]
    old = pd.concat(old, ignore_index=True) if old else daily.iloc[:0]
    daily = _keep_absent(daily, old, keys, run.source.columns)
    unchanged = _unchanged(daily, old, keys)
    changed = daily[~unchanged]
    if len(changed):
        _merge_daily(run.lake, staging, changed, _replace_days)
        _note_replaced(run, changed, old, keys)
    return len(changed), superseded + int(unchanged.sum())


def _note_replaced(run: _Run, changed: pd.DataFrame, old: pd.DataFrame, keys: list[str]) -> None:
    """Latest wins, but a device-day the lake held with other values is news: a corrected export, or an old
    file delivered again over a correction. A note says how many, and shows the first."""
    before = changed.merge(old, on=keys, suffixes=("", "_before"))
    if before.empty:
        return
    first = before.iloc[0]
    values = [c for c in changed.columns if c not in keys]
    column = next(c for c in values if not _same(before[c].iloc[:1], before[f"{c}_before"].iloc[:1])[0])
    run.notes.append(
        f"{run.source.path}: {len(before)} device-day(s) the lake held with other values were replaced (the"
        f" latest file wins), e.g. {first['device_id']} on {first['date']:%Y-%m-%d}: {column}"
        f" {first[f'{column}_before']:.15g} -> {first[column]:.15g}"
    )


def _latest_per_key(run: _Run, frame: pd.DataFrame, keys: list[str]) -> tuple[pd.DataFrame, int]:
    """The last row of each key in the file (without its RECORD column), and how many earlier rows repeated it
    exactly (duplicates). An earlier row with other values goes to the rejects naming the row that replaced it:
    two demands for one device-day in one file are a question for whoever sent it, not a silent pick."""
    superseded = frame.duplicated(keys, keep="last").to_numpy()
    winners = frame[~superseded]
    if not superseded.any():
        return winners.drop(columns=RECORD), 0
    earlier = frame[superseded].merge(winners, on=keys, suffixes=("", "_later"))
    values = [c for c in frame.columns if c not in (*keys, RECORD)]
    differs = np.zeros(len(earlier), dtype=bool)
    for column in values:
        differs |= ~_same(earlier[column], earlier[f"{column}_later"])
    if differs.any():
        conflicts = earlier[differs]
        later_rows = run.source.spreadsheet_rows(conflicts[f"{RECORD}_later"].to_numpy())
        shown = pd.DataFrame(
            {
                column: conflicts[column].dt.strftime("%Y-%m-%d %H:%M:%S").str.removesuffix(" 00:00:00")
                if pd.api.types.is_datetime64_any_dtype(conflicts[column])
                else conflicts[column].map(lambda v: f"{v:.15g}")
                if pd.api.types.is_float_dtype(conflicts[column])
                else conflicts[column].astype(str)
                for column in [*keys, *values]
            }
        ).replace({"nan": "", "NaT": "", "<NA>": "", "None": ""})
        shown.insert(
            0,
            "reason",
            [
                f"same {' and '.join(keys)} as row {row}, a later row with other values, which wins"
                for row in later_rows
            ],
        )
        shown.insert(0, "column", "")
        shown.insert(0, "row", conflicts[RECORD].to_numpy())
        run.rejected.append(shown.reset_index(drop=True))
    return winners.drop(columns=RECORD), int((~differs).sum())


def _same(a: pd.Series, b: pd.Series) -> np.ndarray:
    """Mask of equal values, NaN equal to NaN: how a row is told to repeat another or what the lake holds."""
    return ((a == b) | (a.isna() & b.isna())).to_numpy(dtype=bool)


def _keep_absent(new: pd.DataFrame, old: pd.DataFrame, keys: list[str], given: list[str]) -> pd.DataFrame:
    """`new` with the columns its file does not have taken from the lake's rows of the same key: a file of
    capacities alone must not reset every device's kind and name, nor a withdrawals-only daily file erase the
    deposits an earlier one gave. An empty cell in a column the file has still replaces (and means "the
    default" in the device master)."""
    absent = [c for c in new.columns if c not in keys and c not in given]
    if not absent or old.empty or new.empty:
        return new
    held = new[keys].merge(old[keys + absent], on=keys, how="left")
    return new.assign(**{column: held[column].to_numpy() for column in absent})


def _unchanged(new: pd.DataFrame, old: pd.DataFrame, keys: list[str]) -> np.ndarray:
    """Mask of `new` rows whose key the lake holds with identical values (NaN equals NaN)."""
    joined = new.merge(old, on=keys, how="left", suffixes=("", "_old"), indicator=True)
    same = (joined["_merge"] == "both").to_numpy(copy=True)
    for column in new.columns.difference(keys):
        same &= _same(joined[column], joined[f"{column}_old"])
    return same


def _load_small(run: _Run, staging: lk.Staging, name: str, parse) -> tuple[int, int]:
    """Devices, balances, status: latest row wins per key; the whole table file is rewritten."""
    parts = [parse(run, batch, first) for batch, first in run.batches()]
    schema, keys = lk.SMALL_SCHEMAS[name], lk.SMALL_KEYS[name]
    empty = schema.empty_table().to_pandas().assign(**{RECORD: np.zeros(0, dtype=np.int64)})
    new, superseded = _latest_per_key(run, pd.concat(parts, ignore_index=True) if parts else empty, keys)
    old = lk.read_small(run.lake, name)
    new = _keep_absent(new, old, keys, run.source.columns)
    unchanged = _unchanged(new, old, keys)
    changed = new[~unchanged]
    if len(changed):
        kept = old.merge(changed[keys], on=keys, how="left", indicator=True)
        table = pd.concat([kept[kept["_merge"] == "left_only"].drop(columns="_merge"), changed], ignore_index=True)
        table = table.sort_values(keys, ignore_index=True)
        staging.write(lk.frame_to_table(table, schema), lk.small_table_path(name))
    return len(changed), superseded + int(unchanged.sum())


def _parse_devices(run: _Run, batch: pa.RecordBatch, first: int) -> pd.DataFrame:
    ids = device_ids(batch["device_id"])
    columns = run.source.columns
    out = {"device_id": ids}
    checks = run.id_checks(ids, master=False)
    for column in lk.DEVICE_TABLE_COLUMNS[1:]:
        if column not in columns:
            out[column] = np.full(batch.num_rows, np.nan if column in lk.DEVICE_NUMERIC_COLUMNS else None)
            continue
        if column in lk.DEVICE_NUMERIC_COLUMNS:
            values = to_float(batch[column])
            empty = is_empty(batch[column])
            checks += [
                *run.thousands_check(batch, column),
                (column, f"unparseable {column}", np.isnan(values) & ~empty),
                (column, f"negative {column}", values < 0),
            ]
            if column in ("service_level", "holding_rate"):
                checks.append((column, f"{column} must be below 1", values >= 1))
            if column == "service_level":
                checks.append((column, "service_level must be above 0 (e.g. 0.99)", values == 0))
            if column == "lead_time_days":
                with np.errstate(invalid="ignore"):
                    checks.append(
                        (column, "lead_time_days must be whole days", np.isfinite(values) & (values % 1 != 0))
                    )
                reason = f"lead_time_days above {MAX_PLAN_DAYS} (no plan reaches a visit ordered that far ahead)"
                checks.append((column, reason, values > MAX_PLAN_DAYS))
            if column == "load_multiple":
                checks.append((column, "load_multiple must be above 0 (the size of one bundle)", values == 0))
            if column == "visit_cost":
                reason = "visit_cost must be above 0 (stockouts are priced in visits: a free visit prices them at 0)"
                checks.append((column, reason, values == 0))
            out[column] = values
            continue
        values = text(batch[column])
        if column == "kind":
            values = pc.utf8_lower(values)
            checks.append((column, "unknown kind (expected atm, branch or recycler)", _invalid(values, _is_kind)))
        elif column == "visit_weekdays":
            reason = "unparseable visit_weekdays (expected e.g. Mon,Wed,Fri or Mon-Fri)"
            checks.append((column, reason, _invalid(values, _is_weekdays)))
        elif column == "timezone":
            checks.append((column, "unknown timezone", _invalid(values, _is_zone)))
        out[column] = values
    checks += _region_checks(run.config, out) + balance_limit_checks(out) + _cost_checks(out)
    good = run.screen(batch, first, checks)
    frame = pd.DataFrame({c: v.to_pandas() if isinstance(v, pa.Array) else v for c, v in out.items()})
    return frame[good].reset_index(drop=True).assign(**{RECORD: first + np.flatnonzero(good)})


def _cost_checks(out: dict) -> list[tuple[str, str, np.ndarray]]:
    """An unplanned visit cheaper than a planned one (both given) would make running dry the cheap plan."""
    visit, emergency = (np.asarray(out[c], dtype="float64") for c in ("visit_cost", "emergency_visit_cost"))
    with np.errstate(invalid="ignore"):
        return [("emergency_visit_cost", "emergency_visit_cost below visit_cost", emergency < visit)]


def _region_checks(config: Config, out: dict) -> list[tuple[str, str, np.ndarray]]:
    """Country and subdivision codes the holidays package knows, in its spelling ('in' -> 'IN'),
    written back into `out`; one check per unknown pair (an empty country is the config's)."""
    country = pd.Series(_as_objects(out["country"]), dtype=object)
    subdivision = pd.Series(_as_objects(out["subdivision"]), dtype=object)
    pairs = pd.DataFrame({"country": country.fillna(config.devices.country), "subdivision": subdivision.fillna("")})
    checks = []
    for (code, sub), rows in pairs.groupby(["country", "subdivision"], sort=False).groups.items():
        mask = np.zeros(len(pairs), dtype=bool)
        mask[np.asarray(rows)] = True
        try:
            canonical, canonical_sub = canonical_region(code, sub)
        except UnknownRegionError as exc:
            checks.append((exc.column, str(exc), mask))
            continue
        country[mask & country.notna().to_numpy()] = canonical
        subdivision[mask & subdivision.notna().to_numpy()] = canonical_sub
    out["country"], out["subdivision"] = country.to_numpy(), subdivision.to_numpy()
    return checks


def _as_objects(values) -> np.ndarray:
    """A text column of `_parse_devices` (Arrow, or an all-missing numpy fill) as an object array."""
    return values.to_numpy(zero_copy_only=False) if isinstance(values, pa.Array) else np.asarray(values, dtype=object)


def _invalid(values: pa.Array, valid: Callable[[str], bool]) -> np.ndarray:
    """Mask of non-empty cells failing `valid` (checked once per distinct value)."""
    bad = [v for v in pc.unique(values).drop_null().to_pylist() if not valid(v)]
    return mask_of(pc.is_in(values, value_set=pa.array(bad, pa.string())))


def _is_kind(value: str) -> bool:
    return value in DEVICE_KINDS


def _is_weekdays(value: str) -> bool:
    try:
        parse_weekdays(value)
    except ValueError:
        return False
    return True


def _is_zone(value: str) -> bool:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _parse_balances(run: _Run, batch: pa.RecordBatch, first: int) -> pd.DataFrame:
    ids = device_ids(batch["device_id"])
    ns = to_timestamps(batch["as_of"], as_written=True)[0]  # the morning counted, as the counter wrote it
    balance, checks = run.amount_checks(batch, "balance")
    good = run.screen(batch, first, [*run.id_checks(ids), *run.date_checks(batch, "as_of", ns), *checks])
    return pd.DataFrame(
        {
            "device_id": ids.filter(pa.array(good)).to_pandas(),
            "as_of": days_of(ns[good]).astype("datetime64[ns]"),
            "balance": balance[good],
            RECORD: first + np.flatnonzero(good),
        }
    )


def _parse_status(run: _Run, batch: pa.RecordBatch, first: int) -> pd.DataFrame:
    ids = device_ids(batch["device_id"])
    start = run.local_ns(batch, "start", ids)
    end = run.local_ns(batch, "end", ids)
    end_empty = is_empty(batch["end"])
    state = pc.utf8_lower(text(batch["state"]))
    checks = [
        *run.id_checks(ids),
        *run.date_checks(batch, "start", start),
        ("end", "unparseable end", (end == NAT) & ~end_empty),
        ("end", "end before start", (end != NAT) & (end < start)),
        ("state", "missing state", mask_of(pc.is_null(state))),
        ("state", "unknown state (expected cash_out or offline)", _invalid(state, STATUS_STATES.__contains__)),
    ]
    good = run.screen(batch, first, checks)
    return pd.DataFrame(
        {
            "device_id": ids.filter(pa.array(good)).to_pandas(),
            "start": start[good].view("datetime64[ns]"),
            "end": end[good].view("datetime64[ns]"),
            "state": state.filter(pa.array(good)).to_pandas(),
            RECORD: first + np.flatnonzero(good),
        }
    )


LOADERS = {
    "transactions": _load_transactions,
    "daily": _load_daily,
    "devices": lambda run, staging: _load_small(run, staging, "devices", _parse_devices),
    "balances": lambda run, staging: _load_small(run, staging, "balances", _parse_balances),
    "status": lambda run, staging: _load_small(run, staging, "status", _parse_status),
}
