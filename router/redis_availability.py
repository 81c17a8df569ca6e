"""Whether Redis is up, and when to look again: one warning per transition, a doubling hold-off.

While Redis is down every caller falls back at once (fail open or closed, by settings); once
the hold-off is over the next caller starts one background probe, which the link supplies
(a PING, then the replay of what was kept).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from router.state import StateSettings

if TYPE_CHECKING:
    from router.metrics import Metrics

log = logging.getLogger("router.state")


def describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


class Availability:
    """Redis's up/down state as the callers see it."""

    def __init__(self, settings: StateSettings, metrics: Metrics | None,
                 probe: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._s, self._metrics, self._probe = settings, metrics, probe
        self.up: bool | None = None  # None: not tried yet
        self.reason = "not connected yet"
        self._backoff, self._retry_at, self._up_since = settings.reconnect_min_s, 0.0, 0.0
        self._probe_task: asyncio.Task[None] | None = None

    def available(self) -> bool:
        """Up (or never tried): use Redis. Down: fall back, and probe once the hold-off is over."""
        if self.up is not False:
            return True
        if time.monotonic() >= self._retry_at and (self._probe_task is None or self._probe_task.done()):
            self._probe_task = asyncio.get_running_loop().create_task(self._probe())
        return False

    def down(self, op: str, e: BaseException) -> None:
        if self._metrics is not None:
            self._metrics.redis_errors.labels(op).inc()
            self._metrics.redis_up.set(0)
        self.reason = describe(e)
        if self.up is not False:
            mode = "admitting without limits" if self._s.fail_open else "refusing requests (fail closed)"
            log.warning("redis down (%s during %s): %s, health on local state", self.reason, op, mode)
            # down again soon after coming back (a flapping link, a Cluster still converging):
            # keep the longer hold-off instead of starting over at the shortest
            steady = time.monotonic() - self._up_since > self._s.reconnect_max_s
            self.up, self._backoff = False, self._s.reconnect_min_s if steady else self._backoff
            self._retry_at = time.monotonic() + self._backoff

    def still_down(self, e: BaseException) -> None:
        """A probe failed: hold off twice as long (with jitter, so replicas do not probe together)."""
        if self._metrics is not None:
            self._metrics.redis_errors.labels("ping").inc()
        self.reason = describe(e)
        self._backoff = min(self._s.reconnect_max_s, self._backoff * 2)
        self._retry_at = time.monotonic() + self._backoff * random.uniform(0.8, 1.2)

    def back(self) -> None:
        if self.up is not True:
            if self.up is False:
                log.warning("redis is back: shared limits and health again")
            self.up, self._up_since = True, time.monotonic()
            if self._metrics is not None:
                self._metrics.redis_up.set(1)

    async def close(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            await asyncio.gather(self._probe_task, return_exceptions=True)
