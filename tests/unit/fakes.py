"""In-memory fakes of the engine's ports, for running the healer on a fake clock.

`FakeCluster` keeps Node objects as API JSON, applies merge patches with real RFC 7386
semantics and resourceVersion preconditions (409 on a stale one), and delivers every
change to the healer's two node "reflectors" the way server-side label and field
selectors do (ADDED/MODIFIED while a node matches, DELETED when it stops matching).
The other fakes record what was asked of them, so tests assert on requests made,
never on log lines.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import attrs

from asklepios.core.evidence import Answer, LeaseSeen
from asklepios.core.fencing import BmcTarget, FencingError
from asklepios.core.node import NodeView
from asklepios.core.pod import PodRef
from asklepios.core.records import format_time
from asklepios.core.selector import LabelSelector
from asklepios.engine.healer import Healer
from asklepios.engine.nodebook import CORDONED, SELECTED
from asklepios.kube.client import ApiError, Conflict, NotFound
from asklepios.kube.events import ObjectRef
from asklepios.kube.nodes import parse_node
from asklepios.kube.records import RecordData

JSON = dict[str, Any]
BASE = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)


class LoopClock:
    """Wall time that moves with the event loop's clock (trio's MockClock under test)."""

    def __init__(self, base: datetime = BASE) -> None:
        self.base = base

    def now(self) -> datetime:
        return self.base + timedelta(seconds=anyio.current_time())

    def monotonic(self) -> float:
        return anyio.current_time()


@attrs.define
class ManualClock:
    """Wall time set by the test (the hypothesis state machine steps it by hand)."""

    current: datetime = BASE

    def now(self) -> datetime:
        return self.current

    def monotonic(self) -> float:
        return (self.current - BASE).total_seconds()

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


@attrs.frozen
class Write:
    at: datetime
    node: str
    body: JSON
    leader: bool


@attrs.define(eq=False)
class FakeGate:
    leader: bool = True
    budget: float = 10.0
    term: int = 1  # gains of the lease (engine.gate.LeaderGate)

    def gain(self) -> None:
        self.leader, self.term = True, self.term + 1

    def may_write(self) -> bool:
        return self.leader

    def write_budget(self) -> float:
        return self.budget if self.leader else 0.0


@attrs.define(eq=False)
class FakeCluster:
    """Nodes as API objects, the `NodePort`, and the watches feeding a healer."""

    clock: Any
    selector: LabelSelector
    gate: FakeGate | None = None
    objects: dict[str, JSON] = attrs.Factory(dict)
    writes: list[Write] = attrs.Factory(list)
    history: list[tuple[datetime, NodeView, NodeView]] = attrs.Factory(list)  # (when, before, after) of our patches
    failures: list[ApiError] = attrs.Factory(list)  # raised by the next patches, in order
    lost_answers: int = 0  # the next patches are applied, then their answer is lost (a client timeout)
    patch_takes: float = 0.0  # seconds between a patch's arrival and its effect (the apiserver under load)
    gets: int = 0
    healer: Healer | None = None
    deliver: bool = True  # False: changes stay unseen until relist() (a watch gap)
    on_taint: Callable[[str], None] = lambda name: None  # any patch that adds the out-of-service taint
    _rv: int = 100
    _seen: dict[str, set[str]] = attrs.Factory(lambda: {SELECTED: set(), CORDONED: set()})

    # --- the test's side -------------------------------------------------------------
    def add(self, name: str, *, labels: dict[str, str] | None = None, ready: str = "True", **meta: Any) -> None:
        self.objects[name] = {
            "metadata": {"name": name, "uid": f"uid-{name}", "labels": labels or {}, "annotations": {}, **meta},
            "spec": {},
            "status": {
                "conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": self._stamp(0)}],
                "addresses": [{"type": "InternalIP", "address": f"127.0.10.{len(self.objects) + 1}"}],
            },
        }
        self._changed(name)

    def _stamp(self, skew: float) -> str:
        return format_time((self.clock.now() + timedelta(seconds=skew)).replace(microsecond=0))

    def set_ready(self, name: str, status: str, skew: float = 0.0) -> None:
        """Change the Ready condition, as a kubelet or node-lifecycle would (clock skewed by `skew`)."""
        cond = self.objects[name]["status"]["conditions"][0]
        if cond["status"] != status:
            cond["lastTransitionTime"] = self._stamp(skew)
        cond["status"] = status
        self._changed(name)

    def edit(self, name: str, patch: JSON) -> None:
        """Someone else's write (an admin, another controller)."""
        self.objects[name] = merge(self.objects[name], patch)
        self._changed(name)

    def view(self, name: str) -> NodeView:
        return parse_node(copy.deepcopy(self.objects[name]))

    def annotations(self, name: str) -> dict[str, str]:
        return dict(self.objects[name]["metadata"].get("annotations") or {})

    def delete_node(self, name: str) -> None:
        del self.objects[name]
        self._changed(name)

    # --- the watches -------------------------------------------------------------------
    def _matches(self, kind: str, obj: JSON | None) -> bool:
        if obj is None:
            return False
        if kind == SELECTED:
            return self.selector.matches(obj["metadata"].get("labels") or {})
        return bool(obj["spec"].get("unschedulable"))

    def _changed(self, name: str) -> None:
        self._rv += 1
        if name in self.objects:
            self.objects[name]["metadata"]["resourceVersion"] = str(self._rv)
        if self.deliver:
            self._notify(name)

    def _notify(self, name: str) -> None:
        if self.healer is None:
            return
        obj = self.objects.get(name)
        for kind, seen in self._seen.items():
            if self._matches(kind, obj):
                seen.add(name)
                self.healer.upsert(kind, name, parse_node(copy.deepcopy(obj)))  # type: ignore[arg-type]
            elif name in seen:
                seen.discard(name)
                self.healer.delete(kind, name)

    def relist(self) -> None:
        """Both reflectors list again (after a 410 Gone, or a restart)."""
        assert self.healer is not None
        for kind, seen in self._seen.items():
            items = {n: parse_node(copy.deepcopy(o)) for n, o in self.objects.items() if self._matches(kind, o)}
            seen.clear()
            seen.update(items)
            self.healer.replace(kind, items)

    # --- NodePort ----------------------------------------------------------------------
    async def get(self, name: str) -> NodeView:
        await anyio.lowlevel.checkpoint()
        self.gets += 1
        if name not in self.objects:
            raise NotFound(404, f"nodes {name} not found")
        return self.view(name)

    async def patch(self, name: str, body: JSON, timeout: float) -> NodeView:
        await anyio.lowlevel.checkpoint()
        self.writes.append(
            Write(self.clock.now(), name, copy.deepcopy(body), self.gate.may_write() if self.gate else True)
        )
        if self.patch_takes:
            await anyio.sleep(self.patch_takes)
        if self.failures:
            raise self.failures.pop(0)
        if name not in self.objects:
            raise NotFound(404, f"nodes {name} not found")
        obj = self.objects[name]
        wanted = body.get("metadata", {}).get("resourceVersion")
        if wanted is not None and wanted != obj["metadata"]["resourceVersion"]:
            raise Conflict(409, "the object has been modified")
        clean = copy.deepcopy(body)
        clean.get("metadata", {}).pop("resourceVersion", None)
        before = self.view(name)
        if not before.has_out_of_service_taint and parse_node(merge(obj, clean)).has_out_of_service_taint:
            self.on_taint(name)  # the world must show the machine dead at this very moment
        self.objects[name] = merge(obj, clean)
        self._changed(name)
        self.history.append((self.clock.now(), before, self.view(name)))
        if self.lost_answers:
            self.lost_answers -= 1
            raise ApiError(0, f"PATCH /api/v1/nodes/{name}: TimeoutError: the answer was lost")
        return self.view(name)


@attrs.define(eq=False)
class FakeLeases:
    """Node Leases: renewed "now" while a node's kubelet runs."""

    clock: Any
    alive: set[str] = attrs.Factory(set)
    silent_since: dict[str, datetime] = attrs.Factory(dict)
    behind: dict[str, float] = attrs.Factory(dict)  # a kubelet clock this many seconds behind
    reads: list[str] = attrs.Factory(list)
    delay: float = 0.0  # seconds a read takes (the apiserver under load)
    on_read: Callable[[str], None] | None = None  # called as a read is answered: the kubelet renews now

    def stop(self, node: str) -> None:
        self.alive.discard(node)
        self.silent_since[node] = self.clock.now()

    async def get(self, node: str, timeout: float) -> LeaseSeen | None:
        await anyio.lowlevel.checkpoint()
        if self.delay:
            await anyio.sleep(self.delay)
        if self.on_read is not None:
            self.on_read(node)
        self.reads.append(node)
        if node in self.alive:  # renewed every second, on the kubelet's own clock
            now = self.clock.now().replace(microsecond=0) - timedelta(seconds=self.behind.get(node, 0.0))
            return LeaseSeen(renewed=now - timedelta(seconds=1), duration=timedelta(seconds=40))
        if node in self.silent_since:
            return LeaseSeen(renewed=self.silent_since[node], duration=timedelta(seconds=40))
        return None


@attrs.define(eq=False)
class FakeProbe:
    """Addresses that accept, that refuse (a running kernel, no listener); all others time out."""

    answering_addresses: set[str] = attrs.Factory(set)
    refusing_addresses: set[str] = attrs.Factory(set)
    probes: int = 0
    timeout: float = 0.0  # seconds a probe of a silent address takes (a real one: its whole timeout)

    async def answers(self, addresses: tuple[str, ...], ports: tuple[int, ...]) -> tuple[Answer, ...]:
        await anyio.lowlevel.checkpoint()
        self.probes += 1
        if self.timeout and any(not self.alive(a) for a in addresses):
            await anyio.sleep(self.timeout)

        def how(address: str) -> str:
            if address in self.answering_addresses:
                return "accepted"
            return "refused" if address in self.refusing_addresses else "timeout"

        return tuple(Answer(f"{a}:{p}", how(a)) for a in addresses for p in ports)

    def alive(self, address: str) -> bool:
        return address in self.answering_addresses or address in self.refusing_addresses


@attrs.define(eq=False)
class FakeRecords:
    """The records ConfigMap: merge patches of its data, each with a new resourceVersion."""

    data: dict[str, str] = attrs.Factory(dict)
    rv: int = 1
    writes: list[dict[str, str | None]] = attrs.Factory(list)
    failures: list[ApiError] = attrs.Factory(list)
    on_put: Callable[[dict[str, str | None]], None] | None = None  # called as a write arrives

    async def put(self, changes: Any, timeout: float) -> RecordData:
        await anyio.lowlevel.checkpoint()
        self.writes.append(dict(changes))
        if self.on_put is not None:
            self.on_put(dict(changes))
        if self.failures:
            raise self.failures.pop(0)
        for key, value in changes.items():
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value
        self.rv += 1
        return self.snapshot()

    def snapshot(self) -> RecordData:
        return RecordData(dict(self.data), str(self.rv))

    async def get(self, timeout: float) -> RecordData | None:
        """A quorum read (`engine.gate.RecordReader`)."""
        await anyio.lowlevel.checkpoint()
        if self.failures:
            raise self.failures.pop(0)
        return self.snapshot()


@attrs.define(eq=False)
class FakeBmc:
    """Power states per System URL; a reset takes `delay` seconds to apply."""

    clock: Any
    power: dict[str, str] = attrs.Factory(dict)
    pending: dict[str, tuple[str, float]] = attrs.Factory(dict)
    delay: float = 3.0
    password: str = "secret"
    reachable: bool = True
    never_off: set[str] = attrs.Factory(set)  # System URLs that accept ForceOff but never turn Off
    log: list[tuple[datetime, str, str]] = attrs.Factory(list)  # (when, url, what)
    on_power: Callable[[str, str], None] = lambda url, state: None  # the machine follows its power
    uuids: dict[str, str] = attrs.Factory(dict)  # System URL -> its UUID; "" (none reported) when absent

    def _check(self, target: BmcTarget) -> None:
        if not self.reachable:
            raise FencingError(f"{target.system_url}: ConnectionError: refused")
        if target.password != self.password:
            raise FencingError(f"{target.system_url}: AccessError: HTTP 401")

    async def power_state(self, target: BmcTarget) -> str:
        await anyio.lowlevel.checkpoint()
        self._check(target)
        url = target.system_url
        if url in self.pending and self.clock.monotonic() >= self.pending[url][1]:
            self.power[url] = self.pending.pop(url)[0]
            self.log.append((self.clock.now(), url, self.power[url]))
            self.on_power(url, self.power[url])
        return self.power.get(url, "On")

    async def system_uuid(self, target: BmcTarget) -> str:
        await anyio.lowlevel.checkpoint()
        self._check(target)
        return self.uuids.get(target.system_url, "")

    async def reset(self, target: BmcTarget, reset_type: str) -> None:
        await anyio.lowlevel.checkpoint()
        self._check(target)
        self.log.append((self.clock.now(), target.system_url, reset_type))
        if target.system_url in self.never_off and reset_type == "ForceOff":
            return
        self.pending[target.system_url] = (
            "Off" if reset_type == "ForceOff" else "On",
            self.clock.monotonic() + self.delay,
        )


@attrs.define(eq=False)
class FakeCredentials:
    """The fencing Secret: the inventory (`<node>.url`) and credentials; counts its reads."""

    data: dict[str, str] = attrs.Factory(lambda: {"username": "admin", "password": "secret"})
    where: str = "Secret kube-system/asklepios-bmc"
    reads: int = 0

    async def secret(self) -> dict[str, str]:
        await anyio.lowlevel.checkpoint()
        self.reads += 1
        return dict(self.data)


@attrs.define(eq=False)
class FakePods:
    """The `PodWatchPort` and `PodDeletePort`: pods per node, deletes recorded."""

    by_node: dict[str, list[PodRef]] = attrs.Factory(dict)
    followed: set[str] = attrs.Factory(set)
    synced: bool = True
    deleted: list[PodRef] = attrs.Factory(list)
    changed: Callable[[str], None] = lambda node: None

    def follow(self, node: str) -> None:
        self.followed.add(node)

    def unfollow(self, node: str) -> None:
        self.followed.discard(node)

    def pods(self, node: str) -> list[PodRef] | None:
        if node not in self.followed or not self.synced:
            return None
        return list(self.by_node.get(node, []))

    def put(self, node: str, *pods: PodRef) -> None:
        self.by_node[node] = list(pods)
        self.changed(node)

    def remove(self, node: str, key: str) -> None:
        self.by_node[node] = [p for p in self.by_node.get(node, []) if p.key != key]
        self.changed(node)

    async def force_delete(self, pod: PodRef, timeout: float) -> None:
        await anyio.lowlevel.checkpoint()
        self.deleted.append(pod)
        for node in self.by_node:
            if any(p.uid == pod.uid for p in self.by_node[node]):
                self.remove(node, pod.key)


@attrs.frozen
class Event:
    reason: str
    name: str
    message: str
    warning: bool


@attrs.define(eq=False)
class FakeEvents:
    emitted: list[Event] = attrs.Factory(list)

    async def emit(self, obj: ObjectRef, reason: str, message: str, *, warning: bool = False) -> None:
        await anyio.lowlevel.checkpoint()
        self.emitted.append(Event(reason, obj.name, message, warning))

    def reasons(self, name: str | None = None) -> list[str]:
        return [e.reason for e in self.emitted if name is None or e.name == name]
