"""The operator's commands: `pause`, `resume`, `release NODE`, `adopt NODE`.

Each one writes Asklepios' own records (the ConfigMap in its namespace, see
`core.records`); the running controller (the leader) acts on the change at once,
through the same judge and the same conflict-safe writes as everything else:

* pause: no kickout, fencing, power action or eviction starts (kickouts are held,
  reason `paused`); kickins go on, they only undo. Survives restarts.
* release NODE: end Asklepios' kickout of NODE now: power it on if Asklepios powered
  it off, then undo what the record says, whatever the countdown, pods or flapping.
  The command waits (bounded) until the controller has done it.
* adopt NODE: take over a kickout that the Go Asklepios left (cordoned AND tainted
  out-of-service, no record of ours): recorded as ours, so the kickin undoes both.
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

import anyio
import attrs

from asklepios.core.records import PAUSE_KEY, KickoutRecord, NodeRecord, Pause, node_key
from asklepios.engine.ports import NodePort
from asklepios.engine.records import RecordBook, RecordPort
from asklepios.kube.client import Conflict
from asklepios.kube.nodes import mirror_patch
from asklepios.kube.records import RecordData


class RecordReader(Protocol):
    async def get(self, timeout: float) -> RecordData | None: ...


class Refused(Exception):
    """The command cannot do what was asked; str() says why and what to do."""


def operator() -> str:
    """Who runs the command, for the record."""
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except (KeyError, OSError):
        return socket.gethostname()


@attrs.define(eq=False)
class Commands:
    records: RecordPort
    reader: RecordReader
    nodes: NodePort
    now: Callable[[], datetime]
    timeout: float = 10.0

    async def book(self) -> RecordBook:
        book = RecordBook()
        data = await self.reader.get(self.timeout)
        if data is not None:
            book.load(data, force=True)
        return book

    async def pause(self, reason: str, by: str) -> Pause:
        pause = Pause(since=self.now().replace(microsecond=0), reason=reason, by=by)
        await self.records.put({PAUSE_KEY: pause.encode()}, self.timeout)
        return pause

    async def resume(self) -> Pause | None:
        """Lift the pause; returns the pause that was in force (None: there was none)."""
        pause = (await self.book()).pause
        await self.records.put({PAUSE_KEY: None}, self.timeout)
        return pause

    async def release(self, node: str, wait: float = 60.0) -> KickoutRecord:
        """Ask the controller to end NODE's kickout now; wait until it did (at most `wait` seconds)."""
        record = (await self.book()).of(node)
        if record is None or record.kickout is None:
            raise Refused(f"{node} is not kicked out by Asklepios (no record of ours): nothing to release")
        kickout = record.kickout
        released = attrs.evolve(record, release=self.now().replace(microsecond=0))
        await self.records.put({node_key(node): released.encode()}, self.timeout)
        with anyio.move_on_after(wait):
            while True:
                current = (await self.book()).of(node)
                if current is None or current.kickout is None:
                    return kickout
                await anyio.sleep(1.0)
        raise Refused(
            f"the release of {node} is recorded, but no Asklepios controller carried it out within {wait:.0f}s: "
            "is it running? (kubectl get pods -l app.kubernetes.io/name=asklepios -A)"
        )

    async def adopt(self, node: str, by: str) -> KickoutRecord:
        """Record a kickout left by the Go Asklepios as ours (cordon and taint), so kickin undoes it."""
        view = await self.nodes.get(node)
        if not (view.unschedulable and view.has_out_of_service_taint):
            missing = [w for w, ok in (("cordoned", view.unschedulable), ("tainted", view.has_out_of_service_taint))
                       if not ok]  # fmt: skip
            raise Refused(
                f"{node} is not {' and '.join(missing)} (node.kubernetes.io/out-of-service): "
                "only a node that the old tool left both cordoned and tainted can be adopted"
            )
        existing = (await self.book()).of(node)
        if existing is not None and existing.kickout is not None:
            raise Refused(f"{node} is already kicked out by Asklepios (since {existing.kickout.at:%Y-%m-%dT%H:%M:%SZ})")
        at = self.now().replace(microsecond=0)
        kickout = KickoutRecord(
            at=at, cordoned=True, tainted=True, evidence=(f"adopted from the Go Asklepios by {by}",)
        )
        record = attrs.evolve(existing or NodeRecord(), kickout=kickout)
        await self.records.put({node_key(node): record.encode()}, self.timeout)
        for _ in range(5):  # the mirror annotation also wakes the controller's watch of cordoned nodes
            try:
                await self.nodes.patch(node, mirror_patch(view, kickout), self.timeout)
                break
            except Conflict:
                view = await self.nodes.get(node)
        return kickout
