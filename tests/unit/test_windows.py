"""The window semantics of DESIGN.md, engine-free."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from rtml.aggregate.reference import reference_minutes
from rtml.aggregate.windows import MINUTE_MS, Window, WindowState
from rtml.contracts import MinuteFeatures

T0 = 1_606_000_000_000 - 1_606_000_000_000 % MINUTE_MS  # a UTC minute boundary
S = 1000


def _h(i: int) -> str:
    return f"{i:064x}"


def _state() -> WindowState:
    return WindowState(lateness_ms=60 * S)


def test_windows_close_when_the_watermark_passes_their_end() -> None:
    w = _state()
    w.add([(_h(1), T0 + 5 * S, 100), (_h(2), T0 + 59 * S, 50)])
    assert w.pop_final() == []
    w.add([(_h(3), T0 + 119 * S, 7)])  # watermark T0+59s: minute 0 still open
    assert w.pop_final() == []
    w.add([(_h(4), T0 + 120 * S, 1)])  # watermark = T0+60s = end of minute 0
    assert w.pop_final() == [Window(T0, 2, 150, 1)]
    assert w.pop_final() == []


def test_empty_minutes_between_seen_minutes_are_emitted_with_zeros() -> None:
    w = _state()
    w.add([(_h(1), T0 + 1 * S, 10), (_h(2), T0 + 3 * MINUTE_MS + 1 * S, 20)])
    w.add([(_h(3), T0 + 10 * MINUTE_MS, 5)])
    assert w.pop_final() == [
        Window(T0, 1, 10, 1),
        Window(T0 + MINUTE_MS, 0, 0, 1),
        Window(T0 + 2 * MINUTE_MS, 0, 0, 1),
        Window(T0 + 3 * MINUTE_MS, 1, 20, 1),
        *[Window(T0 + k * MINUTE_MS, 0, 0, 1) for k in range(4, 9)],
    ]


def test_events_behind_the_watermark_are_late_with_a_reason_and_not_added() -> None:
    w = _state()
    w.add([(_h(1), T0 + 10 * S, 1), (_h(2), T0 + 130 * S, 2)])  # watermark T0+70s
    late = w.add([(_h(3), T0 + 69 * S, 4), (_h(4), T0 + 70 * S, 8)])
    assert [(e.tx_hash, e.watermark) for e in late] == [(_h(3), T0 + 70 * S)]
    assert late[0].reason == "late: 1000 ms behind the watermark"
    assert w.late == 1 and w.events_in == 4
    assert w.pop_final() == [Window(T0, 1, 1, 1)]
    assert w.drain() == [Window(T0 + MINUTE_MS, 1, 8, 1), Window(T0 + 2 * MINUTE_MS, 1, 2, 1)]


def test_out_of_order_within_lateness_is_counted_and_duplicates_count_once() -> None:
    w = _state()
    w.add([(_h(1), T0 + 50 * S, 1), (_h(2), T0 + 20 * S, 2), (_h(1), T0 + 50 * S, 1)])
    w.add([(_h(0), T0 - 5 * S, 4), (_h(2), T0 + 20 * S, 2)])  # an earlier minute, still open
    assert w.duplicates == 2
    assert w.drain() == [Window(T0 - MINUTE_MS, 1, 4, 1), Window(T0, 2, 3, 1)]


def test_drain_is_provisional_and_later_events_bump_the_revision() -> None:
    w = _state()
    w.add([(_h(1), T0 + 1 * S, 1), (_h(2), T0 + 61 * S, 2)])
    assert w.drain() == [Window(T0, 1, 1, 1), Window(T0 + MINUTE_MS, 1, 2, 1)]
    assert w.drain() == []  # nothing new: nothing re-emitted
    w.add([(_h(3), T0 + 2 * S, 4)])  # still behind no watermark: minute 0 changes
    w.add([(_h(4), T0 + 200 * S, 8)])  # watermark T0+140s closes minutes 0 and 1
    assert w.pop_final() == [Window(T0, 2, 5, 2)]  # minute 1 unchanged since the drain
    assert w.drain() == [Window(T0 + 2 * MINUTE_MS, 0, 0, 1), Window(T0 + 3 * MINUTE_MS, 1, 8, 1)]


def test_idle_advance_closes_a_quiet_stream() -> None:
    w = _state()
    w.add([(_h(1), T0 + 1 * S, 1)])
    w.advance(T0 + 30 * S)
    assert w.pop_final() == []
    w.advance(T0 + 60 * S)
    assert w.pop_final() == [Window(T0, 1, 1, 1)]
    assert [e.tx_hash for e in w.add([(_h(2), T0 + 59 * S, 1)])] == [_h(2)]


def _result(state: WindowState) -> tuple[list[Window], int, int]:
    return state.drain(), state.late, state.duplicates


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 600)), min_size=1, max_size=120),
    st.lists(st.integers(1, 30), min_size=1, max_size=10),
)
def test_batch_boundaries_never_change_the_result(events: list[tuple[int, int]], cuts: list[int]) -> None:
    """A restart re-reads from another batch boundary: the state must not depend on them."""
    rows = [(_h(k), T0 + t * S, k * 3) for k, t in events]
    one = _state()
    one.add(rows)
    one_final = one.pop_final()
    many = _state()
    many_final: list[Window] = []
    i = 0
    for n in cuts * 200:
        if i >= len(rows):
            break
        many.add(rows[i : i + n])
        many_final += many.pop_final()
        i += n
    assert many_final == one_final
    assert _result(many) == _result(one)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 30), st.integers(0, 900), st.integers(0, 10_000)), min_size=1, max_size=200
    ),
    st.integers(0, 59),
    st.randoms(use_true_random=False),
)
def test_bounded_disorder_equals_the_pandas_reference(
    events: list[tuple[int, int, int]], max_delay_s: int, rnd: random.Random
) -> None:
    """Any delivery whose disorder stays within the lateness gives exactly the batch answer."""
    rows = [(_h(k), T0 + t * S, fee) for k, t, fee in events]
    # Same tx_hash, same transaction: a re-sent duplicate carries the same time and fee.
    first = {}
    for r in rows:
        first.setdefault(r[0], r)
    rows = [first[r[0]] for r in rows]
    delivered = sorted(rows, key=lambda r: r[1] + rnd.uniform(0, max_delay_s * S))
    state = _state()
    state.add(delivered)
    got = [
        MinuteFeatures.from_window(w.minute, w.tx_count, w.fee_total_sat, w.revision) for w in state.drain()
    ]
    assert state.late == 0
    assert got == reference_minutes(rows)
