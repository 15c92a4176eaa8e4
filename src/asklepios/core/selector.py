"""Kubernetes label selectors: parse (to reject bad input early) and match.

Selectors are sent to the apiserver as strings, server-side; parsing them here
means a typo in `ASKLEPIOS_NODE_SELECTOR` stops the process with a clear line
instead of a 400 in a retry loop, and lets the balancer and tests match labels
the same way the apiserver does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import attrs

_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_KEY = re.compile(rf"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{_NAME}$")
_VALUE = re.compile(rf"^({_NAME})?$")
_SET = re.compile(r"^\s*(!?)\s*([^\s!=()]+)\s*(?:(notin|in)\s*\(([^()]*)\))?\s*$")
_EQ = re.compile(r"^\s*([^\s!=()]+)\s*(==|=|!=)\s*([^\s!=()]*)\s*$")


@attrs.frozen
class Requirement:
    key: str
    operator: str  # "in", "notin", "exists", "!"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "exists":
            return present
        if self.operator == "!":
            return not present
        if self.operator == "in":
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values


@attrs.frozen
class LabelSelector:
    text: str
    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        return self.text


def _split(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced ')'")
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth:
        raise ValueError("unbalanced '('")
    parts.append("".join(current))
    return parts


def _check_key(key: str) -> str:
    if not _KEY.match(key) or len(key.rsplit("/", 1)[-1]) > 63:
        raise ValueError(f"invalid label key {key!r}")
    return key


def _check_value(value: str) -> str:
    if not _VALUE.match(value) or len(value) > 63:
        raise ValueError(f"invalid label value {value!r}")
    return value


def _requirement(part: str) -> Requirement:
    eq = _EQ.match(part)
    if eq:
        key, op, value = _check_key(eq.group(1)), eq.group(2), _check_value(eq.group(3))
        return Requirement(key, "notin" if op == "!=" else "in", frozenset({value}))
    st = _SET.match(part)
    if st is None:
        raise ValueError(f"cannot parse {part.strip()!r}")
    negated, key, op, values = st.group(1), _check_key(st.group(2)), st.group(3), st.group(4)
    if op is None:
        return Requirement(key, "!" if negated else "exists")
    if negated:
        raise ValueError(f"'!' cannot be combined with {op!r}")
    items = frozenset(_check_value(v.strip()) for v in values.split(","))
    if not any(items):
        raise ValueError(f"{op!r} needs at least one value")
    return Requirement(key, op, items)


def parse_selector(text: str) -> LabelSelector:
    """Parse Kubernetes label selector syntax; ValueError says what is wrong."""
    if not text.strip():
        return LabelSelector(text="", requirements=())
    return LabelSelector(text=text.strip(), requirements=tuple(_requirement(p) for p in _split(text)))
