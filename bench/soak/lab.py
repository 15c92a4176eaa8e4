"""The soak's cluster: the lab with a physics log, the runner's watches, Asklepios' replicas.

* :class:`SoakControlPlane` is the lab's :class:`~asklepios_lab.ControlPlane` that
  writes down every crash, stop_kubelet, partition, skewed kubelet and restore, whoever
  asked for it (the runner's faults, or the BMC emulator powering a node off and on),
  with the kubelet's and the kubelet port's state before and after (the port "answers"
  when it accepts or refuses: only a machine that is off is silent). Its ``restore`` boots the machine even when
  the apiserver is down (the lab's own one first clears the ``set_ready`` override
  through the apiserver and gives up if it cannot; a real machine boots anyway): the
  override is then cleared later by :meth:`SoakControlPlane.retry_overrides`; the boot
  is the lab's ``boot_kwok``, with its pod resync (:mod:`asklepios_lab.resync`). Its
  kwoks have one Stage more than the lab's (:data:`POD_READY_AGAIN`): a running pod
  that node-lifecycle marked NotReady (its node looked dead for a moment, e.g. after
  an apiserver outage) is reported Ready again, as a real kubelet's status sync does;
  without it such a pod stays NotReady for good and its StatefulSet never recovers.
* :class:`Recorder` is a watch thread that keeps every event with its receive time,
  relists after 410 Gone and remembers where events may be missing.
* :class:`Replicas` runs the two Asklepios replicas, each process (incarnation) with
  a static token and POD_NAME of its own, so the audit log and the election Lease
  tell every process apart; it restarts a replica after a kill.
"""

from __future__ import annotations

import contextlib
import http.client
import signal
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import yaml

from asklepios_lab import Api, ApiError, ControlPlane, PortMode, SkewedKubelet, kwok
from bench.controller import Controller
from bench.soak.model import Incarnation, Interval, Physics

JSON = dict[str, Any]


_READY_AGAIN_STATUS = """\
{{ $now := Now }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Ready
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: ContainersReady
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  started: true
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
"""
POD_READY_AGAIN = {
    "apiVersion": "kwok.x-k8s.io/v1alpha1",
    "kind": "Stage",
    "metadata": {"name": "pod-ready-again"},
    "spec": {
        "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
        "selector": {
            "matchExpressions": [
                {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
                {"key": ".status.phase", "operator": "In", "values": ["Running"]},
                {
                    "key": '.status.conditions.[] | select( .type == "Ready" ) | .status',
                    "operator": "NotIn",
                    "values": ["True"],
                },
            ]
        },
        "next": {"statusTemplate": _READY_AGAIN_STATUS},
    },
}
"""The kubelet's status sync: a Running pod marked NotReady is reported Ready again (its
conditions and container statuses only; the lab's pod-ready Stage would allocate a
second pod IP)."""


class SoakControlPlane(ControlPlane):
    """A control plane that logs the physics of its nodes (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.physics: list[Physics] = []
        self.pending_overrides: set[str] = set()
        self._acting = threading.local()

    def _prepare(self) -> None:
        super()._prepare()
        self.kwok_config.write_text(yaml.safe_dump_all([*kwok.stages(), POD_READY_AGAIN], sort_keys=False))

    @contextlib.contextmanager
    def acting(self, cause: str) -> Iterator[None]:
        """Faults called inside are logged with this cause (default: "bmc", the emulator's thread)."""
        self._acting.cause = cause
        try:
            yield
        finally:
            self._acting.cause = "bmc"

    def node_state(self, name: str) -> tuple[bool, bool]:
        """(its kubelet runs: its kwok, or a skewed kubelet renewing its Lease; its kubelet port
        answers: it accepts or refuses, the machine runs)."""
        proc = self._kwoks.get(name)
        skewed = self._skewed.get(name)
        kubelet = (proc is not None and proc.running()) or (skewed is not None and skewed.running)
        return kubelet, name in self._ips and self.port_mode(name) != "silent"

    def _logged(self, call: str, name: str, action: Callable[[], None]) -> None:
        with self._lock:
            before, t0 = self.node_state(name), time.time()
            try:
                action()
            finally:
                t1, after = time.time(), self.node_state(name)
                cause = getattr(self._acting, "cause", "bmc")
                self.physics.append(Physics(t0, t1, name, call, cause, (before[0], after[0]), (before[1], after[1])))

    def add_node(self, name: str, *args: Any, **kwargs: Any) -> JSON:
        t0 = time.time()
        node = super().add_node(name, *args, **kwargs)
        self.physics.append(Physics(t0, time.time(), name, "add", "runner", (False, True), (False, True)))
        return node

    def crash(self, name: str) -> None:
        self._logged("crash", name, lambda: ControlPlane.crash(self, name))

    def partition(self, name: str) -> None:
        self._logged("partition", name, lambda: ControlPlane.partition(self, name))

    def stop_kubelet(self, name: str) -> None:
        self._logged("stop_kubelet", name, lambda: ControlPlane.stop_kubelet(self, name))

    def skewed_kubelet(
        self, name: str, behind_seconds: float = 60.0, every: float = 1.0, *, port: PortMode = "accept"
    ) -> SkewedKubelet:
        started: list[SkewedKubelet] = []

        def skew() -> None:
            started.append(ControlPlane.skewed_kubelet(self, name, behind_seconds, every, port=port))

        self._logged("skew", name, skew)
        return started[0]

    def restore(self, name: str, *, wait_ready: bool = True, timeout: float = 60.0) -> None:
        """Boot the node: its set_ready override cleared (later, if the apiserver is down), port, kwok."""
        try:
            self._clear_override(name)
        except (ApiError, OSError):
            self.pending_overrides.add(name)

        self._logged("restore", name, lambda: self.boot_kwok(name))
        if wait_ready:
            self.wait_ready(name, "True", timeout)

    def retry_overrides(self) -> None:
        """Clear the set_ready overrides a restore could not clear while the apiserver was down."""
        for name in list(self.pending_overrides):
            try:
                self._clear_override(name)
            except (ApiError, OSError):
                continue
            self.pending_overrides.discard(name)


class Recorder(threading.Thread):
    """Watch ``path`` forever: every event with its receive time to ``handler(t, type, obj)``.

    A fresh list starts it and follows every 410 Gone (items delivered as type
    ``LIST``; an object gone meanwhile as ``DELETED``, its last version); ``gaps`` are
    the intervals between the last event before a relist and the relist, where events
    may have been missed.
    """

    def __init__(self, api: Api, path: str, handler: Callable[[float, str, JSON], None], **query: str) -> None:
        super().__init__(daemon=True, name=f"record {path}")
        self.api, self.path, self.handler, self.query = api, path, handler, query
        self.context = ssl.create_default_context(cafile=str(api.ca_file))
        self.rv = ""
        self.gaps: list[Interval] = []
        self.events = 0
        self.synced = threading.Event()
        self._halt = threading.Event()
        self._last = 0.0
        self._known: dict[str, JSON] = {}  # uid -> last version seen
        self._conn: http.client.HTTPSConnection | None = None

    def stop(self) -> None:
        self._halt.set()
        conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(2)
        self.join(10)

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                if not self.rv:
                    self._list()
                self._stream()
            except (OSError, http.client.HTTPException, ValueError):
                if self._halt.is_set():
                    return
                time.sleep(0.5)

    def _request(self, query: Mapping[str, str], timeout: float) -> tuple[http.client.HTTPSConnection, Any]:
        conn = http.client.HTTPSConnection(self.api.host, self.api.port, context=self.context, timeout=timeout)
        self._conn = conn
        headers = {"Authorization": f"Bearer {self.api.token}", "User-Agent": "asklepios-soak"}
        conn.request("GET", f"{self.path}?{urllib.parse.urlencode({**self.query, **query})}", headers=headers)
        return conn, conn.getresponse()

    def _list(self) -> None:
        conn, resp = self._request({}, 60)
        try:
            body = resp.read()
            if resp.status != 200:
                raise ValueError(f"list {self.path}: {resp.status}")
            listing = orjson.loads(body)
        finally:
            conn.close()
        now = time.time()
        if self.synced.is_set():
            self.gaps.append(Interval(self._last, now))
        items = listing.get("items") or []
        listed = {str(item["metadata"].get("uid")) for item in items}
        for uid in [u for u in self._known if u not in listed]:
            self.handler(now, "DELETED", self._known.pop(uid))
        for item in items:
            self._known[str(item["metadata"].get("uid"))] = item
            self.handler(now, "LIST", item)
        self.rv = str(listing["metadata"]["resourceVersion"])
        self._last = now
        self.synced.set()

    def _stream(self) -> None:
        query = {"watch": "1", "allowWatchBookmarks": "true", "resourceVersion": self.rv, "timeoutSeconds": "300"}
        conn, resp = self._request(query, 330)
        try:
            if resp.status == 410:
                self.rv = ""
                return
            if resp.status != 200:
                raise ValueError(f"watch {self.path}: {resp.status}")
            while not self._halt.is_set():
                line = resp.readline()
                now = time.time()
                if not line:
                    return
                event = orjson.loads(line)
                kind, obj = str(event.get("type")), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        self.rv = ""
                        return
                    raise ValueError(f"watch {self.path}: {obj.get('message')}")
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if rv:
                    self.rv = str(rv)
                if kind != "BOOKMARK":
                    uid = str(obj.get("metadata", {}).get("uid"))
                    if kind == "DELETED":
                        self._known.pop(uid, None)
                    else:
                        self._known[uid] = obj
                    self.events += 1
                    self._last = now
                    self.handler(now, kind, obj)
        finally:
            conn.close()


class Replicas:
    """Asklepios' two replicas ("a", "b"), one process at a time each, every process its own identity."""

    def __init__(
        self,
        cp: ControlPlane,
        users: list[tuple[str, str]],
        env: Mapping[str, str],
        log_dir: Path,
    ) -> None:
        self.cp, self.env, self.log_dir = cp, dict(env), log_dir
        self._identities = list(users)  # (user, token), one per process, in order
        self.incarnations: list[Incarnation] = []
        self.controllers: dict[int, Controller] = {}  # incarnation index -> process
        self.current: dict[str, int] = {}  # slot -> incarnation index
        self.lock = threading.RLock()
        self.restarts = 0

    def identities_left(self) -> int:
        return len(self._identities) - len(self.incarnations)

    def start(self, slot: str) -> Incarnation:
        with self.lock:
            index = len(self.incarnations)
            user, token = self._identities[index]
            pod_name = f"soak-{index}"
            kubeconfig = self.cp.kubeconfig_for(token, pod_name)
            env = {**self.env, "POD_NAME": pod_name}
            ctl = Controller(kubeconfig, env, self.log_dir / f"asklepios-{pod_name}.log").start()
            inc = Incarnation(index, slot, user, pod_name, ctl.pid, started=ctl.started_at)
            self.incarnations.append(inc)
            self.controllers[index] = ctl
            self.current[slot] = index
            return inc

    def live(self) -> list[tuple[Incarnation, Controller]]:
        with self.lock:
            return [(self.incarnations[i], self.controllers[i]) for i in self.current.values()]

    def by_holder(self, holder: str) -> tuple[Incarnation, Controller] | None:
        for inc, ctl in self.live():
            if inc.holds(holder) and ctl.proc is not None and ctl.proc.poll() is None:
                return inc, ctl
        return None

    def _finish(self, index: int, how: str, code: int | None) -> None:
        inc = self.incarnations[index]
        self.incarnations[index] = Incarnation(
            inc.index, inc.slot, inc.user, inc.pod_name, inc.pid, inc.started, time.time(), how, code
        )

    def kill(self, inc: Incarnation, sig: int) -> int | None:
        """SIGKILL or SIGTERM one process; returns its exit status (None if it would not exit)."""
        ctl = self.controllers[inc.index]
        assert ctl.proc is not None
        with self.lock:  # out of its slot first: reap() must not take this exit for a crash and start another
            if self.current.get(inc.slot) == inc.index:
                del self.current[inc.slot]
        ctl.proc.send_signal(sig)
        try:
            code: int | None = ctl.proc.wait(30)
        except subprocess.TimeoutExpired:
            ctl.proc.kill()
            ctl.proc.wait(5)
            code = None
        with self.lock:
            self._finish(inc.index, "sigkill" if sig == signal.SIGKILL else "sigterm", code)
        return code

    def reap(self) -> list[Incarnation]:
        """Processes that exited by themselves since the last look (marked "died", slot freed)."""
        died = []
        with self.lock:
            for slot, index in list(self.current.items()):
                ctl = self.controllers[index]
                if ctl.proc is not None and ctl.proc.poll() is not None:
                    self._finish(index, "died", ctl.proc.returncode)
                    del self.current[slot]
                    died.append(self.incarnations[index])
        return died

    def stop_all(self) -> None:
        """SIGTERM every process still running (the end of the soak); each must exit 0."""
        with self.lock:
            running = [
                (self.incarnations[i], ctl)
                for i, ctl in self.controllers.items()
                if ctl.proc is not None and ctl.proc.poll() is None
            ]
        for inc, ctl in running:
            code = ctl.stop(timeout=30)
            with self.lock:
                self._finish(inc.index, "end", code)
                self.current.pop(inc.slot, None)
