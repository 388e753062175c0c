"""History features, forecast-time and training builds: values by hand and no leakage on real CUB data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cashcast.config import load_config
from features import FEATURE_COLUMNS, build, build_training, feature_columns, history_features
from features.keys import positions, take_ids, unique_ids

CONFIG = load_config()
CUB_DEVICES = pd.DataFrame(
    {
        "device_id": ["Airport ATM", "Big Street ATM", "KK Nagar ATM", "Christ College ATM", "Mount Road ATM"],
        "country": "IN",
        "subdivision": "TN",
    }
)


def _series(values: dict[str, float], device: str = "a", censored: tuple[str, ...] = ()) -> pd.DataFrame:
    dates = pd.to_datetime(list(values))
    return pd.DataFrame(
        {
            "device_id": device,
            "date": dates,
            "withdrawals": list(values.values()),
            "censored": dates.isin(pd.to_datetime(list(censored))),
        }
    )


@pytest.fixture(scope="module")
def ramp() -> pd.DataFrame:
    """Device 'a': withdrawals = day number since 2023-01-01 for 2023-01-01..2024-03-31, with holes."""
    dates = pd.date_range("2023-01-01", "2024-03-31", freq="D")
    frame = pd.DataFrame({"device_id": "a", "date": dates, "withdrawals": np.arange(len(dates), dtype=float)})
    frame["censored"] = frame["date"] == pd.Timestamp("2024-02-27")  # censored: missing, not demand
    return frame[frame["date"] != pd.Timestamp("2024-02-28")].reset_index(drop=True)  # absent day


def test_history_features_by_hand(ramp):
    origin = pd.Timestamp("2024-03-01")  # a Friday; day number 425
    frame = history_features(ramp, pd.DatetimeIndex([origin]), 10, CONFIG).set_index("date")
    assert list(frame.columns[:2]) == ["device_id", "origin"] and len(frame) == 10
    first = frame.loc[origin]
    observed_7 = [418, 419, 420, 421, 424]  # 02-23..02-29 without the censored 02-27 and absent 02-28
    assert first["level_7"] == pytest.approx(np.mean(observed_7))
    assert first["level_28"] == pytest.approx(np.mean([d for d in range(397, 425) if d not in (422, 423)]))
    assert first["missing_share_28"] == pytest.approx(2 / 28)
    assert first["horizon"] == 1 and frame["horizon"].tolist() == list(range(1, 11))
    assert first["days_since_observed"] == 1 and first["observed_days_364"] == 362
    # same weekday (Friday) before the origin: 02-23, 02-16, 02-09, 02-02 (day numbers 418, 411, 404, 397)
    assert first["dow_mean_4w"] == pytest.approx(np.mean([418, 411, 404, 397]))
    wednesday = frame.loc[pd.Timestamp("2024-03-06")]  # latest Wednesday before the origin: 02-28 (absent)
    assert wednesday["dow_mean_4w"] == pytest.approx(np.mean([416, 409, 402]))
    assert wednesday["same_day_last_year"] == 430 - 364
    next_friday = frame.loc[pd.Timestamp("2024-03-08")]  # h = 8: still the Fridays before the origin
    assert next_friday["dow_mean_8w"] == first["dow_mean_8w"] == pytest.approx(np.mean(range(369, 419, 7)))
    assert frame["level_28"].nunique() == 1  # origin-anchored: the same for every target day
    assert frame["dep_level_7"].isna().all() and (frame["dep_missing_share_28"] == 1).all()


def test_history_features_without_history_are_missing_not_zero():
    daily = _series({"2024-01-01": 50.0, "2024-01-02": 70.0, "2024-01-03": 10.0}, censored=("2024-01-03",))
    pairs = pd.DataFrame({"device_id": ["a", "a"], "origin": pd.to_datetime(["2024-01-01", "2024-01-04"])})
    frame = history_features(daily, pairs, 2, CONFIG)
    at_first, at_last = frame.iloc[0], frame.iloc[2]
    assert np.isnan(at_first["level_7"]) and np.isnan(at_first["days_since_observed"])
    assert at_first["missing_share_28"] == 1 and at_first["observed_days_364"] == 0
    assert at_last["level_7"] == 60 and at_last["days_since_observed"] == 2  # censored 01-03 skipped
    assert np.isnan(at_last["trend_ratio"]) and at_last["std_28"] == 10


def test_trend_ratio_compares_the_last_28_days_with_the_28_before():
    dates = pd.date_range("2024-01-01", periods=56, freq="D")
    daily = pd.DataFrame({"device_id": "a", "date": dates, "withdrawals": [100.0] * 28 + [150.0] * 28})
    frame = history_features(daily, pd.DatetimeIndex(["2024-02-26"]), 1, CONFIG)
    assert frame.loc[0, "trend_ratio"] == pytest.approx(1.5)


def test_deposit_analogues_follow_deposits():
    daily = _series({"2024-01-01": 10.0, "2024-01-02": 20.0}).assign(deposits=[5.0, np.nan])
    frame = history_features(daily, pd.DatetimeIndex(["2024-01-03"]), 1, CONFIG)
    assert frame.loc[0, "dep_level_7"] == 5 and frame.loc[0, "dep_missing_share_28"] == pytest.approx(27 / 28)


def test_build_covers_master_and_history_devices(ramp):
    devices = pd.DataFrame({"device_id": ["new"], "country": ["GB"], "subdivision": ["ENG"]})
    frame = build(ramp, devices, pd.Timestamp("2024-03-01"), 7, CONFIG)
    assert list(frame.columns[:2]) == ["device_id", "date"] and "origin" not in frame
    assert frame.groupby("device_id").size().to_dict() == {"a": 7, "new": 7}
    assert frame["date"].min() == pd.Timestamp("2024-03-01") and frame["date"].max() == pd.Timestamp("2024-03-07")
    new = frame[frame["device_id"] == "new"]
    assert new["level_28"].isna().all() and new["is_working_day"].sum() == 5
    assert feature_columns(frame) == FEATURE_COLUMNS


def test_build_training_targets_are_nan_when_absent_or_censored(ramp):
    frame = build_training(ramp, pd.DataFrame(), pd.DatetimeIndex(["2024-02-20", "2024-02-27"]), 8, CONFIG)
    assert list(frame.columns[:3]) == ["device_id", "origin", "date"] and len(frame) == 16
    targets = frame.set_index(["origin", "date"])["y"]
    assert np.isnan(targets[(pd.Timestamp("2024-02-20"), pd.Timestamp("2024-02-27"))])  # censored
    assert np.isnan(targets[(pd.Timestamp("2024-02-27"), pd.Timestamp("2024-02-28"))])  # absent
    assert targets[(pd.Timestamp("2024-02-27"), pd.Timestamp("2024-02-29"))] == 424
    assert frame["y_deposits"].isna().all()


def _perturbed(daily: pd.DataFrame, cut: pd.Timestamp) -> pd.DataFrame:
    """Every value on or after `cut` changed, some of those rows dropped, new rows and a new device added."""
    rng = np.random.default_rng(0)
    after = daily["date"] >= cut
    changed = daily.copy()
    changed.loc[after, "withdrawals"] = rng.uniform(0, 5e6, after.sum())
    changed.loc[after, "censored"] = rng.random(after.sum()) < 0.3
    changed = changed.drop(changed.index[after][::3])
    extra = pd.DataFrame(
        {
            "device_id": ["Airport ATM", "Ghost ATM", "Ghost ATM"],
            "date": [cut + pd.Timedelta(days=400), cut, cut + pd.Timedelta(days=1)],
            "withdrawals": [1.0, 2.0, 3.0],
            "censored": False,
        }
    )
    return pd.concat([changed, extra], ignore_index=True).sample(frac=1, random_state=1)


def test_build_ignores_everything_from_as_of_on(cub_daily):
    as_of = pd.Timestamp("2016-06-01")
    before = build(cub_daily, CUB_DEVICES, as_of, 56, CONFIG)
    after = build(_perturbed(cub_daily, as_of), CUB_DEVICES, as_of, 56, CONFIG)
    assert len(before) == 5 * 56 and before["level_28"].notna().all()
    pd.testing.assert_frame_equal(before, after)


def test_build_training_features_ignore_everything_from_the_last_origin_on(cub_daily):
    cut = pd.Timestamp("2016-06-01")
    origins = pd.date_range(end=cut, periods=8, freq="7D")
    before = build_training(cub_daily, CUB_DEVICES, origins, 28, CONFIG)
    after = build_training(_perturbed(cub_daily, cut), CUB_DEVICES, origins, 28, CONFIG)
    assert len(before) == 5 * 8 * 28
    columns = ["device_id", "origin", "date", *feature_columns(before)]
    # The ghost device has rows only after the cut: its samples exist (cold-start targets) but change nothing else.
    known = after[after["device_id"] != "Ghost ATM"].reset_index(drop=True)
    pd.testing.assert_frame_equal(before[columns], known[columns])
    assert after.loc[after["device_id"] == "Ghost ATM", "level_91"].isna().all()
    assert not before["y"].equals(known["y"])  # targets after the cut may differ, features may not


def test_training_rows_equal_forecast_rows_at_the_same_origin(cub_daily):
    origin = pd.Timestamp("2015-03-02")
    training = build_training(cub_daily, CUB_DEVICES, pd.DatetimeIndex([origin]), 14, CONFIG)
    forecast = build(cub_daily, CUB_DEVICES, origin, 14, CONFIG)
    columns = feature_columns(forecast)
    pd.testing.assert_frame_equal(training[["device_id", "date", *columns]], forecast[["device_id", "date", *columns]])
    observed = cub_daily.set_index(["device_id", "date"])["withdrawals"]
    row = training.iloc[20]
    assert row["y"] == observed[(row["device_id"], row["date"])]


def test_device_lookups_on_chunked_parquet_columns(tmp_path, cub_daily):
    """Lake tables arrive as many Arrow chunks; lookups must match pandas' own indexer on them."""
    path = tmp_path / "daily.parquet"
    cub_daily.to_parquet(path, row_group_size=1000)
    column = pd.read_parquet(path)["device_id"]
    ids = unique_ids(column)
    assert list(ids) == sorted(cub_daily["device_id"].unique()) and ids.dtype == "string"
    assert np.array_equal(positions(column, ids[1:]), pd.Index(ids[1:]).get_indexer(column))
    rows = positions(column.iloc[::500], ids)
    assert list(take_ids(ids, rows)) == list(column.iloc[::500])
