"""asklepios-lab: a local Kubernetes control plane with kwok nodes, for Asklepios tests.

Real upstream etcd, kube-apiserver, kube-controller-manager and kube-scheduler (built by
``hack/controlplane/build.sh``) plus one kwok per fake node, all on 127.0.0.1, so tests
see exactly what the upstream controllers do when a node loses power.

    from asklepios_lab import ControlPlane, binaries
    with ControlPlane(bin_dir=binaries.ensure()) as cp:
        cp.add_node("n1")          # InternalIP in the lab's own 127.X.0.0/16, kubelet port open
        cp.crash("n1")             # power cut: kwok killed, port closed
        cp.restore("n1")
        cp.partition("n1")         # cut off the apiserver, port still answers
        url = cp.bmc().attach("n1")  # a Redfish system: ForceOff crashes the node
        group = cp.add_nodes_bulk(["b1", "b2"], listeners=True)  # one kwok for both
        cp.crash("b1")             # one of them: out of its kwok, Lease deleted, port closed
        cp.restore("b1")
"""

from .api import Api, ApiError
from .bmc import Bmc, BmcRecord
from .controlplane import CONTROLLERS, ControlPlane, StaticToken
from .kube import Kube, KubectlError, wait_for
from .kwok import READY_OVERRIDE
from .nodes import ready_condition
from .procs import ProcessDiedError

__all__ = [
    "CONTROLLERS",
    "READY_OVERRIDE",
    "Api",
    "ApiError",
    "Bmc",
    "BmcRecord",
    "ControlPlane",
    "Kube",
    "KubectlError",
    "ProcessDiedError",
    "StaticToken",
    "ready_condition",
    "wait_for",
]
