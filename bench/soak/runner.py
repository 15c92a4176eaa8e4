"""``python -m bench soak``: random overlapping faults against two Asklepios replicas, then the invariants.

1. **Cluster.** The lab (real etcd, kube-apiserver, kube-controller-manager,
   kube-scheduler) with 5 control-plane nodes, one kwok each; every node has a system
   on the lab's Redfish BMC emulator, and the Secret ``asklepios-bmc`` is the fencing
   inventory (``bmc.inventory``: each ``<node>.url``, the credentials and the CA). Two StatefulSets of 3
   (``mariadb-server``, ``rabbitmq-rabbitmq``, preferred anti-affinity, balancer label)
   with PodDisruptionBudgets ``minAvailable: 2``. Two Asklepios replicas
   (``python -m asklepios run``), leader election, fencing and the balancer on, short
   timings (:data:`SETTINGS`); every process authenticates with a static token of its
   own (group ``system:masters``) and its own POD_NAME, and the apiserver audits them.
2. **Faults** from :func:`bench.soak.faults.plan` (the seed alone decides them), each
   in its own thread, logged with timestamps; at the end every fault undoes itself
   and the runner waits for the cluster to settle (the drain).
3. **Records**: the runner's watches of nodes, pods, node Leases and the election
   Lease; the lab's physics log; the BMC timelines; the audit log. Then
   :func:`bench.soak.invariants.check_all` and :mod:`bench.soak.report`.

Exit status 1 on any violation (the seed and the fault log are printed to replay it).
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from asklepios_lab import Bmc, StaticToken, audit, binaries, wait_for, workloads
from bench import REPO_DIR, RESULTS_DIR
from bench.results import source_commit
from bench.soak import report
from bench.soak.faults import Injector, Planned, bmc_view, plan
from bench.soak.invariants import check_all
from bench.soak.lab import Recorder, Replicas, SoakControlPlane
from bench.soak.model import (
    BmcEvent,
    FaultRecord,
    History,
    Interval,
    LeaseVersion,
    NodeVersion,
    Params,
    PodVersion,
    audit_writes,
)

JSON = dict[str, Any]
NAMESPACE = "asklepios-soak"
NODES = tuple(f"control{i}" for i in range(1, 6))
STATEFULSETS = {"mariadb-server": "mariadb", "rabbitmq-rabbitmq": "rabbitmq"}
REPLICAS = 3
CONTROL_PLANE = "node-role.kubernetes.io/control-plane"
MAX_PROCESSES = 200  # static tokens (identities) prepared for Asklepios processes
GRACE = 5.0  # the lab's --node-monitor-grace-period
SETTLE_TIMEOUT = 240.0
SETTINGS = {
    "ASKLEPIOS_LEADER_ELECTION": "true",
    "ASKLEPIOS_NAMESPACE": NAMESPACE,
    "ASKLEPIOS_KICKOUT_SECONDS": "10",
    "ASKLEPIOS_KICKIN_SECONDS": "10",
    "ASKLEPIOS_RESYNC_SECONDS": "2",
    "ASKLEPIOS_LEASE_DURATION_SECONDS": "4",
    "ASKLEPIOS_LEASE_RENEW_SECONDS": "3",
    "ASKLEPIOS_LEASE_RETRY_SECONDS": "1",
    "ASKLEPIOS_BALANCER": "true",
    "ASKLEPIOS_BALANCER_NAMESPACES": NAMESPACE,
    "ASKLEPIOS_FENCING": "redfish",
    "ASKLEPIOS_KICKIN_POD_WAIT_SECONDS": "30",
    # The plan kills each node many times an hour: flapping by design, which would keep a node
    # out from its 4th kickout on (tested in tests/cluster/test_operate.py, not here).
    "ASKLEPIOS_FLAP_MAX_KICKOUTS": "1000",
    "ASKLEPIOS_LOG_FORMAT": "json",
    "ASKLEPIOS_LOG_LEVEL": "info",
    # ASKLEPIOS_MAX_UNHEALTHY: the default, 50 %: 2 of the 5 watched nodes
}
MAX_UNHEALTHY = 2


def snapshot_source(into: Path) -> str:
    """Copy the work tree's ``src/asklepios`` to ``into``; returns a digest of its files.

    Every Asklepios process of the soak imports this copy (first on PYTHONPATH), so a
    process restarted an hour in runs the same code as the first, whatever happens to
    ``src/`` meanwhile.
    """
    target = into / "asklepios"
    shutil.copytree(REPO_DIR / "src" / "asklepios", target, ignore=shutil.ignore_patterns("__pycache__"))
    digest = hashlib.sha256()
    for path in sorted(target.rglob("*.py")):
        digest.update(str(path.relative_to(target)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _stamp(start: float, t: float) -> str:
    rel = t - start
    return f"{int(rel // 60):02d}:{rel % 60:04.1f}"


class Soak:
    """One soak run: the cluster, the records, the faults (the :class:`~bench.soak.faults.Context`)."""

    def __init__(self, minutes: float, seed: int, workdir: Path, settings: Mapping[str, str] = SETTINGS) -> None:
        self.minutes, self.seed, self.workdir = minutes, seed, workdir
        identities = [(f"asklepios-soak-{i}", secrets.token_hex(16)) for i in range(MAX_PROCESSES)]
        self.cp = SoakControlPlane(
            workdir,
            bin_dir=binaries.ensure(),
            extra_tokens=[StaticToken(token, user, user, ["system:masters"]) for user, token in identities],
            audit_users=[user for user, _ in identities],
            start_timeout=180.0,
        )
        self.source = workdir / "source"
        self.source_digest = snapshot_source(self.source)
        self.source_commit = source_commit()  # of the snapshot: HEAD may move during the run
        python_path = os.pathsep.join(p for p in (str(self.source), os.environ.get("PYTHONPATH", "")) if p)
        env = {**settings, "PYTHONPATH": python_path}
        self.replicas = Replicas(self.cp, identities, env, workdir / "logs")
        self.nodes: Sequence[str] = NODES
        self.halt = threading.Event()
        self.outages: list[Interval] = []
        self.apiserver_lock = threading.Lock()
        self.claims: dict[str, int] = {}
        self.overridden: set[str] = set()
        self.faults: list[FaultRecord] = []
        self.started = time.time()
        self._lock = threading.Lock()
        self.node_versions: list[NodeVersion] = []
        self.pod_versions: list[PodVersion] = []
        self.node_leases: list[LeaseVersion] = []
        self.election: list[LeaseVersion] = []
        self.rss: list[tuple[float, str, int]] = []
        self.recorders: list[Recorder] = []
        self.timing: dict[str, float] = {}
        self._stop_housekeeping = threading.Event()

    # ----------------------------------------------------------------- the log

    def log(self, index: int, kind: str, phase: str, targets: Sequence[str] = (), detail: str = "") -> FaultRecord:
        record = FaultRecord(time.time(), index, kind, phase, tuple(targets), detail)
        with self._lock:
            self.faults.append(record)
        where = f" {','.join(targets)}" if targets else ""
        label = f"#{index}" if index >= 0 else "--"
        print(f"[soak {_stamp(self.started, record.t)}] {label} {kind} {phase}{where}: {detail}", flush=True)
        return record

    @property
    def bmc(self) -> Bmc:
        return self.cp.bmc()

    # ------------------------------------------------------------------ set-up

    def setup(self) -> None:
        cp = self.cp
        t = time.monotonic()
        api = cp.api
        api.create("/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
        wait_for(lambda: api.get_or_none(f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/default"), 60,
                 what="default ServiceAccount")  # fmt: skip
        bmc = cp.bmc()
        for name in NODES:
            cp.add_node(name, control_plane=True)
        credentials = bmc.inventory(NODES)  # <node>.url for each, the credentials and ca.crt
        data = {k: base64.b64encode(v.encode()).decode() for k, v in credentials.items()}
        api.create(f"/api/v1/namespaces/{NAMESPACE}/secrets", {"metadata": {"name": "asklepios-bmc"}, "data": data})
        for name, application in STATEFULSETS.items():
            sts = workloads.statefulset(
                name, application, REPLICAS, node_selector={CONTROL_PLANE: ""},
                extra_labels={"asklepios.io/balance": "true"},
            )  # fmt: skip
            workloads.create(cp, NAMESPACE, sts)
            pdb = {
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": {"name": name},
                "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app.kubernetes.io/name": name}}},
            }
            workloads.create(cp, NAMESPACE, pdb)
        for name in STATEFULSETS:
            workloads.wait_all_running(cp, NAMESPACE, name, REPLICAS, timeout=120)
        self.timing["nodes, BMC, workloads"] = time.monotonic() - t
        t = time.monotonic()
        self._record()
        for slot in ("a", "b"):
            self.replicas.start(slot)
        for _, ctl in self.replicas.live():
            ctl.wait_ready(60)
        self.timing["watches, replicas"] = time.monotonic() - t
        threading.Thread(target=self._housekeeping, daemon=True, name="housekeeping").start()

    def _record(self) -> None:
        api = self.cp.api

        def nodes(t: float, kind: str, obj: JSON) -> None:
            self.node_versions.append(NodeVersion.of(t, obj, deleted=kind == "DELETED"))

        def pods(t: float, kind: str, obj: JSON) -> None:
            self.pod_versions.append(PodVersion.of(t, obj, deleted=kind == "DELETED"))

        def node_leases(t: float, kind: str, obj: JSON) -> None:
            if kind != "DELETED":
                self.node_leases.append(LeaseVersion.of(t, obj))

        def election(t: float, kind: str, obj: JSON) -> None:
            if kind != "DELETED":
                self.election.append(LeaseVersion.of(t, obj))

        self.recorders = [
            Recorder(api, "/api/v1/nodes", nodes),
            Recorder(api, f"/api/v1/namespaces/{NAMESPACE}/pods", pods),
            Recorder(api, "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", node_leases),
            Recorder(api, f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases", election,
                     fieldSelector="metadata.name=asklepios"),
        ]  # fmt: skip
        for r in self.recorders:
            r.start()
        for r in self.recorders:
            if not r.synced.wait(60):
                raise TimeoutError(f"watch of {r.path} did not sync")

    def _housekeeping(self) -> None:
        """Every second: a replica that died by itself is logged and replaced; RSS every 5 s."""
        tick = 0
        while not self._stop_housekeeping.wait(1.0):
            tick += 1
            for inc in self.replicas.reap():
                self.log(-1, "replica", "note", [inc.pod_name], f"exited by itself with {inc.exit_code}; restarted")
                if self.replicas.identities_left():
                    self.replicas.start(inc.slot)
            self.cp.retry_overrides()
            if tick % 5 == 0:
                for inc, ctl in self.replicas.live():
                    try:
                        self.rss.append((time.time(), inc.pod_name, ctl.rss_bytes()))
                    except (OSError, AssertionError):
                        continue

    # -------------------------------------------------------------- the soak

    def inject(self, faults: list[Planned]) -> None:
        self.started = time.time()
        seconds = self.minutes * 60
        threads = []
        self.log(-1, "soak", "note", detail=f"seed {self.seed}, {len(faults)} faults planned over {seconds:.0f} s")
        for fault in faults:
            if self.halt.wait(max(0.0, self.started + fault.at - time.time())):
                break
            thread = threading.Thread(target=Injector(self, fault).run, daemon=True, name=f"fault {fault.index}")
            thread.start()
            threads.append(thread)
        self.halt.wait(max(0.0, self.started + seconds - time.time()))
        self.halt.set()
        self.log(-1, "soak", "note", detail="no more faults: every fault undoes itself now")
        for thread in threads:
            thread.join(300)

    def drain(self) -> float:
        """Restore what the faults left, wait until everything settled; returns how long it took."""
        t = time.monotonic()
        for slot in ("a", "b"):
            if slot not in self.replicas.current and self.replicas.identities_left():
                inc = self.replicas.start(slot)
                self.log(-1, "drain", "note", [inc.pod_name], f"replica {slot} started")
        problems: list[str] = ["not looked yet"]
        while time.monotonic() - t < SETTLE_TIMEOUT:
            self.cp.retry_overrides()
            problems = self._unsettled()
            if not problems:
                break
            time.sleep(1.0)
        elapsed = time.monotonic() - t
        detail = f"settled after {elapsed:.0f} s" if not problems else f"NOT settled: {'; '.join(problems)}"
        self.log(-1, "drain", "note", detail=detail)
        return elapsed

    def _unsettled(self) -> list[str]:
        problems = []
        for name in NODES:
            running, _ = self.cp.node_state(name)
            power, pending = bmc_view(self.bmc, name)
            if not running and power == "On" and not pending:
                with self.cp._lock:  # the BMC has it on: boot it (a power-on the lab could not apply)
                    if not self.cp.node_state(name)[0]:
                        with self.cp.acting("runner"):
                            self.cp.restore(name, wait_ready=False)
                        self.log(-1, "drain", "note", [name], "booted (its BMC says On)")
            try:
                node = self.cp.node(name)
            except Exception as exc:  # the apiserver may still be restarting
                return [f"reading {name}: {exc}"]
            annotations = node["metadata"].get("annotations") or {}
            status = next((c["status"] for c in node["status"].get("conditions") or () if c["type"] == "Ready"), "")
            if status != "True":
                problems.append(f"{name} Ready={status} (power {power})")
            if "asklepios.io/kickout" in annotations:
                problems.append(f"{name} kicked out")
        for name in STATEFULSETS:
            placed = workloads.placement(self.cp, NAMESPACE, name)
            if len(placed) < REPLICAS:
                problems.append(f"{name}: {len(placed)} of {REPLICAS} Running")
        return problems

    def finish(self) -> float:
        """Stop the replicas (SIGTERM: each must exit 0) and the records; the end of the recording."""
        time.sleep(5.0)  # one more look: nothing may happen on a settled cluster
        end = time.time()
        self.replicas.stop_all()
        self._stop_housekeeping.set()
        for r in self.recorders:
            r.stop()
        return end

    def history(self, end: float) -> History:
        users = [inc.user for inc in self.replicas.incarnations]
        assert self.cp.audit_log is not None
        events = audit.entries(self.cp.audit_log)
        writes = audit_writes(events, users)
        election = list(self.election)
        for w in writes:  # the election Lease's versions Asklepios wrote (the watch may miss some)
            if w.resource == "leases" and w.namespace == NAMESPACE and w.name == "asklepios" and w.ok and w.body:
                election.append(LeaseVersion.of(w.t, w.body))
        bmc = [BmcEvent(r.time, name, r.kind, r.value) for name in NODES for r in self.bmc.timeline(name)]
        params = Params(
            watched=NODES,
            max_unhealthy=MAX_UNHEALTHY,
            kickout=float(SETTINGS["ASKLEPIOS_KICKOUT_SECONDS"]),
            kickin=float(SETTINGS["ASKLEPIOS_KICKIN_SECONDS"]),
            grace=GRACE,
            renew_deadline=float(SETTINGS["ASKLEPIOS_LEASE_RENEW_SECONDS"]),
            pod_wait=float(SETTINGS["ASKLEPIOS_KICKIN_POD_WAIT_SECONDS"]),
            statefulsets=tuple((name, REPLICAS) for name in STATEFULSETS),
        )
        gaps = tuple((r.path, g) for r in self.recorders for g in r.gaps)
        return History(
            params=params,
            start=self.started,
            end=end,
            nodes=tuple(self.node_versions),
            pods=tuple(self.pod_versions),
            node_leases=tuple(self.node_leases),
            election=tuple(election),
            writes=tuple(writes),
            physics=tuple(self.cp.physics),
            bmc=tuple(bmc),
            faults=tuple(self.faults),
            incarnations=tuple(self.replicas.incarnations),
            outages=tuple(self.outages),
            watch_gaps=gaps,
        )


def _dump(history: History, path: Path) -> None:
    """The whole history as JSON (kept with the lab's directory when a violation was found)."""

    def default(obj: Any) -> Any:
        if hasattr(obj, "__attrs_attrs__"):
            return {a.name: getattr(obj, a.name) for a in obj.__attrs_attrs__}
        raise TypeError(type(obj))

    path.write_bytes(orjson.dumps(history, default=default))


def run(
    minutes: float, seed: int, *, keep: bool = False, results_dir: Path | None = None, fencing: str = "redfish"
) -> int:
    """One soak; 0 when every invariant held, 1 otherwise.

    `fencing="off"`: every process runs without fencing, so a kickout's record goes out
    beside the deadline's Lease read (engine/kickout.py), a path the default soak never takes.
    """
    wall = time.monotonic()
    faults = plan(seed, minutes * 60)
    workdir = Path(tempfile.mkdtemp(prefix="asklepios-soak-"))
    settings = {**SETTINGS, "ASKLEPIOS_FENCING": fencing}
    soak = Soak(minutes, seed, workdir, settings)
    print(f"[soak] seed {seed}, {minutes:g} min, {len(faults)} faults planned; lab in {workdir}", flush=True)
    failed = True
    try:
        t = time.monotonic()
        soak.cp.start()
        soak.timing["control plane"] = time.monotonic() - t
        try:
            soak.setup()
            setup_s = time.monotonic() - wall
            soak.inject(faults)
            settle_s = soak.drain()
            end = soak.finish()
            history = soak.history(end)
        finally:
            soak.replicas.stop_all()
            soak.cp.stop()
        t = time.monotonic()
        results = check_all(history)
        check_s = time.monotonic() - t
        timing = {**soak.timing, "setup": setup_s, "drain": settle_s, "checks": check_s,
                  "total": time.monotonic() - wall}  # fmt: skip
        doc = report.build(history, results, faults, soak.rss, minutes=minutes, seed=seed, timing=timing,
                           settings=settings, workdir=str(workdir), source=soak.source_digest,
                           commit=soak.source_commit)  # fmt: skip
        failed = not doc["summary"]["passed"]
        report.emit(doc, history, results, results_dir or RESULTS_DIR)
        if failed:
            _dump(history, workdir / "history.json")
    finally:
        if keep or failed:
            print(f"[soak] kept {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0
