"""The seed's failover story, live on the local control plane: `python -m asklepios_lab.demo`.

Three control-plane nodes, Burrito's mariadb and rabbitmq StatefulSets, Asklepios with
the balancer on. One node loses power; the demo prints what happens as it happens:
NotReady, countdown, kickout, pods moved, node back, kickin, pods balanced again.
Each pod has a ReadWriteOnce volume (the lab's real attach/detach chain): the demo
narrates the attach-detach controller's own records, each VolumeAttachment's node and
when it was attached or deleted, so the volume is seen leaving the dead node and
following its pod, and coming back with the pod the balancer moves home.

`--fencing` tells the partition story instead: a node cut off from the apiserver but
still running (it answers on its kubelet port) is held, not tainted; with fencing on
(a real Redfish BMC emulator per node) it is powered off, then tainted, its pods move,
it is powered on again, boots, and is kicked in.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from . import binaries, workloads
from .controlplane import ControlPlane
from .kube import wait_for
from .procs import free_port
from .volumes import CLAIM

NODES = ("control1", "control2", "control3")
STATEFULSETS = ("mariadb-server", "rabbitmq-rabbitmq")
NAMESPACE = "openstack"
FACTS = ("node", "status", "seconds_to_kickout", "seconds_to_kickin", "pod", "from_node", "to_node", "reason")
VA_PATH = "/apis/storage.k8s.io/v1/volumeattachments"
SHOWN = {
    "node is not ready",
    "node kicked out",
    "node is ready again",
    "node kicked in",
    "pod moved",
    "kickout held",
    "ForceOff sent",
    "BMC confirmed power Off",
    "pods released",
    "node powered on",
}


class Timeline:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def say(self, text: str) -> None:
        t = time.monotonic() - self.start
        print(f"[{int(t // 60):02d}:{t % 60:04.1f}] {text}", flush=True)


def attachments(cp: ControlPlane) -> dict[str, list[tuple[str, bool]]]:
    """PV -> [(node, attached)] of its VolumeAttachments: the attach-detach controller's records."""
    found: dict[str, list[tuple[str, bool]]] = {}
    for va in cp.api.get(VA_PATH)["items"]:
        pv = va["spec"].get("source", {}).get("persistentVolumeName") or "?"
        found.setdefault(pv, []).append((va["spec"]["nodeName"], bool((va.get("status") or {}).get("attached"))))
    return found


def pods_table(cp: ControlPlane) -> str:
    where = attachments(cp)
    rows = [f"      {'pod':<22} {'state':<20} {'node':<10} volume attached on (VolumeAttachment)"]
    for pod in sorted(workloads.pods(cp, NAMESPACE), key=lambda p: p["metadata"]["name"]):
        meta = pod["metadata"]
        state = "Terminating" if "deletionTimestamp" in meta else pod.get("status", {}).get("phase", "?")
        if state == "Running" and not workloads.is_running_ready(pod):
            state = "Running (not ready)"
        pv = f"{NAMESPACE}-{CLAIM}-{meta['name']}"
        volume = ", ".join(f"{node}{'' if ok else ' (attaching)'}" for node, ok in where.get(pv, [])) or "-"
        rows.append(f"      {meta['name']:<22} {state:<20} {pod['spec'].get('nodeName', '-'):<10} {volume}")
    return "\n".join(rows)


class VolumeLog:
    """Narrates VolumeAttachments as the attach-detach controller writes them: attached on a node, deleted."""

    def __init__(self, cp: ControlPlane, timeline: Timeline) -> None:
        self.cp, self.timeline = cp, timeline
        # name -> (pv, node, attached, deleting); only changes from here on are told
        self.seen: dict[str, tuple[str, str, bool, bool]] = self._now()

    def _now(self) -> dict[str, tuple[str, str, bool, bool]]:
        now: dict[str, tuple[str, str, bool, bool]] = {}
        for va in self.cp.api.get(VA_PATH)["items"]:
            meta, spec = va["metadata"], va["spec"]
            pv = str(spec.get("source", {}).get("persistentVolumeName") or "?")
            attached = bool((va.get("status") or {}).get("attached"))
            now[meta["name"]] = (pv, spec["nodeName"], attached, "deletionTimestamp" in meta)
        return now

    def pump(self) -> None:
        now = self._now()
        for name, (pv, node, attached, deleting) in now.items():
            before = self.seen.get(name)
            volume = pv.removeprefix(f"{NAMESPACE}-")
            if attached and (before is None or not before[2]):
                self.timeline.say(f"  volume {volume}: attached on {node} (VolumeAttachment {name[:12]}…)")
            if deleting and (before is None or not before[3]):
                self.timeline.say(f"  volume {volume}: detaching from {node}")
        for name, (pv, node, _, _) in self.seen.items():
            if name not in now:
                volume = pv.removeprefix(f"{NAMESPACE}-")
                self.timeline.say(f"  volume {volume}: detached from {node} (attachment gone)")
        self.seen = now


class AsklepiosLog:
    """Follows Asklepios' JSON log file and narrates its key lines (and the volumes, when given)."""

    def __init__(self, path: Path, timeline: Timeline, volumes: VolumeLog | None = None) -> None:
        self.path, self.timeline, self.offset, self.volumes = path, timeline, 0, volumes

    def pump(self) -> None:
        if self.volumes is not None:
            self.volumes.pump()
        if not self.path.exists():
            return
        data = self.path.read_bytes()[self.offset :]
        for raw in data.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break
            self.offset += len(raw)
            try:
                line: dict[str, Any] = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if line.get("msg") in SHOWN:
                facts = " ".join(
                    f"{k}={line[k]}"
                    for k in (
                        "node",
                        "status",
                        "seconds_to_kickout",
                        "seconds_to_kickin",
                        "action",
                        "pod",
                        "from_node",
                        "to_node",
                        "reason",
                        "detail",
                        "fenced",
                    )
                    if k in line
                )
                self.timeline.say(f"  asklepios: {line['msg']}  {facts}")


def until(condition: Callable[[], Any], timeout: float, what: str, log: AsklepiosLog) -> Any:
    def step() -> Any:
        log.pump()
        return condition()

    return wait_for(step, timeout, interval=0.2, what=what)


def ready_status(cp: ControlPlane, name: str) -> str:
    return cp.ready_status(name) or "Missing"


def has_oos(cp: ControlPlane, name: str) -> bool:
    taints = cp.node(name)["spec"].get("taints") or []
    return any(t["key"] == "node.kubernetes.io/out-of-service" for t in taints)


def balanced(cp: ControlPlane) -> bool:
    return all(sorted(workloads.placement(cp, NAMESPACE, s).values()) == sorted(NODES) for s in STATEFULSETS)


def start_cluster(cp: ControlPlane, timeline: Timeline) -> None:
    timeline.say(f"local control plane up: etcd, kube-apiserver {cp.release}, controller-manager, scheduler")
    for name in NODES:
        cp.add_node(name, control_plane=True)
    timeline.say(f"nodes {', '.join(NODES)} Ready (control-plane, each run by its own kwok)")
    cp.api.create("/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
    wait_for(lambda: cp.api.get_or_none(f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/default"), 60)
    volumes = cp.volumes()
    for name in NODES:
        volumes.add_node(name)
    for sts in STATEFULSETS:
        volumes.provide(NAMESPACE, sts, 3)
        workloads.create(cp, NAMESPACE, workloads.statefulset(sts, sts.split("-")[0], volume=True))
    for sts in STATEFULSETS:
        workloads.wait_all_running(cp, NAMESPACE, sts, 3, timeout=120)
    timeline.say(
        f"StatefulSets {NAMESPACE}/mariadb-server and rabbitmq-rabbitmq Running, one pod per node, each with a "
        "ReadWriteOnce volume attached by the CSI attacher:\n" + pods_table(cp)
    )


class Asklepios:
    """One `asklepios run` process, narrated from its JSON log."""

    def __init__(self, cp: ControlPlane, workdir: Path, timeline: Timeline, settings: dict[str, str]) -> None:
        self.log_path = workdir / f"asklepios-{int(time.time() * 1000)}.log"
        env = {
            **os.environ,
            "KUBECONFIG": str(cp.kubeconfig),
            "ASKLEPIOS_BALANCER": "true",
            "ASKLEPIOS_BALANCER_SELECTOR": "application in (mariadb,rabbitmq)",
            "ASKLEPIOS_BALANCER_NAMESPACES": NAMESPACE,
            "ASKLEPIOS_LEADER_ELECTION": "false",
            "ASKLEPIOS_HTTP_PORT": str(free_port()),
            "TMPDIR": str(workdir),  # the BMC CA file (fence/redfish.py) goes with the demo's logs
            **settings,
        }
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "asklepios", "run"], env=env, stdout=out,
                                         stderr=subprocess.STDOUT)  # fmt: skip
        self.log = AsklepiosLog(self.log_path, timeline, VolumeLog(cp, timeline))
        until(lambda: b'"listed"' in self.log_path.read_bytes(), 30, "Asklepios synced", self.log)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)


def run(kickout: int, kickin: int, workdir: Path) -> None:
    timeline = Timeline()
    with ControlPlane(workdir / "cluster", bin_dir=binaries.ensure()) as cp:
        start_cluster(cp, timeline)
        timing = {"ASKLEPIOS_KICKOUT_SECONDS": str(kickout), "ASKLEPIOS_KICKIN_SECONDS": str(kickin)}
        asklepios = Asklepios(cp, workdir, timeline, timing)
        log = asklepios.log
        try:
            timeline.say(
                f"Asklepios running: kickout {kickout} s, kickin {kickin} s, "
                "balancer on (application in (mariadb,rabbitmq))"
            )
            victim = "control2"
            cp.crash(victim)
            timeline.say(f"power cut on {victim} (its kwok SIGKILLed, like `virsh destroy`: no heartbeat, no answer)")
            until(lambda: ready_status(cp, victim) != "True", 60, "NotReady", log)
            timeline.say(
                f"{victim} is NotReady ({ready_status(cp, victim)}); its pods are stuck until it is declared dead"
            )
            until(lambda: has_oos(cp, victim), kickout + 30, "kickout", log)
            timeline.say(
                f"{victim}: NotReady,SchedulingDisabled + node.kubernetes.io/out-of-service=nodeshutdown:NoExecute"
            )
            until(
                lambda: all(len(workloads.placement(cp, NAMESPACE, s)) == 3 for s in STATEFULSETS),
                120,
                "pods moved",
                log,
            )
            timeline.say(f"{victim}'s pods were force-deleted; they run on the survivors:\n{pods_table(cp)}")
            cp.restore(victim, wait_ready=False)
            timeline.say(f"{victim} powered on again (kwok restarted)")
            until(lambda: ready_status(cp, victim) == "True", 60, "Ready", log)
            timeline.say(f"{victim} is Ready,SchedulingDisabled: still kicked out until Ready for {kickin} s")
            until(lambda: not has_oos(cp, victim), kickin + 30, "kickin", log)
            timeline.say(f"{victim} kicked in: taint removed, uncordoned")
            until(lambda: balanced(cp), 180, "balanced", log)
            log.pump()
            timeline.say(f"balanced again, one pod of each StatefulSet per node:\n{pods_table(cp)}")
        finally:
            code = asklepios.stop()
    timeline.say(f"done; Asklepios exited {code}; logs in {workdir}")


class BmcLog:
    """Narrates the BMC emulator's own records (reset requests, power changes) of one node."""

    def __init__(self, cp: ControlPlane, node: str, timeline: Timeline) -> None:
        self.cp, self.node, self.timeline, self.seen = cp, node, timeline, 0

    def pump(self) -> None:
        records = self.cp.bmc().timeline(self.node)
        for record in records[self.seen :]:
            what = f"{record.value} requested" if record.kind == "reset" else f"power is {record.value}"
            self.timeline.say(f"  BMC of {self.node}: {what}")
        self.seen = len(records)


def run_fencing(kickout: int, kickin: int, workdir: Path) -> None:
    """The partition story: held while the node answers; fenced, tainted, powered on, kicked in."""
    timeline = Timeline()
    with ControlPlane(workdir / "cluster", bin_dir=binaries.ensure()) as cp:
        start_cluster(cp, timeline)
        bmc = cp.bmc()
        secret = bmc.inventory(NODES)  # <node>.url for each, the credentials and ca.crt
        cp.api.create("/api/v1/namespaces/kube-system/secrets",
                      {"metadata": {"name": "asklepios-bmc"}, "stringData": secret})  # fmt: skip
        timeline.say(f"a Redfish BMC per node (sushy-emulator at {bmc.url}), each node's URL in the Secret")
        timing = {"ASKLEPIOS_KICKOUT_SECONDS": str(kickout), "ASKLEPIOS_KICKIN_SECONDS": str(kickin)}
        asklepios = Asklepios(cp, workdir, timeline, timing)
        victim = "control2"
        power = BmcLog(cp, victim, timeline)
        try:
            timeline.say(f"Asklepios running WITHOUT fencing: kickout {kickout} s")
            cp.partition(victim)
            timeline.say(f"{victim} cut off from the apiserver (its heartbeat stops; it still runs and answers)")
            until(lambda: ready_status(cp, victim) != "True", 60, "NotReady", asklepios.log)
            until(lambda: b"kickout held" in asklepios.log_path.read_bytes(), kickout + 30, "held", asklepios.log)
            timeline.say(f"{victim} is alive: no out-of-service taint (that would let two pods write one volume)")
            asklepios.stop()
            asklepios = Asklepios(cp, workdir, timeline, {**timing, "ASKLEPIOS_FENCING": "redfish"})
            log = asklepios.log
            timeline.say("Asklepios restarted WITH fencing (ASKLEPIOS_FENCING=redfish)")

            def step() -> bool:
                power.pump()
                return has_oos(cp, victim)

            until(step, 90, "fenced and kicked out", log)
            timeline.say(f"{victim}: powered off by its BMC, then tainted out-of-service (fenced)")
            until(lambda: all(len(workloads.placement(cp, NAMESPACE, s)) == 3 for s in STATEFULSETS),
                  120, "pods moved", log)  # fmt: skip
            timeline.say(f"{victim}'s pods run on the survivors:\n{pods_table(cp)}")

            def booted() -> bool:
                power.pump()
                return ready_status(cp, victim) == "True"

            until(booted, 120, "booted", log)
            timeline.say(f"{victim} booted after Asklepios powered it on; kicked in after {kickin} s Ready")
            until(lambda: not has_oos(cp, victim), kickin + 30, "kickin", log)
            timeline.say(f"{victim} kicked in: taint removed, uncordoned")
            until(lambda: balanced(cp), 180, "balanced", log)
            log.pump()
            timeline.say(f"balanced again:\n{pods_table(cp)}")
        finally:
            code = asklepios.stop()
    timeline.say(f"done; Asklepios exited {code}; logs in {workdir}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kickout", type=int, default=10, help="ASKLEPIOS_KICKOUT_SECONDS (default 10)")
    parser.add_argument("--kickin", type=int, default=10, help="ASKLEPIOS_KICKIN_SECONDS (default 10)")
    parser.add_argument("--workdir", type=Path, help="keep the cluster's files and logs here")
    parser.add_argument("--fencing", action="store_true", help="the partition story, with a Redfish BMC per node")
    args = parser.parse_args()
    if args.kickout < 1 or args.kickin < 1:
        parser.error("--kickout and --kickin must be >= 1")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="asklepios-demo-"))
    (run_fencing if args.fencing else run)(args.kickout, args.kickin, workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
