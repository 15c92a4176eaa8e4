"""The one writer of Asklepios' records: coalesced, ordered per key, and quick for the kickout.

On the fake clock, against a records port whose requests take a second: a storm of
puts costs a handful of requests; a kickout's record (`urgent`) does not wait behind
a period mark in flight (bench lag at 5,000 nodes: that wait was most of the lag's
tail); and however puts interleave, a key is never in two requests at once, so the
last value put is the one stored.
"""

from __future__ import annotations

from typing import Any

import anyio
import attrs
import pytest
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from asklepios.engine.records import RecordBook, RecordWriter
from asklepios.kube.client import ApiError
from asklepios.kube.records import RecordData
from tests.unit.fakes import FakeGate, FakeRecords

pytestmark = [pytest.mark.anyio, pytest.mark.fake_clock]


@attrs.define(eq=False)
class SlowRecords(FakeRecords):
    """Each request takes `latency` seconds; no key may be in two requests at once."""

    latency: float = 1.0
    flying: set[str] = attrs.Factory(set)
    overlaps: list[str] = attrs.Factory(list)

    async def put(self, changes: Any, timeout: float) -> RecordData:
        self.overlaps += [key for key in changes if key in self.flying]
        self.flying |= set(changes)
        try:
            await anyio.sleep(self.latency)
            return await super().put(changes, timeout)
        finally:
            self.flying -= set(changes)


def writer(port: FakeRecords) -> RecordWriter:
    return RecordWriter(port, RecordBook(), FakeGate(), lambda: 10.0)


async def test_a_storm_of_puts_costs_a_handful_of_requests() -> None:
    port = SlowRecords()
    records = writer(port)
    async with anyio.create_task_group() as tg:
        for i in range(100):
            tg.start_soon(records.put, {f"node.n{i}": "mark"})
    assert port.data == {f"node.n{i}": "mark" for i in range(100)}
    assert len(port.writes) == 2  # the first put alone, then the 99 that came while it flew


async def test_a_kickout_record_does_not_wait_behind_a_mark_in_flight() -> None:
    port = SlowRecords()
    records = writer(port)
    stored: dict[str, float] = {}

    async def put(key: str, urgent: bool) -> None:
        await records.put({key: "x"}, urgent=urgent)
        stored[key] = anyio.current_time()

    async with anyio.create_task_group() as tg:
        start = anyio.current_time()
        tg.start_soon(put, "node.marked", False)
        await anyio.sleep(0.1)
        tg.start_soon(put, "node.kicked-out", True)
        await anyio.sleep(0.1)
        tg.start_soon(put, "node.marked-too", False)  # not urgent: waits for a lane
    assert stored["node.marked"] - start == pytest.approx(1.0)
    assert stored["node.kicked-out"] - start == pytest.approx(1.1)  # 2.0 behind the mark
    assert stored["node.marked-too"] - start == pytest.approx(2.1)  # one lane for marks: after both
    assert port.overlaps == []


async def test_a_failed_request_is_sent_again_by_its_waiters() -> None:
    port = SlowRecords()
    port.failures.append(ApiError(0, "apiserver restarting"))
    records = writer(port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(records.put, {"node.a": "1"})
        await anyio.sleep(0.1)
        tg.start_soon(records.put, {"node.b": "1"})
    assert port.data == {"node.a": "1", "node.b": "1"}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.booleans(), st.sampled_from([0.0, 0.3, 0.7])), max_size=12))
def test_a_key_is_never_in_two_requests_and_the_last_value_wins(puts: list[tuple[str, bool, float]]) -> None:
    port = SlowRecords()
    records = writer(port)

    last: dict[str, str] = {}  # in the order the puts ran (the scheduler may run a batch in any order)

    async def put(key: str, value: str, urgent: bool) -> None:
        last[f"node.{key}"] = value
        await records.put({f"node.{key}": value}, urgent=urgent)  # registered before its first await

    async def scenario() -> None:
        async with anyio.create_task_group() as tg:
            for i, (key, urgent, pause) in enumerate(puts):
                tg.start_soon(put, key, str(i), urgent)
                await anyio.sleep(pause)

    anyio.run(scenario, backend="trio", backend_options={"clock": trio.testing.MockClock(autojump_threshold=0)})
    assert port.overlaps == []
    assert port.data == last
    assert records.book.resource_version == (str(port.rv) if puts else "")  # the newest answer is loaded
