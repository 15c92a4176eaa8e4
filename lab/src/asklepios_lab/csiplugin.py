"""The lab's CSI controller plugin: attach/detach bookkeeping behind the real external-attacher.

The upstream chain for a ReadWriteOnce volume is: the attach-detach controller (in
kube-controller-manager) creates a VolumeAttachment, the CSI external-attacher calls
the driver's ``ControllerPublishVolume`` and marks it attached; detaching deletes it
through ``ControllerUnpublishVolume``. The lab runs the real controller and the real
attacher; this module is the driver, a process of its own on a unix socket::

    python -m asklepios_lab.csiplugin --socket csi.sock --calls calls.jsonl [--unpublish-delay FILE]

It implements the Identity service (GetPluginInfo, GetPluginCapabilities with
CONTROLLER_SERVICE, Probe) and the controller calls of PUBLISH_UNPUBLISH_VOLUME. Like a
real single-writer backend it refuses to publish a volume to a second node while it is
published to another (FAILED_PRECONDITION), so a volume is never attached twice. Every
call is appended to ``--calls`` as one JSON line (time, call, volume, node, result), the
driver's own record for tests. ``--unpublish-delay`` names a file holding seconds that
every unpublish of a published volume waits first (read at each call; no file: no wait),
to make detaching slow; a repeated unpublish (the attacher retries after its --timeout)
of a volume no longer published returns at once.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from .csi import DRIVER, csi_pb2

VERSION = "0.1.0"


class Plugin:
    """The driver's state (volume -> node it is published to) and its call record."""

    def __init__(self, calls: Path, unpublish_delay: Path | None = None) -> None:
        self.calls = calls
        self.unpublish_delay = unpublish_delay
        self.published: dict[str, str] = {}
        self._lock = threading.Lock()

    def record(self, call: str, volume: str = "", node: str = "", result: str = "ok") -> None:
        line = {"time": time.time(), "call": call, "volume": volume, "node": node, "result": result}
        with self._lock, self.calls.open("a") as out:
            out.write(json.dumps(line) + "\n")

    # ------------------------------------------------------------------ Identity

    def get_plugin_info(self, req: csi_pb2.GetPluginInfoRequest, ctx: grpc.ServicerContext) -> Any:
        return csi_pb2.GetPluginInfoResponse(name=DRIVER, vendor_version=VERSION)

    def get_plugin_capabilities(self, req: csi_pb2.GetPluginCapabilitiesRequest, ctx: grpc.ServicerContext) -> Any:
        service = csi_pb2.PluginCapability.Service(type=csi_pb2.PluginCapability.Service.CONTROLLER_SERVICE)
        return csi_pb2.GetPluginCapabilitiesResponse(capabilities=[csi_pb2.PluginCapability(service=service)])

    def probe(self, req: csi_pb2.ProbeRequest, ctx: grpc.ServicerContext) -> Any:
        response = csi_pb2.ProbeResponse()
        response.ready.value = True
        return response

    # ---------------------------------------------------------------- Controller

    def controller_get_capabilities(
        self, req: csi_pb2.ControllerGetCapabilitiesRequest, ctx: grpc.ServicerContext
    ) -> Any:
        rpc = csi_pb2.ControllerServiceCapability.RPC(
            type=csi_pb2.ControllerServiceCapability.RPC.PUBLISH_UNPUBLISH_VOLUME
        )
        return csi_pb2.ControllerGetCapabilitiesResponse(capabilities=[csi_pb2.ControllerServiceCapability(rpc=rpc)])

    def controller_publish_volume(self, req: csi_pb2.ControllerPublishVolumeRequest, ctx: grpc.ServicerContext) -> Any:
        volume, node = req.volume_id, req.node_id
        with self._lock:
            holder = self.published.get(volume)
            if holder is None:
                self.published[volume] = node
        if holder not in (None, node):
            self.record("ControllerPublishVolume", volume, node, f"FAILED_PRECONDITION: published to {holder}")
            ctx.abort(grpc.StatusCode.FAILED_PRECONDITION, f"volume {volume} is published to node {holder}")
        self.record("ControllerPublishVolume", volume, node)
        return csi_pb2.ControllerPublishVolumeResponse(publish_context={"node": node})

    def controller_unpublish_volume(
        self, req: csi_pb2.ControllerUnpublishVolumeRequest, ctx: grpc.ServicerContext
    ) -> Any:
        volume, node = req.volume_id, req.node_id
        with self._lock:
            published = self.published.get(volume) == node
        delay = _seconds(self.unpublish_delay)
        if published and delay > 0:  # a repeat of a finished unpublish returns at once, as it should
            time.sleep(delay)
        with self._lock:
            if self.published.get(volume) == node or not node:
                self.published.pop(volume, None)
        self.record("ControllerUnpublishVolume", volume, node)
        return csi_pb2.ControllerUnpublishVolumeResponse()


def _seconds(path: Path | None) -> float:
    try:
        return float(path.read_text()) if path is not None else 0.0
    except (OSError, ValueError):
        return 0.0


def _unary(fn: Callable[[Any, grpc.ServicerContext], Any], request: Any) -> grpc.RpcMethodHandler[Any, Any]:
    return grpc.unary_unary_rpc_method_handler(
        fn, request_deserializer=request.FromString, response_serializer=lambda m: m.SerializeToString()
    )


def handlers(plugin: Plugin) -> list[grpc.GenericRpcHandler]:
    """The csi.v1.Identity and csi.v1.Controller services of ``plugin``."""
    identity = {
        "GetPluginInfo": _unary(plugin.get_plugin_info, csi_pb2.GetPluginInfoRequest),
        "GetPluginCapabilities": _unary(plugin.get_plugin_capabilities, csi_pb2.GetPluginCapabilitiesRequest),
        "Probe": _unary(plugin.probe, csi_pb2.ProbeRequest),
    }
    controller = {
        "ControllerGetCapabilities": _unary(
            plugin.controller_get_capabilities, csi_pb2.ControllerGetCapabilitiesRequest
        ),
        "ControllerPublishVolume": _unary(plugin.controller_publish_volume, csi_pb2.ControllerPublishVolumeRequest),
        "ControllerUnpublishVolume": _unary(
            plugin.controller_unpublish_volume, csi_pb2.ControllerUnpublishVolumeRequest
        ),
    }
    return [
        grpc.method_handlers_generic_handler("csi.v1.Identity", identity),
        grpc.method_handlers_generic_handler("csi.v1.Controller", controller),
    ]


def serve(socket: Path, plugin: Plugin) -> grpc.Server:
    """Start a gRPC server for ``plugin`` on unix socket ``socket`` (replacing a stale one)."""
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415 - only the server needs it

    socket.unlink(missing_ok=True)
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers(handlers(plugin))
    server.add_insecure_port(f"unix://{socket}")
    server.start()
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m asklepios_lab.csiplugin", description=__doc__)
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--calls", type=Path, required=True)
    parser.add_argument("--unpublish-delay", type=Path, default=None)
    args = parser.parse_args(argv)
    server = serve(args.socket, Plugin(args.calls, args.unpublish_delay))
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(f"{DRIVER} serving on unix://{args.socket}", flush=True)
    done.wait()
    server.stop(grace=1).wait()


if __name__ == "__main__":
    main()
