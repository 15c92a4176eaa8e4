"""A lab thread that acts for one node: the skewed kubelet's renewals, the pod resync.

Each runs until its work is done or it is stopped: by the node's next fault, its
restore, its removal or the lab's teardown (``NodeOps._stop_node_threads``). Each keeps
the last errors it rode out (an apiserver outage) for the tests to read.
"""

from __future__ import annotations

import threading
from typing import Self

from .api import Api


class NodeThread:
    """Runs :meth:`_run` in a daemon thread named ``lab-<kind>-<node>`` once started."""

    def __init__(self, api: Api, node: str, kind: str) -> None:
        self.api, self.node = api, node
        self.errors: list[str] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lab-{kind}-{node}", daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def _rode_out(self, exc: Exception) -> None:
        """Keep the last ten failures the thread went on after."""
        self.errors = [*self.errors[-9:], str(exc)[:300]]

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def join(self, timeout: float) -> bool:
        """Wait until the thread has ended (True) or ``timeout`` passed (False)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()
