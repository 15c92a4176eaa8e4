"""The soak's invariant checkers: each catches a planted violation and passes a clean history.

Histories are built by hand from the records a soak keeps (audit writes, watch events,
the lab's physics log, the fault log), so every checker is tested as the pure
function it is, without a cluster.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs

from bench.soak.faults import WEIGHTS, plan
from bench.soak.invariants import (
    CheckResult,
    check_foreign_state_kept,
    check_guard,
    check_kickin,
    check_leader_only,
    check_no_power_off_of_renewing_kubelet,
    check_no_taint_on_live_node,
    check_one_kickout_per_period,
    check_pods_recover,
    check_processes,
    check_settled,
    extended_due,
    union,
)
from bench.soak.model import (
    AuditWrite,
    BmcEvent,
    History,
    Incarnation,
    Interval,
    LeaseVersion,
    NodeVersion,
    Params,
    Physics,
    PodVersion,
    Taint,
    audit_writes,
)

OOS = {"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown", "effect": "NoExecute"}
FOREIGN = {"key": "example.com/admin-1", "value": "soak", "effect": "NoSchedule"}
NODES = ("n1", "n2", "n3", "n4", "n5")
USER = "asklepios-soak-0"
PARAMS = Params(
    watched=NODES,
    max_unhealthy=2,
    kickout=10,
    kickin=10,
    grace=5,
    renew_deadline=3,
    pod_wait=30,
    statefulsets=(("db", 1),),
)
ME = Incarnation(0, "a", USER, "soak-0", 100, started=0.0)
OTHER = Incarnation(1, "b", "asklepios-soak-1", "soak-1", 101, started=0.0)
LEADING = tuple(LeaseVersion(t, "asklepios", "soak-0_100", renew=t, acquire=0.0, duration=4) for t in range(1001))


def history(**parts: Sequence[Any]) -> History:
    fields: dict[str, Any] = {
        "nodes": (),
        "pods": (),
        "node_leases": (),
        "election": LEADING,
        "writes": (),
        "physics": (),
        "bmc": (),
        "faults": (),
        "incarnations": (ME, OTHER),
    }
    fields.update({k: tuple(v) for k, v in parts.items()})
    return History(params=PARAMS, start=0.0, end=1000.0, **fields)


def node(
    t: float,
    name: str,
    rv: str,
    ready: str = "True",
    *,
    taints: Sequence[dict[str, str]] = (),
    unschedulable: bool = False,
    kickout: dict[str, Any] | None = None,
) -> NodeVersion:
    return NodeVersion(
        t=t,
        name=name,
        rv=rv,
        ready=ready,
        unschedulable=unschedulable,
        taints=tuple(Taint.of(x) for x in taints),
        kickout=None if kickout is None else json.dumps(kickout),
    )


def patch(t: float, name: str, rv: str, *, spec: dict[str, Any] | None = None, **annotations: Any) -> AuditWrite:
    meta: dict[str, Any] = {"resourceVersion": rv}
    if annotations:
        meta["annotations"] = {k.replace("_", "/", 1).replace("asklepios/", "asklepios.io/"): v
                               for k, v in annotations.items()}  # fmt: skip
    body: dict[str, Any] = {"metadata": meta, **({"spec": spec} if spec is not None else {})}
    return AuditWrite(t=t, user=USER, verb="patch", resource="nodes", subresource="", namespace="", name=name,
                      code=200, body=body)  # fmt: skip


def kickout_patch(t: float, name: str, rv: str, taints: Sequence[dict[str, str]] = ()) -> AuditWrite:
    record = json.dumps({"at": f"t{t}", "cordoned": True, "tainted": True})
    return patch(t, name, rv, spec={"unschedulable": True, "taints": [*taints, OOS]}, asklepios_kickout=record)


def renewals(name: str, start: float, end: float, every: float = 1.0) -> list[LeaseVersion]:
    out, t = [], start
    while t <= end:
        out.append(LeaseVersion(t + 0.01, name, name, renew=t, acquire=None, duration=4))
        t += every
    return out


def crash(t: float, name: str, cause: str = "runner") -> Physics:
    return Physics(t, t + 0.01, name, "crash", cause, kubelet=(True, False), listener=(True, False))


def partition(t: float, name: str) -> Physics:
    return Physics(t, t + 0.01, name, "partition", "runner", kubelet=(True, False), listener=(True, True))


def restore(t: float, name: str) -> Physics:
    return Physics(t, t + 0.01, name, "restore", "runner", kubelet=(False, True), listener=(False, True))


def pod(t: float, name: str, uid: str, where: str, *, running: bool = True, deleted: bool = False) -> PodVersion:
    return PodVersion(t, name, uid, where, "db", running=running and not deleted, deleting=False, created=t,
                      deleted=deleted)  # fmt: skip


def failed(result: CheckResult) -> bool:
    return bool(result.violations) and result.checks > 0


# ------------------------------------------------------------ 1: no taint on a live node


def test_taint_on_a_node_with_a_fresh_lease_is_caught() -> None:
    h = history(
        nodes=[node(0, "n1", "1"), node(50, "n1", "2", "Unknown")],
        node_leases=renewals("n1", 0, 100),  # the kubelet kept renewing: alive
        writes=[kickout_patch(100.5, "n1", "2")],
    )
    result = check_no_taint_on_live_node(h)
    assert failed(result)
    assert "Lease was renewed" in result.violations[0].evidence[0]


def test_taint_on_a_partitioned_node_that_still_answers_is_caught() -> None:
    h = history(
        physics=[partition(40, "n1")],  # kubelet gone, port still listening
        node_leases=renewals("n1", 0, 40),
        nodes=[node(0, "n1", "1"), node(46, "n1", "2", "Unknown")],
        writes=[kickout_patch(60, "n1", "2")],
    )
    result = check_no_taint_on_live_node(h)
    assert failed(result)
    assert "kubelet port answered" in result.violations[0].evidence[0]


def test_taint_on_a_dead_node_passes() -> None:
    h = history(
        physics=[crash(40, "n1")],
        node_leases=renewals("n1", 0, 40),
        nodes=[node(0, "n1", "1"), node(46, "n1", "2", "Unknown")],
        writes=[kickout_patch(56, "n1", "2")],
    )
    result = check_no_taint_on_live_node(h)
    assert result.checks == 1
    assert result.passed


def test_partitioned_then_fenced_node_passes() -> None:
    fenced = Physics(58, 58.01, "n1", "crash", "bmc", kubelet=(False, False), listener=(True, False))
    h = history(
        physics=[partition(40, "n1"), fenced],
        node_leases=renewals("n1", 0, 40),
        writes=[kickout_patch(58.5, "n1", "2")],
    )
    assert check_no_taint_on_live_node(h).passed


def test_a_node_booting_during_the_decision_is_a_race_not_a_violation() -> None:
    h = history(
        physics=[crash(40, "n1"), restore(69.5, "n1")],
        node_leases=[*renewals("n1", 0, 40), *renewals("n1", 69.8, 69.8)],
        writes=[kickout_patch(70, "n1", "2")],
    )
    result = check_no_taint_on_live_node(h)
    assert result.passed
    assert result.notes["races"] == 1


def stop_kubelet(t: float, name: str) -> Physics:
    return Physics(t, t + 0.01, name, "stop_kubelet", "runner", kubelet=(True, False), listener=(True, True))


def skewed(name: str, start: float, end: float, behind: float = 60.0) -> list[LeaseVersion]:
    """A kubelet whose clock is ``behind`` s behind renewing every second: old renewTimes, seen changing."""
    return [LeaseVersion(t + 0.01, name, name, renew=t - behind, acquire=None, duration=4)
            for t in range(int(start), int(end) + 1)]  # fmt: skip


def test_taint_on_a_node_whose_stopped_kubelet_refuses_is_caught() -> None:
    """A refusal comes from a running kernel: the machine runs, its containers too."""
    h = history(
        physics=[stop_kubelet(40, "n1")],
        node_leases=renewals("n1", 0, 40),
        nodes=[node(0, "n1", "1"), node(46, "n1", "2", "Unknown")],
        writes=[kickout_patch(56, "n1", "2")],
    )
    result = check_no_taint_on_live_node(h)
    assert failed(result)
    assert "kubelet port answered" in result.violations[0].evidence[0]


def test_stopped_kubelet_then_fenced_node_passes() -> None:
    fenced = Physics(58, 58.01, "n1", "crash", "bmc", kubelet=(False, False), listener=(True, False))
    h = history(
        physics=[stop_kubelet(40, "n1"), fenced],
        node_leases=renewals("n1", 0, 40),
        writes=[kickout_patch(58.5, "n1", "2")],
    )
    assert check_no_taint_on_live_node(h).passed


def test_taint_on_a_node_whose_kubelet_renews_with_a_clock_behind_is_caught() -> None:
    skew = Physics(40, 40.01, "n1", "skew", "runner", kubelet=(True, True), listener=(True, False))
    h = history(
        physics=[skew],  # its port firewalled: the Lease alone shows it alive
        node_leases=[*renewals("n1", 0, 40), *skewed("n1", 41, 100)],
        nodes=[node(0, "n1", "1"), node(41, "n1", "2", "False")],
        writes=[kickout_patch(60, "n1", "2")],
    )
    result = check_no_taint_on_live_node(h)
    assert failed(result)
    assert any("renewTime changed" in e for e in result.violations[0].evidence)


def test_power_off_of_a_renewing_kubelet_is_caught_and_of_a_partitioned_one_passes() -> None:
    skew = Physics(40, 40.01, "n1", "skew", "runner", kubelet=(True, True), listener=(True, True))
    off = Physics(61, 61.01, "n1", "crash", "bmc", kubelet=(True, False), listener=(True, False))
    h = history(
        physics=[skew, off, partition(40, "n2")],
        node_leases=[*renewals("n1", 0, 40), *skewed("n1", 41, 61), *renewals("n2", 0, 40)],
        bmc=[BmcEvent(60, "n1", "reset", "Off"), BmcEvent(60, "n2", "reset", "Off")],
    )
    result = check_no_power_off_of_renewing_kubelet(h)
    assert result.checks == 2
    assert [v.node for v in result.violations] == ["n1"]
    # and the taint after its power-off is no violation of 1: the renewals stopped with the power
    later = history(physics=[skew, off], node_leases=[*renewals("n1", 0, 40), *skewed("n1", 41, 61)],
                    writes=[kickout_patch(62, "n1", "2")])  # fmt: skip
    assert check_no_taint_on_live_node(later).passed


def test_renew_times_written_later_by_a_kubelet_behind_are_no_life_at_an_earlier_write() -> None:
    """A kubelet 60 s behind writes at t=100 a renewTime of 40: no evidence about t=41."""
    skew = Physics(90, 90.01, "n1", "skew", "runner", kubelet=(False, True), listener=(False, True))
    h = history(
        physics=[crash(3, "n1"), skew],
        node_leases=[*renewals("n1", 0, 3), *skewed("n1", 91, 120)],
        bmc=[BmcEvent(40, "n1", "reset", "Off")],
        writes=[kickout_patch(41, "n1", "2")],
    )
    assert check_no_taint_on_live_node(h).passed
    assert check_no_power_off_of_renewing_kubelet(h).passed


# ------------------------------------------------------------------------ 2: the guard


def test_kickout_while_three_nodes_are_notready_is_caught() -> None:
    down = [node(10, n, "2", "Unknown") for n in ("n1", "n2", "n3")]
    h = history(nodes=[*(node(0, n, "1") for n in NODES), *down], writes=[kickout_patch(30, "n1", "2")])
    result = check_guard(h)
    assert failed(result)
    assert "3 watched nodes" in result.violations[0].what


def test_kickout_at_the_limit_passes_and_a_fresh_notready_node_is_not_counted() -> None:
    down = [node(10, n, "2", "Unknown") for n in ("n1", "n2")]
    late = node(29.7, "n3", "2", "Unknown")  # 0.3 s before the write: maybe not in Asklepios' cache yet
    h = history(nodes=[*(node(0, n, "1") for n in NODES), *down, late], writes=[kickout_patch(30, "n1", "2")])
    result = check_guard(h)
    assert result.checks == 1
    assert result.passed


# --------------------------------------------------------------- 3: foreign state kept


def test_removing_a_foreign_taint_is_caught() -> None:
    h = history(
        nodes=[node(0, "n1", "7", "Unknown", taints=[FOREIGN])],
        writes=[kickout_patch(20, "n1", "7", taints=[])],  # decided on rv 7, which had the admin's taint
    )
    result = check_foreign_state_kept(h)
    assert failed(result)
    assert "example.com/admin-1" in result.violations[0].what


def test_undoing_an_admin_cordon_is_caught() -> None:
    record = {"at": "x", "cordoned": False, "tainted": True}  # the node was cordoned before the kickout
    before = node(0, "n1", "9", taints=[OOS], unschedulable=True, kickout=record)
    kickin = patch(30, "n1", "9", spec={"unschedulable": None, "taints": None}, asklepios_kickout=None)
    result = check_foreign_state_kept(history(nodes=[before], writes=[kickin]))
    assert failed(result)
    assert "uncordoned" in result.violations[0].what


def test_kickout_and_kickin_that_keep_foreign_state_pass() -> None:
    record = {"at": "x", "cordoned": True, "tainted": True}
    h = history(
        nodes=[
            node(0, "n1", "7", "Unknown", taints=[FOREIGN]),
            node(21, "n1", "8", "Unknown", taints=[FOREIGN, OOS], unschedulable=True, kickout=record),
            node(40, "n1", "9", taints=[FOREIGN, OOS], unschedulable=True, kickout=record),
        ],
        writes=[
            kickout_patch(20, "n1", "7", taints=[FOREIGN]),
            patch(50, "n1", "9", spec={"unschedulable": None, "taints": [FOREIGN]}, asklepios_kickout=None),
        ],
    )
    result = check_foreign_state_kept(h)
    assert result.checks == 2
    assert result.passed
    assert result.notes["before-state approximated"] == 0


# ------------------------------------------------------------------ 4: one action once


def test_two_kickouts_in_one_notready_period_are_caught() -> None:
    record = {"at": "t20", "cordoned": True, "tainted": True}
    h = history(
        nodes=[
            node(0, "n1", "1"),
            node(5, "n1", "2", "False"),
            node(8, "n1", "3", "Unknown"),  # a False/Unknown flip does not end the period
            node(20.1, "n1", "4", "Unknown", taints=[OOS], kickout=record),
            node(30, "n1", "5", "Unknown"),  # someone removed everything; Asklepios kicks out again
        ],
        writes=[kickout_patch(20, "n1", "3"), kickout_patch(40, "n1", "5")],
    )
    result = check_one_kickout_per_period(h)
    assert failed(result)
    assert "2 kickouts" in result.violations[0].what


def test_one_kickout_per_period_passes() -> None:
    h = history(
        nodes=[node(0, "n1", "1"), node(5, "n1", "2", "False"), node(60, "n1", "3"), node(70, "n1", "4", "False")],
        writes=[kickout_patch(20, "n1", "2"), kickout_patch(85, "n1", "4")],
    )
    result = check_one_kickout_per_period(h)
    assert result.checks == 2
    assert result.passed


# ----------------------------------------------------------------- 5: pods recover


def pods_moving(at: float) -> list[PodVersion]:
    return [pod(0, "db-0", "u1", "n1"), pod(at - 1, "db-0", "u1", "n1", deleted=True), pod(at, "db-0", "u2", "n2")]


READY = [node(0, n, "1") for n in NODES]


def test_a_pod_stuck_after_its_node_died_is_caught() -> None:
    h = history(physics=[crash(100, "n1")], pods=pods_moving(150), nodes=READY)  # due: 100 + 5 + 10 + 30 = 145
    result = check_pods_recover(h)
    assert failed(result)
    assert "db-0" in result.violations[0].what


def test_a_pod_that_moves_in_time_passes_and_is_measured() -> None:
    h = history(physics=[crash(100, "n1")], pods=pods_moving(130), nodes=READY)
    result = check_pods_recover(h)
    assert result.checks == 1
    assert result.passed
    assert result.samples == (130 - 100.01,)


def test_time_over_the_guard_extends_the_bound() -> None:
    down = [*READY, *(node(105, n, "2", "Unknown") for n in ("n1", "n2", "n3"))]
    back = node(125, "n3", "3")  # 20 s over the guard
    h = history(physics=[crash(100, "n1")], pods=pods_moving(160), nodes=[*down, back])
    assert check_pods_recover(h).passed


def test_no_node_to_run_on_extends_the_bound() -> None:
    cordoned = [node(101, n, "2", unschedulable=True) for n in NODES[1:]]
    uncordoned = node(131, "n2", "3")  # 30 s without a place to go
    h = history(physics=[crash(100, "n1")], pods=pods_moving(170), nodes=[*READY, *cordoned, uncordoned])
    assert check_pods_recover(h).passed


def test_a_node_back_before_the_pod_moved_cancels_the_check() -> None:
    h = history(physics=[crash(100, "n1"), restore(110, "n1")], pods=[pod(0, "db-0", "u1", "n1")], nodes=READY)
    result = check_pods_recover(h)
    assert result.passed
    assert result.notes["node came back first"] == 1


# -------------------------------------------------------------------------- 6: kickin


def kicked_then_ready(ready_at: float) -> list[NodeVersion]:
    record = {"at": "1970-01-01T00:00:30Z", "cordoned": True, "tainted": True}
    return [
        node(0, "n1", "1"),
        node(10, "n1", "2", "Unknown"),
        node(30, "n1", "3", "Unknown", taints=[OOS], unschedulable=True, kickout=record),
        node(ready_at, "n1", "4", taints=[OOS], unschedulable=True, kickout=record),
    ]


def test_a_late_kickin_is_caught() -> None:
    kickin = patch(230, "n1", "4", spec={"unschedulable": None, "taints": None}, asklepios_kickout=None)
    result = check_kickin(history(nodes=kicked_then_ready(200), writes=[kickin]))  # due: 200 + 10 + 5
    assert failed(result)


def test_a_kickin_in_time_passes() -> None:
    kickin = patch(211, "n1", "4", spec={"unschedulable": None, "taints": None}, asklepios_kickout=None)
    result = check_kickin(history(nodes=kicked_then_ready(200), writes=[kickin]))
    assert result.checks == 1
    assert result.passed
    assert result.samples == (11,)


def test_a_pod_from_before_the_kickout_may_hold_the_kickin() -> None:
    stuck = [pod(5, "db-0", "u1", "n1"), pod(235, "db-0", "u1", "n1", deleted=True)]
    kickin = patch(236, "n1", "4", spec={"unschedulable": None, "taints": None}, asklepios_kickout=None)
    assert check_kickin(history(nodes=kicked_then_ready(200), writes=[kickin], pods=stuck)).passed


# ------------------------------------------------------------------- 7: leader only


def election(holder: str, renew: float) -> LeaseVersion:
    return LeaseVersion(renew + 0.01, "asklepios", holder, renew=renew, acquire=renew, duration=4)


def test_a_write_of_the_follower_is_caught() -> None:
    h = history(
        election=[election("soak-0_100", 100), election("soak-0_100", 101)],
        writes=[attrs.evolve(kickout_patch(101.5, "n1", "1"), user=OTHER.user)],
    )
    result = check_leader_only(h)
    assert failed(result)
    assert "soak-1" in result.violations[0].what


def test_a_write_after_the_lease_expired_is_caught() -> None:
    h = history(election=[election("soak-0_100", 100)], writes=[kickout_patch(104.5, "n1", "1")])
    assert failed(check_leader_only(h))


def test_a_write_after_another_took_over_is_caught() -> None:
    h = history(
        election=[election("soak-0_100", 100), election("soak-1_101", 103.9)],
        writes=[kickout_patch(104.0, "n1", "1")],  # within soak-0's old lease, but soak-1 holds it now
    )
    assert failed(check_leader_only(h))


def test_writes_of_the_leader_pass() -> None:
    h = history(
        election=[election("soak-0_100", 100), election("soak-0_100", 101), election("soak-1_101", 110)],
        writes=[kickout_patch(101.5, "n1", "1"), attrs.evolve(kickout_patch(110.2, "n2", "1"), user=OTHER.user)],
    )
    result = check_leader_only(h)
    assert result.checks == 2
    assert result.passed


# ----------------------------------------------------------- processes and settling


def test_a_process_that_died_by_itself_is_caught() -> None:
    died = attrs.evolve(ME, stopped=50.0, how="died", exit_code=1)
    stopped = attrs.evolve(OTHER, stopped=60.0, how="sigterm", exit_code=0)
    assert failed(check_processes(history(incarnations=[died, stopped])))
    assert check_processes(history(incarnations=[stopped])).passed


def test_settled_needs_all_ready_untainted_and_running() -> None:
    clean = history(nodes=[node(900, n, "9") for n in NODES], pods=[pod(900, "db-0", "u1", "n2")])
    assert check_settled(clean).passed
    stuck = history(nodes=[node(900, n, "9", taints=[OOS]) for n in NODES], pods=[])
    result = check_settled(stuck)
    assert len(result.violations) == len(NODES) + 1


# --------------------------------------------------------------------- the plumbing


def test_audit_events_are_parsed_and_filtered_by_user() -> None:
    event = {
        "stage": "ResponseComplete",
        "verb": "patch",
        "user": {"username": USER},
        "objectRef": {"resource": "nodes", "name": "n1"},
        "responseStatus": {"code": 200},
        "requestReceivedTimestamp": "2026-01-01T00:00:01.250000Z",
        "requestObject": {"spec": {"taints": [OOS]}},
    }
    other = {**event, "user": {"username": "admin"}}
    read = {**event, "verb": "get"}
    [write] = audit_writes([event, other, read], [USER])
    assert write.ok
    assert write.name == "n1"
    assert write.t % 1 == 0.25


def test_extended_due_is_a_fixpoint() -> None:
    blocked = union([Interval(10, 20), Interval(15, 25), Interval(40, 50)])
    assert blocked == [Interval(10, 25), Interval(40, 50)]
    assert extended_due(30, 0, blocked) == 30 + 15 + 10  # the first extension reaches the second interval


def test_the_fault_plan_depends_on_the_seed_alone() -> None:
    first, again, other = plan(1, 180), plan(1, 180), plan(2, 180)
    assert first == again
    assert first != other
    assert {f.kind for f in first} == set(WEIGHTS)  # a 3-minute soak meets every kind of fault
