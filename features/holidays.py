"""Public holidays, working days and holiday blocks per country, from the `holidays` package.

Cash demand reacts to *blocks* of closed days (an 8-day Spring Festival drains ATMs days ahead), not
to single holiday names, so the features here describe runs of non-working days that contain a holiday.
"""

from __future__ import annotations

import re
import warnings
from datetime import date, timedelta
from functools import lru_cache

import holidays as holidays_lib
import numpy as np
import pandas as pd

# Working days before / after a long block that get a window count (1 = adjacent working day).
HOLIDAY_WINDOW_DAYS = 5
LONG_BLOCK_DAYS = 3
# Named block flags: a block gets the flag when one of its holiday names matches the pattern.
NAMED_BLOCKS = {
    "block_spring_festival": re.compile(r"spring festival|chinese new year", re.IGNORECASE),
    "block_golden_week": re.compile(r"national day", re.IGNORECASE),
    "block_christmas": re.compile(r"christmas|boxing day", re.IGNORECASE),
    "block_easter": re.compile(r"easter|good friday", re.IGNORECASE),
}
# Flags whose holiday name is too common to mean the block elsewhere: many countries have a "National Day".
BLOCK_COUNTRIES = {"block_golden_week": {"CN"}}
BLOCK_COLUMNS = [
    "holiday_block_length",
    "day_in_block",
    "days_to_next_holiday",
    "days_since_last_holiday",
    *NAMED_BLOCKS,
    "block_other",
    "pre_holiday_window",
    "post_holiday_window",
    "next_block_length",
    "year_back_days",
]
ESTIMATED = " (estimated)"
YEAR_BACK_DAYS = 364  # 52 weeks: the same weekday a year earlier
# Days before and after a holiday block read against the same holiday's block a year earlier, and how far
# apart (days) two blocks of one holiday may lie in consecutive years (lunar holidays move by up to a month).
ALIGN_WINDOW_DAYS = 7
SAME_HOLIDAY_GAP = (330, 400)
HOLIDAY_LANGUAGE = "en_US"
US_DATE = re.compile(r"\b(\d{2})/(\d{2})/(\d{4})\b")  # month/day/year in the package's en_US labels
_NAME_SUFFIX = re.compile(r"\s*\((observed|estimated)\)", re.IGNORECASE)


class HolidayEstimateWarning(UserWarning):
    """A year's official holiday schedule is not known yet; rule-based estimates are used."""


def holiday_table(
    country: str,
    subdivision: str,
    start: pd.Timestamp,
    end: pd.Timestamp,
    needed: tuple[pd.Timestamp, pd.Timestamp] | None = None,
) -> pd.DataFrame:
    """One row per day in [start, end]: date, is_holiday, is_working_day, holiday_name.

    `is_working_day` honours make-up workdays (China's weekend workdays) and holiday-swapped weekdays.
    Years whose official make-up schedule is not published yet are estimated by rule, and one
    `HolidayEstimateWarning` names those of them inside `needed` (default [start, end]): a caller that
    pads its range for edge effects does not warn about a year it only pads into.
    """
    start, end = pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize()
    dates = pd.date_range(start, end, freq="D")
    if not len(dates):
        return pd.DataFrame(
            {
                "date": dates,
                "is_holiday": np.zeros(0, bool),
                "is_working_day": np.zeros(0, bool),
                "holiday_name": pd.Series([], dtype="string"),
            }
        )
    names: dict[date, str] = {}
    workdays: set[date] = set()
    estimated_years = []
    for year in range(start.year, end.year + 1):
        year_names, year_workdays, estimated = _holiday_year(country, subdivision or "", year)
        names.update(year_names)
        workdays |= year_workdays
        if estimated:
            estimated_years.append(year)
    first, last = (pd.Timestamp(day) for day in (needed or (start, end)))
    estimated_years = [year for year in estimated_years if first.year <= year <= last.year]
    if estimated_years:
        warnings.warn(
            f"holidays {holidays_lib.__version__} has no official working-day schedule for {country} "
            f"{estimated_years}: using rule-based holiday estimates without make-up workdays",
            HolidayEstimateWarning,
            stacklevel=2,
        )
    days = dates.date
    holiday_name = [names.get(d, "") for d in days]
    is_holiday = np.array([bool(n) for n in holiday_name])
    is_made_up = np.array([d in workdays for d in days])
    is_working = is_made_up | ((dates.day_of_week < 5) & ~is_holiday)
    return pd.DataFrame(
        {
            "date": dates.astype("datetime64[ns]"),
            "is_holiday": is_holiday,
            "is_working_day": np.asarray(is_working, bool),
            "holiday_name": pd.array(holiday_name, dtype="string"),
        }
    )


@lru_cache(maxsize=512)
def _holiday_year(country: str, subdivision: str, year: int) -> tuple[dict[date, str], frozenset[date], bool]:
    """Holiday names, make-up workdays and whether they are estimated, for one year (cached: CN is slow)."""
    try:
        # English names whatever the host's locale (LANG=de_DE gave China's in Chinese: the named blocks match
        # English names, and a model would read other features on another host); the country's own where it
        # has no English.
        calendar = holidays_lib.country_holidays(
            country, subdiv=subdivision or None, years=[year, year + 1], language=HOLIDAY_LANGUAGE
        )
    except NotImplementedError as exc:
        raise ValueError(f"holidays: unknown country/subdivision {country!r}/{subdivision!r}: {exc}") from None
    # en_US labels write a swapped day US-style ('substituted from 05/09/2026'): ISO, as every date Cashcast
    # writes, so a reader in China or Europe does not take it for 5 September. Only in en_US labels: another
    # language's may be day-first.
    english = HOLIDAY_LANGUAGE in getattr(calendar, "supported_languages", ())
    names = {d: US_DATE.sub(r"\3-\1-\2", n) if english else n for d, n in calendar.items() if d.year == year}
    # weekend_workdays holds stray dates of other years: keep this year's only.
    workdays = frozenset(d for d in getattr(calendar, "weekend_workdays", ()) if d.year == year)
    if _schedule_published(calendar, year):
        return names, workdays, False
    return _estimated_holidays(country, names, year), frozenset(), True


def _schedule_published(calendar: holidays_lib.HolidayBase, year: int) -> bool:
    """Countries that decree holiday swaps yearly (CN) are only exact for years the package lists."""
    if not getattr(calendar, "has_substituted_holidays", False):
        return True
    decreed = getattr(calendar, "special_public_holidays", None) or getattr(calendar, "special_holidays", {})
    return not decreed or year <= max(decreed)


def _estimated_holidays(country: str, names: dict[date, str], year: int) -> dict[date, str]:
    """Rule-based blocks for an unpublished year: China's 8-day Spring Festival and Oct 1-7 Golden Week."""
    if country.upper() != "CN":
        return names
    estimated = dict(names)
    new_year = [d for d, n in names.items() if "Chinese New Year (Spring Festival)" in n and "observed" not in n]
    spring_festival = [min(new_year) + timedelta(days=offset) for offset in range(-1, 7)] if new_year else []
    for day in spring_festival:
        estimated.setdefault(day, "Chinese New Year (Spring Festival)" + ESTIMATED)
    for day in range(1, 8):
        estimated.setdefault(date(year, 10, day), "National Day" + ESTIMATED)
    return estimated


def holiday_blocks(table: pd.DataFrame, distance_cap: int, country: str) -> pd.DataFrame:
    """Block features for the days of a `holiday_table` of `country` (contiguous days, padded by the caller).

    A block is a run of consecutive non-working days that contains at least one holiday, so a plain
    weekend is not a block but a Saturday glued to a Spring Festival is. Distances to blocks are 0 inside
    a block and capped at `distance_cap`; pre/post windows count working days to/from blocks of 3+ days.
    """
    n = len(table)
    idx = np.arange(n)
    working = table["is_working_day"].to_numpy(bool)
    holiday = table["is_holiday"].to_numpy(bool)
    names = table["holiday_name"].fillna("").to_numpy(object)

    closed = ~working
    run_start = closed & np.r_[True, ~closed[:-1]] if n else closed
    run_id = np.cumsum(run_start) - 1
    run_id[~closed] = -1
    n_runs = int(run_start.sum())
    runs = run_id[closed]
    run_length = np.bincount(runs, minlength=n_runs)
    run_has_holiday = np.bincount(runs, weights=holiday[closed], minlength=n_runs) > 0
    in_block = closed & run_has_holiday[np.maximum(run_id, 0)]

    block_length = np.where(in_block, run_length[np.maximum(run_id, 0)], 0)
    first_of_run = np.flatnonzero(run_start)
    day_in_block = np.where(in_block, idx - first_of_run[np.maximum(run_id, 0)] + 1, 0)

    out = pd.DataFrame({"date": table["date"].to_numpy()})
    out["holiday_block_length"] = block_length.astype(np.int16)
    out["day_in_block"] = day_in_block.astype(np.int16)
    next_block, last_block = _next_index(in_block), _previous_index(in_block)
    out["days_to_next_holiday"] = _capped(next_block - idx, next_block < n, distance_cap)
    out["days_since_last_holiday"] = _capped(idx - last_block, last_block >= 0, distance_cap)

    run_text = pd.Series(names[closed]).groupby(runs).agg("; ".join).reindex(range(n_runs), fill_value="")
    named_any = np.zeros(n, bool)
    for column, pattern in NAMED_BLOCKS.items():
        run_flag = run_text.str.contains(pattern).to_numpy(bool)
        if column in BLOCK_COUNTRIES and country.upper() not in BLOCK_COUNTRIES[column]:
            run_flag = np.zeros_like(run_flag)  # a plain block there, counted in block_other
        flag = in_block & run_flag[np.maximum(run_id, 0)]
        named_any |= flag
        out[column] = flag.astype(np.int8)
    out["block_other"] = (in_block & ~named_any).astype(np.int8)

    long_block = in_block & (block_length >= LONG_BLOCK_DAYS)
    long_start = long_block & (day_in_block == 1)
    long_end = long_block & (day_in_block == block_length)
    working_before = np.r_[0, np.cumsum(working)]  # working days in [0, i)
    next_start = _next_index(long_start)
    ahead = working_before[np.minimum(next_start, n)] - working_before[idx]
    out["pre_holiday_window"] = np.where(working & (next_start < n) & (ahead <= HOLIDAY_WINDOW_DAYS), ahead, 0).astype(
        np.int8
    )
    # How long the coming block is: a four-day Easter draws more cash ahead of it than a long weekend.
    coming = block_length[np.minimum(next_start, n - 1)] if n else block_length
    out["next_block_length"] = np.where(out["pre_holiday_window"] > 0, coming, 0).astype(np.int16)
    block_start = np.flatnonzero(run_start)[run_has_holiday]
    block_names = [
        {_NAME_SUFFIX.sub("", name).strip() for name in text.split("; ") if name.strip()}
        for text in run_text[run_has_holiday]
    ]
    block_end = block_start + run_length[run_has_holiday] - 1
    out["year_back_days"] = _year_back_days(block_start, block_end, block_names, n)
    prev_end = _previous_index(long_end)
    behind = working_before[idx + 1] - working_before[np.maximum(prev_end, -1) + 1]
    out["post_holiday_window"] = np.where(
        working & (prev_end >= 0) & (behind <= HOLIDAY_WINDOW_DAYS), behind, 0
    ).astype(np.int8)
    return out


def _year_back_days(starts: np.ndarray, ends: np.ndarray, names: list[set[str]], n: int) -> np.ndarray:
    """Days back from each day to its analogue a year earlier: 364 (the same weekday), or, within a week
    of a holiday block, the same place relative to that holiday's block the year before.

    Easter, Spring Festival, Diwali and Eid move by weeks from year to year, so 364 days back from the
    Saturday before Easter is an ordinary Saturday; a forecast that reads last year's demand needs last
    year's Easter Saturday. Blocks are matched by holiday name; the nearest block decides a day.
    """
    back = np.full(n, YEAR_BACK_DAYS, np.int16)
    distance = np.full(n, ALIGN_WINDOW_DAYS + 1)
    lo_gap, hi_gap = SAME_HOLIDAY_GAP
    for b, (start, end) in enumerate(zip(starts, ends, strict=True)):
        earlier = [p for p in range(b) if lo_gap <= start - starts[p] <= hi_gap and names[p] & names[b]]
        if not earlier:
            continue
        p = min(earlier, key=lambda p: abs(start - starts[p] - YEAR_BACK_DAYS))
        days = np.arange(max(start - ALIGN_WINDOW_DAYS, 0), min(end + ALIGN_WINDOW_DAYS + 1, n))
        before, after = days < start, days > end
        gap = np.where(before, start - days, np.where(after, days - end, 0))
        analogue = np.where(
            before,
            starts[p] - (start - days),
            np.where(after, ends[p] + (days - end), np.minimum(starts[p] + days - start, ends[p])),
        )
        nearer = gap < distance[days]
        back[days[nearer]] = (days - analogue)[nearer]
        distance[days[nearer]] = gap[nearer]
    return back


def _next_index(mask: np.ndarray) -> np.ndarray:
    """Index of the first True at or after each position; len(mask) where there is none."""
    n = len(mask)
    marks = np.where(mask, np.arange(n), n)
    return np.minimum.accumulate(marks[::-1])[::-1] if n else marks


def _previous_index(mask: np.ndarray) -> np.ndarray:
    """Index of the last True at or before each position; -1 where there is none."""
    marks = np.where(mask, np.arange(len(mask)), -1)
    return np.maximum.accumulate(marks) if len(mask) else marks


def _capped(distance: np.ndarray, found: np.ndarray, cap: int) -> np.ndarray:
    """Distances capped at `cap`; `cap` too where no target exists in the padded range."""
    return np.where(found, np.minimum(distance, cap), cap).astype(np.int16)
