"""Kubelet-port stand-ins: what a TCP connect to a node's InternalIP:10250 gets, per machine state.

Asklepios only believes a node is dead when nothing answers on its kubelet port, and a
refusal is an answer: an RST comes from a running kernel (a stopped kubelet), while a
machine that is off answers nothing. kwok plays the kubelet towards the apiserver but
listens on nothing, so the lab gives each node address one of three modes:

* ``accept``: a listening socket that accepts each connection and closes it at once (a
  running node, partitioned from the apiserver or not). All accepting sockets, thousands
  in scale mode, are drained by ONE thread with :mod:`selectors`.
* ``refuse``: no socket; the kernel answers a SYN with an RST (a running machine whose
  kubelet is stopped).
* ``silent``: a listening socket with backlog 0 whose accept queue the lab fills with one
  connection of its own and never accepts. Linux then drops every new SYN (no RST, no
  ICMP; ``tcp_abort_on_overflow`` is 0 by default), so a connect times out, exactly as
  towards a powered-off machine. No root, no packet filter, nothing leaves loopback.

Sockets are bound and listening (and a silent queue full) before :meth:`Listeners.set`
returns. Addresses are tracked one by one; the lab's nodes and bulk groups decide which.
"""

from __future__ import annotations

import contextlib
import resource
import selectors
import socket
import threading
from collections.abc import Iterable
from typing import Literal, get_args

PortMode = Literal["accept", "refuse", "silent"]
PORT_MODES: tuple[PortMode, ...] = get_args(PortMode)
Address = tuple[str, int]
FILL_TIMEOUT = 5.0  # the lab's own connect that fills a silent port's queue (loopback: instant)


class Listeners:
    """The mode of each ``(ip, port)`` the lab serves, with one thread draining accepting sockets."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._accepting: dict[Address, socket.socket] = {}
        self._silent: dict[Address, tuple[socket.socket, socket.socket]] = {}  # listener, the filler
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._serve, name="lab-kubelet-ports", daemon=True)
        self._thread.start()

    def set(self, addresses: Iterable[Address], mode: PortMode) -> None:
        """Put every address in ``mode`` (a no-op for those already in it)."""
        if mode not in PORT_MODES:
            raise ValueError(f"port mode must be one of {PORT_MODES}, not {mode!r}")
        with self._lock:
            todo = [a for a in addresses if self._mode(a) != mode]
            if mode != "refuse":
                per = 1 if mode == "accept" else 2
                _ensure_fd_room(per * len(todo) + len(self._accepting) + 2 * len(self._silent))
            for address in todo:
                self._close(address)
                if mode == "accept":
                    sock = _listen(address, 64)
                    sock.setblocking(False)
                    self._selector.register(sock, selectors.EVENT_READ)
                    self._accepting[address] = sock
                elif mode == "silent":
                    self._silent[address] = _silent_port(address)

    def mode(self, address: Address) -> PortMode:
        """What a connect to ``address`` gets now: accepted, refused, or nothing (silent)."""
        with self._lock:
            return self._mode(address)

    def _mode(self, address: Address) -> PortMode:
        if address in self._accepting:
            return "accept"
        return "silent" if address in self._silent else "refuse"

    def _close(self, address: Address) -> None:
        sock = self._accepting.pop(address, None)
        if sock is not None:
            self._selector.unregister(sock)
            sock.close()
        pair = self._silent.pop(address, None)
        if pair is not None:
            for s in pair:
                s.close()

    def close(self) -> None:
        """Stop the thread and close every socket."""
        if self._thread.is_alive():
            self._wake_w.send(b"x")
            self._thread.join(timeout=10)
        with self._lock:
            for address in [*self._accepting, *self._silent]:
                self._close(address)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _serve(self) -> None:
        while True:
            for key, _ in self._selector.select():
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._wake_r:
                    return
                _drain(sock)


def _listen(address: Address, backlog: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"kubelet stand-in on {address}: {exc.strerror}") from exc
    return sock


def _silent_port(address: Address) -> tuple[socket.socket, socket.socket]:
    """A listener with backlog 0 and its accept queue full: Linux drops new SYNs to it.

    With backlog 0 the queue holds one connection (the kernel counts "full" as more
    than the backlog), so the lab's own connect fills it; it is never accepted.
    """
    listener = _listen(address, 0)
    try:
        filler = socket.create_connection(address, timeout=FILL_TIMEOUT)
    except OSError:
        listener.close()
        raise
    return listener, filler


def _drain(sock: socket.socket) -> None:
    """Accept and at once close every pending connection of a listening socket."""
    while True:
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # closed by set() between select() and here
            return
        conn.close()


def _ensure_fd_room(needed: int) -> None:
    """Raise the soft open-files limit towards the hard one when many sockets are wanted."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed + 1024  # the lab's own files, processes' pipes, client connections
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
