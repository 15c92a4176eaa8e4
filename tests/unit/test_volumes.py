"""A kicked-out node's volumes: which VolumeAttachments hold "released", parsed and watched."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from asklepios.core.records import KickoutRecord
from asklepios.core.volumes import Attachment, NodeVolumes, left_from_before
from asklepios.engine.nodevolumes import AttachmentStore, NodeVolumeWatch
from asklepios.kube.volumes import VOLUME_ATTACHMENTS_PATH, parse_attachment

KICKOUT = datetime(2026, 12, 6, 3, 0, 0, tzinfo=UTC)
RECORD = KickoutRecord(at=KICKOUT, cordoned=True, tainted=True)
BEFORE = KICKOUT - timedelta(minutes=5)
AFTER = KICKOUT + timedelta(seconds=30)


def va_json(name: str, node: str, pv: str, created: datetime | None = BEFORE, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "resourceVersion": "1"}
    if created is not None:
        meta["creationTimestamp"] = created.strftime("%Y-%m-%dT%H:%M:%SZ")
    meta.update(extra.pop("meta", {}))
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "VolumeAttachment",
        "metadata": meta,
        "spec": {"attacher": "csi.example", "nodeName": node, "source": {"persistentVolumeName": pv}},
        "status": {"attached": True},
        **extra,
    }


# ------------------------------------------------------------------------- core


def test_only_the_nodes_attachments_from_before_the_kickout_hold_it() -> None:
    atts = [
        Attachment("a", "dead", "pv-a", created=BEFORE),
        Attachment("b", "dead", "pv-b", created=KICKOUT),  # same second: counts as before
        Attachment("c", "dead", "pv-c", created=AFTER),  # a pod that tolerates the taint: not ours
        Attachment("d", "alive", "pv-d", created=BEFORE),
        Attachment("e", "dead", "pv-e", created=None),  # unknown age: assume before
    ]
    assert [a.name for a in left_from_before(atts, "dead", RECORD)] == ["a", "b", "e"]
    state = NodeVolumes.of(atts, "dead", RECORD)
    assert state.left == ("a", "b", "e")
    assert state.volumes == ("pv-a", "pv-b", "pv-e")
    assert not state.released


def test_released_once_none_is_left_and_never_before_the_first_list() -> None:
    assert not NodeVolumes.of(None, "dead", RECORD).released  # not listed yet: cannot say
    assert NodeVolumes.of([], "dead", RECORD).released
    deleting = Attachment("a", "dead", "pv-a", created=BEFORE, deleting_since=AFTER)
    assert not NodeVolumes.of([deleting], "dead", RECORD).released  # still there: not detached yet
    assert NodeVolumes.of([Attachment("c", "dead", "pv-c", created=AFTER)], "dead", RECORD).released


# ------------------------------------------------------------------------ parse


def test_parse_reads_node_volume_attacher_state_and_times() -> None:
    obj = va_json("csi-1", "n1", "pv-1", meta={"deletionTimestamp": "2026-12-06T03:00:10Z"})
    att = parse_attachment(obj)
    assert att == Attachment(
        name="csi-1",
        node="n1",
        volume="pv-1",
        attacher="csi.example",
        attached=True,
        created=BEFORE,
        deleting_since=datetime(2026, 12, 6, 3, 0, 10, tzinfo=UTC),
    )
    inline = va_json("csi-2", "n1", "pv")
    inline["spec"]["source"] = {"inlineVolumeSpec": {}}
    del inline["status"]
    assert parse_attachment(inline).volume == ""
    assert parse_attachment(inline).attached is False


@pytest.mark.parametrize("node", [None, "", 3])
def test_parse_refuses_an_attachment_without_a_node(node: object) -> None:
    obj = va_json("x", "n", "pv")
    obj["spec"]["nodeName"] = node
    with pytest.raises((KeyError, TypeError, ValueError)):
        parse_attachment(obj)


# ------------------------------------------------------------------------ store


def test_the_store_indexes_by_node_and_tells_which_node_changed() -> None:
    changed: list[str] = []
    store = AttachmentStore(changed=changed.append)
    assert store.of_node("n1") is None  # not listed yet
    store.replace({"a": Attachment("a", "n1"), "b": Attachment("b", "n2")})
    assert sorted(changed) == ["n1", "n2"]
    assert [a.name for a in store.of_node("n1") or []] == ["a"]
    assert store.of_node("n3") == []
    changed.clear()
    store.upsert("c", Attachment("c", "n1"))
    store.delete("a")
    store.delete("missing")
    assert changed == ["n1", "n1"]
    assert [a.name for a in store.of_node("n1") or []] == ["c"]
    changed.clear()
    store.replace({})  # a relist that finds nothing: every node that had some changed
    assert sorted(changed) == ["n1", "n2"]
    assert store.of_node("n1") == []


# ------------------------------------------------------------------ the watch


class Apiserver:
    """Lists two attachments of node dead, then a watch deletes one and the other in turn."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.events: anyio.abc.ObjectReceiveStream[dict[str, Any]]
        self.send, self.events = anyio.create_memory_object_stream[dict[str, Any]](10)

    async def request(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        await anyio.lowlevel.checkpoint()
        self.paths.append(path)
        items = [va_json("a", "dead", "pv-a"), va_json("b", "dead", "pv-b"), va_json("c", "alive", "pv-c")]
        return {"items": items, "metadata": {"resourceVersion": "7"}}

    @asynccontextmanager
    async def stream(self, path: str, query: Mapping[str, Any], read_timeout: float) -> AsyncIterator[Any]:
        await anyio.lowlevel.checkpoint()
        self.paths.append(path)
        yield self.events


@pytest.mark.anyio
async def test_the_watch_says_released_when_the_last_pre_kickout_attachment_is_deleted() -> None:
    apiserver = Apiserver()
    seen: list[tuple[str, bool]] = []
    watch = NodeVolumeWatch(apiserver, watch_timeout=60)  # type: ignore[arg-type]
    watch.changed = lambda node: seen.append((node, watch.volumes(node, RECORD).released))
    assert watch.volumes("dead", RECORD) == NodeVolumes(synced=False)
    async with apiserver.send, apiserver.events, anyio.create_task_group() as tg:
        tg.start_soon(watch.run)
        with anyio.fail_after(5):
            while watch.attachments("dead") is None:  # noqa: ASYNC110 - set by the reflector task
                await anyio.sleep(0.01)
            assert watch.volumes("dead", RECORD).left == ("a", "b")
            await apiserver.send.send({"type": "DELETED", "object": va_json("a", "dead", "pv-a")})
            # the attacher's new attachment on another node does not concern the dead one
            await apiserver.send.send({"type": "ADDED", "object": va_json("d", "alive", "pv-a", created=AFTER)})
            await apiserver.send.send({"type": "DELETED", "object": va_json("b", "dead", "pv-b")})
            while ("dead", True) not in seen:  # noqa: ASYNC110 - appended by the store's callback
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert set(apiserver.paths) == {VOLUME_ATTACHMENTS_PATH}
    dead = [released for node, released in seen if node == "dead"]
    assert dead == [False, False, True]  # listed, one gone, then the last one gone
    assert watch.volumes("dead", RECORD).released
    assert [a.name for a in watch.attachments("alive") or []] == ["c", "d"]
