"""`asklepios check`: the pure rules, the needs table against k8s/, and the gathering on a fake apiserver."""

from __future__ import annotations

import base64
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

import pytest

from asklepios.config import Settings, load_settings
from asklepios.core.balance import OwnerRef
from asklepios.core.fencing import BmcTarget, FencingError
from asklepios.core.guard import MaxUnhealthy
from asklepios.core.node import NodeView, ReadyStatus, Taint
from asklepios.core.placement import Toleration
from asklepios.core.preflight import (
    Budget,
    Finding,
    Need,
    PodSeen,
    PowerSeen,
    Review,
    Status,
    annotation_finding,
    balancer_finding,
    bmc_findings,
    exit_status,
    fencing_findings,
    guard_finding,
    names,
    never_move_finding,
    node_lease_finding,
    nodes_finding,
    parse_version,
    probe_finding,
    rbac_findings,
    sample,
    tolerates_out_of_service,
    unprotected_statefulsets,
    version_finding,
)
from asklepios.core.selector import parse_selector
from asklepios.engine.preflight import needs_of, run_checks
from asklepios.engine.startup import log_findings
from asklepios.kube.access import parse_label_selector, parse_pod_seen
from asklepios.kube.client import ApiError, KubeClient, NotFound
from tests.unit.test_config import silent_apiserver  # noqa: F401 - the fixture
from tests.unit.test_manifests import rules, with_components

OK, WARN, FAIL = Status.OK, Status.WARNING, Status.FAILURE
EVERYTHING_ON = Settings(balancer=True, fencing="redfish", force_delete=True, leader_election=True)

# --- version ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("git_version", "major", "minor", "status"),
    [
        ("v1.25.16", "1", "25", FAIL),
        ("v1.24.0", "1", "24", FAIL),
        ("v1.26.0", "1", "26", WARN),
        ("v1.27.9-eks-5e0fdde", "1", "27+", WARN),
        ("v1.28.15", "1", "28", OK),
        ("v1.28.15-gke.1020000", "1", "28+", OK),
        ("v1.37.2", "1", "37", OK),
        ("v2.0.0", "2", "0", OK),
        ("v1.25.3+k3s1", "", "", FAIL),  # no major/minor: gitVersion decides
        ("v1.30.1", "", "30", OK),
        ("", "1", "29+", OK),  # no gitVersion: the fields decide
        ("1.27.3", "", "", WARN),  # no "v"
        ("", "", "", WARN),  # nothing to go by: cannot tell
        ("banana", "one", "two", WARN),
    ],
)
def test_version_rule(git_version: str, major: str, minor: str, status: Status) -> None:
    finding = version_finding(git_version, major, minor)
    assert finding.status is status, finding
    assert finding.check == "version"
    assert finding.blocks_start is (status is FAIL)  # only a known, too old version stops `run`
    if status is not OK:
        assert finding.todo
    if git_version and status is not WARN:
        assert git_version in finding.message


def test_version_parse_prefers_the_fields_and_tolerates_suffixes() -> None:
    assert parse_version("v1.28.15", "1", "28+") == (1, 28)
    assert parse_version("v1.99.0", "1", "27") == (1, 27)
    assert parse_version("v1.26.1-rc.0", "", "") == (1, 26)
    assert parse_version(" v1.31 ", "", "") == (1, 31)
    assert parse_version("vX", "", "") is None


def test_too_old_says_what_to_do() -> None:
    finding = version_finding("v1.25.16", "1", "25")
    assert "1.26" in finding.message
    assert "upgrade" in finding.todo
    assert exit_status([finding]) == 1
    assert exit_status([version_finding("v1.27.1", "1", "27")]) == 0


# --- the needs table -------------------------------------------------------------------


def _texts(settings: Settings) -> set[str]:
    return {n.text for n in needs_of(settings)}


ALWAYS = {
    "get nodes",
    "list nodes",
    "watch nodes",
    "patch nodes",
    "list pods",
    "watch pods",
    "create events",
    "list storage.k8s.io volumeattachments",
    "watch storage.k8s.io volumeattachments",
    "list persistentvolumes",
    "get coordination.k8s.io leases in kube-node-lease",
    "list coordination.k8s.io leases in kube-node-lease",
    "create configmaps in kube-system",
    "get configmaps 'asklepios-records' in kube-system",
    "list configmaps 'asklepios-records' in kube-system",
    "watch configmaps 'asklepios-records' in kube-system",
    "patch configmaps 'asklepios-records' in kube-system",
}


def test_needs_with_everything_off() -> None:
    settings = Settings(leader_election=False, force_delete=False, balancer=False, fencing="off")
    assert _texts(settings) == ALWAYS


def test_needs_per_setting() -> None:
    base = Settings(leader_election=False, force_delete=False)
    in_ops = {t.replace(" in kube-system", " in ops") for t in ALWAYS if "configmaps" in t}
    assert _texts(Settings(leader_election=True, force_delete=False, namespace="ops")) - ALWAYS - in_ops == {
        "create coordination.k8s.io leases in ops",
        "get coordination.k8s.io leases 'asklepios' in ops",
        "update coordination.k8s.io leases 'asklepios' in ops",
    }
    assert _texts(Settings(leader_election=False, force_delete=True)) - ALWAYS == {"delete pods"}
    assert _texts(Settings(leader_election=False, force_delete=False, balancer=True)) - ALWAYS == {
        "create pods/eviction",
        "get apps statefulsets",
        "list policy poddisruptionbudgets",
        "get configmaps 'asklepios-balancer' in kube-system",
        "patch configmaps 'asklepios-balancer' in kube-system",
    }
    fencing = Settings(leader_election=False, force_delete=False, fencing="redfish", fencing_secret="bmcs")
    assert _texts(fencing) - ALWAYS == {"get secrets 'bmcs' in kube-system"}
    assert _texts(base) == ALWAYS
    assert all(n.why for n in needs_of(EVERYTHING_ON))


def test_need_resource_attributes() -> None:
    eviction = Need("create", "pods/eviction")
    assert eviction.resource_attributes() == {
        "verb": "create",
        "group": "",
        "resource": "pods",
        "subresource": "eviction",
    }
    lease = Need("update", "leases", "coordination.k8s.io", "kube-system", "asklepios")
    assert lease.resource_attributes() == {
        "verb": "update",
        "group": "coordination.k8s.io",
        "resource": "leases",
        "namespace": "kube-system",
        "name": "asklepios",
    }


def test_the_manifests_grant_exactly_the_needs_of_everything_on(tmp_path: Path) -> None:
    """k8s/ with its balancer and fencing components (ClusterRoles + Roles, as bound) against
    the needs table: no drift either way (tests/unit/test_chart.py: the chart, per setting)."""
    granted: set[tuple[str, str, str, str, str]] = set()
    manifests = with_components(tmp_path, "balancer", "fencing")
    for m in manifests:
        if m["kind"] not in ("ClusterRole", "Role"):
            continue
        namespace = m["metadata"].get("namespace", "") if m["kind"] == "Role" else ""
        for group, resource, verb, resource_names in rules(m):
            for name in resource_names or ("",):
                granted.add((namespace, group, resource, verb, name))
    [config_map] = [m for m in manifests if m["kind"] == "ConfigMap"]
    # The Deployment's settings (POD_NAMESPACE is its namespace), with the balancer and fencing turned on.
    env = {**config_map["data"], "POD_NAMESPACE": "kube-system", "ASKLEPIOS_BALANCER": "true"}
    settings = load_settings({**env, "ASKLEPIOS_FENCING": "redfish"})
    assert (settings.leader_election, settings.force_delete, settings.balancer, settings.fencing_on) == (True,) * 4
    needed = {(n.namespace, n.group, n.resource, n.verb, n.name) for n in needs_of(settings)}
    assert granted == needed, (sorted(granted - needed), sorted(needed - granted))


def test_rbac_findings_name_each_missing_permission() -> None:
    needs = needs_of(EVERYTHING_ON)
    reviews = [Review(n, allowed=(n.verb, n.resource) != ("patch", "nodes")) for n in needs]
    [missing] = rbac_findings(reviews)
    assert missing.status is FAIL
    assert "missing: patch nodes (all namespaces)" in missing.message
    assert "RBAC" in missing.todo
    [granted] = rbac_findings([Review(n, allowed=True) for n in needs])
    assert granted.status is OK
    assert str(len(needs)) in granted.message
    secret = next(n for n in needs if n.resource == "secrets")
    [named] = rbac_findings([Review(secret, allowed=False)])
    assert "get secrets 'asklepios-bmc' in kube-system" in named.message
    assert "all namespaces" not in named.message
    partly = [Review(n, allowed=i >= 3, error="500: boom" if i < 3 else "") for i, n in enumerate(needs)]
    [unknown] = rbac_findings(partly)
    assert unknown.status is WARN
    assert unknown.message == "could not review 3 permissions (get nodes, list nodes, watch nodes): 500: boom"
    [nothing] = rbac_findings([Review(n, allowed=False, error="0: refused") for n in needs])
    assert nothing.message == f"could not review the {len(needs)} permissions these settings need: 0: refused"


# --- nodes and the guard -----------------------------------------------------------------


def node(
    name: str,
    *,
    ready: bool = True,
    excluded: bool = False,
    skip: bool = False,
    uuid: str = "",
    annotated: bool = False,
) -> NodeView:
    labels = MappingProxyType({"asklepios.io/exclude": "true"} if excluded else {})
    taints = (Taint("node.kubernetes.io/asklepios", "skip", "NoExecute"),) if skip else ()
    status = ReadyStatus.TRUE if ready else ReadyStatus.FALSE
    return NodeView(name, labels=labels, ready=status, taints=taints, system_uuid=uuid, bmc_annotation=annotated)


def test_no_node_matches_the_selector() -> None:
    finding = nodes_finding("role=db", [])
    assert finding.status is FAIL
    assert "'role=db'" in finding.message
    assert "ASKLEPIOS_NODE_SELECTOR" in finding.todo
    found = nodes_finding("role=db", [node("a"), node("b", excluded=True)])
    assert found.status is OK
    assert "2 nodes match" in found.message
    assert "1 excluded: b" in found.message


@pytest.mark.parametrize(
    ("setting", "nodes", "status", "sentence"),
    [
        ("50%", ["a", "b", "c"], OK, "3 watched nodes: kickouts held while more than 1 is NotReady"),
        ("50%", ["a", "b", "c", "d", "e", "f"], OK, "6 watched nodes: kickouts held while more than 3 are NotReady"),
        ("2", ["a", "b", "c", "d"], OK, "4 watched nodes: kickouts held while more than 2 are NotReady"),
        ("100%", ["a", "b", "c"], OK, "3 watched nodes: kickouts are never held (ASKLEPIOS_MAX_UNHEALTHY=100%"),
        ("5", ["a", "b"], OK, "2 watched nodes: kickouts are never held (ASKLEPIOS_MAX_UNHEALTHY=5 allows all 2)"),
        ("50%", ["a"], WARN, "only 1 watched node (a)"),
    ],
)
def test_guard_sentence(setting: str, nodes: list[str], status: Status, sentence: str) -> None:
    finding = guard_finding(MaxUnhealthy.parse(setting), [node(n) for n in nodes])
    assert finding.status is status, finding
    assert sentence in finding.message, finding.message


def test_guard_counts_only_nodes_that_can_be_kicked_out() -> None:
    views = [node("a"), node("b"), node("c"), node("x", excluded=True), node("y", skip=True)]
    finding = guard_finding(MaxUnhealthy.parse("50%"), views)
    assert finding.message.startswith("3 watched nodes: kickouts held while more than 1 is NotReady")
    everyone_excluded = guard_finding(MaxUnhealthy.parse("50%"), [node("x", excluded=True), node("y", skip=True)])
    assert everyone_excluded.status is WARN
    assert "none will ever be kicked out" in everyone_excluded.message


def test_guard_warns_when_a_node_left_down_uses_up_the_budget() -> None:
    """A dead node left kicked out still counts: the next failure is held, silently."""
    views = [node("a", ready=False), node("b"), node("c")]
    finding = guard_finding(MaxUnhealthy.parse("50%"), views)
    assert finding.status is WARN
    assert "1 is NotReady now (a)" in finding.message
    assert "the next node to fail will be held" in finding.message
    assert "exclude" in finding.todo
    held = guard_finding(MaxUnhealthy.parse("50%"), [node("a", ready=False), node("b", ready=False), node("c")])
    assert held.status is WARN
    assert held.message.startswith("kickouts are held now: 2 of 3 watched nodes are NotReady")
    assert held.message.endswith("not counted): a, b")
    roomy = guard_finding(MaxUnhealthy.parse("2"), [node("a", ready=False), node("b"), node("c"), node("d")])
    assert roomy.status is OK
    assert "(1 NotReady now)" in roomy.message


# --- pods that never move ----------------------------------------------------------------

OOS = "node.kubernetes.io/out-of-service"


@pytest.mark.parametrize(
    ("toleration", "tolerates"),
    [
        (Toleration(operator="Exists"), True),  # the catch-all
        (Toleration(operator="Exists", effect="NoExecute"), True),
        (Toleration(operator="Exists", effect="NoSchedule"), False),
        (Toleration(key=OOS, operator="Exists"), True),
        (Toleration(key=OOS, operator="Exists", effect="NoExecute"), True),
        (Toleration(key=OOS, operator="Equal", value="nodeshutdown", effect="NoExecute"), True),
        (Toleration(key=OOS, operator="Equal", value="other", effect="NoExecute"), False),
        (Toleration(key="node.kubernetes.io/not-ready", operator="Exists", effect="NoExecute"), False),
        (Toleration(key="node.kubernetes.io/unreachable", operator="Exists"), False),
        (Toleration(operator="Equal", effect="NoExecute"), False),  # an empty key needs Exists
    ],
)
def test_toleration_rule(toleration: Toleration, tolerates: bool) -> None:
    assert tolerates_out_of_service([toleration]) is tolerates


def pod_json(
    name: str, node_name: str, tolerations: list[dict[str, str]], owner: tuple[str, str] | None, **extra: Any
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": extra.get("namespace", "kube-system")}
    if owner:
        meta["ownerReferences"] = [{"kind": owner[0], "name": owner[1], "uid": "u", "controller": True}]
    if "labels" in extra:
        meta["labels"] = extra["labels"]
    return {
        "metadata": meta,
        "spec": {"nodeName": node_name, "tolerations": tolerations},
        "status": {"phase": extra.get("phase", "Running")},
    }


def test_pods_that_never_move_are_listed_by_owner() -> None:
    catch_all = [{"operator": "Exists"}]
    pods = [parse_pod_seen(pod_json(f"cilium-{n}", n, catch_all, ("DaemonSet", "cilium"))) for n in ("a", "b", "c")]
    pods += [
        parse_pod_seen(pod_json("etcd-a", "a", [{"operator": "Exists", "effect": "NoExecute"}], ("Node", "a"))),
        parse_pod_seen(pod_json("bare", "b", [{"key": OOS, "operator": "Exists"}], None, namespace="ops")),
        parse_pod_seen(pod_json("done", "b", catch_all, ("Job", "j"), phase="Succeeded")),  # finished: ignored
        parse_pod_seen(pod_json("elsewhere", "z", catch_all, ("DaemonSet", "cilium"))),  # not a watched node
        parse_pod_seen(pod_json("db-0", "a", [{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}], None)),
    ]
    finding = never_move_finding(pods, ["a", "b", "c"])
    assert finding.status is WARN
    assert "5 pods on watched nodes tolerate the out-of-service taint" in finding.message
    assert "DaemonSet kube-system/cilium: 3 pods, Pod ops/bare: 1 pod, static pods on a: 1 pod" in finding.message
    assert "toleration" in finding.todo
    assert never_move_finding(pods[-1:], ["a"]).status is OK


def test_long_lists_are_cut_at_ten() -> None:
    assert names([str(i) for i in range(12)]) == "0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 2 more"
    assert names(["a"]) == "a"


# --- balancer: PodDisruptionBudgets --------------------------------------------------------


def sts_pod(namespace: str, sts: str, index: int, labels: Mapping[str, str]) -> PodSeen:
    return PodSeen(
        namespace, f"{sts}-{index}", owner=OwnerRef("StatefulSet", sts, "u"), labels=MappingProxyType(labels)
    )


def test_pdb_matching() -> None:
    mariadb = [
        sts_pod("openstack", "mariadb", i, {"application": "mariadb", "asklepios.io/balance": "true"}) for i in range(3)
    ]
    rabbit = [
        sts_pod("openstack", "rabbitmq", i, {"application": "rabbitmq", "asklepios.io/balance": "true"})
        for i in range(3)
    ]
    elsewhere = [sts_pod("other", "mariadb", 0, {"application": "mariadb"})]
    by_labels = Budget("openstack", "mariadb", parse_label_selector({"matchLabels": {"application": "mariadb"}}))
    by_expression = Budget(
        "openstack",
        "rabbit",
        parse_label_selector({"matchExpressions": [{"key": "application", "operator": "In", "values": ["rabbitmq"]}]}),
    )
    wrong_namespace = Budget("other", "all", parse_label_selector({}))  # {}: every pod of its namespace
    managed, bare = unprotected_statefulsets(mariadb + rabbit + elsewhere, [by_labels, wrong_namespace])
    assert managed == ["openstack/mariadb", "openstack/rabbitmq", "other/mariadb"]
    assert bare == ["openstack/rabbitmq"]
    assert unprotected_statefulsets(mariadb + rabbit, [by_labels, by_expression])[1] == []
    nothing = Budget("openstack", "none", parse_label_selector(None))  # no selector: selects nothing
    assert unprotected_statefulsets(mariadb, [nothing])[1] == ["openstack/mariadb"]
    partial = Budget(
        "openstack", "one", parse_label_selector({"matchLabels": {"statefulset.kubernetes.io/pod-name": "x"}})
    )
    assert unprotected_statefulsets(mariadb, [partial])[1] == ["openstack/mariadb"]  # a pod left out counts

    finding = balancer_finding(mariadb + rabbit, [by_labels], "asklepios.io/balance=true", ["openstack"])
    assert finding.status is WARN
    assert (
        "1 StatefulSet the balancer moves is not covered by a PodDisruptionBudget: openstack/rabbitmq"
        in finding.message
    )
    assert "PodDisruptionBudget" in finding.todo
    assert balancer_finding(mariadb, [by_labels], "x", []).status is OK
    empty = balancer_finding([], [], "asklepios.io/balance=true", [])
    assert empty.status is WARN
    assert "moves nothing" in empty.message


def test_label_selector_operators() -> None:
    selector = parse_label_selector(
        {
            "matchLabels": {"app": "db"},
            "matchExpressions": [
                {"key": "tier", "operator": "NotIn", "values": ["cache"]},
                {"key": "zone", "operator": "Exists"},
                {"key": "legacy", "operator": "DoesNotExist"},
            ],
        }
    )
    assert selector is not None
    assert selector.matches({"app": "db", "zone": "z1"})
    assert not selector.matches({"app": "db", "zone": "z1", "tier": "cache"})
    assert not selector.matches({"app": "db"})
    assert not selector.matches({"app": "db", "zone": "z1", "legacy": "1"})
    assert parse_label_selector({"matchExpressions": [{"key": "a", "operator": "Bogus"}]}) is None
    assert parse_selector("").matches({})


# --- fencing -------------------------------------------------------------------------------

URL = "https://bmc.example/redfish/v1/Systems/1"


def test_fencing_inventory_urls_and_credentials() -> None:
    views = [node(f"n{i}") for i in range(3)] + [node(f"m{i}") for i in range(12)] + [node("bad")]
    inventory = {f"n{i}.url": f"{URL}{i}" for i in range(3)} | {"bad.url": "http://bmc/redfish/v1/Systems/1"}
    secret = {"username": "u", "password": "p", **inventory}
    findings, usable = fencing_findings(views, secret, "", "kube-system/asklepios-bmc")
    missing, bad = findings
    assert missing.status is FAIL
    assert "12 of 16 watched nodes have no NODE.url in the Secret kube-system/asklepios-bmc" in missing.message
    assert "(no BMC)" in missing.message
    assert missing.message.endswith("and 2 more")
    assert "kubectl -n kube-system patch secret asklepios-bmc" in missing.todo
    assert '"NODE.url":"https://<bmc>/redfish/v1/Systems/<id>"' in missing.todo
    assert "bad.url='http://bmc/redfish/v1/Systems/1' is not https://" in bad.message
    assert [v.name for v in usable] == ["n0", "n1", "n2"]

    no_secret, usable = fencing_findings(views[:3], None, "Secret kube-system/x not found", "kube-system/x")
    assert [f.message for f in no_secret] == ["Secret kube-system/x not found"]
    assert "NODE.url" in no_secret[0].todo
    assert usable == []
    per_node = {"n0.username": "u", "n0.password": "p", **inventory}
    [lacking], usable = fencing_findings(views[:3], per_node, "", "kube-system/x")
    assert "no credentials for n1, n2" in lacking.message
    assert [v.name for v in usable] == ["n0"]


def test_a_leftover_bmc_annotation_is_a_warning() -> None:
    assert annotation_finding([node("a"), node("b")]) is None
    found = annotation_finding([node("a", annotated=True), node("b"), node("c", annotated=True)])
    assert found is not None and found.status is WARN
    assert "2 nodes still have the asklepios.io/bmc annotation, which Asklepios no longer reads" in found.message
    assert found.message.endswith(": a, c")
    assert "NODE.url" in found.todo and "asklepios.io/bmc-" in found.todo


UUID_A = "00112233-4455-6677-8899-aabbccddeeff"
UUID_B = "10112233-4455-6677-8899-aabbccddeeff"


def test_bmc_answers() -> None:
    a, b, c = node("a", uuid=UUID_A), node("b"), node("c", ready=False)
    seen = [PowerSeen(a, "On", uuid=UUID_A.upper(), url=URL), PowerSeen(c, "Off", uuid=UUID_B)]
    fine, unchecked = bmc_findings(seen, 7, "ns/s", insecure=False)
    assert fine.status is OK
    assert (
        fine.message
        == "2 of 7 BMCs asked answered (PowerState: Off 1, On 1); System UUID of the node's own machine: 1 of 2"
    )
    assert unchecked.status is WARN and "1 of the BMCs asked could not be checked" in unchecked.message
    wrong = bmc_findings([PowerSeen(a, error="HTTP 401 Unauthorized"), PowerSeen(b, "Off")], 2, "ns/s", insecure=True)
    assert [f.status for f in wrong] == [FAIL, FAIL, WARN]
    assert "the BMC of a did not answer: HTTP 401 Unauthorized" in wrong[0].message
    assert "b is Ready but its BMC says PowerState Off: b.url points at another machine?" in wrong[1].message
    assert "INSECURE" in wrong[2].message


def test_a_bmc_of_another_machine_is_a_failure() -> None:
    a = node("a", uuid=UUID_A)
    [other] = bmc_findings([PowerSeen(a, "On", uuid=UUID_B, url=URL)], 1, "ns/s", insecure=False)
    assert other.status is FAIL
    assert f"the BMC at {URL} reports System UUID {UUID_B}, but a reports systemUUID {UUID_A}" in other.message
    assert "a.url in the fencing Secret names another machine" in other.message
    assert "fix a.url in the Secret ns/s" in other.todo
    swapped = "33221100-5544-7766-8899-aabbccddeeff"
    [fine] = bmc_findings([PowerSeen(a, "On", uuid=swapped, url=URL)], 1, "ns/s", insecure=False)
    assert fine.status is OK and fine.message.endswith("1 of 1")


def test_sample_is_spread_and_small() -> None:
    assert sample(["a", "b"]) == ["a", "b"]
    assert sample([str(i) for i in range(100)]) == ["0", "20", "40", "60", "80"]


def test_node_leases() -> None:
    assert node_lease_finding(["a", "b"], {"a", "b", "z"}).status is OK
    finding = node_lease_finding(["a", "b", "c"], {"a"})
    assert finding.status is WARN
    assert "2 of 3 watched nodes have no Lease in kube-node-lease" in finding.message
    assert finding.message.endswith("b, c")


# --- gathering, on a fake apiserver --------------------------------------------------------


class FakeApi:
    """`KubeClient.request` over canned answers; a route may raise (403, 404)."""

    def __init__(self, routes: dict[tuple[str, str], Any]) -> None:
        self.routes = routes
        self.requests: list[tuple[str, str, dict[str, Any]]] = []

    async def request(self, method: str, path: str, *, query: Any = None, body: Any = None, **_: Any) -> Any:
        self.requests.append((method, path, dict(query or {})))
        if path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews":
            attributes = body["spec"]["resourceAttributes"]
            denied = self.routes.get(("REVIEW", "denied"), set())
            return {"status": {"allowed": (attributes["verb"], attributes["resource"]) not in denied}}
        answer = self.routes.get((method, path))
        if answer is None:
            raise NotFound(404, f"{path} not found")
        if isinstance(answer, Exception):
            raise answer
        return answer


def node_json(name: str, **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels},
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "addresses": [{"type": "InternalIP", "address": f"127.0.10.{ord(name[0]) % 250}"}],
        },
    }


def green_routes() -> dict[tuple[str, str], Any]:
    return {
        ("GET", "/api/v1/nodes"): {"items": [node_json(n, role="cp") for n in ("a", "b", "c")]},
        ("GET", "/api/v1/pods"): {"items": []},
        ("GET", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"): {
            "items": [{"metadata": {"name": n}} for n in ("a", "b", "c")]
        },
        ("GET", "/api/v1/persistentvolumes"): {"items": []},
    }


@pytest.mark.anyio
async def test_a_green_cluster_gives_only_ok() -> None:
    api = FakeApi(green_routes())
    settings = Settings(node_selector=parse_selector("role=cp"))
    findings = await run_checks(settings, cast(KubeClient, api))
    assert [(f.status, f.check) for f in findings] == [
        (OK, "rbac"),
        (OK, "nodes"),
        (OK, "max-unhealthy"),
        (OK, "pods"),
        (OK, "node-leases"),
        (OK, "volumes"),
    ], findings
    pod_lists = [r for r in api.requests if r[1] == "/api/v1/pods"]
    assert sorted(q["fieldSelector"] for _, _, q in pod_lists) == [f"spec.nodeName={n}" for n in "abc"]
    assert all(method in ("GET", "POST") for method, _, _ in api.requests)
    assert {p for m, p, _ in api.requests if m == "POST"} == {"/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"}


@pytest.mark.anyio
async def test_a_check_that_cannot_run_is_a_finding_not_a_crash() -> None:
    routes = green_routes()
    routes["GET", "/api/v1/pods"] = ApiError(403, 'pods is forbidden: User "x" cannot list resource "pods"')
    routes["REVIEW", "denied"] = {("list", "pods")}
    routes["GET", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"] = ApiError(0, "connection reset")
    settings = Settings(node_selector=parse_selector("role=cp"))
    findings = await run_checks(settings, cast(KubeClient, FakeApi(routes)))
    by_check = {f.check: f for f in findings}
    assert by_check["rbac"].status is FAIL
    assert "missing: list pods (all namespaces)" in by_check["rbac"].message
    assert by_check["pods"].status is WARN
    assert "could not check: 403: pods is forbidden" in by_check["pods"].message
    assert by_check["node-leases"].status is FAIL
    assert "connection reset" in by_check["node-leases"].message


@pytest.mark.anyio
async def test_no_node_list_and_no_nodes() -> None:
    routes = green_routes()
    routes["GET", "/api/v1/nodes"] = ApiError(403, "nodes is forbidden")
    findings = await run_checks(Settings(), cast(KubeClient, FakeApi(routes)))
    assert [(f.check, f.status) for f in findings] == [("rbac", OK), ("nodes", WARN)]
    routes["GET", "/api/v1/nodes"] = {"items": []}
    findings = await run_checks(Settings(), cast(KubeClient, FakeApi(routes)))
    assert [(f.check, f.status) for f in findings] == [("rbac", OK), ("nodes", FAIL)]


class FakeBmc:
    def __init__(self, answers: dict[str, str | FencingError]) -> None:
        self.answers = answers
        self.asked: list[str] = []
        self.uuids: dict[str, str] = {}

    async def power_state(self, target: BmcTarget) -> str:
        self.asked.append(target.system_url)
        answer = self.answers[target.system_url]
        if isinstance(answer, FencingError):
            raise answer
        return answer

    async def reset(self, target: BmcTarget, reset_type: str) -> None:
        raise AssertionError("a check must never reset a BMC")

    async def system_uuid(self, target: BmcTarget) -> str:
        return self.uuids.get(target.system_url, "")


@pytest.mark.anyio
async def test_fencing_and_balancer_gathering() -> None:
    routes = green_routes()
    nodes = []
    for i in range(8):
        item = node_json(f"n{i}", role="cp")
        item["status"]["nodeInfo"] = {"systemUUID": f"10000000-0000-0000-0000-00000000000{i}"}
        nodes.append(item)
    nodes[7]["metadata"]["annotations"] = {"asklepios.io/bmc": "https://bmc/redfish/v1/Systems/7"}  # a leftover
    routes["GET", "/api/v1/nodes"] = {"items": nodes}
    inventory = {f"n{i}.url": f"https://bmc/redfish/v1/Systems/{i}" for i in range(8)}
    data = {"username": "user", "password": "pw", **inventory}
    routes["GET", "/api/v1/namespaces/kube-system/secrets/asklepios-bmc"] = {
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    }
    routes["GET", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"] = {
        "items": [{"metadata": {"name": f"n{i}"}} for i in range(8)]
    }
    routes["GET", "/api/v1/namespaces/db/pods"] = {
        "items": [
            pod_json(f"maria-{i}", f"n{i}", [], ("StatefulSet", "maria"), namespace="db", labels={"app": "maria"})
            for i in range(3)
        ]
    }
    routes["GET", "/apis/policy/v1/namespaces/db/poddisruptionbudgets"] = {"items": []}
    answers: dict[str, str | FencingError] = {f"https://bmc/redfish/v1/Systems/{i}": "On" for i in range(8)}
    answers["https://bmc/redfish/v1/Systems/0"] = FencingError("https://bmc/redfish/v1/Systems/0: 401 Unauthorized")
    bmc = FakeBmc(answers)
    bmc.uuids = {url: f"10000000-0000-0000-0000-00000000000{url[-1]}" for url in answers}
    bmc.uuids["https://bmc/redfish/v1/Systems/3"] = "10000000-0000-0000-0000-000000000004"  # the neighbour's BMC
    settings = Settings(
        node_selector=parse_selector("role=cp"),
        fencing="redfish",
        balancer=True,
        balancer_namespaces=("db",),
    )
    findings = await run_checks(settings, cast(KubeClient, FakeApi(routes)), bmc=bmc)
    assert len(bmc.asked) == 5  # a sample of 8
    statuses = [(f.check, f.status) for f in findings]
    assert ("balancer", WARN) in statuses
    fencing = next(f for f in findings if f.check == "fencing")
    assert fencing.status is FAIL
    assert "the BMC of n0 did not answer" in fencing.message
    assert "401 Unauthorized" in fencing.message
    fencing_failures = [f.message for f in findings if f.check == "fencing" and f.status is FAIL]
    assert len(fencing_failures) == 2
    assert (
        "https://bmc/redfish/v1/Systems/3 reports System UUID 10000000-0000-0000-0000-000000000004, but n3"
        in (fencing_failures[1])
    )
    [leftover] = [f for f in findings if f.check == "fencing" and f.status is WARN]
    assert "1 node still has the asklepios.io/bmc annotation" in leftover.message
    assert leftover.message.endswith(": n7")


def test_run_logs_each_warning_and_failure_once(caplog: pytest.LogCaptureFixture) -> None:
    findings = [
        Finding(OK, "version", "fine"),
        Finding(WARN, "pods", "3 pods ...", "drop it"),
        Finding(FAIL, "rbac", "missing: patch nodes", "grant it"),
    ]
    with caplog.at_level(logging.INFO, logger="asklepios.check"):
        log_findings(findings)
    checks = [r for r in caplog.records if hasattr(r, "check")]
    assert [(r.levelname, r.check, r.result, r.detail, r.todo) for r in checks] == [  # type: ignore[attr-defined]
        ("WARNING", "pods", "warning", "3 pods ...", "drop it"),
        ("ERROR", "rbac", "failure", "missing: patch nodes", "grant it"),
    ]
    assert all(r.name == "asklepios.check" for r in caplog.records)


def test_findings_are_frozen_values() -> None:
    finding = Finding(OK, "nodes", "fine")
    with pytest.raises(AttributeError):
        finding.message = "changed"  # type: ignore[misc]


# --- the command ---------------------------------------------------------------------------


def test_check_with_bad_configuration_exits_2_without_an_api_call(
    silent_apiserver: tuple[socket.socket, Path],  # noqa: F811
) -> None:
    listener, kubeconfig = silent_apiserver
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASKLEPIOS_")}
    env.update({"KUBECONFIG": str(kubeconfig), "ASKLEPIOS_MAX_UNHEALTHY": "half"})
    done = subprocess.run(
        [sys.executable, "-m", "asklepios", "check"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("asklepios: ASKLEPIOS_MAX_UNHEALTHY='half' is not allowed: expected")
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody connected: no API call was made


def test_check_is_a_subcommand() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "asklepios", "check", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert "change nothing" in done.stdout


def test_a_node_without_an_internal_ip_cannot_be_probed_and_check_says_so() -> None:
    """Issue 19.1: no InternalIP, nothing to probe: only the Lease (and fencing) can show life."""
    seen = [NodeView(name="a", addresses=("127.0.10.1",)), NodeView(name="b"), NodeView(name="c")]
    finding = probe_finding(seen, (10250,))
    assert finding is not None and finding.status is WARN
    assert finding.check == "probe" and "2 watched nodes have no InternalIP" in finding.message
    assert finding.message.endswith("b, c") and "fencing" in finding.todo
    assert probe_finding(seen[:1], (10250,)) is None  # every node can be asked: no line at all
    assert probe_finding(seen, ()) is None  # no probe configured: nothing to warn about
