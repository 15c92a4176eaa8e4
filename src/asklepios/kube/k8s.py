"""The part of kubernetes-asyncio Asklepios uses, imported without the rest.

Asklepios needs three things from kubernetes-asyncio: the kubeconfig and in-cluster
loaders (`kubernetes_asyncio.config`), `Configuration`, and `ApiClient.call_api` (its
aiohttp session, TLS and token refresh). Importing any of them the ordinary way runs
`kubernetes_asyncio/__init__.py`, which imports the whole generated client: 138 API
and 1,536 model modules, and `dynamic` (jsonschema when kubernetes-validate is
installed). That is 860 modules and ~32 MiB of code objects for nothing we call
(measured in bench/README.md, "Memory").

So the three packages whose `__init__.py` pulls that in (`kubernetes_asyncio`,
`kubernetes_asyncio.client`, `kubernetes_asyncio.client.models`) are registered
*bare*: their submodules import as usual, their own body waits. The first lookup of
a name a bare package lacks (say `kubernetes_asyncio.client.CoreV1Api`, or a model
class `ApiClient` deserialises into) runs the real `__init__.py` there and then, so
any other user of kubernetes-asyncio in the process sees the whole library, only
later. When kubernetes-asyncio was imported before this module, nothing changes.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

_HEAVY_PACKAGES = ("kubernetes_asyncio", "kubernetes_asyncio.client", "kubernetes_asyncio.client.models")


def _register_bare(name: str) -> None:
    """Put package `name` in sys.modules without running its __init__.py (until it is needed)."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not an installed package")
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def complete(attr: str) -> object:
        """PEP 562 fallback: run the package's real body on first use of a name it lacks."""
        del module.__dict__["__getattr__"]
        loader.exec_module(module)
        return getattr(module, attr)

    module.__dict__["__getattr__"] = complete
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)


for _name in _HEAVY_PACKAGES:
    _register_bare(_name)

# Submodules only, never `from <bare package> import x`: that looks x up on the package
# and would run its body. `rest` first: `api_client` takes it from the package.
importlib.import_module("kubernetes_asyncio.client.rest")

import kubernetes_asyncio.client.api_client  # noqa: E402
import kubernetes_asyncio.client.configuration  # noqa: E402
import kubernetes_asyncio.client.exceptions  # noqa: E402

ApiClient = kubernetes_asyncio.client.api_client.ApiClient
Configuration = kubernetes_asyncio.client.configuration.Configuration
ApiException = kubernetes_asyncio.client.exceptions.ApiException

# What `kubernetes_asyncio.config` imports from the client package, then the loaders.
_client: ModuleType = sys.modules["kubernetes_asyncio.client"]
for _cls in (ApiClient, Configuration):
    if _cls.__name__ not in _client.__dict__:
        setattr(_client, _cls.__name__, _cls)

import kubernetes_asyncio.config.incluster_config  # noqa: E402
import kubernetes_asyncio.config.kube_config  # noqa: E402

load_kube_config = kubernetes_asyncio.config.kube_config.load_kube_config
load_incluster_config = kubernetes_asyncio.config.incluster_config.load_incluster_config

__all__ = ["ApiClient", "ApiException", "Configuration", "load_incluster_config", "load_kube_config"]
