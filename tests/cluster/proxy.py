"""A TCP proxy we can cut: a network partition between one client and the apiserver."""

from __future__ import annotations

import contextlib
import socket
import threading


class CuttableProxy:
    """Forwards 127.0.0.1:<port> to a target; `cut()` drops every connection and
    blackholes new ones (accepted, never answered), like a partition."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self._cut = threading.Event()
        self._closed = threading.Event()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept)

    def _spawn(self, fn: object, *args: object) -> None:
        thread = threading.Thread(target=fn, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.append(sock)

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._track(client)
            if self._cut.is_set():
                continue  # blackhole: hold the connection, forward nothing
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            self._track(upstream)
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump, upstream, client)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self._cut.is_set():
                data = src.recv(65536)
                if not data or self._cut.is_set():
                    break
                dst.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            for sock in self._socks:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._socks = []

    def close(self) -> None:
        self._closed.set()
        for thread in self._threads[:1]:  # the acceptor: no new sockets after this
            thread.join(2)
        self.cut()
        self.listener.close()
        for thread in self._threads:
            thread.join(2)
