"""When the nightly run retrains: no champion, cadence reached, or the serving model's error drifted."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

import ingest
from cashcast import jobs
from cashcast.config import load_config
from cashcast.io import write_table
from forecasting import registry

AS_OF = pd.Timestamp("2025-03-01")


@pytest.fixture
def lake(workspace, tmp_path):
    """Four weeks of one ATM's history, 100,000 a day, in a real lake."""
    days = pd.date_range(AS_OF - pd.Timedelta(days=28), AS_OF - pd.Timedelta(days=1))
    path = tmp_path / "daily.csv"
    pd.DataFrame({"device_id": "A1", "date": days.strftime("%Y-%m-%d"), "withdrawals": 100_000.0}).to_csv(
        path, index=False
    )
    ingest.ingest_file(path, "daily", workspace, load_config())
    return workspace


def champion(trained_on: str, smape: float):
    """A registered champion fitted under the default config's model settings."""
    settings = registry.settings_fingerprint(load_config())
    tags = {"as_of": trained_on, registry.SCORE_KEY: str(smape), "settings": settings}
    return SimpleNamespace(tags=tags, version="3")


def forecast_made(ws, made_on: pd.Timestamp, level: float, device_id: str = "A1") -> None:
    days = pd.date_range(made_on, periods=14)
    frame = pd.DataFrame({"device_id": device_id, "date": days, "model": "ets", "yhat": level})
    write_table(frame, jobs.output_path(ws.forecasts, made_on, "forecast.csv"))


def test_drift_reads_a_device_whose_id_the_forecast_file_escaped(workspace, tmp_path):
    """forecast.csv writes '-0042 as '-0042 (a spreadsheet would run it): read back raw, it joined no lake row and the
    drift rule scored nothing for the device (diff review)."""
    days = pd.date_range(AS_OF - pd.Timedelta(days=7), AS_OF - pd.Timedelta(days=1))
    frame = pd.DataFrame({"device_id": "-0042", "date": days.strftime("%Y-%m-%d"), "withdrawals": 100.0})
    frame.to_csv(tmp_path / "daily.csv", index=False)
    ingest.ingest_file(tmp_path / "daily.csv", "daily", workspace, load_config())
    forecast_made(workspace, AS_OF - pd.Timedelta(days=3), level=200.0, device_id="-0042")
    assert jobs.recent_forecast_error(workspace, AS_OF) == pytest.approx(200 * 100 / 300)


def test_no_champion_means_train(lake, monkeypatch):
    monkeypatch.setattr(registry, "champion_version", lambda ws, config, **kw: None)
    assert jobs.training_due(lake, load_config(), AS_OF) == (True, "no champion model yet")


def test_cadence(lake, monkeypatch):
    config = load_config()
    monkeypatch.setattr(registry, "champion_version", lambda ws, c, **kw: champion("2025-02-22", 10.0))
    due, why = jobs.training_due(lake, config, AS_OF)
    assert due and "7 days ago" in why
    monkeypatch.setattr(registry, "champion_version", lambda ws, c, **kw: champion("2025-02-26", 10.0))
    assert not jobs.training_due(lake, config, AS_OF)[0]
    daily_cadence = config.updated(forecast={"retrain_every_days": 1})
    assert jobs.training_due(lake, daily_cadence, AS_OF) == (True, "champion trained 3 days ago (cadence 1)")
    day_before = AS_OF - pd.Timedelta(days=1)
    monkeypatch.setattr(registry, "champion_version", lambda ws, c, **kw: champion(f"{day_before:%Y-%m-%d}", 10.0))
    assert jobs.training_due(lake, daily_cadence, AS_OF) == (True, "champion trained 1 day ago (cadence 1)")


def test_drift_of_recent_error_past_threshold_triggers_training(lake, monkeypatch):
    config = load_config()
    monkeypatch.setattr(registry, "champion_version", lambda ws, c, **kw: champion("2025-02-26", 10.0))
    monkeypatch.setattr(registry, "latest_version", lambda ws, c: None)
    forecast_made(lake, AS_OF - pd.Timedelta(days=3), level=102_000.0)  # 2% off: within bounds
    assert not jobs.training_due(lake, config, AS_OF)[0]
    assert jobs.recent_forecast_error(lake, AS_OF) == pytest.approx(200 * 2_000 / 202_000, rel=1e-6)
    forecast_made(lake, AS_OF - pd.Timedelta(days=2), level=150_000.0)  # the newer forecast is 40% off
    due, why = jobs.training_due(lake, config, AS_OF)
    assert due and "drifted" in why


def test_drift_leaves_out_holidays_and_the_days_around_their_blocks(lake):
    """Through Christmas a UK network retrained every third night for holiday errors no retrain can mend (UK
    nightly audit). Japan's 22-24 February 2025 block (the Emperor's Birthday, observed on Monday) and the working
    days around it are the whole week here: nothing usual left to judge."""
    forecast_made(lake, AS_OF - pd.Timedelta(days=7), level=300_000.0)  # 100% sMAPE on every day
    assert jobs.recent_forecast_error(lake, AS_OF, config=load_config()) == pytest.approx(100.0)
    japan = load_config().updated(devices={"country": "JP"})
    assert jobs.recent_forecast_error(lake, AS_OF, config=japan) is None


def test_drift_is_judged_on_the_forecasts_made_since_the_last_training_only(lake, monkeypatch):
    """After a bad week the run retrained every night: the drift rule read forecasts that earlier models had
    made, which no retraining can improve. Now it reads those made since the last training, three days of them
    at least."""
    config = load_config()
    monkeypatch.setattr(registry, "champion_version", lambda ws, c, **kw: champion("2025-02-27", 10.0))
    monkeypatch.setattr(registry, "latest_version", lambda ws, c: None)
    for k in range(3, 8):  # the week before: 50% off, made by the models before this one
        forecast_made(lake, AS_OF - pd.Timedelta(days=k), level=150_000.0)
    assert jobs.recent_forecast_error(lake, AS_OF) > 30  # what the rule read before
    forecast_made(lake, AS_OF - pd.Timedelta(days=2), level=100_000.0)  # the new champion's: spot on
    assert jobs.training_due(lake, config, AS_OF) == (False, "champion is 2 days old and within drift bounds")
    forecast_made(lake, AS_OF - pd.Timedelta(days=1), level=150_000.0)  # one bad day: not yet a verdict
    assert not jobs.training_due(lake, config, AS_OF)[0]
    later = AS_OF + pd.Timedelta(days=1)
    forecast_made(lake, AS_OF, level=150_000.0)
    more = pd.DataFrame({"device_id": ["A1"], "date": [AS_OF.strftime("%Y-%m-%d")], "withdrawals": [100_000.0]})
    more.to_csv(lake.home / "more.csv", index=False)
    ingest.ingest_file(lake.home / "more.csv", "daily", lake, config)
    due, why = jobs.training_due(lake, config, later)  # three days since: two of them 50% off
    assert due and "drifted" in why
    # A version trained since (even one not promoted) starts the count again.
    monkeypatch.setattr(registry, "latest_version", lambda ws, c: champion("2025-03-01", 10.0))
    assert not jobs.training_due(lake, config, later)[0]


def test_history_that_ends_long_before_the_morning_is_warned_about(lake):
    import warnings

    stale = "last recorded day is 2025-02-28; the 20 days before 2025-03-21 have no record"
    with pytest.warns(jobs.StaleHistoryWarning, match=stale):
        jobs.load_history(lake, AS_OF + pd.Timedelta(days=20))
    with warnings.catch_warnings():
        warnings.simplefilter("error", jobs.StaleHistoryWarning)
        jobs.load_history(lake, AS_OF + pd.Timedelta(days=jobs.STALE_HISTORY_DAYS))  # a week's gap: fine
