"""The node writes that keep our records exact, besides the verdict's action.

Every act of the leader first brings two things up to date, whatever else is due:

* the period marks in Asklepios' record (when a NotReady or Ready period began, so
  that a restarted controller continues the same countdown), with a ForceOff marker
  dropped once it is stale;
* the `asklepios.io/kickout` annotation on the Node, which only mirrors our record:
  a kubelet may rewrite it, so a forged or stale one is rewritten from the record.

Both are best effort: a failure is logged and the next event or resync tries again.
Neither can add the taint or fence.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

import attrs

from asklepios.config import Settings
from asklepios.core.node import NodeView
from asklepios.core.periods import NodeMemory, marks_out_of_date, wanted_marks
from asklepios.core.records import NodeRecord
from asklepios.engine.clock import Clock
from asklepios.engine.records import RecordWriter
from asklepios.engine.writes import NodeWriter
from asklepios.kube.client import ApiError
from asklepios.kube.nodes import mirror_patch

log = logging.getLogger("asklepios.healer")


@attrs.define(eq=False)
class Upkeep:
    settings: Settings
    clock: Clock
    writer: NodeWriter
    record_writer: RecordWriter

    def due(self, view: NodeView, memory: NodeMemory) -> bool:
        """A mark, the mirror or a stale ForceOff marker to write now."""
        return marks_out_of_date(view, memory) or view.mirror_out_of_date or self.stale_force_off(view, memory)

    def stale_force_off(self, view: NodeView, memory: NodeMemory) -> bool:
        """A ForceOff marker left from a NotReady period that ended without a kickout.

        Only once the ForceOff can no longer be applying (the fencing timeout after it went
        out): a machine that was powering on when the ForceOff went out may post Ready once
        before its BMC applies it, and the Off that follows is still Asklepios' own to undo.
        """
        record = view.record
        if record is None or record.force_off is None or view.kickout is not None or memory.notready is not None:
            return False
        return self.clock.now() - record.force_off >= timedelta(seconds=self.settings.fencing_timeout_seconds)

    async def write_marks(self, view: NodeView, memory: NodeMemory, latest: Callable[[], NodeView]) -> NodeView:
        """The period marks into our record; returns `latest()` once written, else `view`."""
        stale = self.stale_force_off(view, memory)
        if not marks_out_of_date(view, memory) and not stale:
            return view
        notready, ready = wanted_marks(view, memory)
        record = attrs.evolve(view.record or NodeRecord(), notready=notready, ready=ready)
        if stale:
            record = attrs.evolve(record, force_off=None)
        try:
            await self.record_writer.put_node(view.name, record)
        except ApiError as exc:  # the marks make restarts exact; the next event or resync retries
            log.warning("could not record the period start", extra={"node": view.name, "error": str(exc)})
            return view
        return latest()

    async def write_mirror(self, view: NodeView) -> NodeView | None:
        """The annotation says what our record says; returns the node as written, or None."""
        if not view.mirror_out_of_date:
            return None

        def build(node: NodeView) -> dict[str, object] | None:
            return mirror_patch(node, node.kickout) if node.mirror_out_of_date else None

        try:
            return await self.writer.write("mirror", view, build)
        except ApiError as exc:
            log.warning("could not rewrite the kickout annotation", extra={"node": view.name, "error": str(exc)})
            return None
