"""What Asklepios keeps on a node in its own annotations, so a restart continues exactly.

Everything the controller needs to resume lives in the cluster, not in process
memory: what a kickout changed (`asklepios.io/kickout`, so kickin undoes exactly
that), and when the current NotReady or Ready period was first seen
(`asklepios.io/notready-since`, `asklepios.io/ready-since`, so a countdown keeps its
deadline across restarts and leader changes). These are their values and codecs.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import attrs

KICKOUT_ANNOTATION = "asklepios.io/kickout"
NOTREADY_ANNOTATION = "asklepios.io/notready-since"
READY_ANNOTATION = "asklepios.io/ready-since"
BMC_ANNOTATION = "asklepios.io/bmc"

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a `Z`, as the apiserver writes times."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(raw: object) -> datetime | None:
    """RFC 3339 timestamp as written by the apiserver, or None."""
    if not isinstance(raw, str) or not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _object(raw: str) -> dict[str, object] | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


@attrs.frozen
class KickoutRecord:
    """What Asklepios changed at kickout: the `asklepios.io/kickout` annotation.

    `cordoned`/`tainted` are False where the node already was cordoned or tainted
    before: kickin then leaves that alone. `fenced`: its BMC powered it off first.
    `since` (NotReady period start), `released` (the last pre-kickout pod gone) and
    `powered_on` (a fenced node switched on again) let a restarted replica carry on
    without repeating an Event, a metric or a power action.
    A `damaged` record (not our JSON) is treated as "cordoned and tainted by us":
    forgetting it would leave the node cordoned and tainted for good.
    """

    at: datetime
    cordoned: bool
    tainted: bool
    fenced: bool = False
    since: datetime | None = None
    released: datetime | None = None
    powered_on: datetime | None = None
    damaged: bool = False

    def encode(self) -> str:
        data: dict[str, object] = {"at": format_time(self.at), "cordoned": self.cordoned, "tainted": self.tainted}
        if self.fenced:
            data["fenced"] = True
        for key, moment in (("since", self.since), ("released", self.released), ("powered_on", self.powered_on)):
            if moment is not None:
                data[key] = format_time(moment)
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str) -> KickoutRecord:
        """Parse the annotation; a value that is not ours gives a `damaged` record."""
        data = _object(raw)
        at = parse_time(data.get("at")) if data else None
        if data is None or at is None:
            return cls.damaged_record()
        cordoned, tainted, fenced = data.get("cordoned"), data.get("tainted"), data.get("fenced", False)
        if not isinstance(cordoned, bool) or not isinstance(tainted, bool) or not isinstance(fenced, bool):
            return cls.damaged_record()
        return cls(
            at=at,
            cordoned=cordoned,
            tainted=tainted,
            fenced=fenced,
            since=parse_time(data.get("since")),
            released=parse_time(data.get("released")),
            powered_on=parse_time(data.get("powered_on")),
        )

    @classmethod
    def damaged_record(cls) -> KickoutRecord:
        return cls(at=EPOCH, cordoned=True, tainted=True, damaged=True)


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

    def encode(self) -> str:
        cond = None if self.condition is None else format_time(self.condition)
        return json.dumps({"since": format_time(self.since), "condition": cond}, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str) -> PeriodMark | None:
        data = _object(raw)
        since = parse_time(data.get("since")) if data else None
        if data is None or since is None:
            return None
        return cls(since=since, condition=parse_time(data.get("condition")))
