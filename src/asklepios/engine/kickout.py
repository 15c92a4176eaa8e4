"""The kickout at its deadline: the death verdict (fencing first, if on), then cordon and taint.

This is where a wrong decision costs data, so the order is fixed:

1. `DeathCheck.confirm`: the node Lease watched on our clock, the probe, and with
   fencing the BMC's power Off: any sign of life holds the kickout (`kubelet alive`,
   `node answers`, `fencing failed`, `no BMC`, `BMC mismatch`), looked at again later;
2. Asklepios' own record of what it is about to change (what it cordons and taints,
   what it saw) is stored in its ConfigMap, so a crash right after the next step
   still leaves a record that the kickin undoes exactly;
3. the one node patch that cordons, taints and writes the mirror annotation.

Without fencing, steps 1 and 2 run just before the deadline (VERDICT_LEAD), and at
the deadline `confirm` runs again before step 3: the verdict of that moment still
gates the taint, and only its Lease read and the patch are left on the deadline's
path. If the patch is no longer due (the node came back, its kubelet renewed) the
record is rolled back. A
node kicked out more than ASKLEPIOS_FLAP_MAX_KICKOUTS times within
ASKLEPIOS_FLAP_WINDOW_SECONDS is marked flapping: it stays kicked out (no kickin, no
power on) until `asklepios release`. In dry run everything up to step 2 is decided,
announced and not done.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import anyio
import attrs

from asklepios.config import Settings
from asklepios.core.evidence import VERDICT_LEAD, DeathVerdict, Evidence, HoldReason
from asklepios.core.judge import Action, Verdict
from asklepios.core.node import NodeView
from asklepios.core.periods import NodeMemory
from asklepios.core.records import KickoutRecord, NodeRecord
from asklepios.engine.clock import Clock
from asklepios.engine.gate import WriteGate
from asklepios.engine.ports import EventPort, NodePort
from asklepios.engine.records import RecordWriter
from asklepios.engine.retry import backoff_delay
from asklepios.engine.verdict import DeathCheck, look_again, still_due
from asklepios.engine.writes import NodeWriter
from asklepios.kube.client import NotFound
from asklepios.kube.events import node_ref
from asklepios.kube.nodes import kickout_patch
from asklepios.observe import metrics

log = logging.getLogger("asklepios.healer")
FENCING_BACKOFF_CAP = 60.0
_FENCING_HOLDS = (HoldReason.FENCING_FAILED, HoldReason.NO_BMC, HoldReason.BMC_MISMATCH)


@attrs.define(eq=False)
class Kickout:
    settings: Settings
    clock: Clock
    gate: WriteGate
    check: DeathCheck
    nodes: NodePort
    writer: NodeWriter
    records: RecordWriter
    events: EventPort
    guard_count: Callable[[], str] = lambda: ""  # "N of M watched nodes NotReady", for the record
    view_of: Callable[[str], NodeView | None] = lambda name: None  # the node as cached now

    async def attempt(
        self, view: NodeView, verdict: Verdict, memory: NodeMemory, rejudge: Callable[[NodeView], Verdict]
    ) -> tuple[NodeView | None, NodeMemory]:
        """Gather the evidence and kick out if the node is dead; returns (node as written, memory)."""
        now = self.clock.now()
        resync = timedelta(seconds=self.settings.resync_seconds)
        if verdict.deadline is not None and now < verdict.deadline:  # ahead of the deadline
            memory = await self.check.probe_ahead(view, memory)
            if not self.settings.fencing_on and not self.settings.dry_run:
                written, memory = await self._ahead(view, verdict, memory, rejudge)
                if written is not None:
                    return written, memory
            return None, attrs.evolve(memory, look_at=verdict.deadline)  # the deadline gathers it all anew
        due = lambda: still_due(view, rejudge, Action.KICKOUT)  # noqa: E731 - the guard just before a ForceOff
        death, evidence, memory = await self.check.confirm(view, memory, fence=not self.settings.dry_run, still_due=due)
        if death.hold in _FENCING_HOLDS:
            failures = memory.failures + 1
            delay = backoff_delay(failures, base=self.settings.resync_seconds / 2, cap=FENCING_BACKOFF_CAP)
            look_at = self.clock.now() + timedelta(seconds=delay)
            return None, attrs.evolve(self._held(memory, death, look_at), failures=failures)
        if death.hold is not None:
            return None, self._held(memory, death, look_again(death, now, resync))
        if self.settings.dry_run:
            what = "would fence and kick out" if death.fence_next else "would kick out"
            dry = DeathVerdict(False, HoldReason.DRY_RUN, detail=f"{what}: {death.detail}")
            return None, self._held(memory, dry, now + resync)
        assert death.dead
        assert evidence is not None
        written = await self._write(view, verdict, death, evidence, memory, rejudge)
        if written is None:  # rolled back (the node moved under the write): look again later, never in a loop
            failures = memory.failures + 1
            delay = backoff_delay(failures, base=1.0, cap=float(self.settings.resync_seconds))
            return None, attrs.evolve(memory, failures=failures, look_at=self.clock.now() + timedelta(seconds=delay))
        return written, attrs.evolve(memory, failures=0, hold=None, detail="", look_at=None)

    async def _ahead(
        self, view: NodeView, verdict: Verdict, memory: NodeMemory, rejudge: Callable[[NodeView], Verdict]
    ) -> tuple[NodeView | None, NodeMemory]:
        """Without fencing: the record stored just before the deadline, so that at the
        deadline only the verdict's Lease read and the node patch are left (the kickout lag
        at 5,000 nodes was three requests in a row: the Lease, the record, the node).

        A look just before the deadline decides whether the record is worth writing; the
        taint still waits for the verdict of the deadline itself. Anything but `dead`
        leaves the memory as the probe left it: the deadline then gathers everything anew.
        """
        assert verdict.deadline is not None
        await self._sleep_until(verdict.deadline - timedelta(seconds=VERDICT_LEAD))
        view = self.view_of(view.name) or view
        death, evidence, looked = await self.check.confirm(view, memory, fence=False)
        memory = attrs.evolve(memory, lease=looked.lease)  # the probe's answers stay for the deadline
        if not death.dead or evidence is None:
            return None, memory
        written = await self._write(view, verdict, death, evidence, memory, rejudge, deadline=verdict.deadline)
        if written is None:
            return None, memory
        return written, attrs.evolve(memory, failures=0, hold=None, detail="", look_at=None, answers=(), probed_at=None)

    async def _sleep_until(self, when: datetime) -> None:
        """Sleep on the loop's clock, then by wall time (a sleep never ends before `when`)."""
        await anyio.sleep(max(0.0, (when - self.clock.now()).total_seconds()))
        if (left := (when - self.clock.now()).total_seconds()) > 0:
            await anyio.sleep(left + 0.001)

    async def _dead_at(
        self, deadline: datetime, view: NodeView, memory: NodeMemory
    ) -> tuple[NodeView, DeathVerdict] | None:
        """The verdict of the deadline itself, for a record stored ahead of it: (the node then,
        the verdict its taint goes out on), or None."""
        await self._sleep_until(deadline)
        fresh = self.view_of(view.name)  # its newest version, judged with the record as decided
        view = attrs.evolve(fresh, record=view.record) if fresh is not None else view
        death, _, _ = await self.check.confirm(view, memory, fence=False)
        if not death.dead:
            log.info("not dead at the deadline: the kickout is held", extra={"node": view.name, "why": death.detail})
            return None
        return view, death

    def _held(self, memory: NodeMemory, death: DeathVerdict, look_at: datetime) -> NodeMemory:
        return attrs.evolve(memory, hold=death.hold, detail=death.detail, look_at=look_at)

    def _record(
        self, node: NodeView, death: DeathVerdict, evidence: Evidence, memory: NodeMemory, at: datetime, guard: str
    ) -> NodeRecord:
        since = memory.notready.since if memory.notready is not None else None
        seen = (*evidence.summary(), f"guard: {guard}") if guard else evidence.summary()
        kickout = KickoutRecord(
            at=at,
            cordoned=not node.unschedulable,
            tainted=not node.has_out_of_service_taint,
            fenced=death.fenced,
            found_off=death.found_off,
            since=since,
            verified=at,
            evidence=(*seen, f"verdict: {death.detail}"),
        )
        old = node.record or NodeRecord()
        window = timedelta(seconds=self.settings.flap_window_seconds)
        kickouts = (*(t for t in old.kickouts if t > at - window), at)
        flapping = len(kickouts) > self.settings.flap_max_kickouts
        return attrs.evolve(
            old, kickout=kickout, notready=memory.notready, ready=None, kickouts=kickouts, flapping=flapping
        )

    async def _write(
        self,
        view: NodeView,
        verdict: Verdict,
        death: DeathVerdict,
        evidence: Evidence,
        memory: NodeMemory,
        rejudge: Callable[[NodeView], Verdict],
        deadline: datetime | None = None,
    ) -> NodeView | None:
        """Record, then patch. With `deadline` (a record stored ahead of it) the patch waits
        for the deadline and for the death verdict gathered then."""
        now = self.clock.now()
        at = (max(now, deadline) if deadline is not None else now).replace(microsecond=0)
        guard = self.guard_count()  # as decided: the count moves on while the patch waits for the deadline
        # as stored now: the death check may have just noted a ForceOff, which a roll back must keep
        before = self.records.book.of(view.name) or view.record or NodeRecord()
        try:
            done = await self._record_and_patch(view, death, evidence, memory, rejudge, deadline, at, guard, before)
        except BaseException:  # an error, or cancelled (SIGTERM) between the record and the patch
            await self._roll_back(view.name, before)
            raise
        if done is None:
            await self._roll_back(view.name, before)
            return None
        written, record, taint_on = done
        return await self._announce(written, record, verdict, taint_on)

    async def _record_and_patch(
        self,
        view: NodeView,
        death: DeathVerdict,
        evidence: Evidence,
        memory: NodeMemory,
        rejudge: Callable[[NodeView], Verdict],
        deadline: datetime | None,
        at: datetime,
        guard: str,
        before: NodeRecord,
    ) -> tuple[NodeView, NodeRecord, DeathVerdict] | None:
        """Store the record, then patch the node as it says: (node as written, record, verdict
        the taint went out on), or None when the patch is no longer due (the caller rolls back).

        The patch, once begun, is shielded from cancellation: on SIGTERM it ends (written,
        refused or given up within the write budget) before the leader releases its lease
        (`engine.leader`), so the record is then either what the node shows or rolled back.
        """
        taint_on = death  # the verdict the taint goes out on: the deadline's own, for a record stored ahead
        for _ in range(3):  # the record must say what the patch changes: re-read and redo if the node moved
            record = self._record(view, death, evidence, memory, at, guard)
            await self.records.put_node(view.name, record, urgent=True)  # the taint waits for it
            if deadline is not None:  # the taint: at the deadline, on the verdict of that moment
                at_deadline = await self._dead_at(deadline, view, memory)
                if at_deadline is None:
                    return None
                (view, taint_on), deadline = at_deadline, None
            stale: list[bool] = []
            decided_on = view.record  # a re-read node carries the record just put: judge it as decided

            def build(
                node: NodeView,
                record: NodeRecord = record,
                stale: list[bool] = stale,
                old: NodeRecord | None = decided_on,
                taint_on: DeathVerdict = taint_on,
            ) -> dict[str, object] | None:
                if rejudge(attrs.evolve(node, record=before)).action is not Action.KICKOUT:
                    return None
                if self._record(attrs.evolve(node, record=old), death, evidence, memory, at, guard) != record:
                    stale.append(True)  # someone cordoned or tainted it meanwhile: record that first
                    return None
                assert record.kickout is not None
                return kickout_patch(node, record.kickout, taint_on)

            def after_lost(
                node: NodeView, record: NodeRecord = record, taint_on: DeathVerdict = taint_on
            ) -> dict[str, object] | None:
                """Our PATCH may have been applied: the cordon and taint it adds are then ours."""
                intended = record.kickout
                assert intended is not None
                if (node.unschedulable or not intended.cordoned) and (
                    node.has_out_of_service_taint or not intended.tainted
                ):
                    return kickout_patch(node, intended, taint_on)  # the same again: the node as written
                return build(node)

            with anyio.CancelScope(shield=True):
                written = await self.writer.write("kickout", view, build, lost=after_lost)
            if written is not None:
                return written, record, taint_on
            if not stale:
                return None
            try:
                view = await self.nodes.get(view.name)
            except NotFound:
                return None
        return None

    async def _roll_back(self, node: str, before: NodeRecord) -> None:
        """Put the record back as it was; shielded, so a SIGTERM cannot stop it half-way."""
        with anyio.CancelScope(shield=True):
            try:
                await self.records.put_node(node, before)
            except Exception as exc:  # the record then claims a kickout the node does not show: repaired or kicked in
                log.error("could not roll back the kickout record", extra={"node": node, "error": str(exc)})

    async def _announce(self, written: NodeView, record: NodeRecord, verdict: Verdict, death: DeathVerdict) -> NodeView:
        kickout = record.kickout
        assert kickout is not None
        delay = (self.clock.now() - verdict.deadline).total_seconds() if verdict.deadline else 0.0
        metrics.KICKOUTS.inc()
        metrics.KICKOUT_DELAY.observe(max(0.0, delay))
        log.info(
            "node kicked out",
            extra={
                "node": written.name,
                "status": written.ready.value,
                "action": "kickout",
                "cordoned": kickout.cordoned,
                "tainted": kickout.tainted,
                "fenced": kickout.fenced,
                "late_seconds": round(delay, 3),
                "evidence": death.detail,
            },
        )
        started = f"NotReady since {kickout.since:%Y-%m-%dT%H:%M:%SZ}; " if kickout.since else ""
        message = f"{started}{death.detail}; cordoned and tainted node.kubernetes.io/out-of-service=nodeshutdown"
        await self.events.emit(node_ref(written), "NodeKickedOut", message)
        if record.flapping:
            window = self.settings.flap_window_seconds
            why = (
                f"kicked out {len(record.kickouts)} times within {window}s "
                f"(ASKLEPIOS_FLAP_MAX_KICKOUTS={self.settings.flap_max_kickouts}): stays kicked out, "
                "no kickin and no power on, until `asklepios release " + written.name + "`"
            )
            log.warning("node is flapping", extra={"node": written.name, "kickouts": len(record.kickouts)})
            await self.events.emit(node_ref(written), "NodeFlapping", why, warning=True)
        return attrs.evolve(written, record=record)
