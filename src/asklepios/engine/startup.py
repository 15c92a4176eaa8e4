"""The checks around the controller's start: the server's version first, then the logged checks.

`asklepios check` and `asklepios run` both read the server's version before
anything else. `check` prints every finding (`engine.preflight`); `run` logs the
warnings and failures of the same checks once, as structured lines, and starts the
controller anyway after STARTUP_TIMEOUT: a check that cannot finish must not keep
the healer from starting.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio

from asklepios.config import Settings
from asklepios.core.preflight import VERSION, Finding, Status, version_finding, warning
from asklepios.engine.preflight import SECTION_TIMEOUT, run_checks
from asklepios.kube.access import AccessApi
from asklepios.kube.client import ApiError, KubeClient

STARTUP_TIMEOUT = 20.0  # seconds `asklepios run` gives the checks before it starts the controller anyway
log = logging.getLogger("asklepios.check")


async def server_version(client: KubeClient) -> Finding:
    """`check`'s first read: the version finding; ApiError when the apiserver cannot be reached.

    An apiserver that does not answer at all is one line and exit 1 for `check`,
    not a screen of "could not check" lines.
    """
    try:
        with anyio.fail_after(SECTION_TIMEOUT):
            seen = await AccessApi(client).version()
    except TimeoutError:
        raise ApiError(0, f"GET /version: no answer within {SECTION_TIMEOUT:.0f} s") from None
    except ApiError as exc:
        if exc.status == 0:
            raise
        return _unknown_version(exc)
    return version_finding(seen.git_version, seen.major, seen.minor)


def _unknown_version(exc: Exception | None) -> Finding:
    return warning(
        VERSION,
        f"could not read the server version: {exc or 'no answer'}",
        "make sure the apiserver answers; Asklepios needs Kubernetes 1.28 or later (1.26 at least)",
    )


async def check_version(client: KubeClient) -> Finding:
    """GET /version; a failure (only `blocks_start`) when the server is older than 1.26."""
    try:
        with anyio.fail_after(SECTION_TIMEOUT):
            seen = await AccessApi(client).version()
    except (ApiError, TimeoutError) as exc:
        return _unknown_version(exc)
    return version_finding(seen.git_version, seen.major, seen.minor)


async def startup_checks(settings: Settings, client: KubeClient, version: Finding) -> None:
    """`asklepios run`, before the controller starts: the checks, logged; never more than STARTUP_TIMEOUT."""
    findings: list[Finding] = []
    with anyio.move_on_after(STARTUP_TIMEOUT):
        findings = await run_checks(settings, client)
    if not findings:
        findings = [
            warning(
                "checks",
                f"the start-up checks did not finish within {STARTUP_TIMEOUT:.0f} s; starting anyway",
                "run `asklepios check` to see them",
            )
        ]
    log_findings([version, *findings])


def log_findings(findings: Sequence[Finding]) -> None:
    """`asklepios run`: every warning and failure once, as a structured line."""
    for finding in findings:
        if finding.status is Status.OK:
            continue
        level = logging.ERROR if finding.status is Status.FAILURE else logging.WARNING
        log.log(
            level,
            f"check {finding.check}: {finding.status.value}",
            extra={
                "check": finding.check,
                "result": finding.status.value,
                "detail": finding.message,
                "todo": finding.todo,
            },
        )
    failed = sum(1 for f in findings if f.status is Status.FAILURE)
    warned = sum(1 for f in findings if f.status is Status.WARNING)
    log.info("checks done", extra={"failures": failed, "warnings": warned, "checks": len(findings)})
