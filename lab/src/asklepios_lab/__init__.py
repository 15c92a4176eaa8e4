"""asklepios-lab: a local Kubernetes control plane with kwok nodes, for Asklepios tests.

Real upstream etcd, kube-apiserver, kube-controller-manager and kube-scheduler (built by
``hack/controlplane/build.sh``) plus one kwok per fake node, all on 127.0.0.1, so tests
see exactly what the upstream controllers do when a node loses power.

    from asklepios_lab import ControlPlane, binaries
    with ControlPlane(bin_dir=binaries.ensure()) as cp:
        cp.add_node("n1")
        cp.crash("n1")
"""

from .api import Api, ApiError
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
    "ControlPlane",
    "Kube",
    "KubectlError",
    "ProcessDiedError",
    "StaticToken",
    "ready_condition",
    "wait_for",
]
