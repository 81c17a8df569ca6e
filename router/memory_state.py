"""In-process shared state for a single replica, and Redis's stand-in while it is down.

Rate windows are exact sliding-window logs: a request counts for exactly 60s after it was
admitted, so N per minute never means 2N across a window edge.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from router.health import CLOSED, HEALTHY, CircuitRecord, TargetHealth
from router.limits import (
    BUDGET_KINDS, CONCURRENT, DAILY_USD, TPM, WINDOW_S, Admission, BudgetPeriods, Check, LimitExceeded, LimitSpec,
    Usage, headers_for, plan_checks, target_checks, to_micro,
)
from router.state import Grant, Rids, StateSettings, TargetGrant, count_rejection, log_transition, set_circuit

if TYPE_CHECKING:
    from router.metrics import Metrics

PLAN_CACHE = 4096  # distinct (key, model) combinations kept; past it the cache starts over


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
        self._plans: dict[tuple[object, ...], tuple[Check, ...]] = {}

    def _try(self, checks: Sequence[Check], rid: str, now: float, tokens: int) -> list[Usage | None]:
        """All-or-nothing: evaluate every check, charge only if all pass. A tpm check takes
        `tokens` (the checks are per-combination templates, built once)."""
        day, month, to_day_end, to_month_end = self._periods(now)
        usages: list[Usage | None] = []
        logs: list[_Log | None] = []
        for c in checks:
            kind = c.kind
            lg = None
            if kind in BUDGET_KINDS:
                spent = self._spend.get((c.name, day if kind == DAILY_USD else month), 0)
                if spent >= c.limit:
                    raise LimitExceeded(c, to_day_end if kind == DAILY_USD else to_month_end)
            elif kind == CONCURRENT:
                slots = self._slots.get((c.scope, c.name))
                if slots is None:
                    slots = self._slots[(c.scope, c.name)] = {}
                if len(slots) + c.amount > c.limit:
                    # Lapsed leases (a request that never settled) are only looked for when
                    # they could make the difference: a scan per admit costs as much as the
                    # requests in flight.
                    for r in [r for r, deadline in slots.items() if deadline <= now]:
                        del slots[r]
                    if len(slots) + c.amount > c.limit:
                        raise LimitExceeded(c, 1.0)
            else:
                amount = tokens if kind == TPM else c.amount
                key = (c.scope, c.name, kind)
                lg = self._logs.get(key)
                if lg is None:
                    lg = self._logs[key] = _Log()
                lg.prune(now - WINDOW_S)
                if lg.total + amount > c.limit:
                    refused = replace(c, amount=amount) if kind == TPM else c
                    raise LimitExceeded(refused, lg.retry_after(c.limit, amount, now),
                                        Usage(c.limit, 0, lg.usage(c.limit, now).reset_s))
            usages.append(None)
            logs.append(lg)
        for i, c in enumerate(checks):
            lg = logs[i]
            if lg is not None:
                amount = tokens if c.kind == TPM else c.amount
                lg.entries.append((now, rid))
                lg.amounts[rid] = amount
                lg.total += amount
                usages[i] = lg.usage(c.limit, now)
            elif c.kind == CONCURRENT:
                self._slots[(c.scope, c.name)][rid] = now + self._s.concurrency_lease_s
        return usages

    def _health(self, target_ids: Sequence[str], now: float) -> dict[str, TargetHealth]:
        out = {}
        for tid in target_ids:
            rec = self._circuits.get(tid)
            out[tid] = rec.view(now, self._s) if rec else HEALTHY
        set_circuit(self._metrics, out)
        return out

    def _checks(self, adm: Admission) -> tuple[Check, ...]:
        """The checks of a (key, model) combination, built once (their tpm amount is a stand-in)."""
        ident = (adm.key, adm.key_limits, adm.key_budget, adm.model, adm.model_limits)
        checks = self._plans.get(ident)
        if checks is None:
            if len(self._plans) >= PLAN_CACHE:
                self._plans.clear()
            checks = self._plans[ident] = tuple(plan_checks(adm._replace(tokens=0)))
        return checks

    async def admit(self, adm: Admission, target_ids: Sequence[str]) -> tuple[Grant, dict[str, TargetHealth]]:
        now, rid, checks, tokens = self._clock(), self._rid(), self._checks(adm), max(0, adm.tokens)
        try:
            usages = self._try(checks, rid, now, tokens)
        except LimitExceeded as e:
            count_rejection(self._metrics, e.check)
            raise
        grant = Grant(headers_for(checks, usages), rid, adm.key, checks, tokens)
        return grant, self._health(target_ids, now)

    async def reserve_target(self, target_id: str, limits: LimitSpec, tokens: int) -> TargetGrant | None:
        now, rid, checks = self._clock(), self._rid(), target_checks(target_id, limits, tokens)
        try:
            usages = self._try(checks, rid, now, max(0, tokens))
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
        self.settle_soon(None, target, actual_tokens, 0.0)

    async def settle(self, grant: Grant, target: TargetGrant | None, actual_tokens: int | None, cost_usd: float) -> None:
        self.settle_soon(grant, target, actual_tokens, cost_usd)

    def _settle_grant(self, grant: Grant, actual_tokens: int | None, cost_usd: float) -> None:
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

    def settle_soon(self, grant: Grant | None, target: TargetGrant | None, actual_tokens: int | None,
                    cost_usd: float) -> None:
        if target is not None and not target.settled and target.backend == "memory":
            target.settled = True
            self._settle_checks(target.checks, target.rid, actual_tokens)
        if grant is not None:
            self._settle_grant(grant, actual_tokens, cost_usd)

    def send_now(self) -> None:
        """Nothing waits to be sent: every call is in-process."""

    def renew_soon(self, grants: Sequence[Grant]) -> None:
        deadline = self._clock() + self._s.concurrency_lease_s
        for g in grants:
            if g.settled or g.backend != "memory":
                continue
            for c in g.checks:
                slots = self._slots.get((c.scope, c.name)) if c.kind == CONCURRENT else None
                if slots is not None and g.rid in slots:
                    slots[g.rid] = deadline

    async def record(self, target_id: str, ok: bool | None, latency_s: float | None, stream: bool = False,
                     probe: bool = False) -> None:
        self.record_soon(target_id, ok, latency_s, stream, probe)

    def record_soon(self, target_id: str, ok: bool | None, latency_s: float | None, stream: bool = False,
                    probe: bool = False) -> None:
        now = self._clock()
        rec = self._circuits.setdefault(target_id, CircuitRecord())
        if ok is None:
            if probe:
                rec.release_probe()
            return
        before, after = rec.record(ok, latency_s, now, self._s, stream, probe)
        log_transition(target_id, before, after)
        if self._metrics is not None:
            self._metrics.set_circuit(target_id, after)   # `after` is the state a view would have now

    async def health(self, target_ids: Sequence[str]) -> dict[str, TargetHealth]:
        return self._health(target_ids, self._clock())

    async def ready(self) -> tuple[bool, str]:
        return True, "local state (single replica)"

    async def close(self) -> None:
        return None
