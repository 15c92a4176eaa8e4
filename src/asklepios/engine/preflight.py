"""`asklepios check`, and the same checks when `asklepios run` starts: gather, then judge.

Reads the cluster with the running settings and changes nothing: the server's
version, an access review for every permission the settings need, the watched
nodes, the pods on them, the node Leases, with the balancer on its StatefulSets'
PodDisruptionBudgets, with fencing on the inventory in the Secret and a sample of
BMCs (answering, and each the node's own machine by its System UUID). Independent
reads run at once, each under a deadline; a read that fails (403, an unreachable
apiserver, a BMC that does not answer) becomes a finding, never an exception. The rules are `core.preflight`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import anyio
import attrs

from asklepios.config import Settings
from asklepios.core.fencing import FencingError, bmc_target
from asklepios.core.node import NodeView
from asklepios.core.preflight import (
    BALANCER,
    FENCING,
    LEASES,
    NODES,
    PODS,
    RBAC,
    SEE_RBAC,
    VOLUMES,
    Finding,
    Need,
    PodSeen,
    PowerSeen,
    Review,
    annotation_finding,
    balancer_finding,
    bmc_findings,
    claims_with_pinned_volumes,
    failure,
    fencing_findings,
    guard_finding,
    kickable,
    never_move_finding,
    never_moves,
    node_lease_finding,
    nodes_finding,
    pinned_volume_finding,
    probe_finding,
    rbac_findings,
    required_access,
    sample,
    statefulset_sample,
    warning,
)
from asklepios.core.preflight.access import ServiceAccount
from asklepios.engine.clock import SYSTEM_CLOCK, Clock
from asklepios.engine.ports import BmcPort
from asklepios.kube.access import AccessApi, ClusterReads
from asklepios.kube.client import ApiError, KubeClient
from asklepios.kube.nodes import NodeApi
from asklepios.kube.secrets import SecretApi

log = logging.getLogger("asklepios.check")
SECTION_TIMEOUT = 30.0  # seconds for one check's reads
BMC_TIMEOUT = 20.0  # seconds for one BMC's answer
CONCURRENCY = 8  # requests in flight at once
PER_NODE_LIMIT = 50  # up to this many nodes, their pods are listed node by node; beyond, all pods at once
T = TypeVar("T")
R = TypeVar("R")


def needs_of(settings: Settings) -> tuple[Need, ...]:
    """The permissions these settings need (`core.preflight.required_access`)."""
    return required_access(
        settings.namespace,
        leader_election=settings.leader_election,
        force_delete=settings.force_delete,
        balancer=settings.balancer,
        fencing=settings.fencing_on,
        fencing_secret=settings.fencing_secret,
    )


def cannot(check: str, exc: Exception) -> Finding:
    """A check whose reads failed: a warning for 403 (the rbac check names what is missing), else a failure."""
    if isinstance(exc, ApiError) and exc.status == 403:
        return warning(check, f"could not check: {exc}", SEE_RBAC)
    return failure(check, f"could not check: {exc}", "make sure the apiserver answers, then run the check again")


async def _section(check: str, work: Callable[[], Awaitable[list[Finding]]]) -> list[Finding]:
    with anyio.move_on_after(SECTION_TIMEOUT):
        try:
            return await work()
        except ApiError as exc:
            return [cannot(check, exc)]
        except Exception as exc:  # a bug here must not stop `asklepios run`: report it as the check's result
            log.debug("check failed", exc_info=True, extra={"check": check})
            return [failure(check, f"could not check: {type(exc).__name__}: {exc}", "report this as a bug")]
    return [
        failure(
            check,
            f"could not check: no answer within {SECTION_TIMEOUT:.0f} s",
            "make sure the apiserver answers, then run the check again",
        )
    ]


async def _gather(items: Sequence[T], work: Callable[[T], Awaitable[R]]) -> list[R]:
    """`work` on every item, at most CONCURRENCY at once; results in the items' order.

    The first ApiError cancels the rest and is raised.
    """
    results: dict[int, R] = {}
    errors: list[ApiError] = []
    limiter = anyio.CapacityLimiter(CONCURRENCY)

    async with anyio.create_task_group() as tg:

        async def one(index: int, item: T) -> None:
            async with limiter:
                try:
                    results[index] = await work(item)
                except ApiError as exc:
                    errors.append(exc)
                    tg.cancel_scope.cancel()

        for index, item in enumerate(items):
            tg.start_soon(one, index, item)
    if errors:
        raise errors[0]
    return [results[index] for index in range(len(items))]


@attrs.define
class Preflight:
    """Every check but the version, for one set of settings."""

    settings: Settings
    client: KubeClient
    bmc: BmcPort | None = None  # None: the real Redfish client (sushy), loaded only when fencing is on
    clock: Clock = SYSTEM_CLOCK
    subject: ServiceAccount | None = None  # review this ServiceAccount's rights, not the caller's

    async def run(self) -> list[Finding]:
        """The findings, in the order they are printed."""
        rbac: list[Finding] = []
        listed: list[list[NodeView] | Finding] = []

        async def review_all() -> None:
            rbac.extend(await _section(RBAC, self._rbac))

        async def list_nodes() -> None:
            try:
                with anyio.fail_after(SECTION_TIMEOUT):
                    listed.append(await NodeApi(self.client).list(str(self.settings.node_selector)))
            except ApiError as exc:
                listed.append(cannot(NODES, exc))
            except TimeoutError:
                listed.append(cannot(NODES, ApiError(0, f"no answer within {SECTION_TIMEOUT:.0f} s")))

        async with anyio.create_task_group() as tg:
            tg.start_soon(review_all)
            tg.start_soon(list_nodes)
        [views] = listed
        if isinstance(views, Finding):
            return [*rbac, views]
        findings = [*rbac, nodes_finding(str(self.settings.node_selector), views)]
        if not views:
            return findings
        return findings + await self._about_nodes(sorted(views, key=lambda v: v.name))

    async def _rbac(self) -> list[Finding]:
        access = AccessApi(self.client, self.subject)

        async def review(need: Need) -> Review:
            try:
                answer = await access.review(need)
            except ApiError as exc:
                return Review(need, allowed=False, error=str(exc))
            return Review(need, allowed=answer.allowed)

        return rbac_findings(await _gather(needs_of(self.settings), review), self.subject)

    async def _about_nodes(self, views: list[NodeView]) -> list[Finding]:
        targets = kickable(views)
        sections: list[tuple[str, Callable[[], Awaitable[list[Finding]]]]] = [
            (PODS, lambda: self._pods(targets)),
            (LEASES, lambda: self._leases(targets)),
            (VOLUMES, lambda: self._volumes(targets)),
        ]
        if self.settings.balancer:
            sections.append((BALANCER, self._balancer))
        if self.settings.fencing_on:
            sections.append((FENCING, lambda: self._fencing(targets)))
        results: list[list[Finding]] = [[] for _ in sections]

        async def run(index: int, check: str, work: Callable[[], Awaitable[list[Finding]]]) -> None:
            results[index] = await _section(check, work)

        async with anyio.create_task_group() as tg:
            for index, (check, work) in enumerate(sections):
                tg.start_soon(run, index, check, work)
        guard = guard_finding(self.settings.max_unhealthy, views)
        leftover = annotation_finding(views)  # fencing on or off: an annotation nobody reads misleads
        return [guard, *(f for found in results for f in found), *([leftover] if leftover else [])]

    async def _pods(self, targets: list[NodeView]) -> list[Finding]:
        if not targets:
            return []
        reads = ClusterReads(self.client)
        names = [v.name for v in targets]
        where = set(names)

        def keep(pod: PodSeen) -> bool:  # only these count: the rest of a big cluster is not kept
            return pod.node in where and never_moves(pod)

        pods: list[PodSeen] = []
        if len(names) <= PER_NODE_LIMIT:
            for found in await _gather(names, lambda name: reads.pods(node=name, keep=keep)):
                pods += found
        else:
            pods = await reads.pods(keep=keep)
        return [never_move_finding(pods, names)]

    async def _leases(self, targets: list[NodeView]) -> list[Finding]:
        if not targets:
            return []
        leases = await ClusterReads(self.client).node_leases()
        blind = probe_finding(targets, self.settings.liveness_probe_ports)
        return [node_lease_finding((v.name for v in targets), leases), *([blind] if blind else [])]

    async def _volumes(self, targets: list[NodeView]) -> list[Finding]:
        """StatefulSets (on watched nodes, or the balancer's) whose volumes are bound to one node.

        One list of PersistentVolumes; pods are read only in the namespaces of pinned
        ones (none in a cluster without local PVs), keeping StatefulSet pods that use one.
        """
        reads = ClusterReads(self.client)
        pinned = await reads.pinned_volumes()
        claims = claims_with_pinned_volumes(pinned)
        if not targets or not claims:
            return [pinned_volume_finding([], pinned)]
        watched = {v.name for v in targets}
        settings = self.settings

        def keep(pod: PodSeen) -> bool:
            if pod.owner is None or pod.owner.kind != "StatefulSet":
                return False
            if not any((pod.namespace, claim) in claims for claim in pod.claims):
                return False
            balanced = settings.balancer and settings.balancer_selector.matches(pod.labels)
            if balanced and settings.balancer_namespaces:
                balanced = pod.namespace in settings.balancer_namespaces
            return pod.node in watched or balanced

        namespaces = sorted({namespace for namespace, _ in claims})
        pods = [p for found in await _gather(namespaces, lambda ns: reads.pods(ns, keep=keep)) for p in found]
        return [pinned_volume_finding(pods, pinned)]

    async def _balancer(self) -> list[Finding]:
        reads = ClusterReads(self.client)
        selector = str(self.settings.balancer_selector)
        namespaces = list(self.settings.balancer_namespaces) or [""]
        budgets = [b for found in await _gather(namespaces, reads.budgets) for b in found]
        keep = statefulset_sample(budgets)  # two pods per StatefulSet say what all of them would
        pods: list[PodSeen] = []
        for found in await _gather(namespaces, lambda ns: reads.pods(ns, label_selector=selector, keep=keep)):
            pods += found
        return [balancer_finding(pods, budgets, selector, self.settings.balancer_namespaces)]

    async def _fencing(self, targets: list[NodeView]) -> list[Finding]:
        if not targets:
            return []
        settings = self.settings
        where = f"{settings.namespace}/{settings.fencing_secret}"
        secret: dict[str, str] | None = None
        error = ""
        try:
            secret = await SecretApi(self.client, settings.namespace, settings.fencing_secret).secret()
        except FencingError as exc:
            error = str(exc)
        findings, usable = fencing_findings(targets, secret, error, where)
        if secret is None or not usable:
            return findings
        bmc = self.bmc
        if bmc is None:
            from asklepios.fence.redfish import RedfishBmc  # noqa: PLC0415 - sushy only when fencing is on

            bmc = RedfishBmc()
        by_name = {v.name: v for v in usable}
        asked = [by_name[name] for name in sample(sorted(by_name))]

        async def ask(view: NodeView) -> PowerSeen:
            target = bmc_target(view.name, secret, insecure=settings.fencing_insecure)
            with anyio.move_on_after(BMC_TIMEOUT):
                try:
                    uuid = await bmc.system_uuid(target)
                    return PowerSeen(view, power=await bmc.power_state(target), uuid=uuid, url=target.system_url)
                except FencingError as exc:  # sushy appends the BMC's whole error document: keep its first part
                    return PowerSeen(view, error=str(exc).split(" Extended information:")[0], url=target.system_url)
            return PowerSeen(view, error=f"no answer within {BMC_TIMEOUT:.0f} s", url=target.system_url)

        seen = await _gather(asked, ask)
        return findings + bmc_findings(seen, len(usable), where, insecure=settings.fencing_insecure)


async def run_checks(
    settings: Settings, client: KubeClient, *, bmc: BmcPort | None = None, subject: ServiceAccount | None = None
) -> list[Finding]:
    """Every check but the version (see `check_version`), in print order."""
    return await Preflight(settings, client, bmc, subject=subject).run()
