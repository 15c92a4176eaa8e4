"""After the kickout: the pods leave, the node is repaired if tampered with, powered on, kicked in.

* Force delete: while the node is NotReady and tainted out-of-service, and the taint
  passed the death verdict in the current NotReady period (`verified`), its
  Terminating pods are deleted with grace period 0 and a UID precondition (the pod
  GC's own rule, without its 20 s period). A pod that tolerates the taint is never
  touched.
* Release: once no pod from before the kickout is left, the record says so
  (`released`), `PodsReleased` is emitted and `asklepios_recovery_seconds` observed.
* Power on: only a machine Asklepios itself powered off, never an excluded node, not
  while paused or flapping: once released, or at the latest
  ASKLEPIOS_KICKIN_POD_WAIT_SECONDS after the kickout (`PowerOnForced`, naming the
  pods). It then comes back through the normal kickin.
* Repair: a cordon of ours that someone removed while the node is still down is put
  back; our taint only through the death verdict of that moment (a live kubelet
  behind a short NotReady must never be tainted again). Kickin: exactly what the
  record says is undone, after the pre-kickout pods are gone, or once
  ASKLEPIOS_KICKIN_POD_WAIT_SECONDS ran out (`KickinForced`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

import anyio
import attrs

from asklepios.config import Settings
from asklepios.core.evidence import DeathVerdict, HoldReason
from asklepios.core.judge import Action, Verdict
from asklepios.core.node import NodeView
from asklepios.core.periods import NodeMemory
from asklepios.core.pod import force_delete_candidates
from asklepios.core.records import NodeRecord
from asklepios.engine.clock import Clock
from asklepios.engine.fencing import Fencer
from asklepios.engine.gate import WriteGate
from asklepios.engine.notes import Notes
from asklepios.engine.ports import EventPort, PodDeletePort, PodWatchPort
from asklepios.engine.records import RecordWriter
from asklepios.engine.retry import count_failure
from asklepios.engine.verdict import DeathCheck, look_again, still_due
from asklepios.engine.writes import NodeWriter
from asklepios.kube.client import ApiError, Conflict, NotFound
from asklepios.kube.events import node_ref
from asklepios.kube.nodes import kickin_patch, repair_patch
from asklepios.observe import metrics

log = logging.getLogger("asklepios.healer")


def verified_now(view: NodeView, memory: NodeMemory) -> bool:
    """The taint passed the death verdict in the node's current NotReady period."""
    record = view.kickout
    if record is None or record.verified is None or memory.notready is None:
        return False
    return record.verified >= memory.notready.since


@attrs.define(eq=False)
class Recovery:
    settings: Settings
    clock: Clock
    gate: WriteGate
    pods: PodWatchPort
    deleter: PodDeletePort
    fencer: Fencer | None
    check: DeathCheck
    writer: NodeWriter
    records: RecordWriter
    events: EventPort
    notes: Notes
    _deleted: dict[str, set[str]] = attrs.Factory(dict)  # node -> pod UIDs already force-deleted (or in flight)

    def _may_force_delete(self, view: NodeView, memory: NodeMemory) -> bool:
        return not view.ready.is_ready and view.has_out_of_service_taint and verified_now(view, memory)

    def pending_deletes(self, view: NodeView, memory: NodeMemory) -> bool:
        """Terminating pods of this out-of-service node not force-deleted yet."""
        if not self._may_force_delete(view, memory):
            return False
        done = self._deleted.get(view.name, set())
        return any(p.uid not in done for p in force_delete_candidates(self.pods.pods(view.name) or []))

    async def release_pods(self, view: NodeView, memory: NodeMemory) -> None:
        """Force-delete the Terminating pods of a NotReady, out-of-service node (the pod GC's rule)."""
        if not self._may_force_delete(view, memory):
            return
        pods = self.pods.pods(view.name)
        done = self._deleted.setdefault(view.name, set())
        for pod in force_delete_candidates(pods or []):
            if pod.uid in done or not self.gate.may_write():
                continue  # once per pod: one held by a finalizer is not deleted again and again
            done.add(pod.uid)
            try:
                await self.deleter.force_delete(pod, self.writer.budget())
                metrics.PODS_FORCE_DELETED.inc()
                log.info("pod force-deleted", extra={"node": view.name, "pod": pod.key, "action": "force delete"})
            except (NotFound, Conflict):  # gone already, or replaced by a pod with another UID
                pass
            except ApiError as exc:
                done.discard(pod.uid)  # try again at the next event or resync
                count_failure("delete pod", exc)
                log.warning("could not force-delete pod", extra={"node": view.name, "pod": pod.key, "error": str(exc)})

    def forget(self, node: str) -> None:
        self._deleted.pop(node, None)

    async def repair(
        self,
        view: NodeView,
        memory: NodeMemory,
        verdict: Verdict,
        rejudge: Callable[[NodeView], Verdict],
        *,
        paused: bool = False,
        guard: Callable[[], str | None] = lambda: None,
    ) -> tuple[NodeView | None, NodeMemory]:
        """Put back a cordon of ours; our taint only if the node is dead right now, not paused, and
        the guard allows kickouts (`guard()`: why it holds them now). Without its taint the node is
        not kicked out any more: putting back even the cordon starts a new kickout, so while too many
        nodes are NotReady nothing is put back (the 60-minute soak: a record written just before an
        apiserver outage, its node patch never sent, and the cordon restored with 5 of 5 NotReady).
        The guard is asked again before a ForceOff and before the patch: a node that goes NotReady
        while the verdict gathers its evidence counts (the 60-minute soak on 30e7fe4: a third node
        went NotReady 0.1 s after a repair began, and its taint went back with 3 NotReady of 2 allowed)."""
        record = view.kickout
        assert record is not None
        death = None
        missing = record.tainted and not view.has_out_of_service_taint
        if missing and not paused and (held := guard()) is not None:
            return None, self._held_by_guard(view, memory, held)
        if missing and not self.settings.dry_run and not paused:
            now = self.clock.now()

            def due() -> DeathVerdict | None:
                held = guard()
                if held is not None:
                    return DeathVerdict(False, hold=HoldReason.TOO_MANY_NOTREADY, detail=held)
                return still_due(view, rejudge, Action.REPAIR)

            death, _, memory = await self.check.confirm(view, memory, still_due=due)
            if death.dead and (held := guard()) is not None:
                return None, self._held_by_guard(view, memory, held)
            if death.hold is HoldReason.TOO_MANY_NOTREADY:
                return None, self._held_by_guard(view, memory, death.detail)
            if not death.dead:
                resync = timedelta(seconds=self.settings.resync_seconds)
                memory = attrs.evolve(
                    memory, hold=death.hold, detail=death.detail, look_at=look_again(death, now, resync)
                )
                log.warning(
                    "taint not repaired: the node shows signs of life",
                    extra={
                        "node": view.name,
                        "reason": death.hold.value if death.hold else None,
                        "detail": death.detail,
                    },
                )
                death = None
            else:
                verified = attrs.evolve(record, verified=now.replace(microsecond=0))
                await self.records.put_node(view.name, attrs.evolve(view.record or NodeRecord(), kickout=verified))
                memory = attrs.evolve(memory, hold=None, detail="", look_at=None)

        def build(node: NodeView) -> dict[str, object] | None:
            if node.kickout is None or rejudge(node).action is not Action.REPAIR:
                return None
            if not paused and guard() is not None and node.kickout.tainted and not node.has_out_of_service_taint:
                return None  # the guard holds now: nothing is put back (looked at again on its flip)
            return repair_patch(node, node.kickout, death)

        applied: list[bool] = []

        def after_lost(node: NodeView) -> dict[str, object] | None:
            """Our PATCH may have been applied: nothing left to put back is then our repair."""
            if node.kickout is not None and repair_patch(node, node.kickout, death) is None:
                applied.append(True)
                return None
            return build(node)

        written = await self.writer.write("repair", view, build, lost=after_lost)
        if written is not None or applied:
            metrics.REPAIRS.inc()
            what = "cordon and taint" if death is not None else "cordon"
            log.warning(
                "repaired kickout",
                extra={"node": view.name, "action": "repair", "reason": verdict.detail, "restored": what},
            )
        return written, memory

    def _held_by_guard(self, view: NodeView, memory: NodeMemory, why: str) -> NodeMemory:
        log.warning(
            "kickout not repaired: kickouts are held",
            extra={"node": view.name, "reason": HoldReason.TOO_MANY_NOTREADY.value, "detail": why},
        )
        resync = timedelta(seconds=self.settings.resync_seconds)
        return attrs.evolve(memory, hold=HoldReason.TOO_MANY_NOTREADY, detail=why, look_at=self.clock.now() + resync)

    async def release(self, view: NodeView, *, volumes_followed: bool = False) -> NodeView | None:
        record = view.kickout
        assert record is not None
        now = self.clock.now().replace(microsecond=0)
        await self.records.put_node(
            view.name, attrs.evolve(view.record or NodeRecord(), kickout=attrs.evolve(record, released=now))
        )
        after = (now - record.at).total_seconds()
        if record.since is not None and not volumes_followed:  # else the recovery ends with the volumes
            metrics.RECOVERY_SECONDS.observe(max(0.0, (now - record.since).total_seconds()))
        log.info("pods released", extra={"node": view.name, "action": "release", "seconds_since_kickout": after})
        message = f"no pod from before the kickout is left on the node, {after:.0f}s after the kickout"
        await self.events.emit(node_ref(view), "PodsReleased", message)
        return view

    async def release_volumes(self, view: NodeView) -> NodeView | None:
        """No VolumeAttachment of the node from before the kickout is left: its volumes are free."""
        record = view.kickout
        assert record is not None
        now = self.clock.now().replace(microsecond=0)
        updated = attrs.evolve(record, volumes_released=now)
        await self.records.put_node(view.name, attrs.evolve(view.record or NodeRecord(), kickout=updated))
        after = (now - record.at).total_seconds()
        if record.since is not None:
            metrics.RECOVERY_SECONDS.observe(max(0.0, (now - record.since).total_seconds()))
        log.info(
            "volumes released", extra={"node": view.name, "action": "volumes released", "seconds_since_kickout": after}
        )
        message = f"no VolumeAttachment of the node is left for a volume from before the kickout, {after:.0f}s after it"
        await self.events.emit(node_ref(view), "VolumesReleased", message)
        return view

    async def power_on(self, view: NodeView, verdict: Verdict) -> NodeView | None:
        assert self.fencer is not None
        record = view.kickout
        assert record is not None
        if not self.gate.may_write():
            return None
        if verdict.pods:  # waited ASKLEPIOS_KICKIN_POD_WAIT_SECONDS: on anyway, and say which pods are left
            names = ", ".join(verdict.pods[:20])
            waited = self.settings.kickin_pod_wait_seconds
            log.warning(
                "powering on although pods from before the kickout are left", extra={"node": view.name, "pods": names}
            )
            await self.events.emit(
                node_ref(view),
                "PowerOnForced",
                f"waited {waited}s after the kickout; still there: {names}",
                warning=True,
            )
        try:
            await self.fencer.power_on(view)
        except Exception as exc:
            log.warning("could not power the node on", extra={"node": view.name, "error": str(exc)})
            if self.notes.fencing_error_to_emit(view.name, str(exc)):
                await self.events.emit(node_ref(view), "FencingFailed", f"power on: {exc}", warning=True)
            raise
        now = self.clock.now().replace(microsecond=0)
        log.warning("node powered on", extra={"node": view.name, "action": "power on"})
        await self.records.put_node(
            view.name, attrs.evolve(view.record or NodeRecord(), kickout=attrs.evolve(record, powered_on=now))
        )
        return view

    async def kick_in(
        self, view: NodeView, verdict: Verdict, rejudge: Callable[[NodeView], Verdict]
    ) -> NodeView | None:
        def build(node: NodeView) -> dict[str, object] | None:
            if node.kickout is None or rejudge(node).action is not Action.KICKIN:
                return None
            return kickin_patch(node, node.kickout)

        record = view.record or NodeRecord()
        with anyio.CancelScope(shield=True):  # a SIGTERM never parts the undo from the record it clears
            written = await self.writer.write("kickin", view, build)
            if written is not None:  # the flap history stays
                await self.records.put_node(view.name, NodeRecord(kickouts=record.kickouts))
        if written is None:
            return None
        metrics.KICKINS.inc()
        ref = node_ref(written)
        if verdict.pods:
            metrics.KICKINS_FORCED.inc()
            waited = self.settings.kickin_pod_wait_seconds
            names = ", ".join(verdict.pods[:20])
            log.warning("node kicked in although pods are still terminating", extra={"node": view.name, "pods": names})
            await self.events.emit(ref, "KickinForced", f"waited {waited}s; still Terminating: {names}", warning=True)
        log.info("node kicked in", extra={"node": view.name, "status": written.ready.value, "action": "kickin"})
        await self.events.emit(ref, "NodeKickedIn", "Ready again; undid what the kickout changed")
        return written
