"""After the kickout: the pods leave, the node is repaired if tampered with, powered on, kicked in.

* Force delete: while the node is NotReady and tainted out-of-service, its
  Terminating pods are deleted with grace period 0 and a UID precondition (the pod
  GC's own rule, without its 20 s period). A pod that tolerates the taint is never
  touched.
* Release: once no pod from before the kickout is left, the record says so
  (`released`), `PodsReleased` is emitted and `asklepios_recovery_seconds` observed.
* Power on: a fenced node is switched on again once released (unless
  ASKLEPIOS_FENCING_POWER_ON=false); it then comes back through the normal kickin.
* Repair: a cordon or taint of ours that someone removed while the node is still
  down is put back. Kickin: exactly what the record says is undone, after the
  pre-kickout pods are gone, or once ASKLEPIOS_KICKIN_POD_WAIT_SECONDS ran out
  (`KickinForced`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs

from asklepios.config import Settings
from asklepios.core.fencing import FencingError
from asklepios.core.judge import Action, Verdict
from asklepios.core.node import NodeView
from asklepios.core.pod import force_delete_candidates
from asklepios.engine.clock import Clock
from asklepios.engine.fencing import Fencer
from asklepios.engine.gate import WriteGate
from asklepios.engine.kickout import node_ref
from asklepios.engine.notes import Notes
from asklepios.engine.ports import EventPort, PodDeletePort, PodWatchPort
from asklepios.engine.retry import count_failure
from asklepios.engine.writes import NodeWriter
from asklepios.kube.client import ApiError, Conflict, NotFound
from asklepios.kube.nodes import kickin_patch, record_patch, repair_patch
from asklepios.observe import metrics

log = logging.getLogger("asklepios.healer")


@attrs.define(eq=False)
class Recovery:
    settings: Settings
    clock: Clock
    gate: WriteGate
    pods: PodWatchPort
    deleter: PodDeletePort
    fencer: Fencer | None
    writer: NodeWriter
    events: EventPort
    notes: Notes
    _deleted: dict[str, set[str]] = attrs.Factory(dict)  # node -> pod UIDs already force-deleted (or in flight)

    def pending_deletes(self, view: NodeView) -> bool:
        """Terminating pods of this out-of-service node not force-deleted yet."""
        if view.ready.is_ready or not view.has_out_of_service_taint or view.kickout is None:
            return False
        done = self._deleted.get(view.name, set())
        return any(p.uid not in done for p in force_delete_candidates(self.pods.pods(view.name) or []))

    async def release_pods(self, view: NodeView) -> None:
        """Force-delete the Terminating pods of a NotReady, out-of-service node (the pod GC's rule)."""
        if view.ready.is_ready or not view.has_out_of_service_taint or view.kickout is None:
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

    async def repair(self, view: NodeView, verdict: Verdict, rejudge: Callable[[NodeView], Verdict]) -> NodeView | None:
        def build(node: NodeView) -> dict[str, object] | None:
            if node.kickout is None or rejudge(node).action is not Action.REPAIR:
                return None
            return repair_patch(node, node.kickout)

        written = await self.writer.write("repair", view, build)
        if written is not None:
            metrics.REPAIRS.inc()
            log.warning("repaired kickout", extra={"node": view.name, "action": "repair", "reason": verdict.detail})
        return written

    async def release(self, view: NodeView, rejudge: Callable[[NodeView], Verdict]) -> NodeView | None:
        now = self.clock.now().replace(microsecond=0)

        def build(node: NodeView) -> dict[str, object] | None:
            if node.kickout is None or rejudge(node).action is not Action.RELEASE:
                return None
            return record_patch(node, attrs.evolve(node.kickout, released=now))

        written = await self.writer.write("release", view, build)
        if written is None or written.kickout is None:
            return written
        record = written.kickout
        after = (now - record.at).total_seconds()
        if record.since is not None:
            metrics.RECOVERY_SECONDS.observe(max(0.0, (now - record.since).total_seconds()))
        log.info("pods released", extra={"node": view.name, "action": "release", "seconds_since_kickout": after})
        message = f"no pod from before the kickout is left on the node, {after:.0f}s after the kickout"
        await self.events.emit(node_ref(written), "PodsReleased", message)
        return written

    async def power_on(self, view: NodeView, rejudge: Callable[[NodeView], Verdict]) -> NodeView | None:
        assert self.fencer is not None
        if not self.gate.may_write():
            return None
        try:
            await self.fencer.power_on(view)
        except FencingError as exc:
            log.warning("could not power the node on", extra={"node": view.name, "error": str(exc)})
            if self.notes.fencing_error_to_emit(view.name, str(exc)):
                await self.events.emit(node_ref(view), "FencingFailed", f"power on: {exc}", warning=True)
            raise
        now = self.clock.now().replace(microsecond=0)
        log.warning("node powered on", extra={"node": view.name, "action": "power on"})

        def build(node: NodeView) -> dict[str, object] | None:
            if node.kickout is None or rejudge(node).action is not Action.POWER_ON:
                return None
            return record_patch(node, attrs.evolve(node.kickout, powered_on=now))

        return await self.writer.write("power on", view, build)

    async def kick_in(
        self, view: NodeView, verdict: Verdict, rejudge: Callable[[NodeView], Verdict]
    ) -> NodeView | None:
        def build(node: NodeView) -> dict[str, object] | None:
            if node.kickout is None or rejudge(node).action is not Action.KICKIN:
                return None
            return kickin_patch(node, node.kickout)

        written = await self.writer.write("kickin", view, build)
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

    async def report_damaged(self, view: NodeView) -> None:
        if view.kickout is None or not view.kickout.damaged or not self.notes.damaged_to_report(view.name):
            return
        message = "the asklepios.io/kickout annotation is not readable: treating the node as cordoned and tainted by us"
        log.error(message, extra={"node": view.name})
        await self.events.emit(node_ref(view), "KickoutRecordDamaged", message, warning=True)
