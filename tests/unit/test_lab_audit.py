"""The lab's audit-log reader, read while the apiserver is still appending to it.

Tests read the apiserver's audit log during a run, so the last line may be half
written at the moment of reading. A half line must be left for the next read, not
parsed: CI once failed with `unexpected end of data` on exactly that.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from asklepios_lab import audit


def _event(name: str, stage: str = "ResponseComplete", user: str = "asklepios") -> bytes:
    return orjson.dumps({"stage": stage, "user": {"username": user}, "objectRef": {"name": name}})


def test_a_half_written_last_line_is_left_for_the_next_read(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    whole = _event("n-2")
    log.write_bytes(_event("n-1") + b"\n" + whole[:20])

    assert [e["objectRef"]["name"] for e in audit.entries(log)] == ["n-1"]

    with log.open("ab") as out:
        out.write(whole[20:] + b"\n")
    assert [e["objectRef"]["name"] for e in audit.entries(log)] == ["n-1", "n-2"]


def test_entries_keep_completed_requests_of_the_asked_user(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = [
        _event("started", stage="ResponseStarted"),
        _event("mine"),
        _event("theirs", user="kube-controller-manager"),
    ]
    log.write_bytes(b"\n".join(lines) + b"\n")

    assert [e["objectRef"]["name"] for e in audit.entries(log, "asklepios")] == ["mine"]
    assert len(audit.records(log)) == 3


def test_a_log_not_yet_written_has_no_entries(tmp_path: Path) -> None:
    assert audit.entries(tmp_path / "audit.jsonl") == []
