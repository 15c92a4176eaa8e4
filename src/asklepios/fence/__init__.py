"""Talking to the nodes themselves, not to the apiserver: the liveness probe and the BMC.

Beside `asklepios.kube` in the layers: it imports only the decision core's values.
Every address it contacts comes from the cluster (a node's InternalIP, its
`asklepios.io/bmc` annotation); nothing here picks an address of its own.
"""
