"""The decision core: countdown continuity, restarts, and what is never done."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import attrs
from hypothesis import given
from hypothesis import strategies as st

from asklepios.core.judge import Action, State, Timing, judge, notready_mark
from asklepios.core.node import (
    EXCLUDE_LABEL,
    OUT_OF_SERVICE_TAINT,
    KickoutRecord,
    NodeView,
    ReadyStatus,
    Taint,
)

T0 = datetime(2026, 3, 5, 5, 43, 6, tzinfo=UTC)
TIMING = Timing(kickout=timedelta(seconds=60), kickin=timedelta(seconds=60))


def node(ready: ReadyStatus, since: datetime | None = T0, **kw: object) -> NodeView:
    return NodeView(name="control2", ready=ready, ready_since=since, **kw)  # type: ignore[arg-type]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_ready_node_is_left_alone() -> None:
    verdict = judge(node(ReadyStatus.TRUE), now=at(1000), timing=TIMING, mark=None)
    assert verdict.state is State.READY
    assert verdict.action is None
    assert verdict.deadline is None


def test_notready_counts_down_then_kicks_out_at_the_deadline() -> None:
    view = node(ReadyStatus.FALSE)
    mark = notready_mark(view, None, at(5))
    before = judge(view, now=at(59.999), timing=TIMING, mark=mark)
    assert (before.state, before.action, before.deadline) == (State.COUNTING_DOWN, None, at(60))
    due = judge(view, now=at(60), timing=TIMING, mark=mark)
    assert due.action is Action.KICKOUT


def test_hold_stops_a_due_kickout_but_not_the_countdown() -> None:
    view = node(ReadyStatus.UNKNOWN)
    mark = notready_mark(view, None, at(0))
    assert judge(view, now=at(10), timing=TIMING, mark=mark, hold="x").state is State.COUNTING_DOWN
    held = judge(view, now=at(61), timing=TIMING, mark=mark, hold="too many")
    assert (held.state, held.action, held.reason) == (State.HELD, None, "too many")


def test_excluded_and_legacy_skip_nodes_are_never_kicked_out() -> None:
    skip = Taint("node.kubernetes.io/asklepios", "skip", "NoExecute")
    for view in (
        node(ReadyStatus.FALSE, labels={EXCLUDE_LABEL: "true"}),
        node(ReadyStatus.FALSE, taints=(skip,)),
    ):
        verdict = judge(view, now=at(10_000), timing=TIMING, mark=notready_mark(view, None, at(0)))
        assert verdict.state is State.EXCLUDED
        assert verdict.action is None


def test_missing_ready_condition_counts_as_notready_from_first_sight() -> None:
    view = node(ReadyStatus.MISSING, since=None)
    mark = notready_mark(view, None, at(30))
    assert judge(view, now=at(31), timing=TIMING, mark=mark).deadline == at(90)


def test_kicked_out_node_counts_up_from_ready_and_kicks_in() -> None:
    record = KickoutRecord(at=at(60), cordoned=True, tainted=True)
    view = node(ReadyStatus.TRUE, since=at(300), kickout=record, unschedulable=True, taints=(OUT_OF_SERVICE_TAINT,))
    up = judge(view, now=at(330), timing=TIMING, mark=None)
    assert (up.state, up.action, up.deadline) == (State.COUNTING_UP, None, at(360))
    assert judge(view, now=at(360), timing=TIMING, mark=None).action is Action.KICKIN


def test_kicked_out_node_still_down_is_repaired_only_for_what_we_did() -> None:
    ours = KickoutRecord(at=at(60), cordoned=True, tainted=True)
    view = node(ReadyStatus.UNKNOWN, kickout=ours, unschedulable=True)  # taint removed by someone
    verdict = judge(view, now=at(100), timing=TIMING, mark=None)
    assert verdict.action is Action.REPAIR
    assert "taint" in verdict.reason
    not_ours = KickoutRecord(at=at(60), cordoned=False, tainted=False)  # both pre-existed
    view = node(ReadyStatus.UNKNOWN, kickout=not_ours)
    assert judge(view, now=at(100), timing=TIMING, mark=None).action is None


statuses = st.sampled_from([ReadyStatus.FALSE, ReadyStatus.UNKNOWN])


@given(
    flips=st.lists(st.tuples(statuses, st.floats(0.5, 50)), min_size=1, max_size=12),
    kickout=st.integers(1, 600),
)
def test_false_unknown_flips_never_move_the_deadline(flips: list[tuple[ReadyStatus, float]], kickout: int) -> None:
    """Whatever False<->Unknown flips happen (each moving lastTransitionTime), a process
    that watched them, and a restarted one that reads the annotation it wrote, both keep
    the deadline at the start of the NotReady period + kickout."""
    timing = Timing(kickout=timedelta(seconds=kickout), kickin=TIMING.kickin)
    remembered = None
    clock = 0.0
    for status, gap in flips:
        clock += gap
        view = node(status, since=at(clock))
        remembered = notready_mark(view, remembered, at(clock))
        assert judge(view, now=at(clock), timing=timing, mark=remembered).since == at(flips[0][1])
        # the annotation written from that mark is what a restarted process reads
        restarted = notready_mark(attrs.evolve(view, notready_mark=remembered), None, at(clock + 1))
        verdict = judge(view, now=at(clock + 1), timing=timing, mark=restarted)
        assert verdict.since == at(flips[0][1])
        if verdict.action is None and verdict.deadline is not None:
            assert verdict.deadline == at(flips[0][1] + kickout)


@given(
    ready=st.sampled_from(list(ReadyStatus)),
    since=st.floats(-1000, 1000),
    now=st.floats(-1000, 5000),
    kicked=st.booleans(),
    cordoned=st.booleans(),
    tainted=st.booleans(),
    excluded=st.booleans(),
    hold=st.one_of(st.none(), st.just("held")),
)
def test_what_is_never_done(
    ready: ReadyStatus,
    since: float,
    now: float,
    kicked: bool,
    cordoned: bool,
    tainted: bool,
    excluded: bool,
    hold: str | None,
) -> None:
    record = KickoutRecord(at=at(since), cordoned=cordoned, tainted=tainted) if kicked else None
    view = node(ready, since=at(since), kickout=record, labels={EXCLUDE_LABEL: "true"} if excluded else {})
    mark = None if ready.is_ready else notready_mark(view, None, at(now))
    verdict = judge(view, now=at(now), timing=TIMING, mark=mark, hold=hold)
    if verdict.action is Action.KICKOUT:
        assert not ready.is_ready and not kicked and not excluded and hold is None
        assert verdict.deadline is not None and at(now) >= verdict.deadline
    if verdict.action is Action.KICKIN:
        assert ready.is_ready and record is not None
        assert at(now) >= record.at + TIMING.kickin
    if verdict.action is Action.REPAIR:
        assert not ready.is_ready and record is not None
    if not kicked and ready.is_ready:
        assert verdict.state is State.READY
    if verdict.deadline is not None and verdict.action is None:
        assert verdict.deadline > at(now)


def test_annotation_from_an_earlier_period_is_not_trusted() -> None:
    old = notready_mark(node(ReadyStatus.FALSE, since=at(0)), None, at(0))
    later = node(ReadyStatus.FALSE, since=at(500), notready_mark=old)  # was Ready in between
    assert notready_mark(later, None, at(501)).since == at(500)


def test_records_round_trip_and_reject_damage() -> None:
    record = KickoutRecord(at=T0, cordoned=True, tainted=False)
    assert KickoutRecord.decode(record.encode()) == record
    assert record.encode() == '{"at":"2026-03-05T05:43:06Z","cordoned":true,"tainted":false}'
    for bad in ("", "{", "[]", '{"at":"x","cordoned":true,"tainted":true}', '{"at":"2026-03-05T05:43:06Z"}'):
        assert KickoutRecord.decode(bad) is None
