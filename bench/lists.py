"""Scenario `lists`: what each list Asklepios may send costs the apiserver, and whether etcd is read.

A control plane without kwok holds ``nodes`` Node objects and ``pods`` Pods bound to
them (``spec.nodeName`` set, never run: only what etcd and the watch cache hold
matters). Each kind of list is sent ``repeat`` times as Asklepios' own identity,
all its pages, and measured three ways:

* the audit log: the request as the apiserver saw it (URI, code) and its latency
  (``stageTimestamp`` of ResponseComplete - ``requestReceivedTimestamp``);
* the apiserver's storage metrics, before and after: ``apiserver_storage_list_*``
  (the etcd3 store: lists it served from etcd, objects fetched from etcd and
  evaluated) against ``apiserver_cache_list_*`` (the watch cache) and
  ``etcd_request_duration_seconds_count`` (requests to etcd);
* the client: pages, objects, bytes, seconds.

The kinds: one node's pods (field selector ``spec.nodeName``, as a kicked-out node's
pod watch starts), every watched node (label selector) and every pod of a label
(the balancer's), each as a consistent paged read (no resourceVersion, the
reflector before issue 22) and with resourceVersion=0 (client-go's first list).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from asklepios_lab import audit
from bench.cluster import ASKLEPIOS_USER, lab
from bench.results import Steps, distribution, epoch, write_result

JSON = dict[str, Any]
LABEL = "bench.asklepios.dev/listed"
METRICS = (
    "apiserver_storage_list_total",
    "apiserver_storage_list_fetched_objects_total",
    "apiserver_storage_list_evaluated_objects_total",
    "apiserver_storage_list_returned_objects_total",
    "apiserver_cache_list_total",
    "apiserver_cache_list_fetched_objects_total",
    "apiserver_cache_list_returned_objects_total",
    "etcd_request_duration_seconds_count",
)


def kinds(node: str) -> list[tuple[str, str, dict[str, str]]]:
    pods, nodes = "/api/v1/pods", "/api/v1/nodes"
    one = {"fieldSelector": f"spec.nodeName={node}", "limit": "100"}
    watched = {"labelSelector": f"{LABEL}=true", "limit": "100"}
    return [
        ("one node's pods, consistent (before)", pods, one),
        ("one node's pods, resourceVersion=0 (after)", pods, {**one, "resourceVersion": "0"}),
        ("watched nodes, consistent paged (kept)", nodes, watched),
        ("watched nodes, resourceVersion=0", nodes, {**watched, "resourceVersion": "0"}),
        ("balancer pods, consistent paged (kept)", pods, watched),
        ("balancer pods, resourceVersion=0", pods, {**watched, "resourceVersion": "0"}),
    ]


def storage_metrics(text: str, resource: str) -> dict[str, float]:
    """The METRICS' samples that concern ``resource``, summed by name, storage backend and operation.

    ``apiserver_storage_list_*`` carry the backend that served the list (1.37: ``storage``
    etcd or watch cache; 1.28 records etcd lists only); ``etcd_request_duration_seconds``
    names the resource by its type (1.28: ``*core.PodList``) or by ``resource`` (1.37)."""
    singular = "minion" if resource == "nodes" else resource[:-1]  # 1.28's watch cache keys nodes as /minions
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name not in METRICS:
                continue
            if not any(
                v == resource or singular in v.lower() or v.endswith("NodeList") for v in sample.labels.values()
            ):
                continue
            op = sample.labels.get("operation", "")
            if sample.name.startswith("etcd_") and not (op.startswith("list") or op == "getCurrentResourceVersion"):
                continue
            extra = ",".join(f"{k}={sample.labels[k]}" for k in ("storage", "operation") if sample.labels.get(k))
            key = f"{sample.name}{{{extra}}}" if extra else sample.name
            out[key] = out.get(key, 0.0) + float(sample.value)
    return out


def _node(name: str) -> JSON:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {LABEL: "true"}}}


def _pod(i: int, node: str) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"p-{i:06d}", "labels": {LABEL: "true", "app": f"a{i % 50}"}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "registry.invalid/none"}]},
    }


def _list_all(api: Any, path: str, query: dict[str, str]) -> tuple[int, int, int]:
    """(pages, objects, bytes) of one list, following `continue` as a reflector does."""
    pages = objects = size = 0
    query = dict(query)
    while True:
        status, body = api.request("GET", path, query=query)
        if status != 200:
            raise RuntimeError(f"{path} {query} -> {status}: {body[:200]!r}")
        data = orjson.loads(body)
        pages, objects, size = pages + 1, objects + len(data.get("items") or []), size + len(body)
        token = (data.get("metadata") or {}).get("continue")
        if not token:
            return pages, objects, size
        query = {k: v for k, v in query.items() if k != "resourceVersion"}
        query["continue"] = token


def _audited(path: Path, since: float) -> list[JSON]:
    out = []
    for event in audit.records(path):
        if event.get("stage") != "ResponseComplete" or event["user"]["username"] != ASKLEPIOS_USER:
            continue
        received = epoch(event["requestReceivedTimestamp"]) or 0.0
        if received >= since:
            done = epoch(event["stageTimestamp"]) or received
            out.append({"uri": event["requestURI"], "code": (event.get("responseStatus") or {}).get("code"),
                        "seconds": done - received})  # fmt: skip
    return out


def run(*, nodes: int = 500, pods: int = 5000, repeat: int = 5, version: str | None = None, keep: bool = False) -> Path:
    steps = Steps()
    with lab(audit=True, bulk=False, keep=keep, version=version) as lb:
        cp = lb.cp
        release = cp.api.get("/version")["gitVersion"]
        steps.done(f"control plane {release} up")
        names = [f"n-{i:05d}" for i in range(nodes)]
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda n: cp.api.create("/api/v1/nodes", _node(n)), names))
            list(pool.map(lambda i: cp.api.create("/api/v1/namespaces/default/pods", _pod(i, names[i % nodes])),
                          range(pods)))  # fmt: skip
        steps.done(f"{nodes} nodes and {pods} pods created")
        time.sleep(3)  # the watch cache has caught up
        api = cp.client(lb.token)
        results = []
        assert lb.audit_log is not None
        for name, path, query in kinds(names[7]):
            resource = path.rsplit("/", 1)[1]
            before = storage_metrics(cp.apiserver_metrics(), resource)
            since, client = time.time(), []
            for _ in range(repeat):
                started = time.monotonic()
                pages, objects, size = _list_all(api, path, query)
                client.append((pages, objects, size, time.monotonic() - started))
            after = storage_metrics(cp.apiserver_metrics(), resource)
            time.sleep(1.5)  # the audit log is written asynchronously
            audit = _audited(lb.audit_log, since)
            delta = {k: (after.get(k, 0.0) - before.get(k, 0.0)) / repeat for k in sorted({*before, *after})}
            results.append({
                "list": name, "path": path, "query": query,
                "pages": client[0][0], "objects": client[0][1], "bytes": client[0][2],
                "client_seconds": distribution([c[3] for c in client]),
                "audit_requests_per_list": len(audit) / repeat,
                "audit_seconds": distribution([a["seconds"] for a in audit]),
                "audit_codes": sorted({a["code"] for a in audit}),
                "audit_example_uri": audit[0]["uri"] if audit else "",
                "apiserver_per_list": {k: v for k, v in delta.items() if v},
            })  # fmt: skip
            print(f"[lists] {name}: {results[-1]['apiserver_per_list']}", flush=True)
        steps.done("lists measured")
    params = {"nodes": nodes, "pods": pods, "repeat": repeat, "release": release}
    notes = ["apiserver_per_list: the increase of each storage metric over `repeat` lists, divided by `repeat`"]
    return write_result(f"lists-{release}", "lists", params=params, summary={"lists": results}, raw={}, steps=steps,
                        notes=notes)  # fmt: skip
