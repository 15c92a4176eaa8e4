"""The lab's node network: loopback addresses, kubelet ports, crash vs stop_kubelet vs partition.

Asklepios will only taint a node with evidence that it is dead: its Lease no longer
renewed AND nothing answering on its kubelet port (an accepted or a refused connect is
an answer: a refusal comes from a running kernel). These tests check, against the
apiserver, the kwok processes and the sockets themselves, that the lab's faults produce
exactly that evidence (crash: silent port), or only part of it (stop_kubelet: refused;
partition, set_ready: accepted; a skewed kubelet: its Lease renewed with an old
renewTime), and that no address of the lab could ever lead a probe off the machine.
"""

from __future__ import annotations

import ipaddress
import socket
import time
import urllib.parse
from datetime import datetime
from pathlib import Path

import pytest

from asklepios_lab import ControlPlane, ready_condition, wait_for
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
        cp.crash(group)  # a bulk group's power cut silences all its ports
        assert [cp.port_state(n) for n in bulk] == ["silent"] * len(bulk)
        cp.restore(group)
        assert all(cp.answers(n) for n in bulk)
        assert [_internal_ip(cp, n) for n in bulk] == [cp.node_ip(n) for n in bulk]

        # every server of the lab: the apiserver, the BMC and its notifications, and
        # every socket any lab process listens on
        bmc = cp.bmc()
        servers = [cp.server, bmc.url]
        hosts = [urllib.parse.urlsplit(u).hostname or "" for u in servers]
        hosts.append(str(bmc._notifier.server_address[0]))
        assert all(ipaddress.ip_address(h) in LOOPBACK for h in hosts), hosts
        pids = {**cp.pids(), "bmc": bmc.proc.pid}
        listening = _listening_addresses([p for p in pids.values() if p is not None])
        assert {"kube-apiserver", "etcd", "bmc"} <= {n for n, p in pids.items() if p in listening}
        bad = {p: a for p, addrs in listening.items() for a in addrs if ipaddress.ip_address(a) not in LOOPBACK}
        assert not bad, bad
    finally:
        cp.remove_group(group)


def _listening_addresses(pids: list[int]) -> dict[int, list[str]]:
    """The local IPv4/IPv6 addresses of the TCP sockets in LISTEN state of each process."""
    listens: dict[str, str] = {}  # socket inode -> address
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                listens[fields[9]] = _proc_net_ip(fields[1].split(":")[0], width)
    out: dict[int, list[str]] = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = fd.readlink().name
            except OSError:
                continue
            inode = target.removeprefix("socket:[").removesuffix("]")
            if target.startswith("socket:[") and inode in listens:
                out.setdefault(pid, []).append(listens[inode])
    return out


def _proc_net_ip(hex_ip: str, width: int) -> str:
    """An address as /proc/net/tcp{,6} prints it (32-bit words in host byte order)."""
    raw = b"".join(bytes.fromhex(hex_ip[i : i + 8])[::-1] for i in range(0, width, 8))
    return str(ipaddress.ip_address(raw))


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
    assert cp.port_state(node) == "silent"

    cp.restore(node)  # waits for Ready=True
    _wait_renewed(cp, node)
    assert cp.answers(node)
    assert _internal_ip(cp, node) == ip


@pytest.mark.timeout(60)
def test_crash_silences_the_port_and_stops_the_lease(control_plane: ControlPlane, nodes: NodeFactory) -> None:
    """A powered-off machine answers nothing: the connect times out, no RST."""
    cp = control_plane
    node = nodes.add()
    _wait_renewed(cp, node)
    cp.crash(node)
    assert f"kwok-{node}" not in cp.pids()
    for _ in range(3):  # not once by luck: every connect
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            socket.create_connection((cp.node_ip(node), cp.kubelet_port), timeout=1).close()
        assert time.monotonic() - started >= 0.9
    assert cp.port_mode(node) == "silent"
    frozen = _renew_time(cp, node)
    cp.wait_ready(node, "Unknown", timeout=cp.grace_period + 15)
    assert _renew_time(cp, node) == frozen
    assert cp.port_state(node) == "silent"
    cp.restore(node)
    _wait_renewed(cp, node)
    assert cp.port_state(node) == "accepted"


@pytest.mark.timeout(60)
def test_stop_kubelet_refuses_connections_and_stops_the_lease(control_plane: ControlPlane, nodes: NodeFactory) -> None:
    """A running machine whose kubelet is stopped: Lease silent, Unknown after the grace, port refuses."""
    cp = control_plane
    node = nodes.add()
    _wait_renewed(cp, node)
    cp.stop_kubelet(node)
    assert f"kwok-{node}" not in cp.pids()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((cp.node_ip(node), cp.kubelet_port), timeout=2).close()
    frozen = _renew_time(cp, node)
    unknown = cp.wait_ready(node, "Unknown", timeout=cp.grace_period + 15)
    assert (ready_condition(unknown) or {})["reason"] == "NodeStatusUnknown"
    assert _renew_time(cp, node) == frozen
    assert cp.port_state(node) == "refused"
    cp.crash(node)  # and then the power goes: silent
    assert cp.port_state(node) == "silent"
    cp.restore(node)
    _wait_renewed(cp, node)
    assert cp.port_state(node) == "accepted"


def _behind(renew_time: str, now: float) -> float:
    return now - datetime.fromisoformat(renew_time.replace("Z", "+00:00")).timestamp()


@pytest.mark.timeout(90)
def test_skewed_kubelet_renews_an_old_renew_time_while_not_ready(
    control_plane: ControlPlane, nodes: NodeFactory
) -> None:
    """A kubelet 60 s behind: its Lease changes every second with a renewTime a minute old;
    NotReady (set_ready sticks) and never Unknown, since node-lifecycle sees the renewals."""
    cp = control_plane
    node = nodes.add()
    path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}"
    duration = cp.api.get(path)["spec"]["leaseDurationSeconds"]
    with cp.skewed_kubelet(node, behind_seconds=60, every=1.0) as kubelet:
        assert f"kwok-{node}" not in cp.pids()
        cp.set_ready(node, "False")
        seen: list[str] = []
        # Observation window (a fixed duration is the point): longer than the grace period
        deadline = time.monotonic() + cp.grace_period + 3
        while time.monotonic() < deadline:
            lease = cp.api.get(path)
            spec, now = lease["spec"], time.time()
            if not seen or spec["renewTime"] != seen[-1]:
                seen.append(spec["renewTime"])
            assert 58 <= _behind(spec["renewTime"], now) <= 63, (spec, now)
            assert (spec["holderIdentity"], spec["leaseDurationSeconds"]) == (node, duration)
            assert cp.ready_status(node) == "False"
            time.sleep(0.5)
        assert len(seen) >= cp.grace_period, seen  # about one renewal a second
        assert kubelet.running and kubelet.renewals >= len(seen) and not kubelet.errors
        assert cp.port_state(node) == "accepted"  # the machine and its kubelet run
    assert not kubelet.running
    stopped = kubelet.renewals
    cp.restore(node)  # kwok back: it takes the Lease over and posts Ready=True
    _wait_renewed(cp, node)
    assert _behind(_renew_time(cp, node), time.time()) < 5
    assert kubelet.renewals == stopped


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
