"""Preflight rules about fencing: the inventory in the Secret, BMCs answering, and each the node's own machine.

The fencing Secret is the whole inventory (`<node>.url`, credentials, `ca.crt`): every
kickable node needs a row with an https Redfish System URL and credentials, and a
sample of BMCs must answer with a System UUID that names the node's machine. The old
`asklepios.io/bmc` annotation is no longer read; a node still carrying it gets a
warning, since anyone who reads it would be misled about which machine is fenced.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import attrs

from asklepios.core.fencing import (
    SYSTEM_URL_FORM,
    FencingError,
    bmc_target,
    check_system_url,
    known_uuid,
    mismatch,
    url_key,
)
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


def annotation_finding(views: Sequence[NodeView]) -> Finding | None:
    """A warning naming the nodes that still carry `asklepios.io/bmc` (never read: the Secret is the inventory)."""
    carrying = sorted(v.name for v in views if v.bmc_annotation)
    if not carrying:
        return None
    return warning(
        FENCING,
        f"{plural(len(carrying), 'node')} still {have(len(carrying))} the {BMC_ANNOTATION} annotation, which "
        f"Asklepios no longer reads (the BMC URL comes only from the fencing Secret): {names(carrying)}",
        f"put each URL into the fencing Secret as NODE.url, then remove the annotation: "
        f"kubectl annotate node NODE {BMC_ANNOTATION}-",
    )


def fencing_findings(
    views: Sequence[NodeView], secret: Mapping[str, str] | None, secret_error: str, secret_name: str
) -> tuple[list[Finding], list[NodeView]]:
    """The inventory rows of the kickable nodes (URL, https, credentials); and the nodes whose BMC can be asked."""
    out: list[Finding] = []
    if secret is None:
        out.append(
            failure(
                FENCING,
                secret_error,
                f"create the Secret {secret_name} with NODE.url ({SYSTEM_URL_FORM}) for every node, username "
                "and password (per node: NODE.username, NODE.password), and ca.crt for a BMC certificate of "
                "your own CA",
            )
        )
        return out, []
    namespace, _, name = secret_name.partition("/")
    missing: list[str] = []
    bad: list[str] = []
    no_credentials: list[str] = []
    usable: list[NodeView] = []
    for view in views:
        key = url_key(view.name)
        if not secret.get(key, "").strip():
            missing.append(view.name)
            continue
        try:
            check_system_url(secret[key], key)
        except FencingError as exc:
            bad.append(str(exc))
            continue
        try:
            bmc_target(view.name, secret, insecure=False)
        except FencingError:
            no_credentials.append(view.name)
            continue
        usable.append(view)
    if missing:
        out.append(
            failure(
                FENCING,
                f"{len(missing)} of {plural(len(views), 'watched node')} {have(len(missing))} no NODE.url in the "
                f"Secret {secret_name}, so their kickouts are held (no BMC): {names(missing)}",
                f"add each node's Redfish System URL: kubectl -n {namespace} patch secret {name} --type merge "
                f"""-p '{{"stringData":{{"NODE.url":"{SYSTEM_URL_FORM}"}}}}'""",
            )
        )
    if bad:
        out.append(
            failure(
                FENCING,
                f"bad URLs in the Secret {secret_name}: {names(bad)}",
                f"make each NODE.url an https Redfish System URL: {SYSTEM_URL_FORM}",
            )
        )
    if no_credentials:
        out.append(
            failure(
                FENCING,
                f"the Secret {secret_name} has no credentials for {names(no_credentials)}",
                "add username and password (or NODE.username and NODE.password) to it",
            )
        )
    return out, usable


@attrs.frozen
class PowerSeen:
    """What one sampled BMC answered: its PowerState and System UUID, or the error."""

    node: NodeView
    power: str = ""
    error: str = ""
    uuid: str = ""  # the System's UUID; "" when it reports none
    url: str = ""  # the System URL asked


def bmc_findings(seen: Sequence[PowerSeen], total: int, secret_name: str, *, insecure: bool) -> list[Finding]:
    """The sampled BMCs: each must answer, name the node's own machine, and not say Off for a Ready node."""
    out: list[Finding] = []
    compared = 0
    for item in seen:
        node = item.node.name
        wrong = "" if item.error else mismatch(item.uuid, node, item.node.system_uuid, item.url or url_key(node))
        if item.error:
            out.append(
                failure(
                    FENCING,
                    f"the BMC of {node} did not answer: {item.error}",
                    f"check its address ({node}.url), the credentials in the Secret {secret_name} and "
                    "its certificate (ca.crt in the Secret)",
                )
            )
        elif wrong:
            out.append(
                failure(
                    FENCING,
                    f"{wrong}; its kickouts would be held (BMC mismatch)",
                    f"fix {node}.url in the Secret {secret_name}: the System URL of {node}'s own BMC",
                )
            )
        elif item.power == "Off" and item.node.ready.is_ready:
            out.append(
                failure(
                    FENCING,
                    f"{node} is Ready but its BMC says PowerState Off: {node}.url points at another machine? "
                    "Fencing would take that for a confirmed power-off",
                    f"fix {node}.url in the Secret {secret_name}",
                )
            )
        else:
            compared += known_uuid(item.uuid) and known_uuid(item.node.system_uuid)
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
        same = f"System UUID of the node's own machine: {compared} of {len(answered)}"
        asked = f"{len(answered)} of {plural(total, 'BMC')} asked answered"
        out.insert(0, ok(FENCING, f"{asked} (PowerState: {power}); {same}"))
        if compared < len(answered):
            out.append(
                warning(
                    FENCING,
                    f"{len(answered) - compared} of the BMCs asked could not be checked against their node's "
                    "machine (no System UUID from the BMC, or no status.nodeInfo.systemUUID on the node)",
                    "make sure each NODE.url is that node's own BMC: a wrong row powers off another machine",
                )
            )
    return out
