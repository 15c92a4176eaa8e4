"""`asklepios status`: every watched node's state, decided exactly as the controller decides it.

Reads the cluster with the same settings and changes nothing: the watched nodes
(and kicked-out nodes that left the selector), the pods of kicked-out nodes, and,
with fencing on, each BMC's PowerState. The verdict comes from the same pure
`judge` the controller runs, starting from the nodes' own marks, so a countdown
shown here is the one the controller keeps.
"""

from __future__ import annotations

from datetime import datetime

import anyio
import attrs

from asklepios.config import Settings
from asklepios.core.fencing import FencingError
from asklepios.core.guard import hold_reason
from asklepios.core.judge import judge
from asklepios.core.node import NodeView
from asklepios.core.periods import NodeMemory, remember
from asklepios.core.pod import NodePods
from asklepios.engine.clock import Clock
from asklepios.engine.fencing import Fencer
from asklepios.kube.client import ApiError, KubeClient
from asklepios.kube.nodes import NodeApi
from asklepios.kube.pods import PodApi
from asklepios.kube.secrets import SecretApi


@attrs.frozen
class NodeRow:
    name: str
    ready: str
    since: datetime | None
    state: str
    reason: str  # the hold reason, or what a state waits for
    seconds: float | None  # to the next action
    pods: tuple[str, ...] = ()
    power: str = ""  # the PowerState its BMC reports, for nodes with asklepios.io/bmc

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "ready": self.ready,
            "since": self.since.isoformat() if self.since else None,
            "state": self.state,
            "reason": self.reason or None,
            "seconds_to_next_action": None if self.seconds is None else round(self.seconds, 1),
            "pods": list(self.pods),
            "power": self.power or None,
        }


async def followed_nodes(settings: Settings, client: KubeClient) -> list[NodeView]:
    api = NodeApi(client)
    views = {v.name: v for v in await api.list(str(settings.node_selector))}
    for view in await api.list("", field_selector="spec.unschedulable=true"):
        if view.kickout is not None:
            views.setdefault(view.name, view)
    return sorted(views.values(), key=lambda v: v.name)


async def node_rows(settings: Settings, client: KubeClient, clock: Clock, views: list[NodeView]) -> list[NodeRow]:
    selected = [v for v in views if settings.node_selector.matches(v.labels) and v.excluded_by is None]
    guard = hold_reason(settings.max_unhealthy, len(selected), sum(1 for v in selected if not v.ready.is_ready))
    fencer = None
    if settings.fencing_on:
        from asklepios.fence.redfish import RedfishBmc  # noqa: PLC0415 - sushy only when fencing is on

        secret = SecretApi(client, settings.namespace, settings.fencing_secret)
        fencer = Fencer(RedfishBmc(), secret, clock, settings.fencing_timeout_seconds, settings.fencing_insecure)
    rows = []
    for view in views:
        now = clock.now()
        pods = None
        if view.kickout is not None:
            try:
                pods = NodePods.of(await PodApi(client).on_node(view.name), view.kickout)
            except ApiError:
                pods = NodePods(synced=False)
        memory = remember(view, NodeMemory(), now)
        verdict = judge(view, memory, now=now, timing=settings.timing, guard=guard, pods=pods)
        reason = verdict.hold.value if verdict.hold else verdict.detail
        power = await _power(fencer, view) if fencer is not None and view.bmc else ""
        rows.append(
            NodeRow(
                view.name,
                view.ready.value,
                verdict.since or view.ready_since,
                verdict.state.value,
                reason,
                verdict.seconds_left(now),
                verdict.pods,
                power,
            )
        )
    return rows


async def _power(fencer: Fencer, view: NodeView) -> str:
    with anyio.move_on_after(15):
        try:
            return await fencer.power_state(view)
        except FencingError as exc:
            return f"unknown ({exc})"
    return "unknown (the BMC did not answer)"
