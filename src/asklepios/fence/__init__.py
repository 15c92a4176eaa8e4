"""Talking to the nodes themselves, not to the apiserver: the liveness probe and the BMC.

Beside `asklepios.kube` in the layers: it imports only the decision core's values.
Every address it contacts comes from the cluster: a node's InternalIP (probed only),
and the BMC URLs of the fencing Secret, which only admins write; nothing here picks
an address of its own.
"""
