"""Preflight rules about fencing: every node's BMC annotation, the Secret, BMCs answering."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import attrs

from asklepios.core.fencing import FencingError, bmc_target, check_system_url
from asklepios.core.node import NodeView
from asklepios.core.preflight.findings import (
    BMC_SAMPLE,
    FENCING,
    Finding,
    Status,
    failure,
    have,
    names,
    ok,
    plural,
    warning,
)
from asklepios.core.records import BMC_ANNOTATION

# --- fencing ---------------------------------------------------------------------------


def sample(items: Sequence[str], size: int = BMC_SAMPLE) -> list[str]:
    """All of `items` when there are at most `size`, else `size` of them spread evenly."""
    if len(items) <= size:
        return list(items)
    return [items[i * len(items) // size] for i in range(size)]


def fencing_findings(
    views: Sequence[NodeView], secret: Mapping[str, str] | None, secret_error: str, secret_name: str
) -> tuple[list[Finding], list[NodeView]]:
    """Annotations, URLs and credentials of the kickable nodes; and the nodes whose BMC can be asked."""
    out: list[Finding] = []
    missing = sorted(v.name for v in views if not v.bmc)
    if missing:
        out.append(
            failure(
                FENCING,
                f"{len(missing)} of {plural(len(views), 'watched node')} {have(len(missing))} no {BMC_ANNOTATION} "
                f"annotation, so their kickouts are held (no BMC): {names(missing)}",
                f"annotate each with its Redfish System URL: kubectl annotate node NODE "
                f"{BMC_ANNOTATION}=https://<bmc>/redfish/v1/Systems/<id>",
            )
        )
    bad: list[str] = []
    usable: list[NodeView] = []
    for view in views:
        if not view.bmc:
            continue
        try:
            check_system_url(view.bmc)
        except FencingError as exc:
            bad.append(f"{view.name}: {exc}")
            continue
        usable.append(view)
    if bad:
        out.append(failure(FENCING, f"bad {BMC_ANNOTATION}: {names(bad)}", f"fix the nodes' {BMC_ANNOTATION}"))
    if secret is None:
        out.append(
            failure(
                FENCING,
                secret_error,
                f"create the Secret {secret_name} with username and password (per node: NODE.username, "
                "NODE.password), and ca.crt for a BMC certificate of your own CA",
            )
        )
        return out, []
    no_credentials = []
    for view in usable:
        try:
            bmc_target(view.name, view.bmc, dict(secret), insecure=False)
        except FencingError:
            no_credentials.append(view.name)
    if no_credentials:
        out.append(
            failure(
                FENCING,
                f"the Secret {secret_name} has no credentials for {names(no_credentials)}",
                "add username and password (or NODE.username and NODE.password) to it",
            )
        )
    return out, [v for v in usable if v.name not in no_credentials]


@attrs.frozen
class PowerSeen:
    """What one sampled BMC answered: its PowerState, or the error."""

    node: NodeView
    power: str = ""
    error: str = ""


def bmc_findings(seen: Sequence[PowerSeen], total: int, secret_name: str, *, insecure: bool) -> list[Finding]:
    """The sampled BMCs: each must answer, and a Ready node's BMC must not say Off (a wrong annotation)."""
    out: list[Finding] = []
    for item in seen:
        if item.error:
            out.append(
                failure(
                    FENCING,
                    f"the BMC of {item.node.name} did not answer: {item.error}",
                    f"check its address ({BMC_ANNOTATION}), the credentials in the Secret {secret_name} and "
                    "its certificate (ca.crt in the Secret)",
                )
            )
        elif item.power == "Off" and item.node.ready.is_ready:
            out.append(
                failure(
                    FENCING,
                    f"{item.node.name} is Ready but its BMC says PowerState Off: {BMC_ANNOTATION} "
                    "points at another machine? Fencing would take that for a confirmed power-off",
                    f"fix the node's {BMC_ANNOTATION} annotation",
                )
            )
    if insecure:
        out.append(
            warning(
                FENCING,
                "ASKLEPIOS_FENCING_INSECURE=true: BMC certificates are not verified",
                f"put the BMCs' CA certificate into the Secret {secret_name} (ca.crt) and turn it off",
            )
        )
    answered = [item for item in seen if not item.error]
    if answered and not any(f.status is Status.FAILURE for f in out):
        states = Counter(item.power for item in answered)
        power = ", ".join(f"{state} {count}" for state, count in sorted(states.items()))
        out.insert(
            0,
            ok(FENCING, f"{len(answered)} of {plural(total, 'BMC')} asked answered (PowerState: {power})"),
        )
    return out
