"""Fencing's inventory and same-machine rules (pure, with hypothesis) and the Fencer on a fake clock.

The BMC comes only from the Secret's `<node>.url`; before a ForceOff its System UUID
must name the node's machine (equal, or SMBIOS byte-swapped); a BMC already Off is
reported as found off, with no ForceOff sent. Every claim is checked from what the
fake BMC was asked (its request log), not from the Fencer's own words.
"""

from __future__ import annotations

import uuid as uuidlib

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from asklepios.core.evidence import HoldReason
from asklepios.core.fencing import (
    FencingError,
    NoBmcError,
    bmc_target,
    known_uuid,
    mismatch,
    same_machine,
    smbios_swapped,
)
from asklepios.core.node import NodeView
from asklepios.engine.fencing import Fencer
from asklepios.kube.nodes import parse_node
from tests.unit.fakes import FakeBmc, FakeCredentials, LoopClock
from tests.unit.world import World, running, settings, until

SWAPPED = ("00112233-4455-6677-8899-aabbccddeeff", "33221100-5544-7766-8899-aabbccddeeff")
URL = "https://127.0.0.1:8443/redfish/v1/Systems/"
uuids = st.uuids().map(str)

pytestmark = pytest.mark.fake_clock


# --- pure: the inventory -------------------------------------------------------------------


def test_the_url_comes_from_the_secret_with_per_node_credentials() -> None:
    secret = {"a.url": URL + "1", "username": "u", "password": "p", "a.password": "pa", "ca.crt": "PEM"}
    target = bmc_target("a", secret, insecure=False)
    assert (target.system_url, target.username, target.password, target.ca_pem) == (URL + "1", "u", "pa", "PEM")
    assert (target.base_url, target.system_path) == ("https://127.0.0.1:8443", "/redfish/v1/Systems/1")
    with pytest.raises(NoBmcError, match=r"^Secret ns/s has no key b\.url \(the node's Redfish System URL"):
        bmc_target("b", secret, insecure=False, where="Secret ns/s")
    for bad in (
        "http://bmc/redfish/v1/Systems/1",
        "https://bmc/redfish/v1/Managers/1",
        "https:///redfish/v1/Systems/1",
    ):
        with pytest.raises(FencingError, match=r"a\.url='.*' is not https://<bmc>/redfish/v1/Systems/<id>") as exc:
            bmc_target("a", {**secret, "a.url": bad}, insecure=False)
        assert not isinstance(exc.value, NoBmcError)
    with pytest.raises(FencingError, match=r"has neither a\.username/a\.password nor username/password"):
        bmc_target("a", {"a.url": URL + "1"}, insecure=False)


# --- pure: the same machine ----------------------------------------------------------------


def test_the_smbios_example() -> None:
    assert smbios_swapped(SWAPPED[0]) == SWAPPED[1]
    assert same_machine(*SWAPPED) and same_machine(SWAPPED[1].upper(), SWAPPED[0])
    assert not same_machine(SWAPPED[0], "00112233-4455-6677-8899-aabbccddeef0")
    assert same_machine("", SWAPPED[0]) and same_machine(SWAPPED[0], "")  # unknown: nothing to compare
    assert not known_uuid("00000000-0000-0000-0000-000000000000") and not known_uuid(
        "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"
    )


@given(uuids)
def test_swapping_is_an_involution_and_the_same_machine(u: str) -> None:
    assert smbios_swapped(smbios_swapped(u)) == u
    assert same_machine(u, u) and same_machine(u.upper(), u)
    assert same_machine(u, smbios_swapped(u)) and same_machine(smbios_swapped(u).upper(), u)


@given(uuids, uuids, st.booleans(), st.booleans())
def test_different_machines_differ_in_any_form(a: str, b: str, swap: bool, upper: bool) -> None:
    if b in (a, smbios_swapped(a)) or not known_uuid(a) or not known_uuid(b):
        return
    other = smbios_swapped(b) if swap else b
    other = other.upper() if upper else other
    assert not same_machine(a, other) and not same_machine(other, a)
    assert mismatch(a, "n", other, URL + "x").startswith(f"the BMC at {URL}x reports System UUID {a}")


@given(st.text(max_size=60), st.text(max_size=60))
def test_any_text_is_symmetric_and_never_raises(a: str, b: str) -> None:
    assert same_machine(a, b) == same_machine(b, a)
    assert same_machine(a, a)


# --- the Fencer on a fake clock ----------------------------------------------------------------


def fencer(**inventory: str) -> tuple[Fencer, FakeBmc, FakeCredentials]:
    clock = LoopClock()
    bmc, credentials = FakeBmc(clock), FakeCredentials()
    credentials.data.update({f"{node}.url": url for node, url in inventory.items()})
    return Fencer(bmc, credentials, clock, timeout=60.0), bmc, credentials


def sent(bmc: FakeBmc) -> list[str]:
    return [what for _, _, what in bmc.log if what in ("ForceOff", "On")]


@pytest.mark.anyio
async def test_no_url_is_no_bmc_and_nothing_is_asked() -> None:
    f, bmc, credentials = fencer()
    outcome = await f.power_off(NodeView("b", system_uuid=SWAPPED[0]))
    assert (outcome.off, outcome.reason) == (False, HoldReason.NO_BMC)
    assert outcome.error.startswith("Secret kube-system/asklepios-bmc has no key b.url")
    assert bmc.log == [] and credentials.reads == 1


@pytest.mark.anyio
async def test_a_bmc_of_another_machine_gets_no_force_off() -> None:
    f, bmc, _credentials = fencer(b=URL + "a")
    bmc.uuids[URL + "a"] = str(uuidlib.uuid4())
    outcome = await f.power_off(NodeView("b", system_uuid=SWAPPED[0]))
    assert (outcome.off, outcome.reason) == (False, HoldReason.BMC_MISMATCH)
    assert f"but b reports systemUUID {SWAPPED[0]}: b.url in the fencing Secret names another machine" in outcome.error
    assert sent(bmc) == [] and bmc.power.get(URL + "a", "On") == "On"
    with pytest.raises(FencingError, match="names another machine"):
        await f.power_on(NodeView("b", system_uuid=SWAPPED[0]))
    assert sent(bmc) == []


@pytest.mark.anyio
async def test_a_byte_swapped_uuid_is_the_same_machine_and_is_fenced_reading_the_secret_once() -> None:
    f, bmc, credentials = fencer(b=URL + "b")
    bmc.uuids[URL + "b"] = SWAPPED[1]
    outcome = await f.power_off(NodeView("b", system_uuid=SWAPPED[0]))
    assert outcome.off and not outcome.found_off and outcome.seconds >= bmc.delay
    assert sent(bmc) == ["ForceOff"] and bmc.power[URL + "b"] == "Off"
    assert credentials.reads == 1  # once per attempt, not per BMC request (it polled several times)


@pytest.mark.anyio
async def test_unknown_uuids_are_not_compared() -> None:
    f, bmc, _ = fencer(b=URL + "b", c=URL + "c")
    bmc.uuids[URL + "c"] = SWAPPED[0]
    assert (await f.power_off(NodeView("b", system_uuid=SWAPPED[0]))).off  # the BMC reports no UUID
    assert (await f.power_off(NodeView("c"))).off  # the node reports none
    assert sent(bmc) == ["ForceOff", "ForceOff"]


@pytest.mark.anyio
async def test_a_bmc_already_off_is_found_off_and_gets_no_force_off() -> None:
    f, bmc, _ = fencer(b=URL + "b")
    bmc.power[URL + "b"] = "Off"
    outcome = await f.power_off(NodeView("b"))
    assert outcome.off and outcome.found_off and outcome.seconds == 0.0
    assert sent(bmc) == []


@pytest.mark.anyio
async def test_a_fixed_secret_takes_effect_at_the_next_attempt() -> None:
    f, _bmc, credentials = fencer()
    assert (await f.power_off(NodeView("b"))).reason is HoldReason.NO_BMC
    credentials.data["b.url"] = URL + "b"
    assert (await f.power_off(NodeView("b"))).off
    assert credentials.reads == 2


@pytest.mark.anyio
async def test_the_healer_holds_a_mismatch_without_a_taint_until_the_row_is_fixed() -> None:
    w = World(settings(fencing="redfish"))
    w.add("a", "b", "c")
    w.cluster.edit("b", {"status": {"nodeInfo": {"systemUUID": SWAPPED[0]}}})
    w.credentials.data["b.url"] = URL + "a"  # the neighbour's BMC
    w.bmc.uuids = {URL + "a": str(uuidlib.uuid4()), URL + "b": SWAPPED[1]}
    async with running(w):
        w.power_cut("b")
        await until(lambda: "KickoutHeld" in w.events.reasons("b"), 120, "held")
        await anyio.sleep(60)
        held = [e.message for e in w.events.emitted if e.reason == "KickoutHeld"]
        assert held[0].startswith("BMC mismatch")
        assert not w.has_taint("b") and sent(w.bmc) == []
        w.credentials.data["b.url"] = URL + "b"
        await until(lambda: w.has_taint("b"), 90, "kickout once the row names b's machine")
        assert [(url, what) for _, url, what in w.bmc.log if what == "ForceOff"] == [(URL + "b", "ForceOff")]


def test_a_node_reports_its_system_uuid_and_a_leftover_annotation_is_only_a_flag() -> None:
    url = URL + "other"
    view = parse_node(
        {
            "metadata": {"name": "n", "annotations": {"asklepios.io/bmc": url}},
            "status": {"nodeInfo": {"systemUUID": SWAPPED[1]}},
        }
    )
    assert (view.system_uuid, view.bmc_annotation) == (SWAPPED[1], True)
    assert url not in repr(view)  # the URL itself is not kept: nothing can read it
    for info in ({"systemUUID": 7}, ["x"], None, {"systemUUID": "u" * 10_000}):
        odd = parse_node({"metadata": {"name": "n"}, "status": {"nodeInfo": info}})
        assert len(odd.system_uuid) <= 100 and not odd.bmc_annotation
