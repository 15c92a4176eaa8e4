"""`asklepios check`'s `volumes` rule: StatefulSets whose volumes are bound to one node cannot move."""

from __future__ import annotations

from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asklepios.config import Settings
from asklepios.core.preflight import PinnedVolume, Status, pinned_nodes, pinned_volume_finding
from asklepios.core.preflight.volumes import HOSTNAME_LABEL, NodeTerm
from asklepios.core.selector import parse_selector
from asklepios.engine.preflight import run_checks
from asklepios.kube.access import parse_pinned_volume, parse_pod_seen
from asklepios.kube.client import KubeClient
from tests.unit.test_preflight import FakeApi, green_routes, pod_json

ZONE = "topology.kubernetes.io/zone"


def local_pv(name: str, node: str, claim: tuple[str, str] | None, *, key: str = HOSTNAME_LABEL) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "local": {"path": "/mnt/disks/1"},
        "nodeAffinity": {
            "required": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": key, "operator": "In", "values": [node]}]}]
            }
        },
    }
    if claim:
        spec["claimRef"] = {"namespace": claim[0], "name": claim[1]}
    return {"metadata": {"name": name}, "spec": spec}


def sts_pod(name: str, node: str, claim: str, namespace: str = "db", owner: str = "maria") -> dict[str, Any]:
    pod = pod_json(name, node, [], ("StatefulSet", owner), namespace=namespace, labels={"app": owner})
    pod["spec"]["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}, {"name": "tmp"}]
    return pod


def test_pinned_nodes_are_those_every_term_names() -> None:
    host = (HOSTNAME_LABEL, "In", ("a",))
    assert pinned_nodes([(host,)]) == ("a",)
    assert pinned_nodes([(host,), ((HOSTNAME_LABEL, "In", ("b", "c")),)]) == ("a", "b", "c")  # terms are ORed
    assert pinned_nodes([(("field:metadata.name", "In", ("d",)),)]) == ("d",)
    assert pinned_nodes([(host, (HOSTNAME_LABEL, "In", ("a", "b")))]) == ("a",)  # ANDed within a term
    assert pinned_nodes([((ZONE, "In", ("z1",)),)]) is None  # a zonal volume attaches on any node of its zone
    assert pinned_nodes([(host,), ((ZONE, "In", ("z1",)),)]) is None  # one open term: not pinned
    assert pinned_nodes([((HOSTNAME_LABEL, "NotIn", ("a",)),)]) is None
    assert pinned_nodes([(("metadata.name", "In", ("a",)),)]) is None  # a label of that name is not the field
    assert pinned_nodes([]) is None


requirements = st.tuples(
    st.sampled_from([HOSTNAME_LABEL, "field:metadata.name", ZONE, "rack"]),
    st.sampled_from(["In", "NotIn", "Exists"]),
    st.lists(st.sampled_from("abcd"), min_size=1, max_size=3).map(tuple),
)


@given(st.lists(st.lists(requirements, min_size=1, max_size=3).map(tuple), max_size=4))
def test_a_pinned_volume_allows_only_named_nodes(terms: list[NodeTerm]) -> None:
    """Pinned only when every term names its nodes; then each node it returns is one some term allows."""
    nodes = pinned_nodes(terms)
    naming = [[set(v) for k, op, v in t if op == "In" and k in (HOSTNAME_LABEL, "field:metadata.name")] for t in terms]
    assert (nodes is None) == (not terms or any(not named for named in naming))
    for node in nodes or ():
        assert any(all(node in names for names in named) for named in naming)


def test_a_local_pv_is_parsed_and_a_zonal_or_free_one_is_not() -> None:
    assert parse_pinned_volume(local_pv("pv-1", "a", ("db", "data-maria-0"))) == PinnedVolume(
        "pv-1", "db", "data-maria-0", ("a",)
    )
    assert parse_pinned_volume(local_pv("pv-2", "z1", ("db", "data-maria-1"), key=ZONE)) is None
    assert parse_pinned_volume(local_pv("pv-3", "a", None)) is None  # not claimed: nothing uses it
    assert parse_pinned_volume({"metadata": {"name": "nfs"}, "spec": {"claimRef": {"name": "x"}}}) is None
    fields = local_pv("pv-4", "b", ("db", "c"))
    term = fields["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]
    term["matchFields"] = term.pop("matchExpressions")
    term["matchFields"][0]["key"] = "metadata.name"
    assert parse_pinned_volume(fields) == PinnedVolume("pv-4", "db", "c", ("b",))


def test_statefulsets_on_pinned_volumes_are_named_with_their_nodes() -> None:
    volumes = [PinnedVolume("pv-0", "db", "data-maria-0", ("a",)), PinnedVolume("pv-1", "db", "data-maria-1", ("b",))]
    pods = [
        parse_pod_seen(sts_pod("maria-0", "a", "data-maria-0")),
        parse_pod_seen(sts_pod("maria-1", "b", "data-maria-1")),
        parse_pod_seen(sts_pod("web-0", "a", "data-maria-0", namespace="web", owner="web")),  # another namespace
    ]
    assert pods[0].claims == ("data-maria-0",)
    finding = pinned_volume_finding(pods, volumes)
    assert finding.status is Status.WARNING
    assert "1 StatefulSet has volumes bound to one node" in finding.message
    assert finding.message.endswith(": db/maria (on a, b)")
    assert "a kickout only deletes them" in finding.message
    assert pinned_volume_finding(pods[2:], volumes).status is Status.OK
    assert pinned_volume_finding(pods, []).status is Status.OK


@pytest.mark.anyio
async def test_check_reads_pods_only_where_pinned_volumes_are() -> None:
    routes = green_routes()
    api = FakeApi(routes)
    settings = Settings(node_selector=parse_selector("role=cp"))
    findings = await run_checks(settings, cast(KubeClient, api))
    assert [f.status for f in findings if f.check == "volumes"] == [Status.OK]
    assert not [p for _, p, _ in api.requests if p.startswith("/api/v1/namespaces/")]  # no local PV: no pod read

    routes["GET", "/api/v1/persistentvolumes"] = {
        "items": [local_pv("pv-a", "a", ("db", "data-maria-0")), local_pv("pv-z", "z1", ("web", "w"), key=ZONE)]
    }
    routes["GET", "/api/v1/namespaces/db/pods"] = {
        "items": [sts_pod("maria-0", "a", "data-maria-0"), sts_pod("other-0", "x", "data-maria-0", owner="other")]
    }
    api = FakeApi(routes)
    findings = await run_checks(settings, cast(KubeClient, api))
    [volumes] = [f for f in findings if f.check == "volumes"]
    assert volumes.status is Status.WARNING
    assert volumes.message.endswith(": db/maria (on a)")  # other-0 runs on a node nobody watches
    assert {p for _, p, _ in api.requests if p.startswith("/api/v1/namespaces/")} == {"/api/v1/namespaces/db/pods"}

    balanced = Settings(node_selector=parse_selector("role=cp"), balancer=True)
    routes["GET", "/api/v1/namespaces/db/pods"]["items"][1]["metadata"]["labels"]["asklepios.io/balance"] = "true"
    routes["GET", "/apis/policy/v1/poddisruptionbudgets"] = {"items": []}
    findings = await run_checks(balanced, cast(KubeClient, FakeApi(routes)))
    [volumes] = [f for f in findings if f.check == "volumes"]
    assert volumes.message.endswith(": db/maria (on a), db/other (on a)")  # the balancer's, wherever it runs
