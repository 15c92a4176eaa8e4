"""The death verdict: properties over every combination of signals (issues 11 and 19)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from asklepios.core.evidence import (
    Answer,
    DeathVerdict,
    Evidence,
    FenceOutcome,
    HoldReason,
    LeaseLook,
    LeaseSeen,
    death_verdict,
    kubelet_alive,
    life_signs,
    observe_lease,
)

NOW = datetime(2026, 11, 27, 5, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


looks = st.builds(
    LeaseLook,
    present=st.booleans(),
    renewed=st.one_of(st.none(), st.integers(-7200, 7200).map(at)),
    duration=st.integers(1, 300).map(lambda s: timedelta(seconds=s)),
    seen_at=st.integers(-900, 0).map(at),
    changed=st.booleans(),
)
answers = st.lists(
    st.builds(
        Answer,
        endpoint=st.sampled_from(["127.0.10.3:10250", "127.0.10.3:22", "127.0.11.3:10250"]),
        how=st.sampled_from(["accepted", "refused", "timeout", "unreachable", "error EACCES"]),
    ),
    max_size=3,
    unique_by=lambda a: a.endpoint,
).map(tuple)
fences = st.one_of(
    st.none(),
    st.builds(FenceOutcome, off=st.just(True), seconds=st.floats(0, 60), found_off=st.booleans()),
    st.builds(
        FenceOutcome,
        off=st.just(False),
        reason=st.sampled_from([HoldReason.FENCING_FAILED, HoldReason.NO_BMC, HoldReason.BMC_MISMATCH]),
        error=st.text(max_size=10),
    ),
)


@given(lease=looks, probe=answers, fencing=st.booleans(), fence=fences)
def test_evidence_of_life_never_yields_a_taint(
    lease: LeaseLook, probe: tuple[Answer, ...], fencing: bool, fence: FenceOutcome | None
) -> None:
    """Accepted, refused, a Lease change seen within its duration, a fresh renewTime: never dead."""
    evidence = Evidence(lease=lease, answers=probe)
    verdict = death_verdict(evidence, NOW, fencing=fencing, fence=fence if fencing else None)
    if life_signs(evidence, NOW):
        assert not verdict.dead
    if any(a.how in ("accepted", "refused") or a.how.startswith("error") for a in probe):
        assert not verdict.dead  # a running kernel answered (or the probe cannot tell)
    if lease.present and lease.renewed is not None and abs(NOW - lease.renewed) < lease.duration:
        assert not verdict.dead
    if lease.present and NOW - lease.seen_at < lease.duration:
        assert not verdict.dead  # not yet watched for a lease duration on our own clock
    if verdict.dead:
        assert verdict.hold is None and not verdict.fence_next
    if fencing and verdict.dead:
        assert fence is not None and fence.off and (verdict.fenced or verdict.found_off)
        assert verdict.found_off == fence.found_off  # a machine found Off is never "ours" to switch on
    if not fencing:
        assert not verdict.fenced and not verdict.fence_next
    if not verdict.dead and not verdict.fence_next:
        assert verdict.hold is not None  # a held kickout always says why


@given(lease=looks, probe=answers)
def test_a_live_kubelet_holds_even_with_fencing(lease: LeaseLook, probe: tuple[Answer, ...]) -> None:
    evidence = Evidence(lease=lease, answers=probe)
    if kubelet_alive(lease, NOW) is not None:
        for fencing in (False, True):
            verdict = death_verdict(evidence, NOW, fencing=fencing)
            assert verdict.hold is HoldReason.KUBELET_ALIVE and not verdict.fence_next


def test_a_refusal_is_an_answer_and_a_timeout_is_not() -> None:
    silent = LeaseLook(True, at(-600), timedelta(seconds=40), seen_at=at(-300))
    refused = Evidence(silent, (Answer("127.0.10.3:10250", "refused"),))
    timeout = Evidence(silent, (Answer("127.0.10.3:10250", "timeout"), Answer("127.0.10.3:22", "unreachable")))
    held = death_verdict(refused, NOW, fencing=False)
    assert (held.dead, held.hold, held.detail) == (
        False,
        HoldReason.NODE_ANSWERS,
        "answers on 127.0.10.3:10250 refused",
    )
    assert death_verdict(timeout, NOW, fencing=False).dead


def test_a_node_that_answers_is_fenced_when_fencing_is_on_and_held_otherwise() -> None:
    silent = LeaseLook(False, None, timedelta(seconds=40), seen_at=at(-300))
    evidence = Evidence(silent, (Answer("127.0.10.3:10250", "accepted"),))
    assert death_verdict(evidence, NOW, fencing=False).hold is HoldReason.NODE_ANSWERS
    assert death_verdict(evidence, NOW, fencing=True).fence_next
    still = death_verdict(evidence, NOW, fencing=True, fence=FenceOutcome(off=True))
    assert (still.dead, still.hold) == (False, HoldReason.NODE_ANSWERS)  # Off, yet it answers: the wrong BMC?
    quiet = death_verdict(Evidence(silent), NOW, fencing=True, fence=FenceOutcome(off=True))
    assert quiet == DeathVerdict(dead=True, fenced=True, detail=quiet.detail)
    found = death_verdict(Evidence(silent), NOW, fencing=True, fence=FenceOutcome(off=True, found_off=True))
    assert (found.dead, found.fenced, found.found_off) == (True, False, True)


@given(
    skew=st.integers(-7200, 7200),
    every=st.floats(0.5, 39.0),
    gaps=st.lists(st.floats(0.1, 120.0), min_size=1, max_size=30),
)
def test_a_renewing_kubelet_is_never_silent_whatever_its_clock(skew: int, every: float, gaps: list[float]) -> None:
    """Issue 19.3: renewals every `every` s (< the 40 s duration) on a clock `skew` s off, looked at any times."""
    duration = timedelta(seconds=40)
    look: LeaseLook | None = None
    now = 0.0
    for gap in gaps:
        now += gap
        last_renewal = (now // every) * every  # true time of the newest renewal
        look = observe_lease(look, LeaseSeen(renewed=at(last_renewal + skew), duration=duration), at(now))
        assert kubelet_alive(look, at(now)) is not None


@given(skew=st.integers(-7200, 7200), gaps=st.lists(st.floats(0.1, 30.0), min_size=1, max_size=20))
def test_a_dead_kubelet_is_silent_one_duration_after_the_first_look(skew: int, gaps: list[float]) -> None:
    duration = timedelta(seconds=40)
    seen = LeaseSeen(renewed=at(-5 + skew), duration=duration)  # last renewal 5 s before the first look
    look = observe_lease(None, seen, at(0))
    now = 0.0
    for gap in gaps:
        now += gap
        look = observe_lease(look, seen, at(now))
    fresh = abs(now - (-5 + skew)) < 40
    assert (kubelet_alive(look, at(now)) is None) == (now >= 40 and not fresh)
    if kubelet_alive(look, at(now)) is not None:  # and it says when to look again
        assert kubelet_alive(look, at(now))[1] > at(now)  # type: ignore[index]


def test_no_lease_is_silent_at_once() -> None:
    assert kubelet_alive(observe_lease(None, None, NOW), NOW) is None
