"""One pod watch per kicked-out node: force delete, "released", kickin, all from events.

A kicked-out node's pods matter until it is kicked in: the Terminating ones are
force-deleted, their departure releases the node (and powers a fenced one on),
and kickin waits for the last of them. A watch with a `spec.nodeName` field
selector per kicked-out node delivers exactly those pods, as they change, without
a LIST per look; kicked-out nodes are few (the guard sees to that), so this costs
far less than one cluster-wide pod watch of 50,000 pods. Each one's first list is
served by the apiserver's watch cache (resourceVersion=0): with a `spec.nodeName`
selector, a consistent read would make etcd return every pod of the cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
import attrs
from anyio.abc import TaskGroup

from asklepios.core.pod import PodRef
from asklepios.kube.client import KubeClient
from asklepios.kube.pods import node_pods_path, parse_pod_ref
from asklepios.kube.reflector import Hooks, Reflector

log = logging.getLogger("asklepios.watch")


@attrs.define(eq=False)
class NodePodStore:
    """The Store of one node's pod reflector."""

    node: str
    changed: Callable[[str], None]
    items: dict[str, PodRef] = attrs.Factory(dict)
    synced: bool = False

    def replace(self, items: dict[str, PodRef]) -> None:
        self.items, self.synced = dict(items), True
        self.changed(self.node)

    def upsert(self, key: str, item: PodRef) -> None:
        self.items[key] = item
        self.changed(self.node)

    def delete(self, key: str) -> None:
        self.items.pop(key, None)
        self.changed(self.node)


@attrs.define(eq=False)
class NodePodWatches:
    """The real `PodWatchPort`: a reflector task per followed node, in one task group."""

    client: KubeClient
    watch_timeout: int
    hooks: Hooks = attrs.Factory(Hooks)
    changed: Callable[[str], None] = lambda node: None
    _stores: dict[str, NodePodStore] = attrs.Factory(dict)
    _scopes: dict[str, anyio.CancelScope] = attrs.Factory(dict)
    _tg: TaskGroup | None = None
    _pending: set[str] = attrs.Factory(set)  # followed before run() started

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            for node in sorted(self._pending):
                self._start(node)
            self._pending.clear()
            await anyio.sleep_forever()

    def follow(self, node: str) -> None:
        if node in self._stores:
            return
        self._stores[node] = NodePodStore(node, self.changed)
        if self._tg is None:
            self._pending.add(node)
        else:
            self._start(node)

    def _start(self, node: str) -> None:
        assert self._tg is not None
        scope = self._scopes[node] = anyio.CancelScope()
        path, selector = node_pods_path(node)
        reflector: Reflector[PodRef] = Reflector(
            client=self.client,
            path=path,
            parse=parse_pod_ref,
            field_selector=selector,
            watch_timeout=self.watch_timeout,
            hooks=self.hooks,
            cached_list=True,  # from the watch cache: a consistent read scans every pod in etcd
        )

        store = self._stores[node]

        async def watch() -> None:
            with scope:
                await reflector.run(store)

        self._tg.start_soon(watch)
        log.info("watching the pods of a kicked-out node", extra={"node": node})

    def unfollow(self, node: str) -> None:
        if self._stores.pop(node, None) is None:
            return
        self._pending.discard(node)
        scope = self._scopes.pop(node, None)
        if scope is not None:
            scope.cancel()

    def pods(self, node: str) -> list[PodRef] | None:
        store = self._stores.get(node)
        if store is None or not store.synced:
            return None
        return list(store.items.values())
