"""A custom events calendar reaches the models like holidays do: a recurring local event is learnt."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

import ingest
from cashcast import jobs
from cashcast.config import load_config
from cashcast.workspace import Workspace

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
DEVICES = ["ATM-00001", "ATM-00002", "ATM-00003", "ATM-00004"]
AS_OF = pd.Timestamp("2026-10-01")


def test_event_days_are_learnt_and_forecast(tmp_path):
    # A market every 17 days (not weekly, so the weekly season cannot explain it) lifts demand 2.5x.
    events = pd.date_range("2024-11-10", "2026-12-31", freq="17D")
    future_event = events[events >= AS_OF][0]
    daily = pd.read_csv(SAMPLE / "daily.csv", parse_dates=["date"])
    daily = daily[daily["device_id"].isin(DEVICES)].copy()
    daily.loc[daily["date"].isin(events), "withdrawals"] *= 2.5
    (tmp_path / "daily.csv").write_text(daily.assign(date=daily["date"].dt.strftime("%Y-%m-%d")).to_csv(index=False))
    pd.DataFrame(
        {"date_start": events.strftime("%Y-%m-%d"), "date_end": "", "scope": "all", "scope_value": "", "name": "market"}
    ).to_csv(tmp_path / "events.csv", index=False)

    forecasts = {}
    for label, events_file in (("without", ""), ("with", str(tmp_path / "events.csv"))):
        ws = Workspace.resolve(tmp_path / label).ensure()
        config = load_config().updated(
            calendar={"events_file": events_file}, forecast={"backtest_folds": 1, "backtest_horizon_days": 14}
        )
        ingest.ingest_file(tmp_path / "daily.csv", "daily", ws, config)
        out = jobs.run_forecast(ws, config, AS_OF, 28, tmp_path / f"{label}.csv")
        forecasts[label] = pd.read_csv(out, parse_dates=["date"]).groupby("date")["yhat"].sum()
    lift_with = forecasts["with"][future_event] / forecasts["with"].median()
    lift_without = forecasts["without"][future_event] / forecasts["without"].median()
    assert lift_with > 1.6 and lift_with > lift_without + 0.4, (lift_with, lift_without)

    # A market added to the calendar after training reaches the next forecast, without retraining.
    extra = future_event + pd.Timedelta(days=8)
    with_events = pd.read_csv(tmp_path / "events.csv", dtype=str, keep_default_na=False)
    added = with_events.iloc[:1].assign(date_start=f"{extra:%Y-%m-%d}")
    pd.concat([with_events, added]).to_csv(tmp_path / "events.csv", index=False)
    out = jobs.run_forecast(ws, config.updated(calendar={"events_file": str(tmp_path / "events.csv")}), AS_OF, 28)
    again = pd.read_csv(out, parse_dates=["date"]).groupby("date")["yhat"].sum()
    assert again[extra] / again.median() > 1.6 and forecasts["with"][extra] / forecasts["with"].median() < 1.3
