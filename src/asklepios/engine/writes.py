"""Conflict-safe node writes: decide on a node, patch it guarded by its resourceVersion, re-decide on failure.

Every write to a node is a merge patch carrying the resourceVersion it was decided
on. After a 409 (or a transient failure) the node is read again and the write is
built again from the fresh object, or dropped when it is no longer due, so no other
writer's taint or annotation is ever lost. The apiserver's answer to a patch is the
node as written: the caller puts it into its cache at once, so its next write does
not conflict with its own previous one.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from asklepios.core.node import NodeView
from asklepios.engine.gate import REQUEST_TIMEOUT, WriteGate
from asklepios.engine.ports import JSON, NodePort
from asklepios.engine.retry import attempts
from asklepios.kube.client import ApiError


@attrs.define(eq=False)
class NodeWriter:
    nodes: NodePort
    gate: WriteGate
    attach: Callable[[NodeView], NodeView] = lambda view: view  # a re-read node gets our record again

    def budget(self) -> float:
        """A write may take no longer than this replica is sure to stay the leader."""
        return max(0.5, min(REQUEST_TIMEOUT, self.gate.write_budget()))

    async def write(
        self,
        operation: str,
        view: NodeView,
        build: Callable[[NodeView], JSON | None],
        *,
        lost: Callable[[NodeView], JSON | None] | None = None,
    ) -> NodeView | None:
        """Patch the node with `build(view)`; after a failed attempt, re-read it and build again.

        `build` returns None when the write is no longer due on the node it is given.
        `lost` builds instead after an attempt whose answer was lost (a timeout: the
        apiserver may have applied it), when the caller can tell its own change.
        Returns the node as written, or None when nothing was written (no longer
        due, or no longer the leader). Raises ApiError once the retries give up.
        """
        answer_lost = False
        async for attempt in attempts(operation, self.budget()):
            with attempt:
                if attempt.num > 1:
                    view = self.attach(await self.nodes.get(view.name))
                body = (lost if answer_lost and lost is not None else build)(view)
                if body is None or not self.gate.may_write():
                    return None
                try:
                    return await self.nodes.patch(view.name, body, self.budget())
                except ApiError as exc:
                    answer_lost = exc.status == 0
                    raise
        return None  # pragma: no cover - the retry context either returns or raises
