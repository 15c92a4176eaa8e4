"""`asklepios status`: every watched node's state, decided exactly as the controller decides it.

Reads the cluster with the same settings and changes nothing: the watched nodes
(and kicked-out nodes that left the selector), the pods of kicked-out nodes, the
controller's `KickoutHeld` Events (the hold reason is the controller's finding:
a workstation cannot probe the nodes' network the way the controller does), and,
with fencing on, each BMC's PowerState: asked in parallel, BMC_CONCURRENCY at a
time, each within BMC_TIMEOUT seconds, with the fencing Secret read once per run.
The guard is counted by the controller's own `NodeBook`, and the verdict comes
from the same pure `judge` the controller runs, starting from the nodes' own
marks, so a countdown shown here is the one the controller keeps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Protocol

import anyio
import attrs

from asklepios.config import Settings
from asklepios.core.fencing import FencingError, NoBmcError
from asklepios.core.judge import Action, State, judge
from asklepios.core.node import NodeView
from asklepios.core.periods import NodeMemory, remember
from asklepios.core.pod import NodePods
from asklepios.core.records import parse_time
from asklepios.engine.clock import Clock
from asklepios.engine.fencing import Fencer
from asklepios.engine.nodebook import CORDONED, SELECTED, NodeBook
from asklepios.engine.ports import CredentialsPort
from asklepios.engine.records import RecordBook
from asklepios.kube.client import ApiError, KubeClient
from asklepios.kube.nodes import NodeApi
from asklepios.kube.pods import PodApi
from asklepios.kube.records import RecordApi
from asklepios.kube.secrets import SecretApi

BMC_CONCURRENCY = 10  # BMCs asked at once
BMC_TIMEOUT = 15.0  # seconds for each BMC's answer


@attrs.frozen
class NodeRow:
    name: str
    ready: str
    since: datetime | None
    state: str
    reason: str  # the hold reason, or what a state waits for
    seconds: float | None  # to the next action
    pods: tuple[str, ...] = ()
    power: str = ""  # the PowerState its BMC reports, for nodes with asklepios.io/bmc

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "ready": self.ready,
            "since": self.since.isoformat() if self.since else None,
            "state": self.state,
            "reason": self.reason or None,
            "seconds_to_next_action": None if self.seconds is None else round(self.seconds, 1),
            "pods": list(self.pods),
            "power": self.power or None,
        }


@attrs.frozen
class Held:
    """The newest KickoutHeld Event of a node: the controller's own finding."""

    at: datetime
    message: str


def book_of(selected: Iterable[NodeView], cordoned: Iterable[NodeView]) -> NodeBook:
    """The controller's NodeBook, filled from one look at its two node watches."""
    book = NodeBook()
    selected, cordoned = list(selected), list(cordoned)
    book.members[SELECTED].update(v.name for v in selected)
    book.members[CORDONED].update(v.name for v in cordoned)
    for view in (*selected, *cordoned):
        book.put(view)
    return book


def guard_of(settings: Settings, book: NodeBook) -> str | None:
    """Why kickouts are held now, counted as the running controller counts."""
    return book.guard(settings.max_unhealthy)


def row(
    view: NodeView,
    memory: NodeMemory,
    *,
    now: datetime,
    settings: Settings,
    guard: str | None,
    pods: NodePods | None,
    held: Held | None = None,
    power: str = "",
) -> NodeRow:
    """One node's line, from the same judge the controller runs."""
    verdict = judge(view, memory, now=now, timing=settings.timing, guard=guard, pods=pods)
    state, reason = verdict.state.value, verdict.hold.value if verdict.hold else verdict.detail
    overdue = verdict.action is Action.KICKOUT
    if overdue and held is not None and verdict.since is not None and held.at >= verdict.since:
        state, reason = State.HELD.value, held.message
    seconds = None if overdue else verdict.seconds_left(now)
    since = verdict.since or view.ready_since
    return NodeRow(view.name, view.ready.value, since, state, reason, seconds, verdict.pods, power)


async def record_book(settings: Settings, client: KubeClient) -> RecordBook:
    """Asklepios' own records, read once (the kickouts, the period marks, a pause)."""
    book = RecordBook()
    data = await RecordApi(client, settings.namespace).get(timeout=10)
    if data is not None:
        book.load(data, force=True)
    return book


async def followed_nodes(settings: Settings, client: KubeClient) -> NodeBook:
    """The watched nodes and the kicked-out nodes that left the selector, with Asklepios' records."""
    api, records = NodeApi(client), await record_book(settings, client)
    selected = [records.attach(v) for v in await api.list(str(settings.node_selector))]
    cordoned = [records.attach(v) for v in await api.list("", field_selector="spec.unschedulable=true")]
    return book_of(selected, cordoned)


def by_name(book: NodeBook) -> list[NodeView]:
    return sorted(book.views.values(), key=lambda v: v.name)


async def holds(client: KubeClient) -> dict[str, Held]:
    """The newest KickoutHeld Event per node (Events about nodes live in `default`)."""
    query = {"fieldSelector": "involvedObject.kind=Node,reason=KickoutHeld"}
    data = await client.request("GET", "/api/v1/namespaces/default/events", query=query)
    out: dict[str, Held] = {}
    for event in data.get("items", []):
        at = parse_time(event.get("lastTimestamp") or event.get("eventTime"))
        name = event.get("involvedObject", {}).get("name", "")
        if at is not None and (name not in out or out[name].at < at):
            out[name] = Held(at, str(event.get("message", "")))
    return out


@attrs.define(eq=False)
class SecretOnce:
    """The fencing Secret, read at most once for all the BMCs one status pass asks."""

    source: CredentialsPort
    reads: int = 0
    where: str = ""  # as the source's: set from it

    _data: dict[str, str] | None = None
    _error: str | None = None
    _lock: anyio.Lock = attrs.Factory(anyio.Lock)

    def __attrs_post_init__(self) -> None:
        self.where = self.source.where

    async def secret(self) -> dict[str, str]:
        async with self._lock:
            if self._data is None and self._error is None:
                self.reads += 1
                try:
                    self._data = await self.source.secret()
                except FencingError as exc:
                    self._error = str(exc)
        if self._error is not None:
            raise FencingError(self._error)
        assert self._data is not None
        return dict(self._data)


def fencer_for(settings: Settings, client: KubeClient, clock: Clock) -> Fencer | None:
    """A Fencer for one status pass (its Secret read once, on first use)."""
    if not settings.fencing_on:
        return None
    from asklepios.fence.redfish import RedfishBmc  # noqa: PLC0415 - sushy only when fencing is on

    secret = SecretOnce(SecretApi(client, settings.namespace, settings.fencing_secret))
    return Fencer(RedfishBmc(), secret, clock, settings.fencing_timeout_seconds, settings.fencing_insecure)


class PowerReader(Protocol):
    async def power_state(self, view: NodeView) -> str: ...


async def power_of(fencer: PowerReader | None, view: NodeView) -> str:
    if fencer is None:
        return ""
    with anyio.move_on_after(BMC_TIMEOUT):
        try:
            return await fencer.power_state(view)
        except NoBmcError:  # no <node>.url in the fencing Secret: no BMC to ask
            return ""
        except FencingError as exc:
            return f"unknown ({exc})"
    return "unknown (the BMC did not answer)"


async def powers_of(fencer: PowerReader | None, views: Iterable[NodeView]) -> dict[str, str]:
    """Each node's PowerState (empty for a node without a BMC), BMC_CONCURRENCY BMCs asked at a time."""
    out: dict[str, str] = {}
    if fencer is None:
        return out
    limiter = anyio.CapacityLimiter(BMC_CONCURRENCY)

    async def ask(view: NodeView) -> None:
        async with limiter:
            out[view.name] = await power_of(fencer, view)

    async with anyio.create_task_group() as tg:
        for view in views:
            tg.start_soon(ask, view)
    return out


async def node_rows(settings: Settings, client: KubeClient, clock: Clock, book: NodeBook) -> list[NodeRow]:
    guard, fencer = guard_of(settings, book), fencer_for(settings, client, clock)
    views = by_name(book)
    try:
        held: Mapping[str, Held] = await holds(client)
    except ApiError:
        held = {}
    powers = await powers_of(fencer, views)
    rows = []
    for view in views:
        pods = None
        if view.kickout is not None:
            try:
                pods = NodePods.of(await PodApi(client).on_node(view.name), view.kickout)
            except ApiError:
                pods = NodePods(synced=False)
        now = clock.now()
        memory = remember(view, NodeMemory(), now)
        power = powers.get(view.name, "")
        rows.append(
            row(view, memory, now=now, settings=settings, guard=guard, pods=pods, held=held.get(view.name), power=power)
        )
    return rows


def describe_record(view: NodeView) -> list[str]:
    """Asklepios' own record of a node, in words: what it changed, when, and on what evidence."""
    record = view.record
    if record is None or (record.kickout is None and not record.kickouts):
        return [f"{view.name}: no record of Asklepios (never kicked out, or kicked in and forgotten)"]
    lines = [f"{view.name}: Asklepios' record (ConfigMap asklepios-records)"]
    kickout = record.kickout
    if kickout is not None:
        changed = [w for w, done in (("cordoned", kickout.cordoned), ("tainted", kickout.tainted)) if done]
        lines.append(f"  kicked out at {kickout.at:%Y-%m-%dT%H:%M:%SZ}: {' and '.join(changed) or 'changed nothing'}")
        if kickout.since is not None:
            lines.append(f"  NotReady since {kickout.since:%Y-%m-%dT%H:%M:%SZ} (first seen by Asklepios)")
        if kickout.fenced:
            lines.append("  powered off by Asklepios through its BMC before the taint")
        if kickout.found_off:
            lines.append("  its BMC already read power Off: Asklepios will not switch it on")
        for what, when in (("pods released", kickout.released), ("powered on", kickout.powered_on)):
            if when is not None:
                lines.append(f"  {what} at {when:%Y-%m-%dT%H:%M:%SZ}")
        lines += [f"  evidence: {line}" for line in kickout.evidence]
    if record.kickouts:
        stamps = ", ".join(f"{t:%Y-%m-%dT%H:%M:%SZ}" for t in record.kickouts)
        lines.append(f"  recent kickouts: {stamps}")
    if record.flapping:
        lines.append(f"  flapping: stays kicked out until `asklepios release {view.name}`")
    if record.release is not None:
        lines.append(f"  release asked at {record.release:%Y-%m-%dT%H:%M:%SZ}")
    return lines
