"""The `asklepios` command: `run`, `status`, `check`, `version`, `pause`, `resume`, `release`, `adopt`.

Exit status: 0 done, 1 failed, 2 bad configuration or usage. Settings, flags and
the kubeconfig are validated before any connection to the apiserver is made, and
every such problem is one line on stderr. An apiserver that `status` or `check`
cannot reach is one line too, with exit 1 (`run` keeps retrying instead: an
unreachable apiserver is no reason for the controller to stop).
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
from asklepios.config.settings import unknown_variables, variables
from asklepios.core.preflight import Finding, exit_status
from asklepios.core.preflight.access import ServiceAccount
from asklepios.core.preflight.settings import settings_findings
from asklepios.engine.clock import SYSTEM_CLOCK
from asklepios.engine.commands import Commands, Refused, operator
from asklepios.engine.controller import run_controller
from asklepios.engine.preflight import run_checks
from asklepios.engine.startup import check_version, server_version, startup_checks
from asklepios.engine.status import NodeRow, describe_record, followed_nodes, node_rows
from asklepios.engine.statuswatch import StatusWatch
from asklepios.kube.client import ApiError, KubeClient
from asklepios.kube.kubeconfig import KubeConfigError, Loaded, load, resolve_source
from asklepios.kube.nodes import NodeApi
from asklepios.kube.records import RecordApi
from asklepios.observe.health import Health, serve_http
from asklepios.observe.log import setup_logging

log = logging.getLogger("asklepios")


async def _run(settings: Settings, source: Loaded) -> int:
    health = Health()
    async with KubeClient.connect(source) as client:
        version = await check_version(client)
        if version.blocks_start:  # the only check that stops it: one line, like a bad setting
            print(f"asklepios: {version.message} → {version.todo}", file=sys.stderr)
            return 2
        _log_settings_warnings(settings, fencing_too=True)
        async with serve_http(health, settings.http_port), anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, tg.cancel_scope)
            await startup_checks(settings, client, version)
            await run_controller(settings, client, health)
    return 0


async def _check(settings: Settings, source: Loaded, subject: ServiceAccount | None) -> list[Finding]:
    async with KubeClient.connect(source) as client:
        return [await server_version(client), *await run_checks(settings, client, subject=subject)]


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


async def _status(settings: Settings, source: Loaded, output: str) -> list[str]:
    async with KubeClient.connect(source) as client:
        rows = await node_rows(settings, client, SYSTEM_CLOCK, await followed_nodes(settings, client))
    if output == "json":
        return [orjson.dumps([row.to_json() for row in rows], option=orjson.OPT_INDENT_2).decode()]
    return format_rows(rows)


async def _watch_status(settings: Settings, source: Loaded) -> None:
    def draw(header: list[str], rows: list[NodeRow]) -> None:
        # home the cursor, draw, clear what is left of an earlier, longer screen
        lines = [*header, "", *format_rows(rows)]
        sys.stdout.write("\x1b[H" + "".join(f"{line}\x1b[K\n" for line in lines) + "\x1b[J")
        sys.stdout.flush()

    sys.stdout.write("\x1b[2J")
    async with KubeClient.connect(source) as client:
        await StatusWatch(settings, client, SYSTEM_CLOCK, draw).run()


def _commands(settings: Settings, client: KubeClient) -> Commands:
    records = RecordApi(client, settings.namespace)
    return Commands(records, records, NodeApi(client), SYSTEM_CLOCK.now)


async def _operate(settings: Settings, source: Loaded, args: argparse.Namespace) -> str:
    """pause, resume, release NODE, adopt NODE: one line saying what was done."""
    async with KubeClient.connect(source) as client:
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
        await commands.adopt(args.node, operator())
        return f"{args.node}: adopted; the kickin will lift its cordon and taint once it is Ready"


async def _status_of(settings: Settings, source: Loaded, node: str) -> list[str]:
    """`asklepios status NODE`: the node's line, then its record and the evidence, for a person at 3 a.m."""
    async with KubeClient.connect(source) as client:
        book = await followed_nodes(settings, client)
        view = book.views.get(node)
        rows = [row for row in await node_rows(settings, client, SYSTEM_CLOCK, book) if row.name == node]
        if view is None:  # neither watched nor kicked out: its record, if any, all the same
            view = (await _commands(settings, client).book()).attach(await NodeApi(client).get(node))
        return [*format_rows(rows), "", *describe_record(view)]


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


KUBECONFIG_HELP = (
    "kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else the in-cluster service account, "
    "as kubectl chooses)"
)


def _connection_flags(parser: argparse.ArgumentParser, default: object) -> None:
    """`--kubeconfig` and `--context`, accepted before the command and after it."""
    parser.add_argument("--kubeconfig", metavar="FILE", default=default, help=KUBECONFIG_HELP)
    parser.add_argument(
        "--context", metavar="NAME", default=default, help="kubeconfig context (default: its current-context)"
    )


def variables_help() -> str:
    """The settings, for `asklepios run --help`: every variable with its default."""
    width = max(len(name) for name, _ in variables())
    rows = [f"  {name:<{width}}  {default or '(empty)'}" for name, default in variables()]
    return (
        "environment variables and their defaults (a bad value: one line, exit 2;\n"
        "an unknown ASKLEPIOS_* name: a warning naming the closest one):\n"
        + "\n".join(rows)
        + "\n\nASKLEPIOS_NAMESPACE (empty) means POD_NAMESPACE, else kube-system."
    )


def command(sub: argparse._SubParsersAction, name: str, help_text: str, **kw: object) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """A subcommand with the connection flags (every command has them)."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, **kw)  # type: ignore[arg-type]
    _connection_flags(parser, argparse.SUPPRESS)  # SUPPRESS: a value given before the command survives
    return parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asklepios",
        description="Kubernetes node auto-healer: the out-of-service taint for dead nodes, removed when they are back.",
        epilog="Settings are ASKLEPIOS_* environment variables: `asklepios run --help` lists them with their "
        "defaults. Exit status: 0 done, 1 failed, 2 bad configuration or usage.",
    )
    parser.add_argument("--version", action="version", version=f"asklepios {__version__}")
    _connection_flags(parser, None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    command(
        sub,
        "run",
        "run the controller (the container's command)",
        description="Run the controller. Its settings are environment variables.",
        epilog=variables_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status = command(sub, "status", "print each watched node's state and countdown")
    status.add_argument("node", nargs="?", help="one node: its line, then its record and the evidence of its kickout")
    status.add_argument("-o", "--output", choices=("table", "json"), default="table")
    status.add_argument(
        "-w", "--watch", action="store_true", help="a live view, redrawn on every change (Ctrl-C quits)"
    )
    check = command(
        sub,
        "check",
        "preflight: check the cluster against the settings, change nothing",
        description="Check the cluster against the settings (the same ASKLEPIOS_* variables as `asklepios run`, "
        "see `asklepios run --help`) and change nothing: one line per finding (✔ ok, ! warning, ✘ failure) with "
        "what to do. Exit 0: nothing failed; 1: something failed or the apiserver cannot be reached; "
        "2: bad configuration.",
    )
    check.add_argument(
        "--as-serviceaccount",
        metavar="NAMESPACE/NAME",
        help="review the permissions of this ServiceAccount (SubjectAccessReview; you need `create "
        "subjectaccessreviews`) instead of your own, e.g. kube-system/asklepios",
    )
    command(sub, "version", "print the version")
    pause = command(sub, "pause", "no kickout, fencing, power action or eviction starts (kickins go on)")
    pause.add_argument("--reason", default="", help="why: shown by `asklepios status` and in KickoutHeld Events")
    command(sub, "resume", "lift the pause")
    release = command(sub, "release", "end Asklepios' kickout of NODE now (undo what its record says)")
    release.add_argument("node")
    release.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the controller (default 60)")
    adopt = command(sub, "adopt", "take over a kickout left by the Go Asklepios (NODE cordoned and tainted)")
    adopt.add_argument("node")
    return parser


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _leaf(exc: BaseException) -> BaseException:
    """The one error inside (nested) exception groups of one error, else `exc` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _fail(message: str, code: int) -> int:
    print(f"asklepios: {message}", file=sys.stderr)
    return code


def _log_settings_warnings(settings: Settings, *, fencing_too: bool) -> None:
    """Unknown variables (and for `run` the unfenced warning), once each, as log lines."""
    for finding in settings_findings(fencing_on=settings.fencing_on or not fencing_too, unknown=unknown_variables()):
        log.warning(f"{finding.check}: {finding.message}", extra={"check": finding.check, "todo": finding.todo})


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help and --version
        return int(exc.code or 0)
    if args.command == "version":
        print(f"asklepios {__version__}")
        return 0
    try:
        settings = load_settings()
        subject = ServiceAccount.parse(args.as_serviceaccount) if getattr(args, "as_serviceaccount", None) else None
    except ConfigError as exc:
        return _fail(str(exc), 2)
    except ValueError as exc:
        return _fail(f"--as-serviceaccount {args.as_serviceaccount!r} is not allowed: expected {exc}", 2)
    try:  # loaded before anything is logged or sent: a kubeconfig that cannot work is one line, exit 2
        source = anyio.run(load, resolve_source(args.kubeconfig, args.context))
    except KubeConfigError as exc:
        return _fail(str(exc), 2)
    setup_logging(settings.log_format, settings.log_level)
    try:
        if args.command == "check":
            findings = anyio.run(_check, settings, source, subject)
            found = [*settings_findings(fencing_on=settings.fencing_on, unknown=unknown_variables()), *findings]
            print("\n".join(format_finding(f) for f in found))
            return exit_status(found)
        if args.command == "status":
            _log_settings_warnings(settings, fencing_too=False)
        if args.command == "status" and args.watch:
            anyio.run(_watch_status, settings, source)
        elif args.command == "status" and args.node:
            print("\n".join(anyio.run(_status_of, settings, source, args.node)))
        elif args.command == "status":
            print("\n".join(anyio.run(_status, settings, source, args.output)))
        elif args.command in ("pause", "resume", "release", "adopt"):
            print(anyio.run(_operate, settings, source, args))
        else:
            return anyio.run(_run, settings, source)
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        error = _leaf(exc)
        if isinstance(error, Refused):
            return _fail(f"{args.command}: {error}", 1)
        if isinstance(error, KubeConfigError):
            return _fail(str(error), 2)
        if isinstance(error, ApiError) and args.command == "run":  # the controller's log, as every other line
            log.error("apiserver request failed", extra={"error": _one_line(error)})
            return 1
        if isinstance(error, ApiError) and error.status == 0:
            return _fail(f"cannot reach the apiserver: {_one_line(error)}", 1)
        if isinstance(error, ApiError):
            return _fail(f"the apiserver refused: {_one_line(error)}", 1)
        if args.command == "run":
            log.exception("failed")
        else:
            log.debug("failed", exc_info=True)
            return _fail(
                f"failed: {type(error).__name__}: {_one_line(error)} (ASKLEPIOS_LOG_LEVEL=debug shows where)", 1
            )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
