"""Never taint a live node: the death verdict on the real control plane (issues 11 and 19).

A node whose kubelet still renews its Lease, or that still answers on its kubelet
port, is alive whatever its Ready condition says: the kickout is held, its deadline
kept, its pods left where they are, and it goes ahead at the next resync once the
evidence of life is gone. Claims are checked from the apiserver (node polls, the
test's own pod watch, Events) and never from Asklepios' logs.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from asklepios_lab import ControlPlane, wait_for, workloads
from tests.cluster.checks import OOS, env, events, first_seen, has_oos, ready, wait_node, writes_by_asklepios
from tests.cluster.podwatch import PodWatch
from tests.cluster.runner import AsklepiosFactory

KICKOUT = 3
LEASE_SECONDS = 4  # the lab's node Lease duration
RESYNC = 2


def patient_statefulset(name: str) -> dict[str, Any]:
    """A StatefulSet with the default (300 s) unreachable / not-ready tolerations, so that
    within a test nothing but Asklepios' taint could move its pods."""
    sts = workloads.statefulset(name, name)
    spec = sts["spec"]["template"]["spec"]
    spec["tolerations"] = [t for t in spec["tolerations"] if "tolerationSeconds" not in t]
    return sts


def never_tainted(cp: ControlPlane, name: str, seconds: float) -> None:
    """A negative claim needs a window: the node polled every 50 ms for `seconds`."""
    until = time.time() + seconds
    while time.time() < until:
        assert not has_oos(cp.node(name)), f"{name} tainted while alive"
        time.sleep(0.05)


def untouched(watch: PodWatch, uids: set[str]) -> None:
    deleted = {e.name for e in watch.events if e.uid in uids and (e.deleting or e.kind == "DELETED")}
    assert not deleted, f"pods of a live node were deleted: {sorted(deleted)}"


def pods_on(cp: ControlPlane, namespace: str, node: str) -> set[str]:
    return {p["metadata"]["uid"] for p in workloads.pods(cp, namespace) if p["spec"].get("nodeName") == node}


@pytest.mark.timeout(180)
def test_ready_false_with_a_renewed_lease_is_never_tainted(
    control_plane: ControlPlane, nodes: Any, namespace: str, asklepios: AsklepiosFactory
) -> None:
    cp = control_plane
    names = nodes.watched("n", "m", "o", control_plane=True)
    workloads.create(cp, namespace, patient_statefulset("db"))
    workloads.wait_all_running(cp, namespace, "db", 3)
    victim = names[0]
    mine = pods_on(cp, namespace, victim)
    healer = asklepios(env(nodes.prefix, ASKLEPIOS_KICKOUT_SECONDS=str(KICKOUT)))
    with PodWatch(cp, namespace) as watch:
        cp.set_ready(victim, "False")  # the kubelet itself reports NotReady and keeps renewing its Lease
        never_tainted(cp, victim, 3 * KICKOUT + RESYNC)
        [held] = events(cp, "KickoutHeld", victim)
        assert held["type"] == "Warning" and held["message"].startswith("kubelet alive"), held["message"]
        assert healer.metric("asklepios_kickouts_held_total", 'reason="kubelet alive"') == 1
        untouched(watch, mine)
        cp.crash(victim)  # now the kubelet is silent: the kickout follows at the next resync
        crashed = time.time()
        seen, _ = first_seen(cp, victim, has_oos, 30, "kickout once the kubelet is silent")
        # the last renewal may come after the last look (one more resync), then the Lease must run out
        assert seen - crashed <= LEASE_SECONDS + 2 * RESYNC + 1.5, seen - crashed


@pytest.mark.timeout(180)
def test_a_partitioned_node_is_held_while_it_answers(
    control_plane: ControlPlane, nodes: Any, namespace: str, asklepios: AsklepiosFactory
) -> None:
    cp = control_plane
    names = nodes.watched("n", "m", "o", control_plane=True)
    workloads.create(cp, namespace, patient_statefulset("db"))
    workloads.wait_all_running(cp, namespace, "db", 3)
    victim = names[1]
    mine = pods_on(cp, namespace, victim)
    healer = asklepios(env(nodes.prefix, ASKLEPIOS_KICKOUT_SECONDS=str(KICKOUT)))
    with PodWatch(cp, namespace) as watch:
        cp.partition(victim)  # cut off from the apiserver, still running: its kubelet port answers
        wait_node(cp, victim, lambda n: ready(n)["status"] == "Unknown", 30, "Unknown")
        never_tainted(cp, victim, 3 * KICKOUT + LEASE_SECONDS + RESYNC)
        held = [e["message"] for e in events(cp, "KickoutHeld", victim)]
        assert f"node answers: answers on {cp.node_ip(victim)}:10250 accepted" in held, held
        # before it: at most the Lease not yet watched for its 4 s on Asklepios' clock (kickout 3 s < 4 s)
        assert all(m.startswith("kubelet alive") for m in held if not m.startswith("node answers")), held
        assert cp.answers(victim)
        untouched(watch, mine)
        cp.crash(victim)  # and now it is really off
        crashed = time.time()
        seen, _ = first_seen(cp, victim, has_oos, 30, "kickout once nothing answers")
        assert seen - crashed <= RESYNC + 1.5, seen - crashed
    wait_for(lambda: events(cp, "NodeKickedOut", victim), 10, what="NodeKickedOut")
    assert healer.metric("asklepios_kickouts_total") == 1  # counted before the Event is sent


@pytest.mark.timeout(180)
def test_a_stopped_kubelet_whose_kernel_refuses_is_never_tainted(
    control_plane: ControlPlane, nodes: Any, namespace: str, asklepios: AsklepiosFactory
) -> None:
    """Issue 19.1: the kubelet stops (Lease silent, Unknown), the machine runs: its port refuses."""
    cp = control_plane
    names = nodes.watched("n", "m", "o", control_plane=True)
    workloads.create(cp, namespace, patient_statefulset("db"))
    workloads.wait_all_running(cp, namespace, "db", 3)
    victim = names[2]
    mine = pods_on(cp, namespace, victim)
    asklepios(env(nodes.prefix, ASKLEPIOS_KICKOUT_SECONDS=str(KICKOUT)))
    with PodWatch(cp, namespace) as watch:
        cp.stop_kubelet(victim)
        wait_node(cp, victim, lambda n: ready(n)["status"] == "Unknown", 30, "Unknown")
        assert cp.port_state(victim) == "refused"
        never_tainted(cp, victim, 3 * KICKOUT + LEASE_SECONDS + RESYNC)
        held = [e["message"] for e in events(cp, "KickoutHeld", victim)]
        assert f"node answers: answers on {cp.node_ip(victim)}:10250 refused" in held, held
        assert all(m.startswith("kubelet alive") for m in held if not m.startswith("node answers")), held
        untouched(watch, mine)
        cp.crash(victim)  # and now the machine is off: nothing answers any more
        assert cp.port_state(victim) == "silent"
        first_seen(cp, victim, has_oos, 30, "kickout once the machine is off")


@pytest.mark.timeout(240)
def test_a_kubelet_a_minute_behind_is_never_tainted_even_after_a_restart(
    control_plane: ControlPlane, nodes: Any, namespace: str, asklepios: AsklepiosFactory
) -> None:
    """Issue 19.3: renewTime 60 s behind Asklepios' clock, renewed every second, NotReady."""
    cp = control_plane
    names = nodes.watched("n", "m", "o", control_plane=True)
    victim = names[0]
    settings = env(nodes.prefix, ASKLEPIOS_KICKOUT_SECONDS=str(KICKOUT))
    with cp.skewed_kubelet(victim, behind_seconds=60, every=1.0, port="silent"):
        cp.set_ready(victim, "False")
        first = asklepios(settings)
        never_tainted(cp, victim, 3 * KICKOUT + LEASE_SECONDS + RESYNC)
        held = [e["message"] for e in events(cp, "KickoutHeld", victim)]
        assert held and all(m.startswith("kubelet alive") for m in held), held
        first.stop()  # the deadline is long past now: the restarted one has no earlier look to compare with
        asklepios(settings)
        never_tainted(cp, victim, 3 * KICKOUT + LEASE_SECONDS + RESYNC)
    assert not [w for w in writes_by_asklepios(cp, "patch", "nodes") if w["objectRef"].get("name") == victim
                and "taints" in str(w.get("requestObject", {}).get("spec", {}))]  # fmt: skip


@pytest.mark.timeout(240)
def test_a_repair_never_taints_a_node_whose_kubelet_renews(
    control_plane: ControlPlane, nodes: Any, namespace: str, asklepios: AsklepiosFactory
) -> None:
    """Issue 19.2: kicked out, back and counting up; an admin lifts cordon and taint; a short
    Ready=False from its live kubelet must not bring the taint back."""
    cp = control_plane
    names = nodes.watched("n", "m", "o", control_plane=True)
    victim = names[1]
    asklepios(env(nodes.prefix, ASKLEPIOS_KICKOUT_SECONDS=str(KICKOUT), ASKLEPIOS_KICKIN_SECONDS="600"))
    cp.crash(victim)
    first_seen(cp, victim, has_oos, 40, "kickout")
    cp.restore(victim)  # back: Ready, counting up to a kickin 600 s away
    taints = [t for t in cp.node(victim)["spec"].get("taints") or [] if t["key"] != OOS]
    cp.api.patch(f"/api/v1/nodes/{victim}", {"spec": {"unschedulable": None, "taints": taints or None}})
    cp.set_ready(victim, "False")  # the kubelet (kwok) keeps renewing its Lease
    never_tainted(cp, victim, 3 * KICKOUT + LEASE_SECONDS + 2 * RESYNC)
    added = [w for w in writes_by_asklepios(cp, "patch", "nodes")
             if w["objectRef"].get("name") == victim and OOS in str(w.get("requestObject", {}))]  # fmt: skip
    assert len(added) == 1, added  # the kickout's only
