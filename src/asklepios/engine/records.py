"""Asklepios' own records in memory (`RecordBook`), and their one writer (`RecordWriter`).

The book is the Store of a reflector on the records ConfigMap (see
`asklepios.kube.records`): every replica keeps it, so a new leader knows every
kickout, period mark and pause at once. An entry that does not decode is logged
once, counted in `asklepios_objects_skipped_total{kind="record"}` and treated as
absent: nothing is ever undone on its strength.

The writer coalesces: the entries written while a request is in flight go out
together in the next one, so a storm of NotReady nodes costs a handful of writes,
not one per node. An `urgent` put (the kickout's record, which the taint waits for)
may go out beside one request in flight instead of after it: waiting behind a
period mark was most of the kickout lag's tail at 5,000 nodes (bench lag, audit
log). A key is never in two requests at once, so its values land in order; the
answer with the newest resourceVersion holds every earlier write. `put` returns once
its entries are stored (the apiserver's answer is loaded into the book at once, so a
later, older watch event cannot undo it), or raises `ApiError` after the retries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Protocol

import anyio
import attrs

from asklepios.core.node import NodeView
from asklepios.core.records import EPOCH, NODE_KEY_PREFIX, PAUSE_KEY, NodeRecord, Pause, node_key
from asklepios.engine.gate import WriteGate
from asklepios.engine.retry import attempts
from asklepios.kube.client import ApiError
from asklepios.kube.records import RecordData
from asklepios.observe import metrics

log = logging.getLogger("asklepios.records")


class RecordPort(Protocol):
    async def put(self, changes: Mapping[str, str | None], timeout: float) -> RecordData: ...


def _newer(rv: str, than: str) -> bool:
    try:
        return not than or int(rv) >= int(than)
    except ValueError:
        return True


@attrs.define(eq=False)
class RecordBook:
    """Parsed records by node, the pause, and what changed (the reflector's Store)."""

    on_node: Callable[[str], None] = lambda node: None  # a node's record changed
    on_pause: Callable[[], None] = lambda: None
    nodes: dict[str, NodeRecord] = attrs.Factory(dict)
    pause: Pause | None = None
    resource_version: str = ""
    synced: anyio.Event = attrs.Factory(anyio.Event)
    _raw: dict[str, str] = attrs.Factory(dict)

    # --- the reflector's Store (one object: the records ConfigMap) -----------------------
    def replace(self, items: dict[str, RecordData]) -> None:
        self.load(next(iter(items.values()), RecordData({}, "")), force=True)
        self.synced.set()

    def upsert(self, key: str, item: RecordData) -> None:
        self.load(item)

    def delete(self, key: str) -> None:
        log.error("the records ConfigMap was deleted: kicked-out nodes are no longer kicked in")
        self.load(RecordData({}, ""), force=True)

    # --- reading ----------------------------------------------------------------------
    def of(self, node: str) -> NodeRecord | None:
        return self.nodes.get(node)

    def attach(self, view: NodeView) -> NodeView:
        """The node as the healer sees it: with Asklepios' own record (never the node's word)."""
        record = self.nodes.get(view.name)
        return view if view.record is record else attrs.evolve(view, record=record)

    def load(self, data: RecordData, *, force: bool = False) -> None:
        """Take a newer copy of the ConfigMap (ours after a write, or the watch's)."""
        if not force and not _newer(data.resource_version, self.resource_version):
            return
        self.resource_version = data.resource_version
        changed = {k for k in self._raw.keys() | data.data.keys() if self._raw.get(k) != data.data.get(k)}
        self._raw = dict(data.data)
        for key in sorted(changed):
            if key == PAUSE_KEY:
                self._load_pause(data.data.get(key))
            elif key.startswith(NODE_KEY_PREFIX):
                self._load_node(key.removeprefix(NODE_KEY_PREFIX), data.data.get(key))
        if changed:
            metrics.FLAPPING_NODES.set(sum(1 for r in self.nodes.values() if r.flapping and r.kickout is not None))

    def _load_node(self, node: str, raw: str | None) -> None:
        record = NodeRecord.decode(raw) if raw is not None else None
        if raw is not None and record is None:
            metrics.OBJECTS_SKIPPED.labels(kind="record").inc()
            log.error("record skipped: not readable, treated as absent (nothing is undone from it)",
                      extra={"node": node})  # fmt: skip
        if record is None:
            self.nodes.pop(node, None)
        else:
            self.nodes[node] = record
        self.on_node(node)

    def _load_pause(self, raw: str | None) -> None:
        pause = Pause.decode(raw) if raw is not None else None
        if raw is not None and pause is None:
            metrics.OBJECTS_SKIPPED.labels(kind="record").inc()
            log.error("pause record not readable: treated as paused by an unknown operator")
            pause = Pause(since=EPOCH, reason="unreadable pause record in the records ConfigMap")
        self.pause = pause
        metrics.PAUSED.set(1 if pause is not None else 0)
        self.on_pause()


@attrs.define(eq=False)
class RecordWriter:
    """The one writer of the records ConfigMap: coalesced, retried, leader only."""

    port: RecordPort
    book: RecordBook
    gate: WriteGate
    budget: Callable[[], float]
    _pending: dict[str, str | None] = attrs.Factory(dict)
    _asked: dict[str, int] = attrs.Factory(dict)  # key -> the newest put's number
    _stored: dict[str, int] = attrs.Factory(dict)  # key -> the newest number stored
    _count: int = 0
    _flying: set[str] = attrs.Factory(set)  # keys in a request now
    _flights: int = 0  # requests now
    _landed: anyio.Event = attrs.Factory(anyio.Event)  # set (and replaced) whenever a request ends

    async def put_node(self, node: str, record: NodeRecord, *, urgent: bool = False) -> None:
        await self.put({node_key(node): None if record.empty else record.encode()}, urgent=urgent)

    async def put(self, changes: Mapping[str, str | None], *, urgent: bool = False) -> None:
        self._count += 1
        mine = self._count
        for key, value in changes.items():
            self._pending[key] = value
            self._asked[key] = mine
        lanes = 2 if urgent else 1
        while not all(self._stored.get(key, 0) >= mine for key in changes):
            if self._flights >= lanes or any(key in self._flying for key in changes):
                await self._landed.wait()  # an earlier flush may take these along
            else:
                await self._flush()

    async def _flush(self) -> None:
        if not self.gate.may_write():
            raise ApiError(0, "not the leader: records are not written")
        batch = {key: value for key, value in self._pending.items() if key not in self._flying}
        numbers = {key: self._asked[key] for key in batch}
        for key in batch:
            del self._pending[key]
        self._flying |= batch.keys()
        self._flights += 1
        try:
            data = None
            async for attempt in attempts("record", self.budget()):
                with attempt:
                    data = await self.port.put(batch, self.budget())
            assert data is not None
        except BaseException:
            for key, value in batch.items():  # not stored: keep unless a newer put replaced it
                if self._asked[key] == numbers[key]:
                    self._pending.setdefault(key, value)
            raise
        else:
            for key, number in numbers.items():
                self._stored[key] = max(self._stored.get(key, 0), number)
            self.book.load(data)
        finally:
            self._flying -= batch.keys()
            self._flights -= 1
            self._landed.set()
            self._landed = anyio.Event()
