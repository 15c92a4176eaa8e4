"""Loopback node addresses: each lab claims its own 127.X.0.0/16 for its nodes' InternalIPs.

Asklepios probes a node before it taints it (a TCP connect to the node's InternalIP on the
kubelet port), so every node address in the lab must be one that only the lab itself can
answer on, and that is never routed off the machine: Linux delivers all of 127.0.0.0/8 to
the loopback interface, with nothing to set up. Tests, the demo and the benchmarks may run
several labs at once on one machine, so each claims a different second octet X (10-250)
by holding an ``flock`` on ``/tmp/asklepios-lab-net/127.X.lock`` for its lifetime. flock
locks belong to the open file, so two claims in one process exclude each other too, and
the kernel drops the lock when the holder dies, so a crashed run leaves nothing stale.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
from pathlib import Path

LOCK_DIR = Path("/tmp/asklepios-lab-net")
OCTETS = range(10, 251)
HOSTS_PER_BLOCK = 250  # the last octet runs 1..250


class LoopbackNet:
    """A claimed 127.X.0.0/16 handing out addresses 127.X.a.b (b in 1..250) in order."""

    def __init__(self, octet: int, fd: int) -> None:
        self.octet = octet
        self._fd: int | None = fd
        self._next = 0

    @classmethod
    def claim(cls, lock_dir: Path = LOCK_DIR) -> LoopbackNet:
        """Claim a free /16: a random X first, then every X in order; raises if all are taken."""
        lock_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(PermissionError):
            lock_dir.chmod(0o1777)  # shared by every user's labs, like /tmp
        first = random.choice(OCTETS)
        for octet in (first, *OCTETS):
            # read-only: a lock file another user created is still lockable (``fuser`` shows the holder)
            fd = os.open(lock_dir / f"127.{octet}.lock", os.O_RDONLY | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return cls(octet, fd)
        raise RuntimeError(f"every 127.X.0.0/16 (X in 10..250) is claimed by another lab ({lock_dir})")

    @property
    def cidr(self) -> str:
        return f"127.{self.octet}.0.0/16"

    @property
    def claimed(self) -> bool:
        return self._fd is not None

    def next_address(self) -> str:
        """The next unused address of the block (never one handed out before)."""
        a, b = divmod(self._next, HOSTS_PER_BLOCK)
        if a > 255:
            raise RuntimeError(f"{self.cidr} has no addresses left")
        self._next += 1
        return f"127.{self.octet}.{a}.{b + 1}"

    def release(self) -> None:
        """Give the /16 back (idempotent); the lock file stays for the next lab."""
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None
