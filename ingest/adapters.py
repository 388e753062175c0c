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


def nn5_to_daily(wide: pd.DataFrame, days_later: int = 0) -> pd.DataFrame:
    """The NN5 competition's ATM table (`Date;N101;...;N211`, one column per ATM) as a `daily` input frame.

    Blank cells are days not recorded (no row); amounts are in thousands and come back as units.
    `days_later` moves every date: the file's holiday dips fall a day before the holidays.
    """
    atms = [column for column in wide.columns if str(column).startswith("N")]
    long = wide.melt(id_vars="Date", value_vars=atms, var_name="device_id", value_name="withdrawals").dropna()
    return pd.DataFrame(
        {
            "device_id": long["device_id"].astype("string"),
            "date": pd.to_datetime(long["Date"]) + pd.Timedelta(days=days_later),
            "withdrawals": long["withdrawals"].astype("float64") * 1000,
        }
    ).sort_values(["device_id", "date"], ignore_index=True)
