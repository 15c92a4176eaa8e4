"""`asklepios status --watch` in a real terminal (tmux), read off the screen during a kickout."""

from __future__ import annotations

import os
import re
import secrets
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from asklepios_lab import ControlPlane, wait_for
from tests.cluster.checks import env, first_seen, has_oos, power_cut
from tests.cluster.runner import AsklepiosFactory


class Screen:
    """A command running in a detached tmux session of a fixed size.

    Its exit status is written to ``exit_file`` by the bash that runs it, as soon as it
    exits: tmux's own record of a dead pane waits for the tmux server to reap the
    process, and under load that took more than 30 s (the process a zombie meanwhile).
    """

    def __init__(self, command: list[str], environment: dict[str, str], exit_file: Path) -> None:
        self.name = f"asklepios-{secrets.token_hex(4)}"
        self.exit_file = exit_file
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in environment.items())
        script = f"env {exports} {shlex.join(command)}; echo $? > {shlex.quote(str(exit_file))}"
        self._tmux("new-session", "-d", "-s", self.name, "-x", "200", "-y", "40", shlex.join(["bash", "-c", script]))

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True, timeout=10).stdout

    def text(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", self.name)

    def line(self, node: str) -> str:
        return next((ln for ln in self.text().splitlines() if ln.startswith(node + " ")), "")

    def exited(self) -> int | None:
        """The command's exit status once it has exited (bash waits for it through Ctrl-C: a
        child that handles SIGINT and exits normally lets bash go on)."""
        text = self.exit_file.read_text() if self.exit_file.exists() else ""
        return int(text) if text.endswith("\n") else None

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", self.name, *keys)

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True, check=False)


def seconds_left(line: str) -> int | None:
    found = re.search(r" (\d+)s ", line)
    return int(found.group(1)) if found else None


@pytest.mark.timeout(180)
def test_status_watch_shows_countdowns_holds_and_the_leader(
    control_plane: ControlPlane, nodes: Any, namespace: str, asklepios: AsklepiosFactory, tmp_path: Path
) -> None:
    cp = control_plane
    victim, alive, _ = nodes.watched("v", "a", "o")
    settings = env(
        nodes.prefix,
        ASKLEPIOS_KICKOUT_SECONDS="8",
        ASKLEPIOS_NAMESPACE=namespace,
        ASKLEPIOS_MAX_UNHEALTHY="2",  # two NotReady nodes, neither held by the guard
        ASKLEPIOS_LEADER_ELECTION="true",
    )
    healer = asklepios(settings)
    wait_for(lambda: healer.metric("asklepios_is_leader") == 1, 20, what="a leader")
    environment = {"KUBECONFIG": str(cp.kubeconfig), "PATH": os.environ["PATH"], "TERM": "xterm", **settings}
    screen = Screen([sys.executable, "-m", "asklepios", "status", "--watch"], environment, tmp_path / "exit-status")
    try:
        wait_for(lambda: "leader: " in screen.text() and screen.line(victim), 20, what="the first screen")
        assert "no replica holds the Lease" not in screen.text()  # the leader's identity is shown
        assert "ready" in screen.line(victim)
        power_cut(cp, victim, "Unknown")
        cp.set_ready(alive, "False")  # its kubelet still renews its Lease: held at the deadline
        first: int = wait_for(lambda: seconds_left(screen.line(victim)) or 0, 10, what="a countdown on screen")
        wait_for(lambda: (s := seconds_left(screen.line(victim))) is not None and s < first, 5, what="it ticks")
        assert "counting down" in screen.line(victim)
        first_seen(cp, victim, has_oos, 30, "kickout")
        wait_for(lambda: "kicked out" in screen.line(victim), 10, what="kicked out on screen")
        wait_for(lambda: "held" in screen.line(alive) and "kubelet alive" in screen.line(alive), 30,
                 what="the hold and its reason on screen")  # fmt: skip
        screen.keys("C-c")
        assert wait_for(lambda: screen.exited() is not None, 30, what="exit on Ctrl-C") is not None
        assert screen.exited() == 0
    finally:
        screen.close()
        cp.restore(victim)
        cp.clear_ready(alive)
