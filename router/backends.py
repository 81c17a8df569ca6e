"""Which shared-state backend a process runs on, from its REDIS_URL."""

from __future__ import annotations

from typing import TYPE_CHECKING

from router.memory_state import MemoryState
from router.state import SharedState, StateSettings

if TYPE_CHECKING:
    from router.metrics import Metrics


def create_state(redis_url: str | None, settings: StateSettings | None = None, metrics: Metrics | None = None) -> SharedState:
    """`REDIS_URL` unset → in-process state; redis://, rediss://, redis-cluster://,
    or redis://...?cluster=true → Redis. Never connects here: a Redis that is down at
    start is handled like one that goes down later.

    The Redis backend (and redis-py, a few MiB of modules) is imported only when asked for:
    a process on in-process state never loads it."""
    settings = settings or StateSettings()
    if not redis_url:
        return MemoryState(settings, metrics)
    from router.redis_state import RedisState

    return RedisState(redis_url, settings, metrics)
