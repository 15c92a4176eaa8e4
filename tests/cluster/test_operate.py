"""The operator stays in control (issue 24): pause and resume, flap damping and release, adopt.

The commands run as an operator would run them (`python -m asklepios pause ...` with
a kubeconfig); the controller runs as a process. Claims come from the apiserver: the
nodes' taints and cordons, Events, Asklepios' records ConfigMap.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asklepios_lab import ControlPlane, wait_for
from tests.cluster.checks import OOS, env, events, first_seen, has_oos, record_of
from tests.cluster.runner import AsklepiosFactory
from tests.cluster.test_check import run_asklepios

KICKOUT, KICKIN, RESYNC, LEASE = 3, 3, 2, 4  # seconds; the lab's node Lease lasts 4 s


@pytest.fixture
def operator(control_plane: ControlPlane) -> Iterator[Path]:
    """The admin's kubeconfig for the CLI; a pause left by a failed test is lifted (the records are shared)."""
    yield control_plane.kubeconfig
    run_asklepios("resume", control_plane.kubeconfig, {})


def cli(kubeconfig: Path, *args: str) -> tuple[int, str]:
    done = run_asklepios(args[0], kubeconfig, {}, args=args[1:])
    print(done.stdout, done.stderr, sep="\n")
    return done.returncode, done.stdout + done.stderr


def tainted_for(cp: ControlPlane, name: str, seconds: float, *, expected: bool) -> None:
    """A negative claim needs a window: the node polled every 50 ms for `seconds`."""
    until = time.time() + seconds
    while time.time() < until:
        assert has_oos(cp.node(name)) is expected, f"{name}: tainted is not {expected}"
        time.sleep(0.05)


@pytest.mark.timeout(120)
def test_pause_holds_a_due_kickout_and_resume_lets_it_go(
    control_plane: ControlPlane, nodes: Any, asklepios: AsklepiosFactory, operator: Path
) -> None:
    cp = control_plane
    victim = nodes.watched("n", "m", "o", control_plane=True)[0]
    healer = asklepios(env(nodes.prefix, ASKLEPIOS_KICKOUT_SECONDS=str(KICKOUT)))
    code, out = cli(operator, "pause", "--reason", "rack 3 power work")
    assert code == 0 and "paused at" in out
    wait_for(lambda: healer.metric("asklepios_paused") == 1, 10, what="asklepios_paused")
    cp.crash(victim)
    tainted_for(cp, victim, 5 + KICKOUT + LEASE + 2 * RESYNC, expected=False)  # grace, then a whole countdown and more
    held = [e["message"] for e in events(cp, "KickoutHeld", victim)]
    assert held and held[-1].startswith("paused: paused by ") and "rack 3 power work" in held[-1], held
    code, out = cli(operator, "resume")
    assert code == 0 and "resumed" in out
    resumed = time.time()
    seen, _ = first_seen(cp, victim, has_oos, 30, "kickout once resumed")
    assert seen - resumed <= LEASE + RESYNC + 2, seen - resumed  # the Lease watched from the hold's end


@pytest.mark.timeout(150)
def test_a_flapping_node_stays_kicked_out_until_released(
    control_plane: ControlPlane, nodes: Any, asklepios: AsklepiosFactory, operator: Path
) -> None:
    cp = control_plane
    victim = nodes.watched("n", "m", "o", control_plane=True)[1]
    settings = {"ASKLEPIOS_KICKOUT_SECONDS": str(KICKOUT), "ASKLEPIOS_KICKIN_SECONDS": str(KICKIN)}
    asklepios(env(nodes.prefix, ASKLEPIOS_FLAP_MAX_KICKOUTS="1", **settings))
    cp.crash(victim)
    first_seen(cp, victim, has_oos, 40, "first kickout")
    cp.restore(victim)
    first_seen(cp, victim, lambda n: not has_oos(n), 40, "first kickin")
    cp.crash(victim)
    first_seen(cp, victim, has_oos, 40, "second kickout: more than ASKLEPIOS_FLAP_MAX_KICKOUTS=1")
    [flapping] = wait_for(lambda: events(cp, "NodeFlapping", victim), 10, what="NodeFlapping")
    assert flapping["type"] == "Warning" and "asklepios release" in flapping["message"]
    record = record_of(cp, victim)
    assert record is not None and record.get("flapping") is True
    cp.restore(victim)
    deadline = time.time() + KICKIN + 3 * RESYNC + 5  # Ready, a kickin would have come by now
    while time.time() < deadline:
        node = cp.node(victim)
        assert has_oos(node) and node["spec"].get("unschedulable"), "a flapping node was kicked in"
        time.sleep(0.1)
    code, out = cli(operator, "release", victim, "--wait", "30")
    assert code == 0 and "ended" in out, out
    _, node = first_seen(cp, victim, lambda n: not has_oos(n), 5, "kicked in by the release")
    assert not node["spec"].get("unschedulable")
    # The node is undone first, then the record: wait for the record's own write.
    wait_for(lambda: not (record_of(cp, victim) or {}).get("flapping"), 10, what="the flapping mark cleared")


@pytest.mark.timeout(120)
def test_adopt_takes_over_a_kickout_of_the_go_asklepios(
    control_plane: ControlPlane, nodes: Any, asklepios: AsklepiosFactory, operator: Path
) -> None:
    cp = control_plane
    names = nodes.watched("n", "m", "o", control_plane=True)
    left, half = names[0], names[2]
    oos = {"key": OOS, "value": "nodeshutdown", "effect": "NoExecute"}
    for name in (left, half):  # what the Go tool left: cordon and taint, no record of ours
        taints = [*(cp.node(name)["spec"].get("taints") or []), oos]
        cp.api.patch(f"/api/v1/nodes/{name}", {"spec": {"unschedulable": True, "taints": taints}})
    cp.api.patch(f"/api/v1/nodes/{half}", {"spec": {"unschedulable": None}})  # only tainted: not adoptable
    asklepios(env(nodes.prefix, ASKLEPIOS_KICKIN_SECONDS=str(KICKIN)))
    tainted_for(cp, left, KICKIN + 2 * RESYNC + 1, expected=True)  # not ours: never kicked in on its own
    code, out = cli(operator, "adopt", half)
    assert code == 1 and "not cordoned" in out, out
    assert has_oos(cp.node(half)) and record_of(cp, half) is None  # refused: nothing written
    code, out = cli(operator, "adopt", left)
    assert code == 0 and "adopted" in out, out
    adopted = time.time()
    seen, node = first_seen(cp, left, lambda n: not has_oos(n), 30, "kickin of the adopted node")
    assert seen - adopted <= KICKIN + RESYNC + 2, seen - adopted
    assert not node["spec"].get("unschedulable")
    wait_for(lambda: events(cp, "NodeKickedIn", left), 10, what="NodeKickedIn")
