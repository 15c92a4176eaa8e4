"""The lab's volumes: the real attach-detach controller and CSI attacher, the lab's driver and kubelet stand-in.

Everything is checked from the records of the chain itself: the PVC binding, the
VolumeAttachments the controller creates and the attacher marks attached, the node's
volumesInUse, the pod's Ready condition, and the driver's own record of its calls.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from asklepios_lab import ControlPlane, ready_condition, wait_for, workloads
from asklepios_lab.csi import DRIVER
from asklepios_lab.volumes import unique_name

from .conftest import NodeFactory

JSON = dict[str, Any]
VA_PATH = "/apis/storage.k8s.io/v1/volumeattachments"


def attachments(cp: ControlPlane, pv: str) -> list[JSON]:
    items: list[JSON] = cp.api.get(VA_PATH)["items"]
    return [va for va in items if va["spec"].get("source", {}).get("persistentVolumeName") == pv]


def attached_to(cp: ControlPlane, pv: str) -> list[str]:
    return sorted(va["spec"]["nodeName"] for va in attachments(cp, pv) if (va.get("status") or {}).get("attached"))


def pod(cp: ControlPlane, namespace: str, name: str) -> JSON:
    """The pod, or {} while it does not exist (yet)."""
    return cp.api.get_or_none(f"/api/v1/namespaces/{namespace}/pods/{name}") or {}


def pod_ready(p: JSON) -> bool:
    return (ready_condition(p) or {}).get("status") == "True"


@pytest.mark.both_releases
@pytest.mark.timeout(150)
def test_a_pod_is_ready_only_once_its_volume_is_attached_and_detached_when_it_leaves(
    control_plane: ControlPlane, nodes: NodeFactory, namespace: str
) -> None:
    cp = control_plane
    vols = cp.volumes()
    group = nodes.prefix
    attaching = nodes.add("a", labels={"lab-group": group})
    vols.add_node(attaching)
    pvs = vols.provide(namespace, "db", 1)
    sts = workloads.statefulset("db", "db", 1, node_selector={"lab-group": group}, volume=True)
    workloads.create(cp, namespace, sts)

    # the claim binds to the static PV, the controller attaches it, the attacher publishes it
    wait_for(lambda: attached_to(cp, pvs[0]) == [attaching], 60, what="volume attached to the pod's node")
    claim = cp.api.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/data-db-0")
    assert claim["status"]["phase"] == "Bound" and claim["spec"]["volumeName"] == pvs[0]
    va = attachments(cp, pvs[0])[0]
    assert va["spec"]["attacher"] == DRIVER
    wait_for(lambda: pod_ready(pod(cp, namespace, "db-0")), 20, what="db-0 Ready once attached")
    handle = f"{namespace}/data-db-0"
    published = [c for c in vols.driver_calls() if c["volume"] == handle and c["call"] == "ControllerPublishVolume"]
    # (the attacher may publish again: ControllerPublishVolume is idempotent)
    assert published and {(c["node"], c["result"]) for c in published} == {(attaching, "ok")}
    # the kubelet stand-in reports the volume in use on its node
    wait_for(lambda: cp.node(attaching)["status"].get("volumesInUse") == [unique_name(handle)], 20,
             what="volumesInUse on the node")  # fmt: skip

    # A node the controller does not attach for (no controller-managed annotation, no
    # CSINode): its pod is Running but never Ready, as a kubelet without the volume.
    stranded = nodes.add("b", labels={"lab-group": group})
    pvs += vols.provide(namespace, "web", 1)
    web = workloads.statefulset("web", "web", 1, node_selector={"kubernetes.io/hostname": stranded}, volume=True)
    workloads.create(cp, namespace, web)
    web_pod = f"/api/v1/namespaces/{namespace}/pods/web-0"
    wait_for(lambda: ((cp.api.get_or_none(web_pod) or {}).get("status") or {}).get("phase") == "Running", 30,
             what="web-0 Running")  # fmt: skip
    wait_for(lambda: cp.api.get(f"/api/v1/persistentvolumes/{pvs[1]}")["status"]["phase"] == "Bound", 30,
             what="web's PV bound")  # fmt: skip
    assert not pod_ready(pod(cp, namespace, "web-0"))
    assert attached_to(cp, pvs[1]) == []

    # The pod leaves a live node: the stand-in stops reporting it in use, the volume is
    # detached (VolumeAttachment deleted) and the driver unpublishes it from that node.
    cp.api.patch(f"/apis/apps/v1/namespaces/{namespace}/statefulsets/db", {"spec": {"replicas": 0}})
    wait_for(lambda: not attachments(cp, pvs[0]), 60, what="db's VolumeAttachment deleted")
    assert not cp.node(attaching)["status"].get("volumesInUse")
    unpublished = [c for c in vols.driver_calls() if c["volume"] == handle and c["call"] == "ControllerUnpublishVolume"]
    assert [(c["node"], c["result"]) for c in unpublished] == [(attaching, "ok")]
    cp.api.delete(f"/apis/apps/v1/namespaces/{namespace}/statefulsets/web")
    cp.api.delete(f"/apis/apps/v1/namespaces/{namespace}/statefulsets/db")


OUT_OF_SERVICE = {"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown", "effect": "NoExecute"}
UNPUBLISH_DELAY = 6.0  # below the attacher's --timeout=10s (a slower unpublish times out and is retried)


def set_out_of_service(cp: ControlPlane, node: str, on: bool) -> None:
    taints = [t for t in cp.node(node)["spec"].get("taints") or [] if t["key"] != OUT_OF_SERVICE["key"]]
    cp.api.patch(f"/api/v1/nodes/{node}", {"spec": {"taints": [*taints, OUT_OF_SERVICE] if on else taints}})


@pytest.mark.timeout(180)
def test_kickin_while_the_old_attachment_is_still_detaching_neither_delays_nor_strands_it(
    control_plane: ControlPlane, nodes: NodeFactory, namespace: str
) -> None:
    """Kickin (node Ready again, taint removed) before the dead node's VolumeAttachment is gone.

    The detach is slow here (the driver's unpublish takes 6 s). The taint is removed
    once the node is back while the old VolumeAttachment is still being deleted: the
    detach already under way still completes, on time, and the volume is attached to
    the replacement's node. (The kubelet of the returned node no longer reports the
    volume in use, so nothing would hold a detach not yet started either.)
    """
    cp = control_plane
    vols = cp.volumes()
    group = nodes.prefix
    names = [nodes.add(s, labels={"lab-group": group}) for s in ("a", "b")]
    for name in names:
        vols.add_node(name)
    pv = vols.provide(namespace, "db", 1)[0]
    workloads.create(
        cp, namespace, workloads.statefulset("db", "db", 1, node_selector={"lab-group": group}, volume=True)
    )
    wait_for(lambda: pod_ready(pod(cp, namespace, "db-0")), 60, what="db-0 Ready (attached)")
    victim = pod(cp, namespace, "db-0")["spec"]["nodeName"]
    old_uid = pod(cp, namespace, "db-0")["metadata"]["uid"]
    vols.set_unpublish_delay(UNPUBLISH_DELAY)
    try:
        cp.crash(victim)
        cp.wait_ready(victim, "Unknown", timeout=cp.grace_period + 15)
        set_out_of_service(cp, victim, True)  # kickout, as Asklepios does it: taint, then force delete
        cp.api.delete(f"/api/v1/namespaces/{namespace}/pods/db-0", 0)
        wait_for(lambda: any("deletionTimestamp" in va["metadata"] for va in attachments(cp, pv)), 30,
                 what="the old VolumeAttachment being deleted (detach under way)")  # fmt: skip
        detach_started = time.monotonic()
        cp.restore(victim)  # the node is back...
        set_out_of_service(cp, victim, False)  # ...and kicked in before the old attachment is gone
        kicked_in = time.monotonic()
        assert [va["spec"]["nodeName"] for va in attachments(cp, pv)] == [victim]  # still there: the case at hand

        def moved() -> bool:
            p = cp.api.get_or_none(f"/api/v1/namespaces/{namespace}/pods/db-0")
            return bool(
                p and p["metadata"]["uid"] != old_uid and pod_ready(p)
                and attached_to(cp, pv) == [p["spec"]["nodeName"]]
            )  # fmt: skip

        wait_for(moved, UNPUBLISH_DELAY + 30, what="db-0 Ready with its volume attached after the kickin")
        took = time.monotonic() - detach_started
        print(
            f"kickin {kicked_in - detach_started:.1f}s into the detach; attached and Ready {took:.1f}s after it began"
        )
        assert took <= UNPUBLISH_DELAY + 10, took  # not held up beyond the slow unpublish itself
        unpublished = [c for c in vols.driver_calls() if c["call"] == "ControllerUnpublishVolume"
                       and c["volume"] == f"{namespace}/data-db-0"]  # fmt: skip
        assert [(c["node"], c["result"]) for c in unpublished] == [(victim, "ok")]
    finally:
        vols.set_unpublish_delay(0)
        if not cp.kubelet_running(victim):
            cp.restore(victim)
    cp.api.delete(f"/apis/apps/v1/namespaces/{namespace}/statefulsets/db")
