"""The death verdict: properties over every combination of signals (issue 11)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from asklepios.core.evidence import (
    DeathVerdict,
    Evidence,
    FenceOutcome,
    HoldReason,
    LeaseSeen,
    death_verdict,
    kubelet_alive,
)

NOW = datetime(2026, 11, 27, 5, 0, tzinfo=UTC)

leases = st.one_of(
    st.none(),
    st.builds(
        LeaseSeen,
        renewed=st.one_of(st.none(), st.integers(-600, 60).map(lambda s: NOW + timedelta(seconds=s))),
        duration=st.integers(1, 300).map(lambda s: timedelta(seconds=s)),
    ),
)
answering = st.lists(st.sampled_from(["127.0.10.3:10250", "127.0.10.3:22"]), max_size=2, unique=True).map(tuple)
fences = st.one_of(
    st.none(),
    st.builds(FenceOutcome, off=st.just(True), seconds=st.floats(0, 60)),
    st.builds(FenceOutcome, off=st.just(False), reason=st.sampled_from([HoldReason.FENCING_FAILED, HoldReason.NO_BMC]),
              error=st.text(max_size=10)),
)  # fmt: skip


def alive(evidence: Evidence) -> bool:
    return kubelet_alive(evidence, NOW) is not None or bool(evidence.answering)


@given(lease=leases, before=leases, answers=answering, fencing=st.booleans(), fence=fences)
def test_evidence_of_life_never_yields_a_kickout(
    lease: LeaseSeen | None,
    before: LeaseSeen | None,
    answers: tuple[str, ...],
    fencing: bool,
    fence: FenceOutcome | None,
) -> None:
    evidence = Evidence(lease=lease, lease_before=before, answering=answers)
    verdict = death_verdict(evidence, NOW, fencing=fencing, fence=fence if fencing else None)
    if alive(evidence):
        assert not verdict.dead
    if verdict.dead:
        assert verdict.hold is None and not verdict.fence_next
    if fencing and verdict.dead:
        assert fence is not None and fence.off and verdict.fenced  # only once the BMC said Off
    if not fencing:
        assert not verdict.fenced and not verdict.fence_next  # no fencing: never "fenced"
    if not verdict.dead and not verdict.fence_next:
        assert verdict.hold is not None  # a held kickout always says why


@given(lease=leases, answers=answering)
def test_a_renewed_lease_holds_even_with_fencing(lease: LeaseSeen | None, answers: tuple[str, ...]) -> None:
    evidence = Evidence(lease=lease, answering=answers)
    if kubelet_alive(evidence, NOW) is not None:
        for fencing in (False, True):
            assert death_verdict(evidence, NOW, fencing=fencing).hold is HoldReason.KUBELET_ALIVE


def test_a_node_that_answers_is_fenced_when_fencing_is_on_and_held_otherwise() -> None:
    evidence = Evidence(lease=None, answering=("127.0.10.3:10250",))
    assert death_verdict(evidence, NOW, fencing=False).hold is HoldReason.NODE_ANSWERS
    assert death_verdict(evidence, NOW, fencing=True).fence_next
    still = death_verdict(evidence, NOW, fencing=True, fence=FenceOutcome(off=True))
    assert (still.dead, still.hold) == (False, HoldReason.NODE_ANSWERS)  # Off, yet it answers: the wrong BMC?
    quiet = death_verdict(Evidence(lease=None), NOW, fencing=True, fence=FenceOutcome(off=True))
    assert quiet == DeathVerdict(dead=True, fenced=True, detail=quiet.detail)


def test_a_lease_renewed_since_the_last_look_is_life_whatever_the_clocks() -> None:
    behind = LeaseSeen(renewed=NOW - timedelta(hours=1), duration=timedelta(seconds=40))  # a clock an hour behind
    earlier = LeaseSeen(renewed=NOW - timedelta(hours=1, seconds=10), duration=timedelta(seconds=40))
    assert kubelet_alive(Evidence(lease=behind), NOW) is None
    assert kubelet_alive(Evidence(lease=behind, lease_before=earlier), NOW) is not None
