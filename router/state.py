"""Shared state behind one interface: rate limits, token reservations, budgets, target health.

Several replicas behind one load balancer must agree on "100 requests per minute" and on
"this vendor is failing", so the proxy core talks only to a `SharedState`:
`RedisState` (redis_state.py) for a fleet, `MemoryState` (memory_state.py) for a single
replica; `create_state` (backends.py) picks one. Both follow the same rules (limits.py,
health.py) and the same test suite runs against both.

Rate windows are exact sliding-window logs: a request counts for exactly 60s after it
was admitted, so N per minute never means 2N across a window edge.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from router.health import HealthSettings, TargetHealth
from router.limits import Admission, Check, LimitSpec


if TYPE_CHECKING:
    from router.metrics import Metrics

__all__ = ["Grant", "SharedState", "StateSettings", "TargetGrant", "TargetHealth"]

log = logging.getLogger("router.state")


@dataclass(frozen=True)
class StateSettings(HealthSettings):
    """Circuit-breaker knobs (inherited) plus how to behave when Redis misbehaves.
    Windows in Redis run on Redis's own clock (TIME), shared by every replica, so a replica
    whose clock is off cannot shift them; tests move a fake `clock` instead of sleeping."""

    fail_open: bool = True  # Redis down: admit without limits (False: refuse with 503)
    redis_timeout_s: float = 0.25  # one pipelined batch; past it requests go on without Redis
    concurrency_lease_s: float = 600.0  # a slot a crashed replica never released frees itself
    reconnect_min_s: float = 0.5  # first hold-off after Redis fails; doubles up to max
    reconnect_max_s: float = 15.0
    pending_settles: int = 10_000  # settles kept while Redis is down, replayed when it returns
    redis_max_connections: int = 512  # per node; standalone waits for a free one, Cluster refuses
    key_prefix: str = "router"
    clock: Callable[[], float] | None = None  # this replica's wall clock; None = time.time
    redis_clock: bool = True  # windows in Redis on Redis's TIME (False: on `clock`, for tests)
    admit_ahead: int = 0  # Redis: admissions a replica takes ahead per busy combination (redis_ahead.py)
    admit_ahead_s: float = 1.0  # how long one taken ahead lives before it is given back unused


@dataclass
class Grant:
    """An admitted request: its headers and what `settle` must undo or charge."""

    headers: dict[str, str]
    rid: str = ""  # reservation id, unique per request
    key: str | None = None
    checks: tuple[Check, ...] = ()
    tokens: int = 0  # tokens reserved at admit
    backend: str = "memory"  # "memory" | "redis" (failing open: a redis grant with no checks)
    settled: bool = False
    plan: Any = None  # the backend's precomputed keys for these checks


@dataclass
class TargetGrant:
    """A reservation on one provider target's vendor quota (and maybe a half-open probe)."""

    target_id: str
    rid: str = ""
    checks: tuple[Check, ...] = ()
    tokens: int = 0
    probe: bool = False  # this attempt is a half-open probe
    backend: str = "memory"
    headers: dict[str, str] = field(default_factory=dict)
    settled: bool = False
    plan: Any = None


class SharedState(Protocol):
    """What the proxy core calls. No method raises on a backend failure; only `admit`
    raises, and only a RouterError (LimitExceeded 429, or 503 when failing closed).

    Per request: `admit` once (its one round trip on the request's path); before each
    upstream attempt that needs it `reserve_target` (None: over the vendor quota, or the
    circuit is open / its half-open probes are taken: skip the target); `record` each
    attempt's outcome (`ok` None: no verdict, which only frees a probe slot; `stream`: the
    latency is a stream's time to first event, kept apart from whole answers' latency);
    `release_target` for an attempt abandoned for the next target (its request still
    counts, its tokens settle to what the vendor used, 0 by default); finally `settle`
    exactly once (repeats are no-ops, and in Redis a replay charges spend once) with the
    target that answered, or None. `renew_soon` extends the concurrency leases of requests
    still running, so a stream longer than the lease keeps its slot. The `_soon` forms send
    without waiting: on Redis they ride along with the next pipelined batch, off the request's
    time; `send_now` sends what they queued at once (the last request in flight is done)."""

    local: bool  # True when every call is in-process (no I/O)

    async def admit(self, adm: Admission, target_ids: Sequence[str]) -> tuple[Grant, dict[str, TargetHealth]]: ...
    async def reserve_target(self, target_id: str, limits: LimitSpec, tokens: int) -> TargetGrant | None: ...
    async def release_target(self, target: TargetGrant, actual_tokens: int | None = 0) -> None: ...
    async def settle(self, grant: Grant, target: TargetGrant | None, actual_tokens: int | None, cost_usd: float) -> None: ...
    def settle_soon(self, grant: Grant | None, target: TargetGrant | None, actual_tokens: int | None, cost_usd: float) -> None: ...
    async def record(self, target_id: str, ok: bool | None, latency_s: float | None, stream: bool = False,
                     probe: bool = False) -> None: ...
    def record_soon(self, target_id: str, ok: bool | None, latency_s: float | None, stream: bool = False,
                    probe: bool = False) -> None: ...
    def renew_soon(self, grants: Sequence[Grant]) -> None: ...
    def send_now(self) -> None: ...
    async def health(self, target_ids: Sequence[str]) -> dict[str, TargetHealth]: ...
    async def ready(self) -> tuple[bool, str]: ...
    async def close(self) -> None: ...


class Rids:
    """Reservation ids: a random per-instance prefix and a counter; unique across
    replicas, short in Redis, and far cheaper than a uuid4 per request."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._seq = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._seq):x}"


def count_rejection(metrics: Metrics | None, check: Check) -> None:
    if metrics is not None:
        metrics.limit_rejections.labels(check.scope, check.kind).inc()


def set_circuit(metrics: Metrics | None, health: dict[str, TargetHealth]) -> None:
    if metrics is not None:
        for tid, h in health.items():
            metrics.set_circuit(tid, h.state)


def log_transition(target_id: str, before: str, after: str) -> None:
    if before != after:
        log.warning("circuit of target %s: %s -> %s", target_id, before, after)
