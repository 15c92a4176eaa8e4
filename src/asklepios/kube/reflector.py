"""List-then-watch for one kind of object, kept in a consumer's store.

One implementation serves every watch (watched nodes, cordoned nodes, the pods of
kicked-out nodes, the balancer's pods). It lists, hands the consumer the whole
set, then watches from the list's resourceVersion with bookmarks on, resuming
from the newest resourceVersion when the server ends the watch (a normal restart)
or after an error (stamina's jittered exponential backoff, capped at 5 s), and
relisting only on 410 Gone. Server-side label and field selectors keep the
traffic to the objects we care about.

Which list, as client-go's reflector (bench/README.md, "What a list costs"): with
`cached_list` the first list asks for resourceVersion=0, which the apiserver's
watch cache answers without reading etcd, whole (it ignores `limit` for RV=0, in
1.28 as in 1.37), so it is used where the answer is small: one node's pods, which
a consistent read would find by scanning every pod in etcd. A relist after a 410
is a consistent read (no resourceVersion) like client-go's, since the cache may be
behind what we have seen. The big lists (every watched node, every balancer pod)
stay paged consistent reads: whole, 5,000 nodes in one answer took the process
over the Deployment's memory limit; paged, 1.37 serves them from the watch cache
too (ConsistentListFromCache, ListFromCacheSnapshot), 1.28 from etcd.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import anyio
import attrs
import stamina

from asklepios.kube.client import JSON, ApiError, Gone, KubeClient

T = TypeVar("T")
YIELD_EVERY = 20  # events applied in one go: a burst already received would otherwise hold the event loop
log = logging.getLogger("asklepios.watch")


class Store(Protocol[T]):
    """Where a reflector delivers objects; called from the event loop, must not block."""

    def replace(self, items: dict[str, T]) -> None: ...
    def upsert(self, key: str, item: T) -> None: ...
    def delete(self, key: str) -> None: ...


@attrs.frozen
class Hooks:
    """Observability callbacks (the kube layer does not import metrics itself)."""

    progress: Callable[[], None] = lambda: None
    restarted: Callable[[str], None] = lambda cause: None
    synced: Callable[[], None] = lambda: None
    skipped: Callable[[], None] = lambda: None  # an object that could not be read was skipped


def object_key(obj: JSON) -> str:
    meta = obj.get("metadata", {})
    namespace = meta.get("namespace")
    return f"{namespace}/{meta['name']}" if namespace else str(meta["name"])


@attrs.define
class Reflector(Generic[T]):
    client: KubeClient
    path: str  # e.g. /api/v1/nodes or /api/v1/pods
    parse: Callable[[JSON], T]
    label_selector: str = ""
    field_selector: str = ""
    watch_timeout: int = 290
    page_size: int = 100  # a page is decoded whole: the allocator keeps that peak as RSS (bench/README.md)
    hooks: Hooks = attrs.Factory(Hooks)
    cached_list: bool = False  # the first list from the watch cache (resourceVersion=0, not paged)
    resource_version: str = ""
    _expired: bool = False  # a 410 since the last list: the next one must be consistent

    def _query(self) -> dict[str, str | int]:
        query: dict[str, str | int] = {}
        if self.label_selector:
            query["labelSelector"] = self.label_selector
        if self.field_selector:
            query["fieldSelector"] = self.field_selector
        return query

    def list_query(self) -> dict[str, str | int]:
        """The first page's query: resourceVersion=0 (from the watch cache) or none (consistent)."""
        query = {**self._query(), "limit": self.page_size}
        if self.cached_list and not self._expired:
            query["resourceVersion"] = "0"  # the watch cache ignores limit; without one, etcd pages
        return query

    async def list_all(self) -> tuple[dict[str, T], str]:
        """A (paged) list: (objects by key, the list's resourceVersion)."""
        items: dict[str, T] = {}
        query = self.list_query()
        while True:
            page = await self.client.request("GET", self.path, query=query, timeout=60)
            for obj in page.get("items", []):
                parsed = self._parse(obj)
                if parsed is not None:
                    items[object_key(obj)] = parsed
            meta = page.get("metadata", {})
            if not meta.get("continue"):
                return items, str(meta.get("resourceVersion", ""))
            query["continue"] = meta["continue"]
            query.pop("resourceVersion", None)  # a continue token carries it

    async def run(self, store: Store[T]) -> None:
        """Keep `store` in sync with the apiserver until cancelled."""
        while True:
            retrying = stamina.retry_context(
                on=self._failed, attempts=None, timeout=None, wait_initial=0.2, wait_max=5.0, wait_jitter=0.5
            )
            async for attempt in retrying:
                with attempt:
                    await self._session(store)

    async def _session(self, store: Store[T]) -> None:
        """(Re)list if needed, then watch until the server ends the watch."""
        try:
            if not self.resource_version:
                await self._relist(store)
            await self._watch(store)
            self.hooks.progress()  # the server ended the watch on time: the connection was healthy
        except Gone:
            log.info("resourceVersion too old (410 Gone): relisting", extra={"resource": self.path})
            self.resource_version, self._expired = "", True
            self.hooks.restarted("gone")
            return
        self.hooks.restarted("timeout")

    def _failed(self, exc: Exception) -> bool:
        """stamina's hook: every API failure of a watch is retried (a 403 may be fixed by an admin)."""
        if not isinstance(exc, ApiError):
            return False
        log.warning("watch failed, retrying", extra={"resource": self.path, "error": str(exc)})
        self.hooks.restarted("error")
        return True

    async def _relist(self, store: Store[T]) -> None:
        """List and hand over; the list result is not kept past this call (50,000 pods)."""
        items, self.resource_version = await self.list_all()
        self._expired = False
        store.replace(items)
        self.hooks.synced()
        self.hooks.progress()
        log.info("listed", extra={"resource": self.path, "count": len(items)})

    async def _watch(self, store: Store[T]) -> None:
        timeout = int(self.watch_timeout * random.uniform(0.9, 1.0))
        query = {
            **self._query(),
            "watch": "true",
            "allowWatchBookmarks": "true",
            "resourceVersion": self.resource_version,
            "timeoutSeconds": timeout,
        }
        # The server ends the watch after `timeout` (a normal restart); silent for longer, it is dead.
        async with self.client.stream(self.path, query, read_timeout=timeout + 30) as events:
            self.hooks.progress()  # the apiserver answered: a quiet resource sends nothing else for a while
            applied = 0
            async for event in events:
                self._apply(store, event)
                self.hooks.progress()
                applied += 1
                if applied % YIELD_EVERY == 0:
                    await anyio.lowlevel.checkpoint()  # the Lease renewal, probes and deadlines run too

    def _apply(self, store: Store[T], event: JSON) -> None:
        kind, obj = event.get("type"), event.get("object", {})
        if not isinstance(obj, dict):
            return
        if kind == "ERROR":
            status = int(obj.get("code", 0))
            message = str(obj.get("message", "watch error"))
            if status == 410:
                raise Gone(status, message)
            raise ApiError(status, message)
        rv = obj.get("metadata", {}).get("resourceVersion")
        if rv:
            self.resource_version = str(rv)
        if kind == "BOOKMARK":
            return
        if kind == "DELETED":
            store.delete(object_key(obj))
        elif kind in ("ADDED", "MODIFIED"):
            parsed = self._parse(obj)
            if parsed is not None:
                store.upsert(object_key(obj), parsed)

    def _parse(self, obj: JSON) -> T | None:
        """One object the decisions cannot read is logged, counted and skipped, never fatal.

        Whatever a node (or anyone) wrote into an object: a wrong type, a number too
        big, a value nested a million deep. Only cancellation and the like escape.
        """
        try:
            return self.parse(obj)
        except Exception as exc:
            meta = obj.get("metadata") if isinstance(obj, dict) else None
            name = meta.get("name") if isinstance(meta, dict) else None
            self.hooks.skipped()
            log.error(
                "object skipped: cannot read it",
                extra={"resource": self.path, "object": str(name)[:253], "error": repr(exc)[:300]},
            )
            return None
