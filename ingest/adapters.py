"""Mappings from known outside layouts to the `daily` input contract."""

from __future__ import annotations

import pandas as pd


def cub_to_daily(frame: pd.DataFrame) -> pd.DataFrame:
    """City Union Bank ATM table (`data/cub_atm/daily.csv`) as a `daily` input frame.

    series_id -> device_id, total_amount_withdrawn -> withdrawals, no_of_withdrawals -> n_withdrawals;
    the ATMs take no deposits, so deposits stay absent (NaN).
    """
    return pd.DataFrame(
        {
            "device_id": frame["series_id"].astype("string"),
            "date": pd.to_datetime(frame["date"]),
            "withdrawals": frame["total_amount_withdrawn"].astype("float64"),
            "n_withdrawals": frame["no_of_withdrawals"].astype("float64"),
        }
    )
