"""The `asklepios` command: `run`, `status`, `version`.

Exit status: 0 done, 1 failed, 2 bad configuration or usage. Settings are
validated before any connection to the apiserver is made.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from datetime import UTC, datetime

import anyio

from asklepios import __version__
from asklepios.config import ConfigError, Settings, load_settings
from asklepios.core.guard import hold_reason
from asklepios.core.judge import judge, notready_mark
from asklepios.engine.controller import run_controller
from asklepios.kube.client import ApiError, KubeClient
from asklepios.kube.nodes import NodeApi
from asklepios.observe.health import Health, serve_http
from asklepios.observe.log import setup_logging

log = logging.getLogger("asklepios")


async def _run(settings: Settings) -> None:
    health = Health()
    async with (
        KubeClient.connect() as client,
        serve_http(health, settings.http_port),
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(_stop_on_signal, tg.cancel_scope)
        await run_controller(settings, client, health)


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("stopping", extra={"signal": signal.Signals(signum).name})
            scope.cancel()
            return


async def _status(settings: Settings) -> list[str]:
    async with KubeClient.connect() as client:
        views = await NodeApi(client).list(str(settings.node_selector))
    now = datetime.now(UTC)
    notready = sum(1 for v in views if not v.ready.is_ready)
    hold = "dry run" if settings.dry_run else hold_reason(settings.max_unhealthy, len(views), notready)
    lines = [f"{'NODE':<24} {'READY':<8} {'SINCE':<21} {'STATE':<14} NEXT ACTION IN"]
    for view in sorted(views, key=lambda v: v.name):
        mark = None if view.ready.is_ready else notready_mark(view, None, now)
        verdict = judge(view, now=now, timing=settings.timing, mark=mark, hold=hold)
        since = verdict.since or view.ready_since
        left = verdict.seconds_left(now)
        lines.append(
            f"{view.name:<24} {view.ready.value:<8} "
            f"{since.strftime('%Y-%m-%dT%H:%M:%SZ') if since else '-':<21} "
            f"{verdict.state.value:<14} {'-' if left is None else f'{left:.0f}s'}"
            + (f"  ({verdict.reason})" if verdict.reason else "")
        )
    return lines


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asklepios", description="Kubernetes node auto-healer")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the controller (the container's command)")
    sub.add_parser("status", help="print each watched node's state and countdown")
    sub.add_parser("version", help="print the version")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    if args.command == "version":
        print(f"asklepios {__version__}")
        return 0
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"asklepios: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_format, settings.log_level)
    try:
        if args.command == "status":
            print("\n".join(anyio.run(_status, settings)))
        else:
            anyio.run(_run, settings)
    except ApiError as exc:
        log.error("apiserver request failed", extra={"error": str(exc)})
        return 1
    except Exception:
        log.exception("failed")
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
