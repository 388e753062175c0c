"""Raw files (CSV or Parquet) into the workspace's Parquet lake, and the readers other stages use."""

from ingest.lake import read_daily, read_daily_column, read_table
from ingest.load import ingest_file, kind_from_header, open_source
from ingest.report import IngestError, IngestReport

__all__ = [
    "IngestError",
    "IngestReport",
    "ingest_file",
    "kind_from_header",
    "open_source",
    "read_daily",
    "read_daily_column",
    "read_table",
]
