"""One connection to the apiserver: configuration, plain requests and watch streams.

kubernetes-asyncio supplies configuration loading (kubeconfig or in-cluster,
with token refresh) and its aiohttp session; requests are sent raw and decoded
with orjson, which keeps big lists fast and lets us see status codes (409, 410,
429) as values instead of generated model objects.

Which configuration is used is decided in `kube.kubeconfig`; the proxy of the
connections in `kube.proxy`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import aiohttp
import orjson

from asklepios.kube import k8s
from asklepios.kube.kubeconfig import KubeSource, Loaded, load_configuration, resolve_source
from asklepios.kube.proxy import without_env_lookups

JSON = dict[str, Any]
T = TypeVar("T")
LIST_PAGE = 100  # items per list request: a page is decoded whole (see Reflector.page_size)


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
