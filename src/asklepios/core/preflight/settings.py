"""Preflight findings about the settings alone: unknown variables and running without fencing.

They need no cluster: `asklepios check` prints them first, and `asklepios run` logs
each once at start-up, so a typo or an unfenced installation is seen where the
operator looks in either case.
"""

from __future__ import annotations

from collections.abc import Iterable

from asklepios.core.preflight.findings import FENCING, Finding, warning

CONFIG = "config"
UNFENCED = (
    "off: a running node cut off from the apiserver and from Asklepios cannot be told from a dead one "
    "in every network: a firewall that drops the probe, or a router answering 'host unreachable' for the node, "
    "looks like no answer, and the node would be tainted while it may still write to its volumes; "
    "only fencing closes that"
)
UNFENCED_TODO = (
    "set ASKLEPIOS_FENCING=redfish with the BMC inventory (README 'Is it safe?', docs/install.md), "
    "or accept that risk for nodes whose network you trust"
)


def unfenced_finding() -> Finding:
    """The warning for ASKLEPIOS_FENCING=off: what remains possible without fencing."""
    return warning(FENCING, UNFENCED, UNFENCED_TODO)


def unknown_variable_findings(warnings: Iterable[str]) -> list[Finding]:
    """A warning per unknown ASKLEPIOS_* variable (the config's own message, naming the closest one)."""
    return [warning(CONFIG, text, "fix the variable's name, or remove it") for text in warnings]


def settings_findings(*, fencing_on: bool, unknown: Iterable[str]) -> list[Finding]:
    """Unknown variables first, then the unfenced warning."""
    found = unknown_variable_findings(unknown)
    if not fencing_on:
        found.append(unfenced_finding())
    return found
