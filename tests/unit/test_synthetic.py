"""The synthetic source against the real recordings it was calibrated on."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from rtml.contracts import parse_message
from rtml.sources.synthetic import RegimeShift, SyntheticConfig, SyntheticSource, to_utx_message


def frame(config: SyntheticConfig) -> pd.DataFrame:
    return pd.DataFrame([e.to_dict() for e in SyntheticSource(config).events()])


def test_same_seed_same_events_other_seed_other_events() -> None:
    cfg = SyntheticConfig(seed=3, minutes=30)
    assert list(SyntheticSource(cfg).events()) == list(SyntheticSource(cfg).events())
    assert list(SyntheticSource(SyntheticConfig(seed=4, minutes=30)).events()) != list(
        SyntheticSource(cfg).events()
    )


def test_wire_form_parses_back_to_the_event() -> None:
    for event in list(SyntheticSource(SyntheticConfig(minutes=2)).events())[:50]:
        back = parse_message(to_utx_message(event), event.source, event.ingest_time)
        assert (back.tx_hash, back.fee_sat, back.size) == (event.tx_hash, event.fee_sat, event.size)
        assert back.event_time == event.event_time // 1000 * 1000


def test_regime_shift_multiplies_fees() -> None:
    df = frame(SyntheticConfig(minutes=6 * 60, shift=RegimeShift(at_minute=180, ramp_minutes=30)))
    minute = (df.event_time - df.event_time.min()) // 60_000
    before = df.fee_sat[minute < 180].median()
    after = df.fee_sat[minute >= 210].median()
    assert 2.0 < after / before < 5.0


def test_per_minute_statistics_match_the_recordings(shared_data: Path) -> None:
    """Tolerances: tx/min mean within 10 %, hour-of-day profile correlation > 0.7, per-tx fee
    P10/P50/P90 within 25 % and per-minute average fee mean within 20 % of the real values."""
    # Arrival rate and rhythm: per-block transaction counts, 2021-06-26..07-26.
    blocks = pd.read_csv(shared_data / "blocks-2021-06-26_2021-07-26.csv", usecols=["tmst", "txs"])
    blocks["t"] = pd.to_datetime(blocks.tmst, utc=True)
    real_rate = blocks.txs.sum() / ((blocks.t.max() - blocks.t.min()).total_seconds() / 60)
    real_profile = blocks.groupby(blocks.t.dt.hour).txs.sum()
    # Fees: the dense last 24 h of the mempool snapshot.
    mempool = pd.read_csv(
        shared_data / "mempool-snapshot-2020-11-24.tsv.gz", sep=";", usecols=["fee", "time"]
    )
    mempool["t"] = pd.to_datetime(mempool.time)
    mempool = mempool[mempool.t >= mempool.t.max() - pd.Timedelta(hours=24)]
    real_fee = (mempool.fee * 1e8).round()

    df = frame(SyntheticConfig(seed=11, start=datetime(2024, 10, 1, tzinfo=UTC), minutes=7 * 24 * 60))
    df["t"] = pd.to_datetime(df.event_time, unit="ms", utc=True)
    per_minute = df.groupby(df.event_time // 60_000).fee_sat.agg(["size", "mean"])
    synth_profile = df.groupby(df.t.dt.hour).size()

    assert abs(per_minute["size"].mean() / real_rate - 1) < 0.10
    assert np.corrcoef(real_profile.to_numpy(), synth_profile.to_numpy())[0, 1] > 0.7
    assert per_minute["size"].std() > 0.15 * per_minute["size"].mean()  # overdispersed, not a flat rate
    for q in (0.1, 0.5, 0.9):
        assert abs(df.fee_sat.quantile(q) / real_fee.quantile(q) - 1) < 0.25, q
    assert abs(per_minute["mean"].mean() / real_fee.mean() - 1) < 0.20
