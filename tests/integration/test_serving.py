"""The forecast API on the real feature store and the real MLflow registry (embedded profile).

One test bed per module (the `bed` fixture of tests/conftest.py, from rtml.serving.seed): a
day of synthetic minutes ending now, written through the feature store's writer, and two small
forecasters registered in MLflow, v1 champion. Tests that move the champion put v1 back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pandas as pd
import pytest
from conftest import SERVING_TOKEN as TOKEN
from conftest import seed_in_another_process
from fastapi.testclient import TestClient

from rtml.config import Settings, get_settings
from rtml.contracts import MinuteFeatures
from rtml.model import registry
from rtml.pipeline import serving_app
from rtml.serving.prediction_log import read_predictions, serving_counters
from rtml.serving.seed import write_minutes
from rtml.serving.server import BackgroundServer

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def champion_back(bed: tuple[Settings, list[str]]) -> Iterator[None]:
    yield
    settings, versions = bed
    if registry.champion_version(settings) != versions[0]:
        registry.promote(settings, versions[0], reason="test cleanup")


@pytest.fixture
def client(bed: tuple[Settings, list[str]]) -> Iterator[TestClient]:
    with TestClient(serving_app(bed[0]), base_url="http://localhost") as test_client:
        yield test_client


def _minutes(settings: Settings) -> pd.DataFrame:
    from rtml.features.online import last_minutes

    return last_minutes(settings, 60)


def test_get_forecast_uses_the_newest_online_minutes_and_the_champion(
    bed: tuple[Settings, list[str]], client: TestClient
) -> None:
    settings, versions = bed
    newest = _minutes(settings)["minute"].max().to_pydatetime()
    response = client.get("/forecast")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == versions[0]
    assert datetime.fromisoformat(body["feature_time"]) == newest + timedelta(minutes=1)
    assert datetime.fromisoformat(body["target_minute"]) == newest + timedelta(minutes=5)
    assert 0 <= body["p10"] <= body["p50"] <= body["p90"]

    ready = client.get("/ready").json()
    assert ready == {
        "ready": True,
        "model_version": versions[0],
        "feature_time": body["feature_time"],
        "reasons": [],
    }
    model = client.get("/model").json()
    assert model["version"] == versions[0]
    assert model["training_start"] < model["training_end"] <= body["feature_time"]
    assert "fee_avg_sat_lag1" in model["features"]
    metrics = client.get("/metrics").text
    assert 'rtml_serving_forecasts_total{kind="online"} 1.0' in metrics
    assert 'rtml_serving_requests_total{method="GET",route="/forecast",status="200"} 1.0' in metrics

    state = client.app.state.serving  # type: ignore[attr-defined]
    state.log.flush()
    logged = [r for r in state.log.read() if r.kind == "online"][-1]
    assert (logged.model_version, logged.p10, logged.p50, logged.p90) == (
        versions[0],
        body["p10"],
        body["p50"],
        body["p90"],
    )
    assert logged.feature_time_ms == int((newest + timedelta(minutes=1)).timestamp() * 1000)
    assert logged.target_minute_ms == int((newest + timedelta(minutes=5)).timestamp() * 1000)
    assert logged.latency_ms > 0


def test_what_if_minutes_and_batch_rows_agree_with_the_online_forecast(
    bed: tuple[Settings, list[str]], client: TestClient
) -> None:
    from rtml.features.dataset import FEATURE_COLUMNS, features_for_asof

    settings, _ = bed
    online = client.get("/forecast").json()
    minutes = _minutes(settings)
    body = {
        "minutes": [
            {"minute": m.isoformat(), "tx_count": int(c), "fee_total_sat": int(f)}
            for m, c, f in zip(minutes["minute"], minutes["tx_count"], minutes["fee_total_sat"], strict=True)
        ]
    }
    response = client.post("/forecast", json=body)
    assert response.status_code == 200, response.text
    (what_if,) = response.json()["forecasts"]
    assert what_if == online

    row = features_for_asof(minutes)
    features = {c: (None if pd.isna(row[c].iloc[0]) else float(row[c].iloc[0])) for c in FEATURE_COLUMNS}
    last = minutes["minute"].max()
    rows = [
        {"minute": last.isoformat(), "features": features},
        {"minute": (last - timedelta(hours=1)).isoformat(), "features": {**features, "fee_avg_sat_lag1": 1e6}},
    ]
    response = client.post("/forecast", json={"rows": rows})
    assert response.status_code == 200, response.text
    first, changed = response.json()["forecasts"]
    assert first == online
    assert changed["target_minute"] == (last - timedelta(hours=1) + timedelta(minutes=5)).isoformat().replace(
        "+00:00", "Z"
    )

    client.app.state.serving.log.flush()  # type: ignore[attr-defined]
    kinds = [r.kind for r in read_predictions(settings)]
    assert kinds.count("what-if") >= 1 and kinds.count("batch") >= 2


@pytest.mark.parametrize(
    ("body", "where", "message"),
    [
        ({}, ["body"], "give exactly one of 'minutes' (what-if) or 'rows' (batch)"),
        ({"minutes": [{"minute": "2024-10-01T12:00:00Z", "tx_count": 1, "fee_total_sat": 5}]},
         ["body", "minutes"], "need at least 60 consecutive minutes, got 1"),
        ({"minutes": [{"minute": "2024-10-01T12:00:30Z", "tx_count": 1, "fee_total_sat": 5}]},
         ["body", "minutes", 0, "minute"], "must be the start of a minute"),
        ({"minutes": [{"minute": "2024-10-01T12:00:00", "tx_count": 1, "fee_total_sat": 5}]},
         ["body", "minutes", 0, "minute"], "timezone"),
        ({"minutes": [{"minute": "2024-10-01T12:00:00Z", "tx_count": -1, "fee_total_sat": 5}]},
         ["body", "minutes", 0, "tx_count"], "greater than or equal to 0"),
        ({"minutes": [{"minute": "2024-10-01T12:00:00Z", "tx_count": 2, "fee_total_sat": 5, "fee_avg_sat": 3}]},
         ["body", "minutes", 0], "fee_avg_sat 3.0 is not fee_total_sat / tx_count = 2.5"),
        ({"minutes": [{"minute": "2024-10-01T12:00:00Z", "tx_count": 1, "fee_total_sat": 5},
                      {"minute": "2024-10-01T12:02:00Z", "tx_count": 1, "fee_total_sat": 5}]},
         ["body"], "minutes[1] is 2024-10-01T12:02:00+00:00, expected 2024-10-01T12:01:00+00:00"),
        ({"rows": [{"minute": "2024-10-01T12:00:00Z", "features": {"fee_avg_sat_lag1": 1.0, "bogus": 2.0}}]},
         ["body", "rows", 0, "features"], "unknown bogus"),
        ({"rows": [{"minute": "2024-10-01T12:00:00Z", "features": {"fee_avg_sat_lag1": "NaN"}}]},
         ["body", "rows", 0, "features", "fee_avg_sat_lag1"], "finite number"),
    ],
)  # fmt: skip
def test_bad_input_gets_a_422_that_says_what_and_where(
    client: TestClient, body: dict, where: list, message: str
) -> None:
    response = client.post("/forecast", json=body)
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert any(e["loc"] == where and message in e["msg"] for e in errors), errors


def test_batch_rows_must_carry_every_feature(client: TestClient) -> None:
    response = client.post("/forecast", json={"rows": [{"minute": "2024-10-01T12:00:00Z", "features": {}}]})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "rows", 0, "features"]
    assert error["msg"].startswith("missing tx_count_lag1, tx_count_lag2")


def test_stale_features_get_a_clear_503_never_a_forecast(bed: tuple[Settings, list[str]]) -> None:
    settings, _ = bed
    stale = settings.model_copy(update={"serving": settings.serving.model_copy(update={"max_feature_age_s": 0.0})})
    with TestClient(serving_app(stale), base_url="http://localhost") as client:
        response = client.get("/forecast")
        assert response.status_code == 503
        assert "features are stale: the newest closed minute ended at" in response.json()["detail"]
        assert "no forecast on old data" in response.json()["detail"]
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["ready"] is False
        assert ready.json()["reasons"][0].startswith("features are stale")
        assert "rtml_serving_stale_refusals_total 1.0" in client.get("/metrics").text
        client.app.state.serving.log.flush()  # type: ignore[attr-defined]
    assert serving_counters(settings)["stale_refusals"] >= 1


def test_admin_endpoints_are_off_without_a_token_and_guarded_with_one(
    bed: tuple[Settings, list[str]], client: TestClient, champion_back: None
) -> None:
    settings, versions = bed
    closed = settings.model_copy(update={"serving": settings.serving.model_copy(update={"admin_token": None})})
    with TestClient(serving_app(closed), base_url="http://localhost") as off:
        response = off.post("/admin/rollback", headers=AUTH)
        assert response.status_code == 404
        assert "admin endpoints are off" in response.json()["detail"]

    assert client.post("/admin/promote", json={"version": versions[1]}).status_code == 401
    wrong = client.post("/admin/promote", json={"version": versions[1]}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    missing = client.post("/admin/promote", json={"version": "999"}, headers=AUTH)
    assert missing.status_code == 404 and "999" in missing.json()["detail"]
    assert registry.champion_version(settings) == versions[0]

    promoted = client.post("/admin/promote", json={"version": versions[1]}, headers=AUTH)
    assert promoted.json() == {"champion": versions[1], "serving": versions[1]}
    assert client.get("/forecast").json()["model_version"] == versions[1]
    rolled = client.post("/admin/rollback", headers=AUTH)
    assert rolled.json() == {"champion": versions[0], "serving": versions[0]}
    assert client.get("/forecast").json()["model_version"] == versions[0]


RATE = 50  # requests/s of the hot-swap load


def test_no_request_fails_while_the_champion_is_promoted_and_rolled_back(
    bed: tuple[Settings, list[str]], champion_back: None
) -> None:
    """A steady RATE (50) requests/s over real HTTP while the champion changes six times, through the
    admin API and behind the service's back in the registry (the watcher follows the alias)."""
    settings, versions = bed
    server = BackgroundServer(serving_app(settings, poll_s=0.2), host=settings.serving.host).start()
    port = int(server.url.rsplit(":", 1)[1])
    assert f"0100007F:{port:04X}" in Path("/proc/net/tcp").read_text()  # bound to 127.0.0.1 by default
    results: list[tuple[int, dict]] = []
    stop = threading.Event()
    span: list[float] = []

    def load() -> None:
        """Every answer is recorded, whatever it is: a 500 with a text body, a reset connection
        or a timeout becomes a non-200 entry (status 0 when there was no answer at all)."""
        with httpx.Client(base_url=server.url, timeout=10) as http:
            start = time.perf_counter()
            span.append(start)
            i = 0
            while not stop.is_set():
                due = start + i / RATE
                time.sleep(max(0.0, due - time.perf_counter()))
                try:
                    response = http.get("/forecast") if i % 5 else http.post("/forecast", json=what_if)
                except httpx.HTTPError as exc:
                    results.append((0, {"error": repr(exc)}))
                else:
                    try:
                        body = response.json()
                    except ValueError:
                        body = {"text": response.text[:500]}
                    results.append((response.status_code, body if isinstance(body, dict) else {"body": body}))
                i += 1
            span.append(time.perf_counter())

    minutes = _minutes(settings)
    what_if = {
        "minutes": [
            {"minute": m.isoformat(), "tx_count": int(c), "fee_total_sat": int(f)}
            for m, c, f in zip(minutes["minute"], minutes["tx_count"], minutes["fee_total_sat"], strict=True)
        ]
    }

    def served(version: str, after: int) -> bool:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if any(_version(body) == version for _, body in results[after:]):
                return True
            time.sleep(0.02)
        return False

    thread = threading.Thread(target=load)
    thread.start()
    try:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as admin:
            for _ in range(3):
                mark = len(results)
                assert admin.post("/admin/promote", json={"version": versions[1]}).status_code == 200
                assert served(versions[1], mark)
                mark = len(results)
                assert registry.rollback(settings) == versions[0]  # out of band: the poll notices
                assert served(versions[0], mark)
    finally:
        stop.set()
        thread.join()
        server.stop()

    failures = [(status, body) for status, body in results if status != 200]
    assert not failures, failures[:5]
    achieved = len(results) / (span[1] - span[0])
    # Half the rate proves the load really ran: the suite runs four test files at once on two
    # cores (make test), and the point is every answer counted, not the machine's speed.
    assert achieved >= 0.5 * RATE, f"only {achieved:.1f} requests/s of {RATE}: the load did not hold"
    observed = [_version(body) for _, body in results]
    switches = sum(1 for a, b in zip(observed, observed[1:], strict=False) if a != b)
    assert switches >= 6, observed
    # The same features give each version its own quantiles: a response's numbers show which
    # model made them, so the version it names is the one that produced it.
    by_version: dict[str, set[tuple[float, float, float]]] = {}
    for _, body in results:
        for forecast in body.get("forecasts", [body]):
            by_version.setdefault(forecast["model_version"], set()).add(
                (forecast["p10"], forecast["p50"], forecast["p90"])
            )
    assert set(by_version) == set(versions)
    assert all(len(quantiles) == 1 for quantiles in by_version.values()), by_version
    assert by_version[versions[0]] != by_version[versions[1]]


def _version(body: dict) -> str:
    forecasts = body.get("forecasts")
    return str(forecasts[0]["model_version"] if forecasts else body.get("model_version"))


@pytest.mark.parametrize(
    ("minute", "message"),
    [
        ("0001-01-01T00:00:00Z", "must not be before 2009-01-03"),
        ("2009-01-02T23:59:00Z", "must not be before 2009-01-03"),
        ("9999-12-31T23:59:00Z", "more than a day after now"),
        ("+2d", "more than a day after now"),
    ],
)
@pytest.mark.parametrize("kind", ["rows", "minutes"])
def test_a_time_outside_bitcoins_life_is_a_422_naming_the_field(
    client: TestClient, minute: str, message: str, kind: str
) -> None:
    """Year 1 was logged and then broke monitoring; year 9999 overflowed into a 500."""
    if minute == "+2d":
        minute = f"{datetime.now(UTC) + timedelta(days=2):%Y-%m-%dT%H:%M:00Z}"
    columns = client.get("/model").json()["features"]
    body = (
        {"rows": [{"minute": minute, "features": dict.fromkeys(columns, 1.0)}]}
        if kind == "rows"
        else {"minutes": [{"minute": minute, "tx_count": 1, "fee_total_sat": 1000}]}
    )
    response = client.post("/forecast", json=body)
    assert response.status_code == 422, response.text
    assert any(
        e["loc"] == ["body", kind, 0, "minute"] and message in e["msg"] for e in response.json()["detail"]
    ), response.json()
    # The schema says so too, for clients that generate requests from it.
    pattern = client.get("/openapi.json").json()["components"]["schemas"]["FeatureRowIn"]["properties"]["minute"]["pattern"]
    assert pattern.startswith("^(2009|2010|") and str(datetime.now(UTC).year) in pattern


def test_the_newest_closed_minute_and_a_feature_row_in_bounds_are_forecast(client: TestClient) -> None:
    columns = client.get("/model").json()["features"]
    now = f"{datetime.now(UTC):%Y-%m-%dT%H:%M:00Z}"
    response = client.post("/forecast", json={"rows": [{"minute": now, "features": dict.fromkeys(columns, 2.1e15)}]})
    assert response.status_code in (200, 422), response.text  # never a 500, even at the bounds
    beyond = client.post("/forecast", json={"rows": [{"minute": now, "features": dict.fromkeys(columns, 1e300)}]})
    assert beyond.status_code == 422
    assert any(e["loc"][:3] == ["body", "rows", 0] and "less than or equal" in e["msg"] for e in beyond.json()["detail"])


def test_bodies_over_the_limit_get_a_413_announced_or_streamed(bed: tuple[Settings, list[str]]) -> None:
    settings = bed[0].model_copy(update={"serving": bed[0].serving.model_copy(update={"max_body_bytes": 4096})})
    server = BackgroundServer(serving_app(settings)).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            big = b'{"rows": [' + b" " * 5000 + b"]}"
            announced = http.post("/forecast", content=big, headers={"content-type": "application/json"})
            assert announced.status_code == 413 and "max_body_bytes = 4096" in announced.json()["detail"]

            def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
                for _ in range(100):
                    yield b" " * 1000

            streamed = http.post("/forecast", content=chunks(), headers={"content-type": "application/json"})
            assert streamed.status_code == 413
            small = http.post("/forecast", json={"rows": []})
            assert small.status_code == 422  # under the limit: the body reaches validation
            assert http.get("/health").status_code == 200  # the service goes on
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("host", "status"),
    [("localhost", 200), ("127.0.0.1:8000", 200), ("[::1]:8000", 200), ("evil.example", 400), ("evil.example:80", 400), ("", 400)],
)
def test_only_allowed_host_headers_are_answered(client: TestClient, host: str, status: int) -> None:
    """DNS rebinding: a page at evil.example whose name resolves to 127.0.0.1 sends its own Host."""
    response = client.get("/health", headers={"host": host})
    assert response.status_code == status, response.text
    if status == 400:
        assert "serving.allowed_hosts" in response.json()["detail"]


def test_allowed_hosts_is_a_setting(bed: tuple[Settings, list[str]]) -> None:
    settings = bed[0].model_copy(
        update={"serving": bed[0].serving.model_copy(update={"allowed_hosts": ["rtml.internal"]})}
    )
    with TestClient(serving_app(settings), base_url="http://rtml.internal") as client:
        assert client.get("/health").status_code == 200
        assert client.get("/health", headers={"host": "localhost"}).status_code == 400


def test_the_dashboard_sends_a_content_security_policy_and_sandboxes_reports(
    bed: tuple[Settings, list[str]], client: TestClient
) -> None:
    page = client.get("/dashboard/")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy
    reports = bed[0].folder("reports")
    (reports / "test-report.html").write_text("<html><body><iframe srcdoc='x'></iframe></body></html>")
    report = client.get("/dashboard/reports/test-report.html")
    assert report.status_code == 200
    assert report.headers["content-security-policy"].startswith("sandbox allow-scripts")
    assert "allow-same-origin" not in report.headers["content-security-policy"]


def test_a_new_minute_in_the_store_moves_the_forecast(bed: tuple[Settings, list[str]], client: TestClient) -> None:
    """Features are recomputed only when the online read returns something new, and then at once."""
    settings, _ = bed
    before = client.get("/forecast").json()
    features = client.app.state.serving.features  # type: ignore[attr-defined]
    assert features.latest() is features.latest()
    newest = _minutes(settings)["minute"].max().to_pydatetime()
    added = MinuteFeatures.from_window(int((newest + timedelta(minutes=1)).timestamp() * 1000), 150, 150 * 90_000, 1)
    write_minutes(settings, [added])
    after = client.get("/forecast").json()
    assert datetime.fromisoformat(after["feature_time"]) == datetime.fromisoformat(before["feature_time"]) + timedelta(
        minutes=1
    )
    assert after["p50"] != before["p50"]


def test_the_champion_poll_sees_changes_in_quick_succession(
    bed: tuple[Settings, list[str]], champion_back: None
) -> None:
    from rtml.serving.real import RegistryModelSource

    settings, versions = bed
    source = RegistryModelSource(settings)
    assert source.champion_version() == versions[0]
    for version in [versions[1], versions[0], versions[1]]:
        registry.promote(settings, version, reason="test")
        assert source.champion_version() == version
    assert registry.rollback(settings) == versions[0]
    assert source.champion_version() == versions[0]


def test_forecasts_swaps_and_the_log_on_the_services_profile(
    services_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis online store, MLflow on PostgreSQL, the prediction log in PostgreSQL and the
    counters in Redis, all in a namespace of the test's own, purged afterwards."""
    from rtml.features.feast_repo import teardown
    from rtml.ops.purge import execute_purge, plan_purge

    monkeypatch.setenv("RTML_SERVING__ADMIN_TOKEN", TOKEN)
    settings = get_settings()
    assert settings.profile == "services"
    try:
        versions = seed_in_another_process()
        with TestClient(serving_app(settings), base_url="http://localhost") as client:
            first = client.get("/forecast")
            assert first.status_code == 200, first.text
            assert first.json()["model_version"] == versions[0]
            promoted = client.post("/admin/promote", json={"version": versions[1]}, headers=AUTH)
            assert promoted.json() == {"champion": versions[1], "serving": versions[1]}
            second = client.get("/forecast").json()
            assert second["model_version"] == versions[1]
            assert second["feature_time"] == first.json()["feature_time"]
            client.app.state.serving.log.flush()  # type: ignore[attr-defined]
        logged = read_predictions(settings)
        assert [(r.model_version, r.p50) for r in logged] == [
            (versions[0], first.json()["p50"]),
            (versions[1], second["p50"]),
        ]
        assert serving_counters(settings)["forecasts_online"] == 2
    finally:
        teardown(settings)
        execute_purge(settings, plan_purge(settings, services=True))


@pytest.mark.parametrize(
    "query", ["after_id=99999999999999999999999", "after_id=-1", "prefix=" + "x" * 101, "limit=0", "hours=1e400"]
)
def test_dashboard_queries_out_of_bounds_are_a_422(client: TestClient, query: str) -> None:
    path = "/dashboard/api/minutes" if query.startswith("hours") else "/dashboard/api/events"
    assert client.get(f"{path}?{query}").status_code == 422
