"""Forecasting: leakage, censoring, cold start, fallback, quantiles, selection guard, pickling, determinism.

One small synthetic network (CN calendar, censored days and gaps) is trained once per module;
tests that need a second training keep the data small.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import cloudpickle
import numpy as np
import pandas as pd
import pytest
from conftest import make_device_fail

from cashcast.config import load_config
from cashcast.synthetic import generate_network
from features import HolidayEstimateWarning
from features.panel import build_panel, mask_outages
from forecasting import CashForecaster, mase, score_window, smape, train, wape
from forecasting.backtest import TargetModel, combine, device_keys, predict_candidates, special_days
from forecasting.models import GBM_FEATURES, DeviceGBM, PooledGBM, SeasonalNaive, forecast_design

HORIZON = 14


@pytest.fixture(scope="module")
def network():
    return generate_network(n_atms=10, n_branches=2, n_recyclers=0, start="2024-01-01", days=420, seed=3)


@pytest.fixture(scope="module")
def config():
    return load_config().updated(forecast={"backtest_folds": 3, "backtest_horizon_days": 14, "min_history_days": 90})


@pytest.fixture(scope="module")
def as_of(network):
    return network.daily["date"].max() - pd.Timedelta(days=HORIZON * 2 - 1)


@pytest.fixture(scope="module")
def trained(network, config, as_of):
    return train(network.daily, network.devices, as_of, config)


def _forecast(model: CashForecaster, daily, devices, as_of, horizon=HORIZON):
    return model.predict(daily, devices, as_of, horizon)


def test_metrics_follow_their_definitions():
    assert smape([100, 0, np.nan], [50, 0, 10]) == pytest.approx(200 * 50 / 150)  # 0/0 and blank dropped
    assert smape([1, 2], [1, 2]) == 0.0
    history = np.array([10, 20, 10, 20, 10, 20, 10, 12, 22, 12, 22, 12, 22, 12], float)  # lag-7 MAE = 2
    assert mase([15], [11], history) == pytest.approx(2.0)
    assert wape([100, 100], [90, 130]) == pytest.approx(0.2)


def test_unflagged_outages_are_masked_but_regular_zero_weekdays_and_holidays_are_demand():
    weeks = 12
    atm = np.tile([100.0, 110, 90, 105, 120, 80, 95], weeks)
    branch = np.tile([100.0, 110, 90, 105, 120, 0, 0], weeks)  # closed at weekends: real zero demand
    values = np.vstack([atm, branch, atm])
    values[0, 30] = 0.0  # outage day nobody flagged
    values[0, 44] = 20.0  # partial outage: 18% of a normal Thursday
    values[2, 30] = 0.0  # the same zero on a public holiday
    holiday = np.zeros_like(values, dtype=bool)
    holiday[2, 30] = True
    masked = mask_outages(values, holiday, share=0.3)
    assert np.isnan(masked[0, [30, 44]]).all()
    assert np.isfinite(np.delete(masked[0], [30, 44])).all()
    np.testing.assert_array_equal(masked[1], branch)
    np.testing.assert_array_equal(masked[2], values[2])
    np.testing.assert_array_equal(mask_outages(values, holiday, share=0.0), values)


def test_low_spells_are_masked_unless_demand_is_still_low_after_a_week():
    """A low spell that ended is an outage, however long; one lasting past MAX_OUTAGE_DAYS up to the
    end of the history is the device's demand now."""
    from features.panel import MAX_OUTAGE_DAYS

    values = np.tile([100.0, 110, 90, 105, 120, 80, 95], (4, 20))
    holiday = np.zeros_like(values, dtype=bool)
    values[0, 40:68] = 0.0  # four weeks out of cash, then back to normal (demonetisation)
    values[1, -MAX_OUTAGE_DAYS:] = 0.0  # a fault in its first week: still an outage
    values[2, -30:] *= 0.2  # demand fell to a fifth for the last month, and stays there
    values[3, -9:] = 0.0
    values[3, -5] = np.nan  # a day not recorded neither ends nor lengthens a run
    masked = mask_outages(values, holiday, share=0.4)
    assert np.isnan(masked[0, 40:68]).all() and np.isfinite(np.delete(masked[0], range(40, 68))).all()
    assert np.isnan(masked[1, -MAX_OUTAGE_DAYS:]).all()
    np.testing.assert_array_equal(masked[2:], values[2:])


def test_forecast_follows_a_device_whose_demand_fell(network, config, as_of):
    """An ATM whose withdrawals fell to 15% five weeks ago is forecast at its new level, not its old."""
    daily = network.daily.copy()
    device = sorted(daily.loc[daily["deposits"].isna(), "device_id"].unique())[0]
    fell = (daily["device_id"] == device) & (daily["date"] >= as_of - pd.Timedelta(days=35))
    daily.loc[fell, "withdrawals"] *= 0.15
    before = daily[(daily["device_id"] == device) & ~fell & (daily["date"] < as_of)]["withdrawals"].tail(56).mean()
    model = train(daily, network.devices, as_of, config).model
    forecast = _forecast(model, daily, network.devices, as_of).frame
    level = forecast.loc[forecast["device_id"] == device, "yhat"].mean()
    assert level < 0.3 * before


def test_training_long_after_the_last_recorded_day_says_why_it_cannot(network, config, trained):
    """Forecasting too: a model trained earlier forecast exactly 0 for every device a day past the window, and
    the plan sent pickups to every ATM (contract audit)."""
    last = network.daily["date"].max()
    late = last + pd.Timedelta(days=config.forecast.max_history_days + 30)
    with warnings.catch_warnings():  # the holidays package only estimates that year: beside the point
        warnings.simplefilter("ignore", HolidayEstimateWarning)
        with pytest.raises(ValueError, match=f"last recorded day is {last:%Y-%m-%d}.*max_history_days"):
            train(network.daily, network.devices, late, config)
        with pytest.raises(ValueError, match=f"last recorded day is {last:%Y-%m-%d}.*max_history_days"):
            _forecast(trained.model, network.daily, network.devices, late)
        # A nightly chunk of long-silent devices is no reason to fail the night (its network was checked): zeros.
        part = trained.model.predict(network.daily, network.devices, late, 7, require_history=False).frame
        assert (part["yhat"] == 0).all()


def test_ets_defers_to_lightgbm_on_holidays_only(trained, network, config, as_of):
    """2024-05-01..05 is a CN Labour Day block: calendar-blind ETS must not forecast it as a normal week."""
    block_as_of = pd.Timestamp("2024-04-22")
    panel = build_panel(network.daily, network.devices, block_as_of, config, pad=HORIZON + 7)
    special = special_days(panel, HORIZON)
    dates = pd.date_range(block_as_of, periods=HORIZON)
    in_block = (dates >= "2024-05-01") & (dates <= "2024-05-05")
    assert special[:, in_block].all() and not special.all()
    models = trained.model.withdrawals_.models_
    raw_ets = models["ets"].predict(panel, HORIZON)
    out = predict_candidates(models, panel, HORIZON)
    np.testing.assert_array_equal(out["ets"][special], out["lightgbm"][special])
    np.testing.assert_array_equal(out["ets"][~special], raw_ets[~special])
    np.testing.assert_allclose(out["blend"], 0.5 * (out["ets"] + out["lightgbm"]))


def test_device_gbm_learns_each_device_and_joins_the_pooled_forecast(network, config, as_of):
    panel = build_panel(network.daily, network.devices, as_of, config, pad=HORIZON + 7)
    short = panel.values.copy()
    short[0, :-60] = np.nan  # 60 days of history: too few rows for its own trees
    panel = type(panel)(panel.device_ids, panel.start, short, panel.calendar, panel.group)
    model = DeviceGBM(max_horizon=HORIZON).fit(panel)
    has_own = np.array([str(d) in model.boosters_ for d in panel.device_ids])
    assert not has_own[0] and has_own[np.isfinite(short).sum(axis=1) >= 200].all() and has_own.sum() >= 9
    own = model.predict(panel, HORIZON)
    assert np.isnan(own[~has_own]).all() and np.isfinite(own[has_own]).all() and (own[has_own] >= 0).all()
    actual = network.true_demand.pivot(index="device_id", columns="date", values="withdrawals")
    actual = actual.reindex(index=panel.device_ids, columns=pd.date_range(as_of, periods=HORIZON)).to_numpy()
    naive = SeasonalNaive().fit(panel).predict(panel, HORIZON)
    assert smape(actual[has_own], own[has_own]) < smape(actual[has_own], naive[has_own])
    pooled = PooledGBM(max_horizon=HORIZON, n_jobs=1).fit(panel).predict(panel, HORIZON)
    out = combine({"lightgbm": pooled.copy(), "lightgbm_device": own}, panel, HORIZON)
    assert "lightgbm_device" not in out
    np.testing.assert_allclose(out["lightgbm"][has_own], 0.5 * (pooled[has_own] + own[has_own]))
    np.testing.assert_array_equal(out["lightgbm"][~has_own], pooled[~has_own])


def test_lightgbm_reads_last_years_easter_not_the_same_week_52_weeks_back():
    """Easter moved from 28 March 1997 to 10 April 1998: the Saturday before it must read 29 March 1997."""
    days = pd.date_range("1996-06-01", "1998-04-05", freq="D")
    demand = pd.Series(100.0, index=days)
    demand[pd.Timestamp("1997-03-29")] = 900.0  # last year's Easter Saturday
    demand[pd.Timestamp("1997-04-12")] = 50.0  # the Saturday 52 weeks before 1998's
    daily = pd.DataFrame(
        {"device_id": "N1", "date": days, "withdrawals": demand.to_numpy(), "deposits": 0.0, "censored": False}
    )
    devices = pd.DataFrame({"device_id": ["N1"], "country": ["GB"], "subdivision": ["ENG"]})
    as_of = pd.Timestamp("1998-04-06")
    panel = build_panel(daily, devices, as_of, load_config(), pad=20, horizon=14)
    X, _ = forecast_design(panel, np.array([0]), 14, 56)
    ratio = X[:, GBM_FEATURES.index("last_year_day_ratio")]
    last_years_level = (91 * 100 + 800) / 91  # the 91 days before 1997-04-07 hold the 900
    assert ratio[5] == pytest.approx(900 / last_years_level, rel=1e-5)  # 1998-04-11, the sixth day ahead
    assert ratio[0] == pytest.approx(100 / last_years_level, rel=1e-5)  # an ordinary Monday reads 52 weeks back


def test_train_reports_backtest_selection_metrics_and_window(trained, network, as_of):
    ids = set(network.daily.loc[network.daily["date"] < as_of, "device_id"].astype(str))
    assert set(trained.selection["device_id"]) == ids
    assert set(trained.backtest["model"]) >= {"seasonal_naive", "ets", "lightgbm", "blend", "selected"}
    for key in ("smape_mean", "mase_mean", "coverage_q95", "smape_mean_seasonal_naive"):
        assert np.isfinite(trained.metrics[key])
    assert trained.window["train_end"] == (as_of - pd.Timedelta(days=1)).date().isoformat()
    assert len(trained.window["backtest_origins"]) == 3 and trained.window["horizon"] == 14


def test_selection_never_worse_than_seasonal_naive_in_backtest(trained):
    bt = trained.backtest
    wide = bt[bt["model"] != "selected"].pivot(index="device_id", columns="model", values=["smape", "mase"])
    chosen = trained.selection.set_index("device_id")["model"]
    backtested = chosen[~trained.selection.set_index("device_id")["reason"].str.startswith("short")]
    assert len(backtested) >= 8
    for device, name in backtested.items():
        relative = (
            wide.loc[device, ("smape", name)] / wide.loc[device, ("smape", "seasonal_naive")]
            + wide.loc[device, ("mase", name)] / wide.loc[device, ("mase", "seasonal_naive")]
        )
        assert relative <= 2.0 + 1e-9, device


def test_forecast_frame_quantiles_monotone_and_paths(trained, network, as_of):
    fc = _forecast(trained.model, network.daily, network.devices, as_of)
    frame = fc.frame
    quantiles = frame[["q50", "q90", "q95", "q99"]].to_numpy()
    assert (quantiles >= 0).all() and (np.diff(quantiles, axis=1) >= 0).all()
    assert (frame["yhat"] >= 0).all() and frame["yhat"].notna().all()
    assert frame["date"].min() == as_of and frame["date"].nunique() == HORIZON
    assert fc.withdrawal_paths.shape == (len(fc.device_ids), 200, HORIZON)
    assert fc.withdrawal_paths.dtype == np.float32 and (fc.withdrawal_paths >= 0).all()
    branches = network.devices.loc[network.devices["kind"] == "branch", "device_id"].astype(str)
    deposits = frame.loc[frame["device_id"].isin(branches), "deposits_yhat"]
    assert deposits.notna().all() and (deposits > 0).all()
    assert frame.loc[~frame["device_id"].isin(branches), "deposits_yhat"].isna().all()


def test_paths_take_each_horizon_weeks_error_scale(trained, config):
    """Week k of a path is as wide (and as biased) as the backtest's errors k weeks ahead; days past
    the backtest's last week keep its scale."""
    fitted = trained.model.withdrawals_
    assert len(fitted.week_scale_) == 2 and (fitted.week_scale_ > 0).all()  # 14-day backtest: 2 weeks
    model = TargetModel(config)
    model.blocks_ = np.random.default_rng(0).standard_normal((2000, 7)).astype(np.float32)
    model.week_center_, model.week_scale_ = np.array([0.0, 0.3]), np.array([0.1, 0.4])
    keys = device_keys(["a", "b", "c", "d"], "test")
    paths = model._paths(np.full((4, 21), 100.0), np.ones((4, 1)), np.full((4, 1), 1e-6), 500, keys)
    log_ratio = np.log(paths / 100.0)
    for days, center, scale in ((slice(0, 7), 0.0, 0.1), (slice(7, 14), 0.3, 0.4), (slice(14, 21), 0.3, 0.4)):
        week = log_ratio[:, :, days]
        assert np.median(week) == pytest.approx(center, abs=0.02)
        assert week.std() == pytest.approx(scale, rel=0.08)
    # With no backtest week to draw from, days are independent normals on the device's spread.
    model.blocks_ = np.zeros((0, 7), np.float32)
    log_ratio = np.log(model._paths(np.full((4, 21), 100.0), np.full((4, 1), 0.2), np.full((4, 1), 1e-6), 500, keys))
    log_ratio -= np.log(100.0)
    assert log_ratio.mean() == pytest.approx(0.0, abs=0.01) and log_ratio.std() == pytest.approx(0.2, rel=0.03)
    assert abs(np.corrcoef(log_ratio[:, :, 0].ravel(), log_ratio[:, :, 1].ravel())[0, 1]) < 0.05


def test_a_devices_paths_do_not_depend_on_the_horizon_or_the_other_devices(trained, network, as_of):
    """A 14-day and a 30-day plan, or a plan before and after other devices join, see the same paths for
    the same days: the loads they imply do not move with the network or the horizon."""
    full = trained.model.predict(network.daily, network.devices, as_of, 30)
    short = trained.model.predict(network.daily, network.devices, as_of, HORIZON)
    np.testing.assert_array_equal(short.withdrawal_paths, full.withdrawal_paths[:, :, :HORIZON])
    np.testing.assert_array_equal(short.deposit_paths, full.deposit_paths[:, :, :HORIZON])
    keep = list(full.device_ids[::2])  # every other device, a branch among them (not the one with no history)
    assert network.devices.set_index("device_id").loc[keep, "kind"].eq("branch").any()
    daily, devices = (frame[frame["device_id"].isin(keep)] for frame in (network.daily, network.devices))
    some = trained.model.predict(daily, devices, as_of, 30)
    assert list(some.device_ids) == keep
    rows = pd.Index(full.device_ids).get_indexer(keep)
    np.testing.assert_array_equal(some.withdrawal_paths, full.withdrawal_paths[rows])
    np.testing.assert_array_equal(some.deposit_paths, full.deposit_paths[rows])


def test_quantile_coverage_on_held_out_days(trained, network, as_of):
    """Forecast the 14 days after as_of and score against the true (uncensored) demand."""
    fc = _forecast(trained.model, network.daily, network.devices, as_of)
    joined = fc.frame.merge(network.true_demand, on=["device_id", "date"])
    assert len(joined) > 100
    assert 0.8 <= (joined["withdrawals"] <= joined["q95"]).mean() <= 1.0
    assert 0.25 <= (joined["withdrawals"] <= joined["q50"]).mean() <= 0.75
    assert 0.0 < trained.metrics["coverage_q50"] < trained.metrics["coverage_q95"] <= 1.0
    assert trained.metrics["coverage_q95"] >= 0.85


def test_no_leakage_from_days_on_or_after_as_of(trained, network, config, as_of):
    future = network.daily["date"] >= as_of
    perturbed = network.daily.copy()
    perturbed.loc[future, "withdrawals"] = perturbed.loc[future, "withdrawals"] * 10 + 12345
    base = _forecast(trained.model, network.daily, network.devices, as_of).frame
    shifted = _forecast(trained.model, perturbed, network.devices, as_of).frame
    pd.testing.assert_frame_equal(base, shifted)
    retrained = train(perturbed, network.devices, as_of, config)
    pd.testing.assert_frame_equal(base, _forecast(retrained.model, network.daily, network.devices, as_of).frame)
    pd.testing.assert_frame_equal(trained.backtest, retrained.backtest)


def test_censored_day_is_never_fitted(trained, network, as_of):
    daily = network.daily
    device = daily["device_id"].iloc[0]
    day = as_of - pd.Timedelta(days=2)
    row = (daily["device_id"] == device) & (daily["date"] == day)
    censored = daily.copy()
    censored.loc[row, "censored"] = True
    huge = censored.copy()
    huge.loc[row, "withdrawals"] = 1e12
    a = _forecast(trained.model, censored, network.devices, as_of).frame
    b = _forecast(trained.model, huge, network.devices, as_of).frame
    pd.testing.assert_frame_equal(a, b)
    uncensored_huge = daily.copy()
    uncensored_huge.loc[row, "withdrawals"] = 1e12
    c = _forecast(trained.model, uncensored_huge, network.devices, as_of).frame
    assert not np.allclose(a["yhat"], c["yhat"])  # the same value, not flagged, does move it


def test_cold_start_device_gets_sensible_forecast(trained, network, as_of):
    rng = np.random.default_rng(0)
    days = pd.date_range(as_of - pd.Timedelta(days=14), periods=14, freq="D")
    weekly = np.array([1.0, 1.0, 1.0, 1.1, 1.3, 0.8, 0.7])
    new = pd.DataFrame(
        {
            "device_id": pd.array(["ATM-NEW"] * 14, dtype="string"),
            "date": days,
            "withdrawals": 150_000 * weekly[days.dayofweek] * rng.lognormal(0, 0.1, 14),
        }
    )
    daily = pd.concat([network.daily, new], ignore_index=True)
    daily["censored"] = daily["censored"].fillna(False).astype(bool)
    forecast = _forecast(trained.model, daily, network.devices, as_of)
    mine = forecast.frame[forecast.frame["device_id"] == "ATM-NEW"]
    assert len(mine) == HORIZON and (mine["model"] == "lightgbm").all()
    assert 0.6 < mine["yhat"].mean() / new["withdrawals"].mean() < 1.5
    assert forecast.failures == {}


def test_a_device_with_no_history_forecasts_as_its_twin_deposits_included(trained, network, as_of):
    """A new branch in the master was forecast at the median day of every device, ATMs included, without deposits,
    so its plan loaded cash a branch takes in (plan audit). Given a twin (replenishment.typical_devices picks the
    typical recorded device of its kind), it forecasts as that device, deposits too; without one, as before."""
    master = network.devices
    branch = master.loc[master["kind"] == "branch", "device_id"].iloc[0]
    new = pd.DataFrame({"device_id": ["NEW-branch", "NEW-atm"], "kind": ["branch", "atm"]})
    devices = pd.concat([master, new], ignore_index=True)
    fc = trained.model.predict(network.daily, devices, as_of, HORIZON, twins={"NEW-branch": branch})
    frame = fc.frame.set_index(["device_id", "date"])
    assert (frame.loc["NEW-branch", "model"] == f"like {branch}").all()
    assert (frame.loc["NEW-atm", "model"] == "network_median").all()  # no twin given
    for column in ("yhat", "q90", "deposits_yhat"):
        np.testing.assert_array_equal(frame.loc["NEW-branch", column], frame.loc[branch, column])
    assert frame.loc["NEW-branch", "deposits_yhat"].gt(0).all() and frame.loc["NEW-atm", "deposits_yhat"].isna().all()
    rows = pd.Index(fc.device_ids).get_indexer(["NEW-branch", branch])
    np.testing.assert_array_equal(fc.deposit_paths[rows[0]], fc.deposit_paths[rows[1]])
    np.testing.assert_array_equal(fc.withdrawal_paths[rows[0]], fc.withdrawal_paths[rows[1]])


def test_predict_at_later_as_of_uses_newer_history(trained, network, as_of):
    later = as_of + pd.Timedelta(days=HORIZON)
    early = _forecast(trained.model, network.daily, network.devices, as_of, HORIZON * 2)
    late = _forecast(trained.model, network.daily, network.devices, later)
    assert late.dates[0] == later and len(late.dates) == HORIZON
    overlap = early.frame[early.frame["date"] >= later].reset_index(drop=True)
    assert not np.allclose(overlap["yhat"], late.frame["yhat"])  # newer history changed the forecast
    assert np.isfinite(late.frame["yhat"]).all()


def test_device_whose_model_raises_gets_seasonal_naive_fallback(trained, network, as_of):
    """The failing device alone falls back; the rest of its chunk keeps its model."""
    model = cloudpickle.loads(cloudpickle.dumps(trained.model))
    bad = str(model.withdrawals_.choice_.index[0])
    make_device_fail(model, bad)
    forecast = _forecast(model, network.daily, network.devices, as_of)
    frame = forecast.frame
    assert set(forecast.failures) == {bad} and "diverged" in forecast.failures[bad]
    mine = frame[frame["device_id"] == bad]
    assert (mine["model"] == "fallback").all() and mine["yhat"].notna().all()
    assert (frame.loc[frame["device_id"] != bad, "model"] != "fallback").all()
    panel = build_panel(network.daily, network.devices, as_of, model.config, device_ids=np.array([bad]))
    np.testing.assert_allclose(mine["yhat"], SeasonalNaive().fit(panel).predict(panel, HORIZON)[0])


def test_a_device_silent_for_longer_than_the_naive_looks_back_is_forecast_at_its_last_level(trained, network, as_of):
    """Nine weeks unrecorded is not nine weeks of zero demand: the fallback reads what it last showed."""
    model = cloudpickle.loads(cloudpickle.dumps(trained.model))
    quiet = str(model.withdrawals_.choice_.index[0])
    make_device_fail(model, quiet)
    silent = (network.daily["device_id"] == quiet) & (network.daily["date"] >= as_of - pd.Timedelta(63, "D"))
    daily = network.daily[~silent]
    mine = _forecast(model, daily, network.devices, as_of).frame.query("device_id == @quiet")
    last = daily[daily["device_id"] == quiet].tail(28)["withdrawals"]
    assert (mine["model"] == "fallback").all()
    assert mine["yhat"].between(last.min(), last.max()).all() and mine["yhat"].mean() > 0.5 * last.mean()


def test_pickle_round_trip_in_fresh_process_gives_identical_forecasts(trained, network, as_of, tmp_path):
    model_file, data_file, out_file = tmp_path / "model.pkl", tmp_path / "daily.parquet", tmp_path / "out.npz"
    model_file.write_bytes(cloudpickle.dumps(trained.model))
    network.daily.to_parquet(data_file)
    network.devices.to_parquet(tmp_path / "devices.parquet")
    script = textwrap.dedent(f"""
        import cloudpickle, numpy as np, pandas as pd
        model = cloudpickle.loads(open({str(model_file)!r}, "rb").read())
        daily = pd.read_parquet({str(data_file)!r})
        devices = pd.read_parquet({str(tmp_path / "devices.parquet")!r})
        fc = model.predict(daily, devices, pd.Timestamp({str(as_of.date())!r}), {HORIZON})
        np.savez({str(out_file)!r}, yhat=fc.frame["yhat"].to_numpy(), q99=fc.frame["q99"].to_numpy(),
                 paths=fc.withdrawal_paths)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=str(tmp_path.parent))
    here = _forecast(trained.model, pd.read_parquet(data_file), network.devices, as_of)
    there = np.load(out_file)
    np.testing.assert_array_equal(there["yhat"], here.frame["yhat"].to_numpy())
    np.testing.assert_array_equal(there["q99"], here.frame["q99"].to_numpy())
    np.testing.assert_array_equal(there["paths"], here.withdrawal_paths)


def test_parallel_training_is_deterministic_and_equals_serial(network, config, as_of, monkeypatch):
    import forecasting.backtest as backtest_module

    small = network.daily[network.daily["device_id"].isin(network.daily["device_id"].unique()[:4])]
    serial = train(small, network.devices, as_of, config.updated(forecast={"n_jobs": 1}))
    monkeypatch.setattr(backtest_module, "PARALLEL_MIN_CELLS", 0)
    parallel = train(small, network.devices, as_of, config.updated(forecast={"n_jobs": 2}))
    a = serial.model.predict(small, network.devices, as_of, HORIZON)
    b = parallel.model.predict(small, network.devices, as_of, HORIZON)
    pd.testing.assert_frame_equal(a.frame, b.frame)
    np.testing.assert_array_equal(a.withdrawal_paths, b.withdrawal_paths)
    pd.testing.assert_frame_equal(serial.selection, parallel.selection)


def _assert_same_model(a, b, daily, devices, as_of):
    fa, fb = a.model.predict(daily, devices, as_of, HORIZON), b.model.predict(daily, devices, as_of, HORIZON)
    pd.testing.assert_frame_equal(fa.frame, fb.frame)
    np.testing.assert_array_equal(fa.withdrawal_paths, fb.withdrawal_paths)
    pd.testing.assert_frame_equal(a.selection, b.selection)
    pd.testing.assert_frame_equal(a.backtest, b.backtest)


def test_training_in_device_chunks_equals_training_at_once(trained, network, config, as_of):
    """Per-device models fitted chunk by chunk (as a Dask cluster or the process pool runs them) make
    the same model as one fit: chunking is how training scales, never what it learns."""
    chunked = train(network.daily, network.devices, as_of, config.updated(forecast={"train_devices_per_task": 5}))
    tasks = chunked.model.withdrawals_.tasks(build_panel(network.daily, network.devices, as_of, config))
    assert sum(task.part == "devices" for task in tasks) == 2 * 3  # (backtest + final fit) x 3 chunks of 12
    pd.testing.assert_frame_equal(
        chunked.model.withdrawals_.models_["ets"].params_, trained.model.withdrawals_.models_["ets"].params_
    )
    _assert_same_model(chunked, trained, network.daily, network.devices, as_of)


def test_training_runs_its_tasks_on_a_dask_cluster(trained, network, config, as_of):
    from distributed import Client, LocalCluster, get_task_stream

    from forecasting.backtest import training_executor

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
        get_task_stream(client) as stream,
        training_executor(client.get_executor()),
    ):
        on_dask = train(network.daily, network.devices, as_of, config.updated(forecast={"train_devices_per_task": 6}))
    # Withdrawals and deposits (the branches): 2 fits x (1 network task + 2 chunks), and 2 x (1 + 1).
    assert len(stream.data) == 10
    assert len({task["worker"] for task in stream.data}) == 2
    _assert_same_model(on_dask, trained, network.daily, network.devices, as_of)


def test_score_window_compares_models_on_the_same_origins(trained, network, config, as_of):
    scores = score_window(trained.model, network.daily, network.devices, [as_of], HORIZON, config)
    assert 0 < scores["smape_mean"] < 60 and 0 < scores["mase_mean"] < 2
    assert scores["n_scores"] == trained.selection["device_id"].nunique()


def test_young_network_without_backtest_still_forecasts_every_device(config):
    """40 days of history leave no room for a backtest: the pooled model serves, quantiles stay ordered."""
    young = generate_network(n_atms=3, n_branches=1, n_recyclers=0, start="2024-01-01", days=40, seed=5)
    as_of = pd.Timestamp("2024-02-10")
    result = train(young.daily, young.devices, as_of, config)
    assert (result.selection["model"] == "lightgbm").all()
    assert result.selection["reason"].str.fullmatch(r"short history \(\d+ observed days, fewer than \d+\): .*").all()
    frame = result.model.predict(young.daily, young.devices, as_of, 60).frame
    assert len(frame) == 4 * 60 and frame["yhat"].gt(0).all()
    assert (frame["q99"] >= frame["q95"]).all() and (frame["q50"] >= 0).all()


def test_a_device_silent_through_the_backtest_is_not_called_young(config):
    """Years of history but no recorded day in the backtest's window: it was labelled "short history"."""
    network = generate_network(n_atms=3, n_branches=0, n_recyclers=0, start="2024-01-01", days=240, seed=6)
    as_of = pd.Timestamp("2024-08-28")
    quiet = (network.daily["device_id"] == "ATM-00001") & (network.daily["date"] >= as_of - pd.Timedelta(days=60))
    result = train(network.daily[~quiet], network.devices, as_of, config)
    reason = result.selection.set_index("device_id")["reason"]
    assert reason["ATM-00001"].startswith("too few backtest days to judge (0 scored, fewer than 14)")
    assert not reason.drop("ATM-00001").str.startswith("too few").any()


@pytest.mark.parametrize("days", [1, 5, 7])
def test_network_in_its_first_week_forecasts_each_devices_mean(config, days):
    """With no device past its first week the pooled model has nothing to learn from: it forecasts the
    mean of each device's observed days instead of failing inside LightGBM."""
    young = generate_network(n_atms=2, n_branches=1, n_recyclers=0, start="2024-01-01", days=days, seed=5)
    as_of = pd.Timestamp("2024-01-01") + pd.Timedelta(days=days)
    result = train(young.daily, young.devices, as_of, config)
    frame = result.model.predict(young.daily, young.devices, as_of, 14).frame
    seen = young.daily[~young.daily["censored"]].groupby("device_id")["withdrawals"].mean()
    assert len(frame) == 3 * 14 and np.isfinite(frame["yhat"]).all() and len(seen) >= 1
    forecast_mean = frame.groupby("device_id")["yhat"].mean()
    assert np.allclose(forecast_mean[seen.index], seen, rtol=0.05)


def test_a_staggered_rollout_with_one_device_past_its_first_week_still_trains(config):
    """One usable sample is too few for the pooled trees (bagging could leave none): the level serves."""
    young = generate_network(n_atms=60, n_branches=0, n_recyclers=0, start="2024-03-04", days=8, seed=5)
    daily = young.daily[(young.daily["device_id"] == "ATM-00001") | (young.daily["date"] > "2024-03-04")]
    for seed in (0, 4, 5):  # seeds whose bagging left LightGBM no row at all
        settings = config.updated(forecast={"seed": seed})
        result = train(daily, young.devices, pd.Timestamp("2024-03-12"), settings)
        frame = result.model.predict(daily, young.devices, pd.Timestamp("2024-03-12"), 7).frame
        assert len(frame) == 60 * 7 and np.isfinite(frame["yhat"]).all()
