"""One node of a bulk group powered off and on alone, while its kwok keeps the others alive.

The benchmarks stage deaths of single nodes among thousands that share one kwok
(``--manage-nodes-with-label-selector``). Such a death must be a real one for
Asklepios' evidence: its Lease silent (here: gone), its kubelet port answering nothing
(a connect times out), and node-lifecycle noticing it; while every other node of the group stays alive. And
``restore`` must bring it back the way a rebooted kubelet does.
"""

from __future__ import annotations

import time

import pytest

from asklepios_lab import ControlPlane, ready_condition, wait_for
from asklepios_lab.kwok import GROUP_LABEL, POWERED_OFF_LABEL

from .conftest import unique_id

LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"


def _renew_times(cp: ControlPlane, names: list[str]) -> dict[str, str | None]:
    """renewTime of each node's Lease, None where it has no Lease."""
    out: dict[str, str | None] = {}
    for name in names:
        lease = cp.api.get_or_none(f"{LEASES}/{name}")
        out[name] = None if lease is None else str(lease["spec"]["renewTime"])
    return out


@pytest.mark.timeout(90)
def test_one_bulk_node_crashes_and_restores_alone(control_plane: ControlPlane, request: pytest.FixtureRequest) -> None:
    cp = control_plane
    prefix = unique_id(request)
    names = [f"{prefix}-{i}" for i in range(3)]
    group = cp.add_nodes_bulk(names, {"lab-test": prefix}, listeners=True)
    try:
        victim, others = names[0], names[1:]
        before = _renew_times(cp, names)
        assert all(before.values())
        assert all(cp.answers(n) for n in names)

        crashed_at = time.time()
        cp.crash(victim)
        assert cp.powered_off(victim)
        assert cp.api.get_or_none(f"{LEASES}/{victim}") is None
        assert cp.port_state(victim) == "silent"
        assert all(cp.answers(n) for n in others)
        labels = cp.node(victim)["metadata"]["labels"]
        assert (labels.get(GROUP_LABEL), labels.get(POWERED_OFF_LABEL)) == (None, group)

        # Observation window (a fixed duration is the point): the Lease must stay gone
        # over several renewal periods of the others (lease 4 s: renewed every second).
        first = _renew_times(cp, others)
        deadline = time.monotonic() + 4 * cp.lease_seconds / 4 + 1
        while time.monotonic() < deadline:
            assert cp.api.get_or_none(f"{LEASES}/{victim}") is None
            time.sleep(0.25)
        later = _renew_times(cp, others)
        assert all(later[n] != first[n] for n in others), (first, later)

        # node-lifecycle notices the silent kubelet as after any power cut; the others stay Ready
        unknown = cp.wait_ready(victim, "Unknown", timeout=cp.grace_period + 15)
        assert (ready_condition(unknown) or {})["reason"] == "NodeStatusUnknown"
        assert all(cp.ready_status(n) == "True" for n in others)

        cp.restore(victim)  # waits for Ready=True
        assert not cp.powered_off(victim)
        restored = cp.node(victim)
        ready = ready_condition(restored) or {}
        assert ready["status"] == "True"
        assert ready["lastTransitionTime"] >= time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(crashed_at)))
        assert restored["metadata"]["labels"].get(GROUP_LABEL) == group
        assert cp.answers(victim)
        wait_for(lambda: cp.api.get_or_none(f"{LEASES}/{victim}"), 10, what=f"Lease of {victim} back")
        seen = _renew_times(cp, [victim])[victim]
        wait_for(lambda: _renew_times(cp, [victim])[victim] != seen, 10, what=f"Lease of {victim} renewed")

        # the benchmarks' staging: a power cut, then Ready=False set at a precise moment;
        # restore hands the condition back to kwok, which posts Ready=True again
        cp.crash(victim)
        cp.set_ready(victim, "False")
        assert cp.api.get_or_none(f"{LEASES}/{victim}") is None
        assert cp.ready_status(victim) == "False"
        cp.restore(victim)
        assert cp.ready_status(victim) == "True"
        assert cp.answers(victim)

        # its kubelet alone stops (the machine runs): refused; the group's power cut keeps it so,
        # and a restore of the group leaves it out until its own restore
        cp.stop_kubelet(victim)
        assert cp.powered_off(victim)
        assert cp.api.get_or_none(f"{LEASES}/{victim}") is None
        assert cp.port_state(victim) == "refused"
        cp.crash(group)
        assert [cp.port_state(n) for n in names] == ["refused", "silent", "silent"]
        cp.restore(group)
        assert [cp.port_state(n) for n in names] == ["refused", "accepted", "accepted"]
        cp.restore(victim)
        assert cp.port_state(victim) == "accepted"
    finally:
        cp.remove_group(group)
    assert not cp.api.get("/api/v1/nodes", query={"labelSelector": f"lab-test={prefix}"})["items"]
