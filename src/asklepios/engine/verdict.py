"""Gathering the death verdict: the one gate of every write that adds the out-of-service taint.

`DeathCheck.look` follows a NotReady node's Lease from the start of the period, on
Asklepios' own clock (`core.evidence.observe_lease`); `DeathCheck.confirm` gathers
everything at the moment a taint is wanted (the Lease again, the probe, and with
fencing the BMC: power off, then the Lease and the probe once more) and asks
`core.evidence.death_verdict`.
The kickout and the repair both call `confirm`, and the node patches that add the
taint (`kube.nodes.kickout_patch`, `repair_patch`) refuse a verdict that is not
`dead`: no path can add the taint without it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import attrs

from asklepios.config import Settings
from asklepios.core.evidence import (
    PROBE_MARGIN,
    PROBE_TIMEOUT,
    DeathVerdict,
    Evidence,
    HoldReason,
    death_verdict,
    observe_lease,
)
from asklepios.core.judge import Action, Verdict
from asklepios.core.node import NodeView
from asklepios.core.periods import NodeMemory
from asklepios.core.records import NodeRecord
from asklepios.engine.clock import Clock
from asklepios.engine.fencing import Fencer
from asklepios.engine.gate import WriteGate
from asklepios.engine.notes import Notes
from asklepios.engine.ports import EventPort, NodeLeasePort, ProbePort
from asklepios.engine.records import RecordWriter
from asklepios.kube.client import ApiError
from asklepios.kube.events import node_ref

log = logging.getLogger("asklepios.healer")


@attrs.define(eq=False)
class DeathCheck:
    settings: Settings
    clock: Clock
    gate: WriteGate
    leases: NodeLeasePort
    probe: ProbePort
    fencer: Fencer | None
    events: EventPort
    notes: Notes
    records: RecordWriter | None = None  # notes, before any ForceOff, that an Off is Asklepios' own

    def budget(self) -> float:
        return max(0.5, min(10.0, self.gate.write_budget()))

    async def look(self, view: NodeView, memory: NodeMemory) -> NodeMemory:
        """Read the node's Lease once more and note on our clock whether it changed."""
        seen = await self.leases.get(view.name, self.budget())
        look = observe_lease(memory.lease, seen, self.clock.now())
        log.debug(
            "node Lease looked at",
            extra={"node": view.name, "renewed": str(look.renewed), "seen_at": str(look.seen_at)},
        )
        return attrs.evolve(memory, lease=look)

    async def probe_ahead(self, view: NodeView, memory: NodeMemory) -> NodeMemory:
        """The probe just before the deadline: it takes its whole timeout on a machine that is off."""
        answers = await self.probe.answers(view.addresses, self.settings.liveness_probe_ports)
        return attrs.evolve(memory, answers=answers, probed_at=self.clock.now())

    def _fresh_probe(self, memory: NodeMemory, now: datetime) -> bool:
        """A probe that ended at most one probe timeout (and the margin) ago still says how the node answers now."""
        if memory.probed_at is None:
            return False
        return timedelta(0) <= now - memory.probed_at <= timedelta(seconds=PROBE_TIMEOUT + PROBE_MARGIN)

    async def confirm(
        self,
        view: NodeView,
        memory: NodeMemory,
        *,
        fence: bool = True,
        still_due: Callable[[], DeathVerdict | None] | None = None,
    ) -> tuple[DeathVerdict, Evidence | None, NodeMemory]:
        """The verdict of this moment: (verdict, what it saw, memory with the new Lease look).

        A failed Lease read is no verdict: held (`kubelet alive`: not known to be
        silent), looked at again at the next resync. `fence=False` (a dry run, a
        pause) stops before any power action. `still_due` is asked just before one:
        the guard and a pause of this moment, not of when the act began (the 60-minute
        soak: an act judged on a node cache that a relist after an apiserver outage had
        not yet refreshed, 2 of 5 NotReady where 4 were, sent a ForceOff the guard held).
        """
        now = self.clock.now()
        try:
            memory = await self.look(view, memory)
        except ApiError as exc:
            log.warning("could not read the node Lease", extra={"node": view.name, "error": str(exc)})
            return DeathVerdict(False, HoldReason.KUBELET_ALIVE, detail=f"node Lease not readable: {exc}"), None, memory
        if self._fresh_probe(memory, now):
            answers = memory.answers
        else:
            answers = await self.probe.answers(view.addresses, self.settings.liveness_probe_ports)
        memory = attrs.evolve(memory, answers=(), probed_at=None)
        assert memory.lease is not None
        evidence = Evidence(lease=memory.lease, answers=answers)
        death = death_verdict(evidence, now, fencing=self.settings.fencing_on)
        log.debug("death verdict", extra={"node": view.name, "dead": death.dead, "detail": death.detail,
                                          "evidence": list(evidence.summary())})  # fmt: skip
        if death.fence_next and fence:
            held = still_due() if still_due is not None else None
            if held is not None:
                return held, evidence, memory
            death, evidence, memory = await self._fence(view, evidence, memory)
        return death, evidence, memory

    async def _fence(
        self, view: NodeView, evidence: Evidence, memory: NodeMemory
    ) -> tuple[DeathVerdict, Evidence, NodeMemory]:
        assert self.fencer is not None
        if not self.gate.may_write():
            held = DeathVerdict(dead=False, hold=HoldReason.FENCING_FAILED, detail="no longer the leader")
            return held, evidence, memory
        record = view.record or NodeRecord()
        ours = record.force_off is not None  # an earlier attempt (maybe another leader's) sent ForceOff
        if not ours and self.records is not None:  # recorded first: a crash or failover cannot forget it
            await self.records.put_node(
                view.name, attrs.evolve(record, force_off=self.clock.now().replace(microsecond=0))
            )
        outcome = await self.fencer.power_off(view)
        if outcome.off and outcome.found_off and ours:
            outcome = attrs.evolve(outcome, found_off=False)  # Off from our own earlier ForceOff: ours to undo
        if outcome.off:  # every signal must agree now, not only before the ForceOff went out:
            # the kubelet may have renewed while the ForceOff was applying (the 3-minute soak's find)
            try:
                memory = await self.look(view, memory)
            except ApiError as exc:
                detail = f"node Lease not readable after power Off: {exc}"
                return DeathVerdict(False, HoldReason.KUBELET_ALIVE, detail=detail), evidence, memory
            answers = await self.probe.answers(view.addresses, self.settings.liveness_probe_ports)
            assert memory.lease is not None
            evidence = Evidence(lease=memory.lease, answers=answers)
        death = death_verdict(evidence, self.clock.now(), fencing=True, fence=outcome)
        if death.dead:
            how = "found Off" if outcome.found_off else "confirmed power Off"
            log.warning(f"BMC {how}", extra={"node": view.name, "fencing_seconds": outcome.seconds})
            return death, evidence, memory
        if death.hold is HoldReason.KUBELET_ALIVE:
            log.warning("kubelet renewed while the ForceOff applied: held", extra={"node": view.name})
            return death, evidence, memory
        log.warning("fencing failed", extra={"node": view.name, "error": death.detail})
        if death.hold is HoldReason.FENCING_FAILED and self.notes.fencing_error_to_emit(view.name, death.detail):
            await self.events.emit(node_ref(view), "FencingFailed", death.detail, warning=True)
        return death, evidence, memory


def look_again(death: DeathVerdict, now: datetime, resync: timedelta) -> datetime:
    """When a held verdict may have changed: when the kubelet's grace runs out, else the next resync."""
    if death.look_at is not None and death.look_at > now:
        return min(death.look_at, now + resync)
    return now + resync


def still_due(view: NodeView, rejudge: Callable[[NodeView], Verdict], action: Action) -> DeathVerdict | None:
    """None while `action` is still what the node wants with the guard and pause of this moment."""
    again = rejudge(view)
    if again.action is action:
        return None
    return DeathVerdict(False, hold=again.hold or HoldReason.KUBELET_ALIVE, detail=again.detail or "no longer due")
