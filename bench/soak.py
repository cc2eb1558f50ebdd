"""A month unattended: `rtml up` on a synthetic replay of DAYS days at max speed, sampled per simulated day.

The replay is ingested and aggregated at full speed, so the pipeline clock reaches the last day
within minutes; the scheduler then walks the clock's boundaries (forecasts, drift, monitoring,
retraining, retention) day after day. A simulated day is sampled when the scheduler's retention
job has passed its end: disk (or Redis/PostgreSQL) bytes per store (`rtml status` stores),
resident memory and open file descriptors per long-running component, `GET /forecast` latency,
and the duration of a monitoring pass and of a drift check. It prints the table, then the slope
of each figure over the last 20 days and the issue's bounds: past each store's window its bytes
grow < 5 % over the last 20 days; memory within 20 % of day 7; latencies within 20 % of day 7.

Measured so that the figures say what the code does on a shared machine, not what its load did:
`GET /forecast` p99 is the median of REPEATS rounds of REQUESTS calls, with serving's CPU time
per call beside it; a pass's duration is the median over the day's boundaries (the bench reads
the scheduler's job durations every poll), with the scheduler's CPU seconds per pass beside it.

Callers: every sampled day, CALLERS what-if forecasts from the minutes before the scheduler's
boundary, as callers of a live pipeline at that clock would ask (`caller_predictions_MB`, aged
by their target minute like live ones). The latency probes forecast the online store's newest
minute, the replay's last, which no retention window reaches during a max-speed soak: they are
shown apart (`caller_probes_MB`).

Cadences are the defaults except the monitoring pass (hourly, not every minute: a 30-day replay
would otherwise spend its time judging the same hour 60 times). Retention windows are set so
every store is full by day 10 (`WINDOWS`; the rollback history holds 3 champions, as the
default 10 would take most of a month of promotions to fill); the offline store keeps its
default (forever, it is the training data) and is reported, not bounded.

    .venv/bin/python bench/soak.py --days 30 [--profile embedded|services]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

DAY_MS = 86_400_000
MINUTE_MS = 60_000
REQUESTS, REPEATS, CALLERS = 200, 3, 20
COMPONENTS = ("archiver", "aggregate", "serve", "scheduler")
# Small enough that every store's window is full by day 10 of a 30-day soak.
WINDOWS = {
    "STREAM_HOURS": "24", "DEAD_LETTERS_DAYS": "3", "PREDICTIONS_DAYS": "5", "CALLER_PREDICTIONS_DAYS": "5",
    "EVENTS_DAYS": "5", "REPORTS_DAYS": "2", "ONLINE_DAYS": "2", "CANDIDATES_DAYS": "5", "ARCHIVE_DAYS": "5",
    "CHAMPION_HISTORY": "3",
}  # fmt: skip
# Below these a difference is the shared 2-core machine's noise, not a trend (latencies of a
# few ms and passes of tens of ms move by more than 20 % when another process runs).
NOISE = {"forecast_p99_ms": 5.0, "forecast_cpu_ms": 0.5, "monitor_s": 0.05, "monitor_cpu_s": 0.01, "drift_s": 0.1,
         "drift_cpu_s": 0.02}  # fmt: skip
LATENCIES = ("forecast_p99_ms", "forecast_cpu_ms", "monitor_s", "monitor_cpu_s", "drift_s", "drift_cpu_s")
PASSES = ("monitor", "drift")
CADENCES = {"RTML_SCHEDULER__MONITOR_INTERVAL_S": "3600", "RTML_SERVING__MAX_FEATURE_AGE_S": "1e12"}


def configure(profile: str, windows: dict[str, str], cadences: dict[str, str]) -> str:
    """A fresh data directory and the environment every component inherits; returns the directory."""
    # A folder rtml creates itself (and marks as its own), so `rtml down --purge` may delete it.
    data_dir = os.path.join(tempfile.mkdtemp(prefix="rtml-soak-"), "data")
    os.environ.update({"RTML_DATA_DIR": data_dir, "RTML_PROFILE": profile})
    os.environ["RTML_CONFIG"] = os.path.join(data_dir, "absent.toml")
    os.environ.update({"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"})
    os.environ.update({f"RTML_RETENTION__{k}": v for k, v in windows.items()})
    os.environ.update(cadences)
    return data_dir


def _latencies_ms(url: str, n: int) -> list[float]:
    took = []
    for _ in range(n):
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                response.read()
        except OSError:
            pass  # a refusal is timed too: the figure is the API's answer time
        took.append((time.perf_counter() - start) * 1000)
    return sorted(took)


def forecast_latency(url: str, serve_pid: int | None, requests: int, repeats: int) -> dict[str, float]:
    """`GET /forecast` p50 and p99 (ms, the median of `repeats` rounds) and serving's CPU ms per call."""
    import psutil

    try:
        proc = psutil.Process(serve_pid)
        cpu = proc.cpu_times()
    except (psutil.Error, TypeError, ValueError):
        proc, cpu = None, None
    rounds = [_latencies_ms(f"{url}/forecast", requests) for _ in range(repeats)]
    used = float("nan")
    if proc is not None and cpu is not None:
        after = proc.cpu_times()
        used = (after.user + after.system - cpu.user - cpu.system) * 1000 / (requests * repeats)
    def quantile(q: float) -> float:
        return statistics.median(r[max(0, int(len(r) * q) - 1)] for r in rounds)

    return {"forecast_p50_ms": quantile(0.5), "forecast_p99_ms": quantile(0.99), "forecast_cpu_ms": used}


def ask_what_if(settings: Any, url: str, clock_ms: int, callers: int) -> None:
    """`callers` what-if forecasts from the minutes before the scheduler's boundary, the last one
    ending i minutes before it: the callers of a live pipeline at that clock."""
    from rtml.features.dataset import history_minutes
    from rtml.features.offline import read_minutes_df

    need = history_minutes(settings.features.lags)
    start = datetime.fromtimestamp((clock_ms - (need + callers) * MINUTE_MS) / 1000, UTC)
    minutes = read_minutes_df(settings, start, datetime.fromtimestamp(clock_ms / 1000, UTC))
    rows = [
        {"minute": m.isoformat(), "tx_count": int(c), "fee_total_sat": int(f)}
        for m, c, f in zip(minutes["minute"], minutes["tx_count"], minutes["fee_total_sat"], strict=True)
    ]
    for i in range(min(callers, len(rows) - need + 1)):
        body = json.dumps({"minutes": rows[len(rows) - need - i : len(rows) - i]}).encode()
        request = urllib.request.Request(f"{url}/forecast", body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                response.read()
        except OSError:
            pass  # a gap in the minutes (422) or no model yet (503): that caller asked in vain


class PassTimes:
    """Per-boundary durations of the monitoring pass and the drift check, read at every poll: the
    day's median wall time, and its CPU seconds per boundary."""

    def __init__(self) -> None:
        self.last: dict[str, tuple[float, int, float]] = {}
        self.day_start: dict[str, tuple[float, int, float]] = {}
        self.walls: dict[str, list[float]] = {job: [] for job in PASSES}

    def poll(self, settings: Any) -> None:
        from rtml.ops.scheduler import job_durations

        durations = job_durations(settings)
        for job in PASSES:
            _, total, runs, cpu = durations.get(job, (0.0, 0.0, 0, 0.0))
            before = self.last.get(job)
            if before is not None and runs > before[1]:
                self.walls[job].append((total - before[0]) / (runs - before[1]))
            self.last[job] = (total, runs, cpu)
            self.day_start.setdefault(job, (total, runs, cpu))

    def take_day(self) -> dict[str, float]:
        out = {}
        for job in PASSES:
            walls, (_, runs, cpu), (_, runs0, cpu0) = self.walls[job], self.last[job], self.day_start[job]
            out[f"{job}_s"] = statistics.median(walls) if walls else float("nan")
            out[f"{job}_cpu_s"] = (cpu - cpu0) / (runs - runs0) if runs > runs0 else float("nan")
            self.walls[job], self.day_start[job] = [], self.last[job]
        return out


def sample(settings: Any, day: int, url: str, requests: int, passes: PassTimes) -> dict[str, Any]:
    """One row: the day, then store bytes, component RSS (MB) and fds, and the latencies."""
    import psutil

    from rtml.ops.retention import store_stats
    from rtml.ops.scheduler import scheduler_state
    from rtml.ops.supervisor import read_state
    from rtml.serving.prediction_log import JUDGED_KINDS, PredictionStore

    # Where the scheduler is (the retention job's last boundary): a replay's clock itself is at
    # its end long before the scheduler gets there.
    clock_ms = scheduler_state(settings)[0]["retention"][0]
    clock = datetime.fromtimestamp(clock_ms / 1000, UTC)
    components = (read_state(settings) or {"components": {}})["components"]
    ask_what_if(settings, url, clock_ms, CALLERS)
    row: dict[str, Any] = {"day": day}
    for store in store_stats(settings):
        row[f"{store['name']}_MB"] = store["bytes"] / 1e6
        # Event-time span the store holds (days), to tell whether its window is full.
        oldest = datetime.fromisoformat(store["oldest"]) if store["oldest"] else clock
        row[f"_{store['name']}_span_d"] = (clock - oldest).total_seconds() / 86400
    predictions = PredictionStore(settings)
    try:  # the latency probes (`online`, at the replay's end) apart from the callers on the clock
        probes = predictions.stats(("online",))[0] / 1e6
        oldest_ms = predictions.stats(JUDGED_KINDS + ("online",), exclude=True)[2]
    finally:
        predictions.close()
    row["caller_predictions_MB"] -= probes
    row["caller_probes_MB"] = probes
    row["_caller_predictions_span_d"] = (clock_ms - (oldest_ms or clock_ms)) / DAY_MS
    for name in COMPONENTS:
        pid = components.get(name, {}).get("pid")
        try:
            proc = psutil.Process(pid)
            row[f"{name}_rss_MB"], row[f"{name}_fds"] = proc.memory_info().rss / 1e6, proc.num_fds()
        except (psutil.Error, TypeError, ValueError):
            row[f"{name}_rss_MB"], row[f"{name}_fds"] = float("nan"), float("nan")
    row.update(forecast_latency(url, components.get("serve", {}).get("pid"), requests, REPEATS))
    row.update(passes.take_day())
    # The drift check's reference is the champion's training window (at most model.retrain_window_s):
    # its cost follows that window's length, which changes only when a champion is promoted.
    from rtml.quality.sources import champion_training_window

    trained = champion_training_window(settings)
    row["drift_ref_d"] = (trained.end - trained.start).total_seconds() / 86400 if trained else float("nan")
    return row


def run_soak(
    days: float,
    profile: str = "embedded",
    windows: dict[str, str] | None = None,
    cadences: dict[str, str] | None = None,
    rate_per_min: float | None = None,
    requests: int = REQUESTS,
    timeout_s: float = 7200,
) -> tuple[list[dict[str, Any]], Any]:
    """Run the soak; returns the rows (one per simulated day sampled) and the settings."""
    configure(profile, WINDOWS if windows is None else windows, CADENCES if cadences is None else cadences)
    from rtml.config import get_settings
    from rtml.demo import DEMO_START, Story, free_port, wait_settled, write_wire_file
    from rtml.ops.deploy import bring_down, start_pipeline
    from rtml.ops.scheduler import scheduler_state
    from rtml.sources.synthetic import SyntheticConfig, SyntheticSource

    settings = get_settings()
    wire = settings.path("soak-input", "utx.jsonl.gz")
    # Steady traffic (no regime shift): a soak measures what grows by itself, not a reaction.
    config = SyntheticConfig(seed=7, start=DEMO_START, minutes=int(days * 1440))
    if rate_per_min is not None:
        config = SyntheticConfig(**{**vars(config), "rate_per_min": rate_per_min})
    write_wire_file(Story(SyntheticSource(config), DEMO_START), wire)
    port = free_port()
    ok, why = start_pipeline(settings, "replay", wire, "max", port, timeout=300)
    if not ok:
        bring_down(purge=True, yes=True)
        raise RuntimeError(f"the pipeline did not start: {why}")
    url = f"http://{settings.serving.host}:{port}"
    start_ms = int(DEMO_START.timestamp() * 1000)
    rows: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    passes = PassTimes()
    try:
        sampled = 0
        while sampled < int(days) and time.monotonic() < deadline:
            jobs, _ = scheduler_state(settings)
            passes.poll(settings)
            done = (jobs.get("retention", (start_ms, 0))[0] - start_ms) // DAY_MS
            if done > sampled:
                sampled = int(done)
                rows.append(sample(settings, sampled, url, requests, passes))
                print(json.dumps({k: round(v, 3) for k, v in rows[-1].items()}), flush=True)
            else:
                time.sleep(0.2)
        wait_settled(settings, max(60.0, deadline - time.monotonic()))
    finally:
        bring_down(purge=False, yes=True)
    return rows, settings


def slope(rows: list[dict[str, Any]], key: str, last: int = 20) -> float:
    """Least-squares slope per day of `key` over the last `last` rows."""
    tail = [(r["day"], r[key]) for r in rows[-last:] if r[key] == r[key]]
    if len(tail) < 2:
        return float("nan")
    return statistics.linear_regression([d for d, _ in tail], [v for _, v in tail]).slope


def bounds(
    rows: list[dict[str, Any]],
    settings: Any,
    last: int = 20,
    reference_day: int = 7,
    exclude: tuple[str, ...] = (),
    latencies: bool = True,
) -> list[str]:
    """The issue's bounds (stores in `exclude` aside, latencies only with `latencies`); returns the
    ones broken (empty when all hold). A store's growth is its least-squares trend over the last
    `last` days: a store whose content varies from day to day (the registry holds as many versions
    as trainings fell in its window) is judged by where it goes, not by its two end points."""
    from rtml.ops.retention import windows_ms

    broken = []
    tail = rows[-last:]
    windows = windows_ms(settings)
    for store, window in windows.items():
        key = f"{store}_MB"
        first = tail[0]
        if store in exclude or window <= 0 or first[f"_{store}_span_d"] * DAY_MS < window * 0.95:
            continue  # kept forever, or its window not yet full (in the store's own event time)
        grown = slope(rows, key, last) * (tail[-1]["day"] - first["day"])
        mean = statistics.fmean(r[key] for r in tail)
        if grown > 0.05 * max(mean, 0.01):  # below 10 kB a store is noise, not growth
            broken.append(f"{store}: +{grown:.2f} MB from day {first['day']} to {tail[-1]['day']} (mean {mean:.2f} MB)")
    reference = next((r for r in rows if r["day"] >= reference_day), rows[0])
    # The drift check's latencies are judged by `drift_bounds`, within each reference length.
    keys = [f"{c}_rss_MB" for c in COMPONENTS] + ([k for k in LATENCIES if not k.startswith("drift")] if latencies else [])
    for key in keys:
        base = reference[key]
        limit = 1.2 * base + NOISE.get(key, 0.0)
        for r in rows:
            if r["day"] > reference["day"] and r[key] == r[key] and base == base and r[key] > limit:
                broken.append(f"{key}: {r[key]:.3g} on day {r['day']} > 1.2 x {base:.3g} (day {reference['day']})")
                break
    return broken


def _same_reference(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two days' drift checks had references of the same length (within 5 %); rows of an
    earlier soak without the column count as the same."""
    x, y = a.get("drift_ref_d", 0.0), b.get("drift_ref_d", 0.0)
    return not (x == x and y == y) or abs(x - y) <= 0.05 * max(x, y, 1e-9)


def _steady_days(rows: list[dict[str, Any]]) -> set[int]:
    """The days whose drift checks all had one reference length: the day before ended with the
    same one. On the day a champion with a longer training window is promoted, the day's checks
    mix both lengths, so its cost is neither's."""
    return {r["day"] for i, r in enumerate(rows) if i == 0 or _same_reference(rows[i - 1], r)}


def drift_bounds(rows: list[dict[str, Any]], reference_day: int = 7) -> list[str]:
    """The drift check's latencies, each steady day against the first steady day from
    `reference_day` on whose reference window had the same length: a promotion that lengthens
    the champion's training window steps the check's cost up once, and the bound is about growth
    over time."""
    broken = []
    steady = _steady_days(rows)
    for key in ("drift_s", "drift_cpu_s"):
        for r in rows:
            base_row = next(
                (b for b in rows if b["day"] >= reference_day and b["day"] in steady and _same_reference(r, b)), None
            )
            if base_row is None or r["day"] <= base_row["day"] or r["day"] not in steady or "drift_ref_d" not in r:
                continue
            base = base_row[key]
            if r[key] == r[key] and base == base and r[key] > 1.2 * base + NOISE[key]:
                broken.append(f"{key}: {r[key]:.3g} on day {r['day']} > 1.2 x {base:.3g} (day {base_row['day']})")
                break
    return broken


def print_table(rows: list[dict[str, Any]]) -> None:
    keys = [k for k in rows[0] if not k.startswith("_")]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    print("| slope/day (last 20) | " + " | ".join(f"{slope(rows, k):.3g}" for k in keys[1:]) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=30)
    parser.add_argument("--profile", choices=("embedded", "services"), default="embedded")
    parser.add_argument("--rate", type=float, default=None, help="transactions per minute (default: real, 145)")
    args = parser.parse_args()
    t0 = time.monotonic()
    rows, settings = run_soak(args.days, args.profile, rate_per_min=args.rate)
    print(f"\nsoak: {args.days:g} days, {args.profile}, {time.monotonic() - t0:.0f} s wall, data in {settings.root}")
    print_table(rows)
    broken = bounds(rows, settings) + drift_bounds(rows)
    print("bounds: " + ("all hold" if not broken else "BROKEN: " + "; ".join(broken)))
    from rtml.ops.deploy import bring_down

    bring_down(purge=True, yes=True)
    os.rmdir(settings.root.parent)  # the soak's own temporary folder, empty now
    print(f"(started {datetime.now(UTC) - timedelta(seconds=time.monotonic() - t0):%H:%M} UTC)")


if __name__ == "__main__":
    main()
