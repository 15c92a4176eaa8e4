"""Fencing values: where a node's BMC is, with which credentials, and whether it is that node's machine.

The whole inventory is one Secret (ASKLEPIOS_FENCING_SECRET), which only admins and
Asklepios can read: `<node>.url` is the node's Redfish System URL, the credentials are
`<node>.username`/`<node>.password` else the shared `username`/`password`, and `ca.crt`
is optional. Nothing a node writes about itself (annotations, status) picks the machine
that is powered off, nor the server that receives the credentials. Parsing is pure, so a
missing row or a bad URL becomes a clear `FencingError` before any request is sent.

Where the BMC's System `UUID` and the node's `status.nodeInfo.systemUUID` are both
known, `same_machine` must hold before a ForceOff: it catches an inventory row that
names the neighbouring server.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

import attrs

_SYSTEM_PATH = re.compile(r"^/redfish/v1/Systems/[^/]+/?$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
SYSTEM_URL_FORM = "https://<bmc>/redfish/v1/Systems/<id>"
# What firmware reports when no UUID was ever set: not an identity, so nothing to compare.
_PLACEHOLDERS = frozenset({"00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff"})


class FencingError(Exception):
    """Fencing could not be done; str() is what the FencingFailed Event says."""


class NoBmcError(FencingError):
    """The inventory has no `<node>.url` for this node: its kickout is held, reason `no BMC`."""


def url_key(node: str) -> str:
    """The Secret's key holding `node`'s Redfish System URL."""
    return f"{node}.url"


@attrs.frozen
class BmcTarget:
    """One node's BMC: its System URL and how to talk to it."""

    system_url: str  # https://<bmc>/redfish/v1/Systems/<id>
    username: str = attrs.field(repr=False)
    password: str = attrs.field(repr=False)
    ca_pem: str = attrs.field(default="", repr=False)  # the Secret's ca.crt; empty: system CAs
    insecure: bool = False  # ASKLEPIOS_FENCING_INSECURE: no TLS verification

    @property
    def base_url(self) -> str:
        parts = urlsplit(self.system_url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def system_path(self) -> str:
        return urlsplit(self.system_url).path.rstrip("/")


def check_system_url(raw: str, key: str = "url") -> str:
    """The inventory's URL, or FencingError saying what is wrong with it (`key` names where it came from)."""
    url = raw.strip()
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or not _SYSTEM_PATH.match(parts.path):
        raise FencingError(f"{key}={raw[:200]!r} is not {SYSTEM_URL_FORM}")
    return url


def bmc_target(node: str, secret: Mapping[str, str], *, insecure: bool, where: str = "the fencing Secret") -> BmcTarget:
    """The node's BMC target from the Secret's data (`where` names the Secret in errors)."""
    key = url_key(node)
    raw = secret.get(key, "")
    if not raw.strip():
        raise NoBmcError(f"{where} has no key {key} (the node's Redfish System URL, {SYSTEM_URL_FORM})")
    try:
        url = check_system_url(raw, key)
    except FencingError as exc:
        raise FencingError(f"{where}: {exc}") from None
    username = secret.get(f"{node}.username") or secret.get("username")
    password = secret.get(f"{node}.password") or secret.get("password")
    if not username or not password:
        raise FencingError(f"{where} has neither {node}.username/{node}.password nor username/password")
    return BmcTarget(url, username, password, secret.get("ca.crt", ""), insecure)


# --- same machine ----------------------------------------------------------------------


def _canonical(raw: str) -> str:
    """Lower case, without braces or a `urn:uuid:` prefix; "" when it is no identity at all."""
    text = raw.strip().lower().removeprefix("urn:uuid:").strip("{}")
    return "" if text in _PLACEHOLDERS else text


def smbios_swapped(uuid: str) -> str:
    """`uuid` with its first three fields byte-reversed: how SMBIOS stores them (little-endian).

    An involution on well-formed UUIDs; anything else is returned unchanged.
    """
    text = _canonical(uuid)
    if not _UUID.match(text):
        return text
    first, second, third, rest = text.split("-", 3)

    def flip(field: str) -> str:
        return "".join(reversed([field[i : i + 2] for i in range(0, len(field), 2)]))

    return f"{flip(first)}-{flip(second)}-{flip(third)}-{rest}"


def known_uuid(raw: str) -> bool:
    """Whether `raw` names a machine (not empty, not all zeros or all F)."""
    return bool(_canonical(raw))


def same_machine(bmc_uuid: str, node_uuid: str) -> bool:
    """False only when both UUIDs are known and name different machines.

    Equal ignoring case, or equal once the first three fields of one are byte-swapped
    (one side read the SMBIOS bytes as big-endian, the other as little-endian).
    """
    a, b = _canonical(bmc_uuid), _canonical(node_uuid)
    if not a or not b:
        return True
    return a == b or smbios_swapped(a) == b


def mismatch(bmc_uuid: str, node: str, node_uuid: str, url: str) -> str:
    """The hold's message when `same_machine` fails ("" when it holds)."""
    if same_machine(bmc_uuid, node_uuid):
        return ""
    return (
        f"the BMC at {url} reports System UUID {bmc_uuid.strip()[:64]}, but {node} reports systemUUID "
        f"{node_uuid.strip()[:64]}: {url_key(node)} in the fencing Secret names another machine"
    )
