"""The reflector on a fake apiserver: a quiet watch is healthy, a 410 relists, errors back off."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import stamina

from asklepios.kube.client import ApiError, Gone
from asklepios.kube.reflector import Hooks, Reflector

pytestmark = pytest.mark.anyio


class QuietApiserver:
    """Lists nothing; every watch ends at once (its timeout), with nothing to say."""

    def __init__(self, failures: list[ApiError] | None = None) -> None:
        self.lists = self.watches = 0
        self.failures = failures or []

    async def request(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        await anyio.lowlevel.checkpoint()
        self.lists += 1
        return {"items": [], "metadata": {"resourceVersion": "7"}}

    @asynccontextmanager
    async def stream(self, path: str, query: Mapping[str, Any], read_timeout: float) -> AsyncIterator[Any]:
        await anyio.lowlevel.checkpoint()
        self.watches += 1
        if self.failures:
            raise self.failures.pop(0)

        async def nothing() -> AsyncIterator[dict[str, Any]]:
            return
            yield {}

        yield nothing()


class Store:
    def replace(self, items: dict[str, object]) -> None: ...
    def upsert(self, key: str, item: object) -> None: ...
    def delete(self, key: str) -> None: ...


async def run_until(reflector: Reflector[Any], apiserver: QuietApiserver, watches: int) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(reflector.run, Store())
        with anyio.fail_after(5):
            while apiserver.watches < watches:  # noqa: ASYNC110 - counts set by plain calls
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()


async def test_a_quiet_watch_that_ends_on_time_is_progress_not_staleness() -> None:
    """A watch the server ends at its timeout, with no event in it, proves the connection works."""
    apiserver, progress, restarts = QuietApiserver(), list[int](), list[str]()
    hooks = Hooks(progress=lambda: progress.append(1), restarted=restarts.append)
    await run_until(Reflector(apiserver, "/api/v1/nodes", dict, hooks=hooks), apiserver, 3)  # type: ignore[arg-type]
    assert apiserver.lists == 1  # list once, then watch again and again from its resourceVersion
    assert len(progress) >= 1 + 2 * 2  # the list, then each watch opened and ended
    assert set(restarts) == {"timeout"}


async def test_410_relists_and_errors_are_retried() -> None:
    stamina.set_testing(True, attempts=10)
    try:
        apiserver = QuietApiserver([ApiError(0, "reset"), Gone(410, "too old")])
        restarts: list[str] = []
        hooks = Hooks(restarted=restarts.append)
        await run_until(Reflector(apiserver, "/api/v1/nodes", dict, hooks=hooks), apiserver, 4)  # type: ignore[arg-type]
    finally:
        stamina.set_testing(False)
    assert restarts[:2] == ["error", "gone"]
    assert apiserver.lists == 2  # the 410 made it list again


async def test_an_object_that_cannot_be_parsed_is_skipped_not_fatal() -> None:
    class Listing(QuietApiserver):
        async def request(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
            await anyio.lowlevel.checkpoint()
            self.lists += 1
            good, bad = {"metadata": {"name": "good"}}, {"metadata": {"name": "bad"}, "broken": True}
            return {"items": [good, bad], "metadata": {"resourceVersion": "7"}}

    def parse(obj: dict[str, Any]) -> str:
        if obj.get("broken"):
            raise KeyError("status")
        return str(obj["metadata"]["name"])

    seen: dict[str, object] = {}

    class Keep(Store):
        def replace(self, items: dict[str, object]) -> None:
            seen.update(items)

    apiserver = Listing()
    async with anyio.create_task_group() as tg:
        tg.start_soon(Reflector(apiserver, "/api/v1/nodes", parse).run, Keep())  # type: ignore[arg-type]
        with anyio.fail_after(5):
            while apiserver.watches < 2:  # noqa: ASYNC110 - counts set by plain calls
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert seen == {"good": "good"}


class PagingApiserver(QuietApiserver):
    """Records each list's query; answers in two pages (a server without a watch cache)."""

    def __init__(self, failures: list[ApiError] | None = None) -> None:
        super().__init__(failures)
        self.queries: list[dict[str, Any]] = []

    async def request(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        await anyio.lowlevel.checkpoint()
        query = dict(kw["query"])
        self.queries.append(query)
        if "continue" in query:
            return {"items": [], "metadata": {"resourceVersion": "7"}}
        self.lists += 1
        return {"items": [], "metadata": {"resourceVersion": "7", "continue": "token"}}


async def test_a_cached_list_asks_the_watch_cache_first_and_etcd_after_a_410() -> None:
    """client-go's reflector: resourceVersion=0 first; a consistent read (none) after 410 Gone."""
    apiserver = PagingApiserver([Gone(410, "too old")])
    reflector = Reflector(apiserver, "/api/v1/pods", dict, field_selector="spec.nodeName=n1", cached_list=True)  # type: ignore[arg-type]
    await run_until(reflector, apiserver, 2)
    first = {"fieldSelector": "spec.nodeName=n1", "limit": 100}
    assert apiserver.queries == [
        {**first, "resourceVersion": "0"},
        {**first, "continue": "token"},  # a continue token carries the resourceVersion
        first,  # after the 410: consistent
        {**first, "continue": "token"},
    ]


async def test_the_big_lists_stay_paged_consistent_reads() -> None:
    apiserver = PagingApiserver()
    await run_until(Reflector(apiserver, "/api/v1/nodes", dict, label_selector="a=b"), apiserver, 1)  # type: ignore[arg-type]
    assert apiserver.queries == [
        {"labelSelector": "a=b", "limit": 100},
        {"labelSelector": "a=b", "limit": 100, "continue": "token"},
    ]


class BurstApiserver(QuietApiserver):
    """One watch that delivers `events` already received: no await between them (aiohttp's buffer)."""

    def __init__(self, events: int) -> None:
        super().__init__()
        self.events = events

    @asynccontextmanager
    async def stream(self, path: str, query: Mapping[str, Any], read_timeout: float) -> AsyncIterator[Any]:
        self.watches += 1
        count = self.events if self.watches == 1 else 0
        await anyio.sleep(0 if count else 1)  # later watches: quiet

        async def burst() -> AsyncIterator[dict[str, Any]]:
            for i in range(count):
                yield {"type": "ADDED", "object": {"metadata": {"name": f"n{i}", "resourceVersion": str(8 + i)}}}

        yield burst()


async def test_a_burst_of_received_events_lets_the_event_loop_run() -> None:
    """A rack going dark delivers thousands of node events at once; applied without a pause they
    held the Lease renewal and every deadline (bench mass-outage, storm 1)."""
    apiserver, applied, ticks = BurstApiserver(1000), list[int](), list[int]()

    class Counting(Store):
        def upsert(self, key: str, item: object) -> None:
            applied.append(len(ticks))  # how often the other task ran before this event

    async def other_task() -> None:
        while True:
            ticks.append(1)
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(other_task)
        tg.start_soon(Reflector(apiserver, "/api/v1/nodes", dict).run, Counting())  # type: ignore[arg-type]
        with anyio.fail_after(5):
            while len(applied) < 1000:  # noqa: ASYNC110 - filled by the store
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    gaps = [b - a for a, b in itertools.pairwise(applied)]
    assert sum(1 for g in gaps if g > 0) >= 1000 // 20 - 1  # the other task ran at least every 20 events
