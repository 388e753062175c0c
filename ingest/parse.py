"""Reading raw files in bounded batches and turning text cells into typed numpy arrays.

CSV files are streamed with pyarrow (every column read as text, so one bad cell rejects one row
rather than failing the file); Parquet files are read batch by batch. Rows with the wrong number of
fields are kept aside as rejects. Row numbers follow a spreadsheet: the header is row 1, the first
data row is row 2, blank lines count as rows and a quoted field spanning lines is one row.
Dates and timestamps are ISO 8601; a value with a zone offset (`+08:00`, `Z`) is flagged so the
caller can convert it to the device's local time.
"""

from __future__ import annotations

import csv
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from ingest.report import IngestError

NAT = np.iinfo(np.int64).min
BEYOND = np.iinfo(np.int64).max  # a date past 2262, the end of datetime64[ns]: later than any limit
_MAX_US = BEYOND // 1000
# A zone offset ends the value: Z, +08:00, +0800, or +08 after a time of day (PostgreSQL writes that; after a
# bare date, -08 is the day).
ZONE_SUFFIX = r"(Z|[+-]\d\d:?\d\d|\d\d:\d\d(:\d\d(\.\d+)?)?[+-]\d\d)$"
ZONE_PART = r"(Z|[+-]\d\d(:?\d\d)?)$"  # the offset itself, once ZONE_SUFFIX said there is one
# A whole calendar day first (2024-01-08, 2024-1-8 or 20240108): ISO's reduced forms ('2026', '2026-05') name no
# day, and pandas would read them as the 1st of the year or month.
WHOLE_DAY = r"^\s*\d{4}(-\d{1,2}-\d{1,2}|\d\d\d\d)(?:$|[T\s])"
# Year first with slashes or dots (2024/01/08, 2024.1.8: East Asian and some bank exports) is as unambiguous as
# ISO; it is read as the dashed form. Day-first and month-first forms (08/01/2024) stay refused: which is which?
YEAR_FIRST_SEPARATED = [
    (rf"^(\s*\d{{4}}){sep}(\d{{1,2}}){sep}(\d{{1,2}})(?:$|([T\s]))", r"\1-\2-\3\4") for sep in ("/", r"\.")
]
_MULTIPLIER = np.uint64(0x100000001B3)
# Text read per CSV batch, whatever batch_rows says: small batches stay in cache and keep the peak
# memory flat (measured: 16 MiB batches are faster than 60 MiB ones and use ~40% less memory).
MAX_BLOCK_BYTES = 16 << 20


UNNAMED = "unnamed_"  # + the column's position: a blank header cell (Excel saves empty trailing columns)
TEXT_SUFFIXES = (".csv", ".txt", ".tsv")  # CSV as spreadsheets and exports name it


@dataclass
class Source:
    """An input file opened for batch reading; `bad_texts` fills while batches are read."""

    path: Path
    columns: list[str]
    batch_rows: int
    bad_texts: list[str] = field(default_factory=list)
    size_bytes: int = 0
    delimiter: str = ","

    @classmethod
    def open(cls, path: str | Path, batch_rows: int) -> Source:
        """Check the file can be read and has a header; raise IngestError naming it otherwise."""
        path = Path(path)
        if path.is_dir():
            raise IngestError(f"{path}: a folder, not a file")
        if not path.is_file():
            raise IngestError(f"{path}: file not found")
        if path.suffix.lower() not in TEXT_SUFFIXES + (".parquet",):
            endings = ", ".join(TEXT_SUFFIXES)
            raise IngestError(f"{path}: not a CSV or Parquet file (expected a name ending in {endings} or .parquet)")
        size = path.stat().st_size
        delimiter = ","
        if path.suffix.lower() == ".parquet":
            try:
                schema = pq.ParquetFile(path).schema_arrow
            except (pa.ArrowException, OSError) as exc:
                raise IngestError(f"{path}: not a readable Parquet file ({exc})") from None
            names = schema.names
            nested = [f"{field.name} ({field.type})" for field in schema if pa.types.is_nested(field.type)]
            if nested:
                raise IngestError(f"{path}: column(s) {', '.join(nested)} hold lists or records, not single values")
        else:
            names, delimiter = _csv_header(path)
        columns = [str(name).strip().lower() or f"{UNNAMED}{number}" for number, name in enumerate(names, start=1)]
        duplicated = sorted({c for c in columns if columns.count(c) > 1})
        if duplicated:
            raise IngestError(f"{path}: column(s) {duplicated} appear more than once in the header")
        return cls(path, columns, batch_rows, size_bytes=size, delimiter=delimiter)

    def require(self, required: list[str]) -> None:
        missing = [c for c in required if c not in self.columns]
        if missing:
            raise IngestError(f"{self.path}: missing required column(s) {missing}; found {self.columns}")

    def batches(self) -> Iterator[pa.RecordBatch]:
        """Record batches with the normalised column names (CSV: all text)."""
        try:
            if self.path.suffix.lower() == ".parquet":
                for batch in pq.ParquetFile(self.path).iter_batches(batch_size=self.batch_rows):
                    yield pa.RecordBatch.from_arrays(batch.columns, names=self.columns)
            else:
                yield from self._csv_batches()
        except pa.ArrowInvalid as exc:
            raise IngestError(f"{self.path}: cannot read the file: {str(exc).splitlines()[0]}") from None

    def _csv_batches(self) -> Iterator[pa.RecordBatch]:
        with open(self.path, "rb") as handle:
            sample = handle.read(1 << 20)
        header_only = not any(end in sample.rstrip(b"\r\n") for end in (b"\r", b"\n"))
        if len(sample) < 1 << 20 and header_only:
            return  # the header alone (pyarrow refuses one without a line end): no rows
        bytes_per_row = max(len(sample) / max(sample.count(b"\n"), 1), 8.0)

        def keep_aside(row: pcsv.InvalidRow) -> str:
            self.bad_texts.append(row.text)
            return "skip"

        last = None
        try:
            reader = pcsv.open_csv(
                self.path,
                read_options=pcsv.ReadOptions(
                    column_names=self.columns,
                    skip_rows=1,
                    block_size=int(min(max(self.batch_rows * bytes_per_row, 1 << 14), MAX_BLOCK_BYTES)),
                    use_threads=True,
                ),
                # A quoted cell may hold line ends (a memo): the reader's blocks must not split inside one.
                parse_options=pcsv.ParseOptions(
                    delimiter=self.delimiter, invalid_row_handler=keep_aside, newlines_in_values=True
                ),
                convert_options=pcsv.ConvertOptions(
                    column_types={c: pa.string() for c in self.columns},
                    strings_can_be_null=True,
                    null_values=[""],
                ),
            )
            for batch in reader:
                if batch.num_rows:
                    last = batch
                yield batch
        except pa.ArrowInvalid as exc:
            if "UTF8" not in str(exc):
                raise
            row = first_row_not_utf8(self.path)
            raise IngestError(f"{self.path}: row {row}: not UTF-8 text; {SAVE_AS_UTF8}") from None
        self._refuse_unclosed_quote(last)

    def _refuse_unclosed_quote(self, last: pa.RecordBatch | None) -> None:
        """Stop the file when a quote opened in it is never closed: the reader then takes every line after the
        quote as one cell, which ends the file's last record (or its last wrong-width line). Only that record is
        looked at, against the file's end: a quoted memo over several lines elsewhere costs nothing."""
        candidates = []
        if last is not None:
            final = last.slice(last.num_rows - 1)
            candidates = [(name, final.column(k)[0].as_py()) for k, name in enumerate(self.columns)]
        if self.bad_texts:
            candidates.append((None, self.bad_texts[-1]))
        for name, cell in candidates:
            if not isinstance(cell, str) or not ("\n" in cell or "\r" in cell):
                continue
            swallowed = cell.rstrip("\r\n").encode()
            with open(self.path, "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                back = min(size, len(swallowed) + 2)  # the cell, and the file's last line end
                handle.seek(size - back)
                tail = handle.read().rstrip(b"\r\n")
                if not tail.endswith(swallowed):
                    continue  # the cell closes before the end of the file
                start, line = size - back + len(tail) - len(swallowed), 1
                handle.seek(0)
                while start > 0:  # the quote's line: read up to it once, and only here
                    block = handle.read(min(start, 1 << 24))
                    line, start = line + block.count(b"\n"), start - len(block)
                where = f"line {line}" if name is None else f"line {line}, column {name}"
                raise IngestError(
                    f"{self.path}: {where}: a quote opens a cell there and is never closed, so every line after it"
                    " would be read as part of that cell; close or remove the quote and ingest the file again"
                )

    def bad_lines(self) -> list[tuple[int, str]]:
        """(row number, text) of the lines skipped for a wrong number of fields, once all batches are read.

        Threaded parsing does not number them, so the (rare) files that have any are scanned once more.
        """
        if not self.bad_texts:
            return []
        found = self._layout[0]
        if len(found) == len(self.bad_texts):
            return found
        # The two parsers disagree on an odd line: keep the reader's count, number what the scan located.
        rows = [number for number, _ in found] + [0] * len(self.bad_texts)
        return list(zip(rows, self.bad_texts, strict=False))

    def spreadsheet_rows(self, records: np.ndarray) -> np.ndarray:
        """Spreadsheet row numbers (header = row 1) of parsed records, given as 0-based indices in file order.

        The reader skips blank lines and wrong-width lines, which a spreadsheet still shows as rows; only files
        that have any are scanned again to count them.
        """
        rows = np.asarray(records, dtype=np.int64) + 2
        if self.path.suffix.lower() == ".parquet" or not (self.bad_texts or self._has_blank_line):
            return rows
        skipped = np.asarray(self._layout[1], dtype=np.int64)
        # The i-th skipped row (0-based) has skipped[i] - i - 1 shown rows before it; it precedes every record
        # whose row would otherwise be above that count.
        before = skipped - np.arange(1, len(skipped) + 1)
        return rows + np.searchsorted(before, rows, side="left")

    @functools.cached_property
    def _layout(self) -> tuple[list[tuple[int, str]], list[int]]:
        """The wrong-width lines as (row, text), and the rows of every skipped line, blank ones included."""
        bad, skipped = [], []
        with open(self.path, encoding="utf-8-sig", newline="") as handle:
            cells = csv.reader(handle, delimiter=self.delimiter)
            next(cells, None)
            for number, record in enumerate(cells, start=2):
                if len(record) != len(self.columns) and any(record):
                    bad.append((number, self.delimiter.join(record)))
                if len(record) != len(self.columns):
                    skipped.append(number)
        return bad, skipped

    @functools.cached_property
    def _has_blank_line(self) -> bool:
        """Whether the text file has an empty line (read in blocks, without parsing; once per file)."""
        tail = b""
        with open(self.path, "rb") as handle:
            while block := handle.read(1 << 24):
                text = tail + block
                if b"\n\n" in text or b"\n\r\n" in text:
                    return True
                tail = text[-2:]
        return False


def _csv_header(path: Path) -> tuple[list[str], str]:
    """The header's cells and the file's delimiter: a comma, or the semicolon or tab of a header that has
    no comma (spreadsheets in locales with a decimal comma save semicolon-separated CSV)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            first = handle.readline()
            if not first.strip() and handle.read(1 << 16).strip():
                raise IngestError(f"{path}: line 1 is blank; the header (column names) must be the first line")
            delimiter = next((d for d in (";", "\t") if "," not in first and d in first), ",")
            header = next(csv.reader([first], delimiter=delimiter), None)
    except UnicodeDecodeError:
        row = first_row_not_utf8(path)
        raise IngestError(f"{path}: row {row}: not UTF-8 text ({_encoding_hint(path)}); {SAVE_AS_UTF8}") from None
    except (OSError, csv.Error) as exc:
        raise IngestError(f"{path}: cannot read the file ({exc})") from None
    if not header or not any(cell.strip() for cell in header):
        raise IngestError(f"{path}: the file is empty")
    return header, delimiter


SAVE_AS_UTF8 = "save it as UTF-8 CSV (in Excel: Save As, 'CSV UTF-8 (Comma delimited)')"


def first_row_not_utf8(path: Path) -> int:
    """The line of the file's first byte that is not UTF-8 (a line of a spreadsheet row, but for quoted line ends)."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 0


def _encoding_hint(path: Path) -> str:
    """What the file looks like instead: Excel's 'Unicode Text' is UTF-16 with a byte-order mark."""
    with open(path, "rb") as handle:
        start = handle.read(2)
    return "UTF-16, as Excel's 'Unicode Text' saves" if start in (b"\xff\xfe", b"\xfe\xff") else "another encoding"


def text(column: pa.Array) -> pa.Array:
    """Trimmed text with empty cells as null."""
    values = pc.utf8_trim_whitespace(column.cast(pa.string()))
    return pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)


def device_ids(column: pa.Array) -> pa.Array:
    """Trimmed device ids, without the formula escape Cashcast's CSVs put on an id like -5 ('-5): an id copied from
    a plan into a file is that device, at ingest and in `plan --balances` alike."""
    ids = text(column)
    quoted = pc.starts_with(ids, "'")
    if not pc.any(quoted).as_py():
        return ids
    escaped = pc.fill_null(pc.match_substring_regex(ids, r"^'[=+\-@]"), False)  # stays Arrow for if_else
    return pc.if_else(escaped, pc.utf8_slice_codeunits(ids, 1), ids)


def is_empty(column: pa.Array) -> np.ndarray:
    """Mask of empty cells (null, or "" in a text column); a blank of spaces counts as a value."""
    empty = pc.is_null(column)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        empty = pc.or_kleene(empty, pc.equal(column, ""))
    return mask_of(empty)


# 1.234 or 12.000: a thousand and more where a comma is decimal (0.995 is a fraction either way)
THOUSANDS_DOT = r"^\s*[+-]?[1-9]\d{0,2}(\.\d{3})+\s*$"


def to_float(column: pa.Array) -> np.ndarray:
    """float64 with NaN for empty, unparseable or infinite cells (the caller tells them apart with `is_null`)."""
    if pa.types.is_boolean(column.type):
        return np.full(len(column), np.nan)  # True is no amount
    try:
        values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:  # spaces around a number, or text that is none
        values = pd.to_numeric(pd.Series(text(column).to_pandas()), errors="coerce").to_numpy(dtype=np.float64)
    return np.where(np.isfinite(values), values + 0.0, np.nan)  # + 0.0: -0 is 0


def thousands_dots(column: pa.Array) -> np.ndarray:
    """Mask of text cells written like 1.234 or 12.000: twelve thousand in a semicolon-separated file from a
    decimal-comma locale, twelve elsewhere."""
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return np.zeros(len(column), dtype=bool)
    return mask_of(pc.match_substring_regex(column, THOUSANDS_DOT))


def mask_of(values: pa.Array) -> np.ndarray:
    """A boolean Arrow array as a numpy mask, null as False."""
    return pc.fill_null(values, False).to_numpy(zero_copy_only=False)


def to_timestamps(column: pa.Array, as_written: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(wall-clock ns as int64 with NAT for empty/bad cells, mask of values that carried a zone).

    Values without a zone are returned as written; values with one are returned in UTC, or with `as_written`
    at the wall time written (a business date sent as 2024-01-08T00:00Z is the 8th wherever the device is).
    """
    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        # A Parquet writer's 20261101: read as the CSV text would be, not as seconds after 1970.
        column, kind = column.cast(pa.string()), pa.string()
    if pa.types.is_timestamp(kind):
        zoned = kind.tz is not None
        return _ns(pc.local_timestamp(column) if zoned and as_written else column), np.full(len(column), zoned)
    if pa.types.is_date(kind):
        return _ns(column.cast(pa.timestamp("us"))), np.zeros(len(column), dtype=bool)
    try:
        return _ns(column.cast(pa.timestamp("us"))), np.zeros(len(column), dtype=bool)
    except pa.ArrowInvalid:
        values = text(column)
    for pattern, dashed in YEAR_FIRST_SEPARATED:
        values = pc.replace_substring_regex(values, pattern, dashed)
    values = pc.if_else(pc.match_substring_regex(values, WHOLE_DAY), values, pa.scalar(None, pa.string()))
    zoned = mask_of(pc.match_substring_regex(values, ZONE_SUFFIX))
    if as_written and zoned.any():  # only where there is an offset: a bare date's -08 is its day
        values = pc.if_else(pa.array(zoned), pc.replace_substring_regex(values, ZONE_PART, ""), values)
    out = np.full(len(column), NAT, dtype=np.int64)
    strings = pd.Series(values.to_pandas(), dtype="object")
    plain = ~zoned | as_written
    if plain.any():
        out[plain], other_zone = _naive_ns(strings[plain])
        out[np.flatnonzero(plain)[other_zone]] = NAT  # a zone written some other way (' UTC'): unparseable
    if not plain.all():
        aware = pd.to_datetime(strings[~plain], format="ISO8601", errors="coerce", utc=True)
        out[~plain] = _ns(pa.array(aware.dt.tz_localize(None)))
    return out, zoned


# After a time of day, a letter or a sign starts a zone in some form ZONE_SUFFIX does not take (' UTC', '+8').
OTHER_ZONE = r":\d\d(?::\d\d)?(?:\.\d+)?\s*[A-Za-z+-]"


def _naive_ns(strings: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """ns of ISO text without a zone, and the mask of values that had one in a form ZONE_SUFFIX does not know
    (refused: pandas would parse them, and refuses a column that mixes them with plain values). Vectorised; one
    value at a time only for forms neither pattern foresaw (49 us a value: 8 minutes for 10 million)."""
    parsed = _parse_plain(strings)
    other_zone = np.zeros(len(strings), dtype=bool)
    if parsed is None:  # only once the plain parse has failed: a regex per cell costs
        other_zone = strings.str.contains(OTHER_ZONE, regex=True, na=False).to_numpy()
        parsed = _parse_plain(strings.where(~other_zone, None))
    if parsed is not None:
        return parsed, other_zone
    stamps = [pd.to_datetime(value, format="ISO8601", errors="coerce") for value in strings.where(~other_zone, None)]
    zoned = np.array([stamp is not pd.NaT and stamp.tzinfo is not None for stamp in stamps], dtype=bool)
    kept = [pd.NaT if zone else stamp for stamp, zone in zip(stamps, zoned, strict=True)]
    return _ns(pa.array(pd.to_datetime(pd.Series(kept, dtype="object")))), other_zone | zoned


def _parse_plain(strings: pd.Series) -> np.ndarray | None:
    """ns of ISO text, or None when some value carries a zone pandas reads (or the column mixes such values)."""
    try:
        parsed = pd.to_datetime(strings, format="ISO8601", errors="coerce")
    except (ValueError, TypeError):
        return None
    return _ns(pa.array(parsed)) if parsed.dt.tz is None else None


def days_of(ns: np.ndarray) -> np.ndarray:
    """The calendar day of int64 ns wall-clock times (NaT stays NaT)."""
    return ns.view("datetime64[ns]").astype("datetime64[D]")


def _ns(values: pa.Array) -> np.ndarray:
    """int64 ns since the epoch; NAT for nulls, BEYOND for dates past 2262 (they still count as future)."""
    micros = pc.fill_null(pc.cast(values, pa.timestamp("us", tz=values.type.tz), safe=False).cast(pa.int64()), NAT)
    micros = micros.to_numpy(zero_copy_only=False)
    ns = np.clip(micros, -_MAX_US, _MAX_US) * 1000
    ns[micros > _MAX_US] = BEYOND
    ns[micros < -_MAX_US] = NAT
    return ns


def to_local(ns: np.ndarray, zoned: np.ndarray, zones: np.ndarray) -> np.ndarray:
    """Convert the zoned (UTC) values to the wall time of each row's zone; naive ones stay."""
    out = ns.copy()
    convert = zoned & (ns != NAT) & (ns != BEYOND)
    for zone in np.unique(zones[convert]):
        rows = convert & (zones == zone)
        utc = pd.DatetimeIndex(ns[rows].view("datetime64[ns]")).tz_localize("UTC")
        out[rows] = utc.tz_convert(str(zone)).tz_localize(None).to_numpy(dtype="datetime64[ns]").view(np.int64)
    return out


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads every input bit over the whole 64-bit word."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def hash_strings(column: pa.Array) -> np.ndarray:
    """Stable 64-bit hash of each string (nulls hash like ""), vectorised over Arrow's buffers.

    pandas' hash_array needs Python objects (~2 s per million); this is a polynomial hash computed one
    character position at a time over the strings still that long, then mixed. Stable across runs
    and machines, so the keys can be stored in the lake.
    """
    values = pc.fill_null(column.cast(pa.large_string()), "")
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    n = len(values)
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int64)[values.offset : values.offset + n + 1]
    data_buffer = values.buffers()[2]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.empty(0, np.uint8)
    lengths = np.diff(offsets)
    order = np.argsort(-lengths, kind="stable")
    starts, longest_first = offsets[:-1][order], lengths[order]
    still_long = np.searchsorted(-longest_first, -np.arange(int(lengths.max(initial=0))), side="left")
    hashed = np.zeros(n, dtype=np.uint64)
    for position, count in enumerate(still_long):
        char = data[starts[:count] + position].astype(np.uint64) + np.uint64(1)
        hashed[:count] = hashed[:count] * _MULTIPLIER + char
    out = np.empty(n, dtype=np.uint64)
    out[order] = _mix(hashed ^ _mix(longest_first.astype(np.uint64)))
    return out


def combine_hashes(*parts: np.ndarray) -> np.ndarray:
    """One 64-bit key from several uint64 arrays (order matters)."""
    key = np.zeros(len(parts[0]), dtype=np.uint64)
    for part in parts:
        key = _mix(key * np.uint64(0x9E3779B97F4A7C15) + part.astype(np.uint64, copy=False))
    return key
