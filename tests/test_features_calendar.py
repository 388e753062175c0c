"""Calendar, holiday and payday features: real holiday data for CN, GB and IN."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from cashcast.config import load_config
from features import CALENDAR_COLUMNS, HolidayEstimateWarning, calendar_features, holiday_table
from features.calendar import date_features, device_places, payday_features, place_calendar, shifted_month_days
from features.holidays import holiday_blocks

CONFIG = load_config()


def _day(frame: pd.DataFrame, day: str) -> pd.Series:
    return frame.set_index("date").loc[pd.Timestamp(day)]


def _block_days(frame: pd.DataFrame, day: str) -> pd.DatetimeIndex:
    """The dates of the block containing `day` (walk the contiguous in-block run)."""
    indexed = frame.set_index("date")
    row = indexed.loc[pd.Timestamp(day)]
    first = pd.Timestamp(day) - pd.Timedelta(days=int(row["day_in_block"]) - 1)
    return pd.date_range(first, periods=int(row["holiday_block_length"]), freq="D")


@pytest.fixture(scope="module")
def china() -> pd.DataFrame:
    return place_calendar("CN", "", pd.Timestamp("2024-01-01"), pd.Timestamp("2025-12-31"), CONFIG)


def test_china_make_up_sundays_are_working_days(china):
    for sunday in ("2024-02-04", "2024-02-18", "2025-01-26", "2025-09-28"):
        row = _day(china, sunday)
        assert row["is_working_day"] == 1 and row["is_weekend"] == 1 and row["is_holiday"] == 0


def test_china_holiday_swapped_weekdays_are_days_off(china):
    assert _day(china, "2024-02-15")["is_working_day"] == 0  # a Thursday, swapped for 02-04
    assert _day(china, "2025-10-08")["is_working_day"] == 0


def test_holiday_names_do_not_follow_the_hosts_locale(monkeypatch):
    """Under LANG=de_DE the package named China's holidays in Chinese: the Spring Festival block lost its flag, and a
    model trained on one host would read other features on another."""
    from features.holidays import _holiday_year

    _holiday_year.cache_clear()
    monkeypatch.setenv("LANG", "de_DE.UTF-8")
    try:
        table = holiday_table("CN", "", pd.Timestamp("2024-02-01"), pd.Timestamp("2024-02-29"))
        blocks = holiday_blocks(table, 30, "CN")
    finally:
        _holiday_year.cache_clear()
    assert table.loc[table["date"] == pd.Timestamp("2024-02-12"), "holiday_name"].iloc[0].startswith("Chinese New Year")
    assert blocks.loc[blocks["date"] == pd.Timestamp("2024-02-12"), "block_spring_festival"].iloc[0] == 1


def test_swapped_days_are_named_with_iso_dates():
    """The package's label says 'substituted from 02/04/2024' (US order); plans show it to readers everywhere."""
    table = holiday_table("CN", "", pd.Timestamp("2024-02-01"), pd.Timestamp("2024-02-29"))
    swapped = table.loc[table["date"] == pd.Timestamp("2024-02-15"), "holiday_name"].iloc[0]
    assert swapped == "Day off (substituted from 2024-02-04)"


@pytest.mark.parametrize(
    ("inside", "first", "last", "flag"),
    [
        ("2024-02-12", "2024-02-10", "2024-02-17", "block_spring_festival"),
        ("2025-01-30", "2025-01-28", "2025-02-04", "block_spring_festival"),
        ("2025-10-03", "2025-10-01", "2025-10-08", "block_golden_week"),
    ],
)
def test_china_long_holidays_are_single_eight_day_blocks(china, inside, first, last, flag):
    days = _block_days(china, inside)
    assert days[0] == pd.Timestamp(first) and days[-1] == pd.Timestamp(last) and len(days) == 8
    block = china.set_index("date").loc[days]
    assert (block["holiday_block_length"] == 8).all() and (block[flag] == 1).all()
    assert list(block["day_in_block"]) == list(range(1, 9))
    assert (block["block_other"] == 0).all()
    # 2024-02-17 is a plain Saturday with no holiday name, still inside the block
    before, after = (_day(china, d) for d in (days[0] - pd.Timedelta(days=1), days[-1] + pd.Timedelta(days=1)))
    assert before["holiday_block_length"] == 0 and after["holiday_block_length"] == 0


def test_pre_and_post_windows_count_working_days_around_long_blocks(china):
    # Spring Festival 2024: 02-10..02-17; 02-04 (Sunday) is a make-up working day.
    pre = {d: int(_day(china, d)["pre_holiday_window"]) for d in ("2024-02-09", "2024-02-05", "2024-02-04")}
    assert pre == {"2024-02-09": 1, "2024-02-05": 5, "2024-02-04": 0}
    assert _day(china, "2024-02-18")["post_holiday_window"] == 1
    assert _day(china, "2024-02-22")["post_holiday_window"] == 5
    assert _day(china, "2024-02-23")["post_holiday_window"] == 0
    assert _day(china, "2024-02-13")["pre_holiday_window"] == 0  # inside a block: no window


def test_distances_to_blocks_are_zero_inside_and_capped(china):
    assert _day(china, "2024-02-07")["days_to_next_holiday"] == 3
    assert _day(china, "2024-02-12")["days_to_next_holiday"] == 0
    assert _day(china, "2024-02-20")["days_since_last_holiday"] == 3
    cap = CONFIG.calendar.holiday_distance_cap
    assert china["days_to_next_holiday"].max() == cap and china["days_since_last_holiday"].max() == cap


def test_golden_week_is_chinas_national_day_only():
    """Singapore's National Day (Aug 9) is a plain holiday block there, not Golden Week."""
    dates = pd.date_range("2030-08-05", periods=10, freq="D")
    holiday = dates == pd.Timestamp("2030-08-09")  # a Friday: Fri-Sun is a 3-day block
    table = pd.DataFrame(
        {
            "date": dates,
            "is_holiday": holiday,
            "is_working_day": (dates.day_of_week < 5) & ~holiday,
            "holiday_name": np.where(holiday, "National Day", ""),
        }
    )
    for country, golden in (("SG", 0), ("CN", 1)):
        blocks = holiday_blocks(table, distance_cap=5, country=country)
        assert list(blocks["block_golden_week"][4:7]) == [golden] * 3, country
        assert list(blocks["block_other"][4:7]) == [1 - golden] * 3, country


def test_holiday_blocks_on_a_hand_made_table():
    # Mon holiday, Tue-Wed working, Sat-Sun plain weekend, then Sat..Mon holiday-bearing run of 3 days.
    dates = pd.date_range("2030-01-07", periods=15, freq="D")
    holiday = np.zeros(15, bool)
    holiday[[0, 14]] = True
    working = (dates.day_of_week < 5) & ~holiday
    table = pd.DataFrame({"date": dates, "is_holiday": holiday, "is_working_day": working, "holiday_name": ""})
    table.loc[0, "holiday_name"], table.loc[14, "holiday_name"] = "Easter Monday", "Founders Day"
    blocks = holiday_blocks(table, distance_cap=5, country="GB")
    assert list(blocks["holiday_block_length"]) == [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 3, 3]
    assert list(blocks["block_easter"]) == [1] + [0] * 14
    assert list(blocks["block_other"]) == [0] * 12 + [1, 1, 1]
    assert list(blocks["days_to_next_holiday"][:13]) == [0, 5, 5, 5, 5, 5, 5, 5, 4, 3, 2, 1, 0]
    assert list(blocks["pre_holiday_window"][7:12]) == [5, 4, 3, 2, 1]  # Mon 01-14 .. Fri 01-18


def test_easter_in_england_1998():
    table = holiday_table("GB", "ENG", pd.Timestamp("1998-04-01"), pd.Timestamp("1998-04-30")).set_index("date")
    for day, name in (("1998-04-10", "Good Friday"), ("1998-04-13", "Easter Monday")):
        assert table.loc[pd.Timestamp(day), "is_holiday"] and table.loc[pd.Timestamp(day), "holiday_name"] == name
        assert not table.loc[pd.Timestamp(day), "is_working_day"]
    calendar = place_calendar("GB", "ENG", pd.Timestamp("1998-04-01"), pd.Timestamp("1998-04-30"), CONFIG)
    easter = calendar.set_index("date").loc["1998-04-10":"1998-04-13"]
    assert (easter["holiday_block_length"] == 4).all() and (easter["block_easter"] == 1).all()


def test_pongal_and_diwali_in_tamil_nadu():
    table = holiday_table("IN", "TN", pd.Timestamp("2015-01-01"), pd.Timestamp("2016-12-31"))
    names = table.loc[table["is_holiday"], ["date", "holiday_name"]].set_index("date")["holiday_name"]
    assert names[pd.Timestamp("2015-01-15")] == "Pongal" and names[pd.Timestamp("2016-01-15")] == "Pongal"
    assert names[pd.Timestamp("2015-11-11")] == "Diwali"
    assert names.str.contains("Diwali").sum() == 2


def test_years_without_an_official_schedule_warn_and_use_rule_based_blocks():
    with pytest.warns(HolidayEstimateWarning, match="CN"):
        calendar = place_calendar("CN", "", pd.Timestamp("2031-01-01"), pd.Timestamp("2031-12-31"), CONFIG)
    # Lunar new year 2031 is 01-23: the estimated block runs from the eve, 8 days, no make-up workdays.
    spring = calendar[calendar["block_spring_festival"] == 1]["date"]
    assert spring.min() == pd.Timestamp("2031-01-22") and len(spring) == 8
    golden = calendar[calendar["block_golden_week"] == 1]["date"]
    assert golden.min() == pd.Timestamp("2031-10-01") and golden.max() >= pd.Timestamp("2031-10-07")
    assert not ((calendar["is_weekend"] == 1) & (calendar["is_working_day"] == 1)).any()


def test_published_years_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", HolidayEstimateWarning)
        holiday_table("CN", "", pd.Timestamp("2024-01-01"), pd.Timestamp("2026-12-31"))
        holiday_table("GB", "ENG", pd.Timestamp("2040-01-01"), pd.Timestamp("2040-12-31"))
        # A plan for November 2026 pads its calendar into 2027 for edge effects: no warning about 2027.
        place_calendar("CN", "", pd.Timestamp("2026-11-01"), pd.Timestamp("2026-11-28"), CONFIG)


def test_unknown_country_names_it():
    with pytest.raises(ValueError, match="'XX'"):
        holiday_table("XX", "", pd.Timestamp("2024-01-01"), pd.Timestamp("2024-01-31"))


def test_unknown_country_falls_back_to_weekends_with_a_warning():
    with pytest.warns(UserWarning, match="weekends only"):
        calendar = place_calendar("XX", "", pd.Timestamp("2024-12-23"), pd.Timestamp("2024-12-29"), CONFIG)
    assert list(calendar["is_working_day"]) == [1, 1, 1, 1, 1, 0, 0] and calendar["is_holiday"].sum() == 0


def test_date_features_position_in_month_quarter_and_year():
    frame = date_features(pd.DatetimeIndex(["2024-03-31", "2024-04-01", "2024-12-30"]))
    assert list(frame["day_of_week"]) == [6, 0, 0]
    assert list(frame["days_to_month_end"]) == [0, 29, 1]
    assert list(frame["days_to_quarter_end"]) == [0, 90, 1]
    assert list(frame["week_of_year"]) == [13, 14, 1]  # ISO week: 2024-12-30 belongs to 2025-W01
    assert np.allclose(frame["doy_sin"] ** 2 + frame["doy_cos"] ** 2, 1)


def test_paydays_move_to_the_previous_working_day():
    dates = pd.date_range("2024-02-01", "2024-03-31", freq="D")
    table = holiday_table("CN", "", dates[0], dates[-1])
    working = table["is_working_day"].to_numpy()
    # 10th: Sat 02-10 in the Spring Festival -> Fri 02-09; 15th inside the block -> 02-09 too.
    # Day 31 in February is its last day (Thu 02-29); 03-10 is a Sunday -> Fri 03-08.
    mask = shifted_month_days(dates, working, [10, 15, 31], last_working_day=False)
    assert list(dates[mask].strftime("%m-%d")) == ["02-09", "02-29", "03-08", "03-15", "03-29"]
    settings = CONFIG.calendar.model_copy(update={"paydays": [10], "payday_last_working_day": True})
    paydays = payday_features(dates, working, settings).set_index("date")
    assert list(dates[paydays["is_payday"].to_numpy(bool)].strftime("%m-%d")) == ["02-09", "02-29", "03-08", "03-29"]
    assert paydays.loc["2024-02-12", "days_since_payday"] == 3 and paydays.loc["2024-02-12", "days_to_payday"] == 17


def test_pension_days_shift_like_paydays():
    calendar = place_calendar("CN", "", pd.Timestamp("2024-10-01"), pd.Timestamp("2024-10-31"), CONFIG)
    # Pension day 5: Sat 10-05 in Golden Week -> the last working day before it, Mon 09-30 (outside)
    assert calendar["is_pension_day"].sum() == 0
    calendar = place_calendar("CN", "", pd.Timestamp("2024-09-25"), pd.Timestamp("2024-11-30"), CONFIG)
    pension = calendar.loc[calendar["is_pension_day"] == 1, "date"].dt.strftime("%m-%d")
    assert list(pension) == ["09-30", "11-05"]


def test_calendar_features_broadcast_per_device_country():
    devices = pd.DataFrame(
        {
            "device_id": ["cn1", "gb1", "cn2", "in1"],
            "country": ["", "GB", "CN", "in"],
            "subdivision": ["", "ENG", "", "TN"],
        }
    )
    frame = calendar_features(devices, pd.Timestamp("2024-12-20"), pd.Timestamp("2025-01-05"), CONFIG)
    assert len(frame) == 4 * 17 and list(frame.columns[:2]) == ["device_id", "date"]
    assert set(CALENDAR_COLUMNS) <= set(frame.columns)
    assert frame["device_id"].dtype == "string" and frame["date"].dtype == "datetime64[ns]"
    christmas = frame[frame["date"] == pd.Timestamp("2024-12-25")].set_index("device_id")
    assert christmas.loc["gb1", "block_christmas"] == 1 and christmas.loc["cn1", "is_working_day"] == 1
    assert christmas.loc["in1", "is_holiday"] == 1
    cn1, cn2 = (frame[frame["device_id"] == d].drop(columns="device_id").reset_index(drop=True) for d in ("cn1", "cn2"))
    pd.testing.assert_frame_equal(cn1, cn2)  # empty country = the default CN: one shared calendar


def test_device_places_fill_defaults_without_leaking_subdivisions():
    config = CONFIG.updated(devices={"country": "IN", "subdivision": "TN", "region": "south"})
    devices = pd.DataFrame({"device_id": ["a", "b"], "country": [None, "GB"], "subdivision": [None, ""]})
    places = device_places(devices, config, device_ids=["c"]).set_index("device_id")
    assert places.loc["a", ["country", "subdivision", "region"]].tolist() == ["IN", "TN", "south"]
    assert places.loc["b", ["country", "subdivision"]].tolist() == ["GB", ""]
    assert places.loc["c", "country"] == "IN"
    only_ids = device_places(pd.DataFrame({"device_id": ["z"]}), CONFIG)
    assert only_ids.loc[0, "country"] == CONFIG.devices.country


def test_a_panel_warns_about_estimated_years_only_as_far_as_its_forecast_reaches():
    """The panel's calendar runs 63 days ahead for the features' edges; a 21-day forecast from 2 November
    2026 never reaches CN 2027, whose make-up days are estimates, but a 56-day one does (its distance
    features look a month ahead)."""
    from features.panel import build_panel

    daily = pd.DataFrame(
        {"device_id": "A", "date": pd.date_range("2026-10-01", "2026-11-01"), "withdrawals": 100.0, "censored": False}
    )
    as_of = pd.Timestamp("2026-11-02")
    with warnings.catch_warnings():
        warnings.simplefilter("error", HolidayEstimateWarning)
        build_panel(daily, None, as_of, CONFIG, pad=63, horizon=21)
        build_panel(daily, None, as_of, CONFIG, pad=63, horizon=0)  # a fit forecasts nothing
    with pytest.warns(HolidayEstimateWarning, match=r"CN \[2027\]"):
        build_panel(daily, None, as_of, CONFIG, pad=63, horizon=56)


def test_days_before_a_long_block_know_how_long_it_is():
    """Cash drawn ahead of a block grows with its length: Easter (Fri-Mon, 4 days) against May Day (Sat-Mon)."""
    calendar = place_calendar("GB", "ENG", pd.Timestamp("2026-03-23"), pd.Timestamp("2026-05-10"), CONFIG)
    length = calendar.set_index("date")["next_block_length"]
    assert length[pd.Timestamp("2026-04-02")] == 4 and length[pd.Timestamp("2026-03-30")] == 4  # Thu, Mon before
    assert length[pd.Timestamp("2026-05-01")] == 3  # the Friday before May Day Monday
    assert length[pd.Timestamp("2026-04-15")] == 0  # well clear of both
    assert length[pd.Timestamp("2026-04-04")] == 0  # inside the block itself: holiday_block_length says it


def test_days_around_a_moving_holiday_look_back_to_the_same_holiday_last_year():
    """364 days back from Easter Saturday 1998 is an ordinary Saturday; last year's Easter Saturday is 378 back."""
    england = place_calendar("GB", "ENG", pd.Timestamp("1998-03-01"), pd.Timestamp("1998-05-31"), CONFIG)
    back = england.set_index("date")["year_back_days"]
    analogue = back.index - pd.to_timedelta(back.to_numpy(), unit="D")
    by_day = pd.Series(analogue, index=back.index)
    assert by_day[pd.Timestamp("1998-04-11")] == pd.Timestamp("1997-03-29")  # Easter Saturday to Easter Saturday
    assert by_day[pd.Timestamp("1998-04-09")] == pd.Timestamp("1997-03-27")  # Maundy Thursday, the day before
    assert by_day[pd.Timestamp("1998-04-20")] == pd.Timestamp("1997-04-07")  # a week after Easter Monday
    assert back[pd.Timestamp("1998-03-10")] == 364 and back[pd.Timestamp("1998-04-22")] == 364  # ordinary weeks
    china = place_calendar("CN", "", pd.Timestamp("2024-01-01"), pd.Timestamp("2024-03-31"), CONFIG).set_index("date")
    # Spring Festival 2024 ran Feb 10-17 (8 days), 2023's Jan 21-27 (7): the eve matches the eve, the
    # block's eighth day the last day of last year's, and the days after follow last year's block end.
    for day, then in (
        ("2024-02-09", "2023-01-20"),
        ("2024-02-10", "2023-01-21"),
        ("2024-02-17", "2023-01-27"),
        ("2024-02-19", "2023-01-29"),
    ):
        assert pd.Timestamp(day) - pd.Timedelta(days=int(china.loc[day, "year_back_days"])) == pd.Timestamp(then)
    tamil_nadu = place_calendar("IN", "TN", pd.Timestamp("2016-10-01"), pd.Timestamp("2016-11-30"), CONFIG)
    diwali = tamil_nadu.set_index("date").loc[pd.Timestamp("2016-10-30"), "year_back_days"]
    assert pd.Timestamp("2016-10-30") - pd.Timedelta(days=int(diwali)) == pd.Timestamp("2015-11-11")


def test_an_unknown_country_looks_back_52_weeks():
    with pytest.warns(UserWarning, match="weekends only"):
        calendar = place_calendar("XX", "", pd.Timestamp("2024-01-01"), pd.Timestamp("2024-03-31"), CONFIG)
    assert (calendar["year_back_days"] == 364).all()
