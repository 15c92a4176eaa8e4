"""Fencing values: where a node's BMC is, with which credentials, and what went wrong.

An admin annotates each node with its Redfish System URL (`asklepios.io/bmc`);
the credentials come from one Secret, with per-node keys overriding the shared
ones. Parsing both is pure, so a bad annotation or a missing key becomes a clear
`FencingError` (a `FencingFailed` Event) before any request is sent.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import attrs

_SYSTEM_PATH = re.compile(r"^/redfish/v1/Systems/[^/]+/?$")


class FencingError(Exception):
    """Fencing could not be done; str() is what the FencingFailed Event says."""


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


def check_system_url(raw: str) -> str:
    """The annotation's URL, or FencingError saying what is wrong with it."""
    url = raw.strip()
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or not _SYSTEM_PATH.match(parts.path):
        raise FencingError(f"asklepios.io/bmc={raw!r} is not https://<bmc>/redfish/v1/Systems/<id>")
    return url


def bmc_target(node: str, system_url: str, secret: dict[str, str], *, insecure: bool) -> BmcTarget:
    """The node's BMC target from its annotation and the Secret's data."""
    url = check_system_url(system_url)
    username = secret.get(f"{node}.username") or secret.get("username")
    password = secret.get(f"{node}.password") or secret.get("password")
    if not username or not password:
        raise FencingError(f"the fencing Secret has neither {node}.username/{node}.password nor username/password")
    return BmcTarget(url, username, password, secret.get("ca.crt", ""), insecure)
