"""`check --as-serviceaccount` and the settings' own findings, without a cluster."""

from __future__ import annotations

import pytest

from asklepios.core.preflight import Need, Review, Status, rbac_findings
from asklepios.core.preflight.access import ServiceAccount
from asklepios.core.preflight.settings import UNFENCED, settings_findings

NEEDS = [Need("patch", "nodes", why="kickout"), Need("list", "pods", why="pods")]


def test_service_account_parses_and_names_the_identity_the_apiserver_gives_it() -> None:
    sa = ServiceAccount.parse("kube-system/asklepios")
    assert sa.user == "system:serviceaccount:kube-system:asklepios"
    assert sa.groups == ("system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated")
    assert str(sa) == "ServiceAccount kube-system/asklepios"


@pytest.mark.parametrize("raw", ["asklepios", "kube-system/", "/asklepios", "Kube/x", "a/b/c", "ns/UPPER"])
def test_service_account_refuses_what_is_not_namespace_slash_name(raw: str) -> None:
    with pytest.raises(ValueError, match="NAMESPACE/NAME"):
        ServiceAccount.parse(raw)


def test_findings_name_the_service_account() -> None:
    sa = ServiceAccount("ops", "healer")
    [missing] = rbac_findings([Review(NEEDS[0], allowed=False), Review(NEEDS[1], allowed=True)], sa)
    assert missing.status is Status.FAILURE
    assert missing.message == "ServiceAccount ops/healer is missing: patch nodes (all namespaces), needed for: kickout"
    [granted] = rbac_findings([Review(n, allowed=True) for n in NEEDS], sa)
    assert granted.message == "all 2 permissions these settings need are granted to ServiceAccount ops/healer"


def test_a_caller_who_may_not_ask_is_told_so_as_a_failure() -> None:
    sa = ServiceAccount("ops", "healer")
    denied = '403: subjectaccessreviews.authorization.k8s.io is forbidden: User "dev" cannot create resource'
    [finding] = rbac_findings([Review(n, allowed=False, error=denied) for n in NEEDS], sa)
    assert finding.status is Status.FAILURE
    assert finding.message.startswith("cannot check the rights of ServiceAccount ops/healer: you may not create")
    assert "system:auth-delegator" in finding.todo
    # without a subject, a review that could not be made stays a warning, as before
    [own] = rbac_findings([Review(n, allowed=False, error=denied) for n in NEEDS])
    assert own.status is Status.WARNING


def test_settings_findings_unknown_variables_then_unfenced() -> None:
    found = settings_findings(fencing_on=False, unknown=["ASKLEPIOS_X is not an Asklepios setting"])
    assert [(f.status, f.check) for f in found] == [(Status.WARNING, "config"), (Status.WARNING, "fencing")]
    assert found[1].message == UNFENCED
    assert settings_findings(fencing_on=True, unknown=[]) == []
