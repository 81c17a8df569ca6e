"""The one retry policy: which failures retry the same target, and how long to wait.

Retry on connect errors, timeouts, 408/409/429/5xx (the adapters classify them as
`Action.RETRY`), with exponential backoff and full jitter; a vendor's Retry-After is
honoured up to a cap. When the wait would pass the cap or the request's deadline, stop
at once so the proxy moves to the next target instead of sleeping.
"""

from __future__ import annotations

import random
import time
from typing import Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from providers.failures import Action, UpstreamError
from router.config import Retry


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, UpstreamError) and exc.action is Action.RETRY


class _Wait(wait_base):
    def __init__(self, policy: Retry) -> None:
        self.initial = policy.backoff_initial_s
        self.max = policy.backoff_max_s

    def __call__(self, rs: RetryCallState) -> float:
        exc = rs.outcome.exception() if rs.outcome else None
        if isinstance(exc, UpstreamError) and exc.retry_after is not None:
            return exc.retry_after
        return random.uniform(0, min(self.max, self.initial * 2 ** (rs.attempt_number - 1)))


class _Stop(stop_base):
    def __init__(self, policy: Retry, deadline: float, budget: Callable[[], bool]) -> None:
        self.attempts = policy.attempts
        self.cap = policy.retry_after_cap_s
        self.deadline = deadline
        self.budget = budget

    def __call__(self, rs: RetryCallState) -> bool:
        wait = rs.upcoming_sleep
        return (rs.attempt_number >= self.attempts or wait > self.cap
                or time.monotonic() + wait >= self.deadline or not self.budget())


def retrying(policy: Retry, deadline: float, budget: Callable[[], bool],
             before_sleep: Callable[[RetryCallState], None]) -> AsyncRetrying:
    """A fresh retry loop for one target; `budget()` is false once the request's attempt cap is spent."""
    return AsyncRetrying(
        stop=_Stop(policy, deadline, budget),
        wait=_Wait(policy),
        retry=retry_if_exception(_retryable),
        before_sleep=before_sleep,
        reraise=True,
    )
