"""The decision core: countdowns, clock skew, holds, kickin, and what is never done."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
from hypothesis import given
from hypothesis import strategies as st

from asklepios.core.evidence import HoldReason
from asklepios.core.judge import Action, State, Timing, Verdict, judge
from asklepios.core.node import EXCLUDE_LABEL, OUT_OF_SERVICE_TAINT, NodeView, ReadyStatus, Taint
from asklepios.core.periods import NodeMemory, remember
from asklepios.core.pod import NodePods
from asklepios.core.records import KickoutRecord, NodeRecord, PeriodMark

T0 = datetime(2026, 3, 5, 5, 43, 6, tzinfo=UTC)
TIMING = Timing(kickout=timedelta(seconds=60), kickin=timedelta(seconds=60), pod_wait=timedelta(seconds=300))
NO_PODS = NodePods(synced=True)


_RECORD_FIELDS = {"kickout": "kickout", "notready_mark": "notready", "ready_mark": "ready"}


def node(ready: ReadyStatus, since: datetime | None = T0, **kw: object) -> NodeView:
    """A view; `kickout`, `notready_mark`, `ready_mark` go into Asklepios' record attached to it."""
    record = {_RECORD_FIELDS[k]: kw.pop(k) for k in list(kw) if k in _RECORD_FIELDS}
    view = NodeView(name="control2", ready=ready, ready_since=since, **kw)  # type: ignore[arg-type]
    return with_record(view, **record) if any(v is not None for v in record.values()) else view


def with_record(view: NodeView, **fields: Any) -> NodeView:
    """`view` with its record's fields replaced (kickout, notready, ready, ...)."""
    fields = {_RECORD_FIELDS.get(k, k): v for k, v in fields.items()}
    return attrs.evolve(view, record=attrs.evolve(view.record or NodeRecord(), **fields))


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def decide(view: NodeView, seen: float, now: float, memory: NodeMemory | None = None, **kw: object) -> Verdict:
    """Judge `view`, first seen by this replica at `seen`."""
    mem = remember(view, memory or NodeMemory(), at(seen))
    return judge(view, mem, now=at(now), timing=TIMING, **kw)  # type: ignore[arg-type]


def test_ready_node_is_left_alone() -> None:
    verdict = decide(node(ReadyStatus.TRUE), 0, 1000)
    assert verdict == judge(node(ReadyStatus.TRUE), NodeMemory(), now=at(1000), timing=TIMING)
    assert verdict.state is State.READY


def test_notready_counts_down_then_asks_for_the_evidence_at_the_deadline() -> None:
    view = node(ReadyStatus.FALSE)
    mem = remember(view, NodeMemory(), at(0))
    before = judge(view, mem, now=at(59.999), timing=TIMING)
    assert (before.state, before.action, before.deadline, before.wake) == (State.COUNTING_DOWN, None, at(60), at(60))
    due = judge(view, mem, now=at(60), timing=TIMING)
    assert due.action is Action.KICKOUT


def test_a_clock_behind_cannot_shorten_the_countdown() -> None:
    """The condition says the node went NotReady an hour ago; this replica saw it just now."""
    view = node(ReadyStatus.FALSE, since=at(-3600))
    mem = remember(view, NodeMemory(), at(0))
    assert judge(view, mem, now=at(1), timing=TIMING).deadline == at(60)


def test_a_node_back_with_its_clock_behind_counts_up_from_when_it_was_seen_ready() -> None:
    record = KickoutRecord(at=at(100), cordoned=True, tainted=True)
    view = node(ReadyStatus.TRUE, since=at(-1000), kickout=record, unschedulable=True, taints=(OUT_OF_SERVICE_TAINT,))
    mem = remember(view, NodeMemory(), at(500))
    verdict = judge(view, mem, now=at(500), timing=TIMING, pods=NO_PODS)
    assert (verdict.state, verdict.action, verdict.deadline) == (State.COUNTING_UP, None, at(560))
    assert judge(view, mem, now=at(560), timing=TIMING, pods=NO_PODS).action is Action.KICKIN


def test_the_ready_mark_survives_a_restart() -> None:
    record = KickoutRecord(at=at(100), cordoned=True, tainted=True)
    view = node(ReadyStatus.TRUE, since=at(-1000), kickout=record)
    mark = remember(view, NodeMemory(), at(500)).ready
    restarted = remember(with_record(view, ready_mark=mark), NodeMemory(), at(540))
    assert judge(view, restarted, now=at(541), timing=TIMING, pods=NO_PODS).deadline == at(560)


def test_guard_hold_stops_a_due_kickout_but_not_the_countdown() -> None:
    view = node(ReadyStatus.UNKNOWN)
    mem = remember(view, NodeMemory(), at(0))
    assert judge(view, mem, now=at(10), timing=TIMING, guard="x").state is State.COUNTING_DOWN
    held = judge(view, mem, now=at(61), timing=TIMING, guard="2 of 3")
    assert (held.state, held.action, held.hold, held.deadline) == (
        State.HELD,
        None,
        HoldReason.TOO_MANY_NOTREADY,
        at(60),
    )


def test_evidence_hold_waits_for_the_next_look_and_keeps_the_deadline() -> None:
    view = node(ReadyStatus.FALSE)
    mem = attrs.evolve(remember(view, NodeMemory(), at(0)), hold=HoldReason.KUBELET_ALIVE, look_at=at(70))
    held = judge(view, mem, now=at(65), timing=TIMING)
    assert (held.state, held.action, held.wake, held.deadline) == (State.HELD, None, at(70), at(60))
    again = judge(view, mem, now=at(70), timing=TIMING)
    assert (again.state, again.action, again.deadline) == (State.HELD, Action.KICKOUT, at(60))


def test_excluded_and_legacy_skip_nodes_are_never_kicked_out() -> None:
    skip = Taint("node.kubernetes.io/asklepios", "skip", "NoExecute")
    for view in (node(ReadyStatus.FALSE, labels={EXCLUDE_LABEL: "true"}), node(ReadyStatus.FALSE, taints=(skip,))):
        verdict = decide(view, 0, 10_000)
        assert verdict.state is State.EXCLUDED
        assert verdict.action is None


def test_missing_ready_condition_counts_as_notready_from_first_sight() -> None:
    view = node(ReadyStatus.MISSING, since=None)
    assert decide(view, 30, 31).deadline == at(90)


def test_kickin_waits_for_stuck_pods_then_is_forced() -> None:
    record = KickoutRecord(at=at(60), cordoned=True, tainted=True)
    view = node(ReadyStatus.TRUE, since=at(300), kickout=record)
    mem = remember(view, NodeMemory(), at(300))
    stuck = NodePods(synced=True, stuck=("ns/db-0",))
    waiting = judge(view, mem, now=at(400), timing=TIMING, pods=stuck)
    assert (waiting.state, waiting.action, waiting.pods, waiting.wake) == (
        State.WAITING_FOR_PODS,
        None,
        ("ns/db-0",),
        at(660),
    )
    forced = judge(view, mem, now=at(660), timing=TIMING, pods=stuck)
    assert (forced.action, forced.pods) == (Action.KICKIN, ("ns/db-0",))
    unlisted = judge(view, mem, now=at(400), timing=TIMING, pods=NodePods(synced=False))
    assert unlisted.state is State.WAITING_FOR_PODS


def test_kicked_out_node_still_down_is_repaired_only_for_what_we_did() -> None:
    ours = KickoutRecord(at=at(60), cordoned=True, tainted=True)
    view = node(ReadyStatus.UNKNOWN, kickout=ours, unschedulable=True)  # taint removed by someone
    verdict = decide(view, 0, 100)
    assert verdict.action is Action.REPAIR
    assert "taint" in verdict.detail
    not_ours = KickoutRecord(at=at(60), cordoned=False, tainted=False)  # both pre-existed
    assert decide(node(ReadyStatus.UNKNOWN, kickout=not_ours), 0, 100).action is None
    excluded = node(ReadyStatus.UNKNOWN, kickout=ours, labels={EXCLUDE_LABEL: "true"})
    assert decide(excluded, 0, 100).action is None


def test_release_then_power_on_a_fenced_node() -> None:
    record = KickoutRecord(at=at(60), cordoned=True, tainted=True, fenced=True)
    view = node(ReadyStatus.UNKNOWN, kickout=record, unschedulable=True, taints=(OUT_OF_SERVICE_TAINT,))
    mem = remember(view, NodeMemory(), at(61))
    left = NodePods(synced=True, left=("ns/db-1",))
    assert judge(view, mem, now=at(62), timing=TIMING, pods=left).action is None
    assert judge(view, mem, now=at(62), timing=TIMING, pods=NO_PODS).action is Action.RELEASE
    released = with_record(view, kickout=attrs.evolve(record, released=at(63)))
    assert judge(released, mem, now=at(64), timing=TIMING, pods=NO_PODS).action is Action.POWER_ON
    assert judge(released, mem, now=at(64), timing=TIMING, pods=NO_PODS, power_on=False).action is None
    unfenced = with_record(released, kickout=attrs.evolve(record, released=at(63), fenced=False))
    assert judge(unfenced, mem, now=at(64), timing=TIMING, pods=NO_PODS).action is None


statuses = st.sampled_from([ReadyStatus.FALSE, ReadyStatus.UNKNOWN])


@given(
    flips=st.lists(st.tuples(statuses, st.floats(0.5, 50), st.floats(-3600, 3600)), min_size=1, max_size=12),
    kickout=st.integers(1, 600),
)
def test_false_unknown_flips_never_move_the_deadline(
    flips: list[tuple[ReadyStatus, float, float]], kickout: int
) -> None:
    """Whatever False<->Unknown flips happen (each moving lastTransitionTime, from clocks
    skewed either way), a replica that watched them and a restarted one that reads the
    annotation it wrote both keep the deadline: first sight of the period + kickout."""
    timing = Timing(kickout=timedelta(seconds=kickout), kickin=TIMING.kickin)
    memory, clock = NodeMemory(), 0.0
    first_seen = None
    for status, gap, skew in flips:
        clock += gap
        view = node(status, since=at(clock + skew))
        memory = remember(view, memory, at(clock))
        first_seen = first_seen or max(at(clock), at(clock + skew))
        assert judge(view, memory, now=at(clock), timing=timing).since == first_seen
        restarted = remember(with_record(view, notready_mark=memory.notready), NodeMemory(), at(clock + 1))
        verdict = judge(view, restarted, now=at(clock + 1), timing=timing)
        assert verdict.since == first_seen
        assert verdict.deadline == first_seen + timing.kickout


@given(
    ready=st.sampled_from(list(ReadyStatus)),
    since=st.floats(-1000, 1000),
    seen=st.floats(-1000, 1000),
    now=st.floats(-1000, 5000),
    kicked=st.booleans(),
    cordoned=st.booleans(),
    tainted=st.booleans(),
    excluded=st.booleans(),
    guard=st.one_of(st.none(), st.just("held")),
    stuck=st.booleans(),
)
def test_what_is_never_done(
    ready: ReadyStatus,
    since: float,
    seen: float,
    now: float,
    kicked: bool,
    cordoned: bool,
    tainted: bool,
    excluded: bool,
    guard: str | None,
    stuck: bool,
) -> None:
    now = max(now, seen)  # the replica saw the node at or before `now`
    record = KickoutRecord(at=at(since), cordoned=cordoned, tainted=tainted) if kicked else None
    view = node(ready, since=at(since), kickout=record, labels={EXCLUDE_LABEL: "true"} if excluded else {})
    memory = remember(view, NodeMemory(), at(seen))
    pods = NodePods(synced=True, stuck=("ns/p",) if stuck else ())
    verdict = judge(view, memory, now=at(now), timing=TIMING, guard=guard, pods=pods)
    if verdict.action is Action.KICKOUT:
        assert not ready.is_ready and not kicked and not excluded and guard is None
        assert at(now) >= at(seen) + TIMING.kickout  # never sooner than a full period after first sight
    if verdict.action is Action.KICKIN:
        assert ready.is_ready and record is not None
        assert at(now) >= max(at(seen), record.at) + TIMING.kickin
        assert not stuck or at(now) >= max(at(seen), record.at) + TIMING.kickin + TIMING.pod_wait
    if verdict.action is Action.REPAIR:
        assert not ready.is_ready and record is not None and not excluded
    if not kicked and ready.is_ready:
        assert verdict.state is State.READY
    if verdict.wake is not None:
        assert verdict.wake > at(now) or verdict.action is not None


@given(
    hold=st.sampled_from(list(HoldReason)),
    look=st.floats(-100, 500),
    now=st.floats(0, 1000),
    guard=st.one_of(st.none(), st.just("2 of 3")),
)
def test_a_held_node_keeps_its_deadline(hold: HoldReason, look: float, now: float, guard: str | None) -> None:
    view = node(ReadyStatus.UNKNOWN)
    memory = attrs.evolve(remember(view, NodeMemory(), at(0)), hold=hold, look_at=at(look))
    verdict = judge(view, memory, now=at(now), timing=TIMING, guard=guard)
    assert verdict.deadline == at(0) + TIMING.kickout
    if verdict.action is Action.KICKOUT:
        assert at(now) >= at(look) and at(now) >= verdict.deadline and guard is None


def test_a_mark_from_an_earlier_period_is_not_trusted() -> None:
    old = remember(node(ReadyStatus.FALSE, since=at(0)), NodeMemory(), at(0)).notready
    later = node(ReadyStatus.FALSE, since=at(500), notready_mark=old)  # was Ready in between
    assert remember(later, NodeMemory(), at(501)).notready == PeriodMark(since=at(501), condition=at(500))


@given(fenced=st.booleans(), released=st.booleans(), flapping=st.booleans())
def test_records_round_trip_and_no_fencing_means_no_fenced(fenced: bool, released: bool, flapping: bool) -> None:
    kickout = KickoutRecord(at=T0, cordoned=True, tainted=False, fenced=fenced, released=at(5) if released else None)
    record = NodeRecord(kickout=kickout, notready=PeriodMark(at(-9), None), kickouts=(T0,), flapping=flapping)
    assert NodeRecord.decode(record.encode()) == record
    assert ('"fenced"' in kickout.mirror()) is fenced


def test_the_mirror_is_the_contract_shape_and_damage_is_never_ours() -> None:
    record = KickoutRecord(at=T0, cordoned=True, tainted=False)
    assert record.mirror() == '{"at":"2026-03-05T05:43:06Z","cordoned":true,"tainted":false}'
    bad_kickouts = ("{", "[]", '{"at":"x","cordoned":true,"tainted":true}', '{"at":"2026-03-05T05:43:06Z"}')
    for bad in ("", "{", "[]", "[" * 100_000, *(f'{{"kickout":{k}}}' for k in bad_kickouts)):
        assert NodeRecord.decode(bad) is None  # not ours: nothing is undone on its strength


@given(st.sampled_from([ReadyStatus.FALSE, ReadyStatus.UNKNOWN, ReadyStatus.TRUE]), st.booleans(), st.floats(0, 600))
def test_judging_an_unchanged_node_again_keeps_its_memory(ready: ReadyStatus, kicked: bool, later: float) -> None:
    """Every resync judges every node: a new copy of an unchanged memory each time was long-lived
    garbage that kept the leader's full collections coming (bench mass-outage, storm 1)."""
    view = node(ready)
    if kicked:
        view = with_record(view, kickout=KickoutRecord(at=at(-5), cordoned=True, tainted=True))
    first = remember(view, NodeMemory(), at(0))
    assert remember(view, first, at(later)) is first
