"""The mass-failure guard: hold new kickouts while too many nodes look dead.

A network partition or an apiserver outage makes many nodes NotReady at once
while they are in fact running; tainting them all would evict everything. Like
medik8s' maxUnhealthy, new kickouts wait while more watched nodes than the
limit are NotReady.
"""

from __future__ import annotations

import math
import re

import attrs


@attrs.frozen
class MaxUnhealthy:
    """`ASKLEPIOS_MAX_UNHEALTHY`: a count, or a percent of watched nodes."""

    value: int
    percent: bool

    _SYNTAX = re.compile(r"^(\d+)(%?)$")

    @classmethod
    def parse(cls, raw: str) -> MaxUnhealthy:
        match = cls._SYNTAX.match(raw.strip())
        if match is None:
            raise ValueError("a whole number (e.g. 2) or a percent (e.g. 50%)")
        value, percent = int(match.group(1)), bool(match.group(2))
        if percent and value > 100:
            raise ValueError("a percent from 0% to 100%")
        return cls(value=value, percent=percent)

    def limit(self, watched: int) -> int:
        """How many NotReady nodes are tolerated among `watched` (at least 1)."""
        if not self.percent:
            return max(1, self.value)
        return max(1, math.floor(watched * self.value / 100))

    def __str__(self) -> str:
        return f"{self.value}{'%' if self.percent else ''}"


def hold_reason(max_unhealthy: MaxUnhealthy, watched: int, notready: int) -> str | None:
    """Why new kickouts are held ("too many NotReady": the details), or None when they may go ahead.

    `watched` and `notready` count only nodes that can be kicked out: an excluded
    node powered off for maintenance must not hold everybody else's kickout.
    """
    limit = max_unhealthy.limit(watched)
    if notready > limit:
        return (
            f"{notready} of {watched} watched nodes are NotReady "
            f"(ASKLEPIOS_MAX_UNHEALTHY={max_unhealthy} allows {limit}; excluded nodes are not counted)"
        )
    return None
