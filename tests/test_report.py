"""The nightly HTML report and the analyst helpers it shares with the notebooks, on real lake files.

The workspace is built from the shipped sample through the real ingest, and the plan through the real
planner; the seasonal-naive forecaster stands in for a trained model so the file stays fast.
"""

from __future__ import annotations

import base64
import dataclasses
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import ingest
import replenishment
from cashcast import analyst, jobs, report
from cashcast.config import load_config
from cashcast.io import write_table
from cashcast.workspace import Workspace

AS_OF = pd.Timestamp("2026-11-01")
YESTERDAY = AS_OF - pd.Timedelta(days=1)
DEVICES = ["ATM-00001", "ATM-00002", "BR-0001", "RC-0001"]
CENSORED_YESTERDAY = "ATM-00002"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class NaiveModel:
    """The replay's forecaster contract on top of the model-free seasonal naive."""

    def predict(self, daily, devices, as_of, horizon, n_paths=None):
        return replenishment.naive_forecast(daily, as_of, horizon, n_paths=40)

    def predict_for_replay(self, past, as_of, horizon):
        return self.predict(past, None, as_of, horizon)


@pytest.fixture(scope="module")
def config():
    return analyst.quick_config()


@pytest.fixture(scope="module")
def planned_ws(tmp_path_factory, config):
    """A workspace with the sample's lake, last night's forecast and tonight's plan files."""
    ws = Workspace.resolve(tmp_path_factory.mktemp("report") / "home").ensure()
    analyst.ingest_sample(ws, config, tuple(DEVICES))
    outage = tmp_path_factory.mktemp("status") / "outage.csv"
    pd.DataFrame(
        {
            "device_id": [CENSORED_YESTERDAY],
            "start": ["2026-10-31 10:00"],
            "end": ["2026-10-31 15:00"],
            "state": ["offline"],
        }
    ).to_csv(outage, index=False)
    ingest.ingest_file(outage, "status", ws, config)
    history = jobs.load_history(ws, AS_OF)
    last_night = replenishment.naive_forecast(history.daily, YESTERDAY, 14)
    write_table(last_night.frame, ws.forecasts / f"{YESTERDAY:%Y-%m-%d}" / "forecast.csv")
    forecast = replenishment.naive_forecast(history.daily, AS_OF, config.plan.horizon_days, n_paths=60)
    terms = replenishment.resolve_terms(history.devices, history.daily, config)
    result = replenishment.plan_network(forecast, terms, jobs.latest_balances(history.balances, AS_OF), AS_OF, config)
    files = jobs.write_plan(ws, AS_OF, forecast.frame, result, None)
    planned = {"plan": str(files.plan), "summary": str(files.summary), "projection": str(files.projection)}
    return ws, planned


@pytest.fixture(scope="module")
def page(planned_ws, config) -> str:
    ws, planned = planned_ws
    path = report.write_report(ws, config, AS_OF, planned, {"reason": "no champion model yet"})
    assert path == ws.reports / "2026-11-01" / "index.html"
    return path.read_text(encoding="utf-8")


def _labels(fig) -> list[tuple[str, str, str]]:
    return [(ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes]


def assert_labelled(fig, y_unit: str) -> None:
    """Every axes has a title, both axis labels, and the y label names its unit in brackets."""
    assert fig.axes
    for title, xlabel, ylabel in _labels(fig):
        assert title and xlabel and ylabel
        assert f"({y_unit})" in ylabel, ylabel


# ---------------------------------------------------------------- the page


def test_report_embeds_its_images_as_png(page):
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 4  # cash vs baseline, fleet cash per day, visits per day, yesterday's accuracy
    assert all(base64.b64decode(data).startswith(PNG_SIGNATURE) for data in images)
    assert 'src="http' not in page and "<link" not in page  # self-contained


def test_report_tables_show_the_plan(page, planned_ws):
    _, planned = planned_ws
    plan = pd.read_csv(planned["plan"])
    assert page.count("<table") == 3  # headline, devices at risk, largest forecast errors
    assert "%</td>" in page.split("Devices most at risk")[1]  # stockout risk shown in percent
    for label in ("cash deployed", "expected idle cash", "visits", "expected cost"):
        assert label in page
    at_risk = page.split("Devices most at risk")[1].split("Forecast against actual")[0]
    assert set(re.findall(r"<td>([A-Z]{2,3}-\d+)</td>", at_risk)) == set(plan["device_id"])
    assert "Training: not due (no champion model yet)." in page  # what the run did, then why
    refused = {"trained": True, "promoted": False, "reason": "champion trained 7 days ago (cadence 7)"}
    said = "retrained, but the champion keeps serving (champion trained 7 days ago (cadence 7))"
    assert report.training_line(refused) == said
    headline = page.split("<table")[1]
    visits = re.search(r"<td>visits</td>\s*<td>([^<]*)</td>\s*<td>([^<]*)</td>\s*<td>([^<]*)</td>", headline)
    assert visits and re.fullmatch(r"[\d,]+", visits[1]) and re.fullmatch(r"[\d,]+", visits[2])  # 39, not 39.00
    assert re.fullmatch(r"[+-]\d+\.\d|n/a", visits[3])


def test_report_scores_yesterday_without_censored_days(page):
    assert "3 device(s) scored against the forecast made on 2026-10-31" in page
    assert "1 censored device-day(s) left out" in page
    worst = page.split("Forecast against actual")[1]
    assert CENSORED_YESTERDAY not in worst
    assert "error = forecast - actual: positive where the forecast was too high" in worst


def test_report_names_the_currency_the_config_names(page, planned_ws, config):
    assert "Amounts in the network's currency (name it with [ingest] currency)." in page
    ws, planned = planned_ws
    named = config.model_copy(update={"ingest": config.ingest.model_copy(update={"currency": "INR"})})
    text = report.write_report(ws, named, AS_OF, planned, {}).read_text(encoding="utf-8")
    assert "Amounts in INR." in text and "devices' currency" not in text
    summary = pd.read_csv(planned["summary"])
    assert_labelled(report.cash_figure(summary, "INR"), "INR")  # the charts' axes say it too
    assert_labelled(report.fleet_cash_figure(pd.read_csv(planned["projection"]), "INR"), "INR")


def test_the_report_of_a_late_plan_leaves_the_mornings_own_report_alone(planned_ws, config, page):
    ws, planned = planned_ws
    own = (ws.reports / "2026-11-01" / "index.html").read_text(encoding="utf-8")
    late = Path(planned["plan"]).parent / "late"
    late.mkdir()
    for name in ("plan", "summary", "projection"):
        shutil.copy(planned[name], late)
    try:
        moved = {name: str(late / Path(path).name) for name, path in planned.items()}
        path = report.write_report(ws, config, AS_OF, moved, {"reason": "no champion model yet"})
        assert path == ws.reports / "2026-11-01" / "late" / "index.html"
        assert (ws.reports / "2026-11-01" / "index.html").read_text(encoding="utf-8") == own
    finally:
        shutil.rmtree(late)
        shutil.rmtree(path.parent, ignore_errors=True)


def test_report_page_renders_for_a_workspace_with_no_earlier_forecast(planned_ws, config, tmp_path):
    ws, planned = planned_ws
    fresh = Workspace.resolve(tmp_path / "fresh").ensure()
    path = report.write_report(fresh, config, AS_OF, planned, {})
    text = path.read_text(encoding="utf-8")
    assert "No device has both a forecast and an uncensored actual" in text
    assert "Largest errors" not in text and text.count("<table") == 2


# ---------------------------------------------------------------- chart and table functions


def test_report_charts_have_titles_labels_and_units(planned_ws):
    ws, planned = planned_ws
    plan, summary = pd.read_csv(planned["plan"]), pd.read_csv(planned["summary"])
    assert_labelled(report.cash_figure(summary), "currency units")
    assert_labelled(report.fleet_cash_figure(pd.read_csv(planned["projection"])), "currency units")
    assert_labelled(report.visits_figure(plan), "count")
    accuracy = analyst.yesterday_accuracy(ws, AS_OF)
    fig = report.accuracy_figure(accuracy)
    assert_labelled(fig, "currency units")
    assert "(currency units)" in fig.axes[0].get_xlabel()
    points = fig.axes[0].collections[0].get_offsets()
    assert len(points) == (~accuracy["censored"]).sum() == len(DEVICES) - 1


def test_visits_chart_stacks_loads_and_pickups_per_day(planned_ws):
    _, planned = planned_ws
    plan = pd.read_csv(planned["plan"])
    ax = report.visits_figure(plan).axes[0]
    heights = sum(patch.get_height() for patch in ax.patches)
    assert heights == len(plan)
    assert {t.get_text() for t in ax.get_legend().get_texts()} == set(plan["action"])


def test_headline_table_compares_the_fleet_row_with_the_baseline(planned_ws):
    _, planned = planned_ws
    summary = pd.read_csv(planned["summary"])
    fleet = summary[summary["device_id"] == "TOTAL"].iloc[0]
    table = report.headline_table(summary).set_index("figure")
    row = table.loc["cash deployed"]
    assert row["Cashcast plan"] == pytest.approx(fleet["cash_deployed"])
    assert row["baseline"] == pytest.approx(fleet["baseline_cash_deployed"])
    expected = 100 * (fleet["cash_deployed"] - fleet["baseline_cash_deployed"]) / fleet["baseline_cash_deployed"]
    assert row["change %"] == pytest.approx(expected)


def test_a_notebook_writes_no_plan_into_a_workspace_the_nightly_run_keeps(planned_ws, config):
    """Its visits would count as ordered the next morning: it names the planned morning to read instead."""
    ws, _ = planned_ws
    assert analyst.ensure_outputs(ws, config, AS_OF) == AS_OF  # planned already: only read
    with pytest.raises(ValueError, match=f"no plan for 2026-11-05.*latest {AS_OF:%Y-%m-%d}"):
        analyst.ensure_outputs(ws, config, pd.Timestamp("2026-11-05"))
    assert not (ws.plans / "2026-11-05").exists()


def test_devices_at_risk_keeps_each_devices_riskiest_visit():
    plan = pd.DataFrame(
        {
            "device_id": ["A", "A", "B", "C"],
            "visit_date": ["2026-11-02", "2026-11-05", "2026-11-03", "2026-11-04"],
            "action": "load",
            "amount": 1000.0,
            "stockout_risk": [0.01, 0.2, 0.05, 0.0],
            "reason": "r",
        }
    )
    ranked = report.devices_at_risk(plan, top=2)
    assert ranked["device_id"].tolist() == ["A", "B"]
    assert ranked["visit_date"].tolist() == ["2026-11-05", "2026-11-03"]
    assert report.devices_at_risk(plan.iloc[0:0]).empty
    # C may run dry before its first visit: that counts as much as a risk after one.
    before = plan.assign(stockout_risk_before=[0.0, 0.01, 0.0, 0.3])
    assert report.devices_at_risk(before, top=2)["device_id"].tolist() == ["C", "A"]


def test_devices_at_risk_breaks_ties_by_the_visit_due_soonest():
    plan = pd.DataFrame(
        {
            "device_id": ["A", "B", "C", "C"],
            "visit_date": ["2026-11-09", "2026-11-03", "2026-11-06", "2026-11-02"],
            "stockout_risk": 0.0,
        }
    )
    ranked = report.devices_at_risk(plan)
    assert ranked["device_id"].tolist() == ["C", "B", "A"]
    assert ranked["visit_date"].tolist() == ["2026-11-02", "2026-11-03", "2026-11-09"]


def test_summary_markdown_links_the_html_report(planned_ws):
    _, planned = planned_ws
    summary = pd.read_csv(planned["summary"])
    target = Path("/tmp/ws/reports/2026-11-01/index.html")
    text = report.summary_markdown(AS_OF, [], {"trained": False, "reason": "not due"}, planned, summary, target)
    assert f"[{target}]({target.as_uri()})" in text
    assert "| cash deployed |" in text
    assert "- Devices with no usable record for over a week: 0" in text


def test_devices_whose_feed_stopped_are_listed_for_a_look(planned_ws, config, tmp_path):
    ws, planned = planned_ws
    summary = pd.read_csv(planned["summary"])
    quiet = summary["device_id"].iloc[2]
    summary["notes"] = summary["notes"].astype(object)
    summary.loc[2, "notes"] = "no usable record since 2026-10-11 (20 days): check the device and its feed"
    summary.loc[2, "last_observed"] = "2026-10-11"
    assert report.quiet_devices(summary, AS_OF)["device_id"].tolist() == [quiet]
    # A week without a record is still a normal gap: the device is not listed.
    summary.loc[2, "last_observed"] = f"{AS_OF - pd.Timedelta(days=8):%Y-%m-%d}"
    assert report.quiet_devices(summary, AS_OF).empty
    summary.loc[2, "last_observed"] = "2026-10-11"
    text = report.summary_markdown(AS_OF, [], {"trained": False, "reason": "not due"}, planned, summary, None)
    assert f"- Devices with no usable record for over a week: 1\n  - `{quiet}`: last record 2026-10-11" in text
    write_table(summary, tmp_path / "summary.csv")
    page = report.write_report(ws, config, AS_OF, {**planned, "summary": str(tmp_path / "summary.csv")}, {})
    section = page.read_text(encoding="utf-8").split("no usable record for over a week")[1].split("<h2>")[0]
    assert f"<td>{quiet}</td>" in section and "20 days" in section


# ---------------------------------------------------------------- the analyst helpers behind notebooks


def test_lake_view_marks_censored_and_unrecorded_days(planned_ws, config):
    ws, _ = planned_ws
    lake = analyst.load_lake(ws, f"{AS_OF:%Y-%m-%d}")  # a notebook's ISO string as well as a Timestamp
    with pytest.raises(ValueError, match="dates are YYYY-MM-DD"):  # 03/11 is March or November: refused, as in ingest
        analyst.load_lake(ws, "01/11/2026")
    with pytest.raises(KeyError, match="atm-00002: no such device .*did you mean ATM-00002"):
        analyst.device_days(lake, "atm-00002")
    one = analyst.load_lake(ws, AS_OF, CENSORED_YESTERDAY)  # a device named bare, not in a list
    assert set(one.daily["device_id"]) == {CENSORED_YESTERDAY}
    days = analyst.device_days(lake, CENSORED_YESTERDAY)
    assert days["date"].max() == YESTERDAY
    assert days.set_index("date").loc[YESTERDAY, "censored"]
    raw = pd.read_csv(analyst.SAMPLE_DIR / "daily.csv")
    recorded = raw[(raw["device_id"] == CENSORED_YESTERDAY)]
    assert days["recorded"].sum() == len(recorded)
    holidays = analyst.holiday_markers(lake, CENSORED_YESTERDAY, days["date"].min(), YESTERDAY, config)
    national_day = holidays[holidays["date"] == pd.Timestamp("2026-10-01")]
    assert national_day["kind"].tolist() == ["holiday"] and "National Day" in national_day["holiday_name"].iloc[0]
    assert "make-up workday" in set(holidays["kind"])  # China's weekend workdays
    fig = analyst.history_chart(days, holidays, "history")
    assert_labelled(fig, "currency units")
    yuan = config.updated(ingest={"currency": "CNY"})  # a notebook names the config's currency
    assert_labelled(analyst.history_chart(days, holidays, "history", analyst.currency_name(yuan)), "CNY")


def test_latest_outputs_read_back_what_was_written(planned_ws):
    ws, planned = planned_ws
    plan = analyst.latest_plan(ws)
    assert plan.as_of == AS_OF
    assert len(plan.plan) == len(pd.read_csv(planned["plan"]))
    assert plan.plan["visit_date"].min() >= AS_OF
    forecast = analyst.latest_forecast(ws)
    assert forecast["date"].min() == AS_OF and set(forecast["device_id"]) == set(DEVICES)
    # Read back as written before the spreadsheet escaping: a '-0042 in the CSV is device -0042 again.
    escaped = ws.plans / "2030-01-01"
    escaped.mkdir()
    for name in ("plan", "projection", "summary"):
        (escaped / f"{name}.csv").write_text(
            "device_id,name,visit_date,order_by,date\n'-0042,'=x,2030-01-02,2030-01-01,2030-01-02\n"
        )
    assert analyst.latest_plan(ws).plan[["device_id", "name"]].values.tolist() == [["-0042", "=x"]]
    assert analyst.latest_plan(ws, AS_OF).as_of == AS_OF  # a morning asked for: not a newer one (analyst audit)
    shutil.rmtree(escaped)
    with pytest.raises(FileNotFoundError, match="for a morning on or before 2026-10-30"):
        analyst.latest_forecast(ws, YESTERDAY - pd.Timedelta(days=1))
    assert analyst.forecast_levels(forecast) == [0.5, 0.9, 0.95, 0.99]
    assert analyst.forecast_levels(pd.DataFrame(columns=["device_id", "q97.5", "q10", "quality"])) == [0.1, 0.975]
    with pytest.raises(FileNotFoundError, match="run `cashcast backtest --start D1 --end D2` first"):
        analyst.latest_backtest(analyst.open_workspace(ws.home.parent / "empty"))


def test_fan_chart_draws_one_band_per_upper_quantile(planned_ws, config):
    ws, _ = planned_ws
    lake = analyst.load_lake(ws, AS_OF)
    past = replenishment.naive_forecast(lake.daily, AS_OF - pd.Timedelta(days=14), 14)
    joined = analyst.forecast_against_actuals(lake, past, CENSORED_YESTERDAY)
    assert joined["withdrawals"].notna().all() and joined["censored"].iloc[-1]
    branch = analyst.forecast_against_actuals(lake, past, "BR-0001")  # a branch's deposits are checked too
    assert branch["deposits"].notna().all() and (branch["deposits"] > 0).all()
    assert joined["deposits"].isna().all()  # an ATM takes none
    days = analyst.device_days(lake, CENSORED_YESTERDAY)
    fig = analyst.fan_chart(days.tail(28), joined, config.forecast.quantiles, "fan")
    assert_labelled(fig, "currency units")
    assert_labelled(analyst.fan_chart(days.tail(28), joined, config.forecast.quantiles, "fan", "CNY"), "CNY")
    assert len(fig.axes[0].collections) == 3  # median..q90, ..q95, ..q99
    legend = {t.get_text() for t in fig.axes[0].get_legend().get_texts()}
    assert "censored (lower bound)" in legend


@pytest.mark.filterwarnings("ignore:.*no cash count on the morning:cashcast.jobs.ReplayWarning")  # the sample: none
def test_what_if_replays_every_scenario_with_shared_forecasts(planned_ws, config, monkeypatch):
    ws, _ = planned_ws
    calls = []

    class Counting(NaiveModel):
        def predict(self, daily, devices, as_of, horizon, n_paths=None):
            calls.append(as_of)
            return super().predict(daily, devices, as_of, horizon, n_paths)

    start, end = pd.Timestamp("2026-09-07"), pd.Timestamp("2026-09-27")
    scenarios = {"default": {}, "cheap cash": {"holding_rate": 0.0}, "dear visits": {"visit_cost": 5000.0}}
    result = analyst.what_if(ws, config, start, end, scenarios, model=Counting())
    assert len(calls) == 3  # replans on days 0, 7, 14: forecast once, reused by every scenario
    ours = result.kpis[result.kpis["policy"] == "cashcast"].set_index("scenario")
    assert list(ours.index) == list(scenarios)
    assert ours.loc["cheap cash", "holding_cost"] == 0.0
    assert ours.loc["dear visits", "visit_cost"] == 5000.0 * ours.loc["dear visits", "visits"]
    assert_labelled(analyst.frontier_chart(result.kpis), "currency units")
    fig = analyst.balance_chart(result.trajectories, "ATM-00001")
    assert len(fig.axes[0].lines) == len(scenarios)
    assert_labelled(fig, "currency units")
    assert_labelled(analyst.frontier_chart(result.kpis, currency="INR"), "INR")
    assert_labelled(analyst.balance_chart(result.trajectories, "ATM-00001", currency="INR"), "INR")
    with pytest.raises(KeyError, match="unknown device term"):
        analyst.what_if(ws, config, start, end, {"typo": {"holdng_rate": 0.1}}, model=NaiveModel())

    def no_fit(*args, **kwargs):
        raise AssertionError("a typo in a scenario should be caught before the model is fitted")

    import forecasting

    monkeypatch.setattr(forecasting, "train", no_fit)
    with pytest.raises(KeyError, match="unknown device term"):  # ISO strings as well as Timestamps
        analyst.what_if(ws, config, f"{start:%Y-%m-%d}", f"{end:%Y-%m-%d}", {"typo": {"holdng_rate": 0.1}})
    with pytest.raises(ValueError, match=r"^end \d{4}-\d\d-\d\d is before start"):  # its own names, not --end
        analyst.what_if(ws, config, end, start, {"default": {}}, model=NaiveModel())


@pytest.mark.filterwarnings("ignore:.*no cash count on the morning:cashcast.jobs.ReplayWarning")  # the sample: none
def test_what_if_sets_master_terms_checked_and_replays_as_the_backtest_does(planned_ws, config, monkeypatch):
    """An override of visit_weekdays changed nothing (the planner reads the weekdays parsed from it); a service
    level of 1.5 or a free visit replayed; and what_if kept one model where `cashcast backtest` retrains weekly,
    so its default scenario cost differed from the backtest's for the same window (analyst audit)."""
    import forecasting

    ws, _ = planned_ws
    trained = []

    def naive_train(daily, devices, as_of, config, **kwargs):
        trained.append(as_of)
        return SimpleNamespace(model=NaiveModel())

    monkeypatch.setattr(forecasting, "train", naive_train)
    start, end = pd.Timestamp("2026-09-07"), pd.Timestamp("2026-09-27")
    scenarios = {"default": {}, "Mondays": {"visit_weekdays": "Mon"}}
    result = analyst.what_if(ws, config, start, end, scenarios)
    assert trained == [start, start + pd.Timedelta(days=7), start + pd.Timedelta(days=14)]  # once, for both
    days = result.trajectories.query("policy == 'cashcast' and visit")
    assert set(pd.to_datetime(days.query("scenario == 'Mondays'")["date"]).dt.day_name()) == {"Monday"}
    assert len(set(pd.to_datetime(days.query("scenario == 'default'")["date"]).dt.day_name())) > 1
    assert result.notes == ["1 device-days not recorded: demand imputed (same-weekday median)"]
    with pytest.warns(jobs.ReplayWarning, match=re.escape(result.notes[0])):  # what the CLI warns
        out = jobs.run_backtest(ws, config, start, end, ws.home.parent / "bt")
    backtest = pd.read_csv(out / "kpis.csv").set_index("policy")
    ours = result.kpis.query("scenario == 'default'").set_index("policy")
    assert ours.loc["cashcast", "total_cost"] == pytest.approx(backtest.loc["cashcast", "total_cost"])
    for bad, says in (
        ({"service_level": 1.5}, "scenario 'bad': service_level: Input should be less than 1"),
        ({"visit_cost": 0}, "scenario 'bad': visit_cost: Input should be greater than 0"),
        ({"holding_rate": -0.1}, "scenario 'bad': holding_rate"),
        ({"visit_weekdays": "Mo"}, "scenario 'bad': visit_weekdays"),
    ):
        with pytest.raises(ValueError, match=re.escape(says)):
            analyst.what_if(ws, config, start, end, {"bad": bad})
    with pytest.raises(ValueError, match="scenario 'bad': device .* min_balance 1e\\+09.*no plan can keep them"):
        analyst.what_if(ws, config, start, end, {"bad": {"min_balance": 1e9}})
    with pytest.raises(KeyError, match="unknown device term.*mean_daily_demand"):  # derived: not a term to set
        analyst.what_if(ws, config, start, end, {"bad": {"mean_daily_demand": 5.0}})
    with pytest.raises(ValueError, match="no scenarios"):
        analyst.what_if(ws, config, start, end, {})


def test_latest_backtest_reads_the_newest_kpi_folder(planned_ws, config):
    ws, _ = planned_ws
    history = jobs.load_history(ws, AS_OF)
    terms = replenishment.resolve_terms(history.devices, history.daily, config)
    for start, end in (("2026-08-03", "2026-08-16"), ("2026-09-07", "2026-09-20")):
        result = replenishment.replay(
            history.daily, terms, pd.Timestamp(start), pd.Timestamp(end), NaiveModel().predict_for_replay, config
        )
        folder = ws.backtests / f"{start}_{end}"
        write_table(result.kpis, folder / "kpis.csv")
        write_table(result.per_device, folder / "per_device.csv")
    tables = analyst.latest_backtest(ws)
    assert [p.name for p in analyst.dated_folders(ws.backtests)] == ["2026-08-03_2026-08-16", "2026-09-07_2026-09-20"]
    assert tables["kpis"]["total_cost"].tolist() == pytest.approx(result.kpis["total_cost"].tolist())
    assert set(tables["per_device"]["device_id"]) == set(DEVICES)


def test_model_comparison_tables_from_a_backtest_table():
    backtest = pd.DataFrame(
        {
            "device_id": ["A", "A", "B", "B", "A", "B"],
            "model": ["ets", "lightgbm", "ets", "lightgbm", "selected", "selected"],
            "smape": [20.0, 15.0, 10.0, 12.0, 15.0, 10.0],
            "mase": [1.0, 0.8, 0.5, 0.6, 0.8, 0.5],
            "wape": 0.1,
            "bias": 0.0,
            "q50": [None, None, None, None, 0.5, 0.4],
            "q90": [None, None, None, None, 0.9, 0.8],
        }
    )
    duel = analyst.head_to_head(backtest).set_index("device_id")
    assert duel.loc["A", "winner"] == "lightgbm" and duel.loc["A", "gap"] == 5.0
    assert duel.loc["B", "winner"] == "ets"
    by_model = analyst.metrics_by_model(backtest)
    assert by_model.loc["lightgbm", "smape_mean"] == 13.5 and by_model.loc["ets", "devices"] == 2
    coverage = analyst.coverage_table(backtest, [0.5, 0.9, 0.99])
    assert coverage["observed"].round(3).tolist() == [0.45, 0.85]  # no q99 column: level left out
    assert_labelled(analyst.coverage_chart(coverage), "share of days")
    assert_labelled(analyst.metric_chart(by_model), "%")


def test_scenario_terms_take_numpy_numbers_but_not_text():
    """Terms read from a DataFrame are numpy scalars: taken as the numbers they are; text is named, not read."""
    terms = analyst.scenario_terms(load_config(), "s", {"lead_time_days": np.int64(2), "holding_rate": np.float64(0.1)})
    assert terms == {"lead_time_days": 2, "holding_rate": 0.1} and type(terms["lead_time_days"]) is int
    with pytest.raises(ValueError, match="scenario 's': service_level"):
        analyst.scenario_terms(load_config(), "s", {"service_level": "0.9"})


def test_quick_config_keeps_coverage_measurable():
    config = analyst.quick_config(load_config())
    assert config.forecast.backtest_folds >= 2  # leave-one-fold-out coverage needs two folds
    assert config.forecast.n_jobs == 1
    # A nightly config with 5-day plans and devices needing 400 days of their own still gives a valid quick one.
    nightly = load_config().updated(plan={"horizon_days": 5}, forecast={"min_history_days": 400})
    quick = analyst.quick_config(nightly)
    assert quick.backtest.replan_every_days == 5 and quick.forecast.max_history_days == 401


def test_notebooks_read_a_banks_workspace_and_write_nothing_into_it(planned_ws, config, tmp_path, monkeypatch):
    """A notebook planned into a workspace of a bank's own that had no plan yet (its visits then counted as
    ordered) and promoted its quick model; a lake ahead of the last plan stopped every cell; a mistyped
    CASHCAST_HOME showed the sample as the bank's data (analyst audit)."""
    ws = analyst.open_workspace(tmp_path / "bank")
    daily = tmp_path / "daily.csv"
    daily.write_text("device_id,date,withdrawals\nBANK-1,2026-10-30,100\nBANK-1,2026-10-31,120\n")
    ingest.ingest_file(daily, "daily", ws, config)
    with pytest.raises(ValueError, match="has no plan yet.*run `cashcast nightly`"):
        analyst.ensure_outputs(ws, config)
    assert not ws.plans.exists() or not any(ws.plans.iterdir())
    assert not (ws.home / "mlflow.db").exists()  # nothing trained either

    planned, _ = planned_ws
    ahead = tmp_path / "ahead"
    shutil.copytree(planned.home, ahead)
    earlier = AS_OF - pd.Timedelta(days=3)
    (ahead / "plans" / f"{AS_OF:%Y-%m-%d}").rename(ahead / "plans" / f"{earlier:%Y-%m-%d}")
    with pytest.warns(UserWarning, match="newest plan is for the morning of 2026-10-29: showing that morning"):
        assert analyst.ensure_outputs(analyst.open_workspace(ahead), config) == earlier

    with pytest.warns(analyst.SampleDataWarning, match="SYNTHETIC SAMPLE"):
        analyst.ensure_lake(analyst.open_workspace(tmp_path / "typo"), config)

    custom = tmp_path / "network.toml"
    custom.write_text('[devices]\ncountry = "IN"\n[ingest]\ncurrency = "INR"\n')
    monkeypatch.setenv("CASHCAST_CONFIG", str(custom))
    quick = analyst.quick_config()
    assert (quick.devices.country, analyst.currency_name(quick), quick.forecast.n_paths) == ("IN", "INR", 50)


def test_what_the_lake_knew_that_morning_and_yesterdays_unrecorded_devices(planned_ws, tmp_path):
    ws, _ = planned_ws
    later = tmp_path / "later.csv"
    later.write_text("device_id,as_of,balance\nATM-00001,2026-11-03,5\n")
    outage = tmp_path / "outage.csv"
    outage.write_text("device_id,start,end,state\nATM-00001,2026-11-02 10:00,2026-11-02 12:00,offline\n")
    copy = analyst.open_workspace(tmp_path / "copy")
    shutil.copytree(ws.lake, copy.lake)
    shutil.copytree(ws.forecasts, copy.forecasts)
    ingest.ingest_file(later, "balances", copy, analyst.quick_config())
    ingest.ingest_file(outage, "status", copy, analyst.quick_config())
    lake = analyst.load_lake(copy, AS_OF)
    assert (lake.balances["as_of"] <= AS_OF).all() and (pd.to_datetime(lake.status["start"]) < AS_OF).all()
    assert len(lake.status) and len(lake.balances)
    # A device forecast for yesterday without an actual row stays, with no actual, instead of vanishing.
    forecast = analyst.latest_forecast(copy, YESTERDAY)
    extra = forecast[forecast["device_id"] == "ATM-00001"].assign(device_id="NEW-1")
    write_table(pd.concat([forecast, extra]), copy.forecasts / f"{YESTERDAY:%Y-%m-%d}" / "forecast.csv")
    accuracy = analyst.yesterday_accuracy(copy, AS_OF)
    assert accuracy.set_index("device_id")["withdrawals"].isna().to_dict()["NEW-1"]
    assert set(analyst.scored_accuracy(accuracy)["device_id"]) == set(DEVICES) - {CENSORED_YESTERDAY}
    assert "1 forecast device(s) have no actual for yesterday yet" in report._accuracy_note(accuracy)


def test_holiday_markers_read_the_calendar_the_models_read(config):
    """A London ATM with no subdivision in a Tamil Nadu workspace took the default subdivision 'TN' with it, where
    the models' calendar (features.calendar.device_places) gives it none: one rule, one function."""
    indian = config.updated(devices={"country": "IN", "subdivision": "TN"})
    empty = pd.DataFrame({"device_id": pd.Series(dtype="string")})
    devices = pd.DataFrame({"device_id": ["LON", "MAA"], "country": ["GB", ""], "subdivision": ["", ""]})
    lake = analyst.Lake(daily=empty, devices=devices, status=empty, balances=empty, as_of=pd.Timestamp("2025-01-01"))
    assert analyst.device_place(lake, "LON", indian) == ("GB", "")
    assert analyst.device_place(lake, "MAA", indian) == ("IN", "TN")
    boxing_day = analyst.holiday_markers(lake, "LON", pd.Timestamp("2024-12-26"), pd.Timestamp("2024-12-26"), indian)
    assert boxing_day["holiday_name"].tolist() == ["Boxing Day"]


def test_an_unknown_device_is_named_not_answered_with_the_defaults_or_an_empty_frame(planned_ws, config):
    """holiday_markers gave the default country's holidays, forecast_against_actuals an empty frame, balance_chart
    a blank chart, load_lake 'no daily history before ...' and an int date read as 1970-01-01 (analyst audit)."""
    ws, _ = planned_ws
    lake = analyst.load_lake(ws, AS_OF)
    typo = "did you mean ATM-00002"
    with pytest.raises(KeyError, match=f"atm-00002: no such device in the lake or the device master.*{typo}"):
        analyst.holiday_markers(lake, "atm-00002", AS_OF, AS_OF + pd.Timedelta(days=7), config)
    forecast = analyst.latest_forecast(ws, AS_OF)
    with pytest.raises(KeyError, match=f"nope: no such device in the forecast .*valid: {', '.join(sorted(DEVICES))}"):
        analyst.forecast_against_actuals(lake, forecast, "nope")
    trajectories = pd.DataFrame(
        {
            "device_id": "ATM-00001",
            "policy": ["cashcast", "fixed_weekly"],
            "scenario": "default",
            "date": AS_OF,
            "balance_after_visit": 1.0,
        }
    )
    with pytest.raises(KeyError, match="nope: no such device in the what-if's trajectories"):
        analyst.balance_chart(trajectories, "nope")
    with pytest.raises(KeyError, match="cash_cast: no such policy .*did you mean cashcast.*valid: cashcast, fixed"):
        analyst.balance_chart(trajectories, "ATM-00001", policy="cash_cast")
    with pytest.raises(KeyError, match="Airport: no such device in .*lake or device master"):
        analyst.load_lake(ws, AS_OF, ["Airport"])
    with pytest.raises(ValueError, match="2026: dates are YYYY-MM-DD"):
        analyst.load_lake(ws, 2026)


def test_plan_what_if_refuses_an_empty_device_list(planned_ws, config):
    """device_ids=[] applied the scenario to no device: every scenario's plan was the plan as is (analyst audit)."""
    ws, _ = planned_ws
    with pytest.raises(ValueError, match="device_ids is empty: name the devices .* or leave it out for all devices"):
        analyst.plan_what_if(ws, config, {"as is": {}, "90%": {"service_level": 0.9}}, AS_OF, device_ids=[])


def test_fan_chart_refuses_a_forecast_of_several_devices_or_none(planned_ws, config):
    """A forecast not filtered to one device drew every device's bands under one title (analyst audit)."""
    ws, _ = planned_ws
    forecast = analyst.latest_forecast(ws, AS_OF)
    days = analyst.device_days(analyst.load_lake(ws, AS_OF), CENSORED_YESTERDAY)
    held = f"the forecast holds 4 devices \\({', '.join(sorted(DEVICES))}\\): filter it first"
    with pytest.raises(ValueError, match=f"fan_chart draws one device, and {held}"):
        analyst.fan_chart(days, forecast, config.forecast.quantiles, "fan")
    with pytest.raises(ValueError, match="the forecast holds no rows"):
        analyst.fan_chart(days, forecast.iloc[0:0], config.forecast.quantiles, "fan")


def test_typical_mistakes_get_one_line_in_the_analysts_words(planned_ws, config, tmp_path):
    """A negative horizon raised OverflowError and 0 gave an empty frame; levels in percent or a level the table
    lacks gave an empty table or KeyError 'q80'; a metric or table name slightly off a KeyError or an MLflow error; a
    plan folder as text an AttributeError; a list of scenarios an AttributeError, a service level of 90 'less than
    1'; a mistyped reference scenario silently dropped every baseline (analyst audit)."""
    import mlflow

    from forecasting import registry

    ws, _ = planned_ws
    for horizon in (-3, 0, 2.5):
        with pytest.raises(ValueError, match=f"^horizon {horizon}: a whole number of days from 1 to 366$"):
            analyst.backcast(ws, config, AS_OF, horizon)
    backtest = pd.DataFrame({"device_id": "A", "model": ["selected", "ets"], "smape": 10.0, "mase": 1.0, "wape": 0.1})
    backtest = backtest.assign(bias=0.0, q50=[0.5, None], q90=[0.9, None])
    for levels in ([50, 90], [0.8]):
        with pytest.raises(KeyError, match=f"{levels[0]}: no such quantile level in the backtest table .*0.5, 0.9"):
            analyst.coverage_table(backtest, levels)
    with pytest.raises(KeyError, match="smape: no such metric in the table .*did you mean smape_mean"):
        analyst.metric_chart(analyst.metrics_by_model(backtest), "smape")
    lake = analyst.load_lake(ws, AS_OF)
    joined = analyst.forecast_against_actuals(lake, analyst.latest_forecast(ws, AS_OF), CENSORED_YESTERDAY)
    days = analyst.device_days(lake, CENSORED_YESTERDAY)
    with pytest.raises(KeyError, match=r"0.8: no such quantile level in the forecast \(.*valid: 0.5, 0.9, 0.95, 0.99"):
        analyst.fan_chart(days, joined, [0.5, 0.8], "fan")
    assert analyst.read_plan(str(ws.plans / f"{AS_OF:%Y-%m-%d}")).as_of == AS_OF  # a path as text too

    with pytest.raises(TypeError, match="scenarios are a dict of scenario name -> device terms.*not a list"):
        analyst.what_if(ws, config, "2026-09-07", "2026-09-27", [{"service_level": 0.9}])
    with pytest.raises(TypeError, match="scenario 'sl' is a float: scenarios are a dict"):
        analyst.plan_what_if(ws, config, {"sl": 0.9})
    hint = r" \(a share, e.g. 0.9 for 90%, not a percent\)$"
    for term, value in (("service_level", 90), ("holding_rate", 5)):
        with pytest.raises(ValueError, match=f"^scenario 's': {term}: Input should be less than .*1{hint}"):
            analyst.scenario_terms(config, "s", {term: value})
    kpis = pd.DataFrame(
        {"scenario": ["default", "default", "sl 0.90"], "policy": ["cashcast", "fixed_weekly", "cashcast"]}
    )
    kpis = kpis.assign(stockout_device_days=0, total_cost=1.0)
    with pytest.raises(KeyError, match="defualt: no such scenario .*did you mean default.*valid: default, sl 0.90"):
        analyst.frontier_chart(kpis, reference="defualt")

    store = analyst.open_workspace(tmp_path / "runs")
    registry.use_store(store, config)
    table = tmp_path / "selection.csv"
    table.write_text("device_id,model\nA,ets\n")
    with mlflow.start_run(run_name="train-2026-11-01") as run:
        mlflow.log_artifact(str(table), artifact_path="tables")
    assert analyst.run_table(store, config, run.info.run_id, "selection")["model"].tolist() == ["ets"]
    with pytest.raises(KeyError, match=r"selections: no such table in training run \w+ \(did you mean selection\?"):
        analyst.run_table(store, config, run.info.run_id, "selections")


def test_a_champion_of_another_cashcast_version_is_said_to_be_one(planned_ws, config, tmp_path):
    """After an upgrade the analyst heard 'no champion model' while training_runs listed a promoted one: the
    registry serves no champion tagged with other code, and the error did not tell the two apart (analyst audit)."""
    from mlflow import MlflowClient

    from forecasting import registry

    ws = analyst.open_workspace(tmp_path / "upgraded")
    shutil.copytree(planned_ws[0].lake, ws.lake)
    with pytest.raises(LookupError, match="no champion model; run `cashcast train`"):
        analyst.champion_model(ws, config)
    client = MlflowClient(tracking_uri=registry.use_store(ws, config))
    name = config.forecast.registered_model
    client.create_registered_model(name)
    version = client.create_model_version(name, source=str(tmp_path / "model"), tags={"code": "an-older-release"})
    client.set_registered_model_alias(name, registry.CHAMPION, version.version)
    said = "built by another version of Cashcast .*`cashcast train` \\(or the next nightly run, which retrains it\\)"
    for call in (
        lambda: analyst.champion_model(ws, config),
        lambda: analyst.backcast(ws, config, AS_OF, 7),
        lambda: analyst.plan_what_if(ws, config, {"as is": {}}, AS_OF),
    ):
        with pytest.raises(LookupError, match=said):
            call()


def test_device_traits_show_the_kind_the_plan_uses(planned_ws, config):
    """A master without kinds (CUB's) showed kind <NA> where the plan and its summary said atm (analyst audit)."""
    ws, _ = planned_ws
    lake = analyst.load_lake(ws, AS_OF)
    kinds = analyst.device_traits(lake, config).set_index("device_id")["kind"]
    assert kinds.to_dict() == {"ATM-00001": "atm", "ATM-00002": "atm", "BR-0001": "branch", "RC-0001": "recycler"}
    bare = dataclasses.replace(lake, devices=lake.devices.assign(kind=pd.NA))
    assert set(analyst.device_traits(bare, config)["kind"]) == {"atm"}  # the config's default, as the plan
    no_column = dataclasses.replace(lake, devices=lake.devices.drop(columns="kind"))
    assert set(analyst.device_traits(no_column, config.updated(devices={"kind": "branch"}))["kind"]) == {"branch"}
