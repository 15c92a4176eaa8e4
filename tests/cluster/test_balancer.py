"""The balancer on the real control plane: doubled-up StatefulSet pods are spread back.

Safety claims (never below a PDB's minAvailable, at most one pod per StatefulSet in
flight) are checked against the test's own pod watch, event by event.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import orjson
import pytest

from asklepios_lab import ControlPlane, workloads
from tests.cluster.checks import SEL, env, first_seen, has_oos, parse_time, writes_by_asklepios
from tests.cluster.conftest import UNDER_TEST_USER
from tests.cluster.podwatch import PodWatch
from tests.cluster.runner import AsklepiosFactory, wait_value

SEED = ("mariadb-server", "rabbitmq-rabbitmq")


def balancer_env(prefix: str, namespace: str, **extra: str) -> dict[str, str]:
    return env(
        prefix,
        ASKLEPIOS_BALANCER="true",
        ASKLEPIOS_BALANCER_SELECTOR="application in (mariadb,rabbitmq,app-a,app-b,app-c)",
        ASKLEPIOS_BALANCER_NAMESPACES=namespace,
        **extra,
    )


def pdb(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": name}}, **spec},
    }


def one_per_node(cp: ControlPlane, namespace: str, sts: str, node_names: list[str]) -> dict[str, str] | None:
    where = workloads.placement(cp, namespace, sts)
    return where if len(where) == 3 and sorted(where.values()) == sorted(node_names) else None


def assert_safe_moves(watch: PodWatch, since: float, apps: dict[str, int], replicas: int = 3) -> None:
    """After `since`: each app keeps >= its minimum Ready, and has at most one pod in flight."""
    for snapshot in watch.replay()[1:]:
        latest = max(e.at for e in snapshot.values()) if snapshot else 0
        if latest < since:
            continue
        ready = Counter(e.app for e in snapshot.values() if e.ready and not e.deleting)
        for app, minimum in apps.items():
            assert ready[app] >= minimum, (app, ready[app], snapshot)
            assert replicas - ready[app] <= 1, (app, "more than one pod in flight", snapshot)


@pytest.mark.both_releases
@pytest.mark.timeout(300)
def test_seed_story_ends_balanced_within_pdbs(
    control_plane: ControlPlane, nodes: Any, namespace: str, asklepios: AsklepiosFactory
) -> None:
    cp = control_plane
    names = nodes.watched("control1", "control2", "control3", control_plane=True)
    with PodWatch(cp, namespace) as watch:
        for sts in SEED:
            workloads.create(cp, namespace, workloads.statefulset(sts, sts.split("-")[0]))
            workloads.create(cp, namespace, pdb(sts, minAvailable=2))
        for sts in SEED:
            workloads.wait_all_running(cp, namespace, sts, 3)
        healer = asklepios(balancer_env(nodes.prefix, namespace))
        victim = names[1]
        cp.crash(victim)
        first_seen(cp, victim, has_oos, 30, "kickout")
        survivors = [names[0], names[2]]
        for sts in SEED:
            wait_value(
                lambda s=sts: (
                    (w := workloads.placement(cp, namespace, s)) and len(w) == 3 and set(w.values()) <= set(survivors)
                ),  # type: ignore[misc]
                90,
                f"{sts} on the survivors",
            )
        cp.restore(victim)
        kicked_in, _ = first_seen(cp, victim, lambda n: not has_oos(n), 30, "kickin")
        for sts in SEED:
            wait_value(lambda s=sts: one_per_node(cp, namespace, s, names), 90, f"{sts} one per node")  # type: ignore[misc]
        # a move counts once the replacement runs where it should: the next round checks that
        wait_value(lambda: healer.metric("asklepios_rebalanced_pods_total") == 2, 10, "both moves confirmed")
        assert_safe_moves(watch, kicked_in, {sts: 2 for sts in SEED})
    for sts in SEED:
        [event] = cp.api.get(
            f"/api/v1/namespaces/{namespace}/events",
            query={"fieldSelector": f"involvedObject.name={sts},reason=PodRebalanced"},
        )["items"]
        assert f"to {victim} (target {victim})" in event["message"]  # where the pod really went


@pytest.mark.timeout(240)
def test_unfit_blocked_and_unselected_pods_stay(
    control_plane: ControlPlane, nodes: Any, namespace: str, asklepios: AsklepiosFactory
) -> None:
    cp = control_plane
    a = nodes.add("a", labels={SEL: nodes.prefix, "disk": "ssd"})
    b = nodes.add("b", labels={SEL: nodes.prefix, "disk": "ssd"})
    c = nodes.add("c", labels={SEL: nodes.prefix})
    cp.api.patch(f"/api/v1/nodes/{c}", {"spec": {"unschedulable": True}})  # everything doubles up on a, b
    specs = {
        "pinned": workloads.statefulset("pinned", "app-a", node_selector={"disk": "ssd"}),
        "guarded": workloads.statefulset("guarded", "app-b"),
        "ignored": workloads.statefulset("ignored", "other"),  # not matched by the selector
    }
    for obj in specs.values():
        workloads.create(cp, namespace, obj)
    workloads.create(cp, namespace, pdb("guarded", maxUnavailable=0))
    for sts in specs:
        workloads.wait_all_running(cp, namespace, sts, 3)
    ignored_before = {p["metadata"]["uid"] for p in workloads.pods(cp, namespace, "ignored")}
    healer = asklepios(balancer_env(nodes.prefix, namespace))
    cp.api.patch(f"/api/v1/nodes/{c}", {"spec": {"unschedulable": None}})

    def refused() -> bool:  # the apiserver's own record: Asklepios' eviction answered 429 by the PDB
        return any(
            e["objectRef"].get("subresource") == "eviction"
            and e["objectRef"].get("name", "").startswith("guarded-")
            and e.get("responseStatus", {}).get("code") == 429
            for e in writes_by_asklepios(cp, "create", "pods", namespace)
        )

    wait_value(refused, 30, "eviction refused by the PDB")
    assert set(workloads.placement(cp, namespace, "guarded").values()) == {a, b}
    cp.api.patch(
        f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/guarded",
        {"spec": {"maxUnavailable": 1}},
    )
    wait_value(lambda: one_per_node(cp, namespace, "guarded", [a, b, c]), 60, "guarded moves once the PDB allows")
    assert set(workloads.placement(cp, namespace, "pinned").values()) == {a, b}  # cannot fit on c
    assert {p["metadata"]["uid"] for p in workloads.pods(cp, namespace, "ignored")} == ignored_before
    wait_value(lambda: healer.metric("asklepios_rebalanced_pods_total") == 1, 10, "the move confirmed")


@pytest.mark.timeout(300)
def test_three_statefulsets_converge_one_move_at_a_time(
    control_plane: ControlPlane, nodes: Any, namespace: str, asklepios: AsklepiosFactory
) -> None:
    cp = control_plane
    names = nodes.watched("a", "b", "c")
    cp.api.patch(f"/api/v1/nodes/{names[2]}", {"spec": {"unschedulable": True}})
    apps = {"sts-a": "app-a", "sts-b": "app-b", "sts-c": "app-c"}
    with PodWatch(cp, namespace) as watch:
        for sts, app in apps.items():
            workloads.create(cp, namespace, workloads.statefulset(sts, app))
        for sts in apps:
            where = workloads.wait_all_running(cp, namespace, sts, 3)
            assert set(where.values()) == set(names[:2])  # doubled up on two nodes
        healer = asklepios(balancer_env(nodes.prefix, namespace))
        start = time.time()
        cp.api.patch(f"/api/v1/nodes/{names[2]}", {"spec": {"unschedulable": None}})
        for sts in apps:
            wait_value(lambda s=sts: one_per_node(cp, namespace, s, names), 120, f"{sts} one per node")  # type: ignore[misc]
        assert_safe_moves(watch, float(start), {sts: 2 for sts in apps})
    wait_value(lambda: healer.metric("asklepios_rebalanced_pods_total") == 3, 10, "the moves confirmed")


@pytest.mark.both_releases
@pytest.mark.timeout(180)
def test_a_pdb_that_never_allows_gets_few_evictions_and_one_event(
    control_plane: ControlPlane, nodes: Any, namespace: str, asklepios: AsklepiosFactory
) -> None:
    """Issue 22: refused evictions back off and stop after 5 (REFUSALS_BEFORE_GIVING_UP), with one
    RebalanceFailed, and stay stopped across a restart (the count is in the record ConfigMap)."""
    cp = control_plane
    names = nodes.watched("a", "b", "c")
    cp.api.patch(f"/api/v1/nodes/{names[2]}", {"spec": {"unschedulable": True}})
    workloads.create(cp, namespace, workloads.statefulset("stuck", "app-b"))
    workloads.create(cp, namespace, pdb("stuck", maxUnavailable=0))
    workloads.wait_all_running(cp, namespace, "stuck", 3)
    settings = balancer_env(nodes.prefix, namespace, ASKLEPIOS_RESYNC_SECONDS="1", ASKLEPIOS_NAMESPACE=namespace)
    healer = asklepios(settings)
    cp.api.patch(f"/api/v1/nodes/{names[2]}", {"spec": {"unschedulable": None}})

    def evictions() -> list[dict[str, Any]]:  # the apiserver's own record of Asklepios' eviction requests
        return [
            e
            for e in writes_by_asklepios(cp, "create", "pods", namespace)
            if e["objectRef"].get("subresource") == "eviction"
        ]

    def rebalance_failed() -> list[dict[str, Any]]:
        query = {"fieldSelector": "involvedObject.kind=StatefulSet,involvedObject.name=stuck,reason=RebalanceFailed"}
        items: list[dict[str, Any]] = cp.api.get(f"/api/v1/namespaces/{namespace}/events", query=query)["items"]
        return items

    [event] = wait_value(rebalance_failed, 60, "RebalanceFailed on the StatefulSet")
    assert event["type"] == "Warning" and "refused 5 times in a row" in event["message"], event
    refused = evictions()
    assert len(refused) == 5 and {e["responseStatus"]["code"] for e in refused} == {429}, refused
    first, last = (parse_time(refused[i]["requestReceivedTimestamp"]) for i in (0, -1))
    assert last - first >= 0.5 + 1 + 2 + 4, "the refusals backed off (1, 2, 4, 8 s, jittered over the upper half)"
    record = cp.api.get(f"/api/v1/namespaces/{namespace}/configmaps/asklepios-balancer")["data"]
    kept = orjson.loads(record[f"{namespace}.stuck"])
    assert kept["refusals"] == 5 and kept["gave_up"] is not None, kept

    gave_up = parse_time(event["firstTimestamp"]) if event.get("firstTimestamp") else time.time()

    def budget_checks(after: float) -> int:  # left alone, the balancer only compares the PDBs (every 6 s)
        return sum(
            1
            for e in cp.audit(UNDER_TEST_USER)
            if e["verb"] == "list"
            and (e.get("objectRef") or {}).get("resource") == "poddisruptionbudgets"
            and (e.get("objectRef") or {}).get("namespace") == namespace
            and parse_time(e["requestReceivedTimestamp"]) > after
        )

    wait_value(lambda: budget_checks(gave_up) >= 2, 30, "two comparisons of the PDBs after giving up")
    assert len(evictions()) == 5  # rounds ran for 6 s and more: no eviction
    healer.stop()
    restarted = time.time()
    again = asklepios(settings)  # a new process, as a new leader: it reads the record
    again.wait_log(lambda line: line.get("msg") == "balancer record read", 20, "the record read")
    wait_value(lambda: budget_checks(restarted) >= 2, 30, "the new process compares the PDBs, twice")
    assert len(evictions()) == 5
    [event] = rebalance_failed()
    assert event.get("count", 1) == 1 and event.get("series") is None, event
    assert set(workloads.placement(cp, namespace, "stuck").values()) == set(names[:2])  # never moved
