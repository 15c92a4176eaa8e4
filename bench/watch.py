"""The bench's own eyes: streaming watches with receive timestamps, and what they saw.

A :class:`Watch` is a thread holding one ``?watch=1`` stream open (bookmarks on,
resumed from the newest resourceVersion when the server ends it) and stamping
every event with ``time.time()`` the moment its line arrives, so lags are measured
against what a client of the apiserver sees, not against a polling interval.
:class:`NodeTracker` and :class:`PodTracker` turn those events into timestamped
transitions: Ready flips, the out-of-service taint appearing and going, pods
becoming Ready or disappearing, and the period marks Asklepios writes
(``asklepios.io/notready-since``, ``asklepios.io/ready-since``: the start of the
countdown it runs, as it knows it).
"""

from __future__ import annotations

import contextlib
import http.client
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import orjson

from asklepios_lab import Api

JSON = dict[str, Any]
OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"
KICKOUT_ANNOTATION = "asklepios.io/kickout"
MARK_ANNOTATIONS = {
    "notready_mark": "asklepios.io/notready-since",
    "ready_mark": "asklepios.io/ready-since",
    "kickout_record": KICKOUT_ANNOTATION,
}
Handler = Callable[[float, str, JSON], None]


class Watch(threading.Thread):
    """Watch ``path`` (with ``query``, e.g. a labelSelector) and call ``handler(t, type, obj)``."""

    def __init__(self, api: Api, path: str, handler: Handler, query: dict[str, str] | None = None) -> None:
        super().__init__(daemon=True, name=f"watch {path}")
        self.api, self.path, self.handler, self.query = api, path, handler, dict(query or {})
        self.context = ssl.create_default_context(cafile=str(api.ca_file))
        self.resource_version = ""
        self.events = 0
        self.restarts = 0
        self._halt = threading.Event()
        self._conn: http.client.HTTPSConnection | None = None

    def begin(self) -> Watch:
        """Start watching from "now" (the resourceVersion of a one-item list)."""
        listed = self.api.get(self.path, query={**self.query, "limit": "1"})
        self.resource_version = str(listed["metadata"]["resourceVersion"])
        self.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(2)
        self.join(5)

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self._stream()
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if self._halt.is_set():
                    return
                print(f"[watch] {self.path}: {type(exc).__name__}: {exc}; resuming", flush=True)
                time.sleep(0.5)
            self.restarts += 1

    def _stream(self) -> None:
        query = {
            **self.query,
            "watch": "1",
            "allowWatchBookmarks": "true",
            "resourceVersion": self.resource_version,
            "timeoutSeconds": "1800",
        }
        conn = http.client.HTTPSConnection(self.api.host, self.api.port, context=self.context, timeout=600)
        self._conn = conn
        try:
            conn.request(
                "GET",
                f"{self.path}?{urllib.parse.urlencode(query)}",
                headers={"Authorization": f"Bearer {self.api.token}", "User-Agent": "asklepios-bench"},
            )
            resp = conn.getresponse()
            if resp.status != 200:
                raise ValueError(f"watch answered {resp.status}: {resp.read()[:300]!r}")
            while not self._halt.is_set():
                line = resp.readline()
                now = time.time()
                if not line:
                    return
                event = orjson.loads(line)
                kind, obj = str(event.get("type")), event.get("object") or {}
                if kind == "ERROR":
                    raise ValueError(f"watch error: {obj.get('message')}")
                rv = obj.get("metadata", {}).get("resourceVersion")
                if rv:
                    self.resource_version = str(rv)
                if kind != "BOOKMARK":
                    self.events += 1
                    self.handler(now, kind, obj)
        finally:
            conn.close()


def ready_of(node: JSON) -> tuple[str, str | None]:
    """(status of the Ready condition or "Missing", its lastTransitionTime)."""
    for cond in node.get("status", {}).get("conditions") or ():
        if cond.get("type") == "Ready":
            return str(cond.get("status")), cond.get("lastTransitionTime")
    return "Missing", None


def has_out_of_service(node: JSON) -> bool:
    return any(
        t.get("key") == OUT_OF_SERVICE and t.get("effect") == "NoExecute"
        for t in node.get("spec", {}).get("taints") or ()
    )


class NodeTracker:
    """Per node: the times (receive stamps) of Ready flips and out-of-service taint changes.

    ``history[name]`` is a list of ``(t, what, detail)`` with ``what`` one of
    ``notready``, ``ready`` (detail: lastTransitionTime) and ``taint_on`` (detail: the
    kickout annotation), ``taint_off``, and ``notready_mark`` / ``ready_mark`` /
    ``kickout_record`` (detail: the annotation's JSON) whenever one of Asklepios' period
    marks or its kickout record appears or changes.
    Nodes are assumed Ready and untainted at start.
    """

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.ready: dict[str, bool] = {}
        self.tainted: dict[str, bool] = {}
        self.marks: dict[tuple[str, str], str | None] = {}  # (node, notready_mark|ready_mark) -> annotation
        self.history: dict[str, list[tuple[float, str, str | None]]] = {}

    def handle(self, t: float, kind: str, obj: JSON) -> None:
        if kind not in ("ADDED", "MODIFIED"):
            return
        name = str(obj["metadata"]["name"])
        status, since = ready_of(obj)
        ready, tainted = status == "True", has_out_of_service(obj)
        with self.lock:
            log = self.history.setdefault(name, [])
            if self.ready.get(name, True) != ready:
                log.append((t, "ready" if ready else "notready", since))
            if self.tainted.get(name, False) != tainted:
                annotation = (obj["metadata"].get("annotations") or {}).get(KICKOUT_ANNOTATION)
                log.append((t, "taint_on" if tainted else "taint_off", annotation))
            self.ready[name], self.tainted[name] = ready, tainted
            annotations = obj["metadata"].get("annotations") or {}
            for what, key in MARK_ANNOTATIONS.items():
                value = annotations.get(key)
                if value != self.marks.get((name, what)):
                    if value:
                        log.append((t, what, value))
                    self.marks[(name, what)] = value
            self.lock.notify_all()

    def last(self, name: str, what: str, after: float = 0.0) -> tuple[float, str | None] | None:
        """The first ``what`` transition of ``name`` at or after ``after``."""
        with self.lock:
            for t, w, detail in self.history.get(name, ()):
                if w == what and t >= after:
                    return t, detail
        return None

    def since(self, name: str, what: str, after: float = 0.0) -> list[tuple[float, str | None]]:
        """Every ``what`` transition of ``name`` at or after ``after``, oldest first."""
        with self.lock:
            return [(t, detail) for t, w, detail in self.history.get(name, ()) if w == what and t >= after]

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait (without polling the apiserver) until ``predicate()`` holds under the lock."""
        with self.lock:
            return self.lock.wait_for(predicate, timeout)

    def wait_for(self, name: str, what: str, after: float, timeout: float) -> float | None:
        """Wait for the first ``what`` transition of ``name`` at or after ``after``; its time."""
        self.wait(lambda: self.last(name, what, after) is not None, timeout)
        hit = self.last(name, what, after)
        return None if hit is None else hit[0]


class PodTracker:
    """Pods of one namespace by uid: name, node, Ready, deleting; and when each vanished."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.pods: dict[str, JSON] = {}  # uid -> {"name", "node", "ready", "deleting"}
        self.gone: dict[str, float] = {}  # uid -> time its DELETED event arrived
        self.last_t = 0.0  # receive time of the newest event

    def handle(self, t: float, kind: str, obj: JSON) -> None:
        meta = obj["metadata"]
        uid = str(meta["uid"])
        with self.lock:
            self.last_t = t
            if kind == "DELETED":
                self.pods.pop(uid, None)
                self.gone[uid] = t
            else:
                conds = obj.get("status", {}).get("conditions") or ()
                self.pods[uid] = {
                    "name": meta["name"],
                    "node": obj.get("spec", {}).get("nodeName") or "",
                    "ready": any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds),
                    "deleting": "deletionTimestamp" in meta,
                    "labels": meta.get("labels") or {},
                }
            self.lock.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float) -> float | None:
        """Wait until ``predicate()`` holds; returns the receive time of the event that made
        it hold (the newest event then), or None on timeout."""
        with self.lock:
            if self.lock.wait_for(predicate, timeout):
                return self.last_t
        return None
