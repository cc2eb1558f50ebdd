"""Report files and events of drift and quality runs.

Each run writes `<data_dir>/reports/<UTC time>-<kind>.html` (self-contained: the verdicts and
rules first, then Evidently's reports embedded whole, no network needed to open it) and
`.json` (the summary), and appends to `reports/index.json`, newest last, so people and the
dashboard can list runs by time. HTML files older than the last `KEEP_HTML` runs are removed
(an Evidently page weighs about 4 MB); summaries are kept. Events go to the shared event log:
`drift.alert` / `drift.ok` / `drift.skipped`, `quality.failed` / `quality.ok`.
"""

from __future__ import annotations

import fcntl
import html
import json
import os
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rtml.config import Settings
from rtml.monitoring.events import EventLog

if TYPE_CHECKING:
    from collections.abc import Iterator

    from rtml.quality.results import DriftResult

KEEP_HTML = 168  # a week of hourly runs
# The dashboard's drift panel links the newest reports: retention never removes these.
DASHBOARD_REPORTS = 20


def reports_dir(settings: Settings) -> Path:
    path = settings.path("reports", "index.json").parent
    return path


@contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    """Serialise index updates between the hourly job and on-demand commands."""
    with open(reports_dir(settings) / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_index(settings: Settings) -> list[dict[str, Any]]:
    """Every run so far, oldest first."""
    path = reports_dir(settings) / "index.json"
    if not path.exists():
        return []
    return json.loads(path.read_text())["runs"]  # type: ignore[no-any-return]


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def write_report(settings: Settings, result: DriftResult, kind: str, now: datetime | None = None) -> None:
    """Write the HTML + JSON of one run, index it, and put their paths on `result`."""
    now = now or datetime.now(UTC)
    folder = reports_dir(settings)
    stem = f"{_stem_time(now)}-{kind}"
    html_path, json_path = folder / f"{stem}.html", folder / f"{stem}.json"
    result.html_path, result.json_path = str(html_path), str(json_path)
    summary = {"time": now.isoformat(), "kind": kind, **result.to_dict()}
    summary["evidently"] = {name: snap.dict() for name, snap in result.snapshots.items()}
    _write_json(json_path, summary)
    tmp = html_path.with_suffix(".tmp")
    tmp.write_text(render_html(result, kind, now))
    os.replace(tmp, html_path)
    entry = {
        "time": now.isoformat(),
        "kind": kind,
        "verdict": result.verdict if kind == "drift" else ("fail" if result.failed_rules else "pass"),
        "share": result.share,
        "drifted_columns": result.drifted_columns,
        "failed_rules": result.failed_rules,
        "html": html_path.name,
        "json": json_path.name,
    }
    with _locked(settings):
        # A run repeated at the same time (the scheduler after a crash) replaces its entry.
        runs = [r for r in load_index(settings) if r.get("json") != entry["json"]] + [entry]
        for old in runs[:-KEEP_HTML]:
            if old.get("html"):
                (folder / old["html"]).unlink(missing_ok=True)
                old["html"] = None
        _write_json(folder / "index.json", {"runs": runs})


def _stem_time(moment: datetime) -> str:
    return f"{moment:%Y%m%dT%H%M%S}{moment.microsecond // 1000:03d}Z"


def trim_reports(settings: Settings, before: datetime) -> int:
    """Retention: drop runs (index entries and files) from before `before`, except the newest
    `DASHBOARD_REPORTS` with a page; returns how many files went.

    The index is rewritten first (atomically), then files no entry names are swept: a crash in
    between leaves orphans that the next sweep removes. A file newer than `before` is never
    swept, since a report being written is on disk before it is indexed.
    """
    folder = reports_dir(settings)
    with _locked(settings):
        runs = load_index(settings)
        shown = {id(r) for r in [r for r in runs if r.get("html")][-DASHBOARD_REPORTS:]}
        kept = [r for r in runs if id(r) in shown or datetime.fromisoformat(r["time"]) >= before]
        if len(kept) < len(runs):
            _write_json(folder / "index.json", {"runs": kept})
        named = {r[k] for r in kept for k in ("html", "json") if r.get(k)}
        cutoff = _stem_time(before.astimezone(UTC))
        gone = 0
        for path in folder.iterdir():
            if path.suffix in (".html", ".json") and path.name != "index.json" and path.name not in named:
                if path.name[: len(cutoff)] < cutoff:
                    path.unlink(missing_ok=True)
                    gone += 1
    return gone


def report_stats(settings: Settings) -> tuple[int, int, int | None]:
    """(bytes, runs, time of the oldest run in ms or None): for `rtml status`."""
    folder = reports_dir(settings)
    runs = load_index(settings)
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    oldest = int(datetime.fromisoformat(runs[0]["time"]).timestamp() * 1000) if runs else None
    return size, len(runs), oldest


def render_html(result: DriftResult, kind: str, now: datetime) -> str:
    """One self-contained page: verdict, columns, rules, then each Evidently report in an iframe."""
    esc = html.escape
    colour = {"pass": "#1a7f37", "fail": "#cf222e", "skipped": "#6e7781"}
    rows = "".join(
        f"<tr><td>{esc(c.column)}</td><td>{esc(c.method)}</td><td>{c.statistic:.4g}</td>"
        f"<td>{c.threshold:.4g}</td><td style='color:{colour['fail' if c.drifted else 'pass']}'>"
        f"{'drift' if c.drifted else 'ok'}</td><td>{c.reference_rows:,}</td><td>{c.current_rows:,}</td></tr>"
        for c in result.columns
    )
    rules = "".join(
        f"<tr><td>{esc(r.name)}</td><td style='color:{colour[r.status]}'>{r.status}</td>"
        f"<td>{'' if r.value is None else f'{r.value:.4g}'}</td><td>{esc(r.threshold)}</td>"
        f"<td>{esc(r.detail)}</td></tr>"
        for r in result.rules
    )
    frames = "".join(
        f'<h2>Evidently: {esc(name)}</h2><iframe srcdoc="{esc(snap.get_html_str(as_iframe=False), quote=True)}"'
        " style='width:100%;height:1400px;border:1px solid #ddd'></iframe>"
        for name, snap in result.snapshots.items()
    )
    windows = f"reference {result.reference or '-'} &nbsp; current {result.current or '-'}"
    verdict_colour = colour["fail" if result.drifted else "skipped" if result.skipped else "pass"]
    drift_table = (
        "<table><tr><th>column</th><th>method</th><th>statistic</th><th>threshold</th><th>verdict</th>"
        f"<th>reference rows</th><th>current rows</th></tr>{rows}</table>"
        if result.columns
        else ""
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>rtml {esc(kind)} {now:%Y-%m-%d %H:%M} UTC</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ddd;padding:4px 10px;text-align:left}</style></head><body>"
        f"<h1>rtml {esc(kind)} run, {now:%Y-%m-%d %H:%M:%S} UTC</h1><p>{windows}</p>"
        + (
            f"<p style='font-size:1.3em;color:{verdict_colour}'><b>{esc(result.verdict)}</b>: "
            f"{result.share:.0%} of {len(result.columns)} columns drifted "
            f"(alert at {result.drift_share:.0%})</p>"
            if kind == "drift"
            else ""
        )
        + drift_table
        + f"<h2>Data-quality rules</h2><table><tr><th>rule</th><th>status</th><th>value</th><th>threshold</th>"
        f"<th>detail</th></tr>{rules}</table>{frames}</body></html>"
    )


def record_events(settings: Settings, result: DriftResult, drift: bool, key: str | None = None) -> None:
    """Alert events for the monitoring and retraining loop; ok events so the dashboard sees runs.

    With `key` (the scheduler's job and boundary) a repeated check records nothing new.
    """
    events = EventLog(settings)
    drift_key, quality_key = (f"{key}:drift", f"{key}:quality") if key else (None, None)
    try:
        common: dict[str, Any] = {"report": result.html_path, "current": str(result.current or "")}
        if drift:
            if result.skipped:
                events.record("drift.skipped", key=drift_key, reason=result.skipped, **common)
            else:
                events.record(
                    "drift.alert" if result.drifted else "drift.ok",
                    key=drift_key,
                    share=result.share,
                    drift_share=result.drift_share,
                    drifted_columns=result.drifted_columns,
                    reference=str(result.reference or ""),
                    **common,
                )
        failed = [r.to_dict() for r in result.rules if r.status == "fail"]
        if failed:
            events.record("quality.failed", key=quality_key, failed=failed, **common)
        else:
            events.record(
                "quality.ok",
                key=quality_key,
                passed=sum(r.status == "pass" for r in result.rules),
                skipped=sum(r.status == "skipped" for r in result.rules),
                **common,
            )
    finally:
        events.close()


def quality_counters(settings: Settings) -> dict[str, float]:
    """Counters for the monitoring page: runs, drift alerts, quality failures, the last share."""
    runs = load_index(settings)
    drift_runs = [r for r in runs if r["kind"] == "drift"]
    last = drift_runs[-1] if drift_runs else None
    return {
        "runs": float(len(runs)),
        "drift_alerts": float(sum(r["verdict"] == "drift" for r in drift_runs)),
        "quality_failures": float(sum(bool(r["failed_rules"]) for r in runs)),
        "last_drift_share": float(last["share"]) if last else 0.0,
        "last_run_time_s": datetime.fromisoformat(runs[-1]["time"]).timestamp() if runs else 0.0,
    }
