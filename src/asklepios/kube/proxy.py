"""The proxy of the apiserver connections, looked up once at connect.

client-go honours `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` for the apiserver, and so
does Asklepios, but not through aiohttp's `trust_env`, which looks them up (and
`~/.netrc`) again for every request (see `without_env_lookups`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import aiohttp

from asklepios.kube import k8s


def without_env_lookups(api: k8s.ApiClient, environ: Mapping[str, str] | None = None) -> k8s.ApiClient:
    """The client's session, reading the proxy variables once instead of at every request.

    kubernetes-asyncio opens its aiohttp session with `trust_env=True`: for every
    request aiohttp then reads the proxy variables and `~/.netrc` again, in a thread
    of the default executor. In a mass outage that was an eighth of the leader's CPU,
    and those threads take the GIL from the event loop (bench mass-outage, py-spy).
    The session is replaced by one without it on the same connector; the proxy that
    `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` name for the apiserver (client-go honours
    them too) is looked up here once, unless the kubeconfig already set one.
    """
    rest = api.rest_client
    old: aiohttp.ClientSession = rest.pool_manager
    rest.pool_manager = aiohttp.ClientSession(connector=old.connector, trust_env=False, read_bufsize=2**21)
    old.detach()  # the connector now belongs to the new session
    proxy = env_proxy(str(api.configuration.host), os.environ if environ is None else environ)
    if proxy and not rest.proxy:
        rest.proxy = proxy
    return api


def env_proxy(url: str, environ: Mapping[str, str]) -> str | None:
    """The proxy the environment names for `url` (as urllib: lower case first, NO_PROXY), or None."""
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0]
    proxies = {
        key[: -len("_proxy")].lower(): value
        for key, value in sorted(environ.items(), key=lambda kv: kv[0].islower())  # lower case wins
        if key.lower().endswith("_proxy") and value
    }
    if not proxies.get(scheme) or _no_proxy(host, proxies.get("no", "")):
        return None
    return proxies[scheme]


def _no_proxy(host_port: str, no_proxy: str) -> bool:
    """urllib's NO_PROXY rule: `*`, or an entry that is the host (or host:port) or a domain of it."""
    host_port = host_port.lower()
    if host_port.startswith("["):  # [IPv6]:port
        host = host_port[1 : host_port.find("]")]
    else:
        host = host_port.rsplit(":", 1)[0] if ":" in host_port else host_port
    for entry in (e.strip().lstrip(".").lower() for e in no_proxy.split(",")):
        if entry == "*" or entry in (host, host_port) or (entry and host.endswith("." + entry)):
            return True
    return False
