"""Retrying writes: stamina with the kube layer's `retryable` policy, counted in metrics.

Two shapes of one policy: `attempts` retries a request in place (stamina), and
`backoff_delay` says when to try a failed action again from the timer wheel (the
same jittered exponential backoff: a node or a StatefulSet waits for it without
holding anything). Every failed attempt of a write is counted (`asklepios_write_conflicts_total` for a
409, `asklepios_api_errors_total{operation}` for anything else), where it happens.
A write gives up after a few attempts or its time budget, whichever comes first,
so a failing node never holds a write slot for long: the resync tries again later.
What fails again on a later round (a refused eviction, a move that did not land) waits
`backoff_delay(failures, ...)`, the same jittered exponential policy, between rounds.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable

import stamina

from asklepios.kube.client import ApiError, Conflict
from asklepios.kube.retry import retryable
from asklepios.observe import metrics

ATTEMPTS = 4


def _counted(operation: str) -> Callable[[Exception], bool | float]:
    def hook(exc: Exception) -> bool | float:
        if isinstance(exc, Conflict):
            metrics.WRITE_CONFLICTS.inc()
        elif isinstance(exc, ApiError):
            metrics.API_ERRORS.labels(operation=operation).inc()
        return retryable(exc)

    return hook


def attempts(operation: str, budget: float) -> AsyncIterator[stamina.Attempt]:
    """`async for attempt in attempts("kickout", 10): with attempt: ...`"""
    return stamina.retry_context(
        on=_counted(operation),
        attempts=ATTEMPTS,
        timeout=budget,
        wait_initial=0.2,
        wait_max=2.0,
        wait_jitter=0.3,
    )


def count_failure(operation: str, exc: Exception) -> None:
    """Count a failed single-shot write (one that is not retried here)."""
    _counted(operation)(exc)


def backoff_delay(failures: int, base: float, cap: float) -> float:
    """Seconds before the next try after `failures` in a row: exponential, full jitter over the upper half."""
    ceiling = min(cap, base * 2 ** max(0, failures - 1))
    return random.uniform(ceiling / 2, ceiling)
