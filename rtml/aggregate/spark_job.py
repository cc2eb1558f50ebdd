"""The distributed aggregation engine: the window semantics as a Spark Structured Streaming job.

Spark does the heavy, parallel part: read the stream (`spark_source`, offsets in the Spark
checkpoint), drop duplicate tx_hash within the watermark, and sum 1-minute event-time
windows behind `withWatermark(allowed lateness)`. The query runs in *update* mode, so each
micro-batch hands `foreachBatch` the current totals of the windows it changed. The driver
then decides what is final with the very same `windows.WindowState` the embedded engine
uses (watermark = max event time - lateness, empty minutes as zeros, drain and revisions),
so both engines emit identical MinuteFeatures.

Exactly-once effect over at-least-once delivery: `foreachBatch` may see a batch id twice
(a crash after the sink write, before Spark's commit). The driver state (a small JSON file
beside the checkpoint, `spark_state`) records the last applied batch id and the rows to deliver (outbox),
written atomically before delivery; a replayed batch is skipped, a crash before delivery
re-delivers the outbox on restart, and every sink is an idempotent upsert keyed by minute.

Run it with `rtml aggregate --engine spark [--drain]` (local[2] by default), or submit it to
a cluster with `scripts/spark-submit.sh`, which runs `rtml.aggregate.commands` (`spark_main()`,
where the composition root hands the job its sinks).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rtml.aggregate.sinks import MinuteSink
from rtml.aggregate.spark_state import DriverState, checkpoint_dir, guard_path, state_path
from rtml.aggregate.spark_state import spark_counters as spark_counters  # the README names it here
from rtml.aggregate.windows import NO_WATERMARK, ClockGuard
from rtml.config import Settings
from rtml.contracts import MINUTE_MS

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

DEFAULT_MASTER = "local[2]"


def spark_session(master: str | None = None, app_name: str = "rtml-aggregate") -> SparkSession:
    """A session for the job: `master` if given, else the one spark-submit set, else local[2]."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if master or not SparkConf().contains("spark.master"):
        builder = builder.master(master or os.environ.get("RTML_SPARK_MASTER", DEFAULT_MASTER))
    for key, value in {
        "spark.sql.shuffle.partitions": "2",
        "spark.ui.showConsoleProgress": "false",
        "spark.ui.enabled": "false",
        "spark.sql.session.timeZone": "UTC",
    }.items():
        if not SparkConf().contains(key):
            builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def minute_totals(
    spark: SparkSession, settings: Settings, max_rows_per_batch: int, guard: str | None = None
) -> DataFrame:
    """The streaming query: dedup tx_hash within the watermark, sum 1-minute event-time windows.

    With `guard` (a file path) the source applies the window semantics' clock guard first, so
    an event far ahead of the stream never reaches Spark's watermark."""
    from pyspark.sql import functions as F

    from rtml.aggregate.spark_source import RtmlStreamSource, source_options

    spark.dataSource.register(RtmlStreamSource)
    lateness_ms = int(settings.window.allowed_lateness_s * 1000)
    events = (
        spark.readStream.format(RtmlStreamSource.name())
        .options(**source_options(settings, max_rows_per_batch=max_rows_per_batch, guard_path=guard))
        .load()
        .select("tx_hash", "event_time", "fee_sat", F.timestamp_millis("event_time").alias("ts"))
        .withWatermark("ts", f"{lateness_ms} milliseconds")
        .dropDuplicatesWithinWatermark(["tx_hash"])
    )
    return events.groupBy(F.window("ts", "1 minute").alias("w")).agg(
        F.unix_millis(F.col("w.start")).alias("minute"),
        F.count("*").alias("tx_count"),
        # No overflow: summed as decimal(38, 0) (room for 4.7e22 fees of 21M BTC), so Spark's
        # ANSI mode can never fail the query on a sum; the driver applies the int64 bound of
        # the window semantics (windows.MAX_TOTAL_SAT) before any store sees the total.
        F.sum(F.col("fee_sat").cast("decimal(38,0)")).alias("fee_total_sat"),
        F.max("event_time").alias("max_event_time"),
    )


@dataclass
class SparkRun:
    """What a run did."""

    batches: int
    emitted: int
    seconds: float


class _Driver:
    """The driver side of one run: applies micro-batches and idle advances under one lock.

    `foreachBatch` calls arrive on a Py4J callback thread while the main thread watches the
    query and the idle clock, hence the lock.
    """

    def __init__(
        self,
        state: DriverState,
        sinks: Sequence[MinuteSink],
        on_batch: Callable[[int, int], None] | None,
        settings: Settings | None = None,
        guard: str | None = None,
    ):
        self.state = state
        self.sinks = sinks
        self.on_batch = on_batch
        self.settings = settings
        self.guard = guard
        self.lock = threading.Lock()
        self.batches = 0
        self.last_data = time.monotonic()
        self.emitted = state.deliver(sinks)  # a crash between commit and delivery left rows here

    def micro_batch(self, df: DataFrame, batch_id: int) -> None:
        rows = [
            (m, c, int(t), e)
            for m, c, t, e in df.select("minute", "tx_count", "fee_total_sat", "max_event_time").collect()
        ]
        self.dead_letter_outliers()
        with self.lock:
            if not self.state.apply(batch_id, rows):
                return  # a replayed batch: its effect is already committed
            if rows:
                self.last_data = time.monotonic()
            self.state.save()
            delivered = self.state.deliver(self.sinks)
            self.emitted += delivered
            self.batches += 1
        if self.on_batch is not None:
            self.on_batch(batch_id, delivered)

    def idle_tick(self, idle_ms: float) -> None:
        """A quiet stream still closes windows: the embedded engine's wall-clock advance."""
        with self.lock:
            w = self.state.windows
            quiet_ms = (time.monotonic() - self.last_data) * 1000
            if self.batches and quiet_ms >= idle_ms and w.max_event_time != NO_WATERMARK:
                self.state.advance(w.max_event_time + int(quiet_ms) - w.lateness_ms)
                self._commit()

    def drain(self) -> None:
        with self.lock:
            self._settle_guard()
            self.state.drain()
            self._commit()
        self.dead_letter_outliers()

    def _settle_guard(self) -> None:
        """End of input: the source's held events are decided as the embedded engine decides them."""
        from rtml.aggregate.spark_source import load_guard, save_guard

        if self.guard is None:
            return
        doc = load_guard(self.guard)
        if not doc["states"]:
            return
        last = next(reversed(doc["states"]))
        top, held = doc["states"][last]
        assert self.settings is not None
        guard = ClockGuard(
            int(self.settings.window.max_jump_s * 1000),
            self.state.windows.lateness_ms,
            [tuple(r) for r, _ in held],
        )
        wm = top - self.state.windows.lateness_ms if top != NO_WATERMARK else NO_WATERMARK
        released = guard.settle(wm)
        w = self.state.windows
        counted: set[str] = set()
        for tx_hash, et, fee, *_ in released:  # only before any watermark: no window is final yet
            if tx_hash in counted:
                continue
            counted.add(tx_hash)
            minute = et - et % MINUTE_MS
            window = w.open.setdefault(minute, [0, 0, set()])
            window[0] += 1
            window[1] += fee
            w.next_emit = minute if w.next_emit is None else min(w.next_emit, minute)
            w.max_minute = minute if w.max_minute is None else max(w.max_minute, minute)
            w.max_event_time = max(w.max_event_time, et)
        doc["states"][last] = [max([top, *(r[1] for r in released)]), []]
        doc["outliers"]["drain"] = [[e.tx_hash, e.event_time, e.fee_sat, e.reason] for e in guard.outliers]
        save_guard(self.guard, doc)

    def dead_letter_outliers(self) -> None:
        """The source's clock outliers into the dead-letter store (as the embedded engine does)."""
        from rtml.aggregate.outliers import record_outliers
        from rtml.aggregate.spark_source import take_outliers

        if self.guard is not None and self.settings is not None:
            outliers = take_outliers(self.guard)
            if outliers:
                record_outliers(self.settings, outliers, self.state.windows.watermark)

    def _commit(self) -> None:
        if self.state.outbox:
            self.state.save()
            self.emitted += self.state.deliver(self.sinks)


def run_spark(
    settings: Settings,
    *,
    drain: bool,
    checkpoint: str | None = None,
    master: str | None = None,
    trigger_s: float = 1.0,
    max_rows_per_batch: int = 100_000,
    sinks: Sequence[MinuteSink],
    stop: threading.Event | None = None,
    spark: SparkSession | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> SparkRun:
    """Run the job: `drain` reads what the stream holds now (AvailableNow) then closes every
    window; otherwise it follows the stream until `stop` is set (or SIGINT/SIGTERM via `run_command`).

    `spark`: an existing session to reuse (else one is built, and stopped at the end).
    `on_batch(batch_id, rows_delivered)` is called after each applied micro-batch.
    """
    started = time.monotonic()
    ckpt = checkpoint_dir(settings, checkpoint)
    state = DriverState(state_path(settings, ckpt), int(settings.window.allowed_lateness_s * 1000))
    guard = guard_path(settings, ckpt)
    driver = _Driver(state, list(sinks), on_batch, settings, guard)
    stop = stop if stop is not None else threading.Event()
    session = spark if spark is not None else spark_session(master)
    try:
        writer = (
            minute_totals(session, settings, max_rows_per_batch, guard)
            .writeStream.outputMode("update")
            .foreachBatch(driver.micro_batch)
            .option("checkpointLocation", ckpt)
            .queryName(f"rtml_aggregate_{settings.namespace}")
        )
        if drain:
            writer = writer.trigger(availableNow=True)
        else:
            writer = writer.trigger(processingTime=f"{trigger_s} seconds")
        query = writer.start()
        try:
            while query.isActive and not stop.is_set():
                query.awaitTermination(0.5)  # type: ignore[arg-type]  # seconds, floats accepted
                if not drain:
                    driver.idle_tick(settings.window.idle_timeout_s * 1000)
        finally:
            if query.isActive:
                query.stop()
        failure = query.exception()
        if failure is not None:
            raise RuntimeError(f"the Spark query failed: {failure}")
        if drain and not stop.is_set():
            driver.drain()
    finally:
        if spark is None:
            session.stop()  # also lets the driver process exit under spark-submit
    return SparkRun(batches=driver.batches, emitted=driver.emitted, seconds=time.monotonic() - started)


def run_command(
    settings: Settings,
    *,
    sinks: Sequence[MinuteSink],
    drain: bool,
    checkpoint: str | None = None,
    master: str | None = None,
    trigger_s: float = 1.0,
    max_rows_per_batch: int = 100_000,
) -> SparkRun:
    """`rtml aggregate --engine spark`: live until SIGTERM/SIGINT (stopping cleanly), or `drain`."""
    import signal

    from rich.console import Console

    console = Console(stderr=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ckpt = checkpoint_dir(settings, checkpoint)
    with console.status(
        f"starting Spark ({master or 'local[2] unless submitted'}), checkpoint {ckpt}"
    ) as status:
        result = run_spark(
            settings,
            drain=drain,
            sinks=sinks,
            checkpoint=ckpt,
            master=master,
            trigger_s=trigger_s,
            max_rows_per_batch=max_rows_per_batch,
            stop=stop,
            on_batch=lambda b, n: status.update(f"Spark micro-batch {b} done, {n} minute rows delivered"),
        )
    console.print(
        f"{result.batches} micro-batches, {result.emitted:,} minute rows delivered in {result.seconds:.1f} s"
    )
    return result
