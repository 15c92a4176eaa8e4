"""The lab's kubelet-port stand-ins on this kernel: accepted, refused, or silent (a connect times out).

The cluster tests stage a power cut as a port that answers nothing and a stopped
kubelet as one that refuses; both rest on how Linux treats a listener whose accept
queue is full (it drops the SYN), so that is checked here on real sockets, without a
cluster. Every address is in a 127.X.0.0/16 claimed for this test alone.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Iterator

import pytest

from asklepios_lab.listeners import Listeners
from asklepios_lab.loopback import LoopbackNet


def _connect(address: tuple[str, int], timeout: float) -> str:
    try:
        with socket.create_connection(address, timeout=timeout):
            return "accepted"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "silent"


@pytest.fixture
def net() -> Iterator[LoopbackNet]:
    claimed = LoopbackNet.claim()
    yield claimed
    claimed.release()


@pytest.fixture
def listeners() -> Iterator[Listeners]:
    ports = Listeners()
    yield ports
    ports.close()


def test_each_mode_gets_its_answer_and_modes_switch_both_ways(net: LoopbackNet, listeners: Listeners) -> None:
    address = (net.next_address(), 10250)
    assert listeners.mode(address) == "refuse"
    assert _connect(address, 1.0) == "refused"
    for mode, answer in [("accept", "accepted"), ("silent", "silent"), ("refuse", "refused"),
                         ("silent", "silent"), ("accept", "accepted"), ("accept", "accepted")]:  # fmt: skip
        listeners.set([address], mode)  # type: ignore[arg-type]
        assert listeners.mode(address) == mode
        assert _connect(address, 0.5) == answer, mode


def test_a_silent_port_stays_silent_for_many_connects(net: LoopbackNet, listeners: Listeners) -> None:
    """The queue holds the lab's one connection; every other SYN is dropped, also after retries."""
    address = (net.next_address(), 10250)
    listeners.set([address], "silent")
    pending = []
    try:
        for _ in range(5):  # connects left pending (their SYNs retransmitted) do not slip in either
            sock = socket.socket()
            sock.setblocking(False)
            assert sock.connect_ex(address) in (errno.EINPROGRESS, errno.EAGAIN)
            pending.append(sock)
        started = time.monotonic()
        assert _connect(address, 1.5) == "silent"
        assert time.monotonic() - started >= 1.4
    finally:
        for sock in pending:
            sock.close()


def test_modes_are_per_address(net: LoopbackNet, listeners: Listeners) -> None:
    a, b, c = ((net.next_address(), 10250) for _ in range(3))
    listeners.set([a, b, c], "accept")
    listeners.set([b], "silent")
    listeners.set([c], "refuse")
    assert [_connect(x, 0.5) for x in (a, b, c)] == ["accepted", "silent", "refused"]
    with pytest.raises(ValueError, match="port mode"):
        listeners.set([a], "drop")  # type: ignore[arg-type]
