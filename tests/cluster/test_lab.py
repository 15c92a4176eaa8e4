"""The lab itself: pinned versions, kwok nodes and pods, faults, teardown, apiserver restarts.

If these fail, the tests that use the lab to check Asklepios are meaningless, so each
property the other tests rely on is checked here against the real components.
"""

from __future__ import annotations

import calendar
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from asklepios_lab import RESYNC_ANNOTATION, ControlPlane, Kube, PodResync, ready_condition, wait_for

from .conftest import NodeFactory, unique_id

# set_ready must survive longer than what could overwrite it: kwok reacts to node
# events within milliseconds, node-lifecycle checks every second against a 5 s grace.
STICK_WINDOW = 8.0


def _parse_time(stamp: str) -> int:
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))


def test_binaries_are_the_pinned_versions(control_plane: ControlPlane) -> None:
    def version(binary: str) -> str:
        return subprocess.run(
            [str(control_plane.bin_dir / binary), "--version"],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout  # fmt: skip

    assert version("kube-apiserver").strip() == "Kubernetes v1.37.2"
    assert version("kube-controller-manager").strip() == "Kubernetes v1.37.2"
    assert version("kube-scheduler").strip() == "Kubernetes v1.37.2"
    assert "etcd Version: 3.6.16" in version("etcd")
    assert "v0.8.0" in version("kwok")


def test_nodes_become_ready_and_renew_their_lease(control_plane: ControlPlane, nodes: NodeFactory) -> None:
    names = nodes.add_many(2)
    api = control_plane.api
    for name in names:
        assert control_plane.ready_status(name) == "True"
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
        first = api.get(path)["spec"]["renewTime"]

        def renewed(path: str = path, first: str = first) -> bool:
            return bool(api.get(path)["spec"]["renewTime"] != first)

        wait_for(renewed, 10, what=f"lease of {name} renewed")


def test_pod_is_scheduled_to_a_kwok_node_and_runs(kube: Kube, namespace: str, nodes: NodeFactory) -> None:
    node = nodes.add()
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "namespace": namespace},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": node},
                "containers": [{"name": "web", "image": "nginx:1.27"}],
            },
        }
    )

    def running() -> dict[str, object] | None:
        pod = kube.get("pod", "web", namespace)
        ready = ready_condition(pod) or {}
        return pod if pod["status"].get("phase") == "Running" and ready.get("status") == "True" else None

    pod = kube.wait_for(running, 30, what="pod web Running and Ready")
    assert pod["spec"]["nodeName"] == node  # type: ignore[index]
    assert pod["status"]["podIP"]  # type: ignore[index]


def test_crash_makes_node_unknown_and_restore_makes_it_ready(control_plane: ControlPlane, nodes: NodeFactory) -> None:
    node = nodes.add()
    crashed_at = time.time()
    control_plane.crash(node)

    status = control_plane.wait_ready(node, "Unknown", timeout=control_plane.grace_period + 10)
    cond = ready_condition(status) or {}
    assert cond["reason"] == "NodeStatusUnknown"
    assert _parse_time(cond["lastTransitionTime"]) >= int(crashed_at)

    def tainted() -> bool:  # node-lifecycle taints in a separate pass, a moment after the status
        taints = control_plane.node(node)["spec"].get("taints") or []
        return "node.kubernetes.io/unreachable" in {t["key"] for t in taints}

    wait_for(tainted, 10, what=f"{node} tainted unreachable")

    control_plane.restore(node, wait_ready=False)
    restored = control_plane.wait_ready(node, "True", timeout=30)
    assert _parse_time((ready_condition(restored) or {})["lastTransitionTime"]) >= int(crashed_at)


def _bound_pod(name: str, namespace: str, node: str) -> dict[str, object]:
    """A pod bound to ``node`` directly (no scheduler), as a kubelet finds it."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox:1.36"}]},
    }


def test_restore_finishes_pods_left_terminating(
    control_plane: ControlPlane, namespace: str, nodes: NodeFactory
) -> None:
    api, node = control_plane.api, nodes.add()
    path = f"/api/v1/namespaces/{namespace}/pods"
    api.create(path, _bound_pod("left", namespace, node))
    wait_for(lambda: api.get(f"{path}/left")["status"].get("phase") == "Running", 30, what="pod left Running")
    control_plane.stop_kubelet(node)
    api.delete(f"{path}/left", grace_seconds=30)
    assert api.get(f"{path}/left")["metadata"].get("deletionTimestamp"), "Terminating while no kubelet runs"

    control_plane.restore(node, wait_ready=False)
    wait_for(lambda: api.get_or_none(f"{path}/left") is None, 60, what="pod left gone after the restore")


def test_pod_resync_touches_unfinished_pods_until_none_is_left(
    control_plane: ControlPlane, namespace: str, nodes: NodeFactory
) -> None:
    """The lab's stand-in for the kubelet's start-up sync that kwok can miss (asklepios_lab.resync)."""
    api, node = control_plane.api, nodes.add()
    path = f"/api/v1/namespaces/{namespace}/pods"
    with control_plane.skewed_kubelet(node, behind_seconds=0, every=0.5):  # no kwok; the Lease renewed
        api.create(path, _bound_pod("pending", namespace, node))
        api.create(path, _bound_pod("deleting", namespace, node))
        api.delete(f"{path}/deleting", grace_seconds=30)  # Terminating: no kubelet confirms it
        resync = PodResync(api, node, time.time(), every=0.5, within=30).start()
        try:

            def touched_twice() -> bool:
                notes = [(api.get(f"{path}/{n}")["metadata"].get("annotations") or {}) for n in ("pending", "deleting")]
                return all(int(a.get(RESYNC_ANNOTATION, "0")) >= 2 for a in notes)

            wait_for(touched_twice, 20, what="both unfinished pods annotated twice")
            assert api.get(f"{path}/pending")["status"]["phase"] == "Pending"  # touched, never run or deleted
            for name in ("deleting", "pending"):
                api.delete(f"{path}/{name}", grace_seconds=0)
            assert resync.join(10), "the resync ends once no unfinished pod is left"
            assert not resync.errors
        finally:
            resync.stop()


@pytest.mark.timeout(90)
def test_bulk_nodes_share_one_kwok_and_fail_together(
    control_plane: ControlPlane, request: pytest.FixtureRequest
) -> None:
    prefix = unique_id(request)
    names = [f"{prefix}-{i}" for i in range(20)]
    before = set(control_plane.pids())
    group = control_plane.add_nodes_bulk(names, {"lab-test": prefix})
    try:
        assert set(control_plane.pids()) - before == {f"kwok-{group}"}  # ONE kwok for all
        assert all(control_plane.ready_status(n) == "True" for n in names)
        control_plane.crash(group)

        def all_unknown() -> bool:
            items = control_plane.api.get("/api/v1/nodes", query={"labelSelector": f"lab-test={prefix}"})
            return all((ready_condition(n) or {}).get("status") == "Unknown" for n in items["items"])

        wait_for(all_unknown, control_plane.grace_period + 15, what="bulk nodes Unknown")
        control_plane.restore(group)  # waits for all Ready
    finally:
        control_plane.remove_group(group)
    assert not control_plane.api.get("/api/v1/nodes", query={"labelSelector": f"lab-test={prefix}"})["items"]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("status", ["False", "Unknown"])
def test_set_ready_sticks_until_cleared(control_plane: ControlPlane, nodes: NodeFactory, status: str) -> None:
    node = nodes.add()
    control_plane.set_ready(node, status, reason="LabTest", message="set by test")
    first = ready_condition(control_plane.node(node)) or {}
    assert (first["status"], first["reason"]) == (status, "LabTest")

    # Observation window (a fixed duration is the point): nothing may flip it back.
    deadline = time.monotonic() + STICK_WINDOW
    while time.monotonic() < deadline:
        assert control_plane.ready_status(node) == status
        time.sleep(0.5)

    again = control_plane.set_ready(node, status, reason="LabTest")  # same status: no transition
    cond = ready_condition(again) or {}
    assert cond["lastTransitionTime"] == first["lastTransitionTime"]
    assert cond["lastHeartbeatTime"] >= first["lastHeartbeatTime"]

    control_plane.clear_ready(node)  # waits for kwok to post Ready=True again
    assert control_plane.ready_status(node) == "True"


def test_stop_and_start_apiserver_keeps_the_data(apiserver_outage: ControlPlane, namespace: str) -> None:
    control_plane = apiserver_outage
    api = control_plane.api
    control_plane.stop_apiserver()
    with pytest.raises(ConnectionRefusedError):
        api.request("GET", "/readyz", timeout=2)
    control_plane.start_apiserver()
    assert api.get(f"/api/v1/namespaces/{namespace}")["metadata"]["name"] == namespace


def test_compact_etcd_then_restart_makes_old_watch_gone(apiserver_outage: ControlPlane, namespace: str) -> None:
    control_plane = apiserver_outage
    api = control_plane.api
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    old_rv = api.get(path)["metadata"]["resourceVersion"]
    for i in range(3):
        api.create(path, {"metadata": {"name": f"cm{i}"}})
    assert control_plane.compact_etcd() > int(old_rv) + 1  # a watch from rv starts at rv+1
    # The watch cache still serves the old version until the apiserver restarts.
    control_plane.stop_apiserver()
    control_plane.start_apiserver()
    event = api.first_watch_event(path, old_rv)
    assert event["type"] == "ERROR"
    assert event["object"]["code"] == 410


@pytest.mark.timeout(60)
def test_compact_etcd_without_watch_cache_makes_old_watch_gone(tmp_path: Path) -> None:
    with ControlPlane(tmp_path, watch_cache=False, anchor_node=False) as cp:
        path = "/api/v1/namespaces/default/configmaps"
        old_rv = cp.api.get(path)["metadata"]["resourceVersion"]
        for i in range(3):  # a watch from rv starts at rv+1: that must be compacted too
            cp.api.create(path, {"metadata": {"name": f"cm{i}"}})
        assert cp.compact_etcd() > int(old_rv) + 1
        event = cp.api.first_watch_event(path, old_rv)
        assert (event["type"], event["object"]["code"]) == ("ERROR", 410)


_CHILD = textwrap.dedent(
    """
    import json, signal, sys, time
    from pathlib import Path
    from asklepios_lab import ControlPlane

    # A shell that starts the test run in the background (`cmd &` without job control)
    # makes it ignore SIGINT, and children inherit that: Ctrl-C must still mean Ctrl-C.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    workdir, pid_file = Path(sys.argv[1]), Path(sys.argv[2])
    with ControlPlane(workdir, bin_dir=Path(sys.argv[3])) as cp:
        cp.add_node("n1")
        pid_file.write_text(json.dumps(cp.pids()))
        while True:
            time.sleep(0.2)
    """
)


def _alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie waiting for its reaper does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_interrupted_run_leaves_no_process_behind(
    control_plane: ControlPlane, tmp_path: Path, sig: signal.Signals
) -> None:
    pid_file = tmp_path / "pids.json"
    with (tmp_path / "child.log").open("wb") as log:
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(tmp_path / "cp"), str(pid_file), str(control_plane.bin_dir)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_for(lambda: pid_file.exists() and pid_file.read_text(), 60, what="child cluster up")
            pids: dict[str, int] = json.loads(pid_file.read_text())
            assert set(pids) >= {"etcd", "kube-apiserver", "kube-controller-manager",
                                 "kube-scheduler", "kwok-lab-anchor", "kwok-n1"}  # fmt: skip
            assert all(_alive(p) for p in pids.values())
            child.send_signal(sig)
            child.wait(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()

    def none_alive() -> bool:
        return not any(_alive(p) for p in pids.values())

    wait_for(none_alive, 15, what=f"all of {pids} gone")
