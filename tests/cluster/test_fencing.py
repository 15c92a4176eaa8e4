"""Fencing through a real Redfish BMC (sushy-tools' emulator), before the taint (issues 11 and 20).

The ordering "power Off confirmed, then the taint" is proven from the two systems'
own records: the emulator's notifications (the lab's BMC timeline) and the
apiserver's audit log of the patch that added the out-of-service taint. The BMC of a
node comes only from the Secret's `<node>.url` (`Bmc.inventory`): a node's own
`asklepios.io/bmc` annotation names nothing, and a row naming another machine's BMC
(its System UUID is not the node's systemUUID) is held before any ForceOff.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest

from asklepios_lab import Bmc, ControlPlane, audit, wait_for, workloads
from tests.cluster.checks import OOS, env, events, first_seen, has_oos, record_of, writes_by_asklepios
from tests.cluster.runner import AsklepiosFactory

SECRET = "bmc-credentials"


def fencing_env(prefix: str, namespace: str, **extra: str) -> dict[str, str]:
    return env(
        prefix,
        ASKLEPIOS_KICKOUT_SECONDS="3",
        ASKLEPIOS_FENCING="redfish",
        ASKLEPIOS_FENCING_SECRET=SECRET,
        ASKLEPIOS_NAMESPACE=namespace,
        **extra,
    )


def put_secret(cp: ControlPlane, namespace: str, data: dict[str, str]) -> None:
    body = {
        "metadata": {"name": SECRET},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }
    path = f"/api/v1/namespaces/{namespace}/secrets"
    if cp.api.get_or_none(f"{path}/{SECRET}") is None:
        cp.api.create(path, body)
    else:
        cp.api.patch(f"{path}/{SECRET}", {"data": body["data"]})


def annotate_bmc(cp: ControlPlane, node: str, url: str) -> None:
    """The annotation Asklepios once read, written by the node itself (its kubelet's identity under
    NodeRestriction); asserted first, so the test proves the threat is real: a node may write it."""
    cp.as_node(node).patch(f"/api/v1/nodes/{node}", {"metadata": {"annotations": {"asklepios.io/bmc": url}}})
    assert cp.node(node)["metadata"]["annotations"]["asklepios.io/bmc"] == url


def held_reasons(cp: ControlPlane, node: str) -> set[str]:
    """The reasons of the KickoutHeld Events on `node` (the message starts with the reason)."""
    return {e["message"].split(":")[0] for e in events(cp, "KickoutHeld", node)}


def resets(bmc: Bmc, node: str) -> list[str]:
    """The reset requests `node`'s system received, as the emulator notified them."""
    return [r.value for r in bmc.timeline(node) if r.kind == "reset"]


def tainted_by_asklepios(cp: ControlPlane, node: str) -> dict[str, Any] | None:
    """Asklepios' (successful) patch that added the out-of-service taint, as the apiserver recorded it."""
    for event in writes_by_asklepios(cp, "patch", "nodes"):
        taints = ((event.get("requestObject") or {}).get("spec") or {}).get("taints") or []
        ok = event.get("responseStatus", {}).get("code") == 200
        if ok and event["objectRef"].get("name") == node and any(t.get("key") == OOS for t in taints):
            return event
    return None


def taint_patch(cp: ControlPlane, node: str) -> dict[str, Any]:
    event = tainted_by_asklepios(cp, node)
    assert event is not None, f"no audited patch added the taint to {node}"
    return event


@pytest.mark.timeout(240)
def test_partitioned_node_is_fenced_then_tainted_then_powered_on_and_kicked_in(
    control_plane: ControlPlane, nodes: Any, namespace: str, asklepios: AsklepiosFactory
) -> None:
    cp = control_plane
    bmc = cp.bmc()
    names = nodes.watched("n", "m", "o", control_plane=True)
    put_secret(cp, namespace, bmc.inventory(names))
    workloads.create(cp, namespace, workloads.statefulset("db", "db"))
    before = workloads.wait_all_running(cp, namespace, "db", 3)
    victim = names[2]
    healer = asklepios(fencing_env(nodes.prefix, namespace))
    cp.partition(victim)  # alive, cut off: the probe alone would hold it forever; fencing ends it
    seen, kicked = first_seen(cp, victim, has_oos, 60, "kickout after fencing")
    assert '"fenced":true' in kicked["metadata"]["annotations"]["asklepios.io/kickout"]
    timeline = bmc.timeline(victim)
    [force_off] = [r for r in timeline if r.kind == "reset" and r.value == "Off"]
    [off] = [r for r in timeline if r.kind == "power" and r.value == "Off"]
    tainted_at = audit.when(taint_patch(cp, victim))
    assert force_off.time < off.time <= tainted_at <= seen + 0.05, (force_off, off, tainted_at, seen)
    assert not cp.answers(victim)  # the BMC's power Off really stopped the node

    survivors = set(names) - {victim}

    def on_survivors() -> bool:
        where = workloads.placement(cp, namespace, "db")
        return len(where) == 3 and set(where.values()) <= survivors

    wait_for(on_survivors, 60, what="db Running on the survivors")
    assert victim in before.values()
    wait_for(lambda: events(cp, "PodsReleased", victim), 30, what="PodsReleased")
    wait_for(lambda: any(r.kind == "power" and r.value == "On" for r in bmc.timeline(victim)), 60, what="power on")
    first_seen(cp, victim, lambda n: not has_oos(n), 60, "kickin after the node booted")
    assert healer.metric("asklepios_fencing_total", 'action="off",result="ok"') == 1
    assert healer.metric("asklepios_fencing_total", 'action="on",result="ok"') == 1
    assert healer.metric("asklepios_fencing_seconds_count") == 1


@pytest.mark.timeout(240)
def test_fencing_failures_leave_no_taint_and_clear_once_fixed(
    control_plane: ControlPlane, nodes: Any, namespace: str, asklepios: AsklepiosFactory
) -> None:
    cp = control_plane
    bmc = cp.bmc()
    wrong, unreachable, missing, *_ = nodes.watched("wrong", "unreachable", "missing", "ok1", "ok2", "ok3")
    annotate_bmc(cp, missing, bmc.attach(missing))  # its own BMC, but only in the annotation: not read
    inventory = {
        **bmc.inventory([wrong]),
        f"{wrong}.password": "not-the-password",
        f"{unreachable}.url": "https://127.0.0.1:1/redfish/v1/Systems/nowhere",  # nothing listens there
    }
    put_secret(cp, namespace, inventory)
    healer = asklepios(fencing_env(nodes.prefix, namespace, ASKLEPIOS_MAX_UNHEALTHY="100%"))
    broken = (wrong, unreachable, missing)
    for name in broken:
        cp.crash(name)
    for name in (wrong, unreachable):
        wait_for(lambda n=name: events(cp, "FencingFailed", n), 60, what=f"FencingFailed on {name}")  # type: ignore[misc]
    wait_for(lambda: "no BMC" in held_reasons(cp, missing), 60, what=f"{missing} held: no BMC")
    assert "401" in events(cp, "FencingFailed", wrong)[0]["message"]
    [no_bmc] = [e["message"] for e in events(cp, "KickoutHeld", missing) if e["message"].startswith("no BMC")]
    assert no_bmc.startswith(f"no BMC: Secret {namespace}/{SECRET} has no key {missing}.url"), no_bmc
    assert resets(bmc, missing) == []  # the BMC its annotation names was never asked to do anything
    for name, reason in ((wrong, "fencing failed"), (unreachable, "fencing failed"), (missing, "no BMC")):
        wait_for(lambda n=name, r=reason: r in held_reasons(cp, n), 30, what=f"{name} held: {reason}")  # type: ignore[misc]
    assert healer.metric("asklepios_fencing_total", 'action="off",result="failed"') >= 2
    assert not any(has_oos(cp.node(n)) for n in broken)
    assert not [e for e in writes_by_asklepios(cp, "patch", "nodes") if e["objectRef"].get("name") in broken
                and "taints" in str(e.get("requestObject"))]  # fmt: skip

    put_secret(cp, namespace, {f"{wrong}.password": bmc.password, **bmc.inventory([unreachable, missing])})  # fixed

    def kicked_out() -> set[str]:  # from the audit log: a fenced node is soon powered on and kicked in again
        tainted = {n for n in broken if tainted_by_asklepios(cp, n)}
        return tainted if tainted == set(broken) else set()

    wait_for(kicked_out, 120, what="all three kicked out once fixed (backoff capped at 60 s)")
    for name in broken:
        assert any(r.kind == "power" and r.value == "Off" for r in bmc.timeline(name)), name


@pytest.mark.timeout(240)
def test_a_row_naming_another_machines_bmc_is_held_and_a_byte_swapped_uuid_is_the_same_machine(
    control_plane: ControlPlane, nodes: Any, namespace: str, asklepios: AsklepiosFactory
) -> None:
    cp = control_plane
    bmc = cp.bmc()
    misfiled, neighbour, swapped, *_ = nodes.watched("misfiled", "neighbour", "swapped", "ok1", "ok2")
    bmc.attach(misfiled)  # misfiled runs on a machine of its own ...
    bmc.attach(swapped, swapped=True)  # swapped reports its UUID in SMBIOS byte order
    inventory = bmc.inventory([neighbour, swapped])
    inventory[f"{misfiled}.url"] = inventory[f"{neighbour}.url"]  # ... but its row names the neighbour's BMC
    put_secret(cp, namespace, inventory)
    assert cp.node(misfiled)["status"]["nodeInfo"]["systemUUID"] == bmc.system_uuid(misfiled)
    assert cp.node(swapped)["status"]["nodeInfo"]["systemUUID"] != bmc.system_uuid(swapped)
    healer = asklepios(fencing_env(nodes.prefix, namespace, ASKLEPIOS_MAX_UNHEALTHY="100%"))
    cp.crash(misfiled)
    cp.crash(swapped)

    wait_for(lambda: "BMC mismatch" in held_reasons(cp, misfiled), 90, what="misfiled held: BMC mismatch")
    [held] = [e["message"] for e in events(cp, "KickoutHeld", misfiled) if e["message"].startswith("BMC mismatch")]
    assert f"reports System UUID {bmc.system_uuid(neighbour)}, but {misfiled} reports systemUUID" in held
    assert f"{misfiled}.url in the fencing Secret names another machine" in held
    first_seen(cp, swapped, has_oos, 90, "swapped fenced and kicked out")
    assert resets(bmc, swapped)[:1] == ["Off"]

    def retried() -> bool:  # misfiled's fencing was tried again (1 failure for it, then more), still no ForceOff
        return healer.metric("asklepios_fencing_total", 'action="off",result="failed"') >= 3

    wait_for(retried, 60, what="fencing of misfiled retried")
    assert resets(bmc, neighbour) == [] and bmc.power_state(neighbour) == "On"  # never a ForceOff
    assert cp.ready_status(neighbour) == "True" and cp.answers(neighbour)
    assert not has_oos(cp.node(misfiled)) and tainted_by_asklepios(cp, misfiled) is None
    assert held_reasons(cp, misfiled) <= {"kubelet alive", "BMC mismatch"}  # until silent, then the mismatch


@pytest.mark.timeout(240)
def test_a_node_pointing_its_annotation_at_another_machine_is_fenced_through_its_own_row(
    control_plane: ControlPlane, nodes: Any, namespace: str, asklepios: AsklepiosFactory
) -> None:
    cp = control_plane
    bmc = cp.bmc()
    liar, target, *_ = nodes.watched("liar", "target", "ok1", "ok2")
    put_secret(cp, namespace, bmc.inventory([liar, target]))
    annotate_bmc(cp, liar, bmc.system_url(target))  # the threat: a node steering its own fencing
    assert cp.node(liar)["metadata"]["annotations"]["asklepios.io/bmc"] == bmc.system_url(target)
    healer = asklepios(fencing_env(nodes.prefix, namespace))
    cp.crash(liar)  # then it goes silent
    first_seen(cp, liar, has_oos, 90, "the liar fenced and kicked out")
    assert resets(bmc, liar)[:1] == ["Off"]  # fenced through the Secret's row, its own machine
    assert resets(bmc, target) == [] and bmc.power_state(target) == "On"
    assert cp.ready_status(target) == "True" and cp.answers(target)
    assert healer.metric("asklepios_fencing_total", 'action="off",result="ok"') == 1


def finalized_pod(cp: ControlPlane, namespace: str, node: str, name: str = "held") -> str:
    """A pod bound to `node` that a finalizer keeps, once deleted, until the test lets it go."""
    pod = {
        "metadata": {"name": name, "finalizers": ["example.com/held"]},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "registry.local/x:1"}]},
    }
    cp.api.create(f"/api/v1/namespaces/{namespace}/pods", pod)
    return f"/api/v1/namespaces/{namespace}/pods/{name}"


def let_go(cp: ControlPlane, path: str) -> None:
    """Remove the test's finalizer; a pod already gone is fine (a restored node's kwok
    confirms termination and empties finalizers, unlike a real kubelet)."""
    status, body = cp.api.request("PATCH", path, {"metadata": {"finalizers": None}},
                                  content_type="application/merge-patch+json")  # fmt: skip
    assert status in (200, 404), (status, body)


@pytest.mark.timeout(180)
def test_a_machine_an_admin_powered_off_is_never_switched_on(
    control_plane: ControlPlane, nodes: Any, namespace: str, asklepios: AsklepiosFactory
) -> None:
    """Issue 19.4: the BMC already reads Off (hardware work): tainted, recorded found off, left Off."""
    cp = control_plane
    bmc = cp.bmc()
    names = nodes.watched("n", "m", "o", control_plane=True)
    put_secret(cp, namespace, bmc.inventory(names))
    victim = names[0]
    asklepios(fencing_env(nodes.prefix, namespace))
    bmc.reset(victim, "ForceOff")  # the admin's own power-off: the machine stops (its port goes silent)
    wait_for(lambda: bmc.power_state(victim) == "Off", 30, what="the admin's power-off applied")
    first_seen(cp, victim, has_oos, 60, "kickout of the machine found Off")
    wait_for(lambda: events(cp, "PodsReleased", victim), 30, what="PodsReleased")
    wait_for(lambda: events(cp, "NodeKickedOut", victim), 10, what="NodeKickedOut")
    record = record_of(cp, victim, namespace)
    assert record is not None
    assert record["kickout"].get("found_off") is True and not record["kickout"].get("fenced"), record
    deadline = time.time() + 15  # a power-on would follow the release at once
    while time.time() < deadline:
        assert bmc.power_state(victim) == "Off"
        time.sleep(1.0)
    assert resets(bmc, victim) == ["Off"]  # the admin's; Asklepios sent neither ForceOff nor On


@pytest.mark.timeout(180)
def test_an_excluded_node_is_never_powered_on(
    control_plane: ControlPlane, nodes: Any, namespace: str, asklepios: AsklepiosFactory
) -> None:
    cp = control_plane
    bmc = cp.bmc()
    names = nodes.watched("n", "m", "o", control_plane=True)
    put_secret(cp, namespace, bmc.inventory(names))
    victim = names[1]
    held = finalized_pod(cp, namespace, victim)
    wait_for(lambda: cp.api.get(held)["status"].get("phase") == "Running", 30, what="the held pod Running")
    asklepios(fencing_env(nodes.prefix, namespace, ASKLEPIOS_FORCE_DELETE="false"))
    cp.crash(victim)
    first_seen(cp, victim, has_oos, 60, "fenced and kicked out")
    assert resets(bmc, victim) == ["Off"]  # Asklepios' ForceOff
    cp.api.patch(f"/api/v1/nodes/{victim}", {"metadata": {"labels": {"asklepios.io/exclude": "true"}}})
    wait_for(lambda: "deletionTimestamp" in cp.api.get(held)["metadata"], 60, what="the pod Terminating")
    let_go(cp, held)  # the last pod from before the kickout is gone: a power-on would be due now
    wait_for(lambda: events(cp, "PodsReleased", victim), 30, what="PodsReleased")
    deadline = time.time() + 15
    while time.time() < deadline:
        assert bmc.power_state(victim) == "Off"
        time.sleep(1.0)
    assert resets(bmc, victim) == ["Off"]


@pytest.mark.timeout(180)
def test_a_pod_held_by_a_finalizer_delays_power_on_at_most_the_pod_wait(
    control_plane: ControlPlane, nodes: Any, namespace: str, asklepios: AsklepiosFactory
) -> None:
    cp = control_plane
    bmc = cp.bmc()
    names = nodes.watched("n", "m", "o", control_plane=True)
    put_secret(cp, namespace, bmc.inventory(names))
    victim = names[2]
    held = finalized_pod(cp, namespace, victim)
    wait_for(lambda: cp.api.get(held)["status"].get("phase") == "Running", 30, what="the held pod Running")
    wait = 8
    asklepios(fencing_env(nodes.prefix, namespace, ASKLEPIOS_KICKIN_POD_WAIT_SECONDS=str(wait)))
    try:
        cp.crash(victim)
        seen, _ = first_seen(cp, victim, has_oos, 60, "fenced and kicked out")
        [forced] = wait_for(lambda: events(cp, "PowerOnForced", victim), 60, what="PowerOnForced")
        assert forced["type"] == "Warning" and f"{namespace}/held" in forced["message"], forced["message"]
        wait_for(lambda: bmc.power_state(victim) == "On", 60, what="the machine On again")
        on = [r for r in bmc.timeline(victim) if r.kind == "reset" and r.value == "On"]
        assert on and on[0].time >= seen + wait - 1.5, (on, seen)  # not before the pod wait ran out
        # Powered on all the same, and the pod was only ever deleted, never stripped of its
        # finalizer by Asklepios (the audit log; the restored node's kwok removes it soon after).
        writes = writes_by_asklepios(cp, resource="pods", namespace=namespace)
        assert all(e["verb"] == "delete" for e in writes), [(e["verb"], e["objectRef"]) for e in writes]
    finally:
        let_go(cp, held)
