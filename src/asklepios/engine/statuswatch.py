"""`asklepios status --watch`: the status table, live, redrawn on every change the watches bring.

What an on-call operator wants at 3 a.m. without writing PromQL: which node counts
down and how long until kickout, what is held and why, which kickin waits for which
pods, the power state of fenced nodes, and which replica leads. Everything comes
from watches (watched and cordoned nodes, the controller's KickoutHeld Events, the
`asklepios` Lease, the pods of kicked-out nodes), never from polling the apiserver;
a one-second tick only redraws the countdowns.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import anyio
import attrs

from asklepios.config import Settings
from asklepios.core.node import NodeView
from asklepios.core.periods import NodeMemory, remember
from asklepios.core.pod import NodePods
from asklepios.core.records import parse_time
from asklepios.engine.clock import Clock
from asklepios.engine.nodebook import NodeBook
from asklepios.engine.nodepods import NodePodWatches
from asklepios.engine.records import RecordBook
from asklepios.engine.status import Held, NodeRow, book_of, by_name, fencer_for, guard_of, powers_of, row
from asklepios.kube.client import JSON, KubeClient
from asklepios.kube.nodes import parse_node
from asklepios.kube.records import RecordApi, parse_records
from asklepios.kube.reflector import Reflector

LEASE_NAME = "asklepios"


@attrs.define(eq=False)
class Book:
    """A reflector Store that keeps objects by key and wakes the renderer on each change."""

    changed: Callable[[], None]
    items: dict[str, object] = attrs.Factory(dict)

    def replace(self, items: dict[str, object]) -> None:
        self.items = dict(items)
        self.changed()

    def upsert(self, key: str, item: object) -> None:
        self.items[key] = item
        self.changed()

    def delete(self, key: str) -> None:
        self.items.pop(key, None)
        self.changed()


def _held(event: JSON) -> tuple[str, Held] | None:
    at = parse_time(event.get("lastTimestamp") or event.get("eventTime"))
    return None if at is None else (event.get("involvedObject", {}).get("name", ""), Held(at, event.get("message", "")))


def _holder(lease: JSON) -> str:
    return str(lease.get("spec", {}).get("holderIdentity") or "")


@attrs.define(eq=False)
class StatusWatch:
    settings: Settings
    client: KubeClient
    clock: Clock
    render: Callable[[list[str], list[NodeRow]], None]
    _wake: anyio.Event = attrs.Factory(anyio.Event)
    memory: dict[str, NodeMemory] = attrs.Factory(dict)
    power: dict[str, tuple[str, str]] = attrs.Factory(dict)  # node -> (state it was read in, power)

    def _changed(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Redraw until cancelled (Ctrl-C)."""
        selected, cordoned = Book(self._changed), Book(self._changed)
        events, lease = Book(self._changed), Book(self._changed)
        records = RecordBook(on_node=lambda _n: self._changed(), on_pause=self._changed)
        record_api = RecordApi(self.client, self.settings.namespace)
        pods = NodePodWatches(self.client, self.settings.watch_timeout_seconds, changed=lambda _n: self._changed())

        def watch(path: str, parse: Callable[[JSON], Any], labels: str = "", fields: str = "") -> Reflector[Any]:
            return Reflector(
                self.client, path, parse, labels, fields, watch_timeout=self.settings.watch_timeout_seconds
            )

        leases = f"/apis/coordination.k8s.io/v1/namespaces/{self.settings.namespace}/leases"
        reflectors = [
            (watch("/api/v1/nodes", parse_node, labels=str(self.settings.node_selector)), selected),
            (watch("/api/v1/nodes", parse_node, fields="spec.unschedulable=true"), cordoned),
            (
                watch("/api/v1/namespaces/default/events", _held, fields="involvedObject.kind=Node,reason=KickoutHeld"),
                events,
            ),
            (watch(leases, _holder, fields=f"metadata.name={LEASE_NAME}"), lease),
        ]
        async with anyio.create_task_group() as tg:
            for reflector, book in reflectors:
                tg.start_soon(reflector.run, book)
            records_reflector = watch(record_api.collection, parse_records, fields=record_api.field_selector)
            tg.start_soon(records_reflector.run, records)
            tg.start_soon(pods.run)
            while True:
                with anyio.move_on_after(1.0):
                    await self._wake.wait()
                self._wake = anyio.Event()
                followed = self._book(selected, cordoned, records)
                views = by_name(followed)
                for view in views:
                    (pods.follow if view.kickout is not None else pods.unfollow)(view.name)
                rows = self._rows(followed, events, pods)
                await self._refresh_power(views, rows)
                leader = str(next(iter(lease.items.values()), ""))
                self.render(self._header(leader, len(rows)), rows)

    def _book(self, selected: Book, cordoned: Book, records: RecordBook) -> NodeBook:
        def views(book: Book) -> list[NodeView]:
            return [records.attach(v) for v in book.items.values() if isinstance(v, NodeView)]

        return book_of(views(selected), views(cordoned))

    def _rows(self, book: NodeBook, events: Book, pods: NodePodWatches) -> list[NodeRow]:
        guard, now, views = guard_of(self.settings, book), self.clock.now(), by_name(book)
        held: dict[str, Held] = {}
        for item in events.items.values():
            if isinstance(item, tuple) and (item[0] not in held or held[item[0]].at < item[1].at):
                held[item[0]] = item[1]
        rows = []
        for view in views:
            memory = self.memory[view.name] = remember(view, self.memory.get(view.name, NodeMemory()), now)
            node_pods = NodePods.of(pods.pods(view.name), view.kickout) if view.kickout is not None else None
            power = self.power.get(view.name, ("", ""))[1]
            rows.append(row(view, memory, now=now, settings=self.settings, guard=guard, pods=node_pods,
                            held=held.get(view.name), power=power))  # fmt: skip
        return rows

    async def _refresh_power(self, views: list[NodeView], rows: list[NodeRow]) -> None:
        """Ask a node's BMC again whenever the node's state changes (not on every tick): the
        BMCs due in parallel (bounded), the fencing Secret read once for all of them."""
        due: dict[str, tuple[NodeView, str]] = {}
        for view, line in zip(views, rows, strict=True):
            seen = self.power.get(view.name)
            if self.settings.fencing_on and (seen is None or seen[0] != line.state):
                due[view.name] = (view, line.state)
        if not due:
            return
        fencer = fencer_for(self.settings, self.client, self.clock)
        powers = await powers_of(fencer, (view for view, _ in due.values()))
        for name, (_, state) in due.items():
            self.power[name] = (state, powers.get(name, ""))

    def _header(self, leader: str, count: int) -> list[str]:
        stamp: datetime = self.clock.now()
        who = leader or "no replica holds the Lease"
        return [
            f"asklepios status --watch   {stamp:%Y-%m-%d %H:%M:%S}Z   leader: {who}   {count} nodes   (Ctrl-C to quit)"
        ]
