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
        host, port = self.cp.server.removeprefix("https://").split(":")
        context = ssl.create_default_context(cafile=str(self.cp.pki.ca_cert))
        rv = ""
        while not self._stop.is_set():
            conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=60)
            self._conn = conn
            headers = {"Authorization": f"Bearer {self.cp.admin_token}"}
            try:
                if not rv:
                    conn.request("GET", f"/api/v1/namespaces/{self.namespace}/pods", headers=headers)
                    listing = orjson.loads(conn.getresponse().read())
                    rv = listing["metadata"]["resourceVersion"]
                    self.events.extend(_event("ADDED", p) for p in listing["items"])
                query = f"watch=true&resourceVersion={rv}&timeoutSeconds=50"
                path = f"/api/v1/namespaces/{self.namespace}/pods?{query}"
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                while not self._stop.is_set():
                    line = response.readline()
                    if not line:
                        break
                    event = orjson.loads(line)
                    if event["type"] == "ERROR":
                        rv = ""
                        break
                    rv = event["object"]["metadata"]["resourceVersion"]
                    self.events.append(_event(event["type"], event["object"]))
            except (
                OSError,
                http.client.HTTPException,
                ValueError,
                AttributeError,
            ):  # AttributeError: closed by __exit__
                if self._stop.is_set():
                    return
            finally:
                conn.close()

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
