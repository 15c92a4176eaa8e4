"""A node's own identity in the lab: what ``system:node:<name>`` can and cannot write.

Every kubelet holds credentials for its node's identity, so whoever owns one node can act
as it. The lab's apiserver runs the Node authorizer and NodeRestriction admission as a
kubeadm cluster does, and :meth:`~asklepios_lab.ControlPlane.as_node` gives tests that
identity. This checks the threat model Asklepios is built against, on both releases,
from the apiserver's own answers: a node CAN rewrite its own annotations, status and
Lease (so nothing Asklepios reads from there may choose an action on anything else),
and CANNOT touch its protected labels, its taints, other nodes, or Secrets.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from asklepios_lab import ApiError, ControlPlane

from .conftest import NodeFactory

LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"


def _refused(action: Callable[..., object], *args: object) -> int:
    """The HTTP status with which the apiserver refused ``action(*args)``."""
    with pytest.raises(ApiError) as exc:
        action(*args)
    return exc.value.status


@pytest.mark.both_releases
@pytest.mark.timeout(90)
def test_a_node_identity_writes_its_annotations_and_status_but_not_labels_taints_or_others(
    control_plane: ControlPlane, nodes: NodeFactory
) -> None:
    cp = control_plane
    me, other = nodes.add(), nodes.add()
    api = cp.as_node(me)

    review = api.create(
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
    )
    user = review["status"]["userInfo"]
    assert user["username"] == f"system:node:{me}"
    assert "system:nodes" in user["groups"]

    # CAN: its own annotations (anything Asklepios might read from there), status, Lease
    forged = {"asklepios.io/bmc": "https://127.0.0.1:1/redfish/v1/Systems/x", "asklepios.io/kickout": "{not json"}
    api.patch(f"/api/v1/nodes/{me}", {"metadata": {"annotations": forged}})
    annotations = cp.node(me)["metadata"]["annotations"]
    assert {k: annotations.get(k) for k in forged} == forged
    cond = {"type": "LabIdentityTest", "status": "True", "reason": "ByTheNode", "message": "written as the node"}
    api.patch(f"/api/v1/nodes/{me}/status", {"status": {"conditions": [cond]}}, "strategic")
    written = [c for c in cp.node(me)["status"]["conditions"] if c["type"] == "LabIdentityTest"]
    assert [(c["status"], c["reason"]) for c in written] == [("True", "ByTheNode")]
    api.patch(f"{LEASES}/{me}", {"spec": {"renewTime": "2020-01-01T00:00:00.000000Z"}})
    assert cp.api.get(f"{LEASES}/{me}")["spec"]["renewTime"].startswith("2020-01-01T00:00:00")

    # CANNOT: its node-restriction labels, its taints, another node, another Lease, Secrets
    restricted = {"metadata": {"labels": {"node-restriction.kubernetes.io/fenced": "false"}}}
    assert _refused(api.patch, f"/api/v1/nodes/{me}", restricted) == 403
    taint = {"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown", "effect": "NoExecute"}
    assert _refused(api.patch, f"/api/v1/nodes/{me}", {"spec": {"taints": [taint]}}) == 403
    assert _refused(api.patch, f"/api/v1/nodes/{other}", {"metadata": {"annotations": forged}}) == 403
    assert _refused(api.patch, f"/api/v1/nodes/{other}/status", {"status": {"conditions": [cond]}},
                    "strategic") == 403  # fmt: skip
    assert _refused(api.patch, f"{LEASES}/{other}", {"spec": {"renewTime": "2020-01-01T00:00:00.000000Z"}}) == 403
    assert _refused(api.get, "/api/v1/namespaces/kube-system/secrets") == 403

    # and the refused writes left no trace, read back as admin
    mine, theirs = cp.node(me), cp.node(other)
    assert "node-restriction.kubernetes.io/fenced" not in mine["metadata"]["labels"]
    assert not any(t["key"] == taint["key"] for t in mine["spec"].get("taints") or [])
    assert not set(forged) & set(theirs["metadata"].get("annotations") or {})
    assert not any(c["type"] == "LabIdentityTest" for c in theirs["status"]["conditions"])
