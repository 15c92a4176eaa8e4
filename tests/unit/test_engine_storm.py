"""Issue 22.1 on the fake clock: a rack going dark costs work proportional to what changed.

The guard's NotReady count moves with every node that goes down; the held nodes are
re-judged only when the guard's decision flips (held <-> allowed), never on every
count change. Counted in judgements (`Healer.judgements`), not in seconds.
"""

from __future__ import annotations

import anyio
import pytest
import trio.testing

from asklepios.core.guard import MaxUnhealthy
from tests.unit.world import World, running, settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, object]]:
    return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})


async def test_a_thousand_of_four_thousand_going_unknown_costs_linear_work() -> None:
    w = World(settings(max_unhealthy=MaxUnhealthy(50, percent=True)))
    names = [f"n{i:04d}" for i in range(4000)]
    w.add(*names)
    async with running(w):
        await anyio.sleep(1)
        before = w.healer.judgements
        for name in names[:1000]:
            w.cluster.set_ready(name, "Unknown")
        await anyio.sleep(1)  # the first looks at the Leases happen; no deadline is reached
        work = w.healer.judgements - before
        assert 1000 <= work <= 10 * 1000, work  # quadratic would be ~500,000


async def test_the_guard_flipping_rejudges_the_held_nodes_once() -> None:
    w = World(settings(max_unhealthy=MaxUnhealthy(2, percent=False)))
    w.add(*(f"n{i}" for i in range(10)))
    async with running(w):
        for i in range(4):
            w.power_cut(f"n{i}")  # 4 > 2: held
        await anyio.sleep(70)
        assert not any(w.has_taint(f"n{i}") for i in range(4))
        for i in range(2):
            w.back(f"n{i}")  # 2 left: the guard allows again
        await anyio.sleep(5)
        assert w.has_taint("n2") and w.has_taint("n3")


async def test_a_guard_flip_is_judged_in_chunks_not_inside_the_watch_event() -> None:
    """bench mass-outage, 3,000 of 5,000 down: the guard's flip re-judged every held node inside
    the watch handler that saw it, and the leader's event loop stalled for seconds (lag p99 0.25 s,
    max up to 5 s). The handler judges the node that changed; the others follow in chunks."""
    w = World(settings(max_unhealthy=MaxUnhealthy(50, percent=True)))
    names = [f"n{i:04d}" for i in range(1000)]
    w.add(*names)
    async with running(w):
        for name in names[:500]:
            w.cluster.set_ready(name, "Unknown")  # 500 of 1000: not more than 50 %
        await anyio.sleep(1)
        before = w.healer.judgements
        w.cluster.set_ready(names[500], "Unknown")  # 501: the guard flips to held
        assert w.healer.judgements - before <= 5, w.healer.judgements - before
        await anyio.sleep(1)
        assert w.healer.judgements - before >= 500  # every held node judged again, soon after
        await anyio.sleep(70)  # past the deadlines: all held, none kicked out
        assert all("KickoutHeld" in w.events.reasons(n) for n in names[:501])
        assert not any(w.has_taint(n) for n in names)
