"""Kubelet-port stand-ins: a TCP listener on each powered node's InternalIP:10250.

Asklepios only believes a node is dead when nothing answers a TCP connect to its kubelet
port. kwok plays the kubelet towards the apiserver but listens on nothing, so the lab
opens a socket per node that accepts each connection and closes it at once: the node
"answers" while powered (up, or partitioned from the apiserver) and refuses connections
after a power cut. All sockets, thousands of them in scale mode, are served by ONE
thread with :mod:`selectors`. Sockets are bound and listening before :meth:`up` returns
(the kernel completes handshakes from then on); the thread only drains the accept queue.
"""

from __future__ import annotations

import contextlib
import resource
import selectors
import socket
import threading
from collections.abc import Iterable


class Listeners:
    """Named sets of listening sockets (a node, or a bulk group), served by one thread."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._sockets: dict[str, list[socket.socket]] = {}
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._serve, name="lab-kubelet-ports", daemon=True)
        self._thread.start()

    def up(self, key: str, addresses: Iterable[tuple[str, int]]) -> None:
        """Listen on every ``(ip, port)`` of ``key`` (no-op if ``key`` is up already)."""
        addresses = list(addresses)
        with self._lock:
            if key in self._sockets:
                return
            _ensure_fd_room(len(addresses) + sum(map(len, self._sockets.values())))
            socks: list[socket.socket] = []
            try:
                for addr in addresses:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    socks.append(sock)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind(addr)
                    sock.listen(64)
                    sock.setblocking(False)
            except OSError as exc:
                for sock in socks:
                    sock.close()
                raise OSError(exc.errno, f"kubelet stand-in for {key} on {addr}: {exc.strerror}") from exc
            for sock in socks:
                self._selector.register(sock, selectors.EVENT_READ)
            self._sockets[key] = socks

    def down(self, key: str) -> None:
        """Close the sockets of ``key``: connects to them are refused from now on."""
        with self._lock:
            for sock in self._sockets.pop(key, []):
                self._selector.unregister(sock)
                sock.close()

    def drop(self, key: str, address: tuple[str, int]) -> bool:
        """Close the one socket of ``key`` bound to ``address`` (a node of a bulk group).

        Returns whether it was open; the other sockets of ``key`` keep listening.
        """
        with self._lock:
            socks = self._sockets.get(key, [])
            for sock in socks:
                if sock.getsockname() == address:
                    socks.remove(sock)
                    self._selector.unregister(sock)
                    sock.close()
                    return True
        return False

    def add(self, key: str, address: tuple[str, int]) -> None:
        """Listen on ``address`` too, as part of ``key`` (no-op if ``key`` is down or has it)."""
        with self._lock:
            socks = self._sockets.get(key)
            if socks is None or any(s.getsockname() == address for s in socks):
                return
            _ensure_fd_room(1 + sum(map(len, self._sockets.values())))
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
                sock.listen(64)
                sock.setblocking(False)
            except OSError as exc:
                sock.close()
                raise OSError(exc.errno, f"kubelet stand-in for {key} on {address}: {exc.strerror}") from exc
            self._selector.register(sock, selectors.EVENT_READ)
            socks.append(sock)

    def is_up(self, key: str) -> bool:
        with self._lock:
            return key in self._sockets

    def close(self) -> None:
        """Stop the thread and close every socket."""
        if self._thread.is_alive():
            self._wake_w.send(b"x")
            self._thread.join(timeout=10)
        for key in list(self._sockets):
            self.down(key)
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


def _drain(sock: socket.socket) -> None:
    """Accept and at once close every pending connection of a listening socket."""
    while True:
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # closed by down() between select() and here
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
