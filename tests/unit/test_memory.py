"""What keeps the steady state small: the pod view's layout, the balancer's store, and
importing only the part of kubernetes-asyncio that Asklepios uses (issue 13.4)."""

from __future__ import annotations

import contextlib
import gc
import itertools
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

import anyio
import orjson
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from asklepios.core.balance import OwnerRef, PodView
from asklepios.core.preflight import Budget, PodSeen, statefulset_sample, unprotected_statefulsets
from asklepios.engine.controller import FULL_COLLECTION_EVERY, _freeze_the_synced_heap
from asklepios.engine.podshard import PodShard
from asklepios.kube.access import ClusterReads, parse_label_selector
from asklepios.kube.client import ApiError, KubeClient, NotFound, _events
from asklepios.kube.nodes import NodeApi
from asklepios.kube.pods import parse_pod
from asklepios.kube.proxy import env_proxy
from asklepios.kube.reflector import object_key

STS = OwnerRef("StatefulSet", "db", "uid-sts")


def raw_pod(name: str, namespace: str = "openstack", node: str = "n1", uid: str | None = None) -> dict[str, object]:
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid or f"uid-{name}",
            "creationTimestamp": "2026-03-26T16:36:05Z",
            "ownerReferences": [{"kind": "StatefulSet", "name": "db", "uid": "uid-sts", "controller": True}],
            "labels": {"app": "db", "asklepios.io/balance": "true"},
        },
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "db:1"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }


def pod(name: str, namespace: str = "a", uid: str = "") -> PodView:
    return PodView.of(namespace, name, uid or f"uid-{name}", "n1", STS, ready=True)


def test_the_pod_view_keeps_one_string_for_its_key_and_name_and_no_datetime() -> None:
    view = parse_pod(orjson.loads(orjson.dumps(raw_pod("db-0"))))
    assert (view.key, view.namespace, view.name, view.node) == ("openstack/db-0", "openstack", "db-0", "n1")
    assert view.created == datetime(2026, 3, 26, 16, 36, 5, tzinfo=UTC).timestamp()
    assert isinstance(view.created, float)
    assert view.ready and not view.deleting
    assert view.owner == STS
    assert not hasattr(view, "__dict__")  # slotted


def test_pods_share_namespace_node_owner_and_placement() -> None:
    a, b = (parse_pod(orjson.loads(orjson.dumps(raw_pod(f"db-{i}")))) for i in range(2))
    assert a.namespace is b.namespace
    assert a.node is b.node
    assert a.owner is b.owner
    assert a.placement is b.placement


def test_the_store_files_each_pod_under_its_own_key_string() -> None:
    cache: dict[str, PodView] = {}
    shard = PodShard(cache)
    obj = raw_pod("db-0")
    first = parse_pod(obj)
    shard.replace({object_key(obj): first})
    (key,) = cache
    assert key is first.key  # not the reflector's copy
    second = parse_pod({**obj, "spec": {"nodeName": "n2"}})
    shard.upsert(object_key(obj), second)
    (key,) = cache
    assert key is second.key and cache[key] is second
    shard.delete(object_key(obj))
    assert cache == {}


def test_a_relist_drops_only_the_shards_own_pods() -> None:
    """One shard per namespace share one cache: a relist of `a` leaves `b` alone."""
    cache: dict[str, PodView] = {}
    in_a, in_b = PodShard(cache), PodShard(cache)
    in_a.replace({p.key: p for p in (pod("x"), pod("y"))})
    in_b.replace({p.key: p for p in (pod("z", "b"),)})
    in_a.upsert("a/w", pod("w"))
    in_a.replace({p.key: p for p in (pod("y", uid="new"),)})
    assert sorted(cache) == ["a/y", "b/z"]
    assert cache["a/y"].uid == "new"
    in_b.replace({})
    assert sorted(cache) == ["a/y"]


def test_one_shard_for_all_namespaces_relists_all() -> None:
    cache: dict[str, PodView] = {}
    everything = PodShard(cache)
    everything.replace({p.key: p for p in (pod("x"), pod("y", "b"))})
    everything.upsert("c/z", pod("z", "c"))
    everything.replace({p.key: p for p in (pod("y", "b"),)})
    assert list(cache) == ["b/y"]


# --- the start-up checks read big clusters without keeping them ---------------------------


@given(
    pods=st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["db", "mq", "web"]), st.sampled_from(["x", "y", "z"])),
        max_size=30,
    ),
    selected=st.lists(st.sampled_from(["x", "y", "z"]), max_size=2, unique=True),
)
def test_two_pods_per_statefulset_tell_what_all_of_them_do(
    pods: list[tuple[str, str, str]], selected: list[str]
) -> None:
    seen = [
        PodSeen(ns, f"{sts}-{i}", owner=OwnerRef("StatefulSet", sts, "u"), labels=MappingProxyType({"tier": tier}))
        for i, (ns, sts, tier) in enumerate(pods)
    ]
    budgets = [Budget("a", f"pdb-{t}", parse_label_selector({"matchLabels": {"tier": t}})) for t in selected]
    keep = statefulset_sample(budgets)
    kept = [p for p in seen if keep(p)]
    assert unprotected_statefulsets(kept, budgets) == unprotected_statefulsets(seen, budgets)
    assert len(kept) <= 2 * len({(p.namespace, p.owner.name) for p in seen if p.owner})


class PagedPods:
    """`KubeClient.request` for a pod list served in pages of the requested size."""

    def __init__(self, count: int) -> None:
        self.items = [raw_pod(f"db-{i}", node=f"n{i % 7}") for i in range(count)]
        self.requests = 0

    async def request(self, method: str, path: str, *, query: Any = None, **_: Any) -> Any:
        self.requests += 1
        start, limit = int(query.get("continue", 0)), int(query["limit"])
        more = start + limit < len(self.items)
        meta = {"continue": str(start + limit)} if more else {}
        return {"metadata": meta, "items": self.items[start : start + limit]}


@pytest.mark.anyio
async def test_a_pod_read_keeps_only_what_it_is_asked_to() -> None:
    api = PagedPods(450)
    reads = ClusterReads(cast(KubeClient, api))
    kept = await reads.pods(keep=lambda pod: pod.node == "n3")
    assert len(kept) == len([i for i in range(450) if i % 7 == 3])
    assert api.requests == 5  # pages of 100
    assert len(await reads.pods()) == 450


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_asklepios_does_not_import_the_generated_kubernetes_client() -> None:
    loaded = _python(
        "import sys, asklepios.cli; "
        "print(sorted(m for m in sys.modules if m.startswith(('kubernetes_asyncio', 'jsonschema', 'sushy'))))"
    )
    modules = set(eval(loaded))  # noqa: S307 - our own repr of a list of names
    assert "kubernetes_asyncio.client.api_client" in modules
    assert "kubernetes_asyncio.config.kube_config" in modules
    assert not {m for m in modules if m.startswith("kubernetes_asyncio.client.models.")}
    assert not {m for m in modules if m.startswith("kubernetes_asyncio.client.api.")}
    assert not {m for m in modules if m.startswith(("kubernetes_asyncio.dynamic", "jsonschema", "sushy"))}
    assert len(modules) < 20


def test_the_rest_of_kubernetes_asyncio_still_imports_on_first_use() -> None:
    """Another user of kubernetes-asyncio in the process gets the whole library, later."""
    out = _python(
        "import asklepios.kube.client\n"
        "from asklepios.kube import k8s\n"
        "from kubernetes_asyncio.client import CoreV1Api, V1Pod, ApiClient\n"
        "import kubernetes_asyncio, kubernetes_asyncio.client.models as models\n"
        "assert ApiClient is k8s.ApiClient\n"
        "assert models.V1Pod is V1Pod\n"
        "print(CoreV1Api.__name__, kubernetes_asyncio.__version__, kubernetes_asyncio.watch.Watch.__name__)"
    )
    assert out.startswith("CoreV1Api 36.")
    assert out.endswith(" Watch")


@pytest.fixture
async def apiserver(tmp_path: Path) -> AsyncIterator[tuple[Path, list[str]]]:
    """A tiny apiserver over plain HTTP and the kubeconfig to reach it with a token."""
    seen: list[str] = []
    release = anyio.Event()  # ends the held watches at teardown

    async def get_pod(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        if request.match_info["name"] == "gone":
            return web.json_response({"kind": "Status", "message": 'pods "gone" not found'}, status=404)
        return web.json_response(raw_pod(request.match_info["name"]))

    async def watch(request: web.Request) -> web.StreamResponse:
        assert request.query["watch"] == "true"
        response = web.StreamResponse()
        await response.prepare(request)
        for name in ("db-0", "db-1"):
            await response.write(orjson.dumps({"type": "ADDED", "object": raw_pod(name)}) + b"\n")
        await response.write_eof()
        return response

    async def held_watch(request: web.Request) -> web.StreamResponse:
        """A watch that stays open and quiet, as the pod watch of a kicked-out node does."""
        response = web.StreamResponse()
        await response.prepare(request)
        seen.append("held")
        await release.wait()
        return response

    async def slow(request: web.Request) -> web.Response:
        """A request the apiserver is slow to answer (thousands queued in a mass outage)."""
        seen.append("slow")
        await release.wait()
        return web.json_response({})

    async def list_nodes(request: web.Request) -> web.Response:
        """250 nodes, paged as the apiserver pages them (`limit` and `continue`)."""
        start = int(request.query.get("continue") or 0)
        limit = int(request.query.get("limit") or 250)
        names = [f"n{i:03d}" for i in range(start, min(250, start + limit))]
        seen.append(f"nodes page of {len(names)}")
        meta = {"continue": str(start + limit)} if start + limit < 250 else {}
        items = [{"metadata": {"name": n, "uid": f"uid-{n}", "resourceVersion": "7"}} for n in names]
        return web.json_response({"kind": "NodeList", "metadata": meta, "items": items})

    app = web.Application()
    app.router.add_get("/api/v1/nodes", list_nodes)
    app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}", get_pod)
    app.router.add_get("/api/v1/pods", watch)
    app.router.add_get("/api/v1/held", held_watch)
    app.router.add_get("/api/v1/slow", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: u, user: {{token: secret-token}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
"""
    )
    try:
        yield kubeconfig, seen
    finally:
        release.set()
        await runner.cleanup()


@pytest.mark.anyio
async def test_the_narrow_client_loads_a_kubeconfig_and_talks_to_the_apiserver(
    apiserver: tuple[Path, list[str]],
) -> None:
    kubeconfig, seen = apiserver
    async with KubeClient.connect(str(kubeconfig)) as kube:
        pod_json = await kube.request("GET", "/api/v1/namespaces/openstack/pods/db-0")
        assert parse_pod(pod_json).key == "openstack/db-0"
        with pytest.raises(NotFound):
            await kube.request("GET", "/api/v1/namespaces/openstack/pods/gone")
        async with kube.stream("/api/v1/pods", {"watch": "true"}, read_timeout=5) as events:
            names = [event["object"]["metadata"]["name"] async for event in events]
    assert names == ["db-0", "db-1"]
    assert seen == ["Bearer secret-token"] * 2


@pytest.mark.anyio
async def test_requests_never_wait_behind_watches(apiserver: tuple[Path, list[str]]) -> None:
    """A mass outage: more open watches (one per kicked-out node) than a pool of 100 holds.

    The Lease renewal and the kickout PATCHes must still go out at once; in one shared
    pool they waited until a watch ended (found by bench/memory.py's 500-node burst)."""
    kubeconfig, seen = apiserver
    watches = 120

    async def hold(kube: KubeClient) -> None:
        async with kube.stream("/api/v1/held", {"watch": "true"}, read_timeout=60) as events:
            async for _ in events:
                pass  # pragma: no cover - the server never sends anything

    async with KubeClient.connect(str(kubeconfig)) as kube, anyio.create_task_group() as tg:
        for _ in range(watches):
            tg.start_soon(hold, kube)
        with anyio.fail_after(30):
            while seen.count("held") < watches:  # noqa: ASYNC110 - the server's handlers fill `seen`
                await anyio.sleep(0.05)
        pod_json = await kube.request("GET", "/api/v1/namespaces/openstack/pods/db-0", timeout=5)
        assert parse_pod(pod_json).key == "openstack/db-0"
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_the_lease_renewal_never_waits_behind_other_requests(apiserver: tuple[Path, list[str]]) -> None:
    """A rack goes dark: 3,000 NotReady nodes' Lease reads queue for the request pool of 100,
    and the leader's renewal waited behind them until the leader lost its Lease (bench
    mass-outage at 5,000 / 3,000: 10 renewals missed). The leader election has its own."""
    kubeconfig, seen = apiserver
    busy = 120

    async def slow(kube: KubeClient) -> None:
        with contextlib.suppress(ApiError):
            await kube.request("GET", "/api/v1/slow", timeout=60)

    async with KubeClient.connect(str(kubeconfig)) as kube, anyio.create_task_group() as tg:
        for _ in range(busy):
            tg.start_soon(slow, kube)
        with anyio.fail_after(30):
            while seen.count("slow") < 100:  # noqa: ASYNC110 - the server's handlers fill `seen`
                await anyio.sleep(0.05)
        pod_json = await kube.for_leader_election().request("GET", "/api/v1/namespaces/openstack/pods/db-0", timeout=5)
        assert parse_pod(pod_json).key == "openstack/db-0"
        assert seen.count("slow") == 100  # the request pool is full: the rest still wait for it
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_the_node_list_of_check_and_status_is_paged(apiserver: tuple[Path, list[str]]) -> None:
    """`asklepios check` at start-up listed 5,000 nodes in one response: ~90 MiB decoded at once
    (bench/memory.py's start-up peak). Pages of 100 keep it small and still see every node."""
    kubeconfig, seen = apiserver
    async with KubeClient.connect(str(kubeconfig)) as kube:
        views = await NodeApi(kube).list("")
    assert [v.name for v in views] == [f"n{i:03d}" for i in range(250)]
    assert [s for s in seen if s.startswith("nodes")] == ["nodes page of 100"] * 2 + ["nodes page of 50"]


def _refusing_port() -> int:
    """A loopback port that nothing listens on (bound, never listening: a connect is refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


@pytest.mark.anyio
async def test_the_proxy_variables_are_read_once_at_connect(
    apiserver: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp's `trust_env` read the proxy variables and ~/.netrc for every request, in an
    executor thread: an eighth of the leader's CPU in bench mass-outage (py-spy). Read once now:
    a variable set after connecting changes nothing."""
    kubeconfig, _ = apiserver
    async with KubeClient.connect(str(kubeconfig)) as kube:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{_refusing_port()}")
        pod_json = await kube.request("GET", "/api/v1/namespaces/openstack/pods/db-0", timeout=5)
    assert parse_pod(pod_json).key == "openstack/db-0"


@pytest.mark.anyio
async def test_a_proxy_the_environment_names_for_the_apiserver_is_used(
    apiserver: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As client-go does: HTTP(S)_PROXY is honoured, NO_PROXY exempts a host."""
    kubeconfig, _ = apiserver
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{_refusing_port()}")
    async with KubeClient.connect(str(kubeconfig)) as kube:
        with pytest.raises(ApiError, match=r"proxy|Connect"):
            await kube.request("GET", "/api/v1/namespaces/openstack/pods/db-0", timeout=5)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with KubeClient.connect(str(kubeconfig)) as kube:
        assert (await kube.request("GET", "/api/v1/namespaces/openstack/pods/db-0", timeout=5))["metadata"]


def test_env_proxy_follows_urllib() -> None:
    url = "https://10.96.0.1:443"
    assert env_proxy(url, {"HTTPS_PROXY": "http://p:3128"}) == "http://p:3128"
    assert env_proxy(url, {"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:1"}) == "http://lower:1"
    assert env_proxy(url, {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "10.96.0.1"}) is None
    assert env_proxy(url, {"HTTP_PROXY": "http://p:3128"}) is None  # not for https
    assert env_proxy(url, {}) is None
    no = {"HTTPS_PROXY": "http://p:3128"}
    assert env_proxy("https://API.example.com:6443", {**no, "no_proxy": ".example.com"}) is None
    assert env_proxy("https://[::1]:6443", {**no, "NO_PROXY": "::1"}) is None
    assert env_proxy("https://10.96.0.1:443", {**no, "NO_PROXY": "10.0.0.1, other.example"}) == "http://p:3128"


class _Chunked:
    """A response body arriving in the given chunks (as aiohttp's `content.iter_any()` gives them)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.content = self
        self._chunks = chunks

    async def iter_any(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


@given(st.lists(st.integers(0, 40), min_size=1, max_size=6), st.lists(st.integers(1, 400), max_size=20))
def test_watch_lines_decode_the_same_however_the_body_is_cut(sizes: list[int], cuts: list[int]) -> None:
    events = [{"type": "MODIFIED", "object": {"metadata": {"name": "n" * size}}} for size in sizes]
    body = b"".join(orjson.dumps(e) + b"\n" for e in events) + b"\n"  # and a blank line (keep-alive)
    bounds = sorted({min(c, len(body)) for c in cuts} | {0, len(body)})
    chunks = [body[a:b] for a, b in itertools.pairwise(bounds)]

    async def decode() -> list[Any]:
        return [e async for e in _events(cast(Any, _Chunked(chunks)), "/api/v1/nodes")]

    assert anyio.run(decode) == events


@pytest.mark.anyio
async def test_the_heap_is_frozen_once_the_first_lists_are_in() -> None:
    """Full collections scanned every long-lived start-up object: 120-170 ms pauses every ~9 s at
    5,000 nodes (bench mass-outage). Frozen after the sync, never before it (a half-built cache)."""

    class Syncing:
        polls = 0

        def not_ready(self) -> str | None:
            self.polls += 1
            return "not synced: nodes" if self.polls < 3 else None

    health = Syncing()
    gc.unfreeze()
    thresholds = gc.get_threshold()
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(_freeze_the_synced_heap, cast(Any, health))
                await anyio.sleep(0.5)
                assert gc.get_freeze_count() == 0  # still syncing
                assert gc.get_threshold() == thresholds
        assert health.polls == 3
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (*thresholds[:2], FULL_COLLECTION_EVERY)  # full collections rarer from now on
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
