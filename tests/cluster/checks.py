"""What the cluster tests look at on nodes: readiness, our taint, Events; and the settings
every test starts Asklepios with (its own nodes only, short timings)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

from asklepios_lab import ControlPlane
from tests.cluster.conftest import UNDER_TEST_USER, WATCH_LABEL
from tests.cluster.runner import wait_value

JSON = dict[str, Any]
SEL = WATCH_LABEL
OOS = "node.kubernetes.io/out-of-service"


def env(prefix: str, **extra: str) -> dict[str, str]:
    return {
        "ASKLEPIOS_NODE_SELECTOR": f"{SEL}={prefix}",
        "ASKLEPIOS_KICKOUT_SECONDS": "5",
        "ASKLEPIOS_KICKIN_SECONDS": "5",
        "ASKLEPIOS_RESYNC_SECONDS": "2",
        **extra,
    }


def parse_time(raw: str) -> float:
    return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()


def ready(node: JSON) -> JSON:
    return next(c for c in node["status"]["conditions"] if c["type"] == "Ready")


def has_oos(node: JSON) -> bool:
    return any(t["key"] == OOS and t["effect"] == "NoExecute" for t in node["spec"].get("taints") or [])


def first_seen(cp: ControlPlane, name: str, check: Any, timeout: float, what: str) -> tuple[float, JSON]:
    """Poll the node every 50 ms; return (wall time first seen, node)."""

    def probe() -> tuple[float, JSON] | None:
        node = cp.node(name)
        return (time.time(), node) if check(node) else None

    return wait_value(probe, timeout, what, interval=0.05)


def wait_node(cp: ControlPlane, name: str, check: Callable[[JSON], bool], timeout: float, what: str) -> JSON:
    def probe() -> JSON | None:
        node = cp.node(name)
        return node if check(node) else None

    return wait_value(probe, timeout, what)


def power_cut(cp: ControlPlane, name: str, status: str = "False") -> float:
    """A node that dies right after reporting Ready=`status`: its kwok is killed (the Lease
    stops, nothing answers on its kubelet port) and its last condition says `status`.
    Node-lifecycle turns it Unknown after the grace period. Returns the condition's
    lastTransitionTime (1 s resolution)."""
    cp.crash(name)
    return parse_time(ready(cp.set_ready(name, status))["lastTransitionTime"])


def writes_by_asklepios(
    cp: ControlPlane, verb: str | None = None, resource: str | None = None, namespace: str | None = None
) -> list[JSON]:
    """Asklepios' own write requests, from the apiserver's audit log.

    The control plane is shared by the session's tests, and every Asklepios runs as the
    same identity: give the test's `namespace` for namespaced objects (a `db-0` is
    force-deleted by several tests)."""
    found = []
    for event in cp.audit(UNDER_TEST_USER):
        ref = event.get("objectRef") or {}
        if event["verb"] in ("get", "list", "watch"):
            continue
        if namespace is not None and ref.get("namespace") != namespace:
            continue
        if (verb is None or event["verb"] == verb) and (resource is None or ref.get("resource") == resource):
            found.append(event)
    return found


def events(cp: ControlPlane, reason: str, node: str) -> list[JSON]:
    items: list[JSON] = cp.api.get(
        "/api/v1/namespaces/default/events",
        query={"fieldSelector": f"involvedObject.name={node},reason={reason}"},
    )["items"]
    return items


def record_of(cp: ControlPlane, node: str, namespace: str = "kube-system") -> JSON | None:
    """Asklepios' own record of a node, from its ConfigMap (never from the node's annotations)."""
    found = cp.api.get_or_none(f"/api/v1/namespaces/{namespace}/configmaps/asklepios-records")
    raw = ((found or {}).get("data") or {}).get(f"node.{node}")
    return None if raw is None else dict(orjson.loads(raw))
