"""Child processes of the lab: spawned in their own process group, logged, always reaped.

A control plane is a handful of long-running daemons. A test run that dies half-way
(a failed assertion, Ctrl-C, SIGTERM from CI, pytest-timeout) must not leave etcd or a
kwok behind: stale daemons hold ports and keep writing to a dead cluster. Every process
started here is therefore

* in its own session/process group, so it is killed with all its children,
* recorded in a module-wide registry, emptied by ``atexit`` and by SIGTERM/SIGHUP
  handlers (SIGINT arrives as KeyboardInterrupt and unwinds the context managers),
* when spawned from the main thread, given ``PR_SET_PDEATHSIG=SIGKILL``, so that even
  a SIGKILLed test process takes its daemons with it. While the main thread is the
  only thread, a ``preexec_fn`` sets it; with other threads around (the lab's kubelet
  ports, the BMC) ``preexec_fn`` is unsafe, so util-linux's ``setpriv --pdeathsig``
  sets it and execs the daemon (same pid). Not from other threads: the signal follows
  the death of the spawning *thread*.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import itertools
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO

_PR_SET_PDEATHSIG = 1
_registry: dict[Proc, int] = {}  # -> start sequence number (stopped in reverse)
_sequence = itertools.count()
_registry_lock = threading.Lock()
_atexit_registered = False
_signals_installed = False
_libc = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: the child only calls it
_SETPRIV = shutil.which("setpriv")


class ProcessDiedError(RuntimeError):
    """A lab process exited while it was expected to be running."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    Taken below the kernel's ephemeral range (32768+ here), where outgoing connections
    (of kwok, the controllers, the tests) never land, so the port is still free when
    the process that was given it binds it a moment later.
    """
    for _ in range(200):
        port = random.randint(20000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Proc:
    """One daemon: argv, log file, and the running ``Popen`` (if started)."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> None:
        """Spawn the process (appending to its log file); no-op if already running."""
        if self.running():
            return
        _install_handlers()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._log.write(f"\n===== {time.strftime('%H:%M:%S')} start: {self.argv}\n".encode())
        self._log.flush()
        # preexec_fn is only safe without other threads (fork copies no lock holders)
        main = threading.current_thread() is threading.main_thread()
        lone = main and threading.active_count() == 1
        argv = self.argv
        if main and not lone and _SETPRIV:
            argv = [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
            preexec_fn=_set_pdeathsig if lone else None,  # noqa: PLW1509
        )
        with _registry_lock:
            _registry[self] = next(_sequence)

    def check_alive(self) -> None:
        """Raise :class:`ProcessDiedError` (with the log's tail) if the process exited."""
        if self.popen is not None and self.popen.poll() is not None:
            raise ProcessDiedError(
                f"{self.name} exited with {self.popen.returncode}; log {self.log_path}:\n" + self.log_tail()
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
        """Signal the process group, escalate to SIGKILL after ``grace`` seconds, reap."""
        popen = self.popen
        if popen is not None:
            _kill_group(popen.pid, sig)
            try:
                popen.wait(timeout=max(grace, 0.01))
            except subprocess.TimeoutExpired:
                _kill_group(popen.pid, signal.SIGKILL)
                popen.wait()
            _kill_group(popen.pid, signal.SIGKILL)  # leftovers in the group, if any
        if self._log is not None:
            self._log.close()
            self._log = None
        with _registry_lock:
            _registry.pop(self, None)

    def kill(self) -> None:
        """SIGKILL at once (a power cut), then reap."""
        self.stop(signal.SIGKILL, grace=5.0)


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    interval: float = 0.1,
    alive: Sequence[Proc] = (),
) -> None:
    """Poll ``predicate`` until it is true; raise TimeoutError after ``timeout`` seconds.

    ``alive`` lists processes whose death makes waiting pointless (raises at once).
    """
    deadline = time.monotonic() + timeout
    while True:
        for p in alive:
            p.check_alive()
        if predicate():
            return
        if time.monotonic() >= deadline:
            tails = "".join(f"\n--- {p.name} ({p.log_path}):\n{p.log_tail()}" for p in alive)
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{tails}")
        time.sleep(interval)


def stop_many(procs: Sequence[Proc], grace: float = 1.0) -> None:
    """SIGTERM all of ``procs`` at once; SIGKILL whatever still runs ``grace`` s later.

    The grace is short on purpose: lab state is disposable, and on a lone SIGTERM
    kube-apiserver lingers for 30 s+ and etcd for ~7 s (draining connections). Each
    process gets a second SIGTERM when its turn to be waited for comes (Kubernetes
    components exit at once on a second signal), so pass them in reverse start order:
    clients before the apiserver before etcd.
    """
    for p in procs:
        if p.running() and p.popen is not None:
            _kill_group(p.popen.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        p.stop(signal.SIGTERM, grace=max(0.0, deadline - time.monotonic()))


def stop_all() -> None:
    """Stop every registered process (the safety net behind the normal teardown)."""
    with _registry_lock:
        procs = sorted(_registry, key=_registry.__getitem__, reverse=True)
    stop_many(procs)


def live_pids() -> list[int]:
    """PIDs of the registered, still running processes."""
    with _registry_lock:
        return [p.pid for p in _registry if p.pid is not None and p.running()]


def _on_signal(signum: int, frame: FrameType | None) -> None:
    stop_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)  # die of the same signal, as if we had not caught it


def _install_handlers() -> None:
    global _atexit_registered, _signals_installed  # noqa: PLW0603
    if not _atexit_registered:
        _atexit_registered = True
        atexit.register(stop_all)
    if _signals_installed or threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread
    _signals_installed = True
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _on_signal)
