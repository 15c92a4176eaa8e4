"""The preflight's vocabulary: a `Finding` (ok, warning or failure) and how they add up."""

from __future__ import annotations

import enum
from collections.abc import Iterable

import attrs

# The checks, in the order they are printed.
VERSION = "version"
RBAC = "rbac"
NODES = "nodes"
GUARD = "max-unhealthy"
PODS = "pods"
LEASES = "node-leases"
PROBE = "probe"
VOLUMES = "volumes"
BALANCER = "balancer"
FENCING = "fencing"

NODE_LEASE_NAMESPACE = "kube-node-lease"
LEASE_NAME = "asklepios"
SEE_RBAC = "grant it: see README 'RBAC' (k8s/base/rbac.yaml)"
MAX_NAMES = 10
BMC_SAMPLE = 5


class Status(enum.Enum):
    OK = "ok"
    WARNING = "warning"
    FAILURE = "failure"

    @property
    def symbol(self) -> str:
        return {"ok": "✔", "warning": "!", "failure": "✘"}[self.value]


@attrs.frozen
class Finding:
    """One line of `asklepios check`: what was found and, unless ok, what to do."""

    status: Status
    check: str
    message: str
    todo: str = ""
    blocks_start: bool = False  # `asklepios run` refuses to start (only a too old apiserver)


def ok(check: str, message: str) -> Finding:
    return Finding(Status.OK, check, message)


def warning(check: str, message: str, todo: str) -> Finding:
    return Finding(Status.WARNING, check, message, todo)


def failure(check: str, message: str, todo: str) -> Finding:
    return Finding(Status.FAILURE, check, message, todo)


def exit_status(findings: Iterable[Finding]) -> int:
    """0 when nothing failed, 1 otherwise."""
    return 1 if any(f.status is Status.FAILURE for f in findings) else 0


def names(items: Iterable[str], limit: int = MAX_NAMES) -> str:
    """`a, b, c`, or the first `limit` and "and N more"."""
    listed = list(items)
    shown = ", ".join(listed[:limit])
    return f"{shown} and {len(listed) - limit} more" if len(listed) > limit else shown


def plural(count: int, noun: str, many: str | None = None) -> str:
    return f"{count} {noun if count == 1 else (many or noun + 's')}"


def have(count: int) -> str:
    return "has" if count == 1 else "have"
