"""The window semantics of DESIGN.md, engine-free."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from rtml.aggregate.reference import reference_minutes
from rtml.aggregate.windows import MAX_TOTAL_SAT, ClockGuard, Window, WindowState
from rtml.contracts import CLOCK_CONFIRM_EVENTS, MAX_MONEY_SAT, MINUTE_MS, MinuteFeatures

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


# -- clock protection (ClockGuard) ------------------------------------------------------------
JUMP = 3600 * S


def _guarded() -> WindowState:
    return WindowState(lateness_ms=60 * S, guard=ClockGuard(JUMP, 60 * S))


def _normal(n: int, start: int = T0, step: int = 7 * S, first: int = 0) -> list[tuple[str, int, int]]:
    return [(_h(first + i), start + i * step, 100 + i) for i in range(n)]


def _run(w: WindowState, rows: list[tuple[str, int, int]], cut: int = 0) -> tuple[list[Window], list]:
    late = []
    for at in range(0, len(rows), cut or len(rows)):
        late += w.add(rows[at : at + (cut or len(rows))])
    late += w.settle()
    return w.pop_final() + w.drain(), late


def test_one_far_future_event_moves_nothing_and_is_a_clock_outlier() -> None:
    rows = _normal(60)
    hostile = (_h(999), T0 + 8 * 365 * 86_400 * S, 5)  # eight years ahead
    windows, late = _run(w := _guarded(), [*rows[:30], hostile, *rows[30:]])
    assert late == []
    assert [(e.tx_hash, e.reason.split(":")[0]) for e in w.guard.outliers] == [(_h(999), "clock outlier")]
    assert "window.max_jump_s = 3600" in w.guard.outliers[0].reason
    expected = reference_minutes([(h, t, f) for h, t, f in rows])
    assert [MinuteFeatures.from_window(x.minute, x.tx_count, x.fee_total_sat, 1) for x in windows] == expected
    assert len(windows) == 7  # 60 events 7 s apart: 7 minutes, no zero-filled years


def test_a_far_event_first_in_the_stream_is_refuted_by_the_events_after_it() -> None:
    rows = _normal(40)
    w = _guarded()
    windows, late = _run(w, [(_h(999), T0 + 10 * 365 * 86_400 * S, 1), *rows])
    assert late == [] and [e.tx_hash for e in w.guard.outliers] == [_h(999)]
    assert "a later event was" in w.guard.outliers[0].reason
    assert sum(x.tx_count for x in windows) == 40 and windows[0].minute == T0


def test_a_sparse_stream_that_really_jumps_loses_nothing() -> None:
    """Like the real 2020 recording: a few events, then days later a few more, ..."""
    rows = [(_h(i), T0 + (i // 3) * 2 * 86_400 * S + i * S, 1) for i in range(30)]
    tail = _normal(CLOCK_CONFIRM_EVENTS, start=rows[-1][1] + 60 * S, first=100)  # confirms the last jump
    w = _guarded()
    windows, late = _run(w, [*rows, *tail])
    assert late == [] and w.guard.outliers == []
    assert sum(x.tx_count for x in windows) == 30 + CLOCK_CONFIRM_EVENTS


def test_a_real_jump_is_confirmed_by_the_events_after_it_and_zero_fills_the_gap() -> None:
    before = _normal(20)
    after = _normal(20, start=T0 + 5 * 3600 * S, first=100)  # the stream really moved on 5 h
    w = _guarded()
    windows, late = _run(w, [*before, *after])
    assert late == [] and w.guard.outliers == []
    assert sum(x.tx_count for x in windows) == 40
    assert len(windows) == (after[-1][1] - T0) // MINUTE_MS + 1  # the real gap is zero-filled


def test_far_events_that_contradict_each_other_are_all_outliers() -> None:
    rows = _normal(30)
    liars = [
        (_h(500 + k), T0 + (40 - k) * 10 * JUMP, 1) for k in range(3 * CLOCK_CONFIRM_EVENTS)
    ]  # each behind the last
    w = _guarded()
    windows, late = _run(w, [*rows[:10], *liars, *rows[10:]])
    assert late == [] and sorted(e.tx_hash for e in w.guard.outliers) == sorted(h for h, _, _ in liars)
    assert sum(x.tx_count for x in windows) == 30 and len(windows) == 4


def test_confirmation_needs_enough_later_events() -> None:
    rows = _normal(20)
    jump = [(_h(300 + k), T0 + 5 * JUMP + k * S, 1) for k in range(CLOCK_CONFIRM_EVENTS)]
    w = _guarded()
    w.add([*rows, *jump])
    assert len(w.guard.held) == CLOCK_CONFIRM_EVENTS  # the first of them has 9 later events
    w.add([(_h(400), T0 + 5 * JUMP + 60 * S, 1)])
    assert w.guard.held == [] and w.max_event_time == T0 + 5 * JUMP + 60 * S


def test_held_events_at_the_end_of_input_are_outliers() -> None:
    w = _guarded()
    _run(w, [*_normal(20), (_h(77), T0 + 2 * JUMP, 1)])
    assert [e.tx_hash for e in w.guard.outliers] == [_h(77)] and "input ended" in w.guard.outliers[0].reason


def test_an_idle_advance_releases_a_held_event_it_catches_up_with() -> None:
    w = _guarded()
    w.add(_normal(20))
    w.add([(_h(77), T0 + 2 * JUMP, 1)])
    assert w.guard.held and w.advance(T0 + 2 * JUMP - JUMP // 2) == []
    assert not w.guard.held and w.max_event_time == T0 + 2 * JUMP


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=90), st.integers(min_value=0, max_value=89), st.integers(0, 3))
def test_the_guard_does_not_depend_on_batch_cuts(cut: int, at: int, far: int) -> None:
    rows = _normal(90)
    hostile = [(_h(900 + k), T0 + (k + 2) * 7 * JUMP, 1) for k in range(far)]
    stream = [*rows[:at], *hostile, *rows[at:]]
    whole, cut_up = _guarded(), _guarded()
    assert _run(whole, stream) == _run(cut_up, stream, cut)
    assert whole.guard.outliers == cut_up.guard.outliers and len(whole.guard.outliers) == far


def test_a_minute_total_never_passes_int64() -> None:
    w = _state()
    n = MAX_TOTAL_SAT // MAX_MONEY_SAT + 1  # 4,393 transactions each claiming all 21M BTC
    late = w.add([(_h(i), T0 + 1, MAX_MONEY_SAT) for i in range(n)])
    assert [e.reason.split(":")[0] for e in late] == ["overflow"]
    (window,) = w.drain()
    assert window.tx_count == n - 1 and window.fee_total_sat <= MAX_TOTAL_SAT
