"""Frozen values describing a node as Asklepios sees it, and the names it writes.

The kube adapter turns an apiserver Node into a `NodeView`; everything after
that works on these values only. They carry just what the decision needs, so a
cache of thousands of nodes stays small.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType

import attrs

OUT_OF_SERVICE_TAINT_KEY = "node.kubernetes.io/out-of-service"
OUT_OF_SERVICE_TAINT_VALUE = "nodeshutdown"
LEGACY_SKIP_TAINT_KEY = "node.kubernetes.io/asklepios"
LEGACY_SKIP_TAINT_VALUE = "skip"
EXCLUDE_LABEL = "asklepios.io/exclude"
KICKOUT_ANNOTATION = "asklepios.io/kickout"
NOTREADY_ANNOTATION = "asklepios.io/notready-since"


class ReadyStatus(enum.Enum):
    """The status of a node's `Ready` condition; MISSING when it has none."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"
    MISSING = "Missing"

    @classmethod
    def parse(cls, raw: str | None) -> ReadyStatus:
        if raw is None:
            return cls.MISSING
        try:
            return cls(raw)
        except ValueError:
            return cls.UNKNOWN

    @property
    def is_ready(self) -> bool:
        return self is ReadyStatus.TRUE


@attrs.frozen
class Taint:
    key: str
    value: str = ""
    effect: str = "NoExecute"

    def to_api(self) -> dict[str, str]:
        out = {"key": self.key, "effect": self.effect}
        if self.value:
            out["value"] = self.value
        return out


OUT_OF_SERVICE_TAINT = Taint(OUT_OF_SERVICE_TAINT_KEY, OUT_OF_SERVICE_TAINT_VALUE, "NoExecute")


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _parse_time(raw: object) -> datetime | None:
    if not isinstance(raw, str) or not raw:
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None


@attrs.frozen
class KickoutRecord:
    """What Asklepios changed at kickout: the `asklepios.io/kickout` annotation.

    `cordoned`/`tainted` are False where the node already was cordoned or
    tainted before: kickin then leaves that alone.
    """

    at: datetime
    cordoned: bool
    tainted: bool

    def encode(self) -> str:
        return json.dumps(
            {"at": _rfc3339(self.at), "cordoned": self.cordoned, "tainted": self.tainted},
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, raw: str) -> KickoutRecord | None:
        """Parse the annotation; None when it is not ours or is damaged."""
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        at = _parse_time(data.get("at"))
        cordoned, tainted = data.get("cordoned"), data.get("tainted")
        if at is None or not isinstance(cordoned, bool) or not isinstance(tainted, bool):
            return None
        return cls(at=at, cordoned=cordoned, tainted=tainted)


@attrs.frozen
class NotReadyMark:
    """The start of a node's continuous NotReady period, kept across restarts.

    The Ready condition's `lastTransitionTime` moves on a False<->Unknown flip,
    so it cannot tell when the period began. Asklepios records the start in the
    `asklepios.io/notready-since` annotation together with the transition time
    it had seen; the mark still applies while that transition time is unchanged.
    """

    since: datetime
    condition_since: datetime | None

    def encode(self) -> str:
        cond = None if self.condition_since is None else _rfc3339(self.condition_since)
        return json.dumps({"since": _rfc3339(self.since), "condition": cond}, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str) -> NotReadyMark | None:
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        since = _parse_time(data.get("since"))
        if since is None:
            return None
        return cls(since=since, condition_since=_parse_time(data.get("condition")))


_EMPTY: Mapping[str, str] = MappingProxyType({})


@attrs.frozen
class NodeView:
    """A node reduced to what the healer decides on."""

    name: str
    uid: str = ""
    resource_version: str = ""
    labels: Mapping[str, str] = _EMPTY
    ready: ReadyStatus = ReadyStatus.TRUE
    ready_since: datetime | None = None  # the Ready condition's lastTransitionTime
    unschedulable: bool = False
    taints: tuple[Taint, ...] = ()
    kickout: KickoutRecord | None = None
    notready_mark: NotReadyMark | None = None

    @property
    def has_out_of_service_taint(self) -> bool:
        return any(t.key == OUT_OF_SERVICE_TAINT_KEY and t.effect == "NoExecute" for t in self.taints)

    @property
    def excluded_by(self) -> str | None:
        """Why this node must never be kicked out, or None."""
        if self.labels.get(EXCLUDE_LABEL) == "true":
            return f"label {EXCLUDE_LABEL}=true"
        for t in self.taints:
            if t.key == LEGACY_SKIP_TAINT_KEY and t.value == LEGACY_SKIP_TAINT_VALUE:
                return f"taint {LEGACY_SKIP_TAINT_KEY}={LEGACY_SKIP_TAINT_VALUE}"
        return None


def parse_time(raw: object) -> datetime | None:
    """RFC 3339 timestamp as written by the apiserver, or None."""
    return _parse_time(raw)


def format_time(moment: datetime) -> str:
    return _rfc3339(moment)
