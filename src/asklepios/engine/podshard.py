"""The balancer's pod cache, filled by one or more pod reflectors.

The balancer follows 50,000 pods in the bench, so its cache is one dict shared by
every reflector, and each reflector only knows which namespaces it delivered.
"""

from __future__ import annotations

import attrs

from asklepios.core.balance import PodView


@attrs.define(eq=False)
class PodShard:
    """The part of the balancer's pod cache that one reflector keeps.

    A reflector watches one namespace or all of them, so the pods it owns are those of
    the namespaces it has delivered: a relist drops the others of those namespaces, and
    no set of 50,000 keys is needed to know them. Each pod is filed under its own `key`
    string (equal to the reflector's), so the cache holds one key string per pod.
    """

    pods: dict[str, PodView]
    namespaces: set[str] = attrs.Factory(set)
    synced: bool = False  # its reflector has listed once

    def replace(self, items: dict[str, PodView]) -> None:
        self.synced = True
        self.namespaces.update(pod.namespace for pod in items.values())
        for key in [k for k, pod in self.pods.items() if pod.namespace in self.namespaces and k not in items]:
            del self.pods[key]
        for pod in items.values():
            self.upsert(pod.key, pod)

    def upsert(self, key: str, item: PodView) -> None:
        self.namespaces.add(item.namespace)
        self.pods.pop(key, None)  # a dict keeps its first key string; the pod's own one replaces it
        self.pods[item.key] = item

    def delete(self, key: str) -> None:
        self.pods.pop(key, None)
