"""A pod watch kept by the test itself: every pod event with its receive time.

Claims like "never below minAvailable" or "at most one pod in flight" are checked
against this event history, not against polls that could miss a transient.
"""

from __future__ import annotations

import http.client
import ssl
import threading
import time
from typing import Any

import attrs
import orjson

from asklepios_lab import ControlPlane


@attrs.frozen
class PodEvent:
    at: float
    kind: str  # ADDED, MODIFIED, DELETED
    name: str
    uid: str
    app: str  # the app.kubernetes.io/name label: the StatefulSet
    node: str
    ready: bool
    deleting: bool


def _event(kind: str, pod: dict[str, Any]) -> PodEvent:
    meta, status = pod["metadata"], pod.get("status", {})
    return PodEvent(
        at=time.time(),
        kind=kind,
        name=meta["name"],
        uid=meta["uid"],
        app=(meta.get("labels") or {}).get("app.kubernetes.io/name", ""),
        node=pod.get("spec", {}).get("nodeName", "") or "",
        ready=any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or []),
        deleting="deletionTimestamp" in meta,
    )


class PodWatch:
    def __init__(self, cp: ControlPlane, namespace: str) -> None:
        self.cp, self.namespace = cp, namespace
        self.events: list[PodEvent] = []
        self.failures: list[str] = []  # what interrupted the watch (it resumed each time)
        self._rv = ""  # the last resourceVersion seen: where the watch resumes
        self._stop = threading.Event()
        self._conn: http.client.HTTPSConnection | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PodWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._conn is not None:
            self._conn.close()
        self._thread.join(5)

    def _run(self) -> None:
        """List once, then watch from the list's resourceVersion, resuming from the last event seen.

        Any failure (a dropped connection, a non-200 answer such as 504 "Too large
        resource version" while the watch cache catches up with a quorum list, an
        unreadable line) resumes from the same resourceVersion, so no event is lost;
        only 410 Gone forces a relist. Every failure is kept in `failures`: a watch
        thread that died silently once made a test wait for a DELETED it never saw.
        """
        host, port = self.cp.server.removeprefix("https://").split(":")
        context = ssl.create_default_context(cafile=str(self.cp.pki.ca_cert))
        headers = {"Authorization": f"Bearer {self.cp.admin_token}"}
        while not self._stop.is_set():
            conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=60)
            self._conn = conn
            try:
                if not self._rv:
                    self._list(conn, headers)
                self._watch(conn, headers)
            except Exception as exc:  # kept in `failures`; the watch resumes
                if self._stop.is_set():
                    return
                self.failures.append(repr(exc))
                time.sleep(0.2)
            finally:
                conn.close()

    def _list(self, conn: http.client.HTTPSConnection, headers: dict[str, str]) -> None:
        """The namespace's pods as ADDED events, and the list's resourceVersion."""
        conn.request("GET", f"/api/v1/namespaces/{self.namespace}/pods", headers=headers)
        answer = conn.getresponse()
        body = answer.read()
        if answer.status != 200:
            raise http.client.HTTPException(f"list {answer.status}: {body[:200]!r}")
        listing = orjson.loads(body)
        self.events.extend(_event("ADDED", p) for p in listing["items"])
        self._rv = str(listing["metadata"]["resourceVersion"])

    def _watch(self, conn: http.client.HTTPSConnection, headers: dict[str, str]) -> None:
        """One watch request from the last resourceVersion seen, which each event moves on
        (cleared on 410 Gone: relist)."""
        query = f"watch=true&resourceVersion={self._rv}&timeoutSeconds=50&allowWatchBookmarks=true"
        conn.request("GET", f"/api/v1/namespaces/{self.namespace}/pods?{query}", headers=headers)
        response = conn.getresponse()
        if response.status != 200:
            body = response.read()
            if response.status == 410:
                self._rv = ""
                return
            raise http.client.HTTPException(f"watch {response.status}: {body[:200]!r}")
        while not self._stop.is_set():
            line = response.readline()
            if not line:
                break
            event = orjson.loads(line)
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                self.failures.append(f"watch ERROR: {obj}")
                if obj.get("code") == 410:
                    self._rv = ""
                return
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                self.events.append(_event(kind, obj))
            self._rv = obj["metadata"]["resourceVersion"]

    def replay(self) -> list[dict[str, PodEvent]]:
        """The namespace's pods after each event: one snapshot per event."""
        current: dict[str, PodEvent] = {}
        out = []
        for e in list(self.events):
            if e.kind == "DELETED":
                current.pop(e.uid, None)
            else:
                current[e.uid] = e
            out.append(dict(current))
        return out
