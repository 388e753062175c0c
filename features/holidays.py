"""Public holidays and working days per country, from the `holidays` package."""

from __future__ import annotations

import holidays as holidays_lib
import pandas as pd


def holiday_table(country: str, subdivision: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """One row per day in [start, end]: date, is_holiday, is_working_day, holiday_name.

    `is_working_day` honours make-up workdays (China's weekend workdays) and holiday-swapped weekdays.
    """
    dates = pd.date_range(pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize(), freq="D")
    years = list(range(dates[0].year, dates[-1].year + 1)) if len(dates) else []
    calendar = holidays_lib.country_holidays(country, subdiv=subdivision or None, years=years)
    names = [calendar.get(d.date()) or "" for d in dates]
    is_holiday = [bool(n) for n in names]
    workdays = {d for d in getattr(calendar, "weekend_workdays", set())}
    is_working = [
        (d.date() in workdays) or (d.weekday() < 5 and not h) for d, h in zip(dates, is_holiday, strict=True)
    ]
    return pd.DataFrame(
        {"date": dates, "is_holiday": is_holiday, "is_working_day": is_working, "holiday_name": names}
    )
