"""Asklepios as the operator runs it: `python -m asklepios run`, a real process.

Tests start it against the lab's apiserver, read its JSON log lines and its
/metrics, kill it (SIGKILL: a crash) or stop it (SIGTERM: must exit 0).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import orjson

from asklepios_lab import wait_for
from asklepios_lab.procs import free_port

JSON = dict[str, Any]
T = TypeVar("T")


class Asklepios:
    def __init__(self, kubeconfig: Path, env: Mapping[str, str], log_path: Path) -> None:
        self.kubeconfig = kubeconfig
        self.port = free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ASKLEPIOS_")},
            "KUBECONFIG": str(kubeconfig),
            "ASKLEPIOS_HTTP_PORT": str(self.port),
            "ASKLEPIOS_LEADER_ELECTION": "false",
            "ASKLEPIOS_LOG_LEVEL": "debug",
            "TMPDIR": str(log_path.parent),  # the BMC CA file (fence/redfish.py) goes with the test's logs
            **env,
        }
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._read = 0
        self.lines: list[JSON] = []

    def start(self, wait_ready: bool = True) -> Asklepios:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "asklepios", "run"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        if wait_ready:
            wait_for(lambda: self.http("/readyz")[0] == 200, 30, what="asklepios /readyz")
        return self

    def http(self, path: str) -> tuple[int, str]:
        self._check_alive()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()
        except OSError:
            return 0, ""

    def metric(self, name: str, labels: str = "") -> float:
        """The value of one sample (`name{labels}`) from /metrics; 0 when absent."""
        _, text = self.http("/metrics")
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in text.splitlines():
            if line.startswith(wanted + " "):
                return float(line.split()[-1])
        return 0.0

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None and self.proc.returncode not in (0, -9):
            raise AssertionError(f"asklepios exited with {self.proc.returncode}:\n{self.tail()}")

    def logs(self) -> list[JSON]:
        data = self.log_path.read_bytes()
        for raw in data[self._read :].splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break
            self._read += len(raw)
            try:
                self.lines.append(orjson.loads(raw))
            except orjson.JSONDecodeError:
                self.lines.append({"msg": raw.decode(errors="replace").rstrip(), "level": "raw"})
        return self.lines

    def find(self, predicate: Callable[[JSON], bool]) -> list[JSON]:
        return [line for line in self.logs() if predicate(line)]

    def wait_log(self, predicate: Callable[[JSON], bool], timeout: float, what: str) -> JSON:
        def seen() -> JSON | None:
            self._check_alive()
            found = self.find(predicate)
            return found[0] if found else None

        return wait_value(seen, timeout, what=what)

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def kill(self) -> None:
        """SIGKILL: the process dies mid-flight, as on a node power cut."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError(f"asklepios ignored SIGTERM for {timeout}s:\n{self.tail()}") from None
        return int(self.proc.returncode)


class AsklepiosFactory:
    def __init__(self, kubeconfig: Path, tmp: Path) -> None:
        self.kubeconfig = kubeconfig
        self.tmp = tmp
        self.started: list[Asklepios] = []

    def __call__(self, env: Mapping[str, str], *, kubeconfig: Path | None = None, start: bool = True) -> Asklepios:
        log = self.tmp / f"asklepios-{len(self.started)}.log"
        proc = Asklepios(kubeconfig or self.kubeconfig, env, log)
        self.started.append(proc)
        return proc.start() if start else proc

    def close(self) -> Iterator[str]:
        """Stop all; yields a complaint for each that did not exit 0 on SIGTERM."""
        for proc in self.started:
            if proc.proc is None or proc.proc.returncode == -9:
                continue
            code = proc.stop()
            if code not in (0, -9):
                yield f"{proc.log_path.name} exited {code}:\n{proc.tail()}"


def wait_value(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """Wait until `probe` returns a value (not None/empty); return it."""
    found = wait_for(probe, timeout, interval=interval, what=what)
    assert found is not None
    return found
