"""Frozen values for pods, as far as the healer and the balancer need them."""

from __future__ import annotations

from datetime import datetime

import attrs

from asklepios.core.node import KickoutRecord


@attrs.frozen
class PodRef:
    namespace: str
    name: str
    created: datetime | None = None
    deleting_since: datetime | None = None  # metadata.deletionTimestamp


def stuck_before_kickout(pods: list[PodRef], record: KickoutRecord) -> list[PodRef]:
    """Pods still Terminating that were on the node before it was kicked out.

    Kickin waits for them: removing the out-of-service taint first would stop
    the control plane from force-deleting them, leaving them stuck for good.
    """
    return [p for p in pods if p.deleting_since is not None and (p.created is None or p.created <= record.at)]
