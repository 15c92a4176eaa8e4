"""Which apiserver failures are worth retrying, and after how long: the one retry policy.

Every retry in Asklepios (watches, node writes, evictions, Events, the Lease) goes
through stamina with this predicate: connection failures, 5xx and 409 Conflict are
retried with jittered exponential backoff; 429 Too Many Requests waits as long as
its Retry-After says; any other 4xx (400, 403, 404, 422) is permanent and is not
retried at all.
"""

from __future__ import annotations

from asklepios.kube.client import ApiError, Conflict, Gone, NotFound


def retryable(exc: Exception) -> bool | float:
    """stamina's `on=` hook: False (give up), True (back off) or seconds to wait."""
    if not isinstance(exc, ApiError) or isinstance(exc, NotFound | Gone):
        return False
    if exc.status == 429:
        return exc.retry_after if exc.retry_after is not None else True
    return isinstance(exc, Conflict) or exc.status == 0 or exc.status >= 500
