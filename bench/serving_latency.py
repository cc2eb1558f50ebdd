"""Serving latency: GET /forecast at a steady 200 requests/s, online feature read included.

A fresh data directory gets a day of synthetic minutes ending now in the real feature store
and a trained champion in the real MLflow registry (rtml.serving.seed). Then `rtml serve`
runs in one subprocess (uvicorn, one worker) and the load client in another: an open-loop
schedule (request i is due at t0 + i/rate, so a slow answer cannot hide the next one's
wait), one keep-alive connection, latency measured from the due time to the last byte.
It prints p50/p90/p99/max, achieved throughput and failures, then the most requests per
second one closed-loop client gets. Target (issue 8): p99 < 5 ms on the embedded profile.

Every request reads the online store; the feature row and the prediction are recomputed only
when that read returns something new (a minute closes once a minute), so the bench also
prints that once-a-minute path's cost, and the handler's own time from the prediction log.

    .venv/bin/python bench/serving_latency.py [--rate 200] [--seconds 30] [--profile embedded|services]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def client(port: int, rate: float, seconds: float, closed: bool) -> None:
    """The load loop (runs in its own process): prints one JSON line of results."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    latencies: list[float] = []  # from the due time: includes waiting behind a late answer
    service: list[float] = []  # from the actual send: what one request costs
    failures: dict[str, int] = {}
    versions: dict[str, int] = {}
    n = int(rate * seconds)
    start = time.perf_counter()
    deadline = start + seconds
    i = 0
    while (i < n) if not closed else (time.perf_counter() < deadline):
        due = start + i / rate if not closed else time.perf_counter()
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        sent = time.perf_counter()
        try:
            conn.request("GET", "/forecast")
            response = conn.getresponse()
            body = response.read()
            if response.status == 200:
                version = json.loads(body)["model_version"]
                versions[version] = versions.get(version, 0) + 1
            else:
                failures[str(response.status)] = failures.get(str(response.status), 0) + 1
        except (OSError, http.client.HTTPException) as exc:
            failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        done = time.perf_counter()
        latencies.append(done - due)
        service.append(done - sent)
        i += 1
    elapsed = time.perf_counter() - start
    print(
        json.dumps(
            {"latencies": latencies, "service": service, "elapsed": elapsed, "failures": failures, "versions": versions}
        )
    )


def run_client(port: int, rate: float, seconds: float, closed: bool = False) -> dict:
    args = [sys.executable, __file__, "--client", str(port), "--rate", str(rate), "--seconds", str(seconds)]
    out = subprocess.run([*args, *(["--closed"] if closed else [])], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def report(title: str, result: dict) -> None:
    import numpy as np

    def figures(values: list[float]) -> str:
        ms = np.array(values) * 1000
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return f"p50 {p50:.2f} ms, p90 {p90:.2f} ms, p99 {p99:.2f} ms, max {ms.max():.2f} ms"

    n = len(result["latencies"])
    print(
        f"{title}: {n} requests in {result['elapsed']:.1f} s = {n / result['elapsed']:.0f} req/s, "
        f"failures {result['failures'] or 0}, versions {result['versions']}\n"
        f"  latency from the scheduled time: {figures(result['latencies'])}\n"
        f"  latency from the send:           {figures(result['service'])}"
    )


def server_side(settings: object, since_ms: int, expected: int) -> None:
    """The handler's own time per forecast (feature read + model), from the prediction log."""
    import numpy as np

    from rtml.serving.prediction_log import read_predictions

    deadline = time.monotonic() + 30
    records = read_predictions(settings, since_ms)  # type: ignore[arg-type]
    while len(records) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
        records = read_predictions(settings, since_ms)  # type: ignore[arg-type]
    ms = np.array([r.latency_ms for r in records])
    p50, p99 = np.percentile(ms, [50, 99])
    print(f"  in the handler (prediction log, {len(ms)} forecasts): p50 {p50:.2f} ms, p99 {p99:.2f} ms")


def cold_path(settings: object) -> None:
    """What a request costs when a new minute has just closed (features and prediction recomputed)."""
    import numpy as np

    from rtml.features.dataset import features_for_asof
    from rtml.features.online import last_minutes
    from rtml.model.registry import load_champion

    model = load_champion(settings)  # type: ignore[arg-type]
    read, build, predict = [], [], []
    for _ in range(50):
        t0 = time.perf_counter()
        minutes = last_minutes(settings)  # type: ignore[arg-type]
        t1 = time.perf_counter()
        row = features_for_asof(minutes)
        t2 = time.perf_counter()
        model.predict(row)
        t3 = time.perf_counter()
        read.append(t1 - t0)
        build.append(t2 - t1)
        predict.append(t3 - t2)
    med = [float(np.median(x)) * 1000 for x in (read, build, predict)]
    print(
        f"  once a minute, when a new minute closes (in-process medians): online read {med[0]:.2f} ms, "
        f"feature row {med[1]:.2f} ms, prediction {med[2]:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--profile", choices=("embedded", "services"), default="embedded")
    parser.add_argument("--client", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--closed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client(args.client, args.rate, args.seconds, args.closed)
        return

    with tempfile.TemporaryDirectory(prefix="rtml-bench-serving-") as tmp:
        env = {
            **os.environ,
            "RTML_DATA_DIR": str(Path(tmp) / "data"),
            "RTML_PROFILE": args.profile,
            "RTML_CONFIG": str(Path(tmp) / "absent.toml"),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "1",
        }
        os.environ.update(env)
        from rtml.config import get_settings
        from rtml.serving.seed import seed

        settings = get_settings()
        t = time.perf_counter()
        versions = seed(settings, models=1)
        print(
            f"seeded a day of minutes and model {versions} in {time.perf_counter() - t:.1f} s ({args.profile})",
            flush=True,
        )
        port = free_port()
        server_log = Path(tmp) / "serve.log"
        server = subprocess.Popen(
            [sys.executable, "-m", "rtml", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=server_log.open("w"),
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    conn.request("GET", "/ready")
                    if conn.getresponse().status == 200:
                        break
                except OSError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"server did not get ready: {server_log.read_text()[-2000:]}")
                time.sleep(0.2)
            run_client(port, 50, 2)  # warm-up
            since_ms = int(time.time() * 1000)
            open_loop = run_client(port, args.rate, args.seconds)
            report(f"GET /forecast at {args.rate:g}/s open loop", open_loop)
            server_side(settings, since_ms, len(open_loop["latencies"]))
            cold_path(settings)
            report("GET /forecast closed loop (max throughput)", run_client(port, 1e9, 10, closed=True))
            print(f"load average {Path('/proc/loadavg').read_text().split()[:3]}, {os.cpu_count()} cores")
        finally:
            server.terminate()
            server.wait(timeout=30)
            if args.profile == "services":
                from rtml.ops.purge import execute_purge, plan_purge

                execute_purge(settings, plan_purge(settings, services=True))


if __name__ == "__main__":
    main()
