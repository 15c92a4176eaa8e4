"""ReadWriteOnce volumes in the lab: the real attach/detach chain, and a kubelet stand-in for it.

The out-of-service taint exists for volumes: without it a dead node's VolumeAttachment
stays and the replacement pod never gets its volume. So the lab runs the upstream chain:

* the attach-detach and persistentvolume-binder controllers of kube-controller-manager
  (always on, see ``controlplane.CONTROLLERS``; without volumes they do nothing);
* the real CSI external-attacher (``csi-attacher``, built by hack/controlplane/build.sh)
  and the lab's own CSI controller plugin (:mod:`asklepios_lab.csiplugin`) on a unix
  socket, both started by :meth:`Volumes.start`;
* per node (:meth:`Volumes.add_node`) the annotation that hands attach/detach to the
  controller and a CSINode naming the driver and the node's ID (its name);
* static PVs of the driver, pre-bound to a StatefulSet's claims (:meth:`Volumes.provide`);
* a kubelet stand-in thread doing the two things of a kubelet that the chain depends on,
  for the nodes whose kwok runs (a dead kubelet does neither):

  - it reports ``node.status.volumesInUse`` (``kubernetes.io/csi/<driver>^<handle>``) while
    a pod on the node uses the volume. The attach-detach controller does not detach a
    volume in use unless the node has the out-of-service taint (or after 6 minutes);
    without this the volume would be freed as soon as the pod leaves, taint or not;
  - it sets the :data:`~asklepios_lab.kwok.VOLUME_GATE` readiness gate and Ready=True once
    every volume of the pod is attached to its node (kwok leaves such pods Ready=False),
    so "Running and Ready" means "with its data", as a kubelet would not start the
    containers before the mount.

Volumes are opt-in: only workloads built with ``workloads.statefulset(..., volume=True)``
and nodes passed to :meth:`Volumes.add_node` take part.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from . import jsonl
from .api import JSON, Api, ApiError
from .csi import DRIVER
from .kwok import VOLUME_GATE
from .procs import Proc, stop_many, wait_until

MANAGED_ANNOTATION = "volumes.kubernetes.io/controller-managed-attach-detach"
VOLUME_LABEL = "lab.asklepios.dev/volume"
"""Label of the lab's volume pods, claims and PVs (the stand-in lists by it)."""
CLAIM = "data"
"""The name of the volumeClaimTemplate of a StatefulSet with ``volume=True``."""
INTERVAL = 0.2


def unique_name(handle: str) -> str:
    """What a kubelet reports in volumesInUse for a CSI volume of the lab's driver."""
    return f"kubernetes.io/csi/{DRIVER}^{handle}"


def attached_on(attachments: Iterable[JSON], pv: str, node: str) -> bool:
    """True if a VolumeAttachment of PV ``pv`` to ``node`` by the lab's driver reads attached."""
    return any(
        va["spec"].get("attacher") == DRIVER
        and va["spec"].get("nodeName") == node
        and va["spec"].get("source", {}).get("persistentVolumeName") == pv
        and (va.get("status") or {}).get("attached") is True
        and "deletionTimestamp" not in va["metadata"]
        for va in attachments
    )


class Volumes:
    """The attacher, the CSI plugin and the kubelet stand-in of one control plane."""

    def __init__(
        self, api: Api, bin_dir: Path, kubeconfig: Path, workdir: Path, log_dir: Path, alive: Callable[[str], bool]
    ) -> None:
        self.api = api
        self.workdir = workdir
        self.socket = workdir / "csi.sock"
        self.calls = workdir / "calls.jsonl"
        self._delay = workdir / "unpublish-delay"
        self._alive = alive
        self._nodes: set[str] = set()
        self._in_use: dict[str, list[str]] = {}  # node -> what the stand-in last reported
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._errors = log_dir / "volume-standin.log"
        self.plugin = Proc("csi-plugin", [
            sys.executable, "-m", "asklepios_lab.csiplugin", f"--socket={self.socket}", f"--calls={self.calls}",
            f"--unpublish-delay={self._delay}",
        ], log_dir / "csi-plugin.log")  # fmt: skip
        self.attacher = Proc("csi-attacher", [
            str(bin_dir / "csi-attacher"), f"--kubeconfig={kubeconfig}", f"--csi-address={self.socket}",
            "--leader-election=false", "--timeout=10s", "--v=4",
        ], log_dir / "csi-attacher.log")  # fmt: skip

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Create the CSIDriver, start the plugin, the attacher and the stand-in."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        driver = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "CSIDriver",
            "metadata": {"name": DRIVER},
            "spec": {"attachRequired": True, "podInfoOnMount": False, "volumeLifecycleModes": ["Persistent"]},
        }
        if self.api.get_or_none(f"/apis/storage.k8s.io/v1/csidrivers/{DRIVER}") is None:
            self.api.create("/apis/storage.k8s.io/v1/csidrivers", driver)
        self.plugin.start()
        wait_until(self.socket.exists, 30, f"CSI plugin socket {self.socket}", alive=[self.plugin])
        self.attacher.start()
        self._thread = threading.Thread(target=self._run, name="volume-standin", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        stop_many([self.attacher, self.plugin])

    # -------------------------------------------------------------- nodes, PVs

    def add_node(self, name: str) -> None:
        """Hand ``name``'s attach/detach to the controller; give it a CSINode; stand in for its kubelet."""
        node = self.api.patch(f"/api/v1/nodes/{name}", {"metadata": {"annotations": {MANAGED_ANNOTATION: "true"}}})
        owner = {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"]["uid"]}
        csinode = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "CSINode",
            "metadata": {"name": name, "ownerReferences": [owner]},
            "spec": {"drivers": [{"name": DRIVER, "nodeID": name, "topologyKeys": []}]},
        }
        self.api.delete(f"/apis/storage.k8s.io/v1/csinodes/{name}")  # a stale one of an earlier node of that name
        self.api.create("/apis/storage.k8s.io/v1/csinodes", csinode)
        with self._lock:
            self._nodes.add(name)

    def forget(self, name: str) -> None:
        """Stop standing in for ``name``'s kubelet (the node is being removed)."""
        with self._lock:
            self._nodes.discard(name)
            self._in_use.pop(name, None)

    def provide(self, namespace: str, statefulset: str, replicas: int) -> list[str]:
        """Create one static PV per replica, pre-bound to claim ``data-<statefulset>-<i>``; returns their names."""
        names = []
        for i in range(replicas):
            claim = f"{CLAIM}-{statefulset}-{i}"
            name = f"{namespace}-{claim}"[:253]
            pv = {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": name, "labels": {VOLUME_LABEL: "true"}},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "",
                    "volumeMode": "Filesystem",
                    "claimRef": {
                        "apiVersion": "v1",
                        "kind": "PersistentVolumeClaim",
                        "namespace": namespace,
                        "name": claim,
                    },
                    "csi": {"driver": DRIVER, "volumeHandle": f"{namespace}/{claim}", "fsType": "ext4"},
                },
            }
            self.api.create("/api/v1/persistentvolumes", pv)
            names.append(name)
        return names

    def release(self, namespace: str) -> None:
        """Delete the PVs :meth:`provide` made for ``namespace`` (after its claims are gone)."""
        for pv in self._list("/api/v1/persistentvolumes"):
            if (pv["spec"].get("claimRef") or {}).get("namespace") == namespace:
                self.api.delete(f"/api/v1/persistentvolumes/{pv['metadata']['name']}")

    def set_unpublish_delay(self, seconds: float) -> None:
        """Make the driver's every ControllerUnpublishVolume wait ``seconds`` first (0: no wait)."""
        self._delay.write_text(str(seconds))

    def driver_calls(self) -> list[JSON]:
        """The plugin's record of its calls so far (one dict per call, in order)."""
        return jsonl.read(self.calls)

    # ----------------------------------------------------------- the stand-in

    def _list(self, path: str, *, labelled: bool = True) -> list[JSON]:
        query = {"labelSelector": VOLUME_LABEL} if labelled else None
        items: list[JSON] = self.api.get(path, query=query).get("items") or []
        return items

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL):
            try:
                self.sync()
            except (ApiError, OSError) as exc:
                with self._errors.open("a") as log:
                    log.write(f"{time.strftime('%H:%M:%S')} {exc}\n")

    def sync(self) -> None:
        """One pass of the kubelet stand-in over the live nodes it stands in for."""
        with self._lock:
            nodes = {n for n in self._nodes if self._alive(n)}
        if not nodes:
            return
        pods = [p for p in self._list("/api/v1/pods") if p["spec"].get("nodeName") in nodes]
        if not pods and not any(self._in_use.get(n) for n in nodes):
            return
        claims = {
            (c["metadata"]["namespace"], c["metadata"]["name"]): c for c in self._list("/api/v1/persistentvolumeclaims")
        }
        pvs = {pv["metadata"]["name"]: pv for pv in self._list("/api/v1/persistentvolumes")}
        attachments = self._list("/apis/storage.k8s.io/v1/volumeattachments", labelled=False)
        in_use: dict[str, set[str]] = {n: set() for n in nodes}
        for pod in pods:
            node = pod["spec"]["nodeName"]
            volumes = self._pvs_of(pod, claims, pvs)
            in_use[node].update(unique_name(pvs[v]["spec"]["csi"]["volumeHandle"]) for v in volumes if v in pvs)
            ready = volumes and all(attached_on(attachments, v, node) for v in volumes)
            if ready and not _gate_set(pod) and "deletionTimestamp" not in pod["metadata"]:
                self._set_ready(pod)
        for node, names in in_use.items():
            report = sorted(names)
            if self._in_use.get(node) != report:
                self.api.patch(f"/api/v1/nodes/{node}/status", {"status": {"volumesInUse": report}})
                self._in_use[node] = report

    @staticmethod
    def _pvs_of(pod: JSON, claims: dict[tuple[str, str], JSON], pvs: dict[str, JSON]) -> list[str]:
        """The PV names of the pod's claims; a claim not yet bound counts as a PV never attached."""
        out = []
        for vol in pod["spec"].get("volumes") or []:
            claim_name = (vol.get("persistentVolumeClaim") or {}).get("claimName")
            if claim_name:
                claim = claims.get((pod["metadata"]["namespace"], claim_name)) or {}
                out.append(claim.get("spec", {}).get("volumeName") or f"<unbound {claim_name}>")
        return out

    def _set_ready(self, pod: JSON) -> None:
        meta = pod["metadata"]
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        conditions: list[dict[str, Any]] = [
            {"type": VOLUME_GATE, "status": "True", "lastTransitionTime": now},
            {"type": "Ready", "status": "True", "lastTransitionTime": now},
        ]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
        patch = {"metadata": {"uid": meta["uid"]}, "status": {"conditions": conditions}}
        try:
            self.api.patch(path, patch, "strategic")
        except ApiError as exc:
            if exc.status not in (404, 409, 422):  # gone or replaced meanwhile
                raise


def _gate_set(pod: JSON) -> bool:
    return any(
        c.get("type") == VOLUME_GATE and c.get("status") == "True"
        for c in pod.get("status", {}).get("conditions") or []
    )
