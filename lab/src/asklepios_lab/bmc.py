"""A real Redfish BMC for the lab's nodes: sushy-tools' ``sushy-emulator`` with its fake driver.

Asklepios may confirm a node's death with its BMC (PowerState Off) and may power-cycle it,
so the lab runs the upstream Redfish emulator on 127.0.0.1 (TLS with a certificate of the
lab CA, HTTP basic auth from a bcrypt htpasswd file, re-read on every request) and wires
its power state to the node ("physics"):

* The fake driver's system list is fixed at start, so it starts with a pool of systems
  (power On); :meth:`Bmc.attach` hands a never-used one to a node. When the pool runs
  out the emulator restarts with a bigger one. Its state (power, pending transitions) is
  kept in a sqlite file in the lab's directory, so restarts keep every system and mapping.
* Every system has ``external_notifier``: the emulator PUTs the system's JSON to the
  lab's notification server on every change, from inside the request that made it. A
  reset request arrives as ``pending_power`` (``{"power_state": "Off", "apply_time": <int
  epoch s>}``; ForceOff/GracefulShutdown are both "Off", any On is "On", restarts keep
  their name), and is applied up to 11 s later (apply_time is a whole second) by the
  first read of the system. The lab polls systems with a pending transition every 0.5 s
  to make that read happen.
* A notification with power_state Off crashes the node (kwok SIGKILLed, kubelet port
  silent: a connect times out) before the handler answers; On restores it (kwok started, port reopened) without
  waiting for Ready. The emulator serves one request at a time and cannot reach past
  127.0.0.0/8 (:mod:`asklepios_lab.sushy_main`), so no client can read PowerState Off
  before the node is dead, and no Redfish call makes it fetch anything from elsewhere.

:meth:`Bmc.timeline` records both, as the lab saw them, for tests to check ordering.

Every system has a UUID (the Redfish System's ``UUID``, also its id in the URL). A node
attached to a system reports that UUID as its ``status.nodeInfo.systemUUID``, as a
kubelet reads it from SMBIOS (``attach(node, swapped=True)``: with the first three
fields byte-swapped, as some firmware stores them), so Asklepios' same-machine check
passes for a node's own BMC and fails for another's. :meth:`Bmc.inventory` is the
fencing Secret's data: the credentials, ``ca.crt`` and each node's ``<node>.url``.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import importlib.util
import os
import ssl
import sys
import threading
import time
import traceback
import uuid as uuidlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from . import pki as pkimod
from .procs import Proc, free_port, wait_until

POOL_SIZE = 128


@dataclass(frozen=True)
class BmcRecord:
    """What the emulator told the lab: ``kind`` "reset" (value: the pending target) or "power"."""

    time: float  # time.time() when the notification arrived
    kind: str
    value: str


class Bmc:
    """One sushy-emulator for a control plane; ``power_off``/``power_on`` act on a node."""

    def __init__(
        self,
        workdir: Path,
        pki: pkimod.Pki,
        log_dir: Path,
        *,
        power_off: Callable[[str], None],
        power_on: Callable[[str], None],
        report_uuid: Callable[[str, str], None] = lambda node, uuid: None,
        pool_size: int = POOL_SIZE,
        poll_interval: float = 0.5,
    ) -> None:
        self.dir = workdir
        self.ca_cert = pki.ca_cert
        self._pki = pki
        self._power_off, self._power_on = power_off, power_on
        self._report_uuid = report_uuid  # (node, uuid): the node reports it as status.nodeInfo.systemUUID
        self.username, self.password = "lab", uuidlib.uuid4().hex
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self._pool_size, self._poll_interval = pool_size, poll_interval
        self._systems: list[dict[str, Any]] = []  # every system the emulator knows
        self._free: list[str] = []  # uuids never handed out
        self._system_of: dict[str, str] = {}  # node -> uuid (attached)
        self._node_of: dict[str, str] = {}  # uuid -> node (attached)
        self._seen: dict[str, tuple[str | None, Any]] = {}  # uuid -> (power_state, pending_power)
        self._records: dict[str, list[BmcRecord]] = {}
        self._lock = threading.Lock()
        self._ssl = ssl.create_default_context(cafile=str(pki.ca_cert))
        self._notifier = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._notifier.serve_forever, name="lab-bmc-notify", daemon=True),
            threading.Thread(target=self._poll, name="lab-bmc-poll", daemon=True),
        ]
        self.proc = Proc("bmc", [], log_dir / "bmc.log", env=_no_proxy_env())
        self._log = log_dir / "bmc-lab.log"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start (or restart, on the same port and state) the emulator; waits until it answers."""
        if importlib.util.find_spec("sushy_tools") is None:
            raise RuntimeError("sushy-tools is not installed (a dependency of asklepios-lab)")
        cert, key = self.dir / "bmc.crt", self.dir / "bmc.key"
        if not self._systems:  # the first start
            self.dir.mkdir(parents=True, exist_ok=True)
            pkimod.issue_serving_cert(self._pki, "lab-bmc", "IP:127.0.0.1", cert, key)
            self.set_credentials(self.username, self.password)
            self._add_pool()
            for t in self._threads:
                t.start()
        self.proc.argv = [
            sys.executable, "-m", "asklepios_lab.sushy_main", "--config", str(self.dir / "emulator.conf"), "--fake",
            "-i", "127.0.0.1", "-p", str(self.port), "--ssl-certificate", str(cert), "--ssl-key", str(key),
        ]  # fmt: skip
        self.proc.start()
        wait_until(lambda: self._get("/redfish/v1/", auth=False)[0] == 200, 30, "sushy-emulator", alive=[self.proc])

    def stop(self) -> None:
        """Stop the emulator: connects to the BMC are refused until :meth:`start`.

        The lab side keeps running (mappings, timelines, the notification server, the
        poller). ``start()`` brings the emulator back on the same port with the same
        systems, power states and pending transitions (the fake driver keeps them in
        sqlite); one that fell due meanwhile is applied by the first read. If another
        process took the port in between, ``start()`` raises :class:`ProcessDiedError`.
        """
        self.proc.stop(grace=3.0)

    def close(self) -> None:
        """Stop the emulator, the notification server and the poller."""
        self._stopping.set()
        self.stop()
        if self._threads[0].is_alive():
            self._notifier.shutdown()
        self._notifier.server_close()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout=10)

    def set_credentials(self, username: str, password: str) -> None:
        """Replace the only user of the htpasswd file (the emulator reads it per request)."""
        import bcrypt  # noqa: PLC0415 (installed with sushy-tools)

        digest = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()  # 4: ~1 ms per request
        tmp = self.dir / "htpasswd.tmp"
        tmp.write_text(f"{username}:{digest}\n")
        tmp.replace(self.dir / "htpasswd")
        self.username, self.password = username, password

    def _add_pool(self) -> None:
        base = len(self._systems)
        uuids = [str(uuidlib.uuid4()) for _ in range(self._pool_size)]
        self._systems += [
            {"uuid": u, "name": f"lab-system-{base + i}", "power_state": "On", "external_notifier": True, "nics": []}
            for i, u in enumerate(uuids)
        ]
        self._free += uuids
        config = {
            "SUSHY_EMULATOR_FAKE_SYSTEMS": self._systems,
            "SUSHY_EMULATOR_STATE_DIR": str(self.dir / "state"),
            "SUSHY_EMULATOR_AUTH_FILE": str(self.dir / "htpasswd"),
            "EXTERNAL_NOTIFICATION_URL": f"http://127.0.0.1:{self._notifier.server_address[1]}/notify",
        }
        (self.dir / "emulator.conf").write_text("".join(f"{k} = {v!r}\n" for k, v in config.items()))

    # ------------------------------------------------------------------- systems

    def attach(self, node: str, *, swapped: bool = False) -> str:
        """The Redfish System URL of ``node``'s BMC; a fresh system on the first call for ``node``.

        The node then reports the system's UUID as its ``status.nodeInfo.systemUUID``
        (SMBIOS byte order with ``swapped``). When the pool is used up, the emulator
        restarts with a bigger one (a few seconds; systems, their power states and every
        mapping are kept).
        """
        with self._lock:
            if node in self._system_of:
                return self.system_url(node)
            if not self._free:
                self.stop()
                self._add_pool()
                self.start()
            uuid = self._free.pop(0)
            self._system_of[node], self._node_of[uuid] = uuid, node
            self._seen[uuid] = ("On", None)
            self._records[uuid] = []
        self._report_uuid(node, smbios_swapped(uuid) if swapped else uuid)
        return self.system_url(node)

    def system_uuid(self, node: str) -> str:
        """The UUID of ``node``'s system (what its BMC reports as the System's ``UUID``)."""
        return self._system_of[node]

    def inventory(self, nodes: Iterable[str]) -> dict[str, str]:
        """The fencing Secret's data for ``nodes``: credentials, ``ca.crt``, and ``<node>.url`` (attached)."""
        data = {"username": self.username, "password": self.password, "ca.crt": self.ca_cert.read_text()}
        return data | {f"{node}.url": self.attach(node) for node in nodes}

    def detach(self, node: str) -> None:
        """Forget ``node`` (removed from the cluster): no more physics; its system is retired."""
        with self._lock:
            uuid = self._system_of.pop(node, None)
            self._node_of.pop(uuid or "", None)

    def system_url(self, node: str) -> str:
        return f"{self.url}/redfish/v1/Systems/{self._system_of[node]}"

    def power_state(self, node: str) -> str:
        """PowerState of ``node``'s system, read through Redfish (applies a due transition)."""
        status, body = self._get(f"/redfish/v1/Systems/{self._system_of[node]}")
        if status != 200:
            raise RuntimeError(f"BMC GET system of {node} -> {status}: {body[:200]!r}")
        return str(orjson.loads(body)["PowerState"])

    def reset(self, node: str, reset_type: str) -> None:
        """An admin's own power action on ``node``'s system (``ForceOff``, ``On``), through Redfish."""
        path = f"/redfish/v1/Systems/{self._system_of[node]}/Actions/ComputerSystem.Reset"
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self._ssl, timeout=10.0)
        try:
            conn.request("POST", path, body=orjson.dumps({"ResetType": reset_type}), headers=headers)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.status not in (200, 202, 204):
            raise RuntimeError(f"BMC reset {reset_type} of {node} -> {resp.status}: {body[:200]!r}")

    def timeline(self, node: str) -> list[BmcRecord]:
        """Reset requests and power changes of ``node``'s system, oldest first."""
        with self._lock:
            return list(self._records.get(self._system_of.get(node, ""), []))

    # ----------------------------------------------------------------- internals

    def _get(self, path: str, *, auth: bool = True, timeout: float = 5.0) -> tuple[int, bytes]:
        headers = {}
        if auth:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self._ssl, timeout=timeout)
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except OSError:
            return 0, b""
        finally:
            conn.close()

    def _poll(self) -> None:
        """Read each attached system with a pending transition: the fake driver applies it on a read.

        Idle systems are not read: a read costs the single-threaded emulator ~20 ms, and
        a transition is always announced by a notification carrying ``pending_power``.
        """
        while not self._stopping.wait(self._poll_interval):
            with self._lock:
                uuids = [u for u in self._node_of if self._seen[u][1]]
            if self.proc.running():
                for uuid in uuids:
                    self._get(f"/redfish/v1/Systems/{uuid}")

    def notified(self, system: dict[str, Any]) -> None:
        """A change of ``system`` (the emulator's JSON): record it, then power the node off/on."""
        now = time.time()
        with self._lock:
            uuid = system.get("uuid", "")
            node = self._node_of.get(uuid)
            if node is None:
                return
            power, pending = system.get("power_state"), system.get("pending_power")
            old_power, old_pending = self._seen[uuid]
            self._seen[uuid] = (power, pending)
            if pending and pending != old_pending:
                self._records[uuid].append(BmcRecord(now, "reset", str(pending["power_state"])))
            if power == old_power:
                return
            self._records[uuid].append(BmcRecord(now, "power", str(power)))
        (self._power_off if power == "Off" else self._power_on)(node)

    def _log_error(self, what: str) -> None:
        with self._log.open("a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {what}\n{traceback.format_exc()}\n")


def _handler(bmc: Bmc) -> type[http.server.BaseHTTPRequestHandler]:
    class Notification(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                bmc.notified(orjson.loads(body))
                status = 200
            except Exception:
                bmc._log_error(f"notification {body[:300]!r}")
                status = 500
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Notification


def smbios_swapped(uuid: str) -> str:
    """``uuid`` with its first three fields byte-reversed (SMBIOS stores them little-endian)."""
    first, second, third, rest = uuid.split("-", 3)

    def flip(field: str) -> str:
        return "".join(reversed([field[i : i + 2] for i in range(0, len(field), 2)]))

    return f"{flip(first)}-{flip(second)}-{flip(third)}-{rest}"


def _no_proxy_env() -> dict[str, str]:
    """The environment without proxies: the emulator's notifications go straight to 127.0.0.1."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    return {**env, "NO_PROXY": "*", "no_proxy": "*"}
