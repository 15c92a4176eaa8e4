"""The VolumeAttachments of the cluster, kept in memory: when a kicked-out node's volumes are free.

A kicked-out node's recovery ends when its ReadWriteOnce volumes can be attached
elsewhere, i.e. when none of its VolumeAttachments from before the kickout is left
(:mod:`asklepios.core.volumes`). One list-then-watch of all VolumeAttachments (the
existing :class:`~asklepios.kube.reflector.Reflector`) serves every node: there is one
per attached volume, far fewer than pods, and a field selector on ``spec.nodeName`` is
not served for them. The store keeps them by node, so a look at one node costs nothing.

``changed(node)`` is called (from the event loop, must not block) whenever an
attachment of ``node`` appears, changes or goes, and for every node on a (re)list: the
healer re-evaluates that node (a `VolumesReleased` Event, the end of its recovery time).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs

from asklepios.core.records import KickoutRecord
from asklepios.core.volumes import Attachment, NodeVolumes
from asklepios.kube.client import KubeClient
from asklepios.kube.reflector import Hooks, Reflector
from asklepios.kube.volumes import VOLUME_ATTACHMENTS_PATH, parse_attachment

log = logging.getLogger("asklepios.watch")


@attrs.define(eq=False)
class AttachmentStore:
    """The Store of the VolumeAttachment reflector, indexed by node."""

    changed: Callable[[str], None] = lambda node: None
    synced: bool = False
    _items: dict[str, Attachment] = attrs.Factory(dict)
    _by_node: dict[str, dict[str, Attachment]] = attrs.Factory(dict)

    def replace(self, items: dict[str, Attachment]) -> None:
        before = set(self._by_node)
        self._items, self._by_node = {}, {}
        for key, item in items.items():
            self._put(key, item)
        self.synced = True
        for node in sorted(before | set(self._by_node)):
            self.changed(node)

    def upsert(self, key: str, item: Attachment) -> None:
        old = self._items.get(key)
        if old is not None and old.node != item.node:  # spec.nodeName is immutable; be safe anyway
            self._drop(key, old)
            self.changed(old.node)
        self._put(key, item)
        self.changed(item.node)

    def delete(self, key: str) -> None:
        old = self._items.get(key)
        if old is not None:
            self._drop(key, old)
            self.changed(old.node)

    def _put(self, key: str, item: Attachment) -> None:
        self._items[key] = item
        self._by_node.setdefault(item.node, {})[key] = item

    def _drop(self, key: str, item: Attachment) -> None:
        self._items.pop(key, None)
        on_node = self._by_node.get(item.node, {})
        on_node.pop(key, None)
        if not on_node:
            self._by_node.pop(item.node, None)

    def of_node(self, node: str) -> list[Attachment] | None:
        """The attachments of ``node``; None until the first list."""
        if not self.synced:
            return None
        return list(self._by_node.get(node, {}).values())


@attrs.define(eq=False)
class NodeVolumeWatch:
    """One reflector over every VolumeAttachment; answers per kicked-out node."""

    client: KubeClient
    watch_timeout: int
    hooks: Hooks = attrs.Factory(Hooks)
    changed: Callable[[str], None] = lambda node: None
    store: AttachmentStore = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.store = AttachmentStore(changed=self._forward)

    def _forward(self, node: str) -> None:
        self.changed(node)  # looked up per call: `changed` may be set after construction

    async def run(self) -> None:
        """List, then watch, until cancelled (errors are retried by the reflector)."""
        reflector: Reflector[Attachment] = Reflector(
            client=self.client,
            path=VOLUME_ATTACHMENTS_PATH,
            parse=parse_attachment,
            watch_timeout=self.watch_timeout,
            hooks=self.hooks,
        )
        log.info("watching VolumeAttachments")
        await reflector.run(self.store)

    def attachments(self, node: str) -> list[Attachment] | None:
        return self.store.of_node(node)

    def volumes(self, node: str, record: KickoutRecord) -> NodeVolumes:
        """What is left of ``node``'s pre-kickout attachments (``released`` once none is)."""
        return NodeVolumes.of(self.store.of_node(node), node, record)
