"""Wiring of one running controller: every long-lived task in one task group.

Two node reflectors (watched nodes, cordoned nodes) -> healer (cache, wheel,
actions, resync); one pod watch per kicked-out node; the leader elector gates
writes; the balancer (when on) has its own pod reflector. Cancelling the group
(SIGTERM) stops them all; the elector releases the lease on the way out, once the
healer's last write has ended (a kickout's patch is shielded, see `engine.kickout`),
and no task is left behind.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Awaitable, Callable

import anyio

from asklepios import __version__
from asklepios.config import Settings
from asklepios.core.node import NodeView
from asklepios.core.records import BALANCER_CONFIGMAP
from asklepios.engine.balancer import Balancer
from asklepios.engine.clock import SYSTEM_CLOCK, Clock
from asklepios.engine.fencing import Fencer
from asklepios.engine.gate import AlwaysOpen, CaughtUpGate, WriteGate
from asklepios.engine.healer import Healer
from asklepios.engine.kickout import Kickout
from asklepios.engine.leader import LeaderElector, default_identity
from asklepios.engine.nodebook import CORDONED, SELECTED
from asklepios.engine.nodepods import NodePodWatches
from asklepios.engine.nodevolumes import NodeVolumeWatch
from asklepios.engine.notes import Notes
from asklepios.engine.ports import (
    BmcPort,
    CredentialsPort,
    EventPort,
    NodeLeasePort,
    NodePort,
    PodDeletePort,
    PodWatchPort,
    ProbePort,
)
from asklepios.engine.records import RecordBook, RecordPort, RecordWriter
from asklepios.engine.recovery import Recovery
from asklepios.engine.retry import count_failure
from asklepios.engine.verdict import DeathCheck
from asklepios.engine.writes import NodeWriter
from asklepios.fence.probe import TcpProbe
from asklepios.kube.client import KubeClient
from asklepios.kube.events import EventRecorder
from asklepios.kube.lease import LeaseApi
from asklepios.kube.nodeleases import NodeLeaseApi
from asklepios.kube.nodes import NodeApi, parse_node
from asklepios.kube.pods import Evictions, PodApi, parse_pod
from asklepios.kube.records import RecordApi, RecordData, parse_records
from asklepios.kube.reflector import Hooks, Reflector
from asklepios.kube.secrets import SecretApi
from asklepios.observe import metrics
from asklepios.observe.health import Health

log = logging.getLogger("asklepios")
LEASE_NAME = "asklepios"
FULL_COLLECTION_EVERY = 100  # young (generation 1) collections between full ones; CPython: 10


def _hooks(health: Health | None, resource: str, kind: str) -> Hooks:
    return Hooks(
        progress=(lambda: health.beat(resource)) if health else lambda: None,
        restarted=lambda cause: metrics.WATCH_RESTARTS.labels(resource=resource, cause=cause).inc(),
        synced=(lambda: health.synced(resource)) if health else lambda: None,
        skipped=lambda: metrics.OBJECTS_SKIPPED.labels(kind=kind).inc(),
    )


def build_healer(
    settings: Settings,
    *,
    clock: Clock,
    gate: WriteGate,
    nodes: NodePort,
    leases: NodeLeasePort,
    probe: ProbePort,
    bmc: BmcPort | None,
    credentials: CredentialsPort | None,
    pods: PodWatchPort,
    deleter: PodDeletePort,
    events: EventPort,
    records: RecordPort,
    book: RecordBook | None = None,
) -> Healer:
    """The healer and its helpers, from its ports (the real ones here, fakes in unit tests)."""
    notes, book = Notes(), book if book is not None else RecordBook()
    writer = NodeWriter(nodes, gate, attach=book.attach)
    record_writer = RecordWriter(records, book, gate, writer.budget)
    fencer = None
    if settings.fencing_on and bmc is not None and credentials is not None:
        fencer = Fencer(bmc, credentials, clock, settings.fencing_timeout_seconds, settings.fencing_insecure)
    check = DeathCheck(settings, clock, gate, leases, probe, fencer, events, notes, record_writer)
    kickout = Kickout(settings, clock, gate, check, nodes, writer, record_writer, events)
    recovery = Recovery(settings, clock, gate, pods, deleter, fencer, check, writer, record_writer, events, notes)
    return Healer(settings, clock, gate, writer, kickout, recovery, check, book, record_writer, pods, events, notes)


async def run_controller(settings: Settings, client: KubeClient, health: Health, clock: Clock = SYSTEM_CLOCK) -> None:
    """Run until cancelled."""
    metrics.BUILD.info({"version": __version__})
    elector: LeaderElector | None = None
    caught_up: CaughtUpGate | None = None
    gate: WriteGate = AlwaysOpen()
    record_api, book = RecordApi(client, settings.namespace), RecordBook()
    if settings.leader_election:
        elector = LeaderElector(
            lease=LeaseApi(client.for_leader_election(), settings.namespace, LEASE_NAME),
            identity=default_identity(),
            lease_duration=settings.lease_duration_seconds,
            renew_deadline=settings.lease_renew_seconds,
            retry_period=settings.lease_retry_seconds,
            clock=clock,
        )
        gate = caught_up = CaughtUpGate(elector, record_api, book)
    else:
        metrics.IS_LEADER.set(1)
    events = EventRecorder(client, now=clock.now, failed=lambda exc: count_failure("event", exc))
    pod_watches = NodePodWatches(client, settings.watch_timeout_seconds, _hooks(None, "node pods", "pod"))
    bmc: BmcPort | None = None
    credentials: CredentialsPort | None = None
    if settings.fencing_on:
        from asklepios.fence.redfish import RedfishBmc  # noqa: PLC0415 - sushy is loaded only when fencing is on

        bmc, credentials = RedfishBmc(), SecretApi(client, settings.namespace, settings.fencing_secret)
        if settings.fencing_insecure:
            log.warning("ASKLEPIOS_FENCING_INSECURE=true: BMC certificates are not verified")
    healer = build_healer(
        settings,
        clock=clock,
        gate=gate,
        nodes=NodeApi(client),
        leases=NodeLeaseApi(client),
        probe=TcpProbe(),
        bmc=bmc,
        credentials=credentials,
        pods=pod_watches,
        deleter=PodApi(client),
        events=events,
        records=record_api,
        book=book,
    )
    pod_watches.changed = healer.schedule
    volume_watch = NodeVolumeWatch(
        client, settings.watch_timeout_seconds, _hooks(None, "volumeattachments", "volumeattachment")
    )
    volume_watch.changed = healer.schedule
    healer.volumes = volume_watch
    records: Reflector[RecordData] = Reflector(
        client=client,
        path=record_api.collection,
        parse=parse_records,
        field_selector=record_api.field_selector,
        watch_timeout=settings.watch_timeout_seconds,
        hooks=_hooks(health, "records", "record"),
    )

    def node_reflector(kind: str, label_selector: str = "", field_selector: str = "") -> Reflector[NodeView]:
        return Reflector(
            client=client,
            path="/api/v1/nodes",
            parse=parse_node,
            label_selector=label_selector,
            field_selector=field_selector,
            watch_timeout=settings.watch_timeout_seconds,
            hooks=_hooks(health, f"nodes ({kind})" if kind != SELECTED else "nodes", "node"),
        )

    for name in ("records", "nodes", f"nodes ({CORDONED})"):
        health.expect(name, silence=settings.watch_timeout_seconds + 60)
    log.info(
        "starting",
        extra={
            "version": __version__,
            "node_selector": str(settings.node_selector),
            "kickout_seconds": settings.kickout_seconds,
            "kickin_seconds": settings.kickin_seconds,
            "dry_run": settings.dry_run,
            "leader_election": settings.leader_election,
            "probe_ports": list(settings.liveness_probe_ports),
            "fencing": settings.fencing,
            "force_delete": settings.force_delete,
            "apiserver": client.host,
        },
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(health.tick)
        tg.start_soon(records.run, healer.records)
        await healer.records.synced.wait()  # no node is judged before Asklepios knows its own records
        tg.start_soon(node_reflector(SELECTED, label_selector=str(settings.node_selector)).run, healer.source(SELECTED))
        tg.start_soon(node_reflector(CORDONED, field_selector="spec.unschedulable=true").run, healer.source(CORDONED))
        tg.start_soon(pod_watches.run)
        tg.start_soon(volume_watch.run)
        healer_stopped = anyio.Event()
        tg.start_soon(run_then_set, healer.run, healer_stopped)
        tg.start_soon(_freeze_the_synced_heap, health)
        if elector is not None and caught_up is not None:
            elector.on_started, caught_up.on_caught_up = caught_up.gained, healer.leadership_gained
            elector.writers_stopped = healer_stopped.wait  # the lease is released after the healer's last write
            tg.start_soon(caught_up.run)
            tg.start_soon(elector.run)
        if settings.balancer:
            _start_balancer(tg, settings, client, health, healer, gate, events, clock)


async def run_then_set(run: Callable[[], Awaitable[None]], stopped: anyio.Event) -> None:
    """Run `run`, then set `stopped` however it ended (the elector waits for it to release the lease)."""
    try:
        await run()
    finally:
        stopped.set()


async def _freeze_the_synced_heap(health: Health) -> None:
    """Once the first lists are in, what start-up built leaves the cyclic collector's sight.

    Modules, classes and the first view of every node stay for the process's life,
    yet each full collection scanned them all: at 5,000 nodes a 120-170 ms pause of
    the event loop every ~9 s in a storm (bench mass-outage, a gc callback). After
    `gc.freeze()` a full collection scans only what was made since; the frozen
    objects that are dropped later are still freed by reference counting.

    Full collections are then made ten times rarer than CPython's default. What
    they scan is mostly work in flight: when storm 1's restore brings the guard
    under its limit, about 2,400 nodes past their deadline are judged at once, and
    their waiting tasks were 200,000 of 244,000 live objects; each full collection
    then stalled the loop for up to 0.17-0.27 s, 15-17 of them in storm 1, and the
    leader's loop lag p99 went over 0.1 s in one run of three. Young collections
    stay as they are; cyclic garbage that reached the old generation waits longer,
    which the benchmark's RSS peak measures.
    """
    while health.not_ready() is not None:  # noqa: ASYNC110 - readiness is computed (syncs and staleness), not an event
        await anyio.sleep(1)
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
    log.debug("start-up heap frozen", extra={"objects": gc.get_freeze_count()})


def _start_balancer(
    tg: anyio.abc.TaskGroup,
    settings: Settings,
    client: KubeClient,
    health: Health,
    healer: Healer,
    gate: WriteGate,
    events: EventPort,
    clock: Clock,
) -> None:
    balancer = Balancer(
        settings=settings,
        evictions=Evictions(client),
        events=events,
        nodes=lambda: healer.views,
        gate=gate,
        clock=clock,
        record=RecordApi(client, settings.namespace, BALANCER_CONFIGMAP),
    )
    healer.on_schedulable = lambda _node: balancer.trigger()  # a kicked-in node may take its pods back
    health.expect("pods", silence=settings.watch_timeout_seconds + 60, gates_readiness=False)
    paths = [f"/api/v1/namespaces/{ns}/pods" for ns in settings.balancer_namespaces] or ["/api/v1/pods"]
    for path in paths:
        pods = Reflector(
            client=client,
            path=path,
            parse=parse_pod,
            label_selector=str(settings.balancer_selector),
            watch_timeout=settings.watch_timeout_seconds,
            hooks=_hooks(health, "pods", "pod"),
        )
        tg.start_soon(pods.run, balancer.shard())
    tg.start_soon(balancer.run)
