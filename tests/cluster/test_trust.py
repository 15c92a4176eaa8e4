"""A node's own identity cannot steer Asklepios (issue 20), on the real control plane.

The writes come from `cp.as_node(name)`: user `system:node:<name>`, group
`system:nodes`, judged by the apiserver's Node authorizer and NodeRestriction, as a
compromised kubelet would be. Claims are read from the apiserver (nodes, Events, the
audit log of Asklepios' own identity, its records ConfigMap), never from its logs.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from asklepios_lab import ControlPlane
from tests.cluster.checks import OOS, env, first_seen, has_oos, parse_time, wait_node, writes_by_asklepios
from tests.cluster.runner import AsklepiosFactory, wait_value

KICKOUT, KICKIN = 3, 3
KICKOUT_ANNOTATION = "asklepios.io/kickout"
RECORDS = "/api/v1/namespaces/kube-system/configmaps/asklepios-records"


def quarantine(cp: ControlPlane, name: str) -> None:
    """An admin's own quarantine: cordon and the out-of-service taint, by hand."""
    taints = [
        *(cp.node(name)["spec"].get("taints") or []),
        {"key": OOS, "value": "nodeshutdown", "effect": "NoExecute"},
    ]
    cp.api.patch(f"/api/v1/nodes/{name}", {"spec": {"unschedulable": True, "taints": taints}})


def spec_writes(cp: ControlPlane, name: str) -> list[Any]:
    return [
        w
        for w in writes_by_asklepios(cp, "patch", "nodes")
        if w["objectRef"].get("name") == name and "spec" in (w.get("requestObject") or {})
    ]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("forged", ['{"at":"2026-01-01T00:00:00Z","cordoned":true,"tainted":true}', "{not json"])
def test_a_forged_or_damaged_record_never_lifts_an_admins_quarantine(
    control_plane: ControlPlane, nodes: Any, asklepios: AsklepiosFactory, forged: str
) -> None:
    cp = control_plane
    names = nodes.watched("n", "m", "o", control_plane=True)
    victim = names[0]
    quarantine(cp, victim)
    node = cp.as_node(victim)
    # the threat is real: the node's own identity may rewrite its own annotations
    node.patch(f"/api/v1/nodes/{victim}", {"metadata": {"annotations": {KICKOUT_ANNOTATION: forged}}})
    assert cp.node(victim)["metadata"]["annotations"][KICKOUT_ANNOTATION] == forged
    asklepios(env(nodes.prefix, ASKLEPIOS_KICKOUT_SECONDS=str(KICKOUT), ASKLEPIOS_KICKIN_SECONDS=str(KICKIN)))
    # Asklepios rewrites the mirror from its own record, which has nothing: the forgery goes
    wait_value(
        lambda: KICKOUT_ANNOTATION not in (cp.node(victim)["metadata"].get("annotations") or {}), 20, "mirror removed"
    )
    deadline = time.time() + 3 * KICKIN + 4
    while time.time() < deadline:  # the node is Ready all along: a kickin would come within KICKIN + resync
        spec = cp.node(victim)["spec"]
        assert spec.get("unschedulable") and has_oos(cp.node(victim)), "the admin's quarantine was lifted"
        time.sleep(0.1)
    assert spec_writes(cp, victim) == []


@pytest.mark.timeout(120)
def test_a_hostile_annotation_neither_stops_nor_slows_asklepios(
    control_plane: ControlPlane, nodes: Any, asklepios: AsklepiosFactory
) -> None:
    cp = control_plane
    names = nodes.watched("n", "m", "o", control_plane=True)
    hostile, victim = names[0], names[1]
    healer = asklepios(env(nodes.prefix, ASKLEPIOS_KICKOUT_SECONDS=str(KICKOUT)))
    cp.as_node(hostile).patch(
        f"/api/v1/nodes/{hostile}", {"metadata": {"annotations": {KICKOUT_ANNOTATION: "[" * 100_000}}}
    )
    cp.crash(victim)
    seen, _ = first_seen(cp, victim, has_oos, 40, "the other node's kickout")
    assert healer.http("/healthz")[0] == 200
    query = {"fieldSelector": f"involvedObject.name={victim},reason=NodeKickedOut"}
    wait_value(lambda: cp.api.get("/api/v1/namespaces/default/events", query=query)["items"], 10, "NodeKickedOut")
    records = orjson.loads(cp.api.get(RECORDS)["data"][f"node.{victim}"])
    start = parse_time(records["kickout"]["since"])
    assert seen - (start + KICKOUT) < 1.5 + 4  # at its deadline (the Lease watched for its 4 s at most)
    assert healer.metric("asklepios_kickouts_total") == 1


@pytest.mark.timeout(150)
def test_a_kickout_survives_a_restart_and_is_kicked_in(
    control_plane: ControlPlane, nodes: Any, asklepios: AsklepiosFactory
) -> None:
    """The record lives in Asklepios' ConfigMap: a new process kicks in what the old one kicked out."""
    cp = control_plane
    names = nodes.watched("n", "m", "o", control_plane=True)
    victim = names[2]
    settings = env(nodes.prefix, ASKLEPIOS_KICKOUT_SECONDS=str(KICKOUT), ASKLEPIOS_KICKIN_SECONDS=str(KICKIN))
    first = asklepios(settings)
    cp.crash(victim)
    first_seen(cp, victim, has_oos, 40, "kickout")
    record = orjson.loads(cp.api.get(RECORDS)["data"][f"node.{victim}"])
    assert record["kickout"]["cordoned"] and record["kickout"]["tainted"]
    first.kill()
    cp.restore(victim)
    asklepios(settings)
    node = wait_node(cp, victim, lambda n: not has_oos(n), 60, "kickin after the restart")
    assert not node["spec"].get("unschedulable")
    assert KICKOUT_ANNOTATION not in (node["metadata"].get("annotations") or {})

    def record_without_kickout() -> dict[str, Any] | None:
        after: dict[str, Any] = orjson.loads(cp.api.get(RECORDS)["data"].get(f"node.{victim}", "{}"))
        return after if "kickout" not in after else None

    # The node is undone first, then the record (its proof) is cleared: wait for the second write.
    after = wait_value(record_without_kickout, 10, "the kickout record cleared after the kickin")
    assert after.get("kickouts")  # the flap history stays
