"""The timer wheel: one deadline per node, rescheduling, cancelling, firing at the deadline."""

from __future__ import annotations

import time

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from asklepios.engine.wheel import TimerWheel


def test_one_pending_deadline_per_key() -> None:
    wheel = TimerWheel()
    wheel.schedule("a", 10)
    wheel.schedule("a", 30)  # replaces, does not add
    wheel.schedule("b", 20)
    assert len(wheel) == 2
    assert wheel.pop_due(25) == ["b"]
    assert wheel.pop_due(29) == []
    assert wheel.pop_due(30) == ["a"]
    assert len(wheel) == 0


def test_cancel_and_earlier_reschedule() -> None:
    wheel = TimerWheel()
    wheel.schedule("a", 10)
    wheel.cancel("a")
    assert wheel.pop_due(100) == []
    wheel.schedule("b", 50)
    wheel.schedule("b", 5)
    assert wheel.next_deadline() == 5
    assert wheel.pop_due(6) == ["b"]


@given(ops=st.lists(st.tuples(st.sampled_from("abcde"), st.one_of(st.none(), st.integers(0, 100))), max_size=60))
def test_matches_a_plain_dict_model(ops: list[tuple[str, int | None]]) -> None:
    wheel, model = TimerWheel(), dict[str, int]()
    for key, when in ops:
        if when is None:
            wheel.cancel(key)
            model.pop(key, None)
        else:
            wheel.schedule(key, when)
            model[key] = when
    fired = wheel.pop_due(50)
    assert sorted(fired) == sorted(k for k, w in model.items() if w <= 50)
    assert [model[k] for k in fired] == sorted(model[k] for k in fired)  # earliest first
    assert sorted(wheel.pop_due(100)) == sorted(k for k, w in model.items() if w > 50)


@pytest.mark.anyio
async def test_fires_at_the_deadline_not_before() -> None:
    wheel = TimerWheel()
    send, receive = anyio.create_memory_object_stream[tuple[str, float]](10)
    async with anyio.create_task_group() as tg:
        tg.start_soon(wheel.run, lambda key: send.send_nowait((key, time.time())))
        start = time.time()
        wheel.schedule("late", start + 0.3)
        wheel.schedule("soon", start + 0.1)  # earlier than the sleeper's current target
        wheel.schedule("gone", start + 0.2)
        wheel.cancel("gone")
        with anyio.fail_after(5):
            first = await receive.receive()
            second = await receive.receive()
        tg.cancel_scope.cancel()
    assert first[0] == "soon" and first[1] >= start + 0.1
    assert second[0] == "late" and second[1] >= start + 0.3
    send.close()
    receive.close()
