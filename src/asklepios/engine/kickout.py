"""The kickout at its deadline: gather the evidence, fence if asked, then cordon and taint.

This is where a wrong decision costs data, so the order is fixed:

1. the node Lease and the TCP probe: any sign of life holds the kickout
   (`kubelet alive`, `node answers`), looked at again at the next resync;
2. with fencing on, the BMC must confirm power Off (`fencing failed`, `no BMC`
   otherwise, retried with backoff capped at 60 s);
3. only then the one patch that cordons, taints and records what it changed.

Leadership is checked before fencing and again before the patch; in dry run
everything up to the patch is decided, announced and not done.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from datetime import datetime, timedelta

import attrs

from asklepios.config import Settings
from asklepios.core.evidence import DeathVerdict, Evidence, HoldReason, death_verdict
from asklepios.core.judge import Action, Verdict
from asklepios.core.node import NodeView
from asklepios.core.periods import NodeMemory
from asklepios.core.records import KickoutRecord
from asklepios.engine.clock import Clock
from asklepios.engine.fencing import Fencer
from asklepios.engine.gate import WriteGate
from asklepios.engine.notes import Notes
from asklepios.engine.ports import EventPort, NodeLeasePort, ProbePort
from asklepios.engine.writes import NodeWriter
from asklepios.kube.client import ApiError, NotFound
from asklepios.kube.events import ObjectRef
from asklepios.kube.nodes import kickout_patch
from asklepios.observe import metrics

log = logging.getLogger("asklepios.healer")
FENCING_BACKOFF_CAP = 60.0


def node_ref(view: NodeView) -> ObjectRef:
    return ObjectRef(kind="Node", name=view.name, uid=view.uid)


def backoff(failures: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter over the upper half."""
    ceiling = min(cap, base * 2 ** max(0, failures - 1))
    return random.uniform(ceiling / 2, ceiling)


@attrs.define(eq=False)
class Kickout:
    settings: Settings
    clock: Clock
    gate: WriteGate
    leases: NodeLeasePort
    probe: ProbePort
    fencer: Fencer | None
    writer: NodeWriter
    events: EventPort
    notes: Notes

    async def attempt(
        self, view: NodeView, verdict: Verdict, memory: NodeMemory, rejudge: Callable[[NodeView], Verdict]
    ) -> tuple[NodeView | None, NodeMemory]:
        """Gather the evidence and kick out if the node is dead; returns (node as written, memory)."""
        now = self.clock.now()
        resync = timedelta(seconds=self.settings.resync_seconds)
        try:
            lease = await self.leases.get(view.name, self.writer.budget())
        except ApiError as exc:  # no evidence is no verdict: look again at the next resync
            log.warning("could not read the node Lease", extra={"node": view.name, "error": str(exc)})
            return None, attrs.evolve(memory, look_at=now + resync)
        answering = await self.probe.answering(view.addresses, self.settings.liveness_probe_ports)
        evidence = Evidence(lease=lease, lease_before=memory.lease, answering=answering)
        memory = attrs.evolve(memory, lease=lease)
        death = death_verdict(evidence, now, fencing=self.settings.fencing_on)
        if death.hold is not None:
            return None, self._held(memory, death.hold, death.detail, now + resync)
        if self.settings.dry_run:
            what = "would fence and kick out" if death.fence_next else "would kick out"
            return None, self._held(memory, HoldReason.DRY_RUN, f"{what}: {death.detail}", now + resync)
        if death.fence_next:
            death, memory = await self._fence(view, evidence, memory)
            if not death.dead:
                return None, memory
        return await self._write(view, verdict, death, memory, rejudge), attrs.evolve(memory, failures=0)

    def _held(self, memory: NodeMemory, hold: HoldReason, detail: str, look_at: datetime) -> NodeMemory:
        return attrs.evolve(memory, hold=hold, detail=detail, look_at=look_at)

    async def _fence(self, view: NodeView, evidence: Evidence, memory: NodeMemory) -> tuple[DeathVerdict, NodeMemory]:
        assert self.fencer is not None
        if not self.gate.may_write():
            return DeathVerdict(dead=False), memory
        outcome = await self.fencer.power_off(view)
        if outcome.off:  # every signal must agree now: the machine that was switched off no longer answers
            answering = await self.probe.answering(view.addresses, self.settings.liveness_probe_ports)
            evidence = attrs.evolve(evidence, answering=answering)
        death = death_verdict(evidence, self.clock.now(), fencing=True, fence=outcome)
        if death.dead:
            log.warning("BMC confirmed power Off", extra={"node": view.name, "fencing_seconds": outcome.seconds})
            return death, memory
        failures = memory.failures + 1
        delay = backoff(failures, base=self.settings.resync_seconds / 2, cap=FENCING_BACKOFF_CAP)
        log.warning("fencing failed", extra={"node": view.name, "error": death.detail, "retry_in": round(delay, 1)})
        if self.notes.fencing_error_to_emit(view.name, death.detail):
            await self.events.emit(node_ref(view), "FencingFailed", death.detail, warning=True)
        assert death.hold is not None
        look_at = self.clock.now() + timedelta(seconds=delay)
        return death, attrs.evolve(self._held(memory, death.hold, death.detail, look_at), failures=failures)

    async def _write(
        self,
        view: NodeView,
        verdict: Verdict,
        death: DeathVerdict,
        memory: NodeMemory,
        rejudge: Callable[[NodeView], Verdict],
    ) -> NodeView | None:
        since = memory.notready.since if memory.notready is not None else verdict.since
        record = KickoutRecord(at=self.clock.now().replace(microsecond=0), cordoned=False, tainted=False)

        def build(node: NodeView) -> dict[str, object] | None:
            nonlocal record
            if rejudge(node).action is not Action.CHECK_DEATH:
                return None
            record = KickoutRecord(
                at=record.at,
                cordoned=not node.unschedulable,
                tainted=not node.has_out_of_service_taint,
                fenced=death.fenced,
                since=since,
            )
            return kickout_patch(node, record)

        try:
            written = await self.writer.write("kickout", view, build)
        except NotFound:
            return None
        if written is None:
            return None
        delay = (self.clock.now() - verdict.deadline).total_seconds() if verdict.deadline else 0.0
        metrics.KICKOUTS.inc()
        metrics.KICKOUT_DELAY.observe(max(0.0, delay))
        log.info(
            "node kicked out",
            extra={
                "node": view.name,
                "status": written.ready.value,
                "action": "kickout",
                "cordoned": record.cordoned,
                "tainted": record.tainted,
                "fenced": record.fenced,
                "late_seconds": round(delay, 3),
                "evidence": death.detail,
            },
        )
        started = f"NotReady since {since:%Y-%m-%dT%H:%M:%SZ}; " if since else ""
        message = f"{started}{death.detail}; cordoned and tainted node.kubernetes.io/out-of-service=nodeshutdown"
        await self.events.emit(node_ref(written), "NodeKickedOut", message)
        return written
