"""StatefulSets shaped like Burrito's (mariadb-server, rabbitmq-rabbitmq) for kwok nodes."""

from __future__ import annotations

from typing import Any

from asklepios_lab import ControlPlane, wait_for
from asklepios_lab.kwok import VOLUME_GATE
from asklepios_lab.volumes import CLAIM, VOLUME_LABEL

JSON = dict[str, Any]
# Pods leave a NotReady node's taint-eviction queue after this long (the default is 300 s).
EVICTION_TOLERATION_SECONDS = 2


def statefulset(
    name: str,
    application: str,
    replicas: int = 3,
    *,
    node_selector: dict[str, str] | None = None,
    extra_labels: dict[str, str] | None = None,
    volume: bool = False,
) -> JSON:
    """A StatefulSet of ``replicas`` pods; ``volume=True`` gives each a ReadWriteOnce claim.

    With ``volume`` each pod gets claim ``data-<name>-<i>`` (bind it with
    ``cp.volumes().provide(namespace, name, replicas)``, and let its nodes attach with
    ``cp.volumes().add_node``) and is Ready only once that volume is attached to its
    node (see :mod:`asklepios_lab.volumes`).
    """
    volume_labels = {VOLUME_LABEL: "true"} if volume else {}
    labels = {"application": application, "app.kubernetes.io/name": name, **volume_labels, **(extra_labels or {})}
    tolerations = [
        {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
        *(
            {
                "key": key,
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": EVICTION_TOLERATION_SECONDS,
            }
            for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
        ),
    ]
    spec: JSON = {
        "tolerations": tolerations,
        "affinity": {
            "podAntiAffinity": {  # preferred, as in Burrito: pods may double up on a survivor
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": name}},
                        },
                    }
                ]
            }
        },
        "containers": [{"name": "main", "image": f"registry.local/{application}:1"}],
        "terminationGracePeriodSeconds": 1,
    }
    if node_selector:
        spec["nodeSelector"] = node_selector
    sts: JSON = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {"metadata": {"labels": labels}, "spec": spec},
        },
    }
    if volume:
        spec["readinessGates"] = [{"conditionType": VOLUME_GATE}]
        spec["containers"][0]["volumeMounts"] = [{"name": CLAIM, "mountPath": "/data"}]
        sts["spec"]["volumeClaimTemplates"] = [
            {
                "metadata": {"name": CLAIM, "labels": volume_labels},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "",
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            }
        ]
    return sts


def create(cp: ControlPlane, namespace: str, obj: JSON) -> JSON:
    group = "/apis/apps/v1" if obj["apiVersion"] == "apps/v1" else "/apis/policy/v1"
    plural = {"StatefulSet": "statefulsets", "PodDisruptionBudget": "poddisruptionbudgets"}[obj["kind"]]
    return cp.api.create(f"{group}/namespaces/{namespace}/{plural}", obj)


def pods(cp: ControlPlane, namespace: str, name: str | None = None) -> list[JSON]:
    query = {"labelSelector": f"app.kubernetes.io/name={name}"} if name else None
    items: list[JSON] = cp.api.get(f"/api/v1/namespaces/{namespace}/pods", query=query)["items"]
    return items


def is_running_ready(pod: JSON) -> bool:
    conds = pod.get("status", {}).get("conditions") or []
    return (
        pod.get("status", {}).get("phase") == "Running"
        and "deletionTimestamp" not in pod["metadata"]
        and any(c["type"] == "Ready" and c["status"] == "True" for c in conds)
    )


def placement(cp: ControlPlane, namespace: str, name: str) -> dict[str, str]:
    """pod name -> node, for Running and Ready pods of StatefulSet `name`."""
    return {
        p["metadata"]["name"]: p["spec"].get("nodeName", "") for p in pods(cp, namespace, name) if is_running_ready(p)
    }


def wait_all_running(cp: ControlPlane, namespace: str, name: str, replicas: int, timeout: float = 60) -> dict[str, str]:
    def probe() -> dict[str, str] | None:
        where = placement(cp, namespace, name)
        return where if len(where) == replicas else None

    found = wait_for(probe, timeout, what=f"{replicas} Running pods of {name}")
    assert found is not None
    return found
