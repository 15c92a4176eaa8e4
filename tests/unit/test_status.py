"""`asklepios status` on the fake clock: BMCs asked in parallel with a bound and a timeout
each, the fencing Secret read once, and the guard counted by the controller's NodeBook."""

from __future__ import annotations

from datetime import UTC, datetime

import anyio
import attrs
import pytest

from asklepios.core.fencing import FencingError, NoBmcError
from asklepios.core.guard import MaxUnhealthy
from asklepios.core.node import NodeView, ReadyStatus
from asklepios.core.records import KickoutRecord, NodeRecord
from asklepios.engine.status import (
    BMC_CONCURRENCY,
    BMC_TIMEOUT,
    SecretOnce,
    book_of,
    describe_record,
    guard_of,
    powers_of,
)
from tests.unit.fakes import FakeCredentials
from tests.unit.world import settings

pytestmark = [pytest.mark.anyio, pytest.mark.fake_clock]


@attrs.define(eq=False)
class SlowBmcs:
    """Each BMC answers after `seconds`; those in `silent` never do. Counts what runs at once."""

    seconds: float = 5.0
    silent: frozenset[str] = frozenset()
    running: int = 0
    most: int = 0
    asked: list[str] = attrs.Factory(list)

    async def power_state(self, view: NodeView) -> str:
        if not view.name.startswith("n"):
            raise NoBmcError(f"Secret kube-system/asklepios-bmc has no key {view.name}.url")
        self.asked.append(view.name)
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await anyio.sleep(3600 if view.name in self.silent else self.seconds)
        finally:
            self.running -= 1
        return "On"


def fenced(count: int) -> list[NodeView]:
    return [NodeView(name=f"n{i:02}") for i in range(count)]  # each with a <node>.url (SlowBmcs)


async def test_bmcs_are_asked_in_parallel_ten_at_a_time() -> None:
    bmcs = SlowBmcs()
    views = [*fenced(30), NodeView(name="x-no-bmc")]
    started = anyio.current_time()
    powers = await powers_of(bmcs, views)
    took = anyio.current_time() - started
    assert powers == {**{v.name: "On" for v in views[:30]}, "x-no-bmc": ""}  # no BMC: nothing to show
    assert bmcs.most == BMC_CONCURRENCY == 10
    assert took == pytest.approx(3 * 5.0)  # three rounds of ten, not thirty answers one after another


async def test_a_silent_bmc_costs_its_own_timeout_only() -> None:
    bmcs = SlowBmcs(silent=frozenset({"n03", "n07"}))
    started = anyio.current_time()
    powers = await powers_of(bmcs, fenced(BMC_CONCURRENCY))  # all asked at once
    assert anyio.current_time() - started == pytest.approx(BMC_TIMEOUT)
    assert powers["n03"] == powers["n07"] == "unknown (the BMC did not answer)"
    assert sum(1 for p in powers.values() if p == "On") == 8


@attrs.define(eq=False)
class CountingCredentials(FakeCredentials):
    """FakeCredentials counts its reads; this one is slow, and may fail."""

    fail: bool = False

    async def secret(self) -> dict[str, str]:
        await anyio.sleep(0.5)
        if self.fail:
            self.reads += 1
            raise FencingError("Secret kube-system/asklepios-fencing not found (ASKLEPIOS_FENCING_SECRET)")
        return await super().secret()


async def test_the_secret_is_read_once_for_all_bmcs() -> None:
    source = CountingCredentials()
    once = SecretOnce(source)
    results: list[dict[str, str]] = []

    async def read() -> None:
        results.append(await once.secret())

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(read)
    assert source.reads == once.reads == 1 and len(results) == 20
    assert all(r == {"username": "admin", "password": "secret"} for r in results)


async def test_a_secret_that_cannot_be_read_fails_every_bmc_after_one_read() -> None:
    source = CountingCredentials(fail=True)
    once = SecretOnce(source)
    for _ in range(5):
        with pytest.raises(FencingError, match="not found"):
            await once.secret()
    assert source.reads == 1


def test_the_guard_is_counted_as_the_controllers_nodebook_counts() -> None:
    down = ReadyStatus.UNKNOWN
    kicked = KickoutRecord(datetime(2026, 1, 1, tzinfo=UTC), True, True)
    selected = [
        NodeView(name="a", ready=down),
        NodeView(name="b", ready=down),
        NodeView(name="c"),
        NodeView(name="d"),
        NodeView(name="e", labels={"asklepios.io/exclude": "true"}, ready=ReadyStatus.UNKNOWN),  # not counted
    ]
    left = NodeView(
        name="gone", ready=ReadyStatus.UNKNOWN, record=NodeRecord(kickout=kicked)
    )  # kicked out, left the selector
    cordoned = [left, NodeView(name="x", ready=ReadyStatus.UNKNOWN)]  # x: cordoned by someone else
    book = book_of(selected, cordoned)
    assert sorted(book.views) == ["a", "b", "c", "d", "e", "gone"]  # x is not followed
    allow_two = settings(max_unhealthy=MaxUnhealthy(2, False))
    assert guard_of(allow_two, book) is None  # 2 of 4 counted: e is excluded, gone is not selected
    allow_one = settings(max_unhealthy=MaxUnhealthy(1, False))
    assert guard_of(allow_one, book) == (
        "2 of 4 watched nodes are NotReady (ASKLEPIOS_MAX_UNHEALTHY=1 allows 1; excluded nodes are not counted)"
    )


def test_status_node_says_what_a_kickout_changed_and_why() -> None:
    """`asklepios status NODE`: the record in words, the evidence included (issue 24.6)."""
    at = datetime(2026, 11, 27, 3, 0, 5, tzinfo=UTC)
    kickout = KickoutRecord(
        at,
        cordoned=True,
        tainted=True,
        fenced=True,
        since=datetime(2026, 11, 27, 3, 0, tzinfo=UTC),
        evidence=(
            "node Lease: renewTime 2026-11-27T02:59:51Z, unchanged since 03:00:00Z",
            "probe 127.0.10.2:10250: timeout",
        ),
    )
    lines = describe_record(NodeView(name="control2", record=NodeRecord(kickout=kickout, kickouts=(at,))))
    text = "\n".join(lines)
    assert "kicked out at 2026-11-27T03:00:05Z: cordoned and tainted" in text
    assert "NotReady since 2026-11-27T03:00:00Z" in text and "powered off by Asklepios" in text
    assert "evidence: probe 127.0.10.2:10250: timeout" in text
    assert describe_record(NodeView(name="n1"))[0].startswith("n1: no record")
