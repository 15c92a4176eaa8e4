"""Asklepios: heals Kubernetes nodes that die abruptly.

A watched node NotReady for too long is cordoned and gets the out-of-service
taint, so the control plane force-deletes its pods and detaches their volumes;
once it is Ready again for long enough, exactly that is undone.
"""

__version__ = "0.1.0"
