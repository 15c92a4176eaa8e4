"""Kickout and kickin writes: exactly what the annotation records is undone.

The patches are pure functions of the node; RFC 7386 merge semantics are applied
here to check what the apiserver will store.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asklepios.core.evidence import DeathVerdict, HoldReason
from asklepios.core.node import OUT_OF_SERVICE_TAINT, ReadyStatus, Taint
from asklepios.core.records import KICKOUT_ANNOTATION, KickoutRecord
from asklepios.kube.nodes import kickin_patch, kickout_patch, parse_node, repair_patch

DEAD = DeathVerdict(dead=True, detail="kubelet silent, no answer")
ALIVE = DeathVerdict(dead=False, hold=HoldReason.NODE_ANSWERS, detail="answers on 127.0.10.3:10250 refused")


def merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


def api_node(unschedulable: bool, taints: list[Taint], annotations: dict[str, str]) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "metadata": {"name": "control2", "resourceVersion": "42", "annotations": annotations},
        "spec": {},
        "status": {
            "conditions": [{"type": "Ready", "status": "Unknown", "lastTransitionTime": "2026-03-05T05:42:15Z"}]
        },
    }
    if unschedulable:
        obj["spec"]["unschedulable"] = True
    if taints:
        obj["spec"]["taints"] = [t.to_api() for t in taints]
    return obj


taints = st.lists(
    st.builds(
        Taint,
        key=st.sampled_from(["example.com/a", "node.kubernetes.io/unreachable", "node.kubernetes.io/out-of-service"]),
        value=st.sampled_from(["", "x", "nodeshutdown"]),
        effect=st.sampled_from(["NoSchedule", "NoExecute"]),
    ),
    max_size=3,
    unique_by=lambda t: (t.key, t.effect),
)


@given(
    unschedulable=st.booleans(),
    before=taints,
    annotations=st.dictionaries(st.sampled_from(["a", "b/c"]), st.text(max_size=3)),
)
def test_kickout_then_kickin_restores_the_node(
    unschedulable: bool, before: list[Taint], annotations: dict[str, str]
) -> None:
    obj = api_node(unschedulable, before, annotations)
    view = parse_node(obj)
    assert view.ready is ReadyStatus.UNKNOWN
    record = KickoutRecord(
        at=datetime(2026, 3, 5, 5, 44, 8, tzinfo=UTC),
        cordoned=not view.unschedulable,
        tainted=not view.has_out_of_service_taint,
    )
    patch = kickout_patch(view, record, DEAD)
    assert patch["metadata"]["resourceVersion"] == "42"  # the write is guarded
    out = merge(obj, patch)
    kicked = parse_node(out)
    assert kicked.unschedulable and kicked.has_out_of_service_taint
    assert kicked.mirror == record.mirror()  # the mirror, for people; the record itself lives elsewhere
    assert set(before) <= set(kicked.taints)  # nobody's taint lost
    back = parse_node(merge(out, kickin_patch(kicked, record)))
    assert back.unschedulable == unschedulable  # an admin's cordon survives
    assert set(back.taints) == set(before)  # a pre-existing out-of-service taint survives too
    assert back.mirror is None
    assert dict(merge(out, kickin_patch(kicked, record))["metadata"]["annotations"]) == annotations


def test_repair_puts_back_only_what_we_made() -> None:
    record = KickoutRecord(at=datetime(2026, 3, 5, tzinfo=UTC), cordoned=True, tainted=True)
    obj = api_node(False, [Taint("example.com/a", "x", "NoSchedule")], {KICKOUT_ANNOTATION: record.mirror()})
    view = parse_node(obj)
    patch = repair_patch(view, record, DEAD)
    assert patch is not None
    fixed = parse_node(merge(obj, patch))
    assert fixed.unschedulable and fixed.has_out_of_service_taint
    assert Taint("example.com/a", "x", "NoSchedule") in fixed.taints
    assert OUT_OF_SERVICE_TAINT in fixed.taints
    cordon_only = repair_patch(view, record, None)  # no verdict: the cordon only, never the taint
    assert cordon_only is not None and "taints" not in cordon_only["spec"]


def test_no_patch_adds_the_taint_without_a_dead_verdict() -> None:
    """Issue 19: the node patches that add the out-of-service taint refuse any other verdict."""
    record = KickoutRecord(at=datetime(2026, 3, 5, tzinfo=UTC), cordoned=True, tainted=True)
    view = parse_node(api_node(False, [], {}))
    with pytest.raises(ValueError, match="needs the death verdict"):
        kickout_patch(view, record, ALIVE)
    with pytest.raises(ValueError, match="needs the death verdict"):
        repair_patch(view, record, ALIVE)
