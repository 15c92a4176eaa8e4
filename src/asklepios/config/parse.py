"""Converters for setting values: each turns a string into a value or raises ValueError.

The ValueError's message says what is allowed; `settings` adds the variable
name and the value, so every bad setting is reported as one complete line.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from asklepios.core.guard import MaxUnhealthy
from asklepios.core.selector import LabelSelector, parse_selector

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "text")


def boolean(raw: str) -> bool:
    word = raw.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError("true or false")


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    allowed = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"

    def parse(raw: str) -> int:
        try:
            value = int(raw.strip(), 10)
        except ValueError:
            raise ValueError(allowed) from None
        if value < low or (high is not None and value > high):
            raise ValueError(allowed)
        return value

    return parse


def word(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError("one of " + ", ".join(choices))
        return value

    return parse


def selector(raw: str) -> LabelSelector:
    try:
        return parse_selector(raw)
    except ValueError as exc:
        raise ValueError(f"a Kubernetes label selector ({exc})") from None


def max_unhealthy(raw: str) -> MaxUnhealthy:
    """A count >= 1 or a percent from 1% to 100%; 0 (which would hold every kickout) is refused."""
    value = MaxUnhealthy.parse(raw)
    if value.value == 0:
        raise ValueError(
            "a whole number >= 1 (e.g. 2) or a percent from 1% to 100% (e.g. 50%); "
            "0 would hold every kickout (to stop kickouts for a while: asklepios pause)"
        )
    return value


def namespace(raw: str) -> str:
    value = raw.strip()
    if not _DNS_LABEL.match(value):
        raise ValueError("a namespace name (lowercase letters, digits and '-', at most 63)")
    return value


def namespaces(raw: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in raw.split(",") if item.strip())
    for item in items:
        if not _DNS_LABEL.match(item):
            raise ValueError("comma-separated namespace names, or empty for all")
    return items


def object_name(raw: str) -> str:
    """A Kubernetes object name such as a Secret's (a DNS subdomain)."""
    value = raw.strip()
    if not _DNS_SUBDOMAIN.match(value) or len(value) > 253:
        raise ValueError("an object name (lowercase letters, digits, '-' and '.', at most 253)")
    return value


def ports(raw: str) -> tuple[int, ...]:
    """Comma-separated TCP ports; empty for none."""
    items = [item.strip() for item in raw.split(",") if item.strip()]
    out: list[int] = []
    for item in items:
        if not item.isdigit() or not 1 <= int(item) <= 65535:
            raise ValueError("comma-separated TCP ports from 1 to 65535 (e.g. 10250,22), or empty for no probe")
        if int(item) not in out:
            out.append(int(item))
    return tuple(out)


def optional(convert: Callable[[str], str]) -> Callable[[str], str]:
    """Empty means "not set" (a default decided elsewhere); anything else must convert."""

    def parse(raw: str) -> str:
        return convert(raw) if raw.strip() else ""

    return parse


def text(raw: str) -> str:
    return raw
