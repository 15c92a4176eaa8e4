"""Asklepios' own records: what it changed on a node, when its periods began, what it saw.

Every kubelet may rewrite its own Node's annotations, so nothing Asklepios relies on
to act or to undo may live there. Its records live in one ConfigMap in its own
namespace (`asklepios-records`), which only Asklepios and admins can write; one data
key per node (`node.<name>`) holds that node's `NodeRecord`, and the key `pause` an
operator's pause. The node annotation `asklepios.io/kickout` is only a mirror for
`kubectl describe node`: written with the kickout, never read back as truth.

Decoding is total: anything that is not exactly ours (a damaged entry, an admin's
typo, a value nested a million deep) decodes to None and is logged and ignored by
the caller; it never makes Asklepios undo anything, act sooner, or stop.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import attrs
import orjson

KICKOUT_ANNOTATION = "asklepios.io/kickout"  # the mirror on the node, for people
BMC_ANNOTATION = "asklepios.io/bmc"  # no longer read: `check` warns where it is left
RECORDS_CONFIGMAP = "asklepios-records"
BALANCER_CONFIGMAP = "asklepios-balancer"  # the balancer's state per StatefulSet (engine/balancer.py)
NODE_KEY_PREFIX = "node."
PAUSE_KEY = "pause"
MAX_RECORD_BYTES = 16_384  # far above any record of ours: a longer value is not ours

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a `Z`, as the apiserver writes times."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(raw: object) -> datetime | None:
    """RFC 3339 timestamp as written by the apiserver, or None (never raises)."""
    if not isinstance(raw, str) or not raw or len(raw) > 64:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def load_object(raw: object) -> dict[str, Any] | None:
    """A JSON object from a stored string, or None for anything else (never raises)."""
    if not isinstance(raw, str) or len(raw) > MAX_RECORD_BYTES:
        return None
    try:
        data = orjson.loads(raw)
    except (orjson.JSONDecodeError, RecursionError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _times(raw: object) -> tuple[datetime, ...]:
    if not isinstance(raw, list):
        return ()
    return tuple(t for t in (parse_time(item) for item in raw[:100]) if t is not None)


def _opt(data: dict[str, Any], key: str, moment: datetime | None) -> None:
    if moment is not None:
        data[key] = format_time(moment)


@attrs.frozen
class KickoutRecord:
    """What one kickout changed, and what happened since.

    `cordoned`/`tainted` are False where the node already was cordoned or tainted
    before: kickin then leaves that alone. `fenced`: Asklepios powered it off (a BMC
    that already read Off is `found_off`, and is never switched on by Asklepios).
    `since`: start of the NotReady period it ended. `verified`: the last time the death
    verdict passed for this kickout's taint (at kickout, at a repair); force delete
    needs one in the current NotReady period. `released`, `powered_on`: the last
    pre-kickout pod gone, a fenced node switched on again. `evidence`: what the
    verdict saw, for `asklepios status NODE` the next morning.
    """

    at: datetime
    cordoned: bool
    tainted: bool
    fenced: bool = False
    found_off: bool = False
    since: datetime | None = None
    verified: datetime | None = None
    released: datetime | None = None
    powered_on: datetime | None = None
    volumes_released: datetime | None = None  # no VolumeAttachment of the node from before the kickout left
    evidence: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"at": format_time(self.at), "cordoned": self.cordoned, "tainted": self.tainted}
        if self.fenced:
            data["fenced"] = True
        if self.found_off:
            data["found_off"] = True
        for key, moment in (
            ("since", self.since),
            ("verified", self.verified),
            ("released", self.released),
            ("powered_on", self.powered_on),
            ("volumes_released", self.volumes_released),
        ):
            _opt(data, key, moment)
        if self.evidence:
            data["evidence"] = list(self.evidence)
        return data

    @classmethod
    def from_json(cls, data: object) -> KickoutRecord | None:
        if not isinstance(data, dict):
            return None
        at = parse_time(data.get("at"))
        flags = [data.get("cordoned"), data.get("tainted"), data.get("fenced", False), data.get("found_off", False)]
        if at is None or not all(isinstance(f, bool) for f in flags):
            return None
        evidence = data.get("evidence", [])
        if not isinstance(evidence, list) or not all(isinstance(e, str) for e in evidence):
            return None
        return cls(
            at=at,
            cordoned=flags[0],
            tainted=flags[1],
            fenced=flags[2],
            found_off=flags[3],
            since=parse_time(data.get("since")),
            verified=parse_time(data.get("verified")),
            released=parse_time(data.get("released")),
            powered_on=parse_time(data.get("powered_on")),
            volumes_released=parse_time(data.get("volumes_released")),
            evidence=tuple(e[:500] for e in evidence[:20]),
        )

    def mirror(self) -> str:
        """The `asklepios.io/kickout` annotation: the contract's shape, for people."""
        data: dict[str, Any] = {"at": format_time(self.at), "cordoned": self.cordoned, "tainted": self.tainted}
        if self.fenced:
            data["fenced"] = True
        return orjson.dumps(data).decode()


@attrs.frozen
class PeriodMark:
    """The start of a node's current NotReady (or Ready) period, as first seen.

    The Ready condition's `lastTransitionTime` moves on a False<->Unknown flip, and
    comes from a clock that may be behind, so it cannot tell when the period began.
    The mark keeps the start together with the transition time seen with it; it
    still applies while that transition time is unchanged.
    """

    since: datetime
    condition: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "since": format_time(self.since),
            "condition": None if self.condition is None else format_time(self.condition),
        }

    @classmethod
    def from_json(cls, data: object) -> PeriodMark | None:
        if not isinstance(data, dict):
            return None
        since = parse_time(data.get("since"))
        return None if since is None else cls(since=since, condition=parse_time(data.get("condition")))


@attrs.frozen
class NodeRecord:
    """Everything Asklepios keeps about one node (the data key `node.<name>`)."""

    kickout: KickoutRecord | None = None
    notready: PeriodMark | None = None  # the current NotReady period (kicked out or not)
    ready: PeriodMark | None = None  # a kicked-out node's current Ready period
    kickouts: tuple[datetime, ...] = ()  # recent kickout times: flap damping
    flapping: bool = False  # kicked out too often: stays out until `asklepios release`
    release: datetime | None = None  # `asklepios release NODE` asked at this time: end the kickout now
    force_off: datetime | None = None  # Asklepios was about to send ForceOff (this NotReady period): Off is ours

    @property
    def empty(self) -> bool:
        return self == NodeRecord()

    def encode(self) -> str:
        data: dict[str, Any] = {}
        if self.kickout is not None:
            data["kickout"] = self.kickout.to_json()
        if self.notready is not None:
            data["notready"] = self.notready.to_json()
        if self.ready is not None:
            data["ready"] = self.ready.to_json()
        if self.kickouts:
            data["kickouts"] = [format_time(t) for t in self.kickouts]
        if self.flapping:
            data["flapping"] = True
        _opt(data, "release", self.release)
        _opt(data, "force_off", self.force_off)
        return orjson.dumps(data).decode()

    @classmethod
    def decode(cls, raw: object) -> NodeRecord | None:
        """Our record, or None when the value is not exactly ours (never raises)."""
        data = load_object(raw)
        if data is None:
            return None
        kickout = KickoutRecord.from_json(data["kickout"]) if "kickout" in data else None
        if "kickout" in data and kickout is None:
            return None  # a damaged kickout record is not ours: never undo anything from it
        flapping = data.get("flapping", False)
        if not isinstance(flapping, bool):
            return None
        return cls(
            kickout=kickout,
            notready=PeriodMark.from_json(data.get("notready")),
            ready=PeriodMark.from_json(data.get("ready")),
            kickouts=_times(data.get("kickouts")),
            flapping=flapping,
            release=parse_time(data.get("release")),
            force_off=parse_time(data.get("force_off")),
        )


@attrs.frozen
class Pause:
    """`asklepios pause`: no kickout, fencing, power action or eviction starts."""

    since: datetime
    reason: str = ""
    by: str = ""

    def encode(self) -> str:
        return orjson.dumps({"since": format_time(self.since), "reason": self.reason, "by": self.by}).decode()

    @classmethod
    def decode(cls, raw: object) -> Pause | None:
        data = load_object(raw)
        since = parse_time(data.get("since")) if data else None
        if data is None or since is None:
            return None
        reason, by = data.get("reason", ""), data.get("by", "")
        return cls(since, reason[:500] if isinstance(reason, str) else "", by[:200] if isinstance(by, str) else "")


def node_key(node: str) -> str:
    return f"{NODE_KEY_PREFIX}{node}"
