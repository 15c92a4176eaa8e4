"""The mass-failure guard and the label selector parser."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asklepios.core.guard import MaxUnhealthy, hold_reason
from asklepios.core.selector import parse_selector


@pytest.mark.parametrize(
    ("raw", "watched", "limit"),
    [("50%", 3, 1), ("50%", 4, 2), ("50%", 1, 1), ("0%", 10, 1), ("100%", 7, 7), ("2", 100, 2), ("0", 5, 1)],
)
def test_limit(raw: str, watched: int, limit: int) -> None:
    assert MaxUnhealthy.parse(raw).limit(watched) == limit


def test_three_control_nodes_tolerate_one_down_but_not_two() -> None:
    m = MaxUnhealthy.parse("50%")
    assert hold_reason(m, watched=3, notready=1) is None
    reason = hold_reason(m, watched=3, notready=2)
    assert reason is not None and "2 of 3" in reason


@given(watched=st.integers(0, 10_000), percent=st.integers(0, 100))
def test_percent_limit_is_at_least_one_and_never_above_watched_or_one(watched: int, percent: int) -> None:
    limit = MaxUnhealthy(percent, percent=True).limit(watched)
    assert 1 <= limit <= max(1, watched)


@pytest.mark.parametrize("raw", ["", "x", "-1", "50%%", "101%", "1.5", "%"])
def test_bad_max_unhealthy(raw: str) -> None:
    with pytest.raises(ValueError, match=r"number|percent"):
        MaxUnhealthy.parse(raw)


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ("node-role.kubernetes.io/control-plane", {"node-role.kubernetes.io/control-plane": ""}, True),
        ("node-role.kubernetes.io/control-plane", {}, False),
        ("!a", {}, True),
        ("a=b", {"a": "b"}, True),
        ("a==b", {"a": "c"}, False),
        ("a!=b", {}, True),
        ("application in (mariadb,rabbitmq)", {"application": "rabbitmq"}, True),
        ("application in (mariadb, rabbitmq)", {"application": "nova"}, False),
        ("application notin (mariadb)", {"application": "nova"}, True),
        ("a=b,c in (d,e),!f", {"a": "b", "c": "e"}, True),
        ("", {"x": "y"}, True),
        ("a==", {"a": ""}, True),  # an empty value is valid Kubernetes syntax
    ],
)
def test_selector_matching(selector: str, labels: dict[str, str], matches: bool) -> None:
    assert parse_selector(selector).matches(labels) is matches


@pytest.mark.parametrize("bad", ["a in (b", "a in b)", "a in ()", "!a in (b)", "a=b=c", "-a", "a b", "a=-b"])
def test_bad_selectors(bad: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_selector(bad)
