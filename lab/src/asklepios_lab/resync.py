"""A restarted kwok's missed pods: the lab touches them once the new kwok holds the Lease.

A real kubelet that starts syncs every pod bound to its node: it finishes the ones
being deleted and starts the pending ones. kwok v0.8.0 mostly does too, but it can miss
them. Each kwok process has a new holder identity, so a restarted one takes the node's
Lease over and then at once lists the node's pods (``NodeLeaseController.sync`` calls
``onNodeManaged`` straight after ``renewLease``). It checks each pod against its *cache*
of the Lease (``PodController.watchResources``, ``readOnly``), and that cache may still
name the old holder, so it skips the pod as "read only". A skipped pod is looked at
again only when it changes, so a pod left Terminating by the outage stays Terminating
forever. The race is lost most easily when the kwok starts during an apiserver outage.
A soak of CI (20acc1b) saw it: control3's kwok restarted while the apiserver was down,
and three pods stayed Terminating for the four minutes of the drain.

:class:`PodResync` plays the kubelet's start-up sync for that case, and only for it.
Once the node's Lease has been renewed since the restart (so the new kwok holds it), it
lists the node's unfinished pods: being deleted, or Pending. If there are any, it
annotates each (:data:`RESYNC_ANNOTATION`, a count), and kwok then sees a change.
It repeats this every ``every`` seconds until none are left or ``within`` seconds have
passed. The lab's :meth:`~asklepios_lab.faults.FaultOps.restore` starts one per
single-node kwok, and the next fault of the node or the lab's teardown stops it. It
never deletes a pod or writes a pod's status: kwok still does all of that.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime

from .api import JSON, Api, ApiError
from .leases import LEASES
from .nodethread import NodeThread

RESYNC_ANNOTATION = "lab.asklepios.io/kubelet-resync"
REQUEST_TIMEOUT = 5.0  # a fault's stop() joins this thread under the lab's lock: never wait long


def _epoch(micro_time: str) -> float:
    return datetime.strptime(micro_time, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def unfinished(pod: JSON) -> bool:
    """A pod a kubelet's start-up sync would act on: being deleted, or not started yet."""
    being_deleted = bool((pod.get("metadata") or {}).get("deletionTimestamp"))
    return being_deleted or (pod.get("status") or {}).get("phase") == "Pending"


class PodResync(NodeThread):
    """Touches node ``node``'s unfinished pods after its kwok restarted at ``since`` (epoch)."""

    def __init__(self, api: Api, node: str, since: float, *, every: float = 2.0, within: float = 90.0) -> None:
        super().__init__(api, node, "pod-resync")
        self.since, self.every, self.within = since, every, within
        self.touches: Counter[str] = Counter()  # "namespace/name" -> how many times annotated

    def _lease_renewed(self) -> bool:
        lease = self.api.get_or_none(f"{LEASES}/{self.node}", timeout=REQUEST_TIMEOUT)
        renew = ((lease or {}).get("spec") or {}).get("renewTime")
        return isinstance(renew, str) and _epoch(renew) >= self.since - 1.0

    def _touch_unfinished(self) -> int:
        """Annotate each unfinished pod of the node; returns how many there were."""
        query = {"fieldSelector": f"spec.nodeName={self.node}"}
        pods = self.api.get("/api/v1/pods", query=query, timeout=REQUEST_TIMEOUT)["items"]
        left = [p for p in pods if unfinished(p)]
        for pod in left:
            meta = pod["metadata"]
            key = f"{meta['namespace']}/{meta['name']}"
            patch = {"metadata": {"annotations": {RESYNC_ANNOTATION: str(self.touches[key] + 1)}}}
            try:
                path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
                self.api.patch(path, patch, timeout=REQUEST_TIMEOUT)
            except ApiError as exc:
                if exc.status != 404:  # gone meanwhile: what we wanted
                    raise
                continue
            self.touches[key] += 1
        return len(left)

    def _run(self) -> None:
        deadline = time.monotonic() + self.within
        renewed = False
        try:
            while not self._stopping.is_set() and time.monotonic() < deadline:
                try:
                    if not renewed:
                        renewed = self._lease_renewed()
                        # give kwok its own pass first: most of the time it does not miss
                        wait = 0.5 if not renewed else self.every
                    elif self._touch_unfinished() == 0:
                        return
                    else:
                        wait = self.every
                except (ApiError, OSError) as exc:  # an apiserver outage: keep trying
                    self._rode_out(exc)
                    wait = 0.5
                self._stopping.wait(wait)
        finally:
            self.api.close()
