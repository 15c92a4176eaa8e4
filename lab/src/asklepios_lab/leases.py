"""A kubelet whose clock is behind: the lab renews a node's Lease with an old ``renewTime``.

A Lease's ``renewTime`` is written on the node's clock and read on another machine's, so
a kubelet whose clock is 60 s behind renews every few seconds with a ``renewTime`` that
looks a minute old. node-lifecycle does not care (it notes when it *saw* ``renewTime``
change, on its own clock); a controller comparing ``renewTime`` with its own clock would
call that kubelet silent. :class:`SkewedKubelet` plays it: a thread that renews the
node's Lease in ``kube-node-lease`` every ``every`` seconds with ``renewTime = now -
behind_seconds``, authenticated as the node itself (``system:node:<name>``, see
:meth:`~asklepios_lab.nodes.NodeOps.as_node`), so NodeRestriction admits it as it
admits a kubelet. ``leaseDurationSeconds`` and the rest of the Lease stay as they are.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

from .api import Api, ApiError
from .nodethread import NodeThread

LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"


def micro_time(epoch: float) -> str:
    """A Kubernetes MicroTime (``2006-01-02T15:04:05.000000Z``) of ``epoch`` seconds."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class SkewedKubelet(NodeThread):
    """Renews node ``node``'s Lease every ``every`` s with renewTime ``behind_seconds`` in the past.

    Start with :meth:`start` (or ``with``); :meth:`stop` ends it (the lab's ``restore`` and
    teardown call it). ``renewals`` counts the Lease writes the apiserver accepted, each
    with the renewTime it wrote in ``renew_times``; ``errors`` the last failures (an
    apiserver outage is ridden out: the thread keeps trying).
    """

    def __init__(self, api: Api, node: str, *, behind_seconds: float, every: float, lease_seconds: int) -> None:
        if every <= 0:
            raise ValueError(f"every must be > 0, not {every}")
        super().__init__(api, node, "skewed-kubelet")
        self.behind_seconds, self.every = behind_seconds, every
        self.lease_seconds = lease_seconds
        self.renew_times: list[str] = []

    @property
    def renewals(self) -> int:
        return len(self.renew_times)

    def stop(self) -> None:
        super().stop()
        self.api.close_all()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stopping.is_set()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def renew_once(self) -> str:
        """Write the Lease once (create it if missing); returns the renewTime written."""
        stamp = micro_time(time.time() - self.behind_seconds)
        path = f"{LEASES}/{self.node}"
        patch = {"spec": {"holderIdentity": self.node, "renewTime": stamp}}
        try:
            self.api.patch(path, patch, timeout=5)
        except ApiError as exc:
            if exc.status != 404:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.node, "namespace": "kube-node-lease"},
                "spec": {**patch["spec"], "leaseDurationSeconds": self.lease_seconds},
            }
            self.api.create(LEASES, body)
        return stamp

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.renew_times.append(self.renew_once())
            except (ApiError, OSError) as exc:
                self._rode_out(exc)
            self._stopping.wait(self.every)
