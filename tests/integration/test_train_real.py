"""Real traffic end to end: the recorded blockchain.com `utx` day through the stream and the
aggregation engine into minutes, then training, backtest, gate and registry."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from test_train import embedded, empty_mlflow_db  # noqa: F401  (fixtures: a ready MLflow store)

from rtml.aggregate.embedded import Engine
from rtml.aggregate.reference import load_replay
from rtml.aggregate.sinks import read_minutes
from rtml.config import Settings
from rtml.features.dataset import minutes_frame
from rtml.model import registry
from rtml.model.train import train
from rtml.pipeline import minute_sinks
from rtml.stream import open_stream

REPLAY = "utx-2020-11-24.jsonl.gz"


def test_training_runs_end_to_end_on_the_real_recording(embedded: Settings, shared_data: Path) -> None:  # noqa: F811
    settings = embedded
    with open_stream(settings) as stream:
        stream.append_rows(load_replay(shared_data / REPLAY))
    engine = Engine(settings, sinks=minute_sinks(settings))
    try:
        engine.drain()
    finally:
        engine.close()
    minutes = minutes_frame(read_minutes(settings))
    assert int(minutes["tx_count"].sum()) == 26_332

    result = train(settings, minutes=minutes)

    summary = result.backtest.summary
    print(f"\nreal recording, {result.rows:,} rows, {len(result.backtest.folds)} folds:")
    for name, m in sorted(summary.items(), key=lambda kv: kv[1].wql):
        print(f"  {name:24s} wQL {m.wql:.4f}  MAE {m.mae:8,.0f}  coverage {m.coverage:.1%}")
    print("  " + result.line())
    assert len(result.backtest.folds) >= 5
    assert {"lightgbm", "last_value", "rolling_mean_15", "rolling_mean_60"} <= set(summary)
    # the recording is dense only on its last day and a half: a noisy target, but the model
    # must at least beat carrying the last minute forward by a wide margin
    assert summary["lightgbm"].wql < 0.85 * summary["last_value"].wql
    assert minutes["minute"].iloc[0] <= result.train_start < result.train_end
    assert result.train_end == pd.Timestamp("2020-11-24 10:09", tz="UTC")  # end of the last minute
    version = registry.list_versions(settings)[0]
    assert version["version"] == result.version
    assert version["gate"] == ("promoted" if result.promoted else "rejected")
    assert version["train_end"] == result.train_end.isoformat()
