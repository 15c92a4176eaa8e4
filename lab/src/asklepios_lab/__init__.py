"""asklepios-lab: a local Kubernetes control plane with kwok nodes, for Asklepios tests.

Real upstream etcd, kube-apiserver, kube-controller-manager and kube-scheduler (built by
``hack/controlplane/build.sh``) plus one kwok per fake node, all on 127.0.0.1, so tests
see exactly what the upstream controllers do when a node loses power.

    from asklepios_lab import ControlPlane, binaries
    with ControlPlane(bin_dir=binaries.ensure()) as cp:
        cp.add_node("n1")          # InternalIP in the lab's own 127.X.0.0/16, kubelet port open
        cp.crash("n1")             # power cut: kwok killed, port silent (a connect times out)
        cp.port_state("n1")        # "silent" ("accepted", "refused")
        cp.restore("n1")
        cp.stop_kubelet("n1")      # kubelet stopped, machine runs: kwok killed, port refuses
        cp.restore("n1")
        cp.partition("n1")         # cut off the apiserver, port still accepts
        cp.restore("n1")
        with cp.skewed_kubelet("n1", behind_seconds=60, every=1.0):
            cp.set_ready("n1", "False")  # NotReady while the Lease is renewed 60 s in the past
        cp.restore("n1")
        api = cp.as_node("n1")     # system:node:n1 under Node authorization and NodeRestriction
        url = cp.bmc().attach("n1")  # a Redfish system: ForceOff crashes the node
        group = cp.add_nodes_bulk(["b1", "b2"], listeners=True)  # one kwok for both
        cp.crash("b1")             # one of them: out of its kwok, Lease deleted, port silent
        cp.restore("b1")
"""

from .api import Api, ApiError
from .bmc import Bmc, BmcRecord
from .controlplane import CONTROLLERS, ControlPlane, StaticToken
from .faults import PortState
from .kube import Kube, KubectlError, wait_for
from .kwok import READY_OVERRIDE
from .leases import SkewedKubelet
from .listeners import PortMode
from .nodes import ready_condition
from .procs import ProcessDiedError
from .resync import RESYNC_ANNOTATION, PodResync

__all__ = [
    "CONTROLLERS",
    "READY_OVERRIDE",
    "RESYNC_ANNOTATION",
    "Api",
    "ApiError",
    "Bmc",
    "BmcRecord",
    "ControlPlane",
    "Kube",
    "KubectlError",
    "PodResync",
    "PortMode",
    "PortState",
    "ProcessDiedError",
    "SkewedKubelet",
    "StaticToken",
    "ready_condition",
    "wait_for",
]
