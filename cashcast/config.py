"""Configuration: `configs/default.toml` with a user TOML merged over it, validated on load.

Validation happens once, at the boundary, so stages can trust every value they read.
Errors name the file and the dotted key at fault.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[1] / "configs" / "default.toml"
MAX_PLAN_DAYS = 90  # longest plan horizon: visits are planned day by day, and forecasts grow vague
MAX_FORECAST_DAYS = 366  # longest forecast: past a year the calendar is all a model has left


class ConfigError(ValueError):
    """A configuration file is unreadable or holds an invalid value."""


class _Section(BaseModel):
    # strict: `horizon_days = true` or `service_level = "0.9"` is a mistake to name, not a value to guess (true was
    # read as 1); no inf: an infinite visit cost planned a visit every day.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def _time_zone(value: str) -> str:
    """An IANA zone name ('Asia/Shanghai'), refused as its key when the system's tz database lacks it."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (expected an IANA name such as Asia/Shanghai or UTC)") from None
    return value


class WorkspaceSettings(_Section):
    landing_dir: str = "landing"
    timezone: str = "Asia/Shanghai"

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return _time_zone(value)


class DeviceDefaults(_Section):
    kind: Literal["atm", "branch", "recycler"] = "atm"
    capacity: float = Field(0.0, ge=0)
    capacity_days: float = Field(14.0, gt=0)
    min_balance: float = Field(0.0, ge=0)
    max_balance: float = Field(0.0, ge=0)
    visit_cost: float = Field(1500.0, gt=0)  # stockouts are priced in visits: a free visit prices them at 0
    emergency_visit_cost: float = Field(4500.0, ge=0)  # at least visit_cost (checked below)
    holding_rate: float = Field(0.05, ge=0, le=1)
    visit_weekdays: str = "Mon,Tue,Wed,Thu,Fri"
    lead_time_days: int = Field(1, ge=0, le=MAX_PLAN_DAYS)  # as ingest allows in the device master
    load_multiple: float = Field(1.0, gt=0)
    service_level: float = Field(0.995, gt=0, lt=1)
    country: str = "CN"
    subdivision: str = ""
    region: str = ""
    timezone: str = ""

    @field_validator("visit_weekdays")
    @classmethod
    def _weekdays(cls, value: str) -> str:
        parse_weekdays(value)
        return value

    @field_validator("emergency_visit_cost")
    @classmethod
    def _emergency_costs_more(cls, value: float, info: ValidationInfo) -> float:
        visit_cost = info.data.get("visit_cost")
        if visit_cost is not None and value < visit_cost:
            raise ValueError(
                f"emergency_visit_cost {value:g} is below visit_cost {visit_cost:g}: an unplanned visit costs at least"
                " a planned one (set both)"
            )
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return _time_zone(value) if value else value  # empty: the workspace's zone

    @field_validator("min_balance")
    @classmethod
    def _floor_below_capacity(cls, value: float, info: ValidationInfo) -> float:
        """As ingest refuses a master row: a floor at or above the cassette leaves no cash to serve."""
        capacity = info.data.get("capacity") or 0.0
        if capacity > 0 and value >= capacity:
            raise ValueError(f"min_balance {value:g} is at or above capacity {capacity:g}: no cash left to serve")
        return value

    @field_validator("max_balance")
    @classmethod
    def _ceiling_above_floor(cls, value: float, info: ValidationInfo) -> float:
        floor = info.data.get("min_balance")
        if value > 0 and floor is not None and value <= floor:
            raise ValueError(f"max_balance {value:g} is at or below min_balance {floor:g}: no cash left to serve")
        return value

    @field_validator("load_multiple")
    @classmethod
    def _bundle_fits(cls, value: float, info: ValidationInfo) -> float:
        capacity = info.data.get("capacity") or 0.0
        if capacity > 0 and value > capacity:
            raise ValueError(f"load_multiple {value:g} is above capacity {capacity:g}: no whole bundle fits")
        return value

    @field_validator("country")
    @classmethod
    def _country(cls, value: str) -> str:
        """The country as the holidays package spells it ('in' -> 'IN'), or refused as `devices.country`."""
        return canonical_region(value)[0]

    @field_validator("subdivision")
    @classmethod
    def _subdivision(cls, value: str, info: ValidationInfo) -> str:
        """The subdivision of the (valid) country, as the package spells it; refused as `devices.subdivision`."""
        country = info.data.get("country")
        return value if country is None else canonical_region(country, value)[1]


class IngestSettings(_Section):
    max_amount: float = Field(1.0e13, gt=0)
    batch_rows: int = Field(1_000_000, ge=1000)
    future_tolerance_days: int = Field(0, ge=0)
    currency: str = Field("", pattern=r"^([A-Za-z]{3})?$")

    @field_validator("currency")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()


class CalendarSettings(_Section):
    paydays: list[int] = [10, 15]
    payday_last_working_day: bool = True
    pension_days: list[int] = [5]
    events_file: str = ""
    holiday_distance_cap: int = Field(30, ge=1, le=366)

    @field_validator("paydays", "pension_days")
    @classmethod
    def _days_of_month(cls, value: list[int]) -> list[int]:
        bad = [d for d in value if not 1 <= d <= 31]
        if bad:
            raise ValueError(f"days of month must be 1..31, got {bad}")
        return value


class ForecastSettings(_Section):
    quantiles: list[float] = [0.5, 0.9, 0.95, 0.99]
    models: list[Literal["seasonal_naive", "ets", "lightgbm"]] = ["seasonal_naive", "ets", "lightgbm"]
    backtest_folds: int = Field(3, ge=1, le=20)
    backtest_horizon_days: int = Field(28, ge=1, le=90)
    min_history_days: int = Field(120, ge=7)
    max_history_days: int = Field(1095, ge=28)
    seed: int = Field(42, ge=0)
    n_jobs: int = Field(0, ge=0)
    n_paths: int = Field(200, ge=10, le=5000)
    registered_model: str = Field("cashcast-forecaster", min_length=1)
    tracking_uri: str = ""
    experiment: str = Field("cashcast", min_length=1)
    retrain_every_days: int = Field(7, ge=1)
    drift_threshold: float = Field(0.25, gt=0)
    gbm_max_rows: int = Field(150_000, ge=1000)
    gbm_rounds: int = Field(150, ge=10)
    backtest_refit: bool = False
    outage_share: float = Field(0.4, ge=0, lt=1)
    device_gbm_max_devices: int = Field(300, ge=0)
    train_devices_per_task: int = Field(2000, ge=1)

    @field_validator("quantiles")
    @classmethod
    def _levels(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("at least one quantile level is needed (e.g. [0.5, 0.9])")
        if any(not 0 < q < 1 for q in value):
            raise ValueError("quantile levels must lie strictly between 0 and 1")
        return sorted(set(value))

    @field_validator("tracking_uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        """A URI MLflow can reach ('http://host:5000', 'sqlite:///path/mlflow.db'). A bare path or 'host:5000' is
        MLflow's file store, which MLflow 3 refuses unless MLFLOW_ALLOW_FILE_STORE is set ('file:' opts in)."""
        if value and "://" not in value and not value.startswith(("file:", "databricks")):
            raise ValueError(
                f"{value!r} is not a tracking URI (expected e.g. http://mlflow.example.com:5000 or"
                " sqlite:///path/mlflow.db; a folder is MLflow's retired file store: file:///path with"
                " MLFLOW_ALLOW_FILE_STORE=true; empty: the workspace's own store)"
            )
        return value


class PlanSettings(_Section):
    horizon_days: int = Field(14, ge=1, le=MAX_PLAN_DAYS)
    lookahead_days: int = Field(7, ge=0, le=90)
    cassette_swap: bool = True
    allow_holiday_visits: bool = False
    order_weekdays: str = ""  # days the carrier takes orders ("Mon-Fri"); empty: every day
    stockout_penalty_visits: float = Field(3.0, ge=0)
    max_cover_days: int = Field(14, ge=1, le=90)

    @field_validator("order_weekdays")
    @classmethod
    def _order_weekdays(cls, value: str) -> str:
        if value.strip():
            parse_weekdays(value)
        return value

    @property
    def forecast_days(self) -> int:
        """Days a plan needs forecast: its horizon and the optimiser's lookahead past it."""
        return self.horizon_days + self.lookahead_days


class BacktestSettings(_Section):
    replan_every_days: int = Field(7, ge=1)
    baselines: list[Literal["fixed_weekly", "cover_rule"]] = ["fixed_weekly", "cover_rule"]
    cover_rule_days: int = Field(7, ge=1)
    cover_rule_buffer: float = Field(0.25, ge=0)


class FlowSettings(_Section):
    task_runner: Literal["local", "dask"] = "local"
    dask_address: str = ""
    dask_workers: int = Field(2, ge=1)
    devices_per_task: int = Field(500, ge=1)
    cron: str = "0 2 * * *"
    timezone: str = ""  # empty: the workspace's zone (`Config.schedule_zone`)
    deployment_name: str = "cashcast-nightly"
    retries: int = Field(2, ge=0)
    retry_delay_seconds: float = Field(5, ge=0)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return _time_zone(value) if value else value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        try:
            check_cron(value)
        except ValueError as plain:
            # Prefect's own parser knows more ('L', '1#2', six fields) but costs a second to import: asked only
            # about a line the plain check refuses, and the line is refused only if it refuses it too.
            from prefect.client.schemas.schedules import CronSchedule

            try:
                CronSchedule(cron=value)
            except ValueError:
                raise plain from None
        return value


class Config(_Section):
    """The whole validated configuration; sections mirror the TOML tables."""

    workspace: WorkspaceSettings = WorkspaceSettings()
    devices: DeviceDefaults = DeviceDefaults()
    ingest: IngestSettings = IngestSettings()
    calendar: CalendarSettings = CalendarSettings()
    forecast: ForecastSettings = ForecastSettings()
    plan: PlanSettings = PlanSettings()
    backtest: BacktestSettings = BacktestSettings()
    flows: FlowSettings = FlowSettings()

    def updated(self, **sections: dict[str, Any]) -> Config:
        """A copy with some keys changed, validated like a file (for tests and notebooks)."""
        return config_from_dict(deep_merge(self.model_dump(), sections), source="<override>")

    @property
    def schedule_zone(self) -> str:
        """The zone of the nightly schedule: `[flows] timezone`, else the bank's own (`[workspace] timezone`), so a
        London bank's 02:00 is London's, not Shanghai's 18:00 the day before its data arrives."""
        return self.flows.timezone or self.workspace.timezone


_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _weekday(token: str) -> int | None:
    """'Mon', 'tues', 'Thursday' -> 0, 1, 3; None when the token names no day (three letters at least)."""
    word = token.strip().lower()
    matches = [i for i, name in enumerate(_DAY_NAMES) if len(word) >= 3 and name.startswith(word)]
    return matches[0] if len(matches) == 1 else None


def parse_weekdays(text: str) -> tuple[int, ...]:
    """'Mon,Wed,Fri' -> (0, 2, 4), 'Mon-Fri' -> (0, 1, 2, 3, 4); Monday is 0 as in pandas.

    Days are names or their abbreviations (three letters at least), separated by commas or
    semicolons; 'Fri-Mon' wraps over the weekend. Anything else is refused, never half-read.
    """
    days: set[int] = set()
    parts = [part for part in str(text).replace(";", ",").split(",") if part.strip()]
    for part in parts:
        ends = [_weekday(end) for end in part.replace("\u2013", "-").split("-")]
        if len(ends) > 2 or None in ends:
            raise ValueError(f"weekdays must be listed like 'Mon,Tue' or 'Mon-Fri', got {text!r}")
        first, last = ends[0], ends[-1]
        days.update((first + step) % 7 for step in range((last - first) % 7 + 1))
    if not days:
        raise ValueError(f"weekdays must be listed like 'Mon,Tue' or 'Mon-Fri', got {text!r}")
    return tuple(sorted(days))


CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))
CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
CRON_NAMES = {
    "month": ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
    "day of week": ("sun", "mon", "tue", "wed", "thu", "fri", "sat"),
}


def check_cron(text: str) -> None:
    """A five-field cron line ('0 2 * * *': 02:00 daily) or a macro ('@daily'), each field's numbers in range;
    refused at load, so `serve` does not fail on it later without naming the key."""
    if text.strip().lower() in CRON_MACROS:
        return
    fields = text.split()
    if len(fields) != len(CRON_FIELDS):
        raise ValueError(f"{text!r} is not a cron line of 5 fields (minute hour day-of-month month day-of-week)")
    for field, (name, low, high) in zip(fields, CRON_FIELDS, strict=True):
        for part in field.split(","):
            span, slash, step = part.partition("/")
            ends = [] if span == "*" else span.split("-")
            if (slash and not (step.isdigit() and int(step) > 0)) or len(ends) > 2 or not span:
                raise ValueError(f"{text!r}: {name} field {field!r} is not cron syntax")
            for end in ends:
                if end.lower() in CRON_NAMES.get(name, ()):
                    continue
                if not end.isdigit():
                    raise ValueError(f"{text!r}: {name} field {field!r} is not cron syntax")
                if not low <= int(end) <= high:
                    raise ValueError(f"{text!r}: {name} {end} is outside {low}-{high}")


class UnknownRegionError(ValueError):
    """A country or subdivision the holidays package does not know; `column` names which of the two."""

    def __init__(self, column: str, message: str):
        super().__init__(message)
        self.column = column


def canonical_region(country: str, subdivision: str = "") -> tuple[str, str]:
    """('in', 'tn') -> ('IN', 'TN'): the codes the `holidays` package knows, whatever their case.

    An UnknownRegionError names the country or subdivision it does not know, so a device master
    with a typo is refused at ingest instead of failing every forecast later.
    """
    import holidays

    supported = holidays.list_supported_countries()
    code = str(country).strip().upper()
    if code not in supported:
        raise UnknownRegionError("country", f"unknown country {country!r} (expected an ISO code such as CN, GB or IN)")
    sub = str(subdivision or "").strip()
    if not sub:
        return code, ""
    known = {name.upper(): name for name in supported[code]}
    if sub.upper() in known:
        return code, known[sub.upper()]
    try:
        holidays.country_holidays(code, subdiv=sub)  # also takes the package's aliases
    except (NotImplementedError, KeyError, ValueError):
        known_list = f"known: {', '.join(supported[code])}" if supported[code] else f"{code} has none"
        raise UnknownRegionError(
            "subdivision", f"unknown subdivision {subdivision!r} of {code} ({known_list})"
        ) from None
    return code, sub


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge override into base recursively; override wins on leaves."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        # utf-8-sig: a byte-order mark (Windows Notepad writes one) is not a TOML error, as it is no CSV one
        return tomllib.loads(path.read_bytes().decode("utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a folder, not a config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#x} at {exc.start}): save it as UTF-8"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> Config:
    """Validate a nested dict; the error names the first bad key as section.key."""
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        kind = first["type"]
        message = "unknown key" if kind == "extra_forbidden" else first["msg"]
        raise ConfigError(f"{source}: invalid config key '{key}': {message}") from None
    for key, message in _contradictions(config):
        raise ConfigError(f"{source}: invalid config key '{key}': {message}")
    return config


def _contradictions(config: Config) -> list[tuple[str, str]]:
    """Keys valid alone that contradict another section's: (key, why)."""
    found = []
    if config.forecast.min_history_days >= config.forecast.max_history_days:
        found.append(
            (
                "forecast.min_history_days",
                f"{config.forecast.min_history_days} is not below forecast.max_history_days"
                f" {config.forecast.max_history_days}: no device could ever have its own models",
            )
        )
    return found


def load_config(path: str | Path | None = None) -> Config:
    """Defaults merged with `path` (if given), validated."""
    data = _read_toml(DEFAULT_CONFIG_PATH)
    source = str(DEFAULT_CONFIG_PATH)
    if path is not None:
        data = deep_merge(data, _read_toml(Path(path)))
        source = str(path)
    return config_from_dict(data, source=source)
