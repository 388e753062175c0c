"""The analyst's helper API: one place where notebooks and the nightly report read a workspace.

Notebooks hold narrative and calls, never logic: everything they show comes from a function here,
so a notebook and the report can never disagree about what the lake, a forecast or a plan says.

Typical session (a fresh workspace sets itself up from the shipped sample)::

    >>> from cashcast import analyst
    >>> ws = analyst.open_workspace()            # CASHCAST_HOME, else data/
    >>> config = analyst.quick_config()          # small, fast settings for exploration
    >>> as_of = analyst.ensure_outputs(ws, config)  # ingest + train + plan only what is missing
    >>> lake = analyst.load_lake(ws, as_of)
    >>> runs = analyst.training_runs(ws, config)
    >>> per_device = analyst.run_table(ws, config, runs["run_id"].iloc[0])

Charts are small pure functions that take frames and return a matplotlib Figure with a title,
axis labels and units, so they can be checked without looking at pixels. The figures live outside
pyplot's registry: nothing leaks in a long nightly process, and a notebook (`%matplotlib inline`)
shows each one once, as the cell's value.
"""

from __future__ import annotations

import difflib
import functools
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

import ingest
from cashcast import jobs
from cashcast.config import MAX_FORECAST_DAYS, Config, load_config
from cashcast.io import read_written
from cashcast.schema import DEVICE_COLUMNS, DemandForecast, balance_limit_checks, quantile_column
from cashcast.workspace import CHECKOUT_DATA_DIR, SAMPLE_DIR, SAMPLE_KINDS, Workspace
from features.calendar import device_places
from features.holidays import holiday_table

# Five devices that show every behaviour of the sample: two ATMs, a branch with net deposits, a
# recycler and the cold-start ATM with two weeks of history.
SAMPLE_DEVICES = ("ATM-00001", "ATM-00002", "BR-0001", "RC-0001", "ATM-00020")
CURRENCY = "currency units"
POLICY_COLORS = {
    "cashcast": "#2a7ab0",
    "fixed_weekly": "#b0b0b0",
    "cover_rule": "#e0a030",
    "perfect_foresight": "#40a040",
}


# ---------------------------------------------------------------- checks of what an analyst names

LISTED_CHOICES = 12  # up to this many valid values are all listed; past it, the close ones


def require_known(asked: Iterable[object], known: Iterable[object], what: str, where: str) -> None:
    """KeyError naming each of `asked` that `known` lacks, and what was meant: an unknown device, level or name
    otherwise reads as one with no history, no forecast or the default country's holidays, or as an empty chart.

    `what` is the kind of value (device, quantile level, metric ...), `where` what was searched. A short list of
    valid values is given whole, a long one (a network's devices) as the close matches of each id (a typo, a case
    slip).
    """
    valid = sorted({str(value) for value in known})
    missing = [str(value) for value in dict.fromkeys(asked) if str(value) not in valid]
    if not missing:
        return
    lowered = {value.lower(): value for value in valid}

    def hint(value: str) -> str:
        close = difflib.get_close_matches(value.lower(), list(lowered), n=3, cutoff=0.5)
        said = [f"did you mean {', '.join(lowered[c] for c in close)}?"] if close else []
        if len(valid) <= LISTED_CHOICES:
            said.append(f"valid: {', '.join(valid)}" if valid else "there is none")
        return f" ({' '.join(said)})" if said else ""

    shown = "; ".join(f"{value}: no such {what} in {where}{hint(value)}" for value in missing[:5])
    more = f"; and {len(missing) - 5} more" if len(missing) > 5 else ""
    raise KeyError(shown + more)


# ---------------------------------------------------------------- workspace and setup


def open_workspace(home: str | Path | None = None) -> Workspace:
    """The workspace at `home`, else CASHCAST_HOME, else data/ (created if missing).

    >>> ws = open_workspace("/tmp/cashcast-demo")
    >>> ws.lake
    PosixPath('/tmp/cashcast-demo/lake')
    """
    return Workspace.resolve(home).ensure()


def quick_config(config: Config | None = None) -> Config:
    """Settings that keep exploration fast (2 short backtest folds, one process, 50 sample paths) over
    `config`, else the file named by CASHCAST_CONFIG (the one your nightly run uses: its countries, currency and
    device defaults), else the defaults.

    The backtest needs at least two folds to measure quantile coverage (leave-one-fold-out).

    >>> quick_config().forecast.backtest_folds
    2
    """
    base = config or load_config(os.environ.get("CASHCAST_CONFIG") or None)
    return base.updated(
        forecast={
            "backtest_folds": 2,
            "backtest_horizon_days": 14,
            "n_jobs": 1,
            "n_paths": 50,
            # Above the base's min_history_days, and a weekly re-plan within its plan horizon: a quick config the
            # nightly's settings make contradictory would be refused for keys the analyst never set.
            "max_history_days": max(400, base.forecast.min_history_days + 1),
        },
        backtest={"replan_every_days": min(7, base.plan.horizon_days)},
    )


def has_history(ws: Workspace) -> bool:
    """Whether the lake holds any daily history yet."""
    return bool(jobs.lake_device_ids(ws))


def ingest_sample(ws: Workspace, config: Config, device_ids: tuple[str, ...] | None = SAMPLE_DEVICES) -> list:
    """Ingest the shipped synthetic sample (only `device_ids`; None: all 30) into the lake.

    Returns the IngestReports. The raw sample files are never edited: the subset is written to a
    temporary folder first.
    """
    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in SAMPLE_KINDS:
            raw = pd.read_csv(SAMPLE_DIR / f"{kind}.csv", dtype=str, keep_default_na=False)
            if device_ids is not None:
                raw = raw[raw["device_id"].isin(device_ids)]
            path = Path(tmp) / f"{kind}-sample.csv"
            raw.to_csv(path, index=False)
            reports.append(ingest.ingest_file(path, kind, ws, config))
    return reports


class SampleDataWarning(UserWarning):
    """The workspace shows the shipped synthetic sample, not a bank's data."""


def ensure_lake(ws: Workspace, config: Config) -> pd.Timestamp:
    """Ingest the sample when the lake is empty, saying so; returns the next as-of (the morning after the last
    day). A mistyped CASHCAST_HOME is an empty workspace too: the warning keeps the sample from passing for it."""
    if not has_history(ws):
        ingest_sample(ws, config)
        warnings.warn(
            SampleDataWarning(
                f"{ws.home} held no history: it now holds the shipped SYNTHETIC SAMPLE ({len(SAMPLE_DEVICES)} devices),"
                " not a bank's data; set CASHCAST_HOME to your workspace to see yours"
            ),
            stacklevel=2,
        )
    return jobs.next_as_of(ws)


def is_sample_workspace(ws: Workspace) -> bool:
    """Whether every device of the lake is one of the shipped sample's."""
    sample = set(pd.read_csv(SAMPLE_DIR / "devices.csv", usecols=["device_id"], dtype=str)["device_id"])
    return set(jobs.lake_device_ids(ws)) <= sample


def ensure_outputs(ws: Workspace, config: Config, as_of: pd.Timestamp | None = None) -> pd.Timestamp:
    """The morning a notebook shows: `as_of`, else the next one, with whatever is missing of lake, champion
    model and plan produced in that order, but only in the sample's workspace.

    A workspace of a bank's own is only read, so notebooks can run against a production workspace without
    training or planning anything: a notebook's plan would count as ordered the next morning, and its model,
    fitted under the notebook's quick settings, would become the champion. There, without `as_of`, the newest
    planned morning is shown (with a warning when the lake has days after it); an `as_of` without a plan is
    refused, naming the newest planned morning.
    """
    next_as_of = ensure_lake(ws, config)
    asked = jobs.parse_date(as_of)
    as_of = next_as_of if asked is None else asked
    if (ws.plans / f"{as_of:%Y-%m-%d}" / "plan.csv").exists():
        return as_of
    try:
        latest = pd.Timestamp(_latest(ws.plans, "plan.csv").parent.name)
    except FileNotFoundError:  # no plan at all
        if is_sample_workspace(ws):
            jobs.run_plan(ws, config, as_of)
            return as_of
        raise ValueError(
            f"{ws.home} has no plan yet, and a notebook writes none into a workspace of your own (its visits would"
            " count as ordered, its quick model would become the champion): run `cashcast nightly` or"
            f" `cashcast plan --as-of {as_of:%Y-%m-%d}` first"
        ) from None
    if asked is not None:
        raise ValueError(
            f"{ws.home} has no plan for {as_of:%Y-%m-%d}, and a notebook writes none into a workspace the nightly"
            f" run keeps (its visits would count as ordered): pick a planned morning (latest {latest:%Y-%m-%d}) or"
            f" run `cashcast plan --as-of {as_of:%Y-%m-%d}`"
        )
    warnings.warn(
        f"{ws.home}: the lake runs to {next_as_of - pd.Timedelta(days=1):%Y-%m-%d}, but the newest plan is for the"
        f" morning of {latest:%Y-%m-%d}: showing that morning (run `cashcast nightly` to plan the next)",
        stacklevel=2,
    )
    return latest


# ---------------------------------------------------------------- the lake


@dataclass
class Lake:
    """What the lake knows on the morning of `as_of`. Amounts are in the workspace currency ([ingest] currency).

    - daily: device_id, date (each recorded day before as_of; a day with no row is unknown, not zero), withdrawals
      and deposits (amounts that day), n_withdrawals and n_deposits (transaction counts, NaN when the feed has
      none), censored (True: a cash-out or offline day, whose withdrawals are a lower bound of demand).
    - devices: the device master (CONTRACT.md's columns: kind, capacity, min_balance, max_balance, visit_cost and
      emergency_visit_cost as amounts, holding_rate a yearly share, service_level a share, visit_weekdays,
      lead_time_days in days, country, subdivision, region, name, timezone); an empty cell is the config's default.
    - status: device_id, start, end, state (cash_out or offline) of each outage begun before as_of.
    - balances: device_id, as_of, balance (an amount): the cash counts taken by the morning of as_of.
    """

    daily: pd.DataFrame
    devices: pd.DataFrame
    status: pd.DataFrame
    balances: pd.DataFrame
    as_of: pd.Timestamp


def require_lake_device(lake: Lake, device_id: str) -> None:
    """`require_known` for a device of `lake`: one with days before its as-of or a device-master row."""
    known = [*lake.daily["device_id"], *lake.devices["device_id"]]
    require_known([device_id], known, "device", "the lake or the device master")


def load_lake(ws: Workspace, as_of: pd.Timestamp | None = None, device_ids: list[str] | None = None) -> Lake:
    """Daily history before `as_of` with censored flags, device master, status and balances (columns: `Lake`), of
    `device_ids` (a list, or one id) when given: an id neither the lake nor the device master holds is refused.

    >>> lake = load_lake(ws)                       # as of the morning after the last recorded day
    >>> lake.daily.loc[lake.daily["censored"], ["device_id", "date", "withdrawals"]]
    """
    device_ids = [device_ids] if isinstance(device_ids, str) else device_ids
    if device_ids is not None:  # an unknown id would read as a device with no history before `as_of`
        known = [*jobs.lake_device_ids(ws), *ingest.read_table(ws, "devices")["device_id"]]
        require_known(device_ids, known, "device", f"{ws.home}'s lake or device master")
    history = jobs.load_history(ws, as_of, device_ids)
    status = ingest.read_table(ws, "status")
    if device_ids is not None:
        status = status[status["device_id"].isin(device_ids)]
    # What was known that morning: outages begun before it, counts taken by it.
    status = status[pd.to_datetime(status["start"]) < history.as_of].reset_index(drop=True)
    balances = history.balances[pd.to_datetime(history.balances["as_of"]) <= history.as_of].reset_index(drop=True)
    return Lake(history.daily, history.devices, status, balances, history.as_of)


def device_days(lake: Lake, device_id: str) -> pd.DataFrame:
    """One device's calendar from its first to its last recorded day: date, withdrawals, deposits,
    recorded (False: no row, demand unknown) and censored (True: the amount is a lower bound).

    >>> days = device_days(lake, "ATM-00002")
    >>> days[~days["recorded"]]                     # feed gaps: unknown demand, not zero
    """
    require_lake_device(lake, device_id)
    own = lake.daily[lake.daily["device_id"] == device_id].set_index("date").sort_index()
    if own.empty:
        raise KeyError(f"{device_id}: no recorded days in the lake before {lake.as_of:%Y-%m-%d}")
    days = pd.date_range(own.index.min(), own.index.max(), freq="D", name="date")
    frame = own[["withdrawals", "deposits", "censored"]].reindex(days)
    frame["recorded"] = frame["withdrawals"].notna()
    frame["censored"] = frame["censored"].fillna(False).astype(bool)
    return frame.reset_index()


def device_place(lake: Lake, device_id: str, config: Config) -> tuple[str, str]:
    """(country, subdivision) of a device as the models' calendar reads it (`features.calendar.device_places`):
    its master row, else the config defaults (the default subdivision only within the default country)."""
    require_lake_device(lake, device_id)
    place = device_places(lake.devices, config, device_ids=pd.Index([device_id], dtype="string"))
    row = place[place["device_id"] == device_id].iloc[0]
    return str(row["country"]), str(row["subdivision"])


def holiday_markers(lake: Lake, device_id: str, start: pd.Timestamp, end: pd.Timestamp, config: Config) -> pd.DataFrame:
    """Days in [start, end] that are public holidays or make-up workdays in the device's country.

    Columns: date, holiday_name, kind ('holiday' or 'make-up workday': a weekend day worked in lieu).

    >>> holiday_markers(lake, "ATM-00001", pd.Timestamp("2026-10-01"), pd.Timestamp("2026-10-10"), config)
    ... # National Day 10-01..10-07 as holidays, Saturday 10-10 as a make-up workday
    """
    country, subdivision = device_place(lake, device_id, config)
    table = holiday_table(country, subdivision, start, end)
    makeup = table["is_working_day"] & (table["date"].dt.day_of_week >= 5)
    marked = table[table["is_holiday"] | makeup]
    return pd.DataFrame(
        {
            "date": marked["date"].to_numpy(),
            "holiday_name": marked["holiday_name"].astype(str).to_numpy(),
            "kind": np.where(marked["is_holiday"], "holiday", "make-up workday"),
        }
    )


def device_features(lake: Lake, config: Config, device_id: str, horizon: int = 14) -> pd.DataFrame:
    """The forecast-time features (`features.build`: the inputs the forecaster reads) of one device for
    as_of .. as_of + horizon - 1."""
    import features

    built = features.build(lake.daily, lake.devices, lake.as_of, horizon, config)
    return built[built["device_id"] == device_id].reset_index(drop=True)


# ---------------------------------------------------------------- forecasts and plans


def dated_folders(folder: Path) -> list[Path]:
    """Sub-folders named YYYY-MM-DD..., oldest first (forecasts/, plans/, reports/, backtests/)."""
    if not folder.exists():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name[:10].replace("-", "").isdigit())


def _latest(
    folder: Path, name: str, made_by: str = "`cashcast plan` or `cashcast nightly`", as_of: pd.Timestamp | None = None
) -> Path:
    """The newest <folder>/<day>/<name>, of a morning on or before `as_of` when given."""
    until = None if as_of is None else f"{jobs.parse_date(as_of):%Y-%m-%d}"
    candidates = [
        p / name for p in dated_folders(folder) if (p / name).exists() and (until is None or p.name[:10] <= until)
    ]
    if not candidates:
        by = "" if until is None else f" for a morning on or before {until}"
        raise FileNotFoundError(f"no {name} under {folder}{by}; run {made_by} first")
    return candidates[-1]


def latest_forecast(ws: Workspace, as_of: pd.Timestamp | None = None) -> pd.DataFrame:
    """The newest forecasts/<morning>/forecast.csv (device_id, date, model, yhat, q50..), of a morning on or
    before `as_of` when given."""
    return read_written(_latest(ws.forecasts, "forecast.csv", as_of=as_of), ("date",))


def forecast_levels(forecast: pd.DataFrame) -> list[float]:
    """The quantile levels a forecast frame carries (q50 -> 0.5, q97.5 -> 0.975), whatever config made it."""
    levels = []
    for column in forecast.columns:
        if str(column).startswith("q"):
            try:
                levels.append(round(float(column[1:]) / 100, 6))
            except ValueError:
                continue
    return sorted(levels)


@dataclass
class PlanFiles:
    """A plan folder read back: the plan rows, the daily projection and the per-device summary."""

    as_of: pd.Timestamp
    plan: pd.DataFrame
    projection: pd.DataFrame
    summary: pd.DataFrame


def read_plan(folder: str | Path) -> PlanFiles:
    """plans/<as_of>/ (a Path or its text) as frames. Amounts are in the workspace currency, risks are shares (0.05:
    5%), and visit_cost, expected_holding_cost and the summary's costs are amounts too.

    - plan, one row per visit: device_id, visit_date, order_by (the day to order the cash by), action (load or
      pickup), amount, expected_balance_before, balance_after, days_covered (days), stockout_risk (after the visit),
      reason, name, region, kind, visit_cost, expected_holding_cost, stockout_risk_before (before the visit).
    - projection, one row per device and day: expected_opening_balance, expected_net_outflow, demand_q50..
      (quantiles of the day's demand), visit (bool), balance_after, stockout_probability (a share).
    - summary, one row per device and a TOTAL row: name, region, kind, last_observed, visits and visits_on_order
      (counts), cash_deployed, expected_idle_cash, expected_holding_cost, visit_cost, expected_cost (amounts),
      expected_stockout_days (days), the same for the baseline policy (baseline_*), horizon_days, notes.
    """
    folder = Path(folder)
    return PlanFiles(
        as_of=pd.Timestamp(folder.name[:10]),
        plan=read_written(folder / "plan.csv", ("visit_date", "order_by")),
        projection=read_written(folder / "projection.csv", ("date",)),
        summary=read_written(folder / "summary.csv", ()),
    )


def latest_plan(ws: Workspace, as_of: pd.Timestamp | None = None) -> PlanFiles:
    """The newest plan folder of the workspace, of a morning on or before `as_of` when given (columns: `read_plan`).

    >>> plan = latest_plan(ws)
    >>> plan.plan.groupby("visit_date").size()      # visits per day
    """
    return read_plan(_latest(ws.plans, "plan.csv", as_of=as_of).parent)


def forecast_against_actuals(
    lake: Lake, forecast: pd.DataFrame | DemandForecast, device_id: str | None = None
) -> pd.DataFrame:
    """Forecast rows joined to what happened: adds withdrawals and deposits (NaN: not recorded yet, or a device that
    takes no deposits), to read against yhat and deposits_yhat, and censored."""
    frame = forecast.frame if isinstance(forecast, DemandForecast) else forecast
    if device_id is not None:
        require_known([device_id], frame["device_id"], "device", "the forecast")
        frame = frame[frame["device_id"] == device_id]
    actual = lake.daily[["device_id", "date", "withdrawals", "deposits", "censored"]]
    joined = frame.astype({"device_id": "string"}).merge(actual, on=["device_id", "date"], how="left")
    joined["censored"] = joined["censored"].fillna(False).astype(bool)
    return joined


def yesterday_accuracy(ws: Workspace, as_of: pd.Timestamp, max_age_days: int = 7) -> pd.DataFrame:
    """Yesterday's actuals against the newest forecast made for yesterday before it (at most a week old).

    Columns: device_id, date, model, yhat, withdrawals, censored, made (the forecast's as-of). Censored
    days are kept and flagged: their withdrawals are a lower bound, not demand, and must not be scored.
    """
    import features

    as_of = jobs.parse_date(as_of)
    yesterday = as_of - pd.Timedelta(days=1)
    columns = ["device_id", "date", "model", "yhat", "withdrawals", "censored", "made"]
    for age in range(1, max_age_days + 1):
        made = as_of - pd.Timedelta(days=age)
        path = ws.forecasts / f"{made:%Y-%m-%d}" / "forecast.csv"
        if not path.exists():
            continue
        forecast = read_written(path, ("date",))
        forecast = forecast[forecast["date"] == yesterday]
        if forecast.empty:
            continue
        actual = ingest.read_daily(ws, start=yesterday, end=yesterday)
        status, balances = (ingest.read_table(ws, name) for name in ("status", "balances"))
        actual = features.mark_censored(actual, status, balances)
        # A device without yesterday's row stays, with no actual (NaN): not recorded yet, or not at all.
        actual = actual[["device_id", "date", "withdrawals", "censored"]].astype({"device_id": "string"})
        joined = forecast.astype({"device_id": "string"}).merge(actual, on=["device_id", "date"], how="left")
        joined["censored"] = joined["censored"].fillna(False).astype(bool)
        return joined.assign(made=made)[columns]
    return pd.DataFrame({c: pd.Series(dtype="bool" if c == "censored" else "object") for c in columns})


def scored_accuracy(accuracy: pd.DataFrame) -> pd.DataFrame:
    """The rows of `yesterday_accuracy` a forecast can be scored on: an actual recorded, and not censored."""
    return accuracy[~accuracy["censored"] & accuracy["withdrawals"].notna()]


def champion_version(ws: Workspace, config: Config):
    """The champion's registered version. LookupError when none serves, saying which case it is: no model promoted
    yet, or a champion built by another version of Cashcast (`training_runs` lists it as promoted, but its pickle
    is not loaded by this code: see `forecasting.registry.code_fingerprint`)."""
    from forecasting import registry

    version = registry.champion_version(ws, config)
    if version is not None:
        return version
    if registry.champion_version(ws, config, any_code=True) is not None:
        raise LookupError(
            f"{ws.home}: the champion model was built by another version of Cashcast and this one does not load it;"
            " `cashcast train` (or the next nightly run, which retrains it) refits it"
        )
    raise LookupError(f"{ws.home}: no champion model; run `cashcast train` or `cashcast nightly` first")


def champion_model(ws: Workspace, config: Config):
    """The serving CashForecaster (`models:/<registered_model>@champion`)."""
    from forecasting import registry

    return registry.load_version(ws, config, champion_version(ws, config).version)


def backcast(ws: Workspace, config: Config, origin: pd.Timestamp, horizon: int) -> DemandForecast:
    """The champion's forecast of every device made as if on the morning of `origin` (history before it only).

    The champion's parameters may have been fitted on days after `origin`; for a strictly
    out-of-sample view use the training run's backtest table (`run_table`).

    The table is the DemandForecast's `.frame`: device_id, date, model (the device's pick), yhat (the point
    forecast) and q50.. (its quantiles) of withdrawals per day and, where devices take deposits, deposits_yhat and
    deposits_q50.. of deposits, all in the workspace currency. `horizon` is 1 to 366 days.
    """
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or not 1 <= horizon <= MAX_FORECAST_DAYS:
        raise ValueError(f"horizon {horizon!r}: a whole number of days from 1 to {MAX_FORECAST_DAYS}")
    history = jobs.load_history(ws, origin)
    return jobs.forecast_devices(champion_model(ws, config), history, config, horizon, n_paths=0)


# ---------------------------------------------------------------- MLflow


def training_runs(ws: Workspace, config: Config) -> pd.DataFrame:
    """Every training run of the workspace's MLflow store, newest first (params, metrics, tags).

    >>> runs = training_runs(ws, config)
    >>> runs[["run_id", "params.as_of", "metrics.smape_mean", "tags.cashcast.promoted"]]
    """
    import mlflow

    from forecasting import registry

    registry.use_store(ws, config)
    runs = mlflow.search_runs(
        experiment_names=[config.forecast.experiment],
        filter_string="attributes.run_name LIKE 'train-%'",
        order_by=["attributes.start_time DESC"],
    )
    if runs.empty:
        raise LookupError(f"{ws.home}: no training run in MLflow; run `cashcast train` first")
    return runs


def run_table(ws: Workspace, config: Config, run_id: str, name: str = "backtest_per_device") -> pd.DataFrame:
    """A table artifact of a training run: `backtest_per_device` or `selection`.

    - backtest_per_device, one row per device and candidate model (and `selected`: the per-device pick): smape (in
      %), mase (against the in-sample seasonal naive: below 1 beats it), wape and bias (shares of actual demand;
      bias > 0 over-forecasts), n_points (days scored), and on the `selected` rows q50..q99: the share of held-out
      days at or below each quantile (coverage shares, leave-one-fold-out; not amounts).
    - selection, one row per device: model (the one that serves it) and reason.

    >>> backtest = run_table(ws, config, runs["run_id"].iloc[0])
    >>> backtest[backtest["model"] == "selected"]   # the per-device pick with its coverage columns
    """
    import mlflow

    from forecasting import registry

    registry.use_store(ws, config)
    tables = [Path(item.path).stem for item in mlflow.MlflowClient().list_artifacts(run_id, "tables")]
    require_known([name], tables, "table", f"training run {run_id}")
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"tables/{name}.csv", dst_path=tmp)
        return read_written(Path(path), ())


def latest_backtest(ws: Workspace) -> dict[str, pd.DataFrame]:
    """The newest backtests/<start>_<end>/ KPI tables: 'kpis' (one row per policy) and 'per_device' (per policy and
    device, with imputed_days: days whose unrecorded demand was imputed). Columns: those of `WhatIf.kpis` but the
    scenario (per_device has no cost_vs_optimum)."""
    folder = _latest(ws.backtests, "kpis.csv", "`cashcast backtest --start D1 --end D2`").parent
    return {name: read_written(folder / f"{name}.csv", ()) for name in ("kpis", "per_device")}


# ---------------------------------------------------------------- model comparison


def metrics_by_model(backtest: pd.DataFrame) -> pd.DataFrame:
    """Mean and median backtest metrics of each candidate over devices (rows: model)."""
    table = backtest.groupby("model")[["smape", "mase", "wape", "bias"]].agg(["mean", "median"])
    table.columns = [f"{metric}_{stat}" for metric, stat in table.columns]
    table["devices"] = backtest.groupby("model")["device_id"].nunique()
    return table.sort_values("smape_mean")


def device_traits(lake: Lake, config: Config) -> pd.DataFrame:
    """Per device what makes forecasting easy or hard: kind, observed days, censored share, volatility.

    Columns: device_id, observed_days (uncensored days), censored_share (share of recorded days),
    mean_withdrawals (per observed day, in the workspace currency), volatility (standard deviation over mean, a
    ratio) and kind as the plan reads it: the master's, else `[devices] kind` of `config`.
    """
    import replenishment

    daily = lake.daily
    observed = daily[~daily["censored"]]
    grouped = observed.groupby("device_id")["withdrawals"]
    traits = pd.DataFrame(
        {
            "observed_days": grouped.count(),
            "censored_share": daily.groupby("device_id")["censored"].mean(),
            "mean_withdrawals": grouped.mean(),
            "volatility": grouped.std() / grouped.mean(),
        }
    )
    terms = replenishment.resolve_terms(lake.devices, lake.daily, config)
    traits["kind"] = traits.index.astype(str).map(terms.set_index("device_id")["kind"])
    traits.index = traits.index.astype("string")
    return traits.rename_axis("device_id").reset_index()


def head_to_head(backtest: pd.DataFrame, challenger: str = "lightgbm", incumbent: str = "ets") -> pd.DataFrame:
    """Per device sMAPE of two candidates, the gap (incumbent - challenger: > 0 means challenger wins).

    >>> head_to_head(backtest).merge(device_traits(lake, config), on="device_id")   # who wins, and on what devices
    """
    wide = backtest.pivot_table(index="device_id", columns="model", values="smape")
    missing = {challenger, incumbent} - set(wide.columns)
    if missing:
        raise KeyError(f"backtest has no rows for {sorted(missing)}")
    table = wide[[challenger, incumbent]].copy()
    table["gap"] = table[incumbent] - table[challenger]
    table["winner"] = np.where(table["gap"] > 0, challenger, incumbent)
    table.index = table.index.astype("string")
    return table.reset_index().sort_values("gap", ascending=False, ignore_index=True)


def gbm_importance(model) -> pd.DataFrame:
    """Gain importance of the pooled LightGBM of a CashForecaster (feature, gain, share), largest first.

    >>> gbm_importance(champion_model(ws, config)).head(10)
    """
    booster = model.withdrawals_.models_["lightgbm"].booster_
    if booster is None:
        raise ValueError("the pooled LightGBM was not fitted: no device had a week of history")
    gain = booster.feature_importance(importance_type="gain")
    table = pd.DataFrame({"feature": booster.feature_name(), "gain": gain})
    table["share"] = table["gain"] / table["gain"].sum()
    return table.sort_values("gain", ascending=False, ignore_index=True)


def coverage_table(backtest: pd.DataFrame, levels: list[float]) -> pd.DataFrame:
    """Nominal level against the held-out share of days under each quantile.

    The training run stores the leave-one-fold-out coverage on the `selected` rows, one column per level.
    """
    selected = backtest[backtest["model"] == "selected"]
    if not any(quantile_column(level) in selected for level in levels):  # not one: levels mistyped (90 for 0.9)
        require_known(levels, forecast_levels(selected), "quantile level", "the backtest table")
    rows = []
    for level in levels:
        column = quantile_column(level)
        if column in selected:
            rows.append({"level": level, "observed": selected[column].mean(), "devices": selected[column].count()})
    return pd.DataFrame(rows, columns=["level", "observed", "devices"])


# ---------------------------------------------------------------- replenishment what-if


def shared_forecasts(
    forecaster: Callable[[pd.DataFrame, pd.Timestamp, int], DemandForecast],
) -> Callable[[pd.DataFrame, pd.Timestamp, int], DemandForecast]:
    """A replay forecaster that predicts each (as_of, horizon) once: scenarios share the forecasts.

    What-if scenarios change device terms, never demand, so every scenario sees the same
    forecasts and the comparison isolates the policy settings.
    """
    made: dict[tuple[pd.Timestamp, int], DemandForecast] = {}

    def cached(past: pd.DataFrame, as_of: pd.Timestamp, horizon: int) -> DemandForecast:
        key = (pd.Timestamp(as_of), horizon)
        if key not in made:
            made[key] = forecaster(past, as_of, horizon)
        return made[key]

    return cached


# Device-master columns a scenario may set for every device: the terms of its service, not who or where it is (the
# derived ones, such as the allowed weekdays parsed from visit_weekdays, follow from them).
SCENARIO_TERMS = tuple(
    c for c in DEVICE_COLUMNS if c not in ("device_id", "kind", "country", "subdivision", "region", "name")
)


@dataclass
class WhatIf:
    """Replay KPIs per scenario and policy, the daily balance trajectories behind them, and the replay's
    notes on its window (devices left out, days imputed), as `cashcast backtest` warns them. Amounts are in the
    workspace currency.

    - kpis, one row per scenario and policy (cashcast, fixed_weekly, cover_rule, perfect_foresight): holding_cost,
      visit_cost, emergency_cost, total_cost, lost_demand, avg_idle_cash (amounts), visits and emergency_visits
      (counts), stockout_device_days, overflow_device_days, device_days (device-days), stockout_rate (a share of
      device-days), cost_vs_optimum (total_cost over perfect foresight's, a ratio), scenario.
    - trajectories, one row per scenario, policy, device and day: date, opening_balance, demand, deposits, served,
      lost, refused_deposits, load, balance_after_visit (amounts), visit and emergency (bool), scenario.
    """

    kpis: pd.DataFrame
    trajectories: pd.DataFrame
    notes: list[str]


def checked_scenarios(
    config: Config, scenarios: Mapping[str, Mapping[str, object]], plain: str
) -> dict[str, dict[str, object]]:
    """Each scenario's terms checked (`scenario_terms`), and the scenarios' shape: a dict of name -> terms, at least
    one (`plain`: the name of the scenario of no terms in the examples the errors give)."""
    shape = f'a dict of scenario name -> device terms, e.g. {{"{plain}": {{}}, "sl 0.90": {{"service_level": 0.9}}}}'
    if not isinstance(scenarios, Mapping):
        raise TypeError(f"scenarios are {shape}, not a {type(scenarios).__name__}")
    if not scenarios:
        raise ValueError(f"no scenarios: give at least one, {shape}")
    for name, overrides in scenarios.items():
        if not isinstance(overrides, Mapping):
            raise TypeError(f"scenario {name!r} is a {type(overrides).__name__}: scenarios are {shape}")
    return {name: scenario_terms(config, name, overrides) for name, overrides in scenarios.items()}


# Terms that are shares (0.9), which an analyst may write as percents (90).
SHARE_TERMS = ("service_level", "holding_rate")


def scenario_terms(config: Config, name: str, overrides: Mapping[str, object]) -> dict[str, object]:
    """`overrides` checked as the config checks its `[devices]` defaults (a service level of 1.5, a free visit or
    a negative holding rate would replay a device no bank has); ValueError names the scenario and the term."""
    from pydantic import ValidationError

    unknown = sorted(set(overrides) - set(SCENARIO_TERMS))
    if unknown:
        raise KeyError(f"scenario {name!r}: unknown device term(s) {unknown}; a scenario sets {list(SCENARIO_TERMS)}")
    # numpy's scalars (a term read from a DataFrame) as Python's: the config is strict about types, not about this
    given = {term: value.item() if isinstance(value, np.generic) else value for term, value in overrides.items()}
    terms = {**config.devices.model_dump(), **given}
    if "emergency_visit_cost" not in overrides:  # as for a master's dear visit: the emergency costs at least as much
        terms["emergency_visit_cost"] = max(terms["emergency_visit_cost"], terms["visit_cost"])
    try:
        checked = type(config.devices).model_validate(terms)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "terms"
        percent = where in SHARE_TERMS and isinstance(given[where], int | float) and given[where] > 1
        hint = " (a share, e.g. 0.9 for 90%, not a percent)" if percent else ""
        raise ValueError(f"scenario {name!r}: {where}: {first['msg']}{hint}") from None
    return {term: getattr(checked, term) for term in overrides}


def _possible(name: str, terms: pd.DataFrame) -> pd.DataFrame:
    """`terms` of a scenario, refused (naming the first device) where no plan can keep them, as ingest refuses
    them in a device master: a floor at or above the cassette or the ceiling, a bundle bigger than the cassette."""
    impossible = np.logical_or.reduce([mask for _, _, mask in balance_limit_checks(terms)])
    if impossible.any():
        row = terms[impossible].iloc[0]
        raise ValueError(
            f"scenario {name!r}: device {row['device_id']} would have min_balance {row['min_balance']:g}, capacity"
            f" {row['capacity']:g}, max_balance {row['max_balance']:g} and load_multiple {row['load_multiple']:g}:"
            " no plan can keep them"
        )
    return terms


def what_if(
    ws: Workspace,
    config: Config,
    start: pd.Timestamp,
    end: pd.Timestamp,
    scenarios: Mapping[str, Mapping[str, object]],
    model=None,
) -> WhatIf:
    """Replay [start, end] once per scenario, as `cashcast backtest` replays it: each scenario sets device terms
    (`SCENARIO_TERMS`) for every device, e.g. ``{"default": {}, "sl 0.90": {"service_level": 0.9},
    "Mondays": {"visit_weekdays": "Mon"}}``.

    The forecasts are the backtest's: trained on the history before `start` and again every
    `[forecast] retrain_every_days` (`model`: one fixed model instead), made once and shared by every scenario.
    So the "default" scenario's KPIs are `cashcast backtest`'s for the same window and config (`quick_config`'s
    differ: pass the nightly run's `load_config(...)` for those). Returns a WhatIf (columns there).
    """
    import replenishment

    start, end = jobs.parse_date(start), jobs.parse_date(end)
    checked = checked_scenarios(config, scenarios, "default")  # before any fit: a typo should not cost one
    window = jobs.replay_window(ws, config, start, end, names=("start", "end"))
    history = window.history
    if model is None:
        base = jobs.retraining_forecaster(config, history.devices, history.events)
    else:
        base = functools.partial(_predict, model, history.devices)
    forecaster = shared_forecasts(base)
    kpis, trajectories, notes = [], [], []
    for name, overrides in checked.items():
        terms = None  # the window's own
        if overrides:
            master = _master_with(history.devices, window.terms, overrides)
            terms = _possible(name, replenishment.resolve_terms(master, window.known, config))
        result = window.replay(start, end, forecaster, config, terms=terms)
        kpis.append(result.kpis.assign(scenario=name))
        trajectories.append(result.daily.assign(scenario=name))
        notes.extend(note for note in result.notes if note not in notes)
    return WhatIf(pd.concat(kpis, ignore_index=True), pd.concat(trajectories, ignore_index=True), notes)


def _predict(model, devices: pd.DataFrame | None, past: pd.DataFrame, as_of: pd.Timestamp, horizon: int):
    return model.predict(past, devices, as_of, horizon)


def _master_with(
    devices: pd.DataFrame, terms: pd.DataFrame, overrides: Mapping[str, object], device_ids: list[str] | None = None
) -> pd.DataFrame:
    """The device master of every device in `terms` (its own row where it has one) with `overrides` set for
    `device_ids` (default: all of them)."""
    master = pd.DataFrame({"device_id": terms["device_id"].astype(str)})
    master = master.merge(devices.astype({"device_id": str}), on="device_id", how="left")
    chosen = np.ones(len(master), dtype=bool) if device_ids is None else master["device_id"].isin(device_ids).to_numpy()
    for term, value in overrides.items():
        if term not in master:
            master[term] = pd.Series(pd.NA, index=master.index, dtype=object)
        master[term] = master[term].astype(object).where(~chosen, value)
    return master


def plan_what_if(
    ws: Workspace,
    config: Config,
    scenarios: Mapping[str, Mapping[str, object]],
    as_of: pd.Timestamp | None = None,
    device_ids: list[str] | None = None,
) -> dict:
    """The plan for the morning of `as_of` (default: the next) under each scenario, written nowhere.

    A scenario sets device-master terms (`SCENARIO_TERMS`) for `device_ids` (None: every device; an empty list is
    refused, as a filter that kept no device), e.g.
    ``{"as is": {}, "ATM-7 at 90%": {"service_level": 0.9}}`` with ``device_ids=["ATM-7"]``. The model, forecasts,
    balances and visits on order are `cashcast plan`'s, so a scenario of no terms is the plan `cashcast plan
    --as-of` writes with the same `config` (pass the nightly run's config for that: `quick_config`'s 50 sample
    paths make a rougher plan). Returns scenario -> PlanResult (plan, projection, summary, warnings). Needs a
    champion model: a notebook trains none into a workspace of its own.
    """
    import replenishment

    checked = checked_scenarios(config, scenarios, "as is")
    device_ids = [device_ids] if isinstance(device_ids, str) else device_ids
    if device_ids is not None and not len(device_ids):  # a filter that kept nothing: every plan would be "as is"
        raise ValueError("device_ids is empty: name the devices a scenario changes, or leave it out for all devices")
    as_of = jobs.parse_date(as_of) or jobs.next_as_of(ws)
    champion_version(ws, config)  # else champion_or_train would train one into the workspace
    history = jobs.load_history(ws, as_of, config=config)
    base = jobs.device_terms(history, config)
    require_known(device_ids or (), base["device_id"], "device", f"{ws.home}'s lake or device master")
    model = jobs.champion_or_train(ws, config, as_of, history=lambda: history)
    forecast = jobs.forecast_devices(model, history, config, config.plan.forecast_days)
    on_order, made = jobs.visits_on_order(ws, as_of), jobs.visits_made(ws, as_of, history.balances)
    results = {}
    for name, overrides in checked.items():
        terms = base
        if overrides:
            master = _master_with(history.devices, base, overrides, device_ids)
            terms = _possible(name, replenishment.resolve_terms(master, history.daily, config))
        results[name] = jobs.plan_forecast(forecast, history, config, terms, None, on_order, made)
    return results


# ---------------------------------------------------------------- charts


def new_figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, Axes]:
    """A figure outside pyplot (see the module docstring) and its axes (an array when ncols > 1)."""
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots(1, ncols)


def money_axis(ax, which: str = "y") -> None:
    """Whole amounts with thousands separators instead of matplotlib's 1e7 offset notation."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))


def currency_name(config: Config) -> str:
    """What the charts call the amounts: `[ingest] currency` when the config names it, else CURRENCY."""
    return config.ingest.currency or CURRENCY


def _daily_withdrawals_axes(fig: Figure, ax: Axes, title: str, currency: str) -> Figure:
    """The axes of a withdrawals-per-day chart: money ticks, title, labels, legend, slanted dates."""
    money_axis(ax)
    ax.set_title(title)
    ax.set_xlabel("date")
    ax.set_ylabel(f"withdrawals per day ({currency})")
    ax.legend(loc="upper left", fontsize=8)
    fig.autofmt_xdate()
    return fig


def history_chart(days: pd.DataFrame, holidays: pd.DataFrame, title: str, currency: str = CURRENCY) -> Figure:
    """Daily withdrawals with holidays shaded, censored days and unrecorded days marked."""
    fig, ax = new_figure(11, 3.6)
    ax.plot(days["date"], days["withdrawals"], color="#2a7ab0", linewidth=0.9, label="withdrawals")
    censored = days[days["censored"]]
    ax.scatter(
        censored["date"],
        censored["withdrawals"],
        color="#d03030",
        s=14,
        zorder=3,
        label="censored (cash-out/offline: lower bound)",
    )
    gaps = days[~days["recorded"]]
    if len(gaps):
        ax.scatter(gaps["date"], np.zeros(len(gaps)), marker="|", color="grey", s=40, label="not recorded")
    for i, day in enumerate(holidays.loc[holidays["kind"] == "holiday", "date"]):
        ax.axvspan(
            day,
            day + pd.Timedelta(days=1),
            color="#f0c040",
            alpha=0.35,
            lw=0,
            label="public holiday" if i == 0 else None,
        )
    return _daily_withdrawals_axes(fig, ax, title, currency)


def fan_chart(
    recent: pd.DataFrame, forecast: pd.DataFrame, levels: list[float], title: str, currency: str = CURRENCY
) -> Figure:
    """Recent actuals, then the forecast's median and its quantile bands (q50..q_top), actuals overlaid, of the one
    device `forecast` holds (several would draw every device's bands under one title: refused)."""
    devices = sorted(forecast["device_id"].astype(str).unique()) if "device_id" in forecast else []
    if len(forecast) == 0 or len(devices) > 1:
        held = f"{len(devices)} devices ({', '.join(devices[:5])}{', ...' if len(devices) > 5 else ''})"
        raise ValueError(
            f"fan_chart draws one device, and the forecast holds {held if len(forecast) else 'no rows'}: filter it"
            ' first, e.g. forecast[forecast["device_id"] == "ATM-00001"] or forecast_against_actuals(lake, forecast,'
            ' "ATM-00001")'
        )
    require_known([q for q in levels if q > 0.5], forecast_levels(forecast), "quantile level", "the forecast")
    fig, ax = new_figure(11, 3.6)
    ax.plot(recent["date"], recent["withdrawals"], color="black", linewidth=1, label="actual withdrawals")
    upper = sorted(q for q in levels if q > 0.5)
    shades = np.linspace(0.15, 0.45, len(upper))[::-1]
    median = forecast[quantile_column(0.5)] if quantile_column(0.5) in forecast else forecast["yhat"]
    for level, alpha in zip(upper, shades, strict=True):
        ax.fill_between(
            forecast["date"],
            median,
            forecast[quantile_column(level)],
            color="#2a7ab0",
            alpha=alpha,
            lw=0,
            label=f"median to q{round(level * 100)}",
        )
    ax.plot(forecast["date"], forecast["yhat"], color="#2a7ab0", linewidth=1.5, label="forecast (yhat)")
    if "withdrawals" in forecast and forecast["withdrawals"].notna().any():
        censored = forecast["censored"] if "censored" in forecast else pd.Series(False, index=forecast.index)
        seen, lost = forecast[~censored], forecast[censored]
        ax.plot(seen["date"], seen["withdrawals"], "o", color="black", ms=3, label="actual in forecast window")
        if len(lost):
            ax.plot(lost["date"], lost["withdrawals"], "o", color="#d03030", ms=4, label="censored (lower bound)")
    return _daily_withdrawals_axes(fig, ax, title, currency)


def metric_chart(table: pd.DataFrame, metric: str = "smape_mean", unit: str = "%") -> Figure:
    """One bar per model of a `metrics_by_model` column."""
    require_known([metric], table.columns.drop("devices", errors="ignore"), "metric", "the table")
    fig, ax = new_figure(6, 3.2)
    ax.bar(table.index.astype(str), table[metric], color="#2a7ab0")
    ax.set_title(f"Backtest {metric.replace('_', ' ')} by model (lower is better)")
    ax.set_xlabel("model")
    ax.set_ylabel(f"{metric.split('_')[0]} ({unit})")
    return fig


def importance_chart(importance: pd.DataFrame, top: int = 12) -> Figure:
    """Horizontal bars of the largest gain shares of the pooled LightGBM."""
    head = importance.head(top).iloc[::-1]
    fig, ax = new_figure(6, 0.3 * len(head) + 1.2)
    ax.barh(head["feature"], 100 * head["share"], color="#2a7ab0")
    ax.set_title("LightGBM feature importance (total gain)")
    ax.set_xlabel("share of total gain (%)")
    ax.set_ylabel("feature")
    return fig


def coverage_chart(coverage: pd.DataFrame) -> Figure:
    """Observed coverage of each quantile against its nominal level (on the diagonal = calibrated)."""
    fig, ax = new_figure(4.5, 4)
    ax.plot([0.4, 1], [0.4, 1], color="grey", linewidth=1, label="perfect calibration")
    ax.plot(coverage["level"], coverage["observed"], "o-", color="#2a7ab0", label="backtest")
    if coverage["observed"].isna().all():  # leave-one-fold-out needs a second fold to score on
        ax.text(0.7, 0.55, "not measured: the model was trained\nwith fewer than 2 backtest folds", ha="center")
    ax.set_title("Quantile coverage, held-out backtest days")
    ax.set_xlabel("nominal quantile level (share of days)")
    ax.set_ylabel("observed share of days below (share of days)")
    ax.legend(fontsize=8)
    return fig


def frontier_chart(kpis: pd.DataFrame, reference: str | None = None, currency: str = CURRENCY) -> Figure:
    """Total cost against stockout device-days: the Cashcast policy under every scenario of a `what_if`,
    the baselines and perfect foresight under the `reference` scenario (default: the first) for scale.

    Scenarios that change prices (holding rate, visit cost) also change what every policy costs, so
    only the reference scenario's baselines are drawn: one cloud per price world would be unreadable.
    """
    reference = reference or str(kpis["scenario"].iloc[0])
    require_known([reference], kpis["scenario"], "scenario", "the what-if's KPIs")
    fig, ax = new_figure(8, 4.5)
    ours = kpis[kpis["policy"] == "cashcast"]
    ax.scatter(
        ours["stockout_device_days"], ours["total_cost"], s=45, color=POLICY_COLORS["cashcast"], label="cashcast"
    )
    for _, row in ours.iterrows():
        ax.annotate(
            str(row["scenario"]),
            (row["stockout_device_days"], row["total_cost"]),
            fontsize=8,
            xytext=(5, 3),
            textcoords="offset points",
        )
    others = kpis[(kpis["policy"] != "cashcast") & (kpis["scenario"] == reference)]
    for _, row in others.iterrows():
        ax.scatter(
            row["stockout_device_days"],
            row["total_cost"],
            s=60,
            marker="s",
            facecolors="none",
            edgecolors=POLICY_COLORS.get(row["policy"], "#804080"),
            label=f"{row['policy']} ({reference})",
        )
    money_axis(ax)
    ax.margins(x=0.15, y=0.1)
    ax.set_title("Cost against stockouts per scenario (backtest replay)")
    ax.set_xlabel("stockout device-days (count)")
    ax.set_ylabel(f"total cost: holding + visits + emergencies ({currency})")
    ax.legend(fontsize=8)
    return fig


def balance_chart(
    trajectories: pd.DataFrame, device_id: str, policy: str = "cashcast", currency: str = CURRENCY
) -> Figure:
    """Cash held after the morning visit, day by day, of one device under each scenario."""
    require_known([device_id], trajectories["device_id"], "device", "the what-if's trajectories")
    require_known([policy], trajectories["policy"], "policy", "the what-if's trajectories")
    own = trajectories[(trajectories["device_id"] == device_id) & (trajectories["policy"] == policy)]
    fig, ax = new_figure(11, 3.6)
    for scenario, group in own.groupby("scenario", sort=False):
        ax.step(group["date"], group["balance_after_visit"], where="post", label=str(scenario))
    money_axis(ax)
    ax.set_title(f"{device_id}: cash in the device after the morning visit ({policy} policy)")
    ax.set_xlabel("date")
    ax.set_ylabel(f"balance ({currency})")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.autofmt_xdate()
    return fig


# ---------------------------------------------------------------- notebooks

NOTEBOOK_DIR = CHECKOUT_DATA_DIR.parent / "notebooks"


def strip_outputs(paths: list[str | Path] | None = None) -> list[Path]:
    """Clear outputs and execution counts of notebooks (default: notebooks/*.ipynb) before committing.

    Returns the notebooks that changed. From a shell: ``python -m cashcast.analyst [NOTEBOOK...]``.
    """
    import nbformat

    changed = []
    for path in [Path(p) for p in paths] if paths else sorted(NOTEBOOK_DIR.glob("*.ipynb")):
        book = nbformat.read(path, as_version=4)
        dirty = False
        for cell in book.cells:
            if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
                cell.outputs, cell.execution_count, dirty = [], None, True
        if dirty:
            nbformat.write(book, path)
            changed.append(path)
    return changed


if __name__ == "__main__":
    import sys

    for stripped in strip_outputs(sys.argv[1:]):
        print(f"stripped outputs of {stripped}")
