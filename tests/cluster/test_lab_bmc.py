"""The lab's Redfish BMC (sushy-emulator): real TLS and basic auth, power wired to the nodes.

Checked through the ``sushy`` Redfish client (verifying the lab CA) and from the
emulator's own notifications (:meth:`Bmc.timeline`), never from a controller's logs:
ForceOff kills the node (kwok gone, kubelet port silent) before anyone can read PowerState
Off, On brings it back.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sushy  # type: ignore[import-untyped,unused-ignore]

from asklepios_lab import ControlPlane, wait_for
from asklepios_lab.bmc import Bmc

from .conftest import NodeFactory
from .test_lab_network import _renew_time, _wait_renewed

TRANSITION = 15.0  # the fake driver applies a power change up to 11 s after the request


@pytest.fixture
def direct(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy for the clients of these tests: the BMC is on 127.0.0.1."""
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "*")


@pytest.fixture
def bmc(control_plane: ControlPlane, direct: None) -> Iterator[Bmc]:
    bmc = control_plane.bmc()
    yield bmc
    if not bmc.proc.running():
        bmc.start()


def _redfish(bmc: Bmc, password: str | None = None) -> Any:
    auth = sushy.auth.BasicAuth(bmc.username, password or bmc.password)
    return sushy.Sushy(bmc.url, auth=auth, verify=str(bmc.ca_cert), server_side_retries=0)


def _call(bmc: Bmc, method: str, url: str, auth: tuple[str, str], body: object = None) -> tuple[int, bytes]:
    """One Redfish request with basic auth, TLS verified against the lab CA."""
    token = base64.b64encode(":".join(auth).encode()).decode()
    headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
    context = ssl.create_default_context(cafile=str(bmc.ca_cert))
    conn = http.client.HTTPSConnection("127.0.0.1", bmc.port, context=context, timeout=30)
    try:
        conn.request(method, url.removeprefix(bmc.url), None if body is None else json.dumps(body), headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _wait_power(system: Any, state: str) -> float:
    """Poll PowerState through Redfish until ``state``; returns when it was first seen."""

    def seen() -> float:
        system.refresh()
        return time.time() if system.power_state == state else 0.0

    return wait_for(seen, TRANSITION, interval=0.2, what=f"PowerState {state}")


@pytest.mark.timeout(120)
def test_force_off_crashes_the_node_and_on_restores_it(
    control_plane: ControlPlane, nodes: NodeFactory, bmc: Bmc
) -> None:
    cp = control_plane
    node = nodes.add()
    url = bmc.attach(node)
    assert url.startswith("https://127.0.0.1:")
    assert bmc.attach(node) == url  # one system per node, for good
    system = _redfish(bmc).get_system(url.removeprefix(bmc.url))
    assert system.power_state == sushy.POWER_STATE_ON

    requested = time.time()
    system.reset_system(sushy.RESET_FORCE_OFF)
    seen_off = _wait_power(system, sushy.POWER_STATE_OFF)
    # The crash happened inside the notification, before PowerState Off could be read:
    assert cp.port_state(node) == "silent"
    assert f"kwok-{node}" not in cp.pids()
    frozen = _renew_time(cp, node)
    cp.wait_ready(node, "Unknown", timeout=cp.grace_period + 15)
    assert _renew_time(cp, node) == frozen

    reset, power = bmc.timeline(node)
    assert (reset.kind, reset.value) == ("reset", "Off")
    assert (power.kind, power.value) == ("power", "Off")
    assert requested <= reset.time < power.time <= seen_off

    system.reset_system(sushy.RESET_ON)
    seen_on = _wait_power(system, sushy.POWER_STATE_ON)
    assert cp.answers(node)
    cp.wait_ready(node, "True", timeout=30)
    _wait_renewed(cp, node)
    assert [(r.kind, r.value) for r in bmc.timeline(node)[2:]] == [("reset", "On"), ("power", "On")]
    assert bmc.timeline(node)[-1].time <= seen_on
    assert bmc.power_state(node) == "On"


def test_wrong_password_gets_401(nodes: NodeFactory, bmc: Bmc) -> None:
    node = nodes.add()
    url = bmc.attach(node)
    with pytest.raises(sushy.exceptions.AccessError) as exc:
        _redfish(bmc, "wrong").get_system(url.removeprefix(bmc.url))
    assert exc.value.status_code == 401

    old = (bmc.username, bmc.password)
    bmc.set_credentials("ops", "n3w-pass")
    try:
        assert _call(bmc, "GET", url, old)[0] == 401
        assert _call(bmc, "GET", url, ("ops", "n3w-pass"))[0] == 200
    finally:
        bmc.set_credentials(*old)
    assert bmc.power_state(node) == "On"


def test_stopped_bmc_is_unreachable_then_back_with_its_systems(nodes: NodeFactory, bmc: Bmc) -> None:
    node = nodes.add()
    url = bmc.attach(node)
    bmc.stop()
    with pytest.raises(ConnectionRefusedError):
        _call(bmc, "GET", url, (bmc.username, bmc.password))
    bmc.start()
    assert bmc.attach(node) == url
    assert bmc.power_state(node) == "On"


def test_emulator_cannot_reach_past_loopback(nodes: NodeFactory, bmc: Bmc) -> None:
    """A Redfish call that makes the emulator fetch a URL fails before any packet leaves."""
    url = bmc.attach(nodes.add())
    insert = f"{url}/VirtualMedia/Cd/Actions/VirtualMedia.InsertMedia"
    for image in ("http://192.0.2.1/boot.iso", "http://example.com/boot.iso"):
        status, body = _call(bmc, "POST", insert, (bmc.username, bmc.password), {"Image": image})
        assert status == 500
        assert b"lab BMC: nothing beyond 127.0.0.0/8 and localhost" in body, body


def test_used_up_pool_restarts_the_emulator_keeping_every_system(control_plane: ControlPlane, tmp_path: Path) -> None:
    events: list[tuple[str, str]] = []
    bmc = Bmc(
        tmp_path / "bmc", control_plane.pki, tmp_path / "logs", pool_size=2,
        power_off=lambda n: events.append(("off", n)), power_on=lambda n: events.append(("on", n)),
    )  # fmt: skip
    bmc.start()
    try:
        urls = [bmc.attach(f"n{i}") for i in range(5)]  # two restarts
        assert len(set(urls)) == 5
        assert all(bmc.power_state(f"n{i}") == "On" for i in range(5))
        first_pid = bmc.proc.pid
        assert bmc.attach("n0") == urls[0]
        assert bmc.proc.pid == first_pid  # no restart for a node that has its system
    finally:
        bmc.close()
    assert events == []
