"""High availability: two replicas, one leader, no double action, no lost countdown."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from asklepios_lab import ControlPlane, wait_for
from asklepios_lab.api import write_kubeconfig
from tests.cluster.checks import env, events, first_seen, has_oos, parse_time, power_cut
from tests.cluster.proxy import CuttableProxy
from tests.cluster.runner import Asklepios, AsklepiosFactory, wait_value

LEASE = {
    "ASKLEPIOS_LEASE_DURATION_SECONDS": "4",
    "ASKLEPIOS_LEASE_RENEW_SECONDS": "3",
    "ASKLEPIOS_LEASE_RETRY_SECONDS": "1",
}


def ha_env(prefix: str, namespace: str, **extra: str) -> dict[str, str]:
    return env(prefix, ASKLEPIOS_LEADER_ELECTION="true", ASKLEPIOS_NAMESPACE=namespace, **LEASE, **extra)


def leader_of(replicas: list[Asklepios]) -> Asklepios:
    def probe() -> Asklepios | None:
        leaders = [r for r in replicas if r.metric("asklepios_is_leader") == 1]
        return leaders[0] if len(leaders) == 1 else None

    return wait_value(probe, 20, "exactly one leader")


def three_nodes(nodes: Any) -> str:
    name, *_ = nodes.watched("n", "m", "o")
    return str(name)


def lease(cp: ControlPlane, namespace: str) -> dict[str, Any]:
    found: dict[str, Any] = cp.api.get(f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/asklepios")
    return found


@pytest.mark.timeout(180)
def test_two_replicas_one_leader_each_action_once(
    control_plane: ControlPlane, nodes: Any, namespace: str, asklepios: AsklepiosFactory
) -> None:
    cp = control_plane
    name = three_nodes(nodes)
    replicas = [asklepios(ha_env(nodes.prefix, namespace)) for _ in range(2)]
    leader = leader_of(replicas)
    follower = next(r for r in replicas if r is not leader)
    assert follower.http("/readyz")[0] == 200  # a follower is ready: it keeps its watches warm
    power_cut(cp, name)
    first_seen(cp, name, has_oos, 20, "kickout")
    cp.restore(name)
    first_seen(cp, name, lambda n: not has_oos(n), 20, "kickin")
    wait_for(lambda: events(cp, "NodeKickedIn", name), 10, what="NodeKickedIn event")
    assert len(events(cp, "NodeKickedOut", name)) == 1
    assert len(events(cp, "NodeKickedIn", name)) == 1
    assert sum(r.metric("asklepios_kickouts_total") for r in replicas) == 1
    assert sum(r.metric("asklepios_kickins_total") for r in replicas) == 1
    assert follower.metric("asklepios_kickouts_total") == 0


@pytest.mark.timeout(180)
def test_sigkill_leader_mid_countdown_follower_acts_at_the_deadline(
    control_plane: ControlPlane, nodes: Any, namespace: str, asklepios: AsklepiosFactory
) -> None:
    cp = control_plane
    name = three_nodes(nodes)
    replicas = [asklepios(ha_env(nodes.prefix, namespace, ASKLEPIOS_KICKOUT_SECONDS="6")) for _ in range(2)]
    leader = leader_of(replicas)
    follower = next(r for r in replicas if r is not leader)
    start = power_cut(cp, name, "False")
    wait_for(lambda: time.time() >= start + 3, 5, what="3 s into the countdown")
    leader.kill()
    seen, _ = first_seen(cp, name, has_oos, 30, "kickout by the new leader")
    # late by at most the leader Lease (4 s), then one node Lease duration (4 s): the new leader has
    # not watched the node's Lease before (followers make no requests), and silence is watched anew
    assert seen <= start + 6 + 4 + 4 + 1.5, seen - start
    assert seen >= start + 6 - 1.0
    assert follower.metric("asklepios_is_leader") == 1
    assert follower.metric("asklepios_kickouts_total") == 1


@pytest.mark.timeout(120)
def test_sigterm_leader_releases_the_lease(
    control_plane: ControlPlane, nodes: Any, namespace: str, asklepios: AsklepiosFactory
) -> None:
    three_nodes(nodes)
    replicas = [asklepios(ha_env(nodes.prefix, namespace)) for _ in range(2)]
    leader = leader_of(replicas)
    follower = next(r for r in replicas if r is not leader)
    assert leader.stop() == 0
    stopped = time.time()
    leader.wait_log(lambda r: r.get("msg") == "released the lease", 1, "lease released")
    wait_for(lambda: follower.metric("asklepios_is_leader") == 1, 5, interval=0.05, what="takeover")
    assert time.time() - stopped <= 1.0 + 0.5  # one retry period (+ scrape slack), not a lease duration


@pytest.mark.timeout(180)
def test_partitioned_leader_stops_writing_before_its_lease_expires(
    control_plane: ControlPlane, nodes: Any, namespace: str, asklepios: AsklepiosFactory, tmp_path: Path
) -> None:
    cp = control_plane
    name = three_nodes(nodes)
    host, port = cp.server.removeprefix("https://").split(":")
    proxy = CuttableProxy(host, int(port))
    try:
        via_proxy = write_kubeconfig(
            tmp_path / "proxy.kubeconfig",
            f"https://127.0.0.1:{proxy.port}",
            cp.pki.ca_cert,
            cp.admin_token,
            "admin",
        )
        first = asklepios(ha_env(nodes.prefix, namespace, ASKLEPIOS_KICKOUT_SECONDS="8"), kubeconfig=via_proxy)
        wait_for(lambda: first.metric("asklepios_is_leader") == 1, 20, what="proxied replica leads")
        second = asklepios(ha_env(nodes.prefix, namespace, ASKLEPIOS_KICKOUT_SECONDS="8"))
        proxy.cut()
        cut_at = time.time()
        lost = first.wait_log(lambda r: r.get("msg") == "lost leadership: writes stopped", 10, "leader steps down")
        renewed = parse_time(lease(cp, namespace)["spec"]["renewTime"])
        assert renewed <= cut_at + 0.5
        lost_at = datetime.fromisoformat(lost["ts"].replace("Z", "+00:00")).timestamp()
        assert lost_at < renewed + 4, lost_at - renewed  # before the lease could expire
        wait_for(lambda: second.metric("asklepios_is_leader") == 1, 15, what="the other replica takes over")
        taken = parse_time(lease(cp, namespace)["spec"]["acquireTime"])
        assert taken >= lost_at  # the takeover came after the old leader had stopped
        power_cut(cp, name)
        first_seen(cp, name, has_oos, 20, "kickout by the new leader")
        assert first.metric("asklepios_kickouts_total") == 0
    finally:
        proxy.close()


@pytest.mark.timeout(240)
def test_apiserver_down_30s_nothing_stale_nothing_twice(
    apiserver_outage: ControlPlane, nodes: Any, namespace: str, asklepios: AsklepiosFactory
) -> None:
    cp = apiserver_outage
    name = three_nodes(nodes)
    replicas = [asklepios(ha_env(nodes.prefix, namespace, ASKLEPIOS_KICKOUT_SECONDS="10")) for _ in range(2)]
    leader_of(replicas)
    power_cut(cp, name)
    cp.stop_apiserver()
    wait_for(lambda: all(r.metric("asklepios_is_leader") == 0 for r in replicas), 10, what="both stop writing")
    outage_end = time.time() + 30
    wait_for(lambda: time.time() >= outage_end, 31, what="30 s apiserver outage")
    cp.start_apiserver()
    leader_of(replicas)
    first_seen(cp, name, has_oos, 60, "the NotReady node kicked out once the apiserver is back")
    # the healthy nodes may have looked NotReady right after the outage: never acted on
    others = [n for n in nodes.names if n != name]
    settle_until = time.time() + 10
    wait_for(lambda: time.time() >= settle_until, 11, what="observation window after the outage")
    assert len(events(cp, "NodeKickedOut", name)) == 1
    for other in others:
        assert not events(cp, "NodeKickedOut", other)
        assert not has_oos(cp.node(other))
    assert sum(r.metric("asklepios_kickouts_total") for r in replicas) == 1
