"""Wiring of one running controller: every long-lived task in one task group.

Node reflector -> healer (cache, wheel, actions, resync); the leader elector
gates writes; the balancer (when on) has its own pod reflector. Cancelling
the group (SIGTERM) stops them all; the elector releases the lease on the way
out, and no task is left behind.
"""

from __future__ import annotations

import logging

import anyio

from asklepios.config import Settings
from asklepios.engine.balancer import Balancer
from asklepios.engine.gate import AlwaysOpen, WriteGate
from asklepios.engine.healer import Healer
from asklepios.engine.leader import LeaderElector, default_identity
from asklepios.kube.client import KubeClient
from asklepios.kube.events import EventRecorder
from asklepios.kube.lease import LeaseApi
from asklepios.kube.nodes import NodeApi, parse_node
from asklepios.kube.pods import Evictions, PodApi, parse_pod
from asklepios.kube.reflector import Hooks, Reflector
from asklepios.observe import metrics
from asklepios.observe.health import Health

log = logging.getLogger("asklepios")
LEASE_NAME = "asklepios"


def _hooks(health: Health, resource: str) -> Hooks:
    return Hooks(
        progress=lambda: health.beat(resource),
        restarted=lambda cause: metrics.WATCH_RESTARTS.labels(resource=resource, cause=cause).inc(),
        synced=lambda: health.synced(resource),
    )


async def run_controller(settings: Settings, client: KubeClient, health: Health) -> None:
    """Run until cancelled."""
    elector: LeaderElector | None = None
    gate: WriteGate = AlwaysOpen()
    if settings.leader_election:
        elector = LeaderElector(
            lease=LeaseApi(client, settings.namespace, LEASE_NAME),
            identity=default_identity(),
            lease_duration=settings.lease_duration_seconds,
            renew_deadline=settings.lease_renew_seconds,
            retry_period=settings.lease_retry_seconds,
        )
        gate = elector
    else:
        metrics.IS_LEADER.set(1)
    healer = Healer(
        settings=settings,
        nodes=NodeApi(client),
        pods=PodApi(client),
        events=EventRecorder(client),
        gate=gate,
    )
    nodes = Reflector(
        client=client,
        path="/api/v1/nodes",
        parse=parse_node,
        label_selector=str(settings.node_selector),
        watch_timeout=settings.watch_timeout_seconds,
        hooks=_hooks(health, "nodes"),
    )
    health.expect("nodes", silence=settings.watch_timeout_seconds + 60)
    log.info(
        "starting",
        extra={
            "node_selector": str(settings.node_selector),
            "kickout_seconds": settings.kickout_seconds,
            "kickin_seconds": settings.kickin_seconds,
            "dry_run": settings.dry_run,
            "leader_election": settings.leader_election,
            "apiserver": client.host,
        },
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(nodes.run, healer)
        tg.start_soon(healer.run)
        if elector is not None:
            elector.on_started = healer.resync
            tg.start_soon(elector.run)
        if settings.balancer:
            balancer = Balancer(
                settings=settings,
                evictions=Evictions(client),
                events=healer.events,
                nodes=lambda: healer.views,
                gate=gate,
            )
            healer.on_kickin = lambda _node: balancer.trigger()
            health.expect("pods", silence=settings.watch_timeout_seconds + 60, gates_readiness=False)
            for path in _pod_paths(settings):
                pods = Reflector(
                    client=client,
                    path=path,
                    parse=parse_pod,
                    label_selector=str(settings.balancer_selector),
                    watch_timeout=settings.watch_timeout_seconds,
                    hooks=_hooks(health, "pods"),
                )
                tg.start_soon(pods.run, balancer.shard())
            tg.start_soon(balancer.run)


def _pod_paths(settings: Settings) -> list[str]:
    if not settings.balancer_namespaces:
        return ["/api/v1/pods"]
    return [f"/api/v1/namespaces/{ns}/pods" for ns in settings.balancer_namespaces]
