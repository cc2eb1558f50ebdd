"""Forecast quality against what really happened: wQL, MAE and P10–P90 coverage.

A logged forecast is judged once its target minute has closed: it is joined with that
minute's actual `fee_avg_sat` (minutes without transactions have no average and judge
nothing). Quality is computed per hour of target minutes (what the alarm policy watches)
and over a sliding window (what the dashboard and `/metrics` show). Per-hour results are
kept in a small table, SQLite under the data directory (embedded) or PostgreSQL in the
namespace's schema (services), so each closed hour is judged once and its verdict is kept
(`QualityBackend`, one class per backend, chosen by `open_quality_store`).
"""

from __future__ import annotations

import time
from abc import abstractmethod
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from rtml.config import Settings
from rtml.contracts import datetime_to_ms, ms_to_datetime
from rtml.model.backtest import QUANTILES, evaluate, pinball
from rtml.serving.prediction_log import PredictionRecord
from rtml.spool import PgLink
from rtml.storage import Closeable, ensure_schema, pg_delete, sqlite_connect

if TYPE_CHECKING:
    import psycopg

QUANTILE_COLUMNS = ("p10", "p50", "p90")
FORECAST_COLUMNS = ("target_minute", *QUANTILE_COLUMNS, "model_version")


def join_actuals(forecasts: pd.DataFrame, minutes: pd.DataFrame) -> pd.DataFrame:
    """Forecasts with `y`, the actual `fee_avg_sat` of their target minute.

    One forecast per (target minute, model version) counts, the last logged: a client asking
    the same question twice must not weigh that minute double. Forecasts whose target minute
    has not closed yet, or closed without transactions, are left out.
    """
    missing = set(FORECAST_COLUMNS) - set(forecasts.columns)
    if missing:
        raise ValueError(f"forecasts frame lacks columns {sorted(missing)}")
    fc = forecasts.copy()
    fc["target_minute"] = pd.to_datetime(fc["target_minute"], utc=True)
    fc["model_version"] = fc["model_version"].astype(str)
    fc = fc.drop_duplicates(["target_minute", "model_version"], keep="last")
    actual = minutes.loc[:, ["minute", "fee_avg_sat"]].copy()
    actual["minute"] = pd.to_datetime(actual["minute"], utc=True)
    if "revision" in minutes.columns:
        actual["revision"] = minutes["revision"].to_numpy()
        actual = actual.sort_values(["minute", "revision"]).drop_duplicates("minute", keep="last")
    actual = actual.rename(columns={"minute": "target_minute", "fee_avg_sat": "y"})
    joined = fc.merge(actual[["target_minute", "y"]], on="target_minute", how="inner")
    joined = joined[joined["y"].notna()].sort_values("target_minute").reset_index(drop=True)
    joined["y"] = joined["y"].astype(float)
    y = joined["y"].to_numpy(float)
    preds = joined[list(QUANTILE_COLUMNS)].to_numpy(float)
    # Per-row parts of the metrics, so a sliding window is a ratio of rolling sums.
    joined["pinball_sum"] = sum(pinball(y, preds[:, i], q) for i, q in enumerate(QUANTILES))
    joined["abs_y"] = np.abs(y)
    joined["abs_err"] = np.abs(y - preds[:, 1])
    joined["covered"] = ((y >= preds[:, 0]) & (y <= preds[:, 2])).astype(float)
    return joined


def hourly_quality(joined: pd.DataFrame) -> pd.DataFrame:
    """Quality per UTC hour of target minutes, with the model version that served most of it."""
    columns = ["hour", "n", "wql", "mae", "coverage", "model_version"]
    if joined.empty:
        return pd.DataFrame(columns=columns)
    hours = joined["target_minute"].dt.floor("h")
    rows = []
    for hour, group in joined.groupby(hours, sort=True):
        q = evaluate(group["y"].to_numpy(float), group[list(QUANTILE_COLUMNS)].to_numpy(float))
        version = str(group["model_version"].mode().iloc[0])
        rows.append((hour, q.n, q.wql, q.mae, q.coverage, version))
    return pd.DataFrame(rows, columns=columns)


def sliding_quality(joined: pd.DataFrame, window_minutes: int = 60) -> pd.DataFrame:
    """Quality over the trailing `window_minutes` of target minutes, at every target minute."""
    columns = ["target_minute", "n", "wql", "mae", "coverage"]
    if joined.empty:
        return pd.DataFrame(columns=columns)
    per_minute = joined.groupby("target_minute")[["pinball_sum", "abs_y", "abs_err", "covered"]].sum()
    per_minute["n"] = joined.groupby("target_minute").size()
    rolled = per_minute.rolling(f"{window_minutes}min").sum()
    out = pd.DataFrame(
        {
            "target_minute": rolled.index,
            "n": rolled["n"].to_numpy(int),
            "wql": (2 * rolled["pinball_sum"] / rolled["abs_y"] / len(QUANTILES)).to_numpy(),
            "mae": (rolled["abs_err"] / rolled["n"]).to_numpy(),
            "coverage": (rolled["covered"] / rolled["n"]).to_numpy(),
        }
    )
    return out.reset_index(drop=True)


@dataclass(frozen=True)
class HourVerdict:
    """One judged hour as kept in the quality store."""

    hour: datetime
    n: int
    wql: float
    mae: float
    coverage: float
    model_version: str
    breach: bool


class QualityBackend(Closeable):
    """Judged hours, one row each (upsert by hour): the alarm policy's memory and a dashboard series."""

    DDL = (
        "CREATE TABLE IF NOT EXISTS {t} (hour_ms BIGINT PRIMARY KEY, n INTEGER NOT NULL, "
        "wql DOUBLE PRECISION NOT NULL, mae DOUBLE PRECISION NOT NULL, coverage DOUBLE PRECISION NOT NULL, "
        "model_version TEXT NOT NULL, breach INTEGER NOT NULL, judged_ms BIGINT NOT NULL)"
    )

    table: str

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @abstractmethod
    def _run(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Run one statement (`?` marks its parameters); its rows (none for a write)."""

    @abstractmethod
    def _delete(self, sql: str, params: tuple) -> int:
        """Run one DELETE (`?` marks); how many rows went."""

    def trim(self, before_ms: int) -> int:
        """Retention: forget judged hours before `before_ms` (they go with their forecasts)."""
        return self._delete(f"DELETE FROM {self.table} WHERE hour_ms < ?", (before_ms,))

    def put(self, verdict: HourVerdict) -> None:
        self._run(
            f"INSERT INTO {self.table} (hour_ms, n, wql, mae, coverage, model_version, breach, judged_ms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (hour_ms) DO UPDATE SET n = excluded.n, "
            "wql = excluded.wql, mae = excluded.mae, coverage = excluded.coverage, "
            "model_version = excluded.model_version, breach = excluded.breach, judged_ms = excluded.judged_ms",
            (
                datetime_to_ms(verdict.hour),
                verdict.n,
                verdict.wql,
                verdict.mae,
                verdict.coverage,
                verdict.model_version,
                int(verdict.breach),
                int(time.time() * 1000),
            ),
        )

    def hours(self, limit: int = 24 * 14) -> list[HourVerdict]:
        """The last `limit` judged hours, oldest first."""
        rows = self._run(
            f"SELECT hour_ms, n, wql, mae, coverage, model_version, breach FROM {self.table} "
            "ORDER BY hour_ms DESC LIMIT ?",
            (limit,),
        )
        return [
            HourVerdict(ms_to_datetime(r[0]), r[1], r[2], r[3], r[4], r[5], bool(r[6])) for r in reversed(rows)
        ]

    def count(self) -> int:
        """How many hours were judged."""
        return int(self._run(f"SELECT count(*) FROM {self.table}")[0][0])

    def last_hour(self) -> datetime | None:
        rows = self._run(f"SELECT MAX(hour_ms) FROM {self.table}")
        return ms_to_datetime(rows[0][0]) if rows and rows[0][0] is not None else None


class SqliteQualityStore(QualityBackend):
    """The table `quality_hours` in `<data_dir>/monitoring.sqlite` (synchronous FULL: a verdict
    is written once per hour, and an OS crash must not lose it)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.table = "quality_hours"
        self._db = sqlite_connect(
            settings.path("monitoring.sqlite"), timeout=30, synchronous="FULL", check_same_thread=True
        )
        self._db.execute(self.DDL.format(t=self.table))

    def _run(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self._db.execute(sql, params).fetchall()

    def _delete(self, sql: str, params: tuple) -> int:
        return int(self._db.execute(sql, params).rowcount)

    def close(self) -> None:
        self._db.close()


class PostgresQualityStore(QualityBackend):
    """The table `quality_hours` in the namespace's schema."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.table = f'"{settings.namespace}".quality_hours'
        # The monitor keeps this store open across boundaries: a PostgreSQL restart must
        # not leave it holding a dead connection (the link opens a new one).
        self._link = PgLink(settings.postgres_dsn, self._create)

    def _create(self, conn: psycopg.Connection) -> None:
        ensure_schema(conn, self.settings)
        conn.execute(self.DDL.format(t=self.table))

    def _run(self, sql: str, params: tuple = ()) -> list[tuple]:
        cur = self._link.conn.execute(sql.replace("?", "%s"), params)
        return cur.fetchall() if cur.description else []

    def _delete(self, sql: str, params: tuple) -> int:
        return pg_delete(self._link.conn, self.table, sql.replace("?", "%s"), params)

    def close(self) -> None:
        self._link.close()


_QUALITY_BACKENDS: dict[str, type[QualityBackend]] = {"sqlite": SqliteQualityStore, "postgres": PostgresQualityStore}


def open_quality_store(settings: Settings) -> QualityBackend:
    """The quality store of the settings' profile."""
    return _QUALITY_BACKENDS[settings.backend("quality")](settings)


# The name the quality store has always been opened by (`QualityStore(settings)`).
QualityStore = open_quality_store


def forecasts_frame(records: list[PredictionRecord]) -> pd.DataFrame:
    """Logged forecasts (the serving prediction log) as a frame `join_actuals` takes."""
    frame = pd.DataFrame(
        {
            "logged_ms": [r.logged_ms for r in records],
            "target_minute": pd.to_datetime([r.target_minute_ms for r in records], unit="ms", utc=True),
            "p10": [r.p10 for r in records],
            "p50": [r.p50 for r in records],
            "p90": [r.p90 for r in records],
            "model_version": [r.model_version for r in records],
            "latency_ms": [r.latency_ms for r in records],
        }
    )
    return frame.sort_values("logged_ms", kind="stable").reset_index(drop=True)
