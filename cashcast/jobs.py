"""The stage jobs: read the workspace, call the pure stages, write the outputs.

This is the I/O edge of Cashcast. The CLI calls these for single commands; the Prefect flows wrap
the same functions in tasks, so both paths produce identical files.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
import re
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

import features
import ingest
from cashcast.config import Config
from cashcast.io import atomic_path, read_written, stage_table, write_table, write_tables
from cashcast.schema import STALE_HISTORY_DAYS, DemandForecast, days_unrecorded
from cashcast.workspace import Workspace

if TYPE_CHECKING:  # heavy imports (MLflow, LightGBM) the commands that need them load when they run
    from mlflow.entities.model_registry import ModelVersion

    from forecasting import CashForecaster
    from replenishment import PlanResult


class NoDataError(RuntimeError):
    """The workspace has no history to work from."""


class HistoryStartsLaterError(NoDataError):
    """The lake holds history, but none before the morning asked for; `first_month` is its first ('2011-01')."""

    def __init__(self, message: str, first_month: str):
        super().__init__(message)
        self.first_month = first_month


OTHER_SETTINGS = "fitted under other model settings than this config's ([forecast], [calendar] or the default country)"


class ModelSettingsWarning(UserWarning):
    """The serving champion was fitted under other model settings than the command's config."""


class ReplayWarning(UserWarning):
    """What a backtest's reader should know about its window (days imputed, devices left out)."""


class StaleHistoryWarning(UserWarning):
    """The lake's last recorded day is well before the morning asked for: forecasts rest on old history."""


class ThinDayWarning(UserWarning):
    """The lake's last recorded day holds few of the devices the days before it did: the morning it sets may be
    one a partial file (an extract cut after midnight, a mistyped date) chose."""


@dataclass
class History:
    """What a stage knows on the morning of `as_of`: history before it, device master, balances."""

    daily: pd.DataFrame
    devices: pd.DataFrame
    balances: pd.DataFrame
    as_of: pd.Timestamp
    events: pd.DataFrame | None = None  # the custom events calendar ([calendar] events_file)


ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2})?)?")  # a time of day is dropped


def parse_date(text: str | pd.Timestamp | None) -> pd.Timestamp | None:
    """Dates from the command line or a notebook (YYYY-MM-DD text, or a Timestamp) as normalised timestamps;
    None stays None. Other text is refused, as ingest refuses it: '03/11/2026' is March or November; so is a
    number, which pandas reads as nanoseconds after 1970-01-01 (2017 is no year there)."""
    if (isinstance(text, str) and not ISO_DAY.fullmatch(text.strip())) or isinstance(text, (int, float, np.number)):
        raise ValueError(f"{text!r}: dates are YYYY-MM-DD (e.g. 2026-11-03)")
    return None if text is None else pd.Timestamp(text).normalize()


MAX_PLAN_REACH_DAYS = 130  # past a plan's last visit: its horizon is at most 90 days


def load_history(
    ws: Workspace,
    as_of: pd.Timestamp | None = None,
    device_ids: list[str] | None = None,
    config: Config | None = None,
) -> History:
    """Read the lake as known on the morning of `as_of` (default: the day after the last recorded day).

    With `config`, the custom events calendar ([calendar] events_file, none when it is empty) comes
    along for training and forecasting.
    """
    as_of = parse_date(as_of)  # an analyst's "2026-11-01" too
    end = None if as_of is None else as_of - pd.Timedelta(days=1)
    daily = ingest.read_daily(ws, end=end, device_ids=device_ids)
    if daily.empty:
        months = sorted(p.name.removeprefix("month=") for p in ws.table("daily").glob("month=*/") if any(p.iterdir()))
        if not months:
            raise NoDataError(f"{ws.home}: the lake has no daily history; run `cashcast ingest`")
        whose = "" if device_ids is None else " for the devices asked for"
        before = "" if as_of is None else f" before {as_of:%Y-%m-%d}"
        message = f"{ws.home}: no daily history{whose}{before}; the lake's starts in {months[0]}"
        raise HistoryStartsLaterError(message, months[0])
    last = daily["date"].max()
    as_of = as_of if as_of is not None else last + pd.Timedelta(days=1)
    unrecorded = days_unrecorded(last, as_of)
    if unrecorded > STALE_HISTORY_DAYS:
        warnings.warn(
            StaleHistoryWarning(
                f"{ws.home}: the last recorded day is {last:%Y-%m-%d}; the {unrecorded} days before"
                f" {as_of:%Y-%m-%d} have no record, so forecasts and plans rest on older history"
            ),
            stacklevel=2,
        )
    tables = {name: ingest.read_table(ws, name) for name in ("status", "balances", "devices")}
    if device_ids is not None:
        wanted = set(device_ids)
        tables = {name: t[t["device_id"].isin(wanted)] for name, t in tables.items()}
    status, balances = tables["status"], tables["balances"]
    known_status = status[pd.to_datetime(status["start"]) < as_of] if len(status) else status
    known_balances = balances[pd.to_datetime(balances["as_of"]) < as_of] if len(balances) else balances
    daily = features.mark_censored(daily, known_status, known_balances)
    events_file = features.resolve_events_file(config, ws.home) if config is not None else None
    events = None if config is None else features.no_events()
    if events_file is not None:
        events = features.load_events(events_file)
    return History(daily=daily, devices=tables["devices"], balances=balances, as_of=as_of, events=events)


def data_fingerprint(daily: pd.DataFrame) -> str:
    """A short hash of the training data, so an MLflow run says exactly what it saw."""
    hashed = pd.util.hash_pandas_object(
        daily[["device_id", "date", "withdrawals", "deposits", "censored"]], index=False
    )
    return hashlib.sha256(hashed.to_numpy().tobytes()).hexdigest()[:16]


def latest_balances(balances: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """Each device's most recent balance taken on or before the morning of `as_of`."""
    if balances.empty:
        return pd.DataFrame({"device_id": pd.Series(dtype="string"), "balance": pd.Series(dtype=float)})
    known = balances[pd.to_datetime(balances["as_of"]) <= as_of]
    known = known.sort_values("as_of", kind="stable").groupby("device_id", as_index=False).tail(1)
    return known[["device_id", "balance", "as_of"]].rename(columns={"as_of": "balance_as_of"})


def output_path(folder: Path, as_of: pd.Timestamp, name: str) -> Path:
    """Default output location: <folder>/<as_of>/<name> inside the workspace."""
    return folder / f"{as_of:%Y-%m-%d}" / name


# ---------------------------------------------------------------- train


@dataclass
class TrainOutcome:
    as_of: pd.Timestamp
    n_devices: int
    metrics: dict[str, float]
    run_id: str
    version: str
    promoted: bool
    reason: str


def run_train(
    ws: Workspace,
    config: Config,
    as_of: pd.Timestamp | None = None,
    progress: bool = False,
    history: History | None = None,
) -> TrainOutcome:
    """Fit every device's models on history before `as_of`, backtest, select, log and register.

    `history`, when the caller has already read it (with `config`, for the events), saves a lake read.
    """
    import forecasting
    from forecasting import registry

    if history is None:
        history = load_history(ws, as_of, config=config)
    result = forecasting.train(
        history.daily, history.devices, history.as_of, config, progress=progress, events=history.events
    )
    champion = registry.load_champion(ws, config)
    champion_score, unscored, kept = None, None, None
    origins = [pd.Timestamp(origin) for origin in result.window["backtest_origins"]]
    if champion is not None and champion.as_of_ > history.as_of:
        # A backfill (a nightly run or training for a past morning): the newer champion keeps serving, and
        # this version forecasts only the morning it was trained for (see _past_morning_model).
        kept = (
            f"trained for {history.as_of:%Y-%m-%d}, a morning before the champion's ({champion.as_of_:%Y-%m-%d}):"
            " this version forecasts that morning only"
        )
    elif champion is not None and origins and champion.as_of_ > min(origins):
        # Fitted on days the window scores, it would be graded in-sample against the challenger's out-of-sample
        # backtest and never lose: a refit of the method on newer history replaces it.
        unscored = f"the champion (as of {champion.as_of_:%Y-%m-%d}) was fitted on part of this backtest window"
    elif champion is not None:
        scored = forecasting.score_window(
            champion, history.daily, history.devices, origins, result.window["horizon"], config
        )
        champion_score = float(scored[registry.SCORE_KEY])
    outcome = registry.log_training(
        result,
        config,
        ws,
        as_of=history.as_of,
        fingerprint=data_fingerprint(history.daily),
        champion_score=champion_score,
        unscored_champion=unscored,
        keep_champion=kept,
    )
    return TrainOutcome(
        as_of=history.as_of,
        n_devices=int(history.daily["device_id"].nunique()),
        metrics={k: float(v) for k, v in result.metrics.items()},
        run_id=outcome.run_id,
        version=outcome.version,
        promoted=outcome.promoted,
        reason=outcome.reason,
    )


def ensure_champion(
    ws: Workspace,
    config: Config,
    as_of: pd.Timestamp,
    progress: bool = False,
    history: Callable[[], History] | None = None,
) -> ModelVersion | None:
    """The champion's registered version, training and registering a first one when there is none.

    `history` hands over the caller's read of the lake (see `_past_morning_model`).
    """
    from forecasting import registry

    version = registry.champion_version(ws, config)
    if version is None:
        run_train(ws, config, as_of, progress=progress, history=None if history is None else history())
        version = registry.champion_version(ws, config)
    elif registry.settings_differ(version, config):
        warnings.warn(
            ModelSettingsWarning(f"the champion was {OTHER_SETTINGS}: `cashcast train` refits it"), stacklevel=2
        )
    return version


def trained_as_of(version: ModelVersion) -> pd.Timestamp:
    """The as-of morning a registered model was trained for: it saw the days before it."""
    return pd.Timestamp(version.tags.get("as_of", "1970-01-01"))


@dataclass(frozen=True)
class ModelRef:
    """Which model forecasts a morning, as a name every worker can load: the champion (both None),
    a registered `version`, or a model `file` fitted for the morning and pickled into the workspace."""

    version: str | None = None
    file: str | None = None


def _past_morning_model(
    ws: Workspace,
    config: Config,
    as_of: pd.Timestamp,
    progress: bool = False,
    history: Callable[[], History] | None = None,
) -> tuple[ModelRef, object | None]:
    """The model for the morning of `as_of` that saw only the history before it, as (ref, fitted):

    - the champion (ModelRef(), None) when it may forecast that morning (training and registering a
      first one when the workspace has none); a champion trained on days on or after `as_of` has
      seen that morning's future, so then
    - the version registered for this very morning (a past-date nightly run trains one, which may
      lose to the champion): (ModelRef(version=...), None);
    - else a model fitted here and not registered: (ModelRef(), the model).

    `history` returns the caller's read of the lake before `as_of` (read with `config`), so a
    command that trains first reads the lake once; by default it is read here when needed.
    """
    import forecasting
    from forecasting import registry

    read = _once(history or (lambda: load_history(ws, as_of, config=config)))
    version = ensure_champion(ws, config, as_of, progress=progress, history=read)
    if trained_as_of(version) <= as_of:
        return ModelRef(), None
    own = registry.version_trained_for(ws, config, as_of)
    if own is not None:
        return ModelRef(version=str(own.version)), None
    past = read()
    fitted = forecasting.train(past.daily, past.devices, as_of, config, progress=progress, events=past.events).model
    return ModelRef(), fitted


def champion_or_train(
    ws: Workspace,
    config: Config,
    as_of: pd.Timestamp,
    progress: bool = False,
    history: Callable[[], History] | None = None,
) -> CashForecaster:
    """The model to forecast from the morning of `as_of`: the champion, or the honest model of
    `_past_morning_model` for a morning before the champion's training."""
    ref, fitted = _past_morning_model(ws, config, as_of, progress, history)
    return fitted if fitted is not None else load_model(ws, config, ref)


def load_model(ws: Workspace, config: Config, ref: ModelRef) -> CashForecaster:
    """The model `ref` names: the champion, a registered version or a pickled file."""
    from forecasting import registry

    if ref.file is not None:
        return pickle.loads(Path(ref.file).read_bytes())
    if ref.version is not None:
        return registry.load_version(ws, config, ref.version)
    return registry.load_champion(ws, config)


def morning_model(ws: Workspace, config: Config, as_of: pd.Timestamp, progress: bool = False) -> ModelRef:
    """Where the nightly chunks find their model for `as_of`.

    A model fitted here for a morning before the champion's training is pickled into the workspace
    (the caller removes it when the chunks are done), where every chunk (thread or Dask worker) loads it.
    """
    ref, fitted = _past_morning_model(ws, config, as_of, progress)
    if fitted is None:
        return ref
    target = ws.models / f"before-{as_of:%Y-%m-%d}.pkl"
    with atomic_path(target) as tmp:
        tmp.write_bytes(pickle.dumps(fitted, protocol=pickle.HIGHEST_PROTOCOL))
    return ModelRef(file=str(target))


def _once(read: Callable[[], History]) -> Callable[[], History]:
    """`read`, run at most once: the first call's History serves every later one."""
    kept: list[History] = []

    def first() -> History:
        if not kept:
            kept.append(read())
        return kept[0]

    return first


# ---------------------------------------------------------------- forecast and plan


def forecast_devices(
    model: CashForecaster,
    history: History,
    config: Config,
    horizon: int,
    n_paths: int | None = None,
    part: bool = False,
    twins: dict[str, str] | None = None,
) -> DemandForecast:
    """Forecast the devices of `history` from `history.as_of` on, with the events calendar read with it.

    Quantile levels and path count follow `config` (default `n_paths`), not the config the model was
    trained under: a changed `[forecast] quantiles` must show in tonight's files without a retrain.
    `part`: `history` is a chunk of a network whose window was checked (`require_history_window`): its devices
    may all be long silent, which is no reason to refuse. `twins`: the device each device of the master with no
    recorded day forecasts as (default: the typical one of its kind in `history`, `replenishment.typical_devices`;
    a chunk gets the network's)."""
    return model.predict(
        history.daily,
        history.devices,
        history.as_of,
        horizon,
        n_paths=config.forecast.n_paths if n_paths is None else n_paths,
        events=history.events,
        quantiles=config.forecast.quantiles,
        require_history=not part,
        twins=new_device_twins(history, config) if twins is None else twins,
    )


def new_device_twins(
    history: History, config: Config, terms: Callable[[], pd.DataFrame] | None = None
) -> dict[str, str]:
    """The master's devices with no recorded day in `history` -> the typical recorded device of their kind
    (`replenishment.new_device_twins`), from `terms` (the caller's resolution of them, default: resolved here),
    asked for only when there is such a device."""
    import replenishment

    recorded = set(history.daily["device_id"].astype(str))
    if history.devices.empty or set(history.devices["device_id"].astype(str)) <= recorded:
        return {}
    return replenishment.new_device_twins(device_terms(history, config) if terms is None else terms())


def require_history_window(ws: Workspace, config: Config, as_of: pd.Timestamp) -> None:
    """Refuse, before a nightly run's chunks start, a morning whose training window holds no day of the lake."""
    from forecasting.forecaster import NoHistoryError, no_history_message

    last = last_recorded_day(ws)
    if last is None or last < as_of - pd.Timedelta(days=config.forecast.max_history_days):
        raise NoHistoryError(no_history_message(config, as_of, last))


def run_forecast(
    ws: Workspace,
    config: Config,
    as_of: pd.Timestamp,
    horizon: int,
    out: Path | None = None,
    progress: bool = False,
) -> Path:
    """Daily forecasts for as_of .. as_of+horizon-1 from the champion, written to `out` (CSV or Parquet)."""
    history = load_history(ws, as_of, config=config)
    model = champion_or_train(ws, config, as_of, progress=progress, history=lambda: history)
    forecast = forecast_devices(model, history, config, horizon, n_paths=0)
    target = out or output_path(ws.forecasts, as_of, "forecast.csv")
    return write_table(forecast.frame, target)


def device_terms(history: History, config: Config, typical: dict[str, float] | None = None) -> pd.DataFrame:
    """The resolved terms of the devices in `history` (master fields, trailing mean demand); `typical`: the
    network's typical demand per kind, for a chunk of it (`network_typicals`)."""
    import replenishment

    return replenishment.resolve_terms(history.devices, history.daily, config, typical)


def plan_forecast(
    forecast: DemandForecast,
    history: History,
    config: Config,
    terms: pd.DataFrame,
    balances: pd.DataFrame | None = None,
    on_order: pd.DataFrame | None = None,
    made: pd.DataFrame | None = None,
) -> PlanResult:
    """Plan the visits of the forecast devices from the latest balances before `history.as_of`, brought
    forward to it over the visits `made` since the counts (see `visits_made`), around the visits `on_order`
    (see `visits_on_order`)."""
    import replenishment

    opening = latest_balances(history.balances if balances is None else balances, history.as_of)
    opening = replenishment.roll_balances_forward(opening, history.daily, made, history.as_of)
    return replenishment.plan_network(forecast, terms, opening, history.as_of, config, ordered_visits=on_order)


def visits_on_order(
    ws: Workspace, as_of: pd.Timestamp, own: pd.DataFrame | None = None, own_ordered_before: pd.Timestamp | None = None
) -> pd.DataFrame | None:
    """The visits the carrier already has on the morning of `as_of`, from the plans written for earlier
    mornings (None when there are none): inside the lead time they can no longer change.

    Each plan's orders stood until the next plan was written, so a visit counts when its plan ordered it
    (`order_by`) before the next plan's morning, and it falls on `as_of` or later. A visit ordered three
    mornings ago for the day after tomorrow is in that plan only: the plans since took it as given and do not
    list it. `own`: a night planning `as_of` again (no newer day arrived): the rows of its own plan in force that
    were due to be ordered before `own_ordered_before` (`own_plan_orders`) count too.
    """
    ordered = _on_order(_written_plans(ws), as_of, _planned_visits)
    if own is None:
        return ordered
    import replenishment

    own = replenishment.visits_on_order(own, as_of, ordered_before=own_ordered_before)
    both = pd.concat([frame for frame in (ordered, own) if frame is not None], ignore_index=True)
    return both.drop_duplicates(["device_id", "visit_date"], keep="last").reset_index(drop=True)


def own_plan_orders(ws: Workspace, as_of: pd.Timestamp, ordered_before: pd.Timestamp | None) -> pd.DataFrame | None:
    """The rows of `as_of`'s plan in force due to be ordered before `ordered_before` (None: none asked for): when
    a night plans that morning again, the carrier has them, so the new plan keeps them as given and lists them as
    they were (its file is where the next nights find them on order)."""
    path = output_path(ws.plans, as_of, "plan.csv")
    if ordered_before is None or not path.exists():
        return None
    plan = read_written(path, ("visit_date", "order_by"))  # written escaped again with the new plan
    ordered = plan[plan["order_by"] < pd.Timestamp(ordered_before).normalize()]
    return ordered.reset_index(drop=True) if len(ordered) else None


def same_morning_again(ws: Workspace, as_of: pd.Timestamp) -> tuple[pd.Timestamp, str] | None:
    """For a night's own morning (no --as-of) already planned: (the day before which that plan's orders were
    placed, today; the warning). A feed that stopped looks like this: the same morning planned night after night,
    and the new plan keeps the orders the carrier has (`own_plan_orders`)."""
    if not output_path(ws.plans, as_of, "plan.csv").exists():
        return None
    return pd.Timestamp.now().normalize(), (
        f"no day newer than {as_of - pd.Timedelta(days=1):%Y-%m-%d} has arrived since the last run:"
        f" planning the morning of {as_of:%Y-%m-%d} again (has the feed stopped?)"
    )


def _written_plans(ws: Workspace) -> list[tuple[pd.Timestamp, Path]]:
    """(morning, plan.csv) of every plan in the workspace (plans/<YYYY-MM-DD> only), oldest first."""
    days = {
        path: pd.to_datetime(path.parent.name, format="%Y-%m-%d", errors="coerce")
        for path in ws.plans.glob("*/plan.csv")
    }
    return sorted((day, path) for path, day in days.items() if pd.notna(day))


def _on_order(
    plans: list[tuple[pd.Timestamp, Path]],
    as_of: pd.Timestamp,
    read: Callable[[Path], pd.DataFrame],
    same_day: bool = False,
) -> pd.DataFrame | None:
    """`visits_on_order` over the plans listed, each read by `read` (a caller asking about many mornings
    lists them once and caches the reading). `same_day`: also as_of's own plan, whose same-day orders (a
    lead time of 0) are made that day too."""
    import replenishment

    oldest = as_of - pd.Timedelta(days=MAX_PLAN_REACH_DAYS)  # no visit of an older plan reaches as_of
    end = as_of + pd.Timedelta(days=1) if same_day else as_of
    earlier = [(day, path) for day, path in plans if oldest <= day < end]
    if not earlier:
        return None
    parts = []
    for (_, path), following in zip(earlier, [day for day, _ in earlier[1:]] + [end], strict=True):
        # A visit stands when it was ordered while its plan was the latest.
        parts.append(replenishment.visits_on_order(read(path), as_of, ordered_before=following))
    ordered = pd.concat(parts, ignore_index=True)
    return ordered.drop_duplicates(["device_id", "visit_date"], keep="last").reset_index(drop=True)


def _planned_visits(path: Path) -> pd.DataFrame:
    """A written plan's visits as `replenishment.visits_on_order` reads them (ids unescaped)."""
    return read_written(path, columns=["device_id", "visit_date", "order_by", "balance_after"])


def visits_made(ws: Workspace, as_of: pd.Timestamp, balances: pd.DataFrame | None = None) -> pd.DataFrame | None:
    """The visits taken as made between the devices' latest cash counts (`balances`, default the lake's)
    and the morning of `as_of`: on each day, the visits on order that morning for that day (None when
    there are none, or no plans). Each plan is read once, however many mornings it served."""
    import replenishment

    opening = latest_balances(ingest.read_table(ws, "balances") if balances is None else balances, as_of)
    if opening.empty:
        return None
    since = pd.to_datetime(opening["balance_as_of"]).min().normalize()
    since = max(since, as_of - pd.Timedelta(days=replenishment.plan.MAX_ROLL_DAYS))
    plans, read = _written_plans(ws), functools.cache(_planned_visits)
    parts = []
    for day in pd.date_range(since, as_of - pd.Timedelta(days=1), freq="D"):
        ordered = _on_order(plans, day, read, same_day=True)
        if ordered is not None:
            parts.append(ordered[pd.to_datetime(ordered["visit_date"]) == day])
    return pd.concat(parts, ignore_index=True) if parts else None


def plan_devices(
    model: CashForecaster,
    history: History,
    config: Config,
    balances: pd.DataFrame | None = None,
    on_order: pd.DataFrame | None = None,
    made: pd.DataFrame | None = None,
    part: bool = False,
    typical: NetworkTypicals | None = None,
) -> tuple[DemandForecast, PlanResult, dict[str, str]]:
    """Forecast with sample paths and plan the visits of the devices in `history` (pure apart from the model).

    The forecast runs `[plan] lookahead_days` past the plan's horizon: the optimiser weighs the
    plan's last loads against the visits that follow. `part`: see `forecast_devices`; `typical`: the network's,
    for a chunk of it (`network_typicals`).
    """
    twins, typical = (None, None) if typical is None else (typical.twins, typical.demand)
    forecast = forecast_devices(model, history, config, config.plan.forecast_days, part=part, twins=twins)
    terms = device_terms(history, config, typical)
    result = plan_forecast(forecast, history, config, terms, balances, on_order, made)
    return forecast, result, forecast.failures


@dataclass
class PlanFiles:
    plan: Path
    projection: Path
    summary: Path
    forecast: Path


LATE_FOLDER = "late"  # plans/<day>/late/: a plan for a morning older than one already planned
PREVIEW_FOLDER = "preview"  # plans/<day>/preview/: a plan for a morning that has not come
APART_FOLDERS = (LATE_FOLDER, PREVIEW_FOLDER)


@dataclass(frozen=True)
class KeptApart:
    """Why a plan for `as_of` is no plan in force: its files go to `folder` under the morning's, and the
    visits on order are never read from there."""

    folder: str
    why: str


def kept_apart(ws: Workspace, as_of: pd.Timestamp, today: pd.Timestamp | None = None) -> KeptApart | None:
    """None for a plan in force; else why the plan for `as_of` written now is kept apart.

    Late: a later morning was planned already, so the carrier's orders came from the plans written at the time.
    Preview: the morning is after tomorrow by the clock and the lake does not reach its eve (an analyst looking
    ahead); were it read as the plan in force, tonight's real plan would count as late and order nothing. The
    clock alone would not do: a feed that stopped leaves the lake behind on mornings that have come, and the
    lake alone would not either: a network generated or replayed ahead of the calendar has its history."""
    later = planned_after(ws, as_of)
    if later is not None:
        return KeptApart(
            LATE_FOLDER,
            f"the morning of {later:%Y-%m-%d} was planned before this plan for {as_of:%Y-%m-%d}: the orders came "
            "from the plans in force then",
        )
    today = pd.Timestamp.now().normalize() if today is None else today
    if as_of > today + pd.Timedelta(days=1):
        last = last_recorded_day(ws)
        if last is None or as_of > last + pd.Timedelta(days=1):
            history = "the lake holds no day" if last is None else f"the lake's last recorded day is {last:%Y-%m-%d}"
            return KeptApart(
                PREVIEW_FOLDER,
                f"the morning of {as_of:%Y-%m-%d} has not come (today is {today:%Y-%m-%d}) and {history}: a preview",
            )
    return None


def planned_after(ws: Workspace, as_of: pd.Timestamp) -> pd.Timestamp | None:
    """The latest morning planned after `as_of`, if any: a plan for `as_of` written now is a late one."""
    return max((day for day, _ in _written_plans(ws) if day > as_of), default=None)


def plan_output(folder: Path, as_of: pd.Timestamp, apart: KeptApart | None) -> Path:
    """Where a plan's files (plans/, forecasts/, reports/) for `as_of` go: the morning's folder, or the one
    it is kept apart in."""
    day = folder / f"{as_of:%Y-%m-%d}"
    return day if apart is None else day / apart.folder


JUDGE = object()  # write_plan's default: judge whether the plan is kept apart (a caller may have judged it)


def write_plan(
    ws: Workspace,
    as_of: pd.Timestamp,
    forecast_frame: pd.DataFrame,
    result,
    out: Path | None,
    staged_forecast: Path | None = None,
    apart: KeptApart | None | object = JUDGE,
) -> PlanFiles:
    """Write plan, projection, summary and the forecast behind them (`staged_forecast`: written already to a
    temporary file by `io.stage_table`) as one set (`write_tables`: a failure or kill leaves the old set whole).
    The plan also goes to `out` when given: the workspace's copy is where tomorrow's plan finds the visits already
    on order, so it is renamed into place last (a plan that failed to reach `out` or its projection is not taken
    as ordered).

    A plan that was never in force (`kept_apart`: a missed night run late, a look ahead at a morning to come;
    `apart`, unless the caller judged it already) goes to `plans/<morning>/late/` or `.../preview/`, where the
    visits on order are not read from."""
    from replenishment.plan import PlanWarning

    apart = kept_apart(ws, as_of) if apart is JUDGE else apart
    folder = plan_output(ws.plans, as_of, apart)
    if apart is not None:
        warnings.warn(
            PlanWarning(f"{apart.why}, so this plan is kept apart in {folder} and its visits are not taken as ordered"),
            stacklevel=2,
        )
    forecast = plan_output(ws.forecasts, as_of, apart) / "forecast.csv"
    tables = [
        *([(result.plan, out)] if out is not None else []),
        (forecast_frame if staged_forecast is None else staged_forecast, forecast),
        (result.projection, folder / "projection.csv"),
        (result.summary, folder / "summary.csv"),
        (result.plan, folder / "plan.csv"),
    ]
    *_, projection, summary, plan_path = write_tables(tables)  # one set: a kill leaves the old one whole
    return PlanFiles(plan=out or plan_path, projection=projection, summary=summary, forecast=forecast)


def read_balances_file(path: Path, as_of: pd.Timestamp) -> pd.DataFrame:
    """Morning balances given on the command line (device_id, balance, optional as_of).

    Read as `cashcast ingest --kind balances` reads files (semicolon or tab files, BOM, ISO dates only)
    and numbered as its rejects are (header = row 1); but a cash count is not skipped as a reject: a
    bad one stops the plan, since the plan would otherwise assume a balance nobody counted.
    """
    import pyarrow as pa

    from ingest.parse import Source, days_of, device_ids, is_empty, to_float, to_timestamps
    from replenishment.plan import PlanWarning

    source = Source.open(path, batch_rows=1 << 16)
    source.require(["device_id", "balance"])
    batches = [batch for batch in source.batches() if batch.num_rows]
    for number, _ in source.bad_lines()[:1]:
        raise ValueError(f"{path}: row {number}: wrong number of fields (expected {len(source.columns)})")
    if not batches:
        return pd.DataFrame(
            {"device_id": pd.Series(dtype="string"), "as_of": pd.Series(dtype="datetime64[ns]"), "balance": []}
        )
    table = pa.Table.from_batches(batches)
    ids, counted = device_ids(table["device_id"].combine_chunks()), table["balance"].combine_chunks()
    amount = to_float(counted)
    day = np.full(len(table), np.datetime64(as_of.normalize(), "D"))
    if "as_of" in source.columns:
        ns, _ = to_timestamps(table["as_of"].combine_chunks(), as_written=True)
        day = days_of(ns)  # the morning counted: its date as written, whatever the hour or zone (as ingest reads it)
    for column, problem, bad in (
        ("device_id", "empty", is_empty(ids)),
        ("balance", "empty", is_empty(counted)),
        ("balance", "not a number", np.isnan(amount)),
        ("balance", "negative", amount < 0),
        ("as_of", "not a YYYY-MM-DD date", np.isnat(day)),
    ):
        if bad.any():
            record = int(bad.argmax())
            cell = table[column][record].as_py()
            shown = f" ({cell})" if cell not in (None, "") else ""
            row = source.spreadsheet_rows(np.array([record]))[0]
            raise ValueError(f"{path}: row {row}, column {column}: {problem}{shown}")
    balances = pd.DataFrame(
        {
            "device_id": pd.array(ids.to_pylist(), dtype="string"),
            "as_of": day.astype("datetime64[ns]"),
            "balance": amount,
        }
    )
    twice = balances.duplicated(["device_id", "as_of"], keep=False)
    if twice.any():
        first = balances[twice].iloc[0]
        same = source.spreadsheet_rows(
            np.flatnonzero((balances["device_id"] == first["device_id"]) & (balances["as_of"] == first["as_of"]))
        )
        raise ValueError(
            f"{path}: rows {same[0]} and {same[1]} both give {first['device_id']}'s balance on the morning"
            f" of {first['as_of']:%Y-%m-%d}"
        )
    later = balances["as_of"] > as_of
    if later.any():
        first = int(later.to_numpy().argmax())
        warnings.warn(
            PlanWarning(
                f"{path}: {int(later.sum())} balance row(s) dated after the plan's morning {as_of:%Y-%m-%d} were"
                f" ignored (row {source.spreadsheet_rows(np.array([first]))[0]}: {balances['device_id'].iloc[first]} on"
                f" {balances['as_of'].iloc[first]:%Y-%m-%d})"
            ),
            stacklevel=2,
        )
    return balances


def run_plan(
    ws: Workspace,
    config: Config,
    as_of: pd.Timestamp,
    horizon: int | None = None,
    balances_file: Path | None = None,
    out: Path | None = None,
    progress: bool = False,
) -> PlanFiles:
    """Replenishment plan from `as_of` on; balances from a file or the latest ingested ones.

    One helper thread overlaps the stages that leave the GIL free (Arrow reads, numpy, LightGBM):
    the lake is read while the champion is imported and unpickled, the device terms are resolved
    while the forecast runs, and the forecast file is written while the planner works.
    """
    if horizon is not None:
        config = config.updated(plan={"horizon_days": horizon})
    balances = None if balances_file is None else read_balances_file(balances_file, as_of)
    with ThreadPoolExecutor(max_workers=1) as helper:
        reading = helper.submit(load_history, ws, as_of, config=config)
        model = champion_or_train(ws, config, as_of, progress=progress, history=reading.result)
        history = reading.result()
        resolving = helper.submit(device_terms, history, config)
        twins = new_device_twins(history, config, resolving.result)  # waits for the terms only on a new device
        forecast = forecast_devices(model, history, config, config.plan.forecast_days, twins=twins)
        terms = resolving.result()
        apart = kept_apart(ws, as_of)
        target = plan_output(ws.forecasts, as_of, apart) / "forecast.csv"
        staging = helper.submit(stage_table, forecast.frame, target)  # renamed into place with the plan's set
        try:
            if balances is not None:  # the file's counts win; devices it leaves out keep their ingested ones
                frames = [history.balances[["device_id", "as_of", "balance"]], balances]
                balances = pd.concat(frames, ignore_index=True)
            made = visits_made(ws, as_of, history.balances if balances is None else balances)
            result = plan_forecast(forecast, history, config, terms, balances, visits_on_order(ws, as_of), made)
        except BaseException:
            staging.result().unlink(missing_ok=True)  # no set to join: tonight's forecast must not stand alone
            raise
        return write_plan(ws, as_of, forecast.frame, result, out, staged_forecast=staging.result(), apart=apart)


# ---------------------------------------------------------------- nightly helpers


def lake_device_ids(ws: Workspace) -> list[str]:
    """Every device with recorded history, read from the lake's device_id column alone."""
    return sorted(ingest.read_daily_column(ws, "device_id").astype(str).unique())


def last_recorded_day(ws: Workspace) -> pd.Timestamp | None:
    """The lake's last recorded day (None when it holds none)."""
    last = ingest.read_daily_column(ws, "date").max()
    return None if pd.isna(last) else pd.Timestamp(last).normalize()


THIN_DAY_SHARE = 0.5  # a last day with fewer devices than this share of the week before's is said


def thin_last_day(ws: Workspace, last: pd.Timestamp) -> str | None:
    """Why the morning after `last`, the lake's last recorded day, may not be the one meant, or None: that day holds
    fewer than THIN_DAY_SHARE of the devices its week before held on a typical day. One row dated a day later moves
    the whole network's morning (the default as-of), and every device then looks a day behind."""
    week = ingest.read_daily(ws, start=last - pd.Timedelta(days=7))
    per_day = week.groupby("date")["device_id"].nunique()
    before = per_day.drop(last, errors="ignore")
    if before.empty or per_day.get(last, 0) >= THIN_DAY_SHARE * before.median():
        return None
    return (
        f"the last recorded day {last:%Y-%m-%d} holds {per_day.get(last, 0)} device(s) against"
        f" {before.median():.0f} on a day of the week before it: planning the morning of"
        f" {last + pd.Timedelta(days=1):%Y-%m-%d}; if that day's rows are a partial file (an extract cut after"
        f" midnight, a mistyped date), run with --as-of {last:%Y-%m-%d} or send the rest of the day"
    )


def next_as_of(ws: Workspace) -> pd.Timestamp:
    """The morning after the last recorded day: the nightly run's default as-of."""
    last = last_recorded_day(ws)
    if last is None:
        raise NoDataError(f"{ws.home}: the lake has no daily history; run `cashcast ingest`")
    return last + pd.Timedelta(days=1)


def device_chunks(
    recorded: list[str], new: list[str], size: int, twins: dict[str, str] | None = None
) -> list[list[str]]:
    """The lake's device ids (`recorded`) in chunks of `size`: one task per chunk, never one per device.

    A device in the master with no recorded day yet (`new`: installed and counted, no transactions so far) is
    forecast as `cashcast plan` forecasts it, as its twin (`twins`, the network's typical device of its kind): it
    joins its twin's chunk; one without a twin is dealt out over the chunks, so none sits in a chunk without
    history to forecast from."""
    chunks = [recorded[i : i + size] for i in range(0, len(recorded), size)]
    home = {device: k for k, chunk in enumerate(chunks) for device in chunk}
    twins = twins or {}
    for k, device in enumerate(new if chunks else []):
        chunks[home.get(twins.get(device), k % len(chunks))].append(device)
    return chunks


def unrecorded_devices(ws: Workspace, recorded: list[str]) -> list[str]:
    """The devices of the master with no recorded day in the lake (`recorded`: the lake's ids) yet."""
    master = ingest.read_table(ws, "devices")
    return sorted(set(master["device_id"].astype(str)) - set(recorded)) if len(master) else []


@dataclass(frozen=True)
class NetworkTypicals:
    """What a nightly chunk takes from the whole network for its devices with no recorded day yet: the typical
    device's mean daily demand per kind (their cassettes) and each one's twin (their forecasts)."""

    demand: dict[str, float]
    twins: dict[str, str]


def network_typicals(ws: Workspace, config: Config, as_of: pd.Timestamp) -> NetworkTypicals:
    """`replenishment.typical_demand` and `new_device_twins` over the whole lake before `as_of` (read only when a
    device needs them)."""
    import replenishment

    terms = device_terms(load_history(ws, as_of), config)
    return NetworkTypicals(replenishment.typical_demand(terms), replenishment.new_device_twins(terms))


def merge_chunks(parts: list[dict], kept: pd.DataFrame | None = None) -> dict:
    """Join the chunk results into one forecast, one plan result and one failures map. `kept`: the orders this
    morning's earlier plan placed (`own_plan_orders`), listed in the plan file with the new rows."""
    import replenishment

    frames = {
        key: pd.concat([p[key] for p in parts], ignore_index=True) if parts else pd.DataFrame()
        for key in ("forecast", "plan", "projection")
    }
    if kept is not None:
        plan = pd.concat([kept[frames["plan"].columns], frames["plan"]], ignore_index=True)
        frames["plan"] = plan.sort_values(["device_id", "visit_date"], kind="stable", ignore_index=True)
    per_device = pd.concat([replenishment.device_rows(p["summary"]) for p in parts], ignore_index=True)
    result = replenishment.PlanResult(
        plan=frames["plan"],
        projection=frames["projection"],
        summary=replenishment.with_fleet_total(per_device),
        warnings=[],
    )
    failures: dict[str, str] = {}
    for part in parts:
        failures.update(part["failures"])
    return {"forecast": frames["forecast"], "result": result, "failures": failures}


DRIFT_MIN_DAYS = 3  # days forecast since the last training that the drift rule needs before it judges


def recent_forecast_error(
    ws: Workspace,
    as_of: pd.Timestamp,
    days: int = 7,
    since: pd.Timestamp | None = None,
    min_days: int = 1,
    config: Config | None = None,
) -> float | None:
    """sMAPE of the forecasts made in the last `days` nights (those on or after the morning `since`) against
    the actuals now in the lake; None with fewer than `min_days` days to score. With `config`, each device's
    unusual days (`features.calendar.unusual_days`: holidays and the days around their blocks) are left out: a
    retrain cannot make Boxing Day's error smaller, and the next year's Boxing Day is learnt from the history."""
    from forecasting import smape

    mornings = [as_of - pd.Timedelta(days=k) for k in range(1, days + 1)]
    made = [output_path(ws.forecasts, m, "forecast.csv") for m in mornings if since is None or m >= since]
    frames = [read_written(p, columns=["device_id", "date", "yhat"]) for p in made if p.exists()]
    if not frames:
        return None
    predicted = pd.concat(frames).assign(date=lambda f: pd.to_datetime(f["date"]))
    # `made` runs newest first: keep the newest forecast of each day.
    predicted = predicted[predicted["date"] < as_of].drop_duplicates(["device_id", "date"], keep="first")
    actual = ingest.read_daily(ws, start=as_of - pd.Timedelta(days=days), end=as_of - pd.Timedelta(days=1))
    joined = predicted.astype({"device_id": "string"}).merge(
        actual[~actual["censored"]][["device_id", "date", "withdrawals"]], on=["device_id", "date"]
    )
    if config is not None and len(joined):
        joined = joined[~_unusual(ws, config, joined)]
    if joined["date"].nunique() < min_days:
        return None
    return float(smape(joined["withdrawals"].to_numpy(), joined["yhat"].to_numpy()))


def _unusual(ws: Workspace, config: Config, rows: pd.DataFrame) -> np.ndarray:
    """bool per (device_id, date) row: a day the device's calendar marks as unusual (features.calendar)."""
    from features.calendar import CALENDAR_COLUMNS, calendar_features, unusual_days

    ids = pd.DataFrame({"device_id": rows["device_id"].astype(str).unique()})
    master = ingest.read_table(ws, "devices")
    places = ids.merge(master.astype({"device_id": str}), on="device_id", how="left") if len(master) else ids
    calendar = calendar_features(places, rows["date"].min(), rows["date"].max(), config)
    flagged = calendar.assign(unusual=unusual_days(calendar[CALENDAR_COLUMNS].to_numpy()))
    keyed = rows[["device_id", "date"]].astype({"device_id": str})
    merged = keyed.merge(flagged.astype({"device_id": str})[["device_id", "date", "unusual"]], how="left")
    return merged["unusual"].fillna(False).to_numpy(dtype=bool)


def training_record(ws: Workspace, config: Config, why: str, outcome: TrainOutcome | None = None) -> dict:
    """What a night says of its training (the report and the flow's result): the new version's `outcome`, or,
    when training was not due (`why`), the champion that keeps serving."""
    if outcome is None:
        from forecasting import registry

        serving = registry.champion_version(ws, config)
        return {"trained": False, "reason": why, "run_id": serving.run_id, "version": serving.version, "promoted": True}
    return {
        "trained": True,
        "reason": why,
        "run_id": outcome.run_id,
        "version": outcome.version,
        "promoted": outcome.promoted,
        "metrics": outcome.metrics,
    }


def training_due(ws: Workspace, config: Config, as_of: pd.Timestamp | None) -> tuple[bool, str]:
    """Retrain when there is no champion, it is older than the cadence, or its recent error drifted."""
    from forecasting import registry

    as_of = as_of or next_as_of(ws)
    version = registry.champion_version(ws, config)
    if version is None:
        if registry.champion_version(ws, config, any_code=True) is not None:
            return True, "the champion was built by another version of the code"
        return True, "no champion model yet"
    if registry.settings_differ(version, config):
        latest = registry.latest_version(ws, config)
        if latest is None or registry.settings_differ(latest, config):  # none fitted under these settings yet
            return True, f"the champion was {OTHER_SETTINGS}"
    age = (as_of - trained_as_of(version)).days
    cadence = config.forecast.retrain_every_days
    if age >= cadence:
        return True, f"champion trained {age} day{'' if age == 1 else 's'} ago (cadence {cadence})"
    if age < 0:  # a past morning: its own version serves it once one is registered (a re-run needs no other)
        own = registry.version_trained_for(ws, config, as_of)
        if own is not None:
            return False, f"version {own.version} was trained for {as_of:%Y-%m-%d}, before the newer champion's"
        return True, f"champion was trained on data after {as_of:%Y-%m-%d}"
    baseline = float(version.tags.get(registry.SCORE_KEY, "nan"))
    # Only forecasts made since the last training judge drift: the older ones were made by earlier models, and
    # no retraining can lower their error (after a holiday week the run retrained every night until they aged
    # out). A few days of them, not one, so one odd day does not retrain either.
    trained = max(trained_as_of(v) for v in (version, registry.latest_version(ws, config)) if v is not None)
    recent = recent_forecast_error(ws, as_of, since=trained, min_days=DRIFT_MIN_DAYS, config=config)
    if recent is not None and baseline > 0 and recent > baseline * (1 + config.forecast.drift_threshold):
        return True, f"recent sMAPE {recent:.1f} drifted past backtest {baseline:.1f}"
    return False, f"champion is {age} day{'' if age == 1 else 's'} old and within drift bounds"


# ---------------------------------------------------------------- backtest


@dataclass
class ReplayWindow:
    """What a replay over [start, end] starts from: the history, the terms and balances known at start."""

    history: History  # through `end`: the actual demand the plans are executed against
    known: pd.DataFrame  # the daily history before `start`
    terms: pd.DataFrame
    opening: pd.DataFrame | None  # balances on the morning of `start`, None: the replay's default

    def replay(
        self,
        start: pd.Timestamp,
        end: pd.Timestamp,
        forecaster: Callable[[pd.DataFrame, pd.Timestamp, int], DemandForecast],
        config: Config,
        terms: pd.DataFrame | None = None,
    ):
        """Replay every policy over [start, end]; `terms` overrides the window's device terms."""
        import replenishment

        chosen = self.terms if terms is None else terms
        return replenishment.replay(
            self.history.daily, chosen, start, end, forecaster, config, initial_balances=self.opening
        )


def replay_window(
    ws: Workspace, config: Config, start: pd.Timestamp, end: pd.Timestamp, names: tuple[str, str] = ("--start", "--end")
) -> ReplayWindow:
    """Read what a backtest over [start, end] needs; terms and balances as known on the morning of `start`.
    `names`: what errors call start and end (the command line's options, or a function's arguments)."""
    import replenishment

    start_name, end_name = names
    if end < start:
        raise ValueError(f"{end_name} {end:%Y-%m-%d} is before {start_name} {start:%Y-%m-%d}")
    with warnings.catch_warnings(record=True) as said:  # a stale-history warning ahead of the error below is noise
        warnings.simplefilter("always")
        try:
            history = load_history(ws, end + pd.Timedelta(days=1), config=config)
        except HistoryStartsLaterError as exc:  # an empty lake stays the workspace's state (NoDataError)
            raise ValueError(
                f"{ws.home}: {start_name} {start:%Y-%m-%d} is before the lake's history, which starts in"
                f" {exc.first_month}; a replay trains on the days before its window"
            ) from None
    known = history.daily[history.daily["date"] < start]
    if known.empty:
        raise ValueError(
            f"{ws.home}: {start_name} {start:%Y-%m-%d} is not after the first recorded day"
            f" {history.daily['date'].min():%Y-%m-%d}; a replay trains on the days before it"
        )
    last = history.daily["date"].max()
    if last < end:  # the days after it would be replayed on made-up demand
        raise ValueError(
            f"{ws.home}: {end_name} {end:%Y-%m-%d} is after the last recorded day {last:%Y-%m-%d}; a replay needs"
            " actual demand"
        )
    for warning in said:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    terms = replenishment.resolve_terms(history.devices, known, config)
    return ReplayWindow(history, known, terms, replay_opening(history.balances, start, terms["device_id"]))


def replay_opening(balances: pd.DataFrame, start: pd.Timestamp, device_ids) -> pd.DataFrame | None:
    """The counts a replay of `device_ids` starts from: those of the morning of `start`. A device without one
    starts from the replay's default, and a warning says how many: the visits since an older count are not known
    to a replay, so brought forward it would run a refilled device dry, and taken as it stands, a
    three-month-old count of 10 made even perfect foresight run dry."""
    opening = latest_balances(balances, start)
    if len(opening):
        opening = opening[pd.to_datetime(opening["balance_as_of"]).dt.normalize() == start]
    opening = opening[["device_id", "balance"]]
    missing = sorted(set(map(str, device_ids)) - set(opening["device_id"].astype(str)))
    if missing:
        warnings.warn(
            ReplayWarning(
                f"{len(missing)} device(s) have no cash count on the morning of {start:%Y-%m-%d} (e.g. {missing[0]}):"
                " they start from the replay's default, min_balance + 7 days of trailing demand"
            ),
            stacklevel=3,
        )
    return opening.reset_index(drop=True) if len(opening) else None


def retraining_forecaster(
    config: Config,
    devices: pd.DataFrame | None = None,
    events: pd.DataFrame | None = None,
    progress: bool = False,
) -> Callable[[pd.DataFrame, pd.Timestamp, int], DemandForecast]:
    """The nightly cycle's forecaster for a replay: trained on the history before a plan day, again
    once the model is `[forecast] retrain_every_days` old, and predicting from each plan day."""
    import forecasting

    fitted: dict[str, object] = {}

    def forecaster(past: pd.DataFrame, as_of: pd.Timestamp, horizon: int) -> DemandForecast:
        trained_at = fitted.get("as_of")
        if trained_at is None or (as_of - trained_at).days >= config.forecast.retrain_every_days:
            fitted["model"] = forecasting.train(past, devices, as_of, config, progress=progress, events=events).model
            fitted["as_of"] = as_of
        return fitted["model"].predict(past, devices, as_of, horizon)

    return forecaster


BACKTEST_FILES = ("daily.parquet", "per_device.csv", "kpis.csv")  # in the order written


def run_backtest(
    ws: Workspace,
    config: Config,
    start: pd.Timestamp,
    end: pd.Timestamp,
    out: Path | None = None,
    progress: bool = False,
) -> Path:
    """Replay the nightly cycle over [start, end] against actual demand; KPIs per policy, logged to MLflow."""
    import mlflow

    from forecasting import registry

    folder = out or ws.backtests / f"{start:%Y-%m-%d}_{end:%Y-%m-%d}"
    files = [folder / name for name in BACKTEST_FILES]
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder}: --out names a file; the backtest writes a folder ({', '.join(BACKTEST_FILES)})")
    in_the_way = [path for path in files if path.is_dir()]
    if in_the_way:
        raise ValueError(f"cannot write {in_the_way[0]}: a folder of that name is in the way")
    window = replay_window(ws, config, start, end)
    registry.use_store(ws, config)  # a server that does not answer stops the command now, not after the replay
    history = window.history
    forecaster = retraining_forecaster(config, history.devices, history.events, progress)
    result = window.replay(start, end, forecaster, config)
    for note in result.notes:
        warnings.warn(ReplayWarning(note), stacklevel=2)
    # One set, renamed into place once all are written, kpis.csv last.
    write_tables(list(zip((result.daily, result.per_device, result.kpis), files, strict=True)))
    with mlflow.start_run(run_name=f"backtest-{start:%Y-%m-%d}-{end:%Y-%m-%d}"):
        mlflow.set_tag("cashcast.kind", "backtest")
        mlflow.log_params(
            {
                **registry.config_params(config),
                "start": f"{start:%Y-%m-%d}",
                "end": f"{end:%Y-%m-%d}",
                "output": str(folder),
                "data_fingerprint": data_fingerprint(history.daily),
            }
        )
        for row in result.kpis.to_dict(orient="records"):
            mlflow.log_metrics(
                {
                    f"{row['policy']}.{key}": float(value)
                    for key, value in row.items()
                    if key != "policy" and isinstance(value, int | float) and pd.notna(value)
                }
            )
        mlflow.log_artifact(str(folder / "kpis.csv"), artifact_path="backtest")
        mlflow.log_artifact(str(folder / "per_device.csv"), artifact_path="backtest")
    return folder
