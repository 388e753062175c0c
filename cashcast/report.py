"""The nightly report: a Prefect markdown summary and a self-contained HTML page for cash-ops managers.

The HTML embeds its images (base64 PNG) so it can be mailed or opened from any folder.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from cashcast.config import Config  # noqa: E402
from cashcast.io import atomic_path  # noqa: E402
from cashcast.workspace import Workspace  # noqa: E402

RISK_COLUMNS = ["device_id", "visit_date", "action", "amount", "stockout_risk", "reason"]


def devices_at_risk(plan: pd.DataFrame, top: int = 10) -> pd.DataFrame:
    """The planned visits with the highest chance of running out before the next one."""
    if plan.empty:
        return pd.DataFrame(columns=RISK_COLUMNS)
    columns = [c for c in RISK_COLUMNS if c in plan.columns]
    ranked = plan.sort_values("stockout_risk", ascending=False).drop_duplicates("device_id")
    return ranked[columns].head(top).reset_index(drop=True)


def fleet_row(summary: pd.DataFrame) -> pd.Series:
    """The fleet total row of a plan summary."""
    total = summary[summary["device_id"].astype(str) == "TOTAL"]
    return total.iloc[0] if len(total) else summary.select_dtypes("number").sum()


def summary_markdown(
    as_of: pd.Timestamp,
    ingested: list[dict],
    trained: dict,
    planned: dict,
    summary: pd.DataFrame,
    report_path: Path | None,
) -> str:
    """The run summary shown as a Prefect artifact: what came in, what was trained, what it costs."""
    fleet = fleet_row(summary)
    failed = [i for i in ingested if i.get("outcome") == "failed"]
    lines = [
        f"# Cashcast nightly run, as of {as_of:%Y-%m-%d}",
        "",
        f"- Files ingested: {len(ingested) - len(failed)} processed, {len(failed)} failed",
        *[f"  - failed: `{i['file']}`: {i['reason']}" for i in failed],
        f"- Training: {'retrained' if trained.get('trained') else 'not due'} ({trained.get('reason', '')})",
    ]
    if trained.get("trained"):
        lines.append(
            f"- MLflow run id: `{trained['run_id']}`, model version {trained['version']}"
            f" ({'promoted to champion' if trained['promoted'] else 'kept out: worse than champion'})"
        )
    number = {k: fleet.get(k) for k in fleet.index}
    lines += ["", "| figure | Cashcast plan | fixed-schedule baseline |", "|---|---|---|"]
    for label, ours, base in (
        ("cash deployed", "cash_deployed", "baseline_cash_deployed"),
        ("expected idle cash (avg/day)", "expected_idle_cash", "baseline_expected_idle_cash"),
        ("visits", "visits", "baseline_visits"),
        ("expected cost", "expected_cost", "baseline_expected_cost"),
    ):
        lines.append(f"| {label} | {_fmt(number.get(ours))} | {_fmt(number.get(base))} |")
    failures = planned.get("failures") or {}
    lines += ["", f"- Devices on the fallback forecast: {len(failures)}"]
    lines += [f"  - `{d}`: {e}" for d, e in sorted(failures.items())]
    lines += ["", f"- Plan CSV: `{planned['plan']}`"]
    if report_path:
        lines.append(f"- Report: [{report_path}]({Path(report_path).as_uri()})")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    try:
        return f"{float(value):,.0f}"
    except (TypeError, ValueError):
        return "n/a"


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _img(fig, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{_png(fig)}">'


def cash_chart(summary: pd.DataFrame) -> str:
    fleet = fleet_row(summary)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    labels = ["Cashcast plan", "fixed-schedule baseline"]
    values = [float(fleet.get("cash_deployed", 0) or 0), float(fleet.get("baseline_cash_deployed", 0) or 0)]
    ax.bar(labels, values, color=["#2a7ab0", "#b0b0b0"])
    ax.set_title("Fleet cash deployed over the plan horizon")
    ax.set_ylabel("cash deployed (currency units)")
    return _img(fig, "cash deployed against baseline")


def visits_chart(plan: pd.DataFrame) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    if len(plan):
        per_day = pd.to_datetime(plan["visit_date"]).dt.strftime("%a %d %b").value_counts(sort=False)
        order = sorted(per_day.index, key=lambda s: pd.to_datetime(s, format="%a %d %b"))
        ax.bar(order, per_day[order].to_numpy(), color="#2a7ab0")
        ax.tick_params(axis="x", rotation=45)
    ax.set_title("Planned carrier visits per day")
    ax.set_xlabel("visit date")
    ax.set_ylabel("visits (count)")
    return _img(fig, "visits per day")


def accuracy_chart(actual_vs_forecast: pd.DataFrame) -> str:
    fig, ax = plt.subplots(figsize=(5, 4))
    if len(actual_vs_forecast):
        ax.scatter(actual_vs_forecast["withdrawals"], actual_vs_forecast["yhat"], s=12, alpha=0.7)
        top = float(max(actual_vs_forecast["withdrawals"].max(), actual_vs_forecast["yhat"].max()))
        ax.plot([0, top], [0, top], color="grey", linewidth=1)
    ax.set_title("Yesterday: forecast against actual withdrawals")
    ax.set_xlabel("actual withdrawals (currency units)")
    ax.set_ylabel("forecast (currency units)")
    return _img(fig, "forecast against actual yesterday")


def yesterday_accuracy(ws: Workspace, as_of: pd.Timestamp) -> pd.DataFrame:
    """Yesterday's actuals against the forecast made for yesterday, where both exist."""
    import ingest

    yesterday = as_of - pd.Timedelta(days=1)
    for made in range(1, 8):
        path = ws.forecasts / f"{as_of - pd.Timedelta(days=made):%Y-%m-%d}" / "forecast.csv"
        if path.exists():
            forecast = pd.read_csv(path, usecols=["device_id", "date", "yhat"], parse_dates=["date"])
            forecast = forecast[forecast["date"] == yesterday].astype({"device_id": "string"})
            actual = ingest.read_daily(ws, start=yesterday, end=yesterday)
            return forecast.merge(actual[["device_id", "date", "withdrawals"]], on=["device_id", "date"])
    return pd.DataFrame(columns=["device_id", "date", "yhat", "withdrawals"])


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, classes="table", border=0, float_format=lambda v: f"{v:,.2f}", escape=True)


def write_report(ws: Workspace, config: Config, as_of: pd.Timestamp, planned: dict, trained: dict) -> Path:
    """Write reports/<as_of>/index.html: cash deployed, visits per day, devices at risk, yesterday's accuracy."""
    plan = pd.read_csv(planned["plan"])
    summary = pd.read_csv(planned["summary"])
    accuracy = yesterday_accuracy(ws, as_of)
    at_risk = devices_at_risk(plan)
    body = f"""<!doctype html><html><head><meta charset="utf-8">
<title>Cashcast nightly report {as_of:%Y-%m-%d}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} .table{{border-collapse:collapse}}
.table td,.table th{{padding:4px 8px;border-bottom:1px solid #ddd;text-align:right}}</style></head><body>
<h1>Cashcast nightly report, as of {as_of:%Y-%m-%d}</h1>
<p>Plan horizon {planned.get("horizon", config.plan.horizon_days)} days; plan file
<code>{html.escape(str(planned["plan"]))}</code>. Training: {html.escape(str(trained.get("reason", "")))}.</p>
<h2>Cash deployed against the fixed-schedule baseline</h2>{cash_chart(summary)}
{_table(summary[summary["device_id"].astype(str) == "TOTAL"])}
<h2>Visits per day</h2>{visits_chart(plan)}
<h2>Devices most at risk</h2>{_table(at_risk)}
<h2>Forecast against actual, yesterday</h2>{accuracy_chart(accuracy)}
<p>{len(accuracy)} device(s) with both a forecast and an actual for yesterday.</p>
</body></html>"""
    target = ws.reports / f"{as_of:%Y-%m-%d}" / "index.html"
    with atomic_path(target) as tmp:
        tmp.write_text(body, encoding="utf-8")
    return target
