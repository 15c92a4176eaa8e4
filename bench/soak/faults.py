"""The soak's faults: a plan drawn from the seed alone, and the injector that carries it out.

:func:`plan` draws every fault up front from ``random.Random(seed)``: when it starts
(exponential gaps), its kind (first each kind once in a shuffled order, then by
weight), the order in which it prefers the nodes, and its durations. The plan depends
on nothing but the seed and the soak's length, so a seed replays the same faults in
the same order at the same moments; which node a fault finally hits depends on the
cluster's state then (a node already down is passed over for the next one in the
fault's order).

:class:`Injector` runs one planned fault in its own thread, so faults overlap, and
writes every step to the fault log. Durations end early when the soak ends (the
drain): every fault then undoes what it did at once.

==================  ====================================================================
kind                what
==================  ====================================================================
power_cut           a node loses power (kwok SIGKILLed, port silent), 30 % reporting
                    Ready=False just before (a False->Unknown flip on a dead node);
                    power back after its duration unless its BMC has it Off (fenced)
partition           a node cut off the apiserver (kwok SIGKILLed, port still answers);
                    with fencing on Asklepios powers it off, taints it, powers it on;
                    healed after its duration unless fenced meanwhile
notready_live       Ready=False with a live kubelet (``set_ready``), ``clear_ready`` later
flip                Ready False -> Unknown -> False on a live kubelet, then cleared
apiserver_restart   kube-apiserver stopped for a few seconds, started, controllers restarted
compaction_410      the same, with etcd moved on and compacted while it is down: 410 Gone
leader_sigkill      SIGKILL of the leading replica; a new process replaces it a bit later
leader_sigterm      SIGTERM of the leading replica (must exit 0); replaced a bit later
admin_cordon        the admin cordons a schedulable node, uncordons it later
foreign_taint       the admin adds a taint of its own (NoSchedule or PreferNoSchedule),
                    removes it later
taint_writer        another client's read-modify-write loop adding taints to one node
                    (resourceVersion-guarded, conflicting with Asklepios), then removing
                    them; a taint it wrote that vanished is logged as lost
two_down            two nodes lose power at once (at the guard: 2 of 5 allowed)
three_down          three nodes lose power at once: over the guard (ASKLEPIOS_MAX_UNHEALTHY
                    50 % of 5 = 2), kickouts held until one is back
==================  ====================================================================
"""

from __future__ import annotations

import http.client
import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import attrs

from asklepios_lab import ApiError, Bmc
from bench.soak.lab import Replicas, SoakControlPlane
from bench.soak.model import FaultRecord, Interval

JSON = dict[str, Any]
T = TypeVar("T")

WEIGHTS: dict[str, float] = {
    "power_cut": 3.0,
    "partition": 2.0,
    "notready_live": 1.5,
    "flip": 1.0,
    "apiserver_restart": 0.7,
    "compaction_410": 0.5,
    "leader_sigkill": 1.0,
    "leader_sigterm": 0.7,
    "admin_cordon": 1.2,
    "foreign_taint": 1.2,
    "taint_writer": 1.0,
    "two_down": 0.7,
    "three_down": 0.7,
}
# (low, high) of each fault's three duration draws, in seconds
DURATIONS: dict[str, tuple[tuple[float, float], ...]] = {
    "power_cut": ((25, 90),),
    "partition": ((10, 70),),
    "notready_live": ((8, 40),),
    "flip": ((2, 6), (2, 6), (3, 20)),
    "apiserver_restart": ((2, 12),),
    "compaction_410": ((1, 3),),
    "leader_sigkill": ((1, 8),),
    "leader_sigterm": ((1, 8),),
    "admin_cordon": ((10, 60),),
    "foreign_taint": ((10, 90),),
    "taint_writer": ((5, 20),),
    "two_down": ((30, 80), (30, 80)),
    "three_down": ((20, 60), (20, 60), (20, 60)),
}
NODE_DOWN = ("power_cut", "partition", "two_down", "three_down")
MAX_DOWN = 3  # a single fault never takes more nodes down than this (three_down: 4)
CONFLICT = 409


@attrs.frozen
class Planned:
    index: int
    at: float  # seconds after the soak's start
    kind: str
    order: tuple[int, ...]  # the fault's preference among the nodes (indices)
    durations: tuple[float, float, float]
    choice: float  # a uniform draw for the fault's variant


def plan(seed: int, seconds: float, nodes: int = 5, mean_gap: float = 7.0) -> list[Planned]:
    """Every fault of a soak of ``seconds``, from ``seed`` alone."""
    rng = random.Random(seed)
    kinds = list(WEIGHTS)
    first = kinds[:]
    rng.shuffle(first)
    out: list[Planned] = []
    t = rng.uniform(3.0, 8.0)
    while t < seconds:
        i = len(out)
        kind = first[i] if i < len(first) else rng.choices(kinds, weights=[WEIGHTS[k] for k in kinds])[0]
        order = tuple(rng.sample(range(nodes), nodes))
        draws = [rng.random() for _ in range(3)]
        ranges = DURATIONS[kind]
        durations = tuple(
            round(lo + (hi - lo) * d, 1) for (lo, hi), d in zip([*ranges, *[(0.0, 0.0)] * 3][:3], draws, strict=True)
        )
        out.append(Planned(i, round(t, 1), kind, order, (durations[0], durations[1], durations[2]), rng.random()))
        t += max(2.0, rng.expovariate(1.0 / mean_gap))
    return out


class Context(Protocol):
    """What the injector needs from the runner."""

    cp: SoakControlPlane
    replicas: Replicas
    nodes: Sequence[str]
    halt: threading.Event  # set when the soak ends: every fault undoes what it did at once
    outages: list[Interval]
    apiserver_lock: threading.Lock
    claims: dict[str, int]  # node -> index of the fault that took it down
    overridden: set[str]  # nodes whose Ready condition a fault has set

    @property
    def bmc(self) -> Bmc: ...

    def log(self, index: int, kind: str, phase: str, targets: Sequence[str] = (), detail: str = "") -> FaultRecord: ...


def retrying(fn: Callable[[], T], timeout: float = 180.0) -> T:
    """Call ``fn`` until it works: the apiserver may be down (restart faults) for a while.

    A 409 is the caller's to handle (a read-modify-write reads again): sending the same
    stale body again can never succeed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except ApiError as exc:
            if exc.status in (400, 403, 404, CONFLICT, 422) or time.monotonic() > deadline:
                raise
        except (OSError, http.client.HTTPException):
            if time.monotonic() > deadline:
                raise
        time.sleep(1.0)


def bmc_view(bmc: Bmc, node: str) -> tuple[str, bool]:
    """(power state, a change pending) of ``node``'s BMC, from the emulator's timeline."""
    power, last_power, pending = "On", 0.0, False
    records = bmc.timeline(node)
    for r in records:
        if r.kind == "power":
            power, last_power = r.value, r.time
    for r in records:
        if r.kind == "reset" and r.time >= last_power and r.value != power:
            pending = True
    return power, pending


class Injector:
    """Carries out one planned fault (call :meth:`run` in a thread of its own)."""

    def __init__(self, ctx: Context, fault: Planned) -> None:
        self.ctx, self.f = ctx, fault
        self.cp = ctx.cp
        self.claimed: list[str] = []

    # ------------------------------------------------------------------ helpers

    def log(self, phase: str, targets: Sequence[str] = (), detail: str = "") -> None:
        self.ctx.log(self.f.index, self.f.kind, phase, targets, detail)

    def wait(self, seconds: float) -> None:
        self.ctx.halt.wait(seconds)

    def pick(self, count: int, eligible: Callable[[str], bool]) -> list[str]:
        """Up to ``count`` unclaimed eligible nodes in the fault's order, claimed for it."""
        with _CLAIMS:
            chosen: list[str] = []
            for i in self.f.order:
                name = self.ctx.nodes[i]
                if len(chosen) < count and name not in self.ctx.claims and eligible(name):
                    chosen.append(name)
            if len(chosen) == count:
                for name in chosen:
                    self.ctx.claims[name] = self.f.index
                self.claimed = chosen
                return chosen
            return []

    def release(self, *names: str) -> None:
        with _CLAIMS:
            for name in names or tuple(self.claimed):
                if self.ctx.claims.get(name) == self.f.index:
                    del self.ctx.claims[name]

    def up(self, name: str) -> bool:
        running, listening = self.cp.node_state(name)
        power, pending = bmc_view(self.ctx.bmc, name)
        return running and listening and power == "On" and not pending

    def down_count(self) -> int:
        return sum(not self.cp.node_state(n)[0] for n in self.ctx.nodes)

    def bring_back(self, name: str) -> None:
        """Power back (or heal the partition), unless the BMC has it Off: then Asklepios powers it on."""
        with self.cp._lock:
            running, listening = self.cp.node_state(name)
            if running and listening:
                self.log("end", [name], "already back (power-cycled through its BMC)")
                return
            power, pending = bmc_view(self.ctx.bmc, name)
            if power == "Off" or pending:
                self.log("end", [name], f"left to Asklepios: its BMC says {power}{' (change pending)' * pending}")
                return
            with self.cp.acting("runner"):
                self.cp.restore(name, wait_ready=False)
        self.log("end", [name], "restored")

    def set_ready(self, name: str, status: str) -> None:
        retrying(lambda: self.cp.set_ready(name, status))

    def clear_ready(self, name: str) -> None:
        retrying(lambda: self.cp.clear_ready(name, wait_ready=False))

    def rmw(self, name: str, change: Callable[[JSON], JSON | None], api: Any = None) -> bool:
        """Read-modify-write of a node's spec, guarded by its resourceVersion; False if nothing to do."""
        api = api or self.cp.api
        while True:
            node: JSON = retrying(lambda: api.get(f"/api/v1/nodes/{name}"))
            spec = change(node)
            if spec is None:
                return False
            body = {"metadata": {"resourceVersion": node["metadata"]["resourceVersion"]}, "spec": spec}
            try:
                retrying(lambda b=body: api.patch(f"/api/v1/nodes/{name}", b))  # type: ignore[misc]
            except ApiError as exc:
                if exc.status == CONFLICT:
                    continue
                raise
            return True

    # -------------------------------------------------------------------- run

    def run(self) -> None:
        try:
            getattr(self, f"_{self.f.kind}")()
        except Exception as exc:  # a fault that fails is logged, never kills the soak
            self.log("error", self.claimed, f"{type(exc).__name__}: {str(exc)[:300]}")
        finally:
            self.release()

    def _power_cut(self) -> None:
        [node] = self.pick(1, self.up) or [""]
        if not node or self.down_count() >= MAX_DOWN:
            self.log("skip", detail="no node to take down" if not node else f"{MAX_DOWN} nodes down already")
            return
        last_words = self.f.choice < 0.3
        with self.cp.acting("runner"):
            self.cp.crash(node)
        self.log("start", [node], f"power cut for {self.f.durations[0]} s" + (", last words Ready=False" * last_words))
        if last_words:
            self.set_ready(node, "False")
        self.wait(self.f.durations[0])
        self.bring_back(node)

    def _partition(self) -> None:
        [node] = self.pick(1, self.up) or [""]
        if not node or self.down_count() >= MAX_DOWN:
            self.log("skip", detail="no node to cut off" if not node else f"{MAX_DOWN} nodes down already")
            return
        with self.cp.acting("runner"):
            self.cp.partition(node)
        self.log("start", [node], f"partition for {self.f.durations[0]} s")
        self.wait(self.f.durations[0])
        self.bring_back(node)

    def _several_down(self, count: int) -> None:
        nodes = self.pick(count, self.up)
        if not nodes or self.down_count() + count > MAX_DOWN + (count == 3):
            self.log("skip", detail=f"not {count} nodes to take down")
            return
        with self.cp.acting("runner"):
            for node in nodes:
                self.cp.crash(node)
        ends = sorted(zip(self.f.durations[:count], nodes, strict=True))
        self.log("start", nodes, "power cut at once; back after " + ", ".join(f"{d} s" for d, _ in ends))
        started = time.monotonic()
        for duration, node in ends:
            self.wait(max(0.0, started + duration - time.monotonic()))
            self.bring_back(node)

    def _two_down(self) -> None:
        self._several_down(2)

    def _three_down(self) -> None:
        self._several_down(3)

    def overriding(self) -> str:
        """A live node whose condition no other fault has set (not claimed: it may lose power meanwhile)."""
        with _CLAIMS:
            for i in self.f.order:
                name = self.ctx.nodes[i]
                if name not in self.ctx.overridden and name not in self.ctx.claims and self.up(name):
                    self.ctx.overridden.add(name)
                    return name
        return ""

    def _notready_live(self) -> None:
        node = self.overriding()
        if not node:
            self.log("skip", detail="no live node")
            return
        try:
            self._notready(node)
        finally:
            self.ctx.overridden.discard(node)

    def _notready(self, node: str) -> None:
        self.set_ready(node, "False")
        self.log("start", [node], f"Ready=False with a live kubelet for {self.f.durations[0]} s")
        self.wait(self.f.durations[0])
        self.clear_ready(node)
        self.log("end", [node], "condition handed back to the kubelet")

    def _flip(self) -> None:
        node = self.overriding()
        if not node:
            self.log("skip", detail="no live node")
            return
        try:
            self._flips(node)
        finally:
            self.ctx.overridden.discard(node)

    def _flips(self, node: str) -> None:
        d = self.f.durations
        self.set_ready(node, "False")
        self.log("start", [node], f"Ready=False, Unknown after {d[0]} s, False after {d[1]} s more")
        self.wait(d[0])
        self.set_ready(node, "Unknown")
        self.log("step", [node], "Ready=Unknown")
        self.wait(d[1])
        self.set_ready(node, "False")
        self.log("step", [node], "Ready=False")
        self.wait(d[2])
        self.clear_ready(node)
        self.log("end", [node], "condition handed back to the kubelet")

    def _apiserver(self, compact: bool) -> None:
        if not self.ctx.apiserver_lock.acquire(blocking=False):
            self.log("skip", detail="an apiserver fault is under way")
            return
        try:
            start = time.time()
            self.cp.stop_apiserver()
            self.log("start", detail=f"apiserver stopped for {self.f.durations[0]} s" + " (etcd compacted)" * compact)
            if compact:
                self.cp.etcd.bump(3)
                revision = self.cp.compact_etcd()
                self.log("step", detail=f"etcd compacted at revision {revision}")
            time.sleep(self.f.durations[0])
            self.cp.start_apiserver()
            self.log("step", detail="apiserver back; restarting controller-manager and scheduler")
            self.cp.restart_controllers()
            self.ctx.outages.append(Interval(start, time.time()))
            self.cp.retry_overrides()
            self.log("end", detail="controllers restarted")
        finally:
            self.ctx.apiserver_lock.release()

    def _apiserver_restart(self) -> None:
        self._apiserver(compact=False)

    def _compaction_410(self) -> None:
        self._apiserver(compact=True)

    def _leader(self, sig: int) -> None:
        def holder() -> str:
            path = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/asklepios"
            lease: JSON = self.cp.api.get(path.format(ns=self.ctx.replicas.env["ASKLEPIOS_NAMESPACE"]))
            return str(lease.get("spec", {}).get("holderIdentity") or "")

        found = self.ctx.replicas.by_holder(retrying(holder, timeout=30))
        if found is None:
            self.log("skip", detail="no live leader right now")
            return
        inc, _ = found
        how = "SIGKILL" if sig == signal.SIGKILL else "SIGTERM"
        self.log("start", [inc.pod_name], f"{how} of the leader (pid {inc.pid})")
        code = self.ctx.replicas.kill(inc, sig)
        self.log("step", [inc.pod_name], f"exited with {code}")
        self.wait(self.f.durations[0])
        if self.ctx.replicas.identities_left() == 0:
            self.log("end", detail="no identity left: replica not restarted")
            return
        new = self.ctx.replicas.start(inc.slot)
        self.log("end", [new.pod_name], f"replica {inc.slot} restarted (pid {new.pid})")

    def _leader_sigkill(self) -> None:
        self._leader(signal.SIGKILL)

    def _leader_sigterm(self) -> None:
        self._leader(signal.SIGTERM)

    def _admin_cordon(self) -> None:
        def schedulable(name: str) -> bool:
            node: JSON = retrying(lambda: self.cp.api.get(f"/api/v1/nodes/{name}"))
            return not node["spec"].get("unschedulable")

        [node] = self.pick(1, schedulable) or [""]
        if not node or not self.rmw(
            node, lambda n: None if n["spec"].get("unschedulable") else {"unschedulable": True}
        ):
            self.log("skip", detail="no schedulable node")
            return
        self.log("start", [node], f"admin cordon for {self.f.durations[0]} s")
        self.release(node)  # Asklepios may kick it out meanwhile; other faults may hit it
        self.wait(self.f.durations[0])
        self.rmw(node, lambda n: {"unschedulable": None} if n["spec"].get("unschedulable") else None)
        self.log("end", [node], "admin uncordon")

    def _foreign_taint(self) -> None:
        node = self.ctx.nodes[self.f.order[0]]
        effect = "NoSchedule" if self.f.choice < 0.5 else "PreferNoSchedule"
        taint = {"key": f"example.com/admin-{self.f.index}", "value": "soak", "effect": effect}

        def add(n: JSON) -> JSON | None:
            taints = n["spec"].get("taints") or []
            return None if any(t["key"] == taint["key"] for t in taints) else {"taints": [*taints, taint]}

        def remove(n: JSON) -> JSON | None:
            taints = n["spec"].get("taints") or []
            kept = [t for t in taints if t["key"] != taint["key"]]
            return None if len(kept) == len(taints) else {"taints": kept}

        self.rmw(node, add)
        self.log("start", [node], f"foreign taint {taint['key']}:{effect} for {self.f.durations[0]} s")
        self.wait(self.f.durations[0])
        present = self.rmw(node, remove)
        self.log("end", [node], "foreign taint removed" if present else "foreign taint LOST before its removal")

    def _taint_writer(self) -> None:
        node = self.ctx.nodes[self.f.order[0]]
        api = self.cp.client(self.cp.admin_token)
        prefix = f"example.com/w{self.f.index}-"
        written: list[str] = []
        conflicts = 0
        self.log("start", [node], f"concurrent read-modify-write taint writer for {self.f.durations[0]} s")
        until = time.monotonic() + self.f.durations[0]
        try:
            while time.monotonic() < until and not self.ctx.halt.is_set():
                key = f"{prefix}{len(written) + conflicts}"
                try:
                    current: JSON = api.get(f"/api/v1/nodes/{node}")
                    taints = [*(current["spec"].get("taints") or []), {"key": key, "effect": "PreferNoSchedule"}]
                    status, _ = api.request(
                        "PATCH",
                        f"/api/v1/nodes/{node}",
                        {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                         "spec": {"taints": taints}},
                        content_type="application/merge-patch+json",
                    )  # fmt: skip
                except (ApiError, OSError, http.client.HTTPException):
                    time.sleep(0.5)
                    continue
                if status == 200:
                    written.append(key)
                elif status == CONFLICT:
                    conflicts += 1
                time.sleep(0.1)
            final: JSON = retrying(lambda: api.get(f"/api/v1/nodes/{node}"))
            keys = {t["key"] for t in final["spec"].get("taints") or []}
            lost = [k for k in written if k not in keys]
            self.log("step", [node], f"{len(written)} taints written, {conflicts} conflicts, lost: {lost or 'none'}")

            def remove(n: JSON) -> JSON | None:
                taints = n["spec"].get("taints") or []
                kept = [t for t in taints if not t["key"].startswith(prefix)]
                return None if len(kept) == len(taints) else {"taints": kept}

            self.rmw(node, remove, api)
            self.log("end", [node], "its taints removed")
        finally:
            api.close_all()


_CLAIMS = threading.Lock()
