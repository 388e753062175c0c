"""The nightly report: a Prefect markdown summary and a self-contained HTML page for cash-ops managers.

The HTML embeds its images (base64 PNG) so it can be mailed or opened from any folder. Each chart
is a small pure function from frames to a matplotlib Figure (titled, axes labelled with units), so
the notebooks reuse them and tests check them without looking at pixels.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cashcast import analyst, jobs
from cashcast.analyst import new_figure
from cashcast.config import Config
from cashcast.io import atomic_path, read_written
from cashcast.landing import attention_note
from cashcast.schema import STALE_HISTORY_DAYS, days_unrecorded
from cashcast.workspace import Workspace

RISK_COLUMNS = ["device_id", "visit_date", "action", "amount", "stockout_risk_before", "stockout_risk", "reason"]
RISKS = {"stockout_risk": "risk after (to the next visit)", "stockout_risk_before": "risk before"}  # column: heading


def devices_at_risk(plan: pd.DataFrame, top: int = 10) -> pd.DataFrame:
    """Each device's riskiest planned visit, riskiest first: the chance of running out before it
    (`stockout_risk_before`: before the first visit, the cash of this morning) or after it, before the next.

    Ties (a fleet planned at its service level is mostly near zero) go to the visit due soonest.
    """
    if plan.empty:
        return pd.DataFrame(columns=RISK_COLUMNS)
    columns = [c for c in RISK_COLUMNS if c in plan.columns]
    risk = plan[[c for c in RISKS if c in plan.columns]].max(axis=1)
    ranked = plan.assign(_due=pd.to_datetime(plan["visit_date"]), _risk=risk).sort_values(
        ["_risk", "_due"], ascending=[False, True], kind="stable"
    )
    ranked = ranked.drop_duplicates("device_id")
    return ranked[columns].head(top).reset_index(drop=True)


def quiet_devices(summary: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """Devices with no usable record for over STALE_HISTORY_DAYS before `as_of` (device_id, name,
    last_observed, notes): their plans rest on old history, so someone should check the device or its feed."""
    from replenishment.plan import device_rows

    devices = device_rows(summary)
    silent = days_unrecorded(pd.DatetimeIndex(pd.to_datetime(devices["last_observed"])), as_of)
    quiet = devices[silent > STALE_HISTORY_DAYS]
    return quiet[["device_id", "name", "last_observed", "notes"]].reset_index(drop=True)


def fleet_row(summary: pd.DataFrame) -> pd.Series:
    """The fleet total row of a plan summary."""
    from replenishment.plan import TOTAL_ID

    total = summary[summary["device_id"].astype(str) == TOTAL_ID]
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
    rejected = sum(int(i.get("rows_rejected") or 0) for i in ingested if i.get("outcome") != "failed")
    lines = [
        f"# Cashcast nightly run, as of {as_of:%Y-%m-%d}",
        "",
        f"- Files ingested: {len(ingested) - len(failed)} processed ({rejected} rows rejected), {len(failed)} failed",
        *[f"  - {note}" for note in map(attention_note, ingested) if note],
        f"- Training: {training_line(trained)}",
    ]
    if trained.get("trained"):
        lines.append(
            f"- MLflow run id: `{trained['run_id']}`, model version {trained['version']}"
            f" ({'promoted to champion' if trained['promoted'] else 'kept out: the champion keeps serving'})"
        )
    elif trained.get("run_id"):
        lines.append(f"- MLflow run id of the serving champion: `{trained['run_id']}` (version {trained['version']})")
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
    quiet = quiet_devices(summary, as_of)
    lines += [f"- Devices with no usable record for over a week: {len(quiet)}"]
    lines += [
        f"  - `{row.device_id}`: last record {pd.Timestamp(row.last_observed):%Y-%m-%d}"
        for row in quiet.head(20).itertuples()
    ]
    lines += ["", f"- Plan CSV: `{planned['plan']}`"]
    if report_path:
        lines.append(f"- Report: [{report_path}]({Path(report_path).as_uri()})")
    return "\n".join(lines)


def training_line(trained: dict) -> str:
    """'retrained (no champion model yet)': what the run did, then why, for the report and the artifact alike."""
    did = "retrained" if trained.get("trained") else "not due"
    if trained.get("trained") and not trained.get("promoted", True):
        did = "retrained, but the champion keeps serving"
    return f"{did} ({trained['reason']})" if trained.get("reason") else did


def _fmt(value: Any) -> str:
    try:
        return f"{float(value):,.0f}"
    except (TypeError, ValueError):
        return "n/a"


HEADLINE = (
    ("cash deployed", "cash_deployed", "baseline_cash_deployed"),
    ("expected idle cash (average per day)", "expected_idle_cash", "baseline_expected_idle_cash"),
    ("visits", "visits", "baseline_visits"),
    ("visits already on order (in both)", "visits_on_order", "visits_on_order"),
    ("expected cost (visits + holding)", "expected_cost", "baseline_expected_cost"),
    ("expected stockout device-days", "expected_stockout_days", "baseline_expected_stockout_days"),
)
PLAN_COLOR, BASELINE_COLOR = "#2a7ab0", "#b0b0b0"
CURRENCY = analyst.CURRENCY


def headline_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The fleet figures of the plan against the fixed-schedule baseline, with the change in percent."""
    fleet = fleet_row(summary)
    rows = []
    for label, ours, base in HEADLINE:
        plan_value, base_value = float(fleet.get(ours, float("nan"))), float(fleet.get(base, float("nan")))
        change = 100 * (plan_value - base_value) / base_value if base_value else float("nan")
        rows.append({"figure": label, "Cashcast plan": plan_value, "baseline": base_value, "change %": change})
    return pd.DataFrame(rows)


def cash_figure(summary: pd.DataFrame, currency: str = CURRENCY) -> Figure:
    """Fleet cash deployed and average idle cash: the plan against the fixed-schedule baseline."""
    fleet = fleet_row(summary)
    fig, axes = new_figure(10, 3.4, ncols=2)
    labels = ["Cashcast plan", "fixed-schedule baseline"]
    for ax, (title, ours, base) in zip(
        axes,
        (
            ("Fleet cash deployed over the plan horizon", "cash_deployed", "baseline_cash_deployed"),
            ("Expected idle cash, average per day", "expected_idle_cash", "baseline_expected_idle_cash"),
        ),
        strict=True,
    ):
        values = [float(fleet.get(ours, 0) or 0), float(fleet.get(base, 0) or 0)]
        ax.bar(labels, values, color=[PLAN_COLOR, BASELINE_COLOR])
        ax.set_title(title)
        ax.set_xlabel("policy")
        ax.set_ylabel(f"cash ({currency})")
        analyst.money_axis(ax)
    fig.tight_layout()
    return fig


def fleet_cash_figure(projection: pd.DataFrame, currency: str = CURRENCY) -> Figure:
    """Expected cash held across the fleet each day of the plan (after that morning's visits)."""
    fig, ax = new_figure(10, 3.2)
    if len(projection):
        per_day = projection.groupby(pd.to_datetime(projection["date"]))["balance_after"].sum()
        ax.plot(per_day.index, per_day.to_numpy(), marker="o", color=PLAN_COLOR)
        fig.autofmt_xdate()
    analyst.money_axis(ax)
    ax.set_title("Expected cash held in the fleet, day by day")
    ax.set_xlabel("date")
    ax.set_ylabel(f"cash after the morning visit ({currency})")
    return fig


def visits_figure(plan: pd.DataFrame) -> Figure:
    """Planned carrier visits per day, split into loads and pickups."""
    fig, ax = new_figure(10, 3.2)
    if len(plan):
        counts = pd.crosstab(pd.to_datetime(plan["visit_date"]), plan["action"]).sort_index()
        bottom = None
        for action, color in (("load", PLAN_COLOR), ("pickup", "#e0a030")):
            if action in counts:
                labels = counts.index.strftime("%a %d %b")
                ax.bar(labels, counts[action], bottom=bottom, color=color, label=action)
                bottom = counts[action] if bottom is None else bottom + counts[action]
        ax.tick_params(axis="x", rotation=45)
        ax.legend()
    ax.set_title("Planned carrier visits per day")
    ax.set_xlabel("visit date")
    ax.set_ylabel("visits (count)")
    return fig


def accuracy_figure(accuracy: pd.DataFrame, currency: str = CURRENCY) -> Figure:
    """Yesterday's forecast against actual withdrawals per device (censored days left out)."""
    fig, ax = new_figure(5, 4.2)
    scored = analyst.scored_accuracy(accuracy)
    if len(scored):
        ax.scatter(scored["withdrawals"], scored["yhat"], s=14, alpha=0.7, color=PLAN_COLOR)
        top = float(max(scored["withdrawals"].max(), scored["yhat"].max()))
        ax.plot([0, top], [0, top], color="grey", linewidth=1, label="forecast = actual")
        ax.legend(fontsize=8)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(
            0.5,
            0.5,
            "no forecast made before yesterday\nin this workspace",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="grey",
        )
    analyst.money_axis(ax, "x")
    analyst.money_axis(ax, "y")
    ax.tick_params(axis="x", rotation=30)
    ax.set_title("Yesterday: forecast against actual withdrawals")
    ax.set_xlabel(f"actual withdrawals ({currency})")
    ax.set_ylabel(f"forecast ({currency})")
    return fig


def worst_forecasts(accuracy: pd.DataFrame, top: int = 10) -> pd.DataFrame:
    """Yesterday's largest absolute forecast errors (uncensored days)."""
    scored = analyst.scored_accuracy(accuracy).copy()
    scored["error"] = scored["yhat"] - scored["withdrawals"]
    scored["abs_error"] = scored["error"].abs()
    columns = ["device_id", "model", "withdrawals", "yhat", "error"]
    ranked = scored.sort_values("abs_error", ascending=False)
    return ranked[[c for c in columns if c in ranked]].head(top).reset_index(drop=True)


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def _img(fig: Figure, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{_png(fig)}">'


def _table(frame: pd.DataFrame, wrap_last: bool = False) -> str:
    classes = ["table", "wrap-last"] if wrap_last else "table"
    return frame.to_html(index=False, classes=classes, border=0, float_format=lambda v: f"{v:,.2f}", escape=True)


def _shown_headline(table: pd.DataFrame) -> pd.DataFrame:
    """Whole amounts and counts, expected stockout days to two places, the change to one ('n/a' without a
    baseline figure): 39 visits, not 39.00."""

    def number(value: float, places: int) -> str:
        return "n/a" if pd.isna(value) else f"{value:,.{places}f}"

    places = np.where(table["figure"].str.contains("stockout"), 2, 0)
    shown = table.copy()
    for column in ("Cashcast plan", "baseline"):
        shown[column] = [number(v, p) for v, p in zip(table[column], places, strict=True)]
    shown["change %"] = ["n/a" if pd.isna(v) else f"{v:+.1f}" for v in table["change %"]]
    return shown


def _risk_table(at_risk: pd.DataFrame) -> str:
    percent = {c: at_risk[c].map(lambda p: f"{100 * p:.1f}%") for c in RISKS if c in at_risk}
    return _table(at_risk.assign(**percent).rename(columns=RISKS), wrap_last=True)


def _worst_table(accuracy: pd.DataFrame) -> str:
    worst = worst_forecasts(accuracy)
    if not len(worst):
        return ""
    sign = "<p>error = forecast - actual: positive where the forecast was too high.</p>"
    return f"<h3>Largest errors</h3>{sign}{_table(worst)}"


def _accuracy_note(accuracy: pd.DataFrame) -> str:
    from forecasting import smape

    scored = analyst.scored_accuracy(accuracy)
    if scored.empty:
        return "No device has both a forecast and an uncensored actual for yesterday yet."
    made = pd.Timestamp(scored["made"].iloc[0])
    value = smape(scored["withdrawals"].to_numpy(), scored["yhat"].to_numpy())
    unrecorded = int(accuracy["withdrawals"].isna().sum())
    missing = f"; {unrecorded} forecast device(s) have no actual for yesterday yet" if unrecorded else ""
    return (
        f"{len(scored)} device(s) scored against the forecast made on {made:%Y-%m-%d}: sMAPE {value:.1f}%;"
        f" {int(accuracy['censored'].sum())} censored device-day(s) left out{missing}."
    )


STYLE = """body{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}
.table{border-collapse:collapse;margin:0.5em 0 1.5em}
.table td,.table th{padding:4px 8px;border-bottom:1px solid #ddd;text-align:right}
.table td:first-child,.table th:first-child{text-align:left} .table td{white-space:nowrap}
.wrap-last td:last-child{white-space:normal;text-align:left;min-width:20em}
.wrap-last th:last-child{text-align:left} img{max-width:100%}"""


def _landing_notes(notes: Sequence[str]) -> str:
    """Landing files the night could not ingest, or ingested without some rows: that data is missing from
    tonight's plan."""
    if not notes:
        return ""
    items = "".join(f"<li>{html.escape(line)}</li>" for line in notes)
    return (
        "<h2>Files not ingested, rows rejected</h2><p>Tonight's plan does not include the data named here.</p>"
        f"<ul>{items}</ul>"
    )


def _currency_note(currency: str) -> str:
    """The network's currency when the config names it ([ingest] currency), else what the amounts are."""
    if currency:
        return f"Amounts in {html.escape(currency)}."
    return "Amounts in the network's currency (name it with [ingest] currency)."


def render_report(
    as_of: pd.Timestamp,
    plan: pd.DataFrame,
    summary: pd.DataFrame,
    projection: pd.DataFrame,
    accuracy: pd.DataFrame,
    context: dict[str, str],
    landing_notes: Sequence[str] = (),
) -> str:
    """The whole page as one HTML string (pure: frames in, text out); `landing_notes`: one per landing file
    the night could not ingest or ingested with rows rejected."""
    at_risk = devices_at_risk(plan)
    quiet = quiet_devices(summary, as_of)
    unit = context.get("currency") or CURRENCY  # the axes name the currency when the config does
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>Cashcast nightly report {as_of:%Y-%m-%d}</title><style>{STYLE}</style></head><body>
<h1>Cashcast nightly report, as of {as_of:%Y-%m-%d}</h1>
<p>Plan horizon {html.escape(context.get("horizon", ""))} days; plan file
<code>{html.escape(context.get("plan", ""))}</code>. Training: {html.escape(context.get("training", ""))}.
{_currency_note(context.get("currency", ""))}</p>
{_landing_notes(landing_notes)}
<h2>Cash deployed against the fixed-schedule baseline</h2>
{_table(_shown_headline(headline_table(summary)))}
{_img(cash_figure(summary, unit), "cash deployed and idle cash against the baseline")}
{_img(fleet_cash_figure(projection, unit), "expected fleet cash per day")}
<h2>Visits per day</h2>{_img(visits_figure(plan), "visits per day")}
<h2>Devices most at risk</h2>
<p>Each device's planned visit with the highest chance of running out before the next visit;
equal chances: the visit due soonest first.</p>
{_risk_table(at_risk)}
<h2>Devices with no usable record for over a week</h2>
<p>Their forecasts rest on old history: check the device and its data feed.</p>
{_table(quiet, wrap_last=True) if len(quiet) else "<p>None.</p>"}
<h2>Forecast against actual, yesterday</h2>
<p>{html.escape(_accuracy_note(accuracy))}</p>
{_img(accuracy_figure(accuracy, unit), "forecast against actual yesterday")}
{_worst_table(accuracy)}
</body></html>"""


def write_report(
    ws: Workspace, config: Config, as_of: pd.Timestamp, planned: dict, trained: dict, ingested: list[dict] = ()
) -> Path:
    """Write reports/<as_of>/index.html: cash deployed, visits per day, devices at risk, yesterday's accuracy,
    and the landing files that failed or lost rows (`ingested`: the nightly ingest's outcomes)."""
    folder = Path(planned["plan"]).parent
    projection_path = Path(planned.get("projection") or folder / "projection.csv")
    projection = read_written(projection_path) if projection_path.exists() else pd.DataFrame()
    page = render_report(
        as_of,
        plan=read_written(planned["plan"]),
        summary=read_written(planned["summary"]),
        projection=projection,
        accuracy=analyst.yesterday_accuracy(ws, as_of),
        context={
            "horizon": str(planned.get("horizon", config.plan.horizon_days)),
            "plan": str(planned["plan"]),
            "training": training_line(trained),
            "currency": config.ingest.currency,
        },
        landing_notes=[note for note in map(attention_note, ingested) if note],
    )
    target = ws.reports / f"{as_of:%Y-%m-%d}" / "index.html"
    if folder.name in jobs.APART_FOLDERS:  # the report of the plan in force that morning stays
        target = target.parent / folder.name / target.name
    with atomic_path(target) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return target
