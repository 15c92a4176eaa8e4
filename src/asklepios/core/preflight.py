"""`asklepios check`: the preflight rules, pure.

Each rule takes plain values (a version string, node views, pods, permissions and
whether they are granted) and returns `Finding`s: ok, warning or failure, what was
found, and what the operator should do about it. Gathering them from the cluster
is `engine.preflight`'s job, printing them the CLI's. `required_access` is the one
table of what the settings need from RBAC: `asklepios check` reviews it and a unit
test proves that k8s/ grants exactly it, so the two cannot drift apart.
"""

from __future__ import annotations

import enum
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

import attrs

from asklepios.core.balance import OwnerRef
from asklepios.core.fencing import FencingError, bmc_target, check_system_url
from asklepios.core.guard import MaxUnhealthy, hold_reason
from asklepios.core.node import EXCLUDE_LABEL, LEGACY_SKIP_TAINT_KEY, OUT_OF_SERVICE_TAINT, NodeView
from asklepios.core.placement import Toleration
from asklepios.core.records import BMC_ANNOTATION
from asklepios.core.selector import LabelSelector

# The checks, in the order they are printed.
VERSION = "version"
RBAC = "rbac"
NODES = "nodes"
GUARD = "max-unhealthy"
PODS = "pods"
LEASES = "node-leases"
BALANCER = "balancer"
FENCING = "fencing"

NODE_LEASE_NAMESPACE = "kube-node-lease"
LEASE_NAME = "asklepios"
SEE_RBAC = "grant it: see README 'RBAC' (k8s/base/rbac.yaml)"
MAX_NAMES = 10
BMC_SAMPLE = 5


class Status(enum.Enum):
    OK = "ok"
    WARNING = "warning"
    FAILURE = "failure"

    @property
    def symbol(self) -> str:
        return {"ok": "✔", "warning": "!", "failure": "✘"}[self.value]


@attrs.frozen
class Finding:
    """One line of `asklepios check`: what was found and, unless ok, what to do."""

    status: Status
    check: str
    message: str
    todo: str = ""
    blocks_start: bool = False  # `asklepios run` refuses to start (only a too old apiserver)


def ok(check: str, message: str) -> Finding:
    return Finding(Status.OK, check, message)


def warning(check: str, message: str, todo: str) -> Finding:
    return Finding(Status.WARNING, check, message, todo)


def failure(check: str, message: str, todo: str) -> Finding:
    return Finding(Status.FAILURE, check, message, todo)


def exit_status(findings: Iterable[Finding]) -> int:
    """0 when nothing failed, 1 otherwise."""
    return 1 if any(f.status is Status.FAILURE for f in findings) else 0


def names(items: Iterable[str], limit: int = MAX_NAMES) -> str:
    """`a, b, c`, or the first `limit` and "and N more"."""
    listed = list(items)
    shown = ", ".join(listed[:limit])
    return f"{shown} and {len(listed) - limit} more" if len(listed) > limit else shown


def _plural(count: int, noun: str, many: str | None = None) -> str:
    return f"{count} {noun if count == 1 else (many or noun + 's')}"


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
            Need(v, "leases", "coordination.k8s.io", NODE_LEASE_NAMESPACE, why="is the kubelet silent?")
            for v in ("get", "list")
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


def rbac_findings(reviews: Sequence[Review]) -> list[Finding]:
    """A failure per permission denied; one warning for those that could not be reviewed."""
    out = []
    for review in reviews:
        need = review.need
        if not review.error and not review.allowed:
            scope = "" if need.namespace else " (all namespaces)"
            out.append(failure(RBAC, f"missing: {need.text}{scope}, needed for: {need.why}", SEE_RBAC))
    unknown = [r for r in reviews if r.error]
    if unknown:
        which = f"{_plural(len(unknown), 'permission')} ({names(r.need.text for r in unknown)})"
        if len(unknown) == len(reviews):
            which = f"the {_plural(len(reviews), 'permission')} these settings need"
        out.append(
            warning(
                RBAC,
                f"could not review {which}: {unknown[0].error}",
                "make sure the apiserver answers, then run the check again",
            )
        )
    if not out:
        out.append(ok(RBAC, f"all {len(reviews)} permissions these settings need are granted"))
    return out


# --- watched nodes and the guard -------------------------------------------------------


def kickable(views: Iterable[NodeView]) -> list[NodeView]:
    """The nodes that can be kicked out: watched and not excluded (what the guard counts)."""
    return [v for v in views if v.excluded_by is None]


def nodes_finding(selector: str, views: Sequence[NodeView]) -> Finding:
    if not views:
        return failure(
            NODES,
            f"no node matches ASKLEPIOS_NODE_SELECTOR={selector!r}: nothing is watched",
            "label the nodes to heal or fix ASKLEPIOS_NODE_SELECTOR",
        )
    excluded = [v.name for v in views if v.excluded_by is not None]
    message = f"{_plural(len(views), 'node')} {'matches' if len(views) == 1 else 'match'} {selector!r}"
    if excluded:
        message += f" ({len(excluded)} excluded: {names(excluded)})"
    return ok(NODES, message)


def guard_finding(max_unhealthy: MaxUnhealthy, views: Sequence[NodeView]) -> Finding:
    """What ASKLEPIOS_MAX_UNHEALTHY comes to on these nodes, and what would silently stop a kickout.

    The guard counts the watched, non-excluded nodes that are NotReady, including those
    already kicked out and still down: a dead node left kicked out uses up the budget.
    """
    setting = f"ASKLEPIOS_MAX_UNHEALTHY={max_unhealthy}"
    counted = kickable(views)
    total = len(counted)
    if total == 0:
        return warning(
            GUARD,
            f"all {_plural(len(views), 'watched node')} are excluded: none will ever be kicked out",
            f"remove the label {EXCLUDE_LABEL}=true or the taint {LEGACY_SKIP_TAINT_KEY}=skip from the nodes to heal",
        )
    limit = max_unhealthy.limit(total)
    down = sorted(v.name for v in counted if not v.ready.is_ready)
    sentence = f"{_plural(total, 'watched node')}: kickouts held while more than {limit} {_be(limit)} NotReady"
    if limit >= total:
        sentence = f"{_plural(total, 'watched node')}: kickouts are never held ({setting} allows all {total})"
    held = hold_reason(max_unhealthy, total, len(down))
    if held is not None:
        return warning(
            GUARD,
            f"kickouts are held now: {held}: {names(down)}",
            "bring the NotReady nodes back, or exclude the ones that stay down (label asklepios.io/exclude=true)",
        )
    if down and len(down) == limit and limit < total:
        return warning(
            GUARD,
            f"{sentence}; {_plural(len(down), 'is', 'are')} NotReady now ({names(down)}): "
            "the next node to fail will be held, not kicked out",
            "bring the NotReady nodes back, or exclude the ones that stay down (label asklepios.io/exclude=true)",
        )
    if total == 1:
        return warning(
            GUARD,
            f"only 1 watched node ({counted[0].name}): its kickout needs the apiserver and an Asklepios replica "
            "running elsewhere; if it is the only control-plane node, nothing is left to kick it out",
            "watch every node whose pods should move (ASKLEPIOS_NODE_SELECTOR)",
        )
    return ok(GUARD, sentence + (f" ({len(down)} NotReady now)" if down else ""))


def _be(count: int) -> str:
    return "is" if count == 1 else "are"


# --- pods that never move --------------------------------------------------------------


@attrs.frozen
class PodSeen:
    """A pod as `asklepios check` reads it."""

    namespace: str
    name: str
    node: str = ""
    owner: OwnerRef | None = None  # the controller ownerReference
    labels: Mapping[str, str] = MappingProxyType({})
    tolerations: tuple[Toleration, ...] = ()
    finished: bool = False  # phase Succeeded or Failed

    @property
    def owner_text(self) -> str:
        """`DaemonSet kube-system/cilium`, `static pods on node1`, or the pod itself."""
        if self.owner is None:
            return f"Pod {self.namespace}/{self.name}"
        if self.owner.kind == "Node":
            return f"static pods on {self.owner.name}"
        return f"{self.owner.kind} {self.namespace}/{self.owner.name}"


def tolerates_out_of_service(tolerations: Iterable[Toleration]) -> bool:
    """A toleration of `node.kubernetes.io/out-of-service=nodeshutdown:NoExecute` (a catch-all included)."""
    taint = OUT_OF_SERVICE_TAINT
    return any(t.tolerates(taint.key, taint.value, taint.effect) for t in tolerations)


def never_move_finding(pods: Iterable[PodSeen], nodes: Iterable[str]) -> Finding:
    """Pods on kickable nodes that the out-of-service taint never removes, by owner."""
    where = set(nodes)
    staying = [p for p in pods if p.node in where and not p.finished and tolerates_out_of_service(p.tolerations)]
    if not staying:
        return ok(PODS, "no pod on the watched nodes tolerates the out-of-service taint")
    owners = Counter(p.owner_text for p in staying)
    listed = [f"{owner}: {_plural(count, 'pod')}" for owner, count in sorted(owners.items(), key=_by_count)]
    return warning(
        PODS,
        f"{_plural(len(staying), 'pod')} on watched nodes tolerate the out-of-service taint and never leave "
        f"a kicked-out node (their volumes stay attached): {names(listed)}",
        "fine for DaemonSets and static pods; for others drop the catch-all toleration "
        "(operator: Exists without a key) or give it a key",
    )


def _by_count(item: tuple[str, int]) -> tuple[int, str]:
    return -item[1], item[0]


# --- balancer: PodDisruptionBudgets ----------------------------------------------------


@attrs.frozen
class Budget:
    """A PodDisruptionBudget: its namespace and selector (None: selects no pod)."""

    namespace: str
    name: str
    selector: LabelSelector | None

    def selects(self, pod: PodSeen) -> bool:
        return self.selector is not None and pod.namespace == self.namespace and self.selector.matches(pod.labels)


def unprotected_statefulsets(pods: Iterable[PodSeen], budgets: Sequence[Budget]) -> tuple[list[str], list[str]]:
    """(every StatefulSet among `pods`, those with a pod no PodDisruptionBudget selects), as `ns/name`."""
    members: dict[str, list[PodSeen]] = defaultdict(list)
    for pod in pods:
        if pod.owner is not None and pod.owner.kind == "StatefulSet":
            members[f"{pod.namespace}/{pod.owner.name}"].append(pod)
    bare = [sts for sts, ps in members.items() if not all(any(b.selects(p) for b in budgets) for p in ps)]
    return sorted(members), sorted(bare)


def balancer_finding(
    pods: Iterable[PodSeen], budgets: Sequence[Budget], selector: str, namespaces: Sequence[str]
) -> Finding:
    where = f"in {', '.join(namespaces)}" if namespaces else "in any namespace"
    managed, bare = unprotected_statefulsets(pods, budgets)
    if not managed:
        return warning(
            BALANCER,
            f"no StatefulSet pod matches ASKLEPIOS_BALANCER_SELECTOR={selector!r} {where}: the balancer moves nothing",
            "label the StatefulSets' pods or fix ASKLEPIOS_BALANCER_SELECTOR / ASKLEPIOS_BALANCER_NAMESPACES",
        )
    if bare:
        return warning(
            BALANCER,
            f"{_plural(len(bare), 'StatefulSet')} the balancer moves {_be(len(bare))} not covered by a "
            f"PodDisruptionBudget: {names(bare)}",
            "add a PodDisruptionBudget (e.g. maxUnavailable: 1) selecting their pods, "
            "so that an eviction never takes a quorum down",
        )
    return ok(BALANCER, f"{_plural(len(managed), 'StatefulSet')} to balance, each covered by a PodDisruptionBudget")


# --- fencing ---------------------------------------------------------------------------


def sample(items: Sequence[str], size: int = BMC_SAMPLE) -> list[str]:
    """All of `items` when there are at most `size`, else `size` of them spread evenly."""
    if len(items) <= size:
        return list(items)
    return [items[i * len(items) // size] for i in range(size)]


def fencing_findings(
    views: Sequence[NodeView], secret: Mapping[str, str] | None, secret_error: str, secret_name: str
) -> tuple[list[Finding], list[NodeView]]:
    """Annotations, URLs and credentials of the kickable nodes; and the nodes whose BMC can be asked."""
    out: list[Finding] = []
    missing = sorted(v.name for v in views if not v.bmc)
    if missing:
        out.append(
            failure(
                FENCING,
                f"{len(missing)} of {_plural(len(views), 'watched node')} {_have(len(missing))} no {BMC_ANNOTATION} "
                f"annotation, so their kickouts are held (no BMC): {names(missing)}",
                f"annotate each with its Redfish System URL: kubectl annotate node NODE "
                f"{BMC_ANNOTATION}=https://<bmc>/redfish/v1/Systems/<id>",
            )
        )
    bad: list[str] = []
    usable: list[NodeView] = []
    for view in views:
        if not view.bmc:
            continue
        try:
            check_system_url(view.bmc)
        except FencingError as exc:
            bad.append(f"{view.name}: {exc}")
            continue
        usable.append(view)
    if bad:
        out.append(failure(FENCING, f"bad {BMC_ANNOTATION}: {names(bad)}", f"fix the nodes' {BMC_ANNOTATION}"))
    if secret is None:
        out.append(
            failure(
                FENCING,
                secret_error,
                f"create the Secret {secret_name} with username and password (per node: NODE.username, "
                "NODE.password), and ca.crt for a BMC certificate of your own CA",
            )
        )
        return out, []
    no_credentials = []
    for view in usable:
        try:
            bmc_target(view.name, view.bmc, dict(secret), insecure=False)
        except FencingError:
            no_credentials.append(view.name)
    if no_credentials:
        out.append(
            failure(
                FENCING,
                f"the Secret {secret_name} has no credentials for {names(no_credentials)}",
                "add username and password (or NODE.username and NODE.password) to it",
            )
        )
    return out, [v for v in usable if v.name not in no_credentials]


def _have(count: int) -> str:
    return "has" if count == 1 else "have"


@attrs.frozen
class PowerSeen:
    """What one sampled BMC answered: its PowerState, or the error."""

    node: NodeView
    power: str = ""
    error: str = ""


def bmc_findings(seen: Sequence[PowerSeen], total: int, secret_name: str, *, insecure: bool) -> list[Finding]:
    """The sampled BMCs: each must answer, and a Ready node's BMC must not say Off (a wrong annotation)."""
    out: list[Finding] = []
    for item in seen:
        if item.error:
            out.append(
                failure(
                    FENCING,
                    f"the BMC of {item.node.name} did not answer: {item.error}",
                    f"check its address ({BMC_ANNOTATION}), the credentials in the Secret {secret_name} and "
                    "its certificate (ca.crt in the Secret)",
                )
            )
        elif item.power == "Off" and item.node.ready.is_ready:
            out.append(
                failure(
                    FENCING,
                    f"{item.node.name} is Ready but its BMC says PowerState Off: {BMC_ANNOTATION} "
                    "points at another machine? Fencing would take that for a confirmed power-off",
                    f"fix the node's {BMC_ANNOTATION} annotation",
                )
            )
    if insecure:
        out.append(
            warning(
                FENCING,
                "ASKLEPIOS_FENCING_INSECURE=true: BMC certificates are not verified",
                f"put the BMCs' CA certificate into the Secret {secret_name} (ca.crt) and turn it off",
            )
        )
    answered = [item for item in seen if not item.error]
    if answered and not any(f.status is Status.FAILURE for f in out):
        states = Counter(item.power for item in answered)
        power = ", ".join(f"{state} {count}" for state, count in sorted(states.items()))
        out.insert(
            0,
            ok(FENCING, f"{len(answered)} of {_plural(total, 'BMC')} asked answered (PowerState: {power})"),
        )
    return out


# --- node Leases -----------------------------------------------------------------------


def node_lease_finding(nodes: Iterable[str], leases: Iterable[str]) -> Finding:
    have = set(leases)
    watched = sorted(nodes)
    missing = [n for n in watched if n not in have]
    if missing:
        return warning(
            LEASES,
            f"{len(missing)} of {_plural(len(watched), 'watched node')} {_have(len(missing))} no Lease in "
            f"{NODE_LEASE_NAMESPACE}: the kubelet-silent signal cannot see a live kubelet there "
            f"(no Lease counts as silent): {names(missing)}",
            "check that their kubelets run and renew their node Lease (kubelet 1.17+ does by default)",
        )
    return ok(LEASES, f"every watched node has a Lease in {NODE_LEASE_NAMESPACE}")
