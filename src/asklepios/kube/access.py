"""What `asklepios check` reads: access reviews, /version, and read-only lists.

Nothing here writes to the cluster: a SelfSubjectAccessReview only asks the
authorizer about the caller's own permissions (every authenticated user may), a
SubjectAccessReview (`check --as-serviceaccount`) about a ServiceAccount's (the
caller needs `create subjectaccessreviews` for that), and /version is public.
The lists are paginated, so the check reads big clusters in bounded pieces.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType

import attrs

from asklepios.core.preflight import NODE_LEASE_NAMESPACE, Budget, Need, PinnedVolume, PodSeen, pinned_nodes
from asklepios.core.preflight.access import ServiceAccount
from asklepios.core.preflight.volumes import NodeTerm
from asklepios.core.selector import LabelSelector, Requirement
from asklepios.kube.client import JSON, KubeClient, list_items
from asklepios.kube.pods import parse_pod

_OPERATORS = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}


@attrs.frozen
class ServerVersion:
    git_version: str
    major: str
    minor: str


@attrs.frozen
class AccessAnswer:
    allowed: bool
    reason: str = ""


class AccessApi:
    """Access reviews (the caller's own, or a ServiceAccount's) and the server's version."""

    def __init__(self, client: KubeClient, subject: ServiceAccount | None = None) -> None:
        self.client = client
        self.subject = subject

    async def version(self) -> ServerVersion:
        data = await self.client.request("GET", "/version")
        return ServerVersion(
            str(data.get("gitVersion") or ""), str(data.get("major") or ""), str(data.get("minor") or "")
        )

    async def review(self, need: Need) -> AccessAnswer:
        """May the caller (or the subject) do `need`? Raises ApiError when the review cannot be made."""
        spec: JSON = {"resourceAttributes": need.resource_attributes()}
        kind = "SelfSubjectAccessReview"
        if self.subject is not None:
            kind = "SubjectAccessReview"
            spec |= {"user": self.subject.user, "groups": list(self.subject.groups)}
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": kind, "spec": spec}
        data = await self.client.request("POST", f"/apis/authorization.k8s.io/v1/{kind.lower()}s", body=body)
        status = data.get("status") or {}
        reason = status.get("reason") or status.get("evaluationError") or ""
        return AccessAnswer(bool(status.get("allowed")), str(reason))


def parse_pod_seen(obj: JSON) -> PodSeen:
    pod = parse_pod(obj)  # the owner and the tolerations, parsed as the balancer parses them
    meta, status = obj.get("metadata", {}), obj.get("status", {})
    return PodSeen(
        namespace=pod.namespace,
        name=pod.name,
        node=pod.node,
        owner=pod.owner,
        labels=MappingProxyType(dict(meta.get("labels") or {})),
        tolerations=pod.placement.tolerations,
        finished=status.get("phase") in ("Succeeded", "Failed"),
        claims=tuple(
            str(claim["claimName"])
            for volume in (obj.get("spec") or {}).get("volumes") or ()
            if isinstance(volume, dict)
            and isinstance(claim := volume.get("persistentVolumeClaim"), dict)
            and claim.get("claimName")
        ),
    )


def parse_pinned_volume(obj: JSON) -> PinnedVolume | None:
    """A claimed PersistentVolume whose required node affinity names its nodes; None for any other."""
    spec = obj.get("spec") or {}
    claim = spec.get("claimRef") or {}
    required = (spec.get("nodeAffinity") or {}).get("required") or {}
    terms: list[NodeTerm] = []
    for term in required.get("nodeSelectorTerms") or ():
        terms.append(
            tuple(
                (prefix + str(r.get("key", "")), str(r.get("operator", "")), tuple(map(str, r.get("values") or ())))
                for prefix, field in (("", "matchExpressions"), ("field:", "matchFields"))
                for r in (term or {}).get(field) or ()
            )
        )
    nodes = pinned_nodes(terms)
    if nodes is None or not claim.get("name"):
        return None
    return PinnedVolume(str(obj["metadata"]["name"]), str(claim.get("namespace") or ""), str(claim["name"]), nodes)


def parse_label_selector(raw: JSON | None) -> LabelSelector | None:
    """A metav1.LabelSelector; None (selects nothing) when absent or not understood. `{}` selects everything."""
    if raw is None:
        return None
    requirements: list[Requirement] = []
    texts: list[str] = []
    for key, value in sorted((raw.get("matchLabels") or {}).items()):
        requirements.append(Requirement(str(key), "in", frozenset({str(value)})))
        texts.append(f"{key}={value}")
    for expression in raw.get("matchExpressions") or ():
        operator = _OPERATORS.get(str(expression.get("operator", "")))
        if operator is None:
            return None
        key, values = str(expression.get("key", "")), frozenset(str(v) for v in expression.get("values") or ())
        requirements.append(Requirement(key, operator, values))
        texts.append(f"{key} {expression.get('operator')} ({','.join(sorted(values))})")
    return LabelSelector(",".join(texts), tuple(requirements))


class ClusterReads:
    """Read-only, paginated lists of pods, PodDisruptionBudgets and node Leases."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client

    async def pods(
        self,
        namespace: str = "",
        *,
        label_selector: str = "",
        node: str = "",
        keep: Callable[[PodSeen], bool] = lambda pod: True,
    ) -> list[PodSeen]:
        """The pods `keep` wants (it sees each pod once, as read): a 50,000-pod read keeps only those."""
        path = f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"
        query = {"labelSelector": label_selector} if label_selector else {}
        if node:
            query["fieldSelector"] = f"spec.nodeName={node}"

        def parse(obj: JSON) -> PodSeen | None:
            pod = parse_pod_seen(obj)
            return pod if keep(pod) else None

        return await list_items(self.client, path, query, parse)

    async def budgets(self, namespace: str = "") -> list[Budget]:
        where = f"namespaces/{namespace}/" if namespace else ""

        def parse(obj: JSON) -> Budget:
            return Budget(
                obj["metadata"].get("namespace", ""),
                obj["metadata"].get("name", ""),
                parse_label_selector((obj.get("spec") or {}).get("selector")),
            )

        return await list_items(self.client, f"/apis/policy/v1/{where}poddisruptionbudgets", {}, parse)

    async def pinned_volumes(self) -> list[PinnedVolume]:
        """The claimed PersistentVolumes bound to named nodes (local PVs): one paginated list, the rest dropped."""
        return await list_items(self.client, "/api/v1/persistentvolumes", {}, parse_pinned_volume)

    async def node_leases(self) -> set[str]:
        """The names of the Leases in kube-node-lease (one per node whose kubelet renews it)."""
        path = f"/apis/coordination.k8s.io/v1/namespaces/{NODE_LEASE_NAMESPACE}/leases"
        return set(await list_items(self.client, path, {}, lambda obj: str(obj["metadata"]["name"])))
