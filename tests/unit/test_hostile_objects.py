"""Issue 20.3: no object content can crash or wedge the controller.

Every parse of a node, pod, Lease, Secret or record is fed arbitrary JSON: it returns a
value or raises an ordinary Exception, which the reflector turns into "skip and count".
A node that writes `"[" * 100000` into an annotation, or absurd numbers and times into
its status, changes nothing but its own evidence of life.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asklepios.core.records import KICKOUT_ANNOTATION, NodeRecord, Pause
from asklepios.kube.nodeleases import parse_lease
from asklepios.kube.nodes import parse_node
from asklepios.kube.pods import parse_pod, parse_pod_ref
from asklepios.kube.records import parse_records
from asklepios.kube.reflector import Hooks, Reflector
from tests.unit.test_reflector import QuietApiserver, Store

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True)
    | st.text(max_size=30)
    | st.sampled_from(["2026-11-27T03:00:00Z", "9999-99-99T99:99:99Z", "[" * 2000, "True", "Ready", "InternalIP"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=30,
)
KEYS = ["metadata", "spec", "status", "data", "conditions", "addresses", "taints", "annotations", "labels", "name"]
objects = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), json_values, max_size=6)
PARSERS: dict[str, Callable[[Any], object]] = {
    "node": parse_node,
    "pod": parse_pod,
    "pod ref": parse_pod_ref,
    "lease": parse_lease,
    "records": parse_records,
}


TOTAL = {"lease", "records"}  # never raise at all; a node raises only without a string name


@pytest.mark.parametrize("kind", sorted(PARSERS))
@settings(max_examples=300, deadline=None)
@given(obj=objects, name=st.text(min_size=1, max_size=20))
def test_every_parse_returns_or_raises_an_ordinary_exception(kind: str, obj: dict[str, Any], name: str) -> None:
    """Only an ordinary Exception may leave a parse (the reflector skips and counts it): never a
    RecursionError-killed task group, a BaseException or a hang; the total parsers never raise."""
    if kind == "node":
        meta = obj.get("metadata")
        obj["metadata"] = {**(meta if isinstance(meta, dict) else {}), "name": name}
    try:
        PARSERS[kind](obj)
    except Exception:
        assert kind not in TOTAL and kind != "node", f"{kind} raised on what a node may write"


@settings(max_examples=300, deadline=None)
@given(raw=json_values.map(repr) | st.text(max_size=50) | st.just("[" * 100_000) | st.just("{" * 100_000))
def test_record_decoding_is_total(raw: str) -> None:
    assert NodeRecord.decode(raw) is None or isinstance(NodeRecord.decode(raw), NodeRecord)
    assert Pause.decode(raw) is None or isinstance(Pause.decode(raw), Pause)


@settings(max_examples=200, deadline=None)
@given(status=json_values, annotation=json_values)
def test_a_node_with_any_status_and_annotation_is_still_read(status: Any, annotation: Any) -> None:
    """What a node writes about itself is read as evidence (or its absence), never an error."""
    obj = {"metadata": {"name": "n1", "annotations": {KICKOUT_ANNOTATION: annotation}}, "status": status}
    view = parse_node(obj)
    assert view.name == "n1" and view.record is None  # the annotation is never our record


@pytest.mark.anyio
async def test_one_hostile_node_among_good_ones_is_skipped_and_counted() -> None:
    hostile = {"metadata": {"name": 7, "annotations": {KICKOUT_ANNOTATION: "[" * 100_000}}}

    class Listing(QuietApiserver):
        async def request(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
            await anyio.lowlevel.checkpoint()
            self.lists += 1
            good = [{"metadata": {"name": f"n{i}", "annotations": {KICKOUT_ANNOTATION: "[" * 100_000}}} for i in (1, 2)]
            return {"items": [good[0], hostile, good[1]], "metadata": {"resourceVersion": "7"}}

    seen: dict[str, object] = {}
    skipped: list[int] = []

    class Keep(Store):
        def replace(self, items: dict[str, object]) -> None:
            seen.update(items)

    apiserver = Listing()
    reflector = Reflector(apiserver, "/api/v1/nodes", parse_node, hooks=Hooks(skipped=lambda: skipped.append(1)))  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        tg.start_soon(reflector.run, Keep())  # type: ignore[arg-type]
        with anyio.fail_after(5):
            while apiserver.watches < 2:  # noqa: ASYNC110 - counts set by plain calls
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert sorted(seen) == ["n1", "n2"] and skipped == [1]
