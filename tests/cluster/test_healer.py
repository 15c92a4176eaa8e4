"""The healer on the real local control plane: kickout and kickin at their deadlines.

Each test watches its own nodes only (a per-test label in ASKLEPIOS_NODE_SELECTOR),
so tests share one control plane without seeing each other's nodes. A node is made
dead the way a power cut does it (its kwok killed: the Lease stops, nothing answers
on its kubelet port), never by the Ready condition alone: Asklepios rightly holds
the kickout of a node whose kubelet still renews its Lease (tests/cluster/test_death.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from asklepios_lab import ControlPlane, wait_for, workloads
from tests.cluster.checks import (
    OOS,
    SEL,
    env,
    events,
    first_seen,
    has_oos,
    parse_time,
    power_cut,
    ready,
    record_of,
    wait_node,
)
from tests.cluster.runner import AsklepiosFactory, wait_value

KICKOUT_ANNOTATION = "asklepios.io/kickout"
OBSERVATION_WINDOW = 6.0  # seconds: past the deadline (kickout 5 s) + three resync periods (2 s each)
# The condition's lastTransitionTime has 1 s resolution, and a countdown starts when
# Asklepios sees the transition (at most 1 s after the truncated time), plus the poll.
LATE = 1.5


@pytest.mark.both_releases
@pytest.mark.timeout(240)
def test_seed_scenario_kickout_and_kickin_at_deadlines(
    control_plane: ControlPlane, nodes: Any, namespace: str, asklepios: AsklepiosFactory
) -> None:
    cp = control_plane
    names = nodes.watched("control1", "control2", "control3", control_plane=True)
    for sts in ("mariadb-server", "rabbitmq-rabbitmq"):
        workloads.create(cp, namespace, workloads.statefulset(sts, sts.split("-")[0]))
    before = {sts: workloads.wait_all_running(cp, namespace, sts, 3) for sts in ("mariadb-server", "rabbitmq-rabbitmq")}
    healer = asklepios(env(nodes.prefix))
    victim = names[1]
    victim_pods = sorted(p for where in before.values() for p, n in where.items() if n == victim)

    cp.crash(victim)
    node = wait_node(cp, victim, lambda n: ready(n)["status"] != "True", 30, "NotReady")
    deadline = parse_time(ready(node)["lastTransitionTime"]) + 5
    seen, kicked = first_seen(cp, victim, has_oos, 30, "out-of-service taint")
    assert deadline - 0.1 <= seen <= deadline + LATE, (seen - deadline, healer.tail())
    assert kicked["spec"].get("unschedulable") is True
    assert KICKOUT_ANNOTATION in kicked["metadata"]["annotations"]
    line = healer.wait_log(lambda r: r.get("msg") == "node kicked out", 5, "kickout log")
    assert line["node"] == victim
    assert line["late_seconds"] < 1.0
    assert healer.metric("asklepios_kickouts_total") == 1
    assert wait_for(lambda: events(cp, "NodeKickedOut", victim), 10, what="NodeKickedOut event")

    survivors = {names[0], names[2]}
    for sts in before:  # the dead node's pods are recreated elsewhere and Running

        def moved(s: str = sts) -> dict[str, str] | None:
            where = workloads.placement(cp, namespace, s)
            return where if len(where) == 3 and set(where.values()) <= survivors else None

        wait_value(moved, 90, f"{sts} Running on the survivors")
    assert victim_pods  # the victim did hold pods before

    cp.restore(victim)
    up = wait_node(cp, victim, lambda n: ready(n)["status"] == "True", 30, "Ready again")
    kickin_deadline = parse_time(ready(up)["lastTransitionTime"]) + 5
    seen, back = first_seen(cp, victim, lambda n: not has_oos(n), 30, "taint removed")
    assert kickin_deadline - 0.1 <= seen <= kickin_deadline + LATE, seen - kickin_deadline
    assert not back["spec"].get("unschedulable")
    assert KICKOUT_ANNOTATION not in (back["metadata"].get("annotations") or {})
    assert wait_for(lambda: events(cp, "NodeKickedIn", victim), 10, what="NodeKickedIn event")
    # counted once the kickin is announced, after the node is written (and its record cleared): wait for it
    wait_for(lambda: healer.metric("asklepios_kickins_total") == 1, 10, what="asklepios_kickins_total 1")


@pytest.mark.both_releases
@pytest.mark.timeout(120)
def test_false_unknown_flip_keeps_the_deadline(
    control_plane: ControlPlane, nodes: Any, asklepios: AsklepiosFactory
) -> None:
    cp = control_plane
    name, *_ = nodes.watched("n", "m", "o")
    healer = asklepios(env(nodes.prefix, ASKLEPIOS_KICKOUT_SECONDS="8"))
    start = power_cut(cp, name, "False")
    wait_for(lambda: "notready" in (record_of(cp, name) or {}), 5, what="the NotReady period recorded")
    wait_for(lambda: time.time() >= start + 3, 5, what="3 s into the countdown")
    flipped = cp.set_ready(name, "Unknown")
    assert parse_time(ready(flipped)["lastTransitionTime"]) > start  # the condition's clock moved
    seen, _ = first_seen(cp, name, has_oos, 20, "kickout")
    assert start + 8 - 0.1 <= seen <= start + 8 + LATE, (seen - start, healer.tail())


@pytest.mark.both_releases
@pytest.mark.timeout(120)
def test_restart_mid_countdown_acts_at_the_original_deadline(
    control_plane: ControlPlane, nodes: Any, asklepios: AsklepiosFactory
) -> None:
    cp = control_plane
    name, *_ = nodes.watched("n", "m", "o")
    first = asklepios(env(nodes.prefix, ASKLEPIOS_KICKOUT_SECONDS="10"))
    start = power_cut(cp, name, "False")
    wait_for(lambda: time.time() >= start + 2, 5, what="2 s into the countdown")
    flipped = ready(cp.set_ready(name, "Unknown"))["lastTransitionTime"]  # a flip the first process records

    def mark() -> str:
        return str((record_of(cp, name) or {}).get("notready", ""))

    wait_for(lambda: flipped in mark(), 5, what="the mark updated for the flip")
    first.kill()
    second = asklepios(env(nodes.prefix, ASKLEPIOS_KICKOUT_SECONDS="10"))
    seen, _ = first_seen(cp, name, has_oos, 20, "kickout by the restarted process")
    assert start + 10 - 0.1 <= seen <= start + 10 + LATE, (seen - start, second.tail())


@pytest.mark.timeout(180)
def test_admin_cordon_and_foreign_taint_survive_a_cycle(
    control_plane: ControlPlane, nodes: Any, asklepios: AsklepiosFactory
) -> None:
    cp = control_plane
    foreign = {"key": "example.com/maintenance", "value": "disk", "effect": "NoSchedule"}
    name, *_ = nodes.watched("n", "m", "o")
    cp.api.patch(f"/api/v1/nodes/{name}", {"spec": {"unschedulable": True, "taints": [foreign]}})
    asklepios(env(nodes.prefix))
    power_cut(cp, name)
    _, kicked = first_seen(cp, name, has_oos, 20, "kickout")
    record = kicked["metadata"]["annotations"][KICKOUT_ANNOTATION]
    assert '"cordoned":false' in record
    assert '"tainted":true' in record
    assert '"fenced"' not in record  # no fencing: never said
    cp.restore(name)
    _, back = first_seen(cp, name, lambda n: not has_oos(n), 30, "kickin")
    assert back["spec"].get("unschedulable") is True  # the admin's cordon stays
    assert foreign in back["spec"]["taints"]
    assert KICKOUT_ANNOTATION not in (back["metadata"].get("annotations") or {})


@pytest.mark.timeout(120)
def test_concurrent_taint_writer_loses_nothing(
    control_plane: ControlPlane, nodes: Any, asklepios: AsklepiosFactory
) -> None:
    cp = control_plane
    name, *_ = nodes.watched("n", "m", "o")
    healer = asklepios(env(nodes.prefix, ASKLEPIOS_KICKOUT_SECONDS="3"))
    written: list[str] = []
    stop = threading.Event()
    writer_api = cp.client(cp.admin_token)

    def writer() -> None:  # another controller adding taints with its own read-modify-write
        i = 0
        while not stop.is_set() and i < 400:
            node = writer_api.get(f"/api/v1/nodes/{name}")
            taints = [
                *(node["spec"].get("taints") or []),
                {"key": f"example.com/w{i}", "effect": "NoSchedule"},
            ]
            guarded = {"metadata": {"resourceVersion": node["metadata"]["resourceVersion"]}}
            status, _ = writer_api.request(
                "PATCH",
                f"/api/v1/nodes/{name}",
                {**guarded, "spec": {"taints": taints}},
                content_type="application/merge-patch+json",
            )
            if status == 200:
                written.append(f"example.com/w{i}")
            i += 1

    thread = threading.Thread(target=writer)
    power_cut(cp, name)
    thread.start()
    try:
        first_seen(cp, name, has_oos, 20, "kickout")
        wait_for(lambda: len(written) >= 5, 10, what="writer progress after the kickout")
    finally:
        stop.set()
        thread.join(10)
        writer_api.close_all()
    keys = {t["key"] for t in cp.node(name)["spec"]["taints"]}
    assert set(written) <= keys, set(written) - keys
    assert OOS in keys
    assert healer.metric("asklepios_kickouts_total") == 1


@pytest.mark.both_releases
@pytest.mark.timeout(120)
def test_too_many_notready_holds_kickouts(control_plane: ControlPlane, nodes: Any, asklepios: AsklepiosFactory) -> None:
    cp = control_plane
    a, b, _c = nodes.watched("a", "b", "c")
    healer = asklepios(env(nodes.prefix, ASKLEPIOS_MAX_UNHEALTHY="1", ASKLEPIOS_KICKOUT_SECONDS="3"))
    power_cut(cp, a, "False")
    power_cut(cp, b, "Unknown")
    for name in (a, b):
        wait_value(lambda n=name: events(cp, "KickoutHeld", n), 15, f"KickoutHeld on {name}")  # type: ignore[misc]
    assert "too many NotReady" in events(cp, "KickoutHeld", a)[0]["message"]
    assert healer.metric("asklepios_kickouts_held_total", 'reason="too many NotReady"') == 2
    assert not has_oos(cp.node(a))
    assert not has_oos(cp.node(b))
    cp.restore(b)  # back to one NotReady: the guard lets the held kickout go
    first_seen(cp, a, has_oos, 10, "kickout once the guard lifts")
    assert not has_oos(cp.node(b))


@pytest.mark.timeout(120)
def test_excluded_skip_and_dry_run_write_nothing(
    control_plane: ControlPlane, nodes: Any, asklepios: AsklepiosFactory
) -> None:
    cp = control_plane
    skip = {"key": "node.kubernetes.io/asklepios", "value": "skip", "effect": "NoExecute"}
    excluded = nodes.add("ex", labels={SEL: nodes.prefix, "asklepios.io/exclude": "true"})
    skipped = nodes.add("sk", labels={SEL: nodes.prefix}, taints=[skip])
    dry = nodes.add("dr", labels={SEL: nodes.prefix})
    for i in range(3):
        nodes.add(f"ok{i}", labels={SEL: nodes.prefix})
    # kickout 5 s: longer than the lab's 4 s node Lease, so the Lease has run out at the deadline
    healer = asklepios(env(nodes.prefix, ASKLEPIOS_KICKOUT_SECONDS="5", ASKLEPIOS_DRY_RUN="true"))
    for name in (excluded, skipped, dry):
        power_cut(cp, name)
    assert wait_for(lambda: events(cp, "KickoutHeld", dry), 15, what="dry-run KickoutHeld")
    assert events(cp, "KickoutHeld", dry)[0]["message"].startswith("dry run: would kick out")
    healer.wait_log(lambda r: r.get("msg") == "kickout held" and r.get("node") == dry, 5, "dry-run log")
    # A negative claim needs an observation window: past every deadline plus two resyncs.
    observed_until = time.time() + OBSERVATION_WINDOW
    wait_for(lambda: time.time() >= observed_until, OBSERVATION_WINDOW + 1, what="observation window")
    assert healer.metric("asklepios_watched_nodes") == 6
    for name in (excluded, skipped, dry):
        node = cp.node(name)
        assert not has_oos(node)
        assert not node["spec"].get("unschedulable")
        assert not any(
            k.startswith("asklepios.io/") and k != "asklepios.io/exclude"
            for k in node["metadata"].get("annotations") or {}
        )
    assert healer.metric("asklepios_kickouts_total") == 0
    assert len(events(cp, "KickoutHeld", dry)) == 1  # once per hold, not per resync


@pytest.mark.timeout(120)
def test_kickin_waits_for_pods_stuck_terminating(
    control_plane: ControlPlane, nodes: Any, namespace: str, asklepios: AsklepiosFactory
) -> None:
    """A pod from before the kickout that is still Terminating (here: held by a finalizer)
    holds the kickin: removing the taint first would leave it stuck for good."""
    cp = control_plane
    name, *_ = nodes.watched("n", "m", "o")
    pod = {
        "metadata": {"name": "held", "finalizers": ["example.com/hold"]},
        "spec": {"nodeName": name, "containers": [{"name": "c", "image": "registry.local/x:1"}]},
    }
    cp.api.create(f"/api/v1/namespaces/{namespace}/pods", pod)
    healer = asklepios(env(nodes.prefix, ASKLEPIOS_KICKOUT_SECONDS="2", ASKLEPIOS_KICKIN_SECONDS="2"))
    cp.crash(name)  # kwok gone: nothing will finish the pod's deletion but us removing the finalizer
    first_seen(cp, name, has_oos, 30, "kickout")
    path = f"/api/v1/namespaces/{namespace}/pods/held"
    wait_for(lambda: "deletionTimestamp" in cp.api.get(path)["metadata"], 30, what="pod force-deleted")
    stop = threading.Event()

    def heartbeat() -> None:  # the node reports Ready while its kwok stays down
        while not stop.is_set():
            cp.set_ready(name, "True")
            stop.wait(1.0)

    beating = threading.Thread(target=heartbeat)
    beating.start()
    try:
        wait_for(lambda: healer.metric("asklepios_kickin_waiting_nodes") == 1, 20, what="kickin waiting (gauge)")
        assert has_oos(cp.node(name))
        [row] = [r for r in status_json(cp, nodes.prefix, ASKLEPIOS_KICKIN_SECONDS="2") if r["name"] == name]
        assert (row["state"], row["pods"]) == ("waiting for pods", [f"{namespace}/held"])
        cp.api.patch(path, {"metadata": {"finalizers": None}})
        cp.api.delete(path, grace_seconds=0)  # what the node's kubelet would do once back
        first_seen(cp, name, lambda n: not has_oos(n), 20, "kickin once the pod is gone")
        assert healer.metric("asklepios_kickin_waiting_nodes") == 0
        assert not events(cp, "KickinForced", name)
    finally:
        stop.set()
        beating.join(10)
    cp.restore(name)


@pytest.mark.timeout(120)
def test_a_pod_stuck_for_good_delays_kickin_at_most_the_pod_wait(
    control_plane: ControlPlane, nodes: Any, namespace: str, asklepios: AsklepiosFactory
) -> None:
    """Issue 12.2: a finalizer nobody removes must not keep a Ready node cordoned and tainted forever."""
    cp = control_plane
    name, *_ = nodes.watched("n", "m", "o")
    pod = {
        "metadata": {"name": "stuck", "finalizers": ["example.com/forever"]},
        "spec": {"nodeName": name, "containers": [{"name": "c", "image": "registry.local/x:1"}]},
    }
    path = f"/api/v1/namespaces/{namespace}/pods/stuck"
    cp.api.create(f"/api/v1/namespaces/{namespace}/pods", pod)
    wait = 4
    healer = asklepios(
        env(nodes.prefix, ASKLEPIOS_KICKOUT_SECONDS="2", ASKLEPIOS_KICKIN_SECONDS="2",
            ASKLEPIOS_KICKIN_POD_WAIT_SECONDS=str(wait))
    )  # fmt: skip
    stop = threading.Event()

    def heartbeat() -> None:  # Ready again, with kwok down (kwok would strip the finalizer itself)
        while not stop.is_set():
            cp.set_ready(name, "True")
            stop.wait(1.0)

    beating = threading.Thread(target=heartbeat)
    try:
        cp.crash(name)
        first_seen(cp, name, has_oos, 30, "kickout")
        wait_for(lambda: "deletionTimestamp" in cp.api.get(path)["metadata"], 30, what="pod Terminating")
        beating.start()
        up = wait_node(cp, name, lambda n: ready(n)["status"] == "True", 30, "Ready again")
        kickin_deadline = parse_time(ready(up)["lastTransitionTime"]) + 2
        seen, back = first_seen(cp, name, lambda n: not has_oos(n), 30, "forced kickin")
        assert kickin_deadline + wait - 0.1 <= seen <= kickin_deadline + wait + LATE, seen - kickin_deadline
        assert "deletionTimestamp" in cp.api.get(path)["metadata"]  # still there: the kickin did not wait for it
        assert not back["spec"].get("unschedulable")
        [forced] = wait_value(lambda: events(cp, "KickinForced", name), 10, "KickinForced")  # after the write
        assert forced["type"] == "Warning" and f"{namespace}/stuck" in forced["message"]
        assert healer.metric("asklepios_kickins_forced_total") == 1
    finally:
        stop.set()
        if beating.is_alive():
            beating.join(10)
        cp.api.patch(path, {"metadata": {"finalizers": None}})
        cp.restore(name)


def status_json(cp: ControlPlane, prefix: str, **settings: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "asklepios", "status", "-o", "json"],
        env={**os.environ, "KUBECONFIG": str(cp.kubeconfig), **env(prefix, **settings)},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


@pytest.mark.timeout(60)
def test_status_command_shows_countdowns(control_plane: ControlPlane, nodes: Any, asklepios: AsklepiosFactory) -> None:
    cp = control_plane
    down = nodes.add("down", labels={SEL: nodes.prefix})
    up = nodes.add("up", labels={SEL: nodes.prefix})
    excluded = nodes.add("ex", labels={SEL: nodes.prefix, "asklepios.io/exclude": "true"})
    cp.set_ready(down, "False")
    cp.set_ready(excluded, "False")
    done = subprocess.run(
        [sys.executable, "-m", "asklepios", "status", "-o", "json"],
        env={
            **os.environ,
            "KUBECONFIG": str(cp.kubeconfig),
            **env(nodes.prefix, ASKLEPIOS_KICKOUT_SECONDS="300"),
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert set(rows) == {down, up, excluded}
    assert rows[down]["state"] == "counting down"
    assert 290 <= rows[down]["seconds_to_next_action"] <= 300
    assert rows[up]["state"] == "ready"
    assert rows[excluded]["state"] == "excluded"
    assert rows[excluded]["reason"] == "label asklepios.io/exclude=true"


@pytest.mark.timeout(90)
def test_resync_repairs_a_taint_removed_while_the_node_is_down(
    control_plane: ControlPlane, nodes: Any, asklepios: AsklepiosFactory
) -> None:
    cp = control_plane
    name, *_ = nodes.watched("n", "m", "o")
    healer = asklepios(env(nodes.prefix, ASKLEPIOS_KICKOUT_SECONDS="2"))
    power_cut(cp, name)
    _, kicked = first_seen(cp, name, has_oos, 20, "kickout")
    others = [t for t in kicked["spec"]["taints"] if t["key"] != OOS]
    cp.api.patch(f"/api/v1/nodes/{name}", {"spec": {"taints": others or None, "unschedulable": None}})
    first_seen(cp, name, has_oos, 10, "taint re-applied")
    wait_node(cp, name, lambda n: n["spec"].get("unschedulable") is True, 10, "cordon re-applied")
    assert healer.metric("asklepios_repairs_total") >= 1
    assert healer.metric("asklepios_kickouts_total") == 1
