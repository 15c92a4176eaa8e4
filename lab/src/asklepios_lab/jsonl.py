"""JSON-lines files that another process is still appending to.

The apiserver's audit log and the CSI plugin's call log are read while they grow, so
the last line may be half written at the moment of reading. Only lines that end in a
newline are parsed; a half line is left for the next read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson


def read(path: Path) -> list[dict[str, Any]]:
    """Every complete line of ``path`` parsed, in order ([] if the file is not there yet)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    return [orjson.loads(line) for line in complete.splitlines() if line.strip()]
