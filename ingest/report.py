"""What an ingest tells its caller: the row accounting, or one clear line when a file is unusable."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path


class IngestError(ValueError):
    """A file that cannot be ingested at all; the message is one line naming the file (and column/row)."""


class IngestWarning(UserWarning):
    """Something about an ingested file its sender should know: every row rejected, columns ignored, a note once
    the load is committed (repeated txn_ids, changed days), a landing file that failed or lost rows."""


@dataclass(frozen=True)
class IngestReport:
    """Row accounting of one file: rows_read == rows_loaded + rows_rejected + rows_duplicate."""

    file: str
    rows_read: int
    rows_loaded: int
    rows_rejected: int
    rows_duplicate: int
    rejects_path: str | None = None

    def __post_init__(self) -> None:
        if self.rows_read != self.rows_loaded + self.rows_rejected + self.rows_duplicate:
            raise AssertionError(f"{self.file}: row accounting does not add up: {self}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def line(self) -> str:
        where = f"rejects in {self.rejects_path}" if self.rejects_path else "no rejects"
        return (
            f"{Path(self.file).name}: read {self.rows_read}, loaded {self.rows_loaded}, "
            f"rejected {self.rows_rejected}, duplicates {self.rows_duplicate}; {where}"
        )
