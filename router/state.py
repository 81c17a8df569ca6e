"""Shared state behind one interface: rate limits, token reservations, budgets, target health.

Several replicas behind one load balancer must agree on "100 requests per minute" and on
"this vendor is failing", so the proxy core talks only to a `SharedState`:
`RedisState` (redis_state.py) for a fleet, `MemoryState` here for a single replica. Both
follow the same rules (limits.py, health.py) and the same test suite runs against both.

Rate windows are exact sliding-window logs: a request counts for exactly 60s after it
was admitted, so N per minute never means 2N across a window edge.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from router.health import CLOSED, CircuitRecord, HealthSettings, TargetHealth
from router.limits import (
    BUDGET_KINDS,
    CONCURRENT,
    DAILY_USD,
    TPM,
    WINDOW_S,
    Admission,
    BudgetPeriods,
    Check,
    LimitExceeded,
    LimitSpec,
    Usage,
    headers_for,
    plan_checks,
    target_checks,
    to_micro,
)


if TYPE_CHECKING:
    from router.metrics import Metrics

__all__ = [
    "Grant",
    "MemoryState",
    "SharedState",
    "StateSettings",
    "TargetGrant",
    "TargetHealth",
    "create_state",
]

log = logging.getLogger("router.state")


@dataclass(frozen=True)
class StateSettings(HealthSettings):
    """Circuit-breaker knobs (inherited) plus how to behave when Redis misbehaves.
    `clock` is injectable so tests can move time instead of sleeping; every replica
    uses its own wall clock, so keep them NTP-synced (skew only blurs window edges)."""

    fail_open: bool = True  # Redis down: admit without limits (False: refuse with 503)
    redis_timeout_s: float = 0.25  # one Redis call; past it the request goes on without Redis
    concurrency_lease_s: float = 600.0  # a slot a crashed replica never released frees itself
    reconnect_min_s: float = 0.5  # first hold-off after Redis fails; doubles up to max
    reconnect_max_s: float = 15.0
    pending_settles: int = 10_000  # settles kept while Redis is down, replayed when it returns
    redis_max_connections: int = 512  # per node; standalone waits for a free one, Cluster refuses
    key_prefix: str = "router"
    clock: Callable[[], float] | None = None  # wall-clock seconds; None = time.time


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


class SharedState(Protocol):
    local: bool  # True when every call is in-process (no I/O): the proxy then awaits settle inline

    """What the proxy core calls. No method raises on a backend failure; only `admit`
    raises, and only a RouterError (LimitExceeded 429, or 503 when failing closed).

    Per request: `admit` once; before each upstream attempt `reserve_target` (None: over
    the vendor quota, or the circuit is open / its half-open probes are taken: skip the
    target); `record` each attempt's outcome (`stream`: the latency is a stream's time to
    first event, kept apart from whole answers' latency); `release_target` for an attempt abandoned
    for the next target (its request still counts, its tokens settle to what the vendor
    used, 0 by default); finally `settle` exactly once (repeats are no-ops) with the
    target that answered, or None."""

    async def admit(self, adm: Admission, target_ids: Sequence[str]) -> tuple[Grant, dict[str, TargetHealth]]: ...
    async def reserve_target(self, target_id: str, limits: LimitSpec, tokens: int) -> TargetGrant | None: ...
    async def release_target(self, target: TargetGrant, actual_tokens: int | None = 0) -> None: ...
    async def settle(self, grant: Grant, target: TargetGrant | None, actual_tokens: int | None, cost_usd: float) -> None: ...
    async def record(self, target_id: str, ok: bool, latency_s: float | None, stream: bool = False) -> None: ...
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


class _Log:
    """Sliding-window log of one rpm/tpm limit: (time, rid) in admission order."""

    __slots__ = ("entries", "amounts", "total")

    def __init__(self) -> None:
        self.entries: deque[tuple[float, str]] = deque()
        self.amounts: dict[str, int] = {}
        self.total = 0

    def prune(self, cutoff: float) -> None:
        while self.entries and self.entries[0][0] <= cutoff:
            _, rid = self.entries.popleft()
            self.total -= self.amounts.pop(rid, 0)

    def retry_after(self, limit: int, amount: int, now: float) -> float:
        """Seconds until enough has left the window for `amount` to fit."""
        if amount > limit:
            return WINDOW_S
        excess = self.total + amount - limit
        for t, rid in self.entries:
            excess -= self.amounts.get(rid, 0)
            if excess <= 0:
                return max(0.001, t + WINDOW_S - now)
        return WINDOW_S

    def usage(self, limit: int, now: float) -> Usage:
        reset = self.entries[0][0] + WINDOW_S - now if self.entries else 0.0
        return Usage(limit, limit - self.total, max(0.0, reset))


class MemoryState:
    """In-process state for a single replica, and Redis's stand-in while it is down.
    Every method runs without awaiting, so each check-and-charge is atomic on the loop."""

    local = True

    def __init__(self, settings: StateSettings | None = None, metrics: Metrics | None = None) -> None:
        self._s = settings or StateSettings()
        self._clock = self._s.clock or time.time
        self._metrics = metrics
        self._logs: dict[tuple[str, str, str], _Log] = {}
        self._slots: dict[tuple[str, str], dict[str, float]] = {}  # rid -> lease deadline
        self._spend: dict[tuple[str, str], int] = {}  # (key, day or month id) -> micro-dollars
        self._circuits: dict[str, CircuitRecord] = {}
        self._rid, self._periods = Rids(), BudgetPeriods()

    def _try(self, checks: Sequence[Check], rid: str, now: float) -> list[Usage | None]:
        """All-or-nothing: evaluate every check, charge only if all pass."""
        day, month, to_day_end, to_month_end = self._periods(now)
        usages: list[Usage | None] = []
        for c in checks:
            if c.kind in BUDGET_KINDS:
                spent = self._spend.get((c.name, day if c.kind == DAILY_USD else month), 0)
                if spent >= c.limit:
                    raise LimitExceeded(c, to_day_end if c.kind == DAILY_USD else to_month_end)
                usages.append(None)
            elif c.kind == CONCURRENT:
                slots = self._slots.setdefault((c.scope, c.name), {})
                for r in [r for r, deadline in slots.items() if deadline <= now]:
                    del slots[r]
                if len(slots) + c.amount > c.limit:
                    raise LimitExceeded(c, 1.0)
                usages.append(None)
            else:
                lg = self._logs.setdefault((c.scope, c.name, c.kind), _Log())
                lg.prune(now - WINDOW_S)
                if lg.total + c.amount > c.limit:
                    usage = lg.usage(c.limit, now)
                    raise LimitExceeded(c, lg.retry_after(c.limit, c.amount, now), Usage(c.limit, 0, usage.reset_s))
                usages.append(None)  # filled after charging
        for i, c in enumerate(checks):
            if c.kind == CONCURRENT:
                self._slots[(c.scope, c.name)][rid] = now + self._s.concurrency_lease_s
            elif c.kind not in BUDGET_KINDS:
                lg = self._logs[(c.scope, c.name, c.kind)]
                lg.entries.append((now, rid))
                lg.amounts[rid] = c.amount
                lg.total += c.amount
                usages[i] = lg.usage(c.limit, now)
        return usages

    def _health(self, target_ids: Sequence[str], now: float) -> dict[str, TargetHealth]:
        out = {}
        for tid in target_ids:
            rec = self._circuits.get(tid)
            out[tid] = rec.view(now, self._s) if rec else CircuitRecord().view(now, self._s)
        set_circuit(self._metrics, out)
        return out

    async def admit(self, adm: Admission, target_ids: Sequence[str]) -> tuple[Grant, dict[str, TargetHealth]]:
        now, rid, checks = self._clock(), self._rid(), plan_checks(adm)
        try:
            usages = self._try(checks, rid, now)
        except LimitExceeded as e:
            count_rejection(self._metrics, e.check)
            raise
        grant = Grant(headers_for(checks, usages), rid, adm.key, tuple(checks), max(0, adm.tokens))
        return grant, self._health(target_ids, now)

    async def reserve_target(self, target_id: str, limits: LimitSpec, tokens: int) -> TargetGrant | None:
        now, rid, checks = self._clock(), self._rid(), target_checks(target_id, limits, tokens)
        try:
            usages = self._try(checks, rid, now)
        except LimitExceeded as e:
            count_rejection(self._metrics, e.check)
            return None
        rec = self._circuits.get(target_id)
        probe = rec is not None and rec.effective_state(now, self._s) != CLOSED
        if probe and not rec.claim_probe(now, self._s):  # type: ignore[union-attr]
            self._refund(checks, rid)  # open, or every probe slot taken: nothing stays charged
            return None
        return TargetGrant(target_id, rid, tuple(checks), max(0, tokens), probe, headers=headers_for(checks, usages))

    def _refund(self, checks: Sequence[Check], rid: str) -> None:
        for c in checks:
            if c.kind == CONCURRENT:
                self._slots.get((c.scope, c.name), {}).pop(rid, None)
            elif c.kind not in BUDGET_KINDS and (lg := self._logs.get((c.scope, c.name, c.kind))):
                lg.total -= lg.amounts.pop(rid, 0)

    def _settle_checks(self, checks: Sequence[Check], rid: str, actual: int | None) -> None:
        """Release the concurrency slot; move the token reservation to what was used."""
        for c in checks:
            if c.kind == CONCURRENT:
                self._slots.get((c.scope, c.name), {}).pop(rid, None)
            elif c.kind == TPM and actual is not None:
                lg = self._logs.get((c.scope, c.name, c.kind))
                if lg is not None and rid in lg.amounts:  # else already out of the window
                    lg.total += max(0, actual) - lg.amounts[rid]
                    lg.amounts[rid] = max(0, actual)

    async def release_target(self, target: TargetGrant, actual_tokens: int | None = 0) -> None:
        """An attempt that failed: its request still counts, its tokens settle to `actual_tokens`."""
        if target.settled or target.backend != "memory":
            return
        target.settled = True
        self._settle_checks(target.checks, target.rid, actual_tokens)

    async def settle(self, grant: Grant, target: TargetGrant | None, actual_tokens: int | None, cost_usd: float) -> None:
        if target is not None:
            await self.release_target(target, actual_tokens)
        if grant.settled or grant.backend != "memory":
            return
        grant.settled = True
        self._settle_checks(grant.checks, grant.rid, actual_tokens)
        micro = to_micro(cost_usd)
        if grant.key is not None and micro > 0:
            day, month, _, _ = self._periods(self._clock())
            if (grant.key, day) not in self._spend:  # a new day: forget past periods' spend
                for k in [k for k in self._spend if k[0] == grant.key and k[1] not in (day, month)]:
                    del self._spend[k]
            for period in (day, month):
                self._spend[(grant.key, period)] = self._spend.get((grant.key, period), 0) + micro

    async def record(self, target_id: str, ok: bool, latency_s: float | None, stream: bool = False) -> None:
        now = self._clock()
        rec = self._circuits.setdefault(target_id, CircuitRecord())
        before, after = rec.record(ok, latency_s, now, self._s, stream)
        log_transition(target_id, before, after)
        set_circuit(self._metrics, {target_id: rec.view(now, self._s)})

    async def health(self, target_ids: Sequence[str]) -> dict[str, TargetHealth]:
        return self._health(target_ids, self._clock())

    async def ready(self) -> tuple[bool, str]:
        return True, "local state (single replica)"

    async def close(self) -> None:
        return None


def create_state(redis_url: str | None, settings: StateSettings | None = None, metrics: Metrics | None = None) -> SharedState:
    """`REDIS_URL` unset → in-process state; redis://, rediss://, redis-cluster://,
    or redis://...?cluster=true → Redis. Never connects here: a Redis that is down at
    start is handled like one that goes down later."""
    settings = settings or StateSettings()
    if not redis_url:
        return MemoryState(settings, metrics)
    from router.redis_state import RedisState

    return RedisState(redis_url, settings, metrics)
