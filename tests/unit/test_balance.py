"""Duplicate detection and fit: which pod moves where, and when nothing may move."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import attrs
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from asklepios.core.balance import GaveUp, MoveLedger, OwnerRef, PodView, fingerprint, plan_move, settled
from asklepios.core.node import OUT_OF_SERVICE_TAINT, NodeView, ReadyStatus, Taint
from asklepios.core.placement import NodeRequirement, Placement, Toleration
from asklepios.core.records import KickoutRecord, NodeRecord

T0 = datetime(2026, 3, 26, 16, 36, tzinfo=UTC)
STS = OwnerRef("StatefulSet", "mariadb-server", "uid-sts")
CP = {"node-role.kubernetes.io/control-plane": ""}
CP_TAINT = Taint("node-role.kubernetes.io/control-plane", "", "NoSchedule")
TOLERATE_CP = Toleration(key="node-role.kubernetes.io/control-plane", operator="Exists", effect="NoSchedule")


def nodes(*names: str, **overrides: NodeView) -> dict[str, NodeView]:
    out = {n: NodeView(name=n, labels={**CP, "kubernetes.io/hostname": n}, taints=(CP_TAINT,)) for n in names}
    out.update(overrides)
    return out


def pod(name: str, node: str, age: int, placement: Placement | None = None, **kw: object) -> PodView:
    kw.setdefault("ready", True)
    return PodView.of(
        namespace="openstack",
        name=name,
        uid=f"uid-{name}",
        node=node,
        owner=STS,
        created=(T0 - timedelta(seconds=age)).timestamp(),
        placement=placement or Placement(tolerations=(TOLERATE_CP,)),
        **kw,  # type: ignore[arg-type]
    )


SEED = [  # the seed's picture after control2 came back
    pod("mariadb-server-0", "control1", 90000),
    pod("mariadb-server-1", "control3", 1500),
    pod("mariadb-server-2", "control3", 200),
]


def test_seed_scenario_moves_the_newest_duplicate_to_the_recovered_node() -> None:
    move = plan_move(SEED, nodes("control1", "control2", "control3"))
    assert move is not None
    assert (move.pod.name, move.from_node, move.to_node) == ("mariadb-server-2", "control3", "control2")


def test_nothing_moves_while_the_target_is_down_cordoned_or_still_kicked_out() -> None:
    down = NodeView(name="control2", labels=CP, taints=(CP_TAINT,), ready=ReadyStatus.UNKNOWN)
    cordoned = NodeView(name="control2", labels=CP, taints=(CP_TAINT,), unschedulable=True)
    tainted = NodeView(name="control2", labels=CP, taints=(CP_TAINT, OUT_OF_SERVICE_TAINT))
    kicked = NodeView(
        name="control2", labels=CP, taints=(CP_TAINT,), record=NodeRecord(kickout=KickoutRecord(T0, True, True))
    )
    for target in (down, cordoned, tainted, kicked):
        assert plan_move(SEED, nodes("control1", "control3", control2=target)) is None


def test_a_pod_that_cannot_fit_stays() -> None:
    pinned = Placement(node_selector={"disk": "ssd"}, tolerations=(TOLERATE_CP,))
    members = [pod(p.name, p.node, 10, placement=pinned) for p in SEED]
    assert plan_move(members, nodes("control1", "control2", "control3")) is None
    untolerated = [pod(p.name, p.node, 10, placement=Placement()) for p in SEED]
    assert plan_move(untolerated, nodes("control1", "control2", "control3")) is None
    affinity = Placement(
        affinity_terms=((NodeRequirement("kubernetes.io/hostname", "NotIn", ("control2",)),),),
        tolerations=(TOLERATE_CP,),
    )
    members = [pod(p.name, p.node, 10, placement=affinity) for p in SEED]
    assert plan_move(members, nodes("control1", "control2", "control3")) is None


def test_settled_needs_every_replica_ready_and_none_terminating() -> None:
    assert settled(SEED, 3)
    assert not settled(SEED[:2], 3)
    assert not settled([*SEED[:2], pod("mariadb-server-2", "control3", 1, deleting=True)], 3)
    assert not settled([*SEED[:2], pod("mariadb-server-2", "control3", 1, ready=False)], 3)


def test_wildcard_toleration() -> None:
    assert Toleration(operator="Exists").tolerates("any", "thing", "NoExecute")
    assert not Toleration(key="a", value="b").tolerates("a", "c", "NoSchedule")


@given(
    placement=st.lists(st.sampled_from(["n1", "n2", "n3", "n4"]), min_size=1, max_size=6),
    free=st.lists(st.sampled_from(["n1", "n2", "n3", "n4"]), max_size=4, unique=True),
)
def test_a_move_always_leaves_a_crowded_node_for_an_empty_one(placement: list[str], free: list[str]) -> None:
    members = [pod(f"p-{i}", n, i) for i, n in enumerate(placement)]
    view = nodes(*{*placement, *free})
    move = plan_move(members, view)
    counts = {n: placement.count(n) for n in view}
    crowded = [n for n, c in counts.items() if c >= 2]
    empty = [n for n, c in counts.items() if c == 0]
    if move is None:
        assert not crowded or not empty
    else:
        assert counts[move.from_node] >= 2
        assert counts[move.to_node] == 0
        same_node = [p for p in members if p.node == move.from_node]
        assert move.pod.created == max(p.created for p in same_node if p.created)  # the newest


def test_pods_of_one_template_share_their_placement_and_owner() -> None:
    from asklepios.kube.pods import parse_pod

    def raw(i: int) -> dict[str, object]:
        return {
            "metadata": {
                "name": f"db-{i}",
                "namespace": "openstack",
                "uid": f"u{i}",
                "ownerReferences": [{"kind": "StatefulSet", "name": "db", "uid": "s", "controller": True}],
            },
            "spec": {"nodeName": "n1", "tolerations": [{"key": "k", "operator": "Exists"}]},
        }

    a, b = parse_pod(raw(0)), parse_pod(raw(1))
    assert a.placement is b.placement
    assert a.owner is b.owner
    assert a.placement.tolerations == (Toleration(key="k", operator="Exists"),)


# --- the ledger in the balancer's record ------------------------------------------------------
def test_a_ledger_reads_back_what_it_wrote() -> None:
    at = datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC)
    ledger = MoveLedger(
        name="db",
        moves=(at, at + timedelta(minutes=5)),
        failures=1,
        refusals=5,
        backoff_until=at + timedelta(minutes=2),
        gave_up=GaveUp("a PodDisruptionBudget allows no disruption now (429)", "f00d", "db@7", at),
    )
    assert MoveLedger.from_record(orjson.loads(orjson.dumps(ledger.to_record("uid-1")))) == ("uid-1", ledger)
    assert MoveLedger.from_record(MoveLedger().to_record("u")) == ("u", MoveLedger())


_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
_values = (
    _scalars
    | st.lists(_scalars, max_size=3)
    | st.dictionaries(st.sampled_from(["why", "pods", "pdbs", "checked"]), _scalars)
)
_FIELDS = ("uid", "name", "moves", "failures", "refusals", "backoff_until", "gave_up")


@given(st.fixed_dictionaries({}, optional=dict.fromkeys(_FIELDS, _values)) | _values)
def test_reading_a_record_never_raises(data: object) -> None:
    parsed = MoveLedger.from_record(data)
    assert parsed is None or (isinstance(data, dict) and parsed[0] == data["uid"])


@pytest.mark.parametrize(
    "change",
    [
        {"uid": ""},
        {"uid": 3},
        {"moves": "12"},
        {"moves": [True]},
        {"moves": [1e300]},
        {"refusals": -1},
        {"refusals": True},
        {"failures": 1.5},
        {"backoff_until": "soon"},
        {"gave_up": {"why": "x", "pods": "p"}},
        {"gave_up": {"why": "x", "pods": "p", "pdbs": 1, "checked": 0}},
        {"gave_up": "yes"},
    ],
)
def test_a_damaged_record_entry_is_none(change: dict[str, object]) -> None:
    good = MoveLedger(name="db", refusals=1).to_record("uid-1")
    assert MoveLedger.from_record(good) is not None
    assert MoveLedger.from_record({**good, **change}) is None
    assert MoveLedger.from_record({k: v for k, v in good.items() if k not in change}) is None


def test_the_fingerprint_changes_with_any_pod() -> None:
    pods = [PodView.of("ns", f"db-{i}", f"u{i}", "n1", None, ready=True) for i in range(3)]
    same = fingerprint(list(reversed(pods)))
    assert fingerprint(pods) == same
    for change in ({"uid": "other"}, {"node": "n2"}, {"ready": False}, {"deleting": True}):
        changed = [attrs.evolve(pods[0], **change), *pods[1:]]
        assert fingerprint(changed) != same, change
    assert fingerprint(pods[:2]) != same
