"""Watch resilience: an apiserver restart mid-countdown, and a relist after 410 Gone."""

from __future__ import annotations

import time
from typing import Any

import pytest

from asklepios_lab import ControlPlane, wait_for
from tests.cluster.checks import env, first_seen, has_oos, power_cut
from tests.cluster.runner import AsklepiosFactory


@pytest.mark.timeout(180)
def test_apiserver_restart_mid_countdown_kickout_still_on_time(
    apiserver_outage: ControlPlane, nodes: Any, asklepios: AsklepiosFactory
) -> None:
    cp = apiserver_outage
    name, *_ = nodes.watched("n", "m", "o")
    healer = asklepios(env(nodes.prefix, ASKLEPIOS_KICKOUT_SECONDS="15", ASKLEPIOS_MAX_UNHEALTHY="100%"))
    start = power_cut(cp, name, "False")
    wait_for(lambda: time.time() >= start + 2, 5, what="2 s into the countdown")
    cp.stop_apiserver()
    healer.wait_log(lambda r: r.get("msg") == "watch failed, retrying", 15, "the watch noticed")
    cp.start_apiserver()
    seen, _ = first_seen(cp, name, has_oos, 30, "kickout after the apiserver restart")
    assert start + 15 - 0.1 <= seen <= start + 15 + 1.5, (seen - start, healer.tail())
    assert healer.metric("asklepios_watch_restarts_total", 'cause="error",resource="nodes"') >= 1
    assert healer.metric("asklepios_kickouts_total") == 1


@pytest.mark.timeout(180)
def test_410_gone_relists_and_keeps_working(
    apiserver_outage: ControlPlane, nodes: Any, asklepios: AsklepiosFactory
) -> None:
    cp = apiserver_outage
    name, *_ = nodes.watched("n", "m", "o")
    healer = asklepios(env(nodes.prefix, ASKLEPIOS_KICKOUT_SECONDS="3", ASKLEPIOS_MAX_UNHEALTHY="100%"))
    cp.stop_apiserver()
    # move etcd past the watch's resourceVersion, then compact it away
    cp.etcd.bump(3)
    cp.compact_etcd()
    cp.start_apiserver()
    healer.wait_log(lambda r: "410 Gone" in str(r.get("msg")), 30, "relist after 410")
    assert healer.metric("asklepios_watch_restarts_total", 'cause="gone",resource="nodes"') >= 1
    healer.wait_log(
        lambda r: r.get("msg") == "listed" and len(healer.find(lambda x: x.get("msg") == "listed")) >= 2,
        30,
        "second list",
    )
    power_cut(cp, name)
    first_seen(cp, name, has_oos, 20, "kickout after the relist")
