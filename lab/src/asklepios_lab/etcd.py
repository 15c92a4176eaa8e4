"""The lab's etcd: one fast, disposable member, and the history compaction tests need.

A single member on 127.0.0.1 with ``--unsafe-no-fsync`` (durability is worthless for a
throwaway cluster, speed is not). Its gRPC gateway (HTTP/JSON) is used for health,
the current revision and compaction, so no etcdctl binary is needed. Compaction is how
tests make an old resourceVersion expire (410 Gone) on demand, instead of waiting for
the apiserver's own periodic compaction.
"""

from __future__ import annotations

import base64
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from .procs import Proc, free_port


class Etcd:
    """Process and HTTP gateway of one etcd member."""

    def __init__(self, binary: Path, data_dir: Path, log_dir: Path) -> None:
        client, peer = free_port(), free_port()
        self.url = f"http://127.0.0.1:{client}"
        peer_url = f"http://127.0.0.1:{peer}"
        self.proc = Proc(
            "etcd",
            [
                str(binary),
                "--name=lab",
                f"--data-dir={data_dir}",
                f"--listen-client-urls={self.url}",
                f"--advertise-client-urls={self.url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=lab={peer_url}",
                "--unsafe-no-fsync",
                "--log-level=warn",
                "--quota-backend-bytes=8589934592",
            ],
            log_dir / "etcd.log",
        )

    def _post(self, path: str, body: object) -> dict[str, Any]:
        req = urllib.request.Request(  # noqa: S310 (http to the local etcd)
            self.url + path,
            data=orjson.dumps(body),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            result: dict[str, Any] = orjson.loads(resp.read())
            return result

    def healthy(self) -> bool:
        """True once ``/health`` answers ``{"health": "true"}``."""
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:  # noqa: S310
                return bool(orjson.loads(resp.read()).get("health") == "true")
        except OSError:
            return False

    def revision(self) -> int:
        """The current revision (what Kubernetes calls the latest resourceVersion)."""
        header = self._post("/v3/kv/range", {"key": base64.b64encode(b"/").decode()})["header"]
        return int(header["revision"])

    def bump(self, times: int = 1) -> int:
        """Advance the revision by writing a scratch key outside Kubernetes' prefix; returns it."""
        key = base64.b64encode(b"/asklepios-lab/bump").decode()
        for _ in range(times):
            self._post("/v3/kv/put", {"key": key, "value": key})
        return self.revision()

    def compact(self) -> int:
        """Compact (physically) to the current revision; returns that revision."""
        revision = self.revision()
        self._post("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision
