"""History features: values by hand, missing never zero, no leakage on real CUB data, and the very features the
forecaster's design matrix reads."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cashcast.config import load_config
from features import FEATURE_COLUMNS, build, feature_columns
from features.keys import positions, take_ids, unique_ids
from features.panel import build_panel
from forecasting.models import GBM_FEATURES, forecast_design

CONFIG = load_config()
CUB_DEVICES = pd.DataFrame(
    {
        "device_id": ["Airport ATM", "Big Street ATM", "KK Nagar ATM", "Christ College ATM", "Mount Road ATM"],
        "country": "IN",
        "subdivision": "TN",
    }
)


@pytest.fixture(scope="module")
def ramp() -> pd.DataFrame:
    """Device 'a': withdrawals = 1,000 + day number since 2023-01-01 for 2023-01-01..2024-03-31, with holes."""
    dates = pd.date_range("2023-01-01", "2024-03-31", freq="D")
    frame = pd.DataFrame({"device_id": "a", "date": dates, "withdrawals": 1000.0 + np.arange(len(dates))})
    frame["censored"] = frame["date"] == pd.Timestamp("2024-02-27")  # censored: missing, not demand
    return frame[frame["date"] != pd.Timestamp("2024-02-28")].reset_index(drop=True)  # absent day


def test_history_features_by_hand(ramp):
    origin = pd.Timestamp("2024-03-01")  # a Friday; day number 425
    frame = build(ramp, None, origin, 10, CONFIG).set_index("date")
    assert len(frame) == 10 and frame["horizon"].tolist() == list(range(1, 11))
    first = frame.loc[origin]
    day = 1000.0  # day number d withdrew 1,000 + d
    level = np.mean([day + d for d in range(334, 425) if d not in (422, 423)])  # 02-27 censored, 02-28 absent
    assert first["log_level"] == pytest.approx(np.log1p(level))
    observed_7 = [418, 419, 420, 421, 424]  # 02-23..02-29 without the censored 02-27 and absent 02-28
    assert first["level_7_ratio"] == pytest.approx(np.mean([day + d for d in observed_7]) / level)
    assert first["last_ratio"] == pytest.approx((day + 424) / level)
    assert first["missing_share_28"] == pytest.approx(2 / 28)
    assert first["history_days"] == 400  # capped
    # same weekday (Friday) before the origin: 02-23, 02-16, 02-09, 02-02 (day numbers 418, 411, 404, 397)
    assert first["dow_mean_4w_ratio"] == pytest.approx(np.mean([day + d for d in (418, 411, 404, 397)]) / level)
    wednesday = frame.loc[pd.Timestamp("2024-03-06")]  # latest Wednesday before the origin: 02-28 (absent)
    assert wednesday["dow_mean_4w_ratio"] == pytest.approx(np.mean([day + d for d in (416, 409, 402)]) / level)
    assert np.isnan(wednesday["same_weekday_last_ratio"])  # that Wednesday was not recorded
    next_friday = frame.loc[pd.Timestamp("2024-03-08")]  # h = 8: still the Fridays before the origin
    assert next_friday["dow_mean_8w_ratio"] == first["dow_mean_8w_ratio"]
    assert frame["level_28_ratio"].nunique() == 1  # origin-anchored: the same for every target day


def test_a_device_without_history_has_missing_features_not_zeros(ramp):
    devices = pd.DataFrame({"device_id": ["new"], "country": ["GB"], "subdivision": ["ENG"]})
    frame = build(ramp, devices, pd.Timestamp("2024-03-01"), 7, CONFIG)
    assert list(frame.columns[:2]) == ["device_id", "date"]
    assert frame.groupby("device_id").size().to_dict() == {"a": 7, "new": 7}
    assert frame["date"].min() == pd.Timestamp("2024-03-01") and frame["date"].max() == pd.Timestamp("2024-03-07")
    new = frame[frame["device_id"] == "new"]
    ratios = [c for c in FEATURE_COLUMNS if c.endswith("_ratio")]
    assert new[ratios].isna().all().all() and (new["missing_share_28"] == 1).all()
    assert new["is_working_day"].sum() == 5  # GB's calendar, not the default country's
    assert feature_columns(frame) == FEATURE_COLUMNS


def test_no_device_to_build_for_gives_an_empty_table_not_a_crash(ramp):
    """History only after as_of and no master: nothing to build (it crashed reshaping an empty calendar)."""
    frame = build(ramp, None, pd.Timestamp("2022-06-01"), 7, CONFIG)
    assert frame.empty and set(FEATURE_COLUMNS) <= set(frame.columns)


def test_deposit_features_read_deposits(ramp):
    daily = ramp.assign(deposits=ramp["withdrawals"] / 2)
    deposits = build(daily, None, pd.Timestamp("2024-03-01"), 1, CONFIG, column="deposits")
    withdrawals = build(daily, None, pd.Timestamp("2024-03-01"), 1, CONFIG)
    assert deposits["log_level"].item() == pytest.approx(np.log1p(np.expm1(withdrawals["log_level"].item()) / 2))
    assert deposits["level_7_ratio"].item() == pytest.approx(withdrawals["level_7_ratio"].item())


def test_the_forecaster_reads_exactly_the_features_build_shows(cub_daily):
    """One implementation: the LightGBM design rows at the forecast origin are `build`'s columns (the analyst's
    view of what the model sees), not a look-alike computed elsewhere."""
    as_of, horizon = pd.Timestamp("2016-06-01"), 21
    built = build(cub_daily, CUB_DEVICES, as_of, horizon, CONFIG)
    panel = build_panel(cub_daily, CUB_DEVICES, as_of, CONFIG, pad=horizon)
    X, _ = forecast_design(panel, np.arange(len(panel.device_ids)), horizon, max_horizon=horizon)
    assert list(built["device_id"].unique()) == list(panel.device_ids)
    shown = built[GBM_FEATURES].to_numpy(np.float32)
    np.testing.assert_array_equal(shown, X)
    assert np.isfinite(X).mean() > 0.95  # a day the history did not record is missing in both, alike


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
    assert len(before) == 5 * 56 and before["level_28_ratio"].notna().all()
    pd.testing.assert_frame_equal(before, after)


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
