"""Which nodes the healer follows, the newest view of each, and what the guard counts.

Two node watches feed it: the nodes matching ASKLEPIOS_NODE_SELECTOR, and the
cordoned nodes (`spec.unschedulable=true`). A node is followed while the first one
delivers it, or while the second one does and it carries our kickout record, so a
kicked-out node that leaves the selector is still kicked in. Only the selected
nodes that are not excluded count for the guard: an excluded node powered off for
maintenance must not hold everybody else's kickout.
"""

from __future__ import annotations

import attrs

from asklepios.core.guard import MaxUnhealthy, hold_reason
from asklepios.core.node import NodeView
from asklepios.observe import metrics

SELECTED, CORDONED = "selected", "cordoned"


def _older(new: NodeView, old: NodeView) -> bool:
    try:
        return int(new.resource_version) < int(old.resource_version)
    except ValueError:
        return False


@attrs.frozen
class Change:
    """What putting a view into the book did."""

    old: NodeView | None  # the view it replaced (or kept, when `stale`)
    guard_moved: bool = False  # the guard's NotReady count changed
    stale: bool = False  # older than the view we have: ignored


@attrs.define(eq=False)
class NodeBook:
    views: dict[str, NodeView] = attrs.Factory(dict)
    parked: dict[str, NodeView] = attrs.Factory(dict)  # cordoned, not followed (yet): a record may follow
    members: dict[str, set[str]] = attrs.Factory(lambda: {SELECTED: set(), CORDONED: set()})
    _guarded: set[str] = attrs.Factory(set)  # selected, not excluded: what the guard counts
    _guarded_down: set[str] = attrs.Factory(set)
    _down: set[str] = attrs.Factory(set)  # selected and NotReady (the gauge)

    def followed(self, view: NodeView) -> bool:
        name = view.name
        return name in self.members[SELECTED] or (name in self.members[CORDONED] and view.kickout is not None)

    def still_followed(self, name: str) -> bool:
        view = self.views.get(name)
        return view is None or self.followed(view)

    def put(self, view: NodeView) -> Change | None:
        """Keep `view` if it is followed and not older than ours; None when it is not followed."""
        old = self.views.get(view.name)
        if old is not None and _older(view, old):
            return Change(old=old, stale=True)
        if not self.followed(view):
            if view.name in self.members[CORDONED]:
                self.parked[view.name] = view
            return None
        self.parked.pop(view.name, None)
        self.views[view.name] = view
        return Change(old=old, guard_moved=self._count(view))

    def latest(self, name: str) -> NodeView | None:
        """The newest view of a node, followed or parked."""
        return self.views.get(name) or self.parked.get(name)

    def forget(self, name: str) -> None:
        self.views.pop(name, None)
        if name not in self.members[CORDONED]:
            self.parked.pop(name, None)
        for counted in (self._guarded, self._guarded_down, self._down):
            counted.discard(name)
        self.publish()

    def _count(self, view: NodeView) -> bool:
        name, before = view.name, len(self._guarded_down)
        selected = name in self.members[SELECTED]
        down = selected and not view.ready.is_ready
        self._down.add(name) if down else self._down.discard(name)
        if selected and view.excluded_by is None:
            self._guarded.add(name)
            self._guarded_down.add(name) if down else self._guarded_down.discard(name)
        else:
            self._guarded.discard(name)
            self._guarded_down.discard(name)
        self.publish()
        return before != len(self._guarded_down)

    def counts(self) -> tuple[int, int]:
        """(watched nodes the guard counts, of which NotReady)."""
        return len(self._guarded), len(self._guarded_down)

    def guard(self, max_unhealthy: MaxUnhealthy) -> str | None:
        """Why new kickouts are held now, from the counts of nodes that can be kicked out."""
        return hold_reason(max_unhealthy, len(self._guarded), len(self._guarded_down))

    def publish(self) -> None:
        metrics.WATCHED_NODES.set(len(self.members[SELECTED]))
        metrics.NOTREADY_NODES.set(len(self._down))
