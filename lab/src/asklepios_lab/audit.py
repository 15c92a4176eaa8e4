"""The apiserver's audit log: what a given identity really asked of the apiserver.

Tests and benchmarks check claims about Asklepios from the system's own records,
never from Asklepios' logs: the apiserver writes one JSON line per request of the
audited users (verb, resource, name, response code, timestamps; writes with their
request body), which is exactly "who wrote what, when".
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from . import jsonl

JSON = dict[str, Any]


def apiserver_args(workdir: Path, users: Sequence[str]) -> tuple[Path, list[str]]:
    """(log path, kube-apiserver flags) that audit `users`' requests at Metadata level."""
    policy = workdir / "audit-policy.yaml"
    policy.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "audit.k8s.io/v1",
                "kind": "Policy",
                # ResponseStarted is kept so that a watch is seen when it opens, not only when it ends.
                "omitStages": ["RequestReceived"],
                "rules": [
                    {"level": "Request", "users": list(users), "verbs": ["create", "update", "patch", "delete"]},
                    {"level": "Metadata", "users": list(users)},
                    {"level": "None"},
                ],
            }
        )
    )
    log = workdir / "logs" / "audit.jsonl"
    return log, [
        f"--audit-policy-file={policy}",
        f"--audit-log-path={log}",
        "--audit-log-format=json",
        "--audit-log-maxsize=0",  # never rotate: one file to read
    ]


def records(log: Path) -> list[JSON]:
    """Every audit event written so far, all stages, in order (a half-written last line waits)."""
    return jsonl.read(log)


def entries(log: Path, user: str | None = None) -> list[JSON]:
    """The audit events written so far (ResponseComplete stage), optionally of one user."""
    return [
        event
        for event in records(log)
        if event.get("stage") == "ResponseComplete" and (user is None or event.get("user", {}).get("username") == user)
    ]


def when(event: JSON) -> float:
    """The moment the apiserver received the request (Unix seconds, microsecond precision)."""
    return datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
