"""Asklepios as the operator runs it (``python -m asklepios run``), seen from outside.

:class:`Controller` starts the process with a kubeconfig and ``ASKLEPIOS_*``
settings, reads its ``/metrics`` and JSON log, and measures it through ``/proc``
(resident set size, CPU seconds). :class:`Sampler` records RSS and CPU every
``interval`` seconds in a thread, so peaks during a burst are not missed.

:data:`SOURCE` says which Asklepios runs: the work tree's ``src/`` (the default), or
a snapshot of a commit's ``src/asklepios`` (``git archive``, read-only) put first on
``PYTHONPATH``, so a measurement is of a known commit even while ``src/`` is being
edited (``python -m bench lag --source head``).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from bench import REPO_DIR

JSON = dict[str, Any]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Source:
    """Where the measured Asklepios comes from: the work tree, or a snapshot of a commit."""

    def __init__(self) -> None:
        self.commit = ""  # empty: the work tree's src/
        self.pythonpath: Path | None = None

    def select(self, which: str) -> None:
        """``worktree``, or ``head`` / any commit-ish: extract its src/asklepios to a temporary directory."""
        if which == "worktree":
            self.commit, self.pythonpath = "", None
            return
        commit = subprocess.run(["git", "rev-parse", "--short", which], cwd=REPO_DIR, capture_output=True,
                                text=True, check=True).stdout.strip()  # fmt: skip
        target = Path(tempfile.mkdtemp(prefix=f"asklepios-src-{commit}-"))
        atexit.register(shutil.rmtree, target, True)
        archive = subprocess.run(["git", "archive", "--format=tar", commit, "src/asklepios"], cwd=REPO_DIR,
                                 capture_output=True, check=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
        self.commit, self.pythonpath = commit, target / "src"
        print(f"[bench] measuring Asklepios {commit} (snapshot in {target})", flush=True)

    def describe(self) -> str:
        return f"{self.commit} (snapshot)" if self.commit else "work tree"

    def env(self) -> dict[str, str]:
        """PYTHONPATH for a child process that must import the measured Asklepios."""
        if self.pythonpath is None:
            return {}
        rest = os.environ.get("PYTHONPATH", "")
        return {"PYTHONPATH": f"{self.pythonpath}{os.pathsep}{rest}" if rest else str(self.pythonpath)}


SOURCE = Source()

# Loaded by the measured process (sitecustomize on its PYTHONPATH): the cyclic garbage
# collector's pauses of 2 ms or more, one line each, "epoch generation seconds".
_GC_HOOK = """\
import gc, os, time
_path = os.environ.get("BENCH_GC_LOG")
if _path:
    _out, _started = open(_path, "a", buffering=1), [0.0]
    def _pause(phase, info):
        if phase == "start":
            _started[0] = time.perf_counter()
        elif (took := time.perf_counter() - _started[0]) >= 0.002:
            _out.write(f"{time.time():.3f} {info['generation']} {took:.4f}\\n")
    gc.callbacks.append(_pause)
"""


def _gc_hook_dir() -> Path:
    target = Path(tempfile.mkdtemp(prefix="asklepios-bench-gc-"))
    atexit.register(shutil.rmtree, target, True)
    (target / "sitecustomize.py").write_text(_GC_HOOK)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Controller:
    """One Asklepios process. ``argv`` defaults to ``python -m asklepios run``."""

    def __init__(
        self,
        kubeconfig: Path,
        env: Mapping[str, str],
        log_path: Path,
        argv: Sequence[str] = (sys.executable, "-m", "asklepios", "run"),
    ) -> None:
        self.port = free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ASKLEPIOS_")},
            "KUBECONFIG": str(kubeconfig),
            "ASKLEPIOS_HTTP_PORT": str(self.port),
            "ASKLEPIOS_LEADER_ELECTION": "false",
            "ASKLEPIOS_LOG_FORMAT": "json",
            "TMPDIR": str(log_path.parent),  # the BMC CA file (fence/redfish.py) goes with the run's logs
            **SOURCE.env(),
            **env,
        }
        self.gc_log = log_path.with_suffix(".gc")
        hook = str(_gc_hook_dir())
        inherited = self.env.get("PYTHONPATH")
        self.env["PYTHONPATH"] = f"{hook}{os.pathsep}{inherited}" if inherited else hook
        self.env["BENCH_GC_LOG"] = str(self.gc_log)
        self.argv = list(argv)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> Controller:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.started_at = time.time()
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_ready(self, timeout: float) -> float:
        """Wait for ``/readyz`` 200 (the first node list is synced); returns when (epoch)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.http("/readyz")[0] == 200:
                return time.time()
            time.sleep(0.1)
        raise TimeoutError(f"asklepios not ready within {timeout}s; log {self.log_path}")

    def http(self, path: str) -> tuple[int, str]:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"asklepios exited with {self.proc.returncode}; log {self.log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()
        except OSError:
            return 0, ""

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics as ``name{label="v",...}`` -> value."""
        status, text = self.http("/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = float(sample.value)
        return out

    def logs(self) -> list[JSON]:
        lines: list[JSON] = []
        for raw in self.log_path.read_bytes().splitlines():
            try:
                parsed = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(parsed, dict):
                lines.append(parsed)
        return lines

    def warnings(self) -> dict[str, int]:
        """How often each warning or error message was logged."""
        counts: dict[str, int] = {}
        for line in self.logs():
            if line.get("level") in ("warning", "error"):
                key = f"{line.get('msg')}: {str(line.get('error', ''))[:160]}"
                counts[key] = counts.get(key, 0) + 1
        return counts

    def gc_pauses(self, start: float, end: float, generation: int = 2) -> JSON:
        """The garbage collector's pauses of that generation in [start, end): count, max and over 0.1 s."""
        pauses = []
        if self.gc_log.exists():
            for line in self.gc_log.read_text().splitlines():
                t, gen, took = line.split()
                if start <= float(t) < end and int(gen) == generation:
                    pauses.append(float(took))
        return {"count": len(pauses), "max_s": max(pauses, default=0.0), "over_0.1_s": sum(p > 0.1 for p in pauses)}

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def peak_rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the process so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; returns the exit status (SIGKILL after ``timeout``)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)


class Sampler(threading.Thread):
    """RSS and CPU seconds of a controller every ``interval`` s: ``samples`` = (t, rss, cpu)."""

    def __init__(self, controller: Controller, interval: float = 1.0) -> None:
        super().__init__(daemon=True, name="sampler")
        self.controller, self.interval = controller, interval
        self.samples: list[tuple[float, int, float]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                c = self.controller
                self.samples.append((time.time(), c.rss_bytes(), c.cpu_seconds()))
            except OSError:
                return
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def window(self, start: float, end: float) -> JSON:
        """RSS (MiB: first, last, max) and CPU seconds used between ``start`` and ``end``."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return {"samples": len(inside)}
        mib = 1024 * 1024
        cpu = inside[-1][2] - inside[0][2]
        span = inside[-1][0] - inside[0][0]
        return {
            "samples": len(inside),
            "seconds": round(span, 1),
            "rss_first_mib": inside[0][1] / mib,
            "rss_last_mib": inside[-1][1] / mib,
            "rss_max_mib": max(s[1] for s in inside) / mib,
            "cpu_seconds": cpu,
            "cpu_percent_of_one_core": 100.0 * cpu / span if span else 0.0,
        }


def histogram(metrics: Mapping[str, float], name: str) -> tuple[dict[float, float], float, float]:
    """(cumulative buckets {le: count}, sum, count) of histogram ``name`` from :meth:`metrics`."""
    buckets: dict[float, float] = {}
    prefix = f'{name}_bucket{{le="'
    for key, value in metrics.items():
        if key.startswith(prefix):
            buckets[float(key[len(prefix) :].split('"')[0])] = value
    return buckets, metrics.get(f"{name}_sum", 0.0), metrics.get(f"{name}_count", 0.0)
