"""Shared state in Redis (standalone or Cluster), one Lua script per decision.

Key layout (prefix "router"; the {hash tag} keeps one scope's counters on one slot):
  router:{k:<key>}:rpm / :tpm / :tpm:h / :tpm:l / :conc / :spend:<YYYY-MM-DD> / :spend:<YYYY-MM> / :paid:<minute>
  router:{m:<model>}:rpm / :tpm / :tpm:h / :tpm:l
  router:{t:<target>}:rpm / :tpm / :tpm:h / :tpm:l / :health
rpm, tpm and concurrency are sorted sets (member = reservation id; score = admit time, or
lease deadline for :conc); :tpm:h maps id -> tokens, with "_" the running total (see
redis_scripts.LUA_TPM for its other fields and the TTLs); :tpm:l is
the ledger that finds a tpm refusal's retry time in O(log n); :paid:<minute> (a set of the
reservation ids whose spend was charged, by the minute it was first sent) makes a spend
replayed within ten minutes count once.

Standalone: one EVALSHA per admit covers every limit and the targets' health. Cluster: one
script per hash tag, sent in the same batch; if a later tag refuses, what earlier tags
reserved is refunded at once. In that short window a concurrent request may see those
counters charged and be refused too: Cluster can over-refuse by a hair, never over-admit.
Every call goes through redis_link.py: batched per loop iteration, fail-open on faults.
The keys and fixed arguments of a (key, model, targets) combination are built once and
kept, not rebuilt per request (redis_plans.py); what a request gives back or is charged
is built from them in one way for every path (redis_settles.py). Opt-in, a busy
combination's admits are taken ahead of its requests (redis_ahead.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

from router.health import BUCKETS, HEALTHY, TargetHealth, summary_view
from router.limits import (
    CONCURRENT, DAILY_USD, RPM, TPM, Admission, BudgetPeriods, LimitExceeded, LimitSpec, Usage, headers_for,
    plan_checks, state_unavailable, target_checks, to_micro,
)
from router.memory_state import MemoryState
from router.redis_ahead import AheadAdmits, ahead_rids
from router.redis_commands import SharedReads
from router.redis_link import LOOSE_DELAY_S, RedisLink, Unavailable
from router.redis_plans import AHEAD_AT, REFUND, RENEW, SLOTS, TOKENS, Plan, Planner, Ran
from router.redis_resp import SettleOps, bulk
from router.redis_scripts import LUA_ADMIT, LUA_FIELDS, LUA_HEALTH, LUA_NOW, LUA_PRELUDE, LUA_RECORD, LUA_SETTLE, LUA_TPM
from router.redis_settles import Settles, ok_ops
from router.state import Grant, Rids, StateSettings, TargetGrant, count_rejection, log_transition, set_circuit

if TYPE_CHECKING:
    from router.metrics import Metrics

log = logging.getLogger("router.state")
HEALTH_TTL_MS = 86_400_000  # a target nobody calls for a day starts afresh
SPEND_TTL_MS = 3 * 86_400_000  # a day's spend; a month's is 21x
_EMPTY, _REFUND, _SPEND_TTL = map(bulk, ("", "refund", str(SPEND_TTL_MS)))

SCRIPTS = {
    "admit": LUA_FIELDS + LUA_PRELUDE + LUA_NOW + LUA_TPM + LUA_ADMIT,
    "health": LUA_FIELDS + LUA_PRELUDE + LUA_NOW + LUA_HEALTH,
    "settle": LUA_FIELDS + LUA_NOW + LUA_TPM + LUA_SETTLE,
    "record": LUA_FIELDS + LUA_PRELUDE + LUA_NOW + LUA_RECORD,
}


class _ProbeRefused(Exception):
    """The target's circuit is open, or its half-open probe slots are taken."""


class RedisState:
    """SharedState on Redis for a fleet of replicas (see the module docstring)."""

    local = False

    def __init__(self, url: str, settings: StateSettings, metrics: Metrics | None = None) -> None:
        self._s, self._metrics = settings, metrics
        self._clock = settings.clock or time.time
        self._link = RedisLink(url, settings, SCRIPTS, metrics)
        self.cluster = self._link.cluster
        self._local = MemoryState(settings, metrics)  # health and probes while Redis is down
        self._rid, self._periods = Rids(), BudgetPeriods()
        self._plans = Planner(settings, self.cluster, self._link.packer)
        self._health_reads = SharedReads()   # Cluster: a target's health read, shared by concurrent admits
        s = settings
        self._width = self._plans.width
        self._record_args = [repr(s.ewma_alpha), str(s.failure_threshold), repr(s.error_rate_threshold),
                             str(s.min_samples), repr(s.cooldown_s), self._width, str(BUCKETS), str(HEALTH_TTL_MS)]
        self._settle_head = [repr(s.ewma_alpha), self._width, str(BUCKETS), str(HEALTH_TTL_MS)]
        self._ahead = AheadAdmits(s.admit_ahead, s.admit_ahead_s, settings.clock or time.monotonic, self._rid,
                                  self._run, self._views, self._refund, self._link.available,
                                  metrics) if s.admit_ahead else None
        if self._ahead is not None:
            self._link.quiet_delay_s = LOOSE_DELAY_S

    # ---- running checks -----------------------------------------------------------------
    def _now(self) -> str:
        """The time a script runs at: '' lets Redis use its own clock."""
        return "" if self._s.redis_clock else f"{self._clock():.6f}"

    async def _run(self, plan: Plan, rid: str, tokens: int, ahead: str = "", count: int = 1) -> Ran:
        """Every call of a plan in this iteration's batch. Admissions taken ahead stamp their
        window entries `ahead` ms late and come `count` at a time (ids: ahead_rids). Raises
        LimitExceeded, _ProbeRefused or Unavailable."""
        now, tok = self._now(), str(max(0, tokens))
        futs = []
        for j, call in enumerate(plan.calls):
            args = [now, rid, *call.args]
            for at in call.tpm_at:
                args[at + 2] = tok
            if ahead:
                args[AHEAD_AT:AHEAD_AT + 2] = ahead, str(count)
            futs.append(self._link.call("admit", "admit", call.keys, args, self._orphan(plan, j, rid, count),
                                        packer=None if ahead else call.packer))
        health = [now, self._width, str(BUCKETS)]
        futs += [self._health_reads.get(f"{k} {now}", partial(self._link.call, "health", "health", [k], health))
                 for k in plan.health]
        replies: list[Any] = [await futs[0]] if len(futs) == 1 else await asyncio.gather(*futs, return_exceptions=True)
        failed = next((r for r in replies if isinstance(r, BaseException)), None)
        admits = replies[:len(plan.calls)]
        refused = [(call.idx[int(r[1]) - 1] if int(r[1]) else -1, r) for call, r in zip(plan.calls, admits, strict=True)
                   if not isinstance(r, BaseException) and int(r[0]) == 0]
        if failed is not None or refused:
            self._refund_taken(plan, admits, rid, count)
            if failed is not None:
                raise failed
            i, r = min(refused, key=lambda x: x[0])
            if i < 0:
                raise _ProbeRefused
            c = plan.checks[i]
            c = replace(c, amount=max(0, tokens)) if c.kind == TPM else c
            _, _, to_day, to_month = self._periods(self._clock())
            retry = (to_day if c.kind == DAILY_USD else to_month) if int(r[2]) < 0 else int(r[2]) / 1000
            raise LimitExceeded(c, retry, Usage(c.limit, 0, int(r[3]) / 1000) if c.kind in (RPM, TPM) else None)
        usages: list[Usage | None] = [None] * len(plan.checks)
        lefts = [0] * len(plan.checks)
        for call, r in zip(plan.calls, admits, strict=True):
            for i, (left, reset) in zip(call.idx, r[1], strict=True):
                lefts[i] = int(left)
                if plan.checks[i].kind in (RPM, TPM):
                    usages[i] = Usage(plan.checks[i].limit, lefts[i], int(reset) / 1000)
        last: Any = admits[-1] if admits else None
        summaries = list(last[2]) if last is not None and not plan.health else [r[1][0] for r in replies[len(plan.calls):]]
        stamp = admits[-1][4] if admits else (replies[-1][0] if replies else None)
        return Ran(usages, lefts, summaries, int(last[3]) if last is not None else 0, float(stamp) if stamp else None)

    def _refund_taken(self, plan: Plan, replies: Sequence[Any], rid: str, count: int) -> None:
        """Cluster: give back what the tags that admitted took when another refused or failed."""
        taken = [j for j, r in enumerate(replies) if not isinstance(r, BaseException) and int(r[0])]
        if taken:
            self._refund(plan, ahead_rids(rid, count), taken)

    def _refund(self, plan: Plan, rids: Sequence[str], calls: Sequence[int] | None = None) -> None:
        """Give back all these reservations took (of these script calls only, if given)."""
        settles = self._settles()
        for rid in rids:
            settles.plan(plan, rid, REFUND, _REFUND, calls=calls)
        self._send(settles)

    def _orphan(self, plan: Plan, call: int, rid: str, count: int) -> Any:
        """What to do with an admit whose caller left before its reply: undo it."""
        def undo(reply: Any) -> None:
            if int(reply[0]):
                self._refund(plan, ahead_rids(rid, count), [call])
                if int(reply[3]) == 2 and plan.calls and plan.calls[-1].keys:  # a probe slot it claimed
                    self._link.send("record", "record", [plan.calls[-1].keys[-1]],
                                    self._record_argv(None, None, False, True))
        return undo

    def _views(self, target_ids: Sequence[str], summaries: Sequence[list[Any]], now: float | None) -> dict[str, TargetHealth]:
        t = now if now is not None else self._clock()
        bucket = int(t // (self._s.error_window_s / BUCKETS))
        out = {tid: summary_view(f, bucket, t, self._s) for tid, f in zip(target_ids, summaries, strict=True)}
        set_circuit(self._metrics, out)
        return out

    # ---- the SharedState interface ------------------------------------------------------
    async def admit(self, adm: Admission, target_ids: Sequence[str]) -> tuple[Grant, dict[str, TargetHealth]]:
        day, month, _, _ = self._periods(self._clock())
        ids = tuple(target_ids)
        key = (adm.key, adm.key_limits, adm.key_budget, adm.model, adm.model_limits, ids, day, month)
        plan = self._plans.plan(key, lambda: plan_checks(adm), ids, False, day, month)
        tokens = max(0, adm.tokens)
        if self._ahead is not None and (ticket := self._ahead.take(key, tokens)) is not None:
            return Grant(headers_for(plan.checks, ticket.usages), ticket.rid, adm.key, plan.checks, ticket.tokens,
                         "redis", plan=plan), ticket.views
        rid = self._rid()
        if not plan.calls and not plan.health:
            return Grant({}, rid, adm.key, (), tokens, "redis", plan=plan), {}
        undo = False
        if self._link.available():
            try:
                ran = await self._run(plan, rid, tokens)
            except LimitExceeded as e:
                count_rejection(self._metrics, e.check)
                raise
            except Unavailable:
                # A timed-out script may still have run: settle must free its concurrency
                # slot (removing an absent one is a no-op), or the key stays locked for a lease.
                undo = True
            else:
                grant = Grant(headers_for(plan.checks, ran.usages), rid, adm.key, plan.checks, tokens, "redis", plan=plan)
                views = self._views(ids, ran.summaries, ran.now)
                if self._ahead is not None:
                    self._ahead.offer(key, plan, ids, tokens, ran.lefts, views)
                return grant, views
        slots = tuple(c for c in plan.checks if c.kind == CONCURRENT) if undo else ()
        if plan.checks and not self._s.fail_open:
            if slots:
                self.settle_soon(Grant({}, rid, adm.key, plan.checks, 0, "redis", plan=plan), None, None, 0.0)
            raise state_unavailable(self._link.reason)
        # fail open: no limits, but the spend still reaches Redis (queued) at settle
        only = plan if slots else None
        return Grant({}, rid, adm.key, plan.checks if slots else (), tokens, "redis", plan=only), \
            await self._local.health(ids)

    async def reserve_target(self, target_id: str, limits: LimitSpec, tokens: int) -> TargetGrant | None:
        rid = self._rid()
        day, month, _, _ = self._periods(self._clock())
        plan = self._plans.plan(("target", target_id, limits), lambda: target_checks(target_id, limits, tokens),
                            (target_id,), True, day, month)
        if self._link.available():
            try:
                ran = await self._run(plan, rid, tokens)
            except LimitExceeded as e:
                count_rejection(self._metrics, e.check)
                return None
            except _ProbeRefused:
                return None
            except Unavailable:
                pass
            else:
                return TargetGrant(target_id, rid, plan.checks, max(0, tokens), ran.claimed == 2, "redis",
                                   headers_for(plan.checks, ran.usages), plan=plan)
        if not self._s.fail_open:
            return None
        return await self._local.reserve_target(target_id, LimitSpec(), tokens)

    def _finished(self, grant: Grant | None, target: TargetGrant | None, actual_tokens: int | None,
                  cost_usd: float) -> Settles:
        """What a finished request gives back (its slots; its tpm amounts down to the count
        used, when known) and is charged; each grant once."""
        settles = self._settles()
        gives, used = (SLOTS, _EMPTY) if actual_tokens is None else (TOKENS, bulk(str(max(0, actual_tokens))))
        for g in (target, grant):
            if g is not None and not g.settled and g.backend == "redis":
                g.settled = True
                if g.plan is not None:
                    settles.plan(g.plan, g.rid, gives, used)
        if grant is not None and grant.backend == "redis" and grant.key is not None and (micro := to_micro(cost_usd)) > 0:
            now = self._clock()
            day, month, _, _ = self._periods(now)
            day_key, keys, paid = self._plans.spend_keys(grant.key, day, month)
            settles.spend(day_key, keys, paid + str(int(now // 60)), grant.rid, micro, _SPEND_TTL)
        return settles

    def _settles(self) -> Settles:
        return Settles(self._settle_head, self.cluster)

    def _send(self, settles: Settles, op: str = "settle") -> None:
        """Nobody waits: each goes with the next batch, and is kept while Redis is down."""
        for ops in settles:
            self._link.send_ops(op, ops)

    async def release_target(self, target: TargetGrant, actual_tokens: int | None = 0) -> None:
        await self.settle(None, target, actual_tokens, 0.0)

    def renew_soon(self, grants: Sequence[Grant]) -> None:
        settles = self._settles()
        lease, now = bulk(str(int(self._s.concurrency_lease_s * 1000))), bulk(self._now())
        for g in grants:
            if not g.settled and g.backend == "redis" and g.plan is not None:
                settles.plan(g.plan, g.rid, RENEW, lease, now)
        self._send(settles)

    def send_now(self) -> None:
        self._link.send_now()

    def settle_soon(self, grant: Grant | None, target: TargetGrant | None, actual_tokens: int | None, cost_usd: float) -> None:
        if target is not None and target.backend == "memory":
            self._local.settle_soon(None, target, actual_tokens, 0.0)
        if grant is not None and grant.backend == "memory":
            self._local.settle_soon(grant, None, actual_tokens, cost_usd)
        self._send(self._finished(grant, target, actual_tokens, cost_usd))

    async def settle(self, grant: Grant | None, target: TargetGrant | None, actual_tokens: int | None, cost_usd: float) -> None:
        """Waits for Redis's reply (or for the settle to be queued while it is down)."""
        if target is not None and target.backend == "memory":
            self._local.settle_soon(None, target, actual_tokens, 0.0)
        if grant is not None and grant.backend == "memory":
            self._local.settle_soon(grant, None, actual_tokens, cost_usd)
        settles = self._finished(grant, target, actual_tokens, cost_usd)
        if not settles:
            return
        if not self._link.available():
            self._send(settles)
            return
        await asyncio.gather(*(self._link.call_ops("settle", ops) for ops in settles), return_exceptions=True)

    def _record_argv(self, ok: bool | None, latency_s: float | None, stream: bool, probe: bool) -> list[str]:
        verdict = "" if ok is None else "1" if ok else "0"
        return [self._now(), verdict, "" if latency_s is None else repr(float(latency_s)), *self._record_args,
                "1" if stream else "0", "1" if probe else "0"]

    def record_soon(self, target_id: str, ok: bool | None, latency_s: float | None, stream: bool = False,
                    probe: bool = False) -> None:
        if ok and not probe and self._link.available():
            # The common case, which never moves a circuit: nobody waits for it, and it rides
            # in the batch's one settle call with every other request's.
            self._link.send_ops("record", self._ok(target_id, latency_s, stream))
            return
        self._record(target_id, ok, latency_s, stream, probe)

    async def record(self, target_id: str, ok: bool | None, latency_s: float | None, stream: bool = False,
                     probe: bool = False) -> None:
        fut = self._record(target_id, ok, latency_s, stream, probe)
        if fut is not None:
            await asyncio.gather(fut, return_exceptions=True)

    def _ok(self, target_id: str, latency_s: float | None, stream: bool) -> SettleOps:
        return ok_ops(self._settle_head, *self._plans.health_part(target_id), latency_s, stream, self._now())

    def _record(self, target_id: str, ok: bool | None, latency_s: float | None, stream: bool,
                probe: bool) -> asyncio.Future[Any] | None:
        if ok is False and self._ahead is not None:
            self._ahead.gen += 1   # the health its tickets came with may be stale now
        if not self._link.available():
            self._local.record_soon(target_id, ok, latency_s, stream, probe)
            return None
        if ok and not probe:
            fut = self._link.call_ops("record", self._ok(target_id, latency_s, stream))

            def locally(f: asyncio.Future[Any]) -> None:   # Redis failed it: health on local state
                if not f.cancelled() and f.exception() is not None:
                    self._local.record_soon(target_id, ok, latency_s, stream, probe)

            fut.add_done_callback(locally)
            return fut
        fut = self._link.call("record", "record", [self._plans.health_key(target_id)],
                              self._record_argv(ok, latency_s, stream, probe))

        def done(f: asyncio.Future[Any]) -> None:
            if f.cancelled():
                return
            if f.exception() is not None:
                self._local.record_soon(target_id, ok, latency_s, stream, probe)
                return
            before, after = (x.decode() for x in f.result())
            log_transition(target_id, before, after)
            set_circuit(self._metrics, {target_id: HEALTHY._replace(state=after)})

        fut.add_done_callback(done)
        return fut

    async def health(self, target_ids: Sequence[str]) -> dict[str, TargetHealth]:
        if target_ids and self._link.available():
            args = [self._now(), self._width, str(BUCKETS)]
            groups = [[self._plans.health_key(t) for t in target_ids]] if not self.cluster else [[self._plans.health_key(t)] for t in target_ids]
            try:
                replies = await asyncio.gather(*(self._link.call("health", "health", g, args) for g in groups))
            except Unavailable:
                pass
            else:
                summaries = [s for r in replies for s in r[1]]
                return self._views(target_ids, summaries, float(replies[0][0]))
        return await self._local.health(target_ids)

    async def ready(self) -> tuple[bool, str]:
        if await self._link.check():
            return True, "redis ok"
        mode = "serving on local state" if self._s.fail_open else "refusing requests (fail closed)"
        return self._s.fail_open, f"redis down: {self._link.reason}, {mode}"

    async def close(self) -> None:
        if self._ahead is not None:
            await self._ahead.close(2 * self._s.redis_timeout_s)
        await self._link.close()
