"""The lab's node network: loopback InternalIPs, kubelet-port listeners, crash vs partition.

Asklepios will only taint a node with evidence that it is dead: its Lease no longer
renewed AND nothing answering on its kubelet port. These tests check, against the
apiserver, the kwok processes and the sockets themselves, that the lab's faults produce
exactly that evidence (crash), or only half of it (partition, set_ready), and that no
node address could ever lead a probe off the machine.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import pytest

from asklepios_lab import ControlPlane, wait_for
from asklepios_lab.loopback import LoopbackNet

from .conftest import NodeFactory, unique_id

LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


def _renew_time(cp: ControlPlane, node: str) -> str:
    lease = cp.api.get(f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}")
    return str(lease["spec"]["renewTime"])


def _wait_renewed(cp: ControlPlane, node: str, timeout: float = 10.0) -> None:
    """Wait until the Lease of ``node`` has been renewed twice (a live kubelet)."""
    for _ in range(2):
        seen = _renew_time(cp, node)

        def renewed(seen: str = seen) -> bool:
            return _renew_time(cp, node) != seen

        wait_for(renewed, timeout, what=f"lease of {node} renewed")


def _internal_ip(cp: ControlPlane, node: str) -> str:
    addresses = cp.node(node)["status"]["addresses"]
    return str(next(a["address"] for a in addresses if a["type"] == "InternalIP"))


def _kwok_node_ips(cp: ControlPlane) -> dict[str, str]:
    """``--node-ip`` of every running kwok, read from the processes' command lines."""
    out = {}
    for name, pid in cp.pids().items():
        if name.startswith("kwok-"):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            out[name] = next(a.removeprefix("--node-ip=") for a in argv if a.startswith("--node-ip="))
    return out


@pytest.mark.timeout(90)
def test_every_node_address_is_loopback(
    control_plane: ControlPlane, nodes: NodeFactory, request: pytest.FixtureRequest
) -> None:
    cp = control_plane
    single = nodes.add()
    prefix = unique_id(request)
    bulk = [f"{prefix}-{i}" for i in range(3)]
    group = cp.add_nodes_bulk(bulk, {"lab-test": prefix}, listeners=True)
    try:
        own = ipaddress.IPv4Network(cp.net.cidr)
        names = [single, "lab-anchor", *bulk]
        ips = [cp.node_ip(n) for n in names]
        assert len(set(ips)) == len(ips)
        for name, ip in zip(names, ips, strict=True):
            assert _internal_ip(cp, name) == ip  # kwok's node-initialize kept the address we set
            assert ipaddress.ip_address(ip) in own
            assert own.subnet_of(LOOPBACK)
        kwok_ips = _kwok_node_ips(cp)
        assert {f"kwok-{single}", "kwok-lab-anchor", f"kwok-{group}"} <= set(kwok_ips)
        assert all(ipaddress.ip_address(ip) in LOOPBACK for ip in kwok_ips.values()), kwok_ips
        assert kwok_ips[f"kwok-{single}"] == cp.node_ip(single)
        assert kwok_ips[f"kwok-{group}"] in {cp.node_ip(n) for n in bulk}

        assert all(cp.answers(n) for n in names)
        cp.crash(group)  # a bulk group's power cut closes all its listeners
        assert not any(cp.answers(n) for n in bulk)
        cp.restore(group)
        assert all(cp.answers(n) for n in bulk)
        assert [_internal_ip(cp, n) for n in bulk] == [cp.node_ip(n) for n in bulk]
    finally:
        cp.remove_group(group)


@pytest.mark.timeout(90)
def test_partition_stops_the_lease_but_the_node_answers(control_plane: ControlPlane, nodes: NodeFactory) -> None:
    cp = control_plane
    node = nodes.add()
    ip = cp.node_ip(node)
    _wait_renewed(cp, node)
    assert cp.answers(node)

    cp.partition(node)
    frozen = _renew_time(cp, node)
    cp.wait_ready(node, "Unknown", timeout=cp.grace_period + 15)
    assert _renew_time(cp, node) == frozen  # no renewal over a whole grace period
    assert cp.answers(node)  # alive, just cut off

    cp.crash(node)  # now the power goes too
    assert not cp.answers(node)

    cp.restore(node)  # waits for Ready=True
    _wait_renewed(cp, node)
    assert cp.answers(node)
    assert _internal_ip(cp, node) == ip


@pytest.mark.timeout(60)
def test_crash_refuses_connections_and_stops_the_lease(control_plane: ControlPlane, nodes: NodeFactory) -> None:
    cp = control_plane
    node = nodes.add()
    _wait_renewed(cp, node)
    cp.crash(node)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((cp.node_ip(node), cp.kubelet_port), timeout=2).close()
    frozen = _renew_time(cp, node)
    cp.wait_ready(node, "Unknown", timeout=cp.grace_period + 15)
    assert _renew_time(cp, node) == frozen
    cp.restore(node)
    _wait_renewed(cp, node)
    assert cp.answers(node)


@pytest.mark.timeout(60)
def test_set_ready_false_keeps_the_lease_and_the_port(control_plane: ControlPlane, nodes: NodeFactory) -> None:
    cp = control_plane
    node = nodes.add()
    cp.set_ready(node, "False")
    _wait_renewed(cp, node)
    assert cp.answers(node)
    assert cp.ready_status(node) == "False"
    cp.clear_ready(node)


def test_network_claims_in_one_process_differ(control_plane: ControlPlane) -> None:
    first = LoopbackNet.claim()
    second = LoopbackNet.claim()
    try:
        octets = {first.octet, second.octet, control_plane.net.octet}
        assert len(octets) == 3
        assert first.next_address() == f"127.{first.octet}.0.1"
        assert first.next_address() == f"127.{first.octet}.0.2"
    finally:
        first.release()
        second.release()


def test_network_claim_scans_past_taken_octets(tmp_path: Path) -> None:
    claims = [LoopbackNet.claim(tmp_path) for _ in range(241)]  # every X in 10..250
    try:
        assert sorted(c.octet for c in claims) == list(range(10, 251))
        with pytest.raises(RuntimeError, match="claimed by another lab"):
            LoopbackNet.claim(tmp_path)
        released = claims.pop()
        released.release()
        again = LoopbackNet.claim(tmp_path)
        claims.append(again)
        assert again.octet == released.octet
    finally:
        for c in claims:
            c.release()
