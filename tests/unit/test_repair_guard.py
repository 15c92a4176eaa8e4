"""A repair that puts our taint back is a kickout again: it obeys the guard of the moment it writes.

Found by the 60-minute soak on 30e7fe4 (invariant 2): a leader SIGTERMed between the
kickout record and the node patch left a record whose taint the node did not show.
The next leader repaired it. A third node went NotReady 0.1 s after the repair
began, while the verdict gathered its evidence, and the taint went back with 3
nodes NotReady where the guard allows 2: the guard had been asked only when the
repair began. On the fake clock, a probe of a silent port takes its whole timeout,
and a node goes NotReady inside it.
"""

from __future__ import annotations

import anyio
import pytest

from asklepios.core.guard import MaxUnhealthy
from tests.unit.world import World, running, settings, until

pytestmark = [pytest.mark.anyio, pytest.mark.fake_clock]
PROBE_TIMEOUT = 2.0


@pytest.mark.parametrize("fencing", ["off", "redfish"])
async def test_a_node_going_notready_while_a_repair_gathers_its_evidence_holds_the_taint(fencing: str) -> None:
    w = World(settings(max_unhealthy=MaxUnhealthy(2, percent=False), fencing=fencing))
    w.add("a", "b", "c", "d", "e")
    for name in "abcde":
        w.credentials.data[f"{name}.url"] = f"https://127.0.0.1:8443/redfish/v1/Systems/{name}"
    async with running(w):
        w.power_cut("a")
        await until(lambda: w.has_taint("a"), 120, "kickout")
        w.power_cut("b")  # 2 NotReady: the guard still allows
        await anyio.sleep(5)
        w.probe.timeout = PROBE_TIMEOUT
        resets = len(w.bmc.log)
        w.cluster.edit("a", {"spec": {"taints": None, "unschedulable": None}})  # our kickout undone by someone
        await anyio.sleep(PROBE_TIMEOUT / 4)  # the repair's verdict is probing the silent port
        w.power_cut("c")  # 3 NotReady: the guard holds from now on
        await anyio.sleep(60)
        assert not w.has_taint("a"), "the taint went back with 3 NotReady, 2 allowed"
        assert w.bmc.log[resets:] == [], "a ForceOff for a repair the guard holds"
        w.back("c")  # 2 NotReady again: the repair may go on, through the verdict
        await until(lambda: w.has_taint("a"), 120, "the repair after the guard allows again")
