"""Preflight rules about the apiserver itself: its version, and the RBAC the settings need.

`required_access` is the one table of what the settings need from RBAC: `asklepios
check` reviews it and a unit test proves that k8s/ grants exactly it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs

from asklepios.core.preflight.findings import (
    LEASE_NAME,
    NODE_LEASE_NAMESPACE,
    RBAC,
    SEE_RBAC,
    VERSION,
    Finding,
    Status,
    failure,
    names,
    ok,
    plural,
    warning,
)
from asklepios.core.records import BALANCER_CONFIGMAP, RECORDS_CONFIGMAP

# --- server version -------------------------------------------------------------------

_LEADING_NUMBER = re.compile(r"^\s*(\d+)")
_GIT_VERSION = re.compile(r"^\s*v?(\d+)\.(\d+)")


def parse_version(git_version: str, major: str = "", minor: str = "") -> tuple[int, int] | None:
    """(major, minor) from /version: its major/minor fields ("1", "28+"), else gitVersion ("v1.28.15-eks-1")."""
    found_major, found_minor = _LEADING_NUMBER.match(major or ""), _LEADING_NUMBER.match(minor or "")
    if found_major and found_minor:
        return int(found_major.group(1)), int(found_minor.group(1))
    found = _GIT_VERSION.match(git_version or "")
    if found:
        return int(found.group(1)), int(found.group(2))
    return None


def version_finding(git_version: str, major: str = "", minor: str = "") -> Finding:
    """The out-of-service taint: alpha and off before 1.26, beta (on) in 1.26 and 1.27, GA from 1.28."""
    parsed = parse_version(git_version, major, minor)
    shown = git_version.strip() or f"{major}.{minor}"
    if parsed is None:
        return warning(
            VERSION,
            f"cannot tell the Kubernetes version from /version (gitVersion={git_version!r}, "
            f"major={major!r}, minor={minor!r})",
            "make sure the control plane runs Kubernetes 1.28 or later",
        )
    if parsed < (1, 26):
        return Finding(
            Status.FAILURE,
            VERSION,
            f"Kubernetes {shown} is too old: the out-of-service taint (non-graceful node shutdown) "
            "is off before 1.26, so a kickout would not move any pod",
            "upgrade the control plane to 1.28 or later",
            blocks_start=True,
        )
    if parsed < (1, 28):
        return warning(
            VERSION,
            f"Kubernetes {shown}: the out-of-service taint is beta (feature gate NodeOutOfServiceVolumeDetach, "
            "on by default)",
            "upgrade to 1.28 or later, or make sure kube-controller-manager does not turn that feature gate off",
        )
    return ok(VERSION, f"Kubernetes {shown}: the out-of-service taint is GA")


# --- RBAC -------------------------------------------------------------------------------

_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@attrs.frozen
class ServiceAccount:
    """`check --as-serviceaccount NS/NAME`: whose rights a SubjectAccessReview asks about."""

    namespace: str
    name: str

    @classmethod
    def parse(cls, raw: str) -> ServiceAccount:
        """`kube-system/asklepios`; ValueError (saying what is allowed) otherwise."""
        namespace, _, name = raw.strip().partition("/")
        if not _NAMESPACE.match(namespace) or not _NAME.match(name) or len(name) > 253:
            raise ValueError("NAMESPACE/NAME of a ServiceAccount, e.g. kube-system/asklepios")
        return cls(namespace, name)

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"

    @property
    def groups(self) -> tuple[str, ...]:
        """The groups the apiserver gives every ServiceAccount token."""
        return ("system:serviceaccounts", f"system:serviceaccounts:{self.namespace}", "system:authenticated")

    def __str__(self) -> str:
        return f"ServiceAccount {self.namespace}/{self.name}"


@attrs.frozen(order=True)
class Need:
    """One permission Asklepios needs: an access review's resourceAttributes, and why."""

    verb: str
    resource: str  # plural, "pods/eviction" for a subresource
    group: str = ""
    namespace: str = ""  # "": every namespace (or a cluster-scoped resource)
    name: str = ""  # "": any name
    why: str = attrs.field(default="", eq=False, order=False)

    @property
    def text(self) -> str:
        """`patch nodes`, `create pods/eviction`, `get coordination.k8s.io leases "asklepios" in kube-system`."""
        what = f"{self.group} {self.resource}" if self.group else self.resource
        out = f"{self.verb} {what}"
        if self.name:
            out += f" {self.name!r}"
        return out + (f" in {self.namespace}" if self.namespace else "")

    def resource_attributes(self) -> dict[str, str]:
        resource, _, subresource = self.resource.partition("/")
        attributes = {"verb": self.verb, "group": self.group, "resource": resource}
        if subresource:
            attributes["subresource"] = subresource
        if self.namespace:
            attributes["namespace"] = self.namespace
        if self.name:
            attributes["name"] = self.name
        return attributes


def required_access(
    namespace: str,
    *,
    leader_election: bool,
    force_delete: bool,
    balancer: bool,
    fencing: bool,
    fencing_secret: str,
) -> tuple[Need, ...]:
    """Every permission these settings need (the one table; k8s/base/rbac.yaml grants the union)."""
    needs = [
        *(Need(v, "nodes", why="follow node readiness; cordon, taint and annotate") for v in ("get", "list", "watch")),
        Need("patch", "nodes", why="kickout and kickin: cordon, taint and annotate"),
        *(Need(v, "pods", why="the pods of kicked-out nodes and the balancer's pods") for v in ("list", "watch")),
        Need("create", "events", why="NodeKickedOut, KickoutHeld and the other Events"),
        *(
            Need(v, "volumeattachments", "storage.k8s.io", why="VolumesReleased: a kicked-out node's volumes free")
            for v in ("list", "watch")
        ),
        Need("list", "persistentvolumes", why="check: StatefulSets whose volumes are bound to one node"),
        *(
            Need(v, "leases", "coordination.k8s.io", NODE_LEASE_NAMESPACE, why="is the kubelet silent?")
            for v in ("get", "list")
        ),
        Need("create", "configmaps", "", namespace, why="Asklepios' own records (first use)"),
        *(
            Need(v, "configmaps", "", namespace, RECORDS_CONFIGMAP, why="Asklepios' own records")
            for v in ("get", "list", "watch", "patch")
        ),
    ]
    if leader_election:
        needs += [
            Need("create", "leases", "coordination.k8s.io", namespace, why="leader election"),
            *(
                Need(v, "leases", "coordination.k8s.io", namespace, LEASE_NAME, why="leader election")
                for v in ("get", "update")
            ),
        ]
    if force_delete:
        needs.append(Need("delete", "pods", why="ASKLEPIOS_FORCE_DELETE: force-delete a kicked-out node's pods"))
    if balancer:
        needs += [
            Need("create", "pods/eviction", why="the balancer moves pods through the Eviction API"),
            Need("get", "statefulsets", "apps", why="the balancer reads a StatefulSet's replicas"),
            *(
                Need(v, "configmaps", "", namespace, BALANCER_CONFIGMAP, why="the balancer's state across leaders")
                for v in ("get", "patch")
            ),
            Need("list", "poddisruptionbudgets", "policy", why="asklepios check: StatefulSets without a PDB"),
        ]
    if fencing:
        needs.append(Need("get", "secrets", "", namespace, fencing_secret, why="the BMC credentials"))
    return tuple(needs)


@attrs.frozen
class Review:
    """The answer of one access review: allowed, or why it could not be asked."""

    need: Need
    allowed: bool
    error: str = ""  # the review itself failed


CANNOT_REVIEW_OTHERS = (
    "ask for `create subjectaccessreviews` (authorization.k8s.io; e.g. the ClusterRole system:auth-delegator), "
    "or run the check as that ServiceAccount (in a pod, or with its token)"
)


def rbac_findings(reviews: Sequence[Review], subject: ServiceAccount | None = None) -> list[Finding]:
    """A failure per permission denied; one warning for those that could not be reviewed.

    With `subject`, the reviews asked about that ServiceAccount (SubjectAccessReviews):
    when the caller may not ask (403), that is a failure, since nothing was checked.
    """
    out = []
    whose = f"{subject} is " if subject else ""
    if subject is not None and reviews and all(r.error.startswith("403") for r in reviews):
        return [
            failure(
                RBAC,
                f"cannot check the rights of {subject}: you may not create subjectaccessreviews: {reviews[0].error}",
                CANNOT_REVIEW_OTHERS,
            )
        ]
    for review in reviews:
        need = review.need
        if not review.error and not review.allowed:
            scope = "" if need.namespace else " (all namespaces)"
            out.append(failure(RBAC, f"{whose}missing: {need.text}{scope}, needed for: {need.why}", SEE_RBAC))
    unknown = [r for r in reviews if r.error]
    if unknown:
        which = f"{plural(len(unknown), 'permission')} ({names(r.need.text for r in unknown)})"
        if len(unknown) == len(reviews):
            which = f"the {plural(len(reviews), 'permission')} these settings need"
        out.append(
            warning(
                RBAC,
                f"could not review {which}: {unknown[0].error}",
                "make sure the apiserver answers, then run the check again",
            )
        )
    if not out:
        to = f" to {subject}" if subject else ""
        out.append(ok(RBAC, f"all {len(reviews)} permissions these settings need are granted{to}"))
    return out
