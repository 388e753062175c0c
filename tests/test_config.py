"""Configuration: defaults, merging over the defaults, errors that name the key, workspace resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from cashcast.config import ConfigError, canonical_region, load_config, parse_weekdays
from cashcast.workspace import CHECKOUT_DATA_DIR, Workspace


def test_defaults_cover_every_device_master_field():
    config = load_config()
    from cashcast.schema import DEVICE_COLUMNS

    defaults = config.devices.model_dump()
    assert set(DEVICE_COLUMNS) - {"device_id", "name"} <= set(defaults)
    assert config.forecast.quantiles == [0.5, 0.9, 0.95, 0.99]
    assert config.plan.horizon_days == 14 and config.flows.task_runner == "local"


def test_user_file_is_merged_over_defaults(tmp_path: Path):
    path = tmp_path / "mine.toml"
    path.write_text('[plan]\nhorizon_days = 7\n[flows]\ntask_runner = "dask"\ndask_address = "tcp://x:8786"\n')
    config = load_config(path)
    assert config.plan.horizon_days == 7
    assert config.plan.cassette_swap is True  # kept from the defaults
    assert config.flows.dask_address == "tcp://x:8786"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[plan]\nhorizon_days = 0\n", "plan.horizon_days"),
        ("[plan]\nhorizon_dayz = 3\n", "plan.horizon_dayz"),
        ('[flows]\ntask_runner = "spark"\n', "flows.task_runner"),
        ("[forecast]\nquantiles = [0.5, 1.5]\n", "forecast.quantiles"),
        ("[forecast]\nquantiles = []\n", "forecast.quantiles"),
        ('[devices]\nvisit_weekdays = "Mon,Funday"\n', "devices.visit_weekdays"),
        ("[devices]\nvisit_cost = 0\n", "devices.visit_cost"),
        ('[ingest]\ncurrency = "yuan"\n', "ingest.currency"),
        ("[nonsense]\nx = 1\n", "nonsense"),
        # Values of another type are named, not converted (config audit: true was read as a 1-day horizon).
        ("[plan]\nhorizon_days = true\n", "plan.horizon_days"),
        ('[plan]\ncassette_swap = "off"\n', "plan.cassette_swap"),
        ('[devices]\nservice_level = "0.9"\n', "devices.service_level"),
        ('[calendar]\npaydays = ["10", 15]\n', "calendar.paydays.0"),
        ("[devices]\nvisit_cost = inf\nemergency_visit_cost = inf\n", "devices.visit_cost"),
        ("[ingest]\nmax_amount = inf\n", "ingest.max_amount"),
        ('[workspace]\ntimezone = "Asia/Shangai"\n', "workspace.timezone"),
        ('[devices]\ntimezone = "UTC+8"\n', "devices.timezone"),
        ('[flows]\ntimezone = "Nowhere"\n', "flows.timezone"),
        ('[flows]\ncron = "every night"\n', "flows.cron"),
        ('[flows]\ncron = "75 2 * * *"\n', "flows.cron"),
        ('[forecast]\nregistered_model = ""\n', "forecast.registered_model"),
        ('[forecast]\nexperiment = ""\n', "forecast.experiment"),
        ('[forecast]\ntracking_uri = "mlfow.example.com:5000"\n', "forecast.tracking_uri"),
        ("[forecast]\nseed = -1\n", "forecast.seed"),
        ("[forecast]\nmin_history_days = 400\nmax_history_days = 365\n", "forecast.min_history_days"),
        ("[devices]\nvisit_cost = 5000.0\n", "devices.emergency_visit_cost"),
    ],
)
def test_invalid_values_name_the_file_and_key(tmp_path: Path, text: str, key: str):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(path) in str(error.value) and f"'{key}'" in str(error.value)


def test_broken_toml_and_missing_file_are_clear(tmp_path: Path):
    broken = tmp_path / "broken.toml"
    broken.write_text("[plan\nhorizon_days = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="a folder, not a config file"):
        load_config(tmp_path)
    latin = tmp_path / "latin.toml"
    latin.write_bytes("# caf\xe9\n[plan]\nhorizon_days = 7\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin.toml: not UTF-8 text \(byte 0xe9 at 5\): save it as UTF-8"):
        load_config(latin)


def test_a_config_saved_with_a_byte_order_mark_loads(tmp_path: Path):
    path = tmp_path / "notepad.toml"
    path.write_bytes(b"\xef\xbb\xbf[plan]\nhorizon_days = 7\n")
    assert load_config(path).plan.horizon_days == 7


def test_good_time_zones_and_cron_lines_load(tmp_path: Path):
    path = tmp_path / "ok.toml"
    path.write_text(
        '[workspace]\ntimezone = "UTC"\n[devices]\ntimezone = "Europe/London"\n'
        '[flows]\ncron = "*/30 1-5 * jan-dec mon-fri"\ntimezone = "America/New_York"\n'
        '[forecast]\ntracking_uri = "http://mlflow.internal:5000"\n'
    )
    config = load_config(path)
    assert config.flows.cron.startswith("*/30") and config.devices.timezone == "Europe/London"
    path.write_text('[forecast]\ntracking_uri = "/srv/mlruns"\n')  # MLflow 3's file store: refused by MLflow too
    with pytest.raises(ConfigError, match="retired file store"):
        load_config(path)
    # Lines only Prefect's parser knows (the month's last day, the second Monday) load too.
    for cron in ("0 2 L * *", "0 2 * * 1#2"):
        path.write_text(f'[flows]\ncron = "{cron}"\n')
        assert load_config(path).flows.cron == cron


def test_updated_copy_is_validated():
    config = load_config()
    assert config.updated(plan={"horizon_days": 5}).plan.horizon_days == 5
    with pytest.raises(ConfigError, match="plan.horizon_days"):
        config.updated(plan={"horizon_days": -1})
    with pytest.raises(ConfigError, match="emergency_visit_cost 1000 is below visit_cost 1500"):
        config.updated(devices={"emergency_visit_cost": 1000.0})


def test_parse_weekdays():
    assert parse_weekdays("Mon,Wed,Fri") == (0, 2, 4)
    assert parse_weekdays("monday; sunday") == (0, 6)
    assert parse_weekdays("Mon-Fri") == parse_weekdays("mon–fri") == (0, 1, 2, 3, 4)
    assert parse_weekdays("Fri-Mon") == (0, 4, 5, 6)  # a range wraps over the weekend
    assert parse_weekdays("Tues, Thurs, Sat-Sun") == (1, 3, 5, 6)
    # Anything else is refused, never half-read ("Mon-Fri" once became Monday only).
    for text in ("", "Mo", "M,T", "Mon/Thu", "Mon-Fri-Sun", "Someday"):
        with pytest.raises(ValueError, match="weekdays must be listed like"):
            parse_weekdays(text)


def test_carrier_order_days_are_checked_like_visit_days():
    assert load_config().updated(plan={"order_weekdays": "Mon-Fri"}).plan.order_weekdays == "Mon-Fri"
    with pytest.raises(ConfigError, match="plan.order_weekdays"):
        load_config().updated(plan={"order_weekdays": "Mon/Fri"})


def test_country_codes_are_the_holidays_packages_whatever_their_case():
    config = load_config().updated(devices={"country": "gb", "subdivision": "eng"})
    assert (config.devices.country, config.devices.subdivision) == ("GB", "ENG")
    assert canonical_region("in", "tn") == ("IN", "TN")
    with pytest.raises(ConfigError, match="invalid config key 'devices.country': .*unknown country 'XX'"):
        load_config().updated(devices={"country": "XX"})
    with pytest.raises(ConfigError, match="'devices.subdivision': .*unknown subdivision 'ZZ' of IN"):
        load_config().updated(devices={"country": "in", "subdivision": "ZZ"})
    with pytest.raises(ValueError, match="unknown subdivision 'ZZ' of IN"):
        canonical_region("IN", "ZZ")
    with pytest.raises(ValueError, match="CN has none"):
        canonical_region("CN", "ENG")


def test_workspace_resolution_order(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("CASHCAST_HOME", raising=False)
    assert Workspace.resolve().home == CHECKOUT_DATA_DIR.resolve()
    monkeypatch.setenv("CASHCAST_HOME", str(tmp_path / "env"))
    assert Workspace.resolve().home == (tmp_path / "env").resolve()
    assert Workspace.resolve(tmp_path / "flag").home == (tmp_path / "flag").resolve()
    ws = Workspace.resolve(tmp_path / "flag")
    assert ws.tracking_uri() == f"sqlite:///{ws.home / 'mlflow.db'}"
    assert ws.tracking_uri("http://mlflow:5000") == "http://mlflow:5000"


def test_device_defaults_no_plan_can_keep_are_refused_as_a_master_row_is():
    """capacity 50,000 with min_balance 60,000 loaded 50,000 a day at stockout risk 1 everywhere (README audit)."""
    for devices, key in (
        ({"capacity": 50_000.0, "min_balance": 60_000.0}, "devices.min_balance"),
        ({"min_balance": 500.0, "max_balance": 400.0}, "devices.max_balance"),
        ({"capacity": 50_000.0, "load_multiple": 60_000.0}, "devices.load_multiple"),
    ):
        with pytest.raises(ConfigError, match=f"invalid config key '{key}'"):
            load_config().updated(devices=devices)
    assert load_config().updated(devices={"min_balance": 60_000.0}).devices.capacity == 0  # capacity derived: fine
