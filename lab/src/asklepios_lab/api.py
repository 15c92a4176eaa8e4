"""A tiny, dependency-free REST client for the lab's kube-apiserver, and kubeconfig files.

The harness itself needs only a few calls (create/patch/delete nodes, patch node status,
read objects, raw watches), from plain threads, with no event loop: ``http.client`` over
TLS with the lab CA and a bearer token is enough and starts instantly, unlike spawning
``kubectl`` for every call. Connections are kept alive per thread.
"""

from __future__ import annotations

import http.client
import ssl
import threading
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import yaml

JSON = dict[str, Any]
USER_AGENT = "asklepios-lab"  # the fieldManager of the lab's own writes

PATCH_TYPES = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
    "apply": "application/apply-patch+yaml",
}


class ApiError(RuntimeError):
    """A non-2xx answer of the apiserver."""

    def __init__(self, method: str, path: str, status: int, body: bytes) -> None:
        self.status = status
        self.body = body
        super().__init__(f"{method} {path} -> {status}: {body[:500].decode(errors='replace')}")


class Api:
    """Client of one apiserver (``server`` like ``https://127.0.0.1:6443``): a bearer
    ``token``, or ``client_cert`` (certificate and key files) with ``token=None``."""

    def __init__(
        self, server: str, token: str | None, ca_file: Path, *, client_cert: tuple[Path, Path] | None = None
    ) -> None:
        if (token is None) == (client_cert is None):
            raise ValueError("exactly one of token, client_cert")
        url = urllib.parse.urlsplit(server)
        self.server = server
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or 443
        self.token = token
        self.ca_file = ca_file
        self.client_cert = client_cert
        self._ssl_context: ssl.SSLContext | None = None  # lazily: the CA may not exist yet
        self._local = threading.local()
        self._all: list[http.client.HTTPSConnection] = []  # closed by close_all()
        self._all_lock = threading.Lock()

    @property
    def _ssl(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            context = ssl.create_default_context(cafile=str(self.ca_file))
            if self.client_cert is not None:
                context.load_cert_chain(str(self.client_cert[0]), str(self.client_cert[1]))
            self._ssl_context = context
        return self._ssl_context

    def _auth(self) -> dict[str, str]:
        return {} if self.token is None else {"Authorization": f"Bearer {self.token}"}

    def _conn(self, timeout: float) -> http.client.HTTPSConnection:
        conn: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection(self.host, self.port, context=self._ssl)
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def close(self) -> None:
        """Close this thread's keep-alive connection."""
        conn: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()

    def close_all(self) -> None:
        """Close the keep-alive connections of every thread (they reopen on next use)."""
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        content_type: str = "application/json",
        query: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, bytes]:
        """Send one request; returns (status, body). Retries once on a stale connection."""
        if query:
            path = f"{path}?{urllib.parse.urlencode(query)}"
        data = None if body is None else body if isinstance(body, bytes) else orjson.dumps(body)
        headers = {
            **self._auth(),
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        if data is not None:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):
            conn = self._conn(timeout)
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt == 2:
                    raise
                continue
            except OSError:
                self.close()
                raise
            return resp.status, payload
        raise AssertionError("unreachable")

    def call(self, method: str, path: str, body: object = None, **kw: Any) -> JSON:
        """Like :meth:`request`, but raises :class:`ApiError` unless 2xx; parses JSON."""
        status, payload = self.request(method, path, body, **kw)
        if not 200 <= status < 300:
            raise ApiError(method, path, status, payload)
        result: JSON = orjson.loads(payload) if payload else {}
        return result

    def get(self, path: str, **kw: Any) -> JSON:
        return self.call("GET", path, **kw)

    def get_or_none(self, path: str, timeout: float = 30.0) -> JSON | None:
        status, payload = self.request("GET", path, timeout=timeout)
        if status == 404:
            return None
        if status != 200:
            raise ApiError("GET", path, status, payload)
        result: JSON = orjson.loads(payload)
        return result

    def create(self, path: str, obj: JSON) -> JSON:
        return self.call("POST", path, obj)

    def patch(self, path: str, patch: object, kind: str = "merge", **kw: Any) -> JSON:
        """PATCH with ``kind`` one of merge, strategic, json, apply."""
        return self.call("PATCH", path, patch, content_type=PATCH_TYPES[kind], **kw)

    def delete(self, path: str, grace_seconds: int | None = None) -> bool:
        """DELETE; returns False if it was already gone."""
        body = None if grace_seconds is None else {"gracePeriodSeconds": grace_seconds}
        status, payload = self.request("DELETE", path, body)
        if status == 404:
            return False
        if not 200 <= status < 300:
            raise ApiError("DELETE", path, status, payload)
        return True

    def first_watch_event(self, path: str, resource_version: str, timeout: float = 10.0) -> JSON:
        """Open a raw watch at ``resource_version`` and return its first event.

        A non-200 answer is returned as ``{"type": "HTTP", "code": status, ...}``, so a
        caller can check for 410 Gone whichever way the apiserver reports it.
        """
        query = {"watch": "1", "resourceVersion": resource_version, "timeoutSeconds": "5"}
        conn = http.client.HTTPSConnection(self.host, self.port, context=self._ssl, timeout=timeout)
        try:
            conn.request(
                "GET",
                f"{path}?{urllib.parse.urlencode(query)}",
                headers={**self._auth(), "User-Agent": USER_AGENT},
            )
            resp = conn.getresponse()
            if resp.status != 200:
                return {"type": "HTTP", "code": resp.status, "body": resp.read().decode()}
            line = resp.readline()
            event: JSON = orjson.loads(line) if line.strip() else {"type": "NONE"}
            return event
        finally:
            conn.close()


def write_kubeconfig(path: Path, server: str, ca_file: Path, token: str, user: str) -> Path:
    """Write a single-context kubeconfig (CA-verified, bearer token) and return its path."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "lab", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": user}}],
        "current-context": "lab",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path
