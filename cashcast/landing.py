"""The landing folder: new files arrive, get ingested, and move to processed/ or failed/.

The kind of a file comes from the subfolder it sits in (`landing/status/outages.csv`), else from its name
(`transactions-2026-11-27.csv`, `daily_branch.parquet`), else from its header (the one kind whose required
columns it holds). A file moves to the same subfolder of processed/ or failed/; a failed file keeps a
`.reason.txt`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import ingest
from cashcast.config import Config
from cashcast.workspace import Workspace

# Ingest order within one night: the master first (so unknown devices are caught), then history.
KINDS = ("devices", "daily", "transactions", "status", "balances")


def kind_of(path: Path, landing: Path) -> str:
    """The ingest kind named by the file's subfolder or the start of its name, else the one its header's columns
    fit (`atm_export.csv` with device_id, date, withdrawals is daily)."""
    relative = path.relative_to(landing)
    if len(relative.parts) > 1 and relative.parts[0] in KINDS:
        return relative.parts[0]
    for kind in KINDS:
        if path.name.lower().startswith(kind):
            return kind
    kind = ingest.kind_from_header(path)
    if kind is not None:
        return kind
    raise ingest.IngestError(
        f"{path}: cannot tell the kind of file from its name or its columns; name it <kind>-*.csv or put it in "
        f"landing/<kind>/ (kinds: {', '.join(KINDS)})"
    )


def _order(path: Path, landing: Path) -> tuple[int, str, str]:
    """Kind (the master first), then the name without its extension, then the extension: by the name alone
    'daily-10-30-corrected.csv' sorted before 'daily-10-30.csv' ('-' before '.'), and the original's values
    won over its correction's."""
    try:
        kind = KINDS.index(kind_of(path, landing))
    except ingest.IngestError:
        kind = len(KINDS)
    return kind, path.stem, path.suffix


def pending_files(ws: Workspace) -> list[Path]:
    """Files waiting in the landing folder: device master first, then by name (corrections after originals)."""
    if not ws.landing.exists():
        return []
    files = [
        p for p in ws.landing.rglob("*") if p.is_file() and not p.name.startswith(".")
    ]  # every file, so one that cannot be read goes to failed/ with its reason instead of lying there unseen
    return sorted(files, key=lambda p: _order(p, ws.landing))


def _move(path: Path, landing: Path, to: Path) -> Path:
    """Move a landing file to the same subfolder of `to` (so a file's kind folder stays), never over another."""
    folder = to / path.parent.relative_to(landing)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    if target.exists():
        stamp = 1
        while (folder / f"{path.stem}.{stamp}{path.suffix}").exists():
            stamp += 1
        target = folder / f"{path.stem}.{stamp}{path.suffix}"
    shutil.move(str(path), target)
    return target


def process_file(ws: Workspace, config: Config, path: Path) -> dict[str, Any]:
    """Ingest one landing file and move it; a bad file goes to failed/ and never stops the others."""
    try:
        kind = kind_of(path, ws.landing)
        report = ingest.ingest_file(path, kind, ws, config)
    except Exception as exc:  # noqa: BLE001 - whatever one file does, the night goes on with the others
        reason = str(exc) if isinstance(exc, ingest.IngestError | ValueError) else f"{type(exc).__name__}: {exc}"
        return _failed(ws, path, reason)
    if report.rows_read and report.rows_rejected == report.rows_read:  # day-first dates, say: nothing of it loaded
        reason = f"{path}: every row ({report.rows_read}) was rejected; the reasons are in {report.rejects_path}"
        return {**report.to_dict(), **_failed(ws, path, reason), "kind": kind}
    target = _move(path, ws.landing, ws.processed)
    return {**report.to_dict(), "file": path.name, "outcome": "processed", "kind": kind, "moved_to": str(target)}


def _failed(ws: Workspace, path: Path, reason: str) -> dict[str, Any]:
    """Move a landing file to failed/ with its reason beside it."""
    target = _move(path, ws.landing, ws.failed)
    target.with_name(target.name + ".reason.txt").write_text(reason + "\n")
    return {"file": path.name, "outcome": "failed", "reason": reason, "moved_to": str(target)}


def attention_note(item: dict[str, Any]) -> str | None:
    """One line for a landing file someone should look at, None for one loaded whole: a file that failed
    (which, why, where it went), or one loaded with rows rejected (how many, where their reasons are)."""
    if item["outcome"] == "failed":
        return f"landing file {item['file']} failed and was moved to {item['moved_to']}: {item['reason']}"
    if item.get("rows_rejected"):
        return (
            f"landing file {item['file']}: {item['rows_rejected']} of {item['rows_read']} rows rejected and not "
            f"loaded; the rows and their reasons are in {item['rejects_path']}"
        )
    return None
