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

Each pod has a ReadWriteOnce volume (the lab's real attach/detach chain, see
:mod:`asklepios_lab.volumes`), and a pod is Ready only once its volume is attached to
its node: "Running elsewhere" means "with its data". That is what the taint is for.
Without it, even a human force-deleting the stuck pods does not help: the replacement
is scheduled elsewhere but the dead node's VolumeAttachment stays (the node still
reports the volume in use, and nobody can unmount it), and the attach-detach
controller says why in a Warning Event ("Volume is already exclusively attached to one
node"; 1.28 calls it a Multi-Attach error) for as long as one waits.
With Asklepios the taint comes within seconds, and so does the volume; once the node is
back, the balancer moves a pod back and its volume is attached to that node again.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from asklepios_lab import ControlPlane, Kube, ready_condition, wait_for, workloads

from .checks import env, events, first_seen, has_oos
from .conftest import WATCH_LABEL, NodeFactory
from .runner import AsklepiosFactory, wait_value

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


VA_PATH = "/apis/storage.k8s.io/v1/volumeattachments"
# Without the taint the controller force-detaches a volume still in use only after its
# maxWaitForUnmountDuration (6 min); the bar is "still stuck 3 min after the crash".
STILL_STUCK_AFTER = 180.0
WITHIN_SECONDS_OF_TAINT = 15.0


def volume_attachments(cp: ControlPlane) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cp.api.get(VA_PATH)["items"]
    return items


def attachments_of(cp: ControlPlane, pvs: set[str]) -> dict[str, list[tuple[str, bool]]]:
    """PV -> [(node, attached)] of its VolumeAttachments."""
    out: dict[str, list[tuple[str, bool]]] = {pv: [] for pv in pvs}
    for va in volume_attachments(cp):
        pv = va["spec"].get("source", {}).get("persistentVolumeName")
        if pv in out:
            out[pv].append((va["spec"]["nodeName"], bool((va.get("status") or {}).get("attached"))))
    return out


def burrito(cp: ControlPlane, kube: Kube, namespace: str, nodes: NodeFactory, **node_kw: Any) -> list[str]:
    """Three control-plane nodes (volumes on), both StatefulSets with a volume per pod, one pod per node."""
    group = nodes.prefix
    labels = {"lab-group": group, **node_kw.pop("labels", {})}
    cps = [nodes.add(f"cp{i}", control_plane=True, labels=labels, **node_kw) for i in range(3)]
    vols = cp.volumes()
    for name in cps:
        vols.add_node(name)
    for sts in STATEFULSETS:
        vols.provide(namespace, sts, 3)
    selector = {CONTROL_PLANE: "", "lab-group": group}
    kube.apply(
        [workloads.statefulset(n, app, node_selector=selector, volume=True) for n, app in STATEFULSETS.items()],
        namespace,
    )

    def all_running_one_per_node() -> bool:
        for name in STATEFULSETS:
            pods = pods_of(kube, namespace, name)
            if len(pods) != 3 or not all(running(p) for p in pods.values()):
                return False
            assert sorted(p["spec"]["nodeName"] for p in pods.values()) == sorted(cps)
        return True

    kube.wait_for(all_running_one_per_node, 90, what="both StatefulSets Running (volumes attached), one pod per node")
    return cps


def pvs_of(kube: Kube, namespace: str, pods: dict[str, str]) -> dict[str, str]:
    """pod name -> the PV bound to its claim data-<pod>."""
    return {name: kube.get("pvc", f"data-{name}", namespace)["spec"]["volumeName"] for name in pods}


@pytest.mark.timeout(180)
def test_dead_node_pods_stay_terminating_until_out_of_service_taint(
    control_plane: ControlPlane, kube: Kube, namespace: str, nodes: NodeFactory
) -> None:
    burrito(control_plane, kube, namespace, nodes)

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
    # Ready means attached: each volume is now attached to its pod's new node, and only there.
    pods = {**pods_of(kube, namespace, "mariadb-server"), **pods_of(kube, namespace, "rabbitmq-rabbitmq")}
    pvs = pvs_of(kube, namespace, {name: "" for name in stuck})
    where = attachments_of(control_plane, set(pvs.values()))
    for name, pv in pvs.items():
        assert where[pv] == [(pods[name]["spec"]["nodeName"], True)], (name, where[pv])
    for sts in STATEFULSETS:
        placement = [p["spec"]["nodeName"] for p in pods_of(kube, namespace, sts).values()]
        assert victim not in placement
        assert len(set(placement)) == 2  # doubled up on one surviving node, as in the seed logs


def on_victim(kube: Kube, namespace: str, victim: str) -> dict[str, str]:
    """name -> uid of the StatefulSet pods on `victim`."""
    return {
        name: pod["metadata"]["uid"]
        for sts in STATEFULSETS
        for name, pod in pods_of(kube, namespace, sts).items()
        if pod["spec"]["nodeName"] == victim
    }


def all_pods(kube: Kube, namespace: str) -> dict[str, dict[str, Any]]:
    return {k: v for sts in STATEFULSETS for k, v in pods_of(kube, namespace, sts).items()}


@pytest.mark.timeout(330)
def test_without_the_taint_the_replacement_never_gets_its_volume(
    control_plane: ControlPlane, kube: Kube, namespace: str, nodes: NodeFactory
) -> None:
    """Even force-deleting the stuck pods by hand leaves the replacements without their volumes."""
    cp = control_plane
    burrito(cp, kube, namespace, nodes)
    victim = pods_of(kube, namespace, "mariadb-server")["mariadb-server-0"]["spec"]["nodeName"]
    stuck = on_victim(kube, namespace, victim)
    pvs = pvs_of(kube, namespace, stuck)
    assert all(attachments_of(cp, {pv})[pv] == [(victim, True)] for pv in pvs.values())

    crashed = time.monotonic()
    cp.crash(victim)
    cp.wait_ready(victim, "Unknown", timeout=cp.grace_period + 15)
    kube.wait_for(
        lambda: all("deletionTimestamp" in all_pods(kube, namespace)[n]["metadata"] for n in stuck),
        TOLERATION_SECONDS + 20,
        what="pods of the dead node evicted",
    )
    # The usual manual "fix" without the taint: force-delete the stuck pods.
    for name in stuck:
        kube.delete("pod", name, namespace, force=True)

    def replaced() -> bool:
        pods = all_pods(kube, namespace)
        return all(
            n in pods and pods[n]["metadata"]["uid"] != uid and pods[n]["spec"].get("nodeName") not in (None, victim)
            for n, uid in stuck.items()
        )

    kube.wait_for(replaced, 30, what="replacement pods scheduled on the survivors")

    def multi_attach_warnings() -> set[str]:
        found = set()
        for e in kube.items("events", namespace):
            obj = e["involvedObject"]
            if (
                e["type"] == "Warning"
                and e["reason"] == "FailedAttachVolume"
                and "already exclusively attached to one node" in e["message"]  # 1.28: "Multi-Attach error ..."
                and obj["kind"] == "Pod"
                and obj["name"] in stuck
                and obj["uid"] != stuck[obj["name"]]
            ):
                found.add(obj["name"])
        return found if found == set(stuck) else set()

    kube.wait_for(multi_attach_warnings, 60, interval=1.0, what="the attach-detach controller's Warnings")

    # Until 3 minutes after the crash: each volume still attached to the dead node only,
    # each replacement Running but not Ready (no volume), the dead node still "using" them.
    while True:
        where = attachments_of(cp, set(pvs.values()))
        for name, pv in pvs.items():
            assert where[pv] == [(victim, True)], (name, where[pv])
        pods = all_pods(kube, namespace)
        for name in stuck:
            assert not running(pods[name]), name
            assert pods[name]["spec"]["nodeName"] != victim
        assert len(cp.node(victim)["status"].get("volumesInUse") or []) == len(stuck)
        if time.monotonic() - crashed >= STILL_STUCK_AFTER:
            break
        time.sleep(2.0)


@pytest.mark.timeout(240)
def test_with_asklepios_the_volume_follows_the_pod_within_seconds_of_the_taint(
    control_plane: ControlPlane, kube: Kube, namespace: str, nodes: NodeFactory, asklepios: AsklepiosFactory
) -> None:
    cp = control_plane
    burrito(cp, kube, namespace, nodes, labels={WATCH_LABEL: nodes.prefix})
    victim = pods_of(kube, namespace, "mariadb-server")["mariadb-server-0"]["spec"]["nodeName"]
    stuck = on_victim(kube, namespace, victim)
    pvs = pvs_of(kube, namespace, stuck)
    balancer = {
        "ASKLEPIOS_BALANCER": "true",
        "ASKLEPIOS_BALANCER_SELECTOR": "application in (mariadb,rabbitmq)",
        "ASKLEPIOS_BALANCER_NAMESPACES": namespace,
    }
    asklepios(env(nodes.prefix, **balancer))

    cp.crash(victim)
    tainted, _ = first_seen(cp, victim, has_oos, 60, "kickout (out-of-service taint)")

    def old_gone() -> float | None:
        where = attachments_of(cp, set(pvs.values()))
        return time.time() if all(victim not in [n for n, _ in where[pv]] for pv in pvs.values()) else None

    def moved_and_ready() -> float | None:
        pods = all_pods(kube, namespace)
        where = attachments_of(cp, set(pvs.values()))
        for name, uid in stuck.items():
            pod = pods.get(name)
            if pod is None or pod["metadata"]["uid"] == uid or not running(pod):
                return None
            if where[pvs[name]] != [(pod["spec"]["nodeName"], True)] or pod["spec"]["nodeName"] == victim:
                return None
        return time.time()

    gone = wait_value(old_gone, 60, "the dead node's VolumeAttachments deleted", interval=0.1)
    ready = wait_value(moved_and_ready, 60, "replacements Ready with their volumes on other nodes", interval=0.1)
    print(
        f"taint -> old attachments gone {gone - tainted:.1f}s, -> attached elsewhere and Ready {ready - tainted:.1f}s"
    )
    assert ready - tainted <= WITHIN_SECONDS_OF_TAINT, ready - tainted
    # The driver's own record: unpublished from the dead node, then published on the new one.
    pods = all_pods(kube, namespace)
    calls = cp.volumes().driver_calls()
    for name in stuck:
        handle = f"{namespace}/data-{name}"
        mine = [(c["call"], c["node"], c["result"]) for c in calls if c["volume"] == handle]
        new_node = pods[name]["spec"]["nodeName"]
        unpublished = mine.index(("ControllerUnpublishVolume", victim, "ok"))
        # published on the new node only after the unpublish from the dead one (again and again: idempotent)
        assert ("ControllerPublishVolume", new_node, "ok") not in mine[:unpublished], mine
        assert mine[unpublished + 1 :] and set(mine[unpublished + 1 :]) == {("ControllerPublishVolume", new_node, "ok")}
    wait_for(lambda: events(cp, "PodsReleased", victim), 10, what="PodsReleased")
    # Asklepios follows the volumes it frees: VolumesReleased once the old attachments are gone
    [released] = wait_value(lambda: events(cp, "VolumesReleased", victim), 10, "VolumesReleased")
    assert released["type"] == "Normal"

    # The node comes back: kickin, then the balancer moves one pod of each StatefulSet back,
    # and its volume with it: attached to the recovered node again, and only there.
    cp.restore(victim)

    def back_home() -> bool:
        pods = all_pods(kube, namespace)
        homes = {
            sts: {p["spec"].get("nodeName") for p in pods_of(kube, namespace, sts).values()} for sts in STATEFULSETS
        }
        if not all(victim in h and len(h) == 3 for h in homes.values()) or not all(map(running, pods.values())):
            return False
        where = attachments_of(cp, {kube.get("pvc", f"data-{n}", namespace)["spec"]["volumeName"] for n in pods})
        return all(
            where[kube.get("pvc", f"data-{n}", namespace)["spec"]["volumeName"]] == [(p["spec"]["nodeName"], True)]
            for n, p in pods.items()
        )

    kube.wait_for(back_home, 90, interval=1.0, what="balanced again, each volume attached to its pod's node")
