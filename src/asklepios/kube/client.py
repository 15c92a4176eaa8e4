"""One connection to the apiserver: configuration, plain requests and watch streams.

kubernetes-asyncio supplies configuration loading (kubeconfig or in-cluster,
with token refresh) and its aiohttp session; requests are sent raw and decoded
with orjson, which keeps big lists fast and lets us see status codes (409, 410,
429) as values instead of generated model objects.

Which configuration is used is decided here, in kubectl's (client-go's) order:
`--kubeconfig FILE`; else `KUBECONFIG` (a `:`-separated list, missing files
skipped, the rest merged); else `~/.kube/config`; when none of these names a file
that exists, the in-cluster service account (`KUBERNETES_SERVICE_HOST` and
`KUBERNETES_SERVICE_PORT` set and the token file present). A configuration that
cannot be used raises `KubeConfigError`: one line, before any request.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp
import attrs
import orjson

from asklepios.kube import k8s

JSON = dict[str, Any]
T = TypeVar("T")
LIST_PAGE = 100  # items per list request: a page is decoded whole (see Reflector.page_size)
SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
IN_CLUSTER = "in-cluster"


class KubeConfigError(Exception):
    """No usable configuration to reach the apiserver; str() is the one line to print (exit 2)."""


@attrs.frozen
class KubeSource:
    """Where the connection's configuration comes from: kubeconfig file(s), or IN_CLUSTER."""

    kubeconfig: str  # a path, a `:`-separated KUBECONFIG list, or IN_CLUSTER
    context: str = ""  # "": the kubeconfig's current-context

    @property
    def in_cluster(self) -> bool:
        return self.kubeconfig == IN_CLUSTER


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _home() -> Path:
    """$HOME; a container user without one (no HOME, no passwd entry) has no ~/.kube/config."""
    try:
        return Path.home()
    except RuntimeError:
        return Path("/nonexistent")


def in_cluster_possible(environ: Mapping[str, str], token: Path = SERVICE_ACCOUNT_TOKEN) -> bool:
    """client-go's rule: both service variables set and the token file present."""
    return (
        bool(environ.get("KUBERNETES_SERVICE_HOST"))
        and bool(environ.get("KUBERNETES_SERVICE_PORT"))
        and token.is_file()
    )


def resolve_source(
    kubeconfig: str | None = None,
    context: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    home: Path | None = None,
    token: Path = SERVICE_ACCOUNT_TOKEN,
) -> KubeSource:
    """Choose the configuration as kubectl does (see the module docstring); raise KubeConfigError."""
    env = os.environ if environ is None else environ
    context = context or ""
    if kubeconfig is not None:
        if not Path(kubeconfig).expanduser().is_file():
            raise KubeConfigError(f"--kubeconfig {kubeconfig}: no such file")
        return KubeSource(kubeconfig, context)
    listed = env.get("KUBECONFIG", "")
    if listed:
        if any(Path(p).expanduser().is_file() for p in listed.split(os.pathsep) if p):
            return KubeSource(listed, context)
    else:
        default = (home if home is not None else _home()) / ".kube" / "config"
        if default.is_file():
            return KubeSource(str(default), context)
    if in_cluster_possible(env, token):
        if context:
            raise KubeConfigError(f"--context {context}: there is no kubeconfig, only the in-cluster service account")
        return KubeSource(IN_CLUSTER)
    where = f"KUBECONFIG={listed}: no such file" if listed else "KUBECONFIG is unset and ~/.kube/config does not exist"
    raise KubeConfigError(
        f"no kubeconfig: {where}, and this is not a pod with a service account token "
        "→ pass --kubeconfig FILE or set KUBECONFIG"
    )


@attrs.frozen
class Loaded:
    """A configuration loaded (and so checked) before the first request: `connect` takes it as is."""

    source: KubeSource
    configuration: Any  # k8s.Configuration


async def load(source: KubeSource) -> Loaded:
    """`source` loaded: KubeConfigError (one line) when it cannot be used."""
    return Loaded(source, await load_configuration(source))


async def load_configuration(source: KubeSource) -> k8s.Configuration:
    """The client configuration of `source`; KubeConfigError (one line) when it cannot be used."""
    configuration = k8s.Configuration()
    try:
        if source.in_cluster:
            k8s.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            await k8s.load_kube_config(
                config_file=source.kubeconfig, context=source.context or None, client_configuration=configuration
            )
    except Exception as exc:  # yaml, missing keys, a context not found, a broken exec plugin: all one line
        where = "in-cluster config" if source.in_cluster else f"kubeconfig {source.kubeconfig}"
        raise KubeConfigError(f"{where}: {_one_line(exc)}") from None
    if not str(configuration.host or "").startswith(("https://", "http://")):
        raise KubeConfigError(f"kubeconfig {source.kubeconfig}: no usable server address ({configuration.host!r})")
    return configuration


class ApiError(Exception):
    """A request the apiserver refused or that never reached it (status 0)."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message
        self.retry_after = retry_after  # seconds, from a 429's Retry-After header


class Conflict(ApiError):
    """409: the object changed since we read it (resourceVersion precondition)."""


class Gone(ApiError):
    """410: the resourceVersion we resume from has been compacted away."""


class NotFound(ApiError):
    """404."""


def _retry_after(raw: str | None) -> float | None:
    try:
        return max(0.0, float(raw)) if raw else None
    except ValueError:
        return None


def _error(status: int, body: bytes, retry_after: str | None = None) -> ApiError:
    message = body.decode(errors="replace")[:500]
    try:
        parsed = orjson.loads(body)
        if isinstance(parsed, dict):
            message = str(parsed.get("message", message))
    except orjson.JSONDecodeError:
        pass
    cls = {409: Conflict, 410: Gone, 404: NotFound}.get(status, ApiError)
    return cls(status, message, _retry_after(retry_after))


class KubeClient:
    """Requests to one apiserver. Use `async with KubeClient.connect() as kube`."""

    def __init__(
        self,
        api: k8s.ApiClient,
        request_timeout: float = 10.0,
        watch_api: k8s.ApiClient | None = None,
        lease_api: k8s.ApiClient | None = None,
    ) -> None:
        self._api = api
        self._watch_api = watch_api or api
        self._lease_api = lease_api or api
        self.request_timeout = request_timeout

    def for_leader_election(self) -> KubeClient:
        """This client with its requests on the leader election's own connections."""
        return KubeClient(self._lease_api, self.request_timeout, watch_api=self._watch_api)

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, kubeconfig: str | KubeSource | Loaded | None = None, context: str | None = None
    ) -> AsyncIterator[KubeClient]:
        """Connect as `resolve_source` decides (or as given); KubeConfigError when unusable."""
        if isinstance(kubeconfig, Loaded):
            configuration = kubeconfig.configuration
        else:
            source = kubeconfig if isinstance(kubeconfig, KubeSource) else resolve_source(kubeconfig, context)
            configuration = await load_configuration(source)
        # Three connection pools. A watch holds its connection for minutes, and Asklepios
        # keeps one per kicked-out node: in one pool of 100 (kubernetes-asyncio's
        # default), a mass outage would leave the Lease renewal and the kickout PATCHes
        # waiting for a watch to end. Requests keep the bounded pool; watches get their
        # own, unbounded (their number is bounded by the guard: the nodes kicked out).
        # The leader election has two connections of its own (as kube-controller-manager
        # gives it its own client): when thousands of nodes go NotReady at once, their
        # Lease reads queue for the request pool, and a renewal waiting behind them
        # would cost the leader its Lease (bench mass-outage, 5,000 / 3,000).
        api = without_env_lookups(k8s.ApiClient(configuration))
        configuration.connection_pool_maxsize = 0  # aiohttp: no limit
        watch_api = without_env_lookups(k8s.ApiClient(configuration))
        configuration.connection_pool_maxsize = 2
        lease_api = without_env_lookups(k8s.ApiClient(configuration))
        try:
            yield cls(api, watch_api=watch_api, lease_api=lease_api)
        finally:
            await lease_api.close()
            await watch_api.close()
            await api.close()

    @property
    def host(self) -> str:
        return str(self._api.configuration.host)

    async def _send(
        self,
        api: k8s.ApiClient,
        method: str,
        path: str,
        query: Mapping[str, str | int] | None,
        body: Any,
        content_type: str,
        timeout: aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        try:
            response: aiohttp.ClientResponse = await api.call_api(
                path,
                method,
                query_params=list((query or {}).items()),
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout,
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ApiError(0, f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        except k8s.ApiException as exc:  # raised for connection failures inside the client
            raise ApiError(int(exc.status or 0), f"{method} {path}: {exc.reason}") from exc
        return response

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> JSON:
        """Send one request and return the decoded JSON body; raise ApiError on failure."""
        limit = aiohttp.ClientTimeout(total=timeout or self.request_timeout)
        response = await self._send(self._api, method, path, query, body, content_type, limit)
        try:
            data = await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ApiError(0, f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        finally:
            response.release()
        if not 200 <= response.status < 300:
            raise _error(response.status, data, response.headers.get("Retry-After"))
        decoded = orjson.loads(data) if data else {}
        return decoded if isinstance(decoded, dict) else {"items": decoded}

    @asynccontextmanager
    async def stream(
        self, path: str, query: Mapping[str, str | int], read_timeout: float
    ) -> AsyncIterator[AsyncIterator[JSON]]:
        """A watch: yields decoded events; a silent connection fails after `read_timeout`."""
        limit = aiohttp.ClientTimeout(total=None, connect=self.request_timeout, sock_read=read_timeout)
        response = await self._send(self._watch_api, "GET", path, query, None, "application/json", limit)
        try:
            if response.status != 200:
                raise _error(response.status, await response.read())
            yield _events(response, path)
        finally:
            response.close()


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


async def _events(response: aiohttp.ClientResponse, path: str) -> AsyncIterator[JSON]:
    """Split the chunked body into JSON lines (objects may exceed aiohttp's line limit)."""
    pending = b""
    try:
        async for chunk in response.content.iter_any():
            pending += chunk
            if b"\n" not in chunk:
                continue
            *lines, pending = pending.split(b"\n")  # one pass: slicing off line by line copied the rest each time
            for line in lines:
                if line.strip():
                    yield orjson.loads(line)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise ApiError(0, f"watch {path}: {type(exc).__name__}: {exc}") from exc


class Requests(Protocol):
    async def request(
        self, method: str, path: str, *, query: Mapping[str, str | int] | None = ..., timeout: float | None = ...
    ) -> JSON: ...


async def list_items(
    client: Requests, path: str, query: Mapping[str, str | int], parse: Callable[[JSON], T | None]
) -> list[T]:
    """A paged list: what `parse` makes of each item (None drops it); a page's JSON is gone before the next."""
    items: list[T] = []
    page: dict[str, str | int] = {**query, "limit": LIST_PAGE}
    while True:
        data = await client.request("GET", path, query=page, timeout=60)
        items += [item for item in map(parse, data.get("items") or []) if item is not None]
        token = (data.get("metadata") or {}).get("continue")
        if not token:
            return items
        page["continue"] = token
