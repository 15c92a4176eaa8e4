"""The seed's failover story, live on the local control plane: `python -m asklepios_lab.demo`.

Three control-plane nodes, Burrito's mariadb and rabbitmq StatefulSets, Asklepios with
the balancer on. One node loses power; the demo prints what happens as it happens:
NotReady, countdown, kickout, pods moved, node back, kickin, pods balanced again.
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

NODES = ("control1", "control2", "control3")
STATEFULSETS = ("mariadb-server", "rabbitmq-rabbitmq")
NAMESPACE = "openstack"
FACTS = ("node", "status", "seconds_to_kickout", "seconds_to_kickin", "pod", "from_node", "to_node", "reason")
SHOWN = {
    "node is not ready",
    "node kicked out",
    "node is ready again",
    "node kicked in",
    "pod moved",
    "kickout held",
}


class Timeline:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def say(self, text: str) -> None:
        t = time.monotonic() - self.start
        print(f"[{int(t // 60):02d}:{t % 60:04.1f}] {text}", flush=True)


def pods_table(cp: ControlPlane) -> str:
    rows = []
    for pod in sorted(workloads.pods(cp, NAMESPACE), key=lambda p: p["metadata"]["name"]):
        meta = pod["metadata"]
        state = "Terminating" if "deletionTimestamp" in meta else pod.get("status", {}).get("phase", "?")
        if state == "Running" and not workloads.is_running_ready(pod):
            state = "Running (not ready)"
        rows.append(f"      {meta['name']:<22} {state:<20} {pod['spec'].get('nodeName', '-')}")
    return "\n".join(rows)


class AsklepiosLog:
    """Follows Asklepios' JSON log file and narrates its key lines."""

    def __init__(self, path: Path, timeline: Timeline) -> None:
        self.path, self.timeline, self.offset = path, timeline, 0

    def pump(self) -> None:
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


def run(kickout: int, kickin: int, workdir: Path) -> None:
    timeline = Timeline()
    with ControlPlane(workdir / "cluster", bin_dir=binaries.ensure()) as cp:
        timeline.say("local control plane up: etcd, kube-apiserver v1.37.2, controller-manager, scheduler")
        for name in NODES:
            cp.add_node(name, control_plane=True)
        timeline.say(f"nodes {', '.join(NODES)} Ready (control-plane, each run by its own kwok)")
        cp.api.create("/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
        wait_for(lambda: cp.api.get_or_none(f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/default"), 60)
        for sts in STATEFULSETS:
            workloads.create(cp, NAMESPACE, workloads.statefulset(sts, sts.split("-")[0]))
        for sts in STATEFULSETS:
            workloads.wait_all_running(cp, NAMESPACE, sts, 3, timeout=120)
        timeline.say(
            f"StatefulSets {NAMESPACE}/mariadb-server and rabbitmq-rabbitmq Running, one pod per node:\n"
            + pods_table(cp)
        )

        log_path = workdir / "asklepios.log"
        env = {
            **os.environ,
            "KUBECONFIG": str(cp.kubeconfig),
            "ASKLEPIOS_KICKOUT_SECONDS": str(kickout),
            "ASKLEPIOS_KICKIN_SECONDS": str(kickin),
            "ASKLEPIOS_BALANCER": "true",
            "ASKLEPIOS_BALANCER_SELECTOR": "application in (mariadb,rabbitmq)",
            "ASKLEPIOS_BALANCER_NAMESPACES": NAMESPACE,
            "ASKLEPIOS_LEADER_ELECTION": "false",
            "ASKLEPIOS_HTTP_PORT": str(free_port()),
        }
        with log_path.open("wb") as out:
            asklepios = subprocess.Popen(
                [sys.executable, "-m", "asklepios", "run"], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        log = AsklepiosLog(log_path, timeline)
        try:
            until(lambda: b'"listed"' in log_path.read_bytes(), 30, "Asklepios synced", log)
            timeline.say(
                f"Asklepios running: kickout {kickout} s, kickin {kickin} s, "
                "balancer on (application in (mariadb,rabbitmq))"
            )
            victim = "control2"
            cp.crash(victim)
            timeline.say(f"power cut on {victim} (its kwok SIGKILLed, like `virsh destroy`)")
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
            timeline.say(
                f"the control plane force-deleted {victim}'s pods; they run on the survivors:\n{pods_table(cp)}"
            )
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
            asklepios.send_signal(signal.SIGTERM)
            asklepios.wait(20)
    timeline.say(f"done; Asklepios exited {asklepios.returncode}; logs in {workdir}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kickout", type=int, default=10, help="ASKLEPIOS_KICKOUT_SECONDS (default 10)")
    parser.add_argument("--kickin", type=int, default=10, help="ASKLEPIOS_KICKIN_SECONDS (default 10)")
    parser.add_argument("--workdir", type=Path, help="keep the cluster's files and logs here")
    args = parser.parse_args()
    if args.kickout < 1 or args.kickin < 1:
        parser.error("--kickout and --kickin must be >= 1")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="asklepios-demo-"))
    run(args.kickout, args.kickin, workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
