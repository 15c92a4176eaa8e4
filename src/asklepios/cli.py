"""The `asklepios` command: `run`, `status`, `check`, `version`, `pause`, `resume`, `release`, `adopt`.

Exit status: 0 done, 1 failed, 2 bad configuration or usage. Settings are
validated before any connection to the apiserver is made.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

import anyio
import orjson

from asklepios import __version__
from asklepios.config import ConfigError, Settings, load_settings
from asklepios.core.preflight import Finding, exit_status
from asklepios.engine.clock import SYSTEM_CLOCK
from asklepios.engine.commands import Commands, Refused, operator
from asklepios.engine.controller import run_controller
from asklepios.engine.preflight import check_version, run_checks, startup_checks
from asklepios.engine.status import NodeRow, describe_record, followed_nodes, node_rows
from asklepios.engine.statuswatch import StatusWatch
from asklepios.kube.client import ApiError, KubeClient
from asklepios.kube.nodes import NodeApi
from asklepios.kube.records import RecordApi
from asklepios.observe.health import Health, serve_http
from asklepios.observe.log import setup_logging

log = logging.getLogger("asklepios")


async def _run(settings: Settings) -> int:
    health = Health()
    async with KubeClient.connect() as client:
        version = await check_version(client)
        if version.blocks_start:  # the only check that stops it: one line, like a bad setting
            print(f"asklepios: {version.message} → {version.todo}", file=sys.stderr)
            return 2
        async with serve_http(health, settings.http_port), anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, tg.cancel_scope)
            await startup_checks(settings, client, version)
            await run_controller(settings, client, health)
    return 0


async def _check(settings: Settings) -> list[Finding]:
    async with KubeClient.connect() as client:
        return [await check_version(client), *await run_checks(settings, client)]


def format_finding(finding: Finding) -> str:
    """`✘ rbac: missing: patch nodes (all namespaces), needed for: ... → grant it: ...`."""
    line = f"{finding.status.symbol} {finding.check}: {finding.message}"
    return f"{line} → {finding.todo}" if finding.todo else line


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("stopping", extra={"signal": signal.Signals(signum).name})
            scope.cancel()
            return


async def _status(settings: Settings, output: str) -> list[str]:
    async with KubeClient.connect() as client:
        rows = await node_rows(settings, client, SYSTEM_CLOCK, await followed_nodes(settings, client))
    if output == "json":
        return [orjson.dumps([row.to_json() for row in rows], option=orjson.OPT_INDENT_2).decode()]
    return format_rows(rows)


async def _watch_status(settings: Settings) -> None:
    def draw(header: list[str], rows: list[NodeRow]) -> None:
        # home the cursor, draw, clear what is left of an earlier, longer screen
        lines = [*header, "", *format_rows(rows)]
        sys.stdout.write("\x1b[H" + "".join(f"{line}\x1b[K\n" for line in lines) + "\x1b[J")
        sys.stdout.flush()

    sys.stdout.write("\x1b[2J")
    async with KubeClient.connect() as client:
        await StatusWatch(settings, client, SYSTEM_CLOCK, draw).run()


def _commands(settings: Settings, client: KubeClient) -> Commands:
    records = RecordApi(client, settings.namespace)
    return Commands(records, records, NodeApi(client), SYSTEM_CLOCK.now)


async def _operate(settings: Settings, args: argparse.Namespace) -> str:
    """pause, resume, release NODE, adopt NODE: one line saying what was done."""
    async with KubeClient.connect() as client:
        commands = _commands(settings, client)
        if args.command == "pause":
            pause = await commands.pause(args.reason, operator())
            return f"paused at {pause.since:%Y-%m-%dT%H:%M:%SZ}: no kickout, fencing, power action or eviction starts"
        if args.command == "resume":
            was = await commands.resume()
            return "resumed" if was is not None else "was not paused"
        if args.command == "release":
            kickout = await commands.release(args.node, wait=args.wait)
            return f"{args.node}: kickout of {kickout.at:%Y-%m-%dT%H:%M:%SZ} ended (what it changed was undone)"
        kickout = await commands.adopt(args.node, operator())
        return f"{args.node}: adopted; the kickin will lift its cordon and taint once it is Ready"


async def _status_of(settings: Settings, node: str) -> list[str]:
    """`asklepios status NODE`: the node's line, then its record and the evidence, for a person at 3 a.m."""
    async with KubeClient.connect() as client:
        views = [v for v in await followed_nodes(settings, client) if v.name == node]
        if not views:
            view = (await _commands(settings, client).book()).attach(await NodeApi(client).get(node))
            views = [view]
        rows = await node_rows(settings, client, SYSTEM_CLOCK, views)
        return [*format_rows(rows), "", *describe_record(views[0])]


def format_rows(rows: list[NodeRow]) -> list[str]:
    """The status table: one line per node, the reason and pods after the countdown."""
    lines = [f"{'NODE':<24} {'READY':<8} {'SINCE':<21} {'STATE':<17} {'NEXT ACTION IN':<15} {'POWER':<6} REASON"]
    for row in rows:
        since = row.since.strftime("%Y-%m-%dT%H:%M:%SZ") if row.since else "-"
        left = "-" if row.seconds is None else f"{row.seconds:.0f}s"
        reason = row.reason + (f" [{', '.join(row.pods[:5])}]" if row.pods else "")
        power = row.power.split(" ")[0] if row.power else "-"
        lines.append(
            f"{row.name:<24} {row.ready:<8} {since:<21} {row.state:<17} {left:<15} {power:<6} {reason}".rstrip()
        )
    return lines


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asklepios", description="Kubernetes node auto-healer")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the controller (the container's command)")
    status = sub.add_parser("status", help="print each watched node's state and countdown")
    status.add_argument("node", nargs="?", help="one node: its record and the evidence of its kickout")
    status.add_argument("-o", "--output", choices=("table", "json"), default="table")
    status.add_argument(
        "-w", "--watch", action="store_true", help="a live view, redrawn on every change (Ctrl-C quits)"
    )
    sub.add_parser(
        "check",
        help="preflight: check the cluster against the settings, change nothing",
        description="Check the cluster against the settings and change nothing: one line per finding "
        "(✔ ok, ! warning, ✘ failure) with what to do. Exit 0: nothing failed; 1: something failed; "
        "2: bad configuration.",
    )
    sub.add_parser("version", help="print the version")
    pause = sub.add_parser("pause", help="stop starting kickouts, fencing, power actions and evictions (kickins go on)")
    pause.add_argument("--reason", default="", help="why, for `asklepios status` and the KickoutHeld Events")
    sub.add_parser("resume", help="lift the pause")
    release = sub.add_parser("release", help="end Asklepios' kickout of NODE now (undo what its record says)")
    release.add_argument("node")
    release.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the controller (default 60)")
    adopt = sub.add_parser("adopt", help="take over a kickout left by the Go Asklepios (cordoned and tainted)")
    adopt.add_argument("node")
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
        if args.command == "status" and args.watch:
            anyio.run(_watch_status, settings)
        elif args.command == "status" and args.node:
            print("\n".join(anyio.run(_status_of, settings, args.node)))
        elif args.command == "status":
            print("\n".join(anyio.run(_status, settings, args.output)))
        elif args.command in ("pause", "resume", "release", "adopt"):
            print(anyio.run(_operate, settings, args))
        elif args.command == "check":
            findings = anyio.run(_check, settings)
            print("\n".join(format_finding(f) for f in findings))
            return exit_status(findings)
        else:
            return anyio.run(_run, settings)
    except Refused as exc:
        print(f"asklepios {args.command}: {exc}", file=sys.stderr)
        return 1
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
