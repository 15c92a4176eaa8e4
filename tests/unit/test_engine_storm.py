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
