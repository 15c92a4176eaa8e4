"""The problem Asklepios exists for, reproduced with upstream controllers only (no Asklepios).

A Burrito-like cluster: three control-plane nodes, each running one replica of the
``mariadb-server`` and ``rabbitmq-rabbitmq`` StatefulSets. One node loses power:

1. node-lifecycle marks it Unknown and taints it unreachable; taint-eviction deletes
   its pods once their toleration runs out. But nobody confirms they stopped (the
   kubelet is dead), so they stay Terminating, and a StatefulSet never creates a pod
   while one with the same name exists: both services stay a replica short, however
   long one waits. That is the seed incident.
2. A human adds ``node.kubernetes.io/out-of-service=nodeshutdown:NoExecute``: the pod
   garbage collector force-deletes the Terminating pods, the StatefulSets recreate them
   on the surviving nodes (two per node, preferred anti-affinity lets them double up,
   as in the seed logs), and they run. Asklepios automates exactly that step.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from asklepios_lab import ControlPlane, Kube, ready_condition, workloads

from .conftest import NodeFactory

STATEFULSETS = {"mariadb-server": "mariadb", "rabbitmq-rabbitmq": "rabbitmq"}  # name: application
TOLERATION_SECONDS = workloads.EVICTION_TOLERATION_SECONDS  # upstream's default is 300 s
# After eviction, how long the stuck state is watched. Waiting for a condition cannot
# show that something does NOT happen, so this is a fixed observation window: several
# StatefulSet resyncs and twice the node grace period, and still nothing moves.
OBSERVATION_WINDOW = 10.0
CONTROL_PLANE = "node-role.kubernetes.io/control-plane"
OUT_OF_SERVICE = {"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown", "effect": "NoExecute"}


def pods_of(kube: Kube, namespace: str, name: str) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p for p in kube.items("pods", namespace, f"app.kubernetes.io/name={name}")}


def running(pod: dict[str, Any]) -> bool:
    return (
        pod["status"].get("phase") == "Running"
        and (ready_condition(pod) or {}).get("status") == "True"
        and "deletionTimestamp" not in pod["metadata"]
    )


@pytest.mark.timeout(150)
def test_dead_node_pods_stay_terminating_until_out_of_service_taint(
    control_plane: ControlPlane, kube: Kube, namespace: str, nodes: NodeFactory
) -> None:
    group = nodes.prefix
    cps = [nodes.add(f"cp{i}", control_plane=True, labels={"lab-group": group}) for i in range(3)]
    selector = {CONTROL_PLANE: "", "lab-group": group}
    kube.apply([workloads.statefulset(n, app, node_selector=selector) for n, app in STATEFULSETS.items()], namespace)

    def all_running_one_per_node() -> bool:
        for name in STATEFULSETS:
            pods = pods_of(kube, namespace, name)
            if len(pods) != 3 or not all(running(p) for p in pods.values()):
                return False
            assert sorted(p["spec"]["nodeName"] for p in pods.values()) == sorted(cps)
        return True

    kube.wait_for(all_running_one_per_node, 60, what="both StatefulSets Running, one pod per node")

    victim = pods_of(kube, namespace, "mariadb-server")["mariadb-server-0"]["spec"]["nodeName"]
    stuck = {
        name: pod["metadata"]["uid"]
        for sts in STATEFULSETS
        for name, pod in pods_of(kube, namespace, sts).items()
        if pod["spec"]["nodeName"] == victim
    }
    assert len(stuck) == 2

    # 1. Power cut: node Unknown, pods evicted (deletionTimestamp) but stuck Terminating.
    control_plane.crash(victim)
    control_plane.wait_ready(victim, "Unknown", timeout=control_plane.grace_period + 15)

    def all_terminating() -> bool:
        pods = {**pods_of(kube, namespace, "mariadb-server"), **pods_of(kube, namespace, "rabbitmq-rabbitmq")}
        return all(name in pods and "deletionTimestamp" in pods[name]["metadata"] for name in stuck)

    kube.wait_for(all_terminating, TOLERATION_SECONDS + 20, what="pods of the dead node evicted")
    deadline = time.monotonic() + OBSERVATION_WINDOW
    while time.monotonic() < deadline:
        for sts in STATEFULSETS:
            pods = pods_of(kube, namespace, sts)
            assert len(pods) == 3  # no replacement anywhere
            for name, uid in stuck.items():
                if name.startswith(sts):
                    assert pods[name]["metadata"]["uid"] == uid  # the very same pod, still there
                    assert pods[name]["spec"]["nodeName"] == victim
                    assert "deletionTimestamp" in pods[name]["metadata"]
        time.sleep(1.0)

    # 2. The manual fix: out-of-service taint -> force delete -> recreated elsewhere, Running.
    node = kube.get("node", victim)
    taints = [*(node["spec"].get("taints") or []), OUT_OF_SERVICE]
    kube.patch("node", victim, {"spec": {"taints": taints}})

    def recreated_and_running() -> bool:
        pods = {**pods_of(kube, namespace, "mariadb-server"), **pods_of(kube, namespace, "rabbitmq-rabbitmq")}
        return all(
            name in pods
            and pods[name]["metadata"]["uid"] != uid
            and pods[name]["spec"].get("nodeName") not in (None, victim)
            and running(pods[name])
            for name, uid in stuck.items()
        )

    # podgc looks for terminating pods on out-of-service nodes every 20 s
    kube.wait_for(recreated_and_running, 45, interval=0.5, what="stuck pods recreated and Running")
    for sts in STATEFULSETS:
        placement = [p["spec"]["nodeName"] for p in pods_of(kube, namespace, sts).values()]
        assert victim not in placement
        assert len(set(placement)) == 2  # doubled up on one surviving node, as in the seed logs
