"""Shared state in Redis (standalone or Cluster), one Lua script per decision.

Key layout (prefix "router"; the {hash tag} keeps one scope's counters on one slot):
  router:{k:<key>}:rpm / :tpm / :tpm:h / :conc / :spend:<YYYY-MM-DD> / :spend:<YYYY-MM>
  router:{m:<model>}:rpm / :tpm / :tpm:h
  router:{t:<target>}:rpm / :tpm / :tpm:h / :health
rpm, tpm and concurrency are sorted sets (member = reservation id; score = admit time, or
lease deadline for :conc); :tpm:h maps id -> tokens with "_" the running total.

Standalone: one EVALSHA per admit covers every limit and the targets' health. Cluster: one
script per hash tag, in parallel; if a later tag refuses, what earlier tags reserved is
refunded at once. In that short window a concurrent request may see those counters
charged and be refused too: Cluster can over-refuse by a hair, never over-admit.

Faults: any Redis error or a call slower than `redis_timeout_s` marks Redis down (one
warning per transition, router_redis_errors_total{op}, router_redis_up 0). While down:
limits fail open (or 503 with fail_open=False), health and probes run on an in-process
MemoryState, settles are queued; a background PING with doubling hold-off brings Redis
back and replays the queued settles. A call that timed out may still run on Redis later:
counters then over-count a little, never under-count.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from router.health import BUCKETS, LUA_HEALTH, LUA_PRELUDE, LUA_RECORD, CircuitRecord, TargetHealth
from router.limits import (
    BUDGET_KINDS, CONCURRENT, DAILY_USD, LUA_ADMIT, LUA_SETTLE, RPM, TPM, WINDOW_S, Admission, BudgetPeriods,
    Check, LimitExceeded, LimitSpec, Usage, headers_for, plan_checks, state_unavailable, target_checks, to_micro,
)
from router.state import (
    Grant, MemoryState, Rids, StateSettings, TargetGrant, count_rejection, log_transition, set_circuit,
)

if TYPE_CHECKING:
    from router.metrics import Metrics

log = logging.getLogger("router.state")
T = TypeVar("T")
REDIS_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)
HEALTH_TTL_MS = 86_400_000  # a target nobody calls for a day starts afresh
SPEND_TTL_MS = {DAILY_USD: 3 * 86_400_000, "monthly_usd": 62 * 86_400_000}
Ops = dict[str, tuple[list[str], list[str]]]  # hash tag -> (keys, args) of a settle script

SCRIPTS = {
    "admit": LUA_PRELUDE + LUA_ADMIT,
    "health": LUA_PRELUDE + LUA_HEALTH,
    "settle": LUA_SETTLE,
    "record": LUA_PRELUDE + LUA_RECORD,
}
SHAS = {name: hashlib.sha1(body.encode()).hexdigest() for name, body in SCRIPTS.items()}


def _esc(name: str) -> str:
    """Names go inside a {hash tag}: braces would end it early."""
    return name.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def make_client(url: str, s: StateSettings) -> tuple[Redis | RedisCluster, bool]:
    """(client, is_cluster) for redis://, rediss://, redis-cluster://, ...?cluster=true.
    One immediate retry inside redis-py, for a pooled connection that went stale (Redis
    restarted, Cluster client re-initialised); `redis_timeout_s` still bounds the call."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    cluster = query.pop("cluster", ["false"])[0].lower() in ("1", "true", "yes") or parts.scheme.endswith("-cluster")
    scheme = "rediss" if parts.scheme.startswith("rediss") else "redis"
    clean = urlunsplit((scheme, parts.netloc, parts.path, urlencode(query, doseq=True), parts.fragment))
    kw: dict[str, Any] = {
        "socket_timeout": s.redis_timeout_s,
        "socket_connect_timeout": s.redis_timeout_s,
        "retry": Retry(NoBackoff(), 1),
    }
    if cluster:
        return RedisCluster.from_url(clean, max_connections=s.redis_max_connections, **kw), True
    # a blocking pool: a burst past the pool size waits for a connection (within the
    # timeout) instead of failing with "Too many connections" and failing open
    pool = BlockingConnectionPool.from_url(clean, max_connections=s.redis_max_connections, timeout=s.redis_timeout_s, **kw)
    return Redis.from_pool(pool), False


class _Unavailable(Exception):
    """Redis failed or is held off; the caller falls back."""


class _ProbeRefused(Exception):
    """The target's circuit is open, or its half-open probe slots are taken."""


class RedisState:
    """SharedState on Redis for a fleet of replicas (see the module docstring)."""

    local = False

    def __init__(self, url: str, settings: StateSettings, metrics: Metrics | None = None) -> None:
        self._s, self._metrics = settings, metrics
        self._clock = settings.clock or time.time
        self._client, self.cluster = make_client(url, settings)
        self._local = MemoryState(settings, metrics)  # health and probes while Redis is down
        self._up: bool | None = None  # None: not tried yet
        self._reason = "not connected yet"
        self._backoff, self._retry_at, self._up_since = settings.reconnect_min_s, 0.0, 0.0
        self._probe_task: asyncio.Task[None] | None = None
        self._cluster_ready, self._init_lock = False, asyncio.Lock()
        self._rid, self._periods = Rids(), BudgetPeriods()
        self._pending: deque[tuple[list[str], list[str]]] = deque(maxlen=settings.pending_settles)

    # ---- keys -------------------------------------------------------------------------
    def _base(self, scope: str, name: str) -> str:
        return f"{self._s.key_prefix}:{{{scope[0]}:{_esc(name)}}}"

    def _keys(self, c: Check, day: str, month: str) -> list[str]:
        b = self._base(c.scope, c.name)
        if c.kind == TPM:
            return [f"{b}:tpm", f"{b}:tpm:h"]
        if c.kind in BUDGET_KINDS:
            return [f"{b}:spend:{day if c.kind == DAILY_USD else month}"]
        return [f"{b}:{'conc' if c.kind == CONCURRENT else c.kind}"]

    def _health_key(self, target_id: str) -> str:
        return f"{self._base('target', target_id)}:health"

    def _bucket(self, now: float) -> str:
        return str(int(now // (self._s.error_window_s / BUCKETS)))

    # ---- plumbing: timeouts, hold-off, reconnect --------------------------------------
    async def _call(self, op: str, aw: Awaitable[T]) -> T:
        """Run one Redis operation under the timeout. Any failure, even an unexpected one
        from the client library, marks Redis down: the caller falls back, never a 500."""
        try:
            async with asyncio.timeout(self._s.redis_timeout_s):
                if self.cluster and not self._cluster_ready:
                    async with self._init_lock:  # commands racing the first topology load fail
                        await self._client.initialize()
                        self._cluster_ready = True
                result = await aw
        except (LimitExceeded, _ProbeRefused):
            raise
        except Exception as e:
            if asyncio.iscoroutine(aw):
                aw.close()  # never started if the initialisation failed: no "never awaited"
            if not isinstance(e, REDIS_ERRORS):
                log.exception("unexpected error from redis during %s", op)
            self._mark_down(op, e)
            raise _Unavailable(op) from e
        self._mark_up()
        return result

    async def _script(self, name: str, keys: list[str], args: list[str]) -> Any:
        try:
            return await self._client.evalsha(SHAS[name], len(keys), *keys, *args)
        except NoScriptError:  # first use on this node, or Redis restarted: EVAL caches it
            return await self._client.eval(SCRIPTS[name], len(keys), *keys, *args)

    def _available(self) -> bool:
        """Up (or never tried): use Redis. Down: fall back, and PING once the hold-off is over."""
        if self._up is not False:
            return True
        if time.monotonic() >= self._retry_at and (self._probe_task is None or self._probe_task.done()):
            self._probe_task = asyncio.get_running_loop().create_task(self._probe())
        return False

    def _mark_down(self, op: str, e: BaseException) -> None:
        if self._metrics is not None:
            self._metrics.redis_errors.labels(op).inc()
            self._metrics.redis_up.set(0)
        self._reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        if self._up is not False:
            mode = "admitting without limits" if self._s.fail_open else "refusing requests (fail closed)"
            log.warning("redis down (%s during %s): %s, health on local state", self._reason, op, mode)
            # down again soon after coming back (a flapping link, a Cluster still converging):
            # keep the longer hold-off instead of starting over at the shortest
            steady = time.monotonic() - self._up_since > self._s.reconnect_max_s
            self._up, self._backoff = False, self._s.reconnect_min_s if steady else self._backoff
            self._retry_at = time.monotonic() + self._backoff

    def _mark_up(self) -> None:
        if self._up is not True:
            if self._up is False:
                log.warning("redis is back: shared limits and health again")
            self._up, self._up_since = True, time.monotonic()
            if self._metrics is not None:
                self._metrics.redis_up.set(1)

    async def _ping(self) -> None:
        """Standalone: PING. Cluster: every primary answers and sees cluster_state:ok (a
        plain PING reaches one live node while another node's slots are unreachable)."""
        if not self.cluster:
            await self._client.ping()
            return
        cluster: Any = self._client
        info: dict[str, dict[str, str]] = await cluster.cluster_info(target_nodes=RedisCluster.PRIMARIES)
        bad = [node for node, i in info.items() if i.get("cluster_state") != "ok"]
        if bad:
            raise RedisClusterException(f"cluster_state not ok on {', '.join(sorted(bad))}")

    async def _probe(self) -> None:
        """One check after the hold-off (doubling, with jitter); on success replay settles."""
        try:
            async with asyncio.timeout(self._s.redis_timeout_s):
                await self._ping()
        except Exception as e:
            if self._metrics is not None:
                self._metrics.redis_errors.labels("ping").inc()
            self._reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            self._backoff = min(self._s.reconnect_max_s, self._backoff * 2)
            self._retry_at = time.monotonic() + self._backoff * random.uniform(0.8, 1.2)
            return
        self._mark_up()
        while self._pending and self._up:
            keys, args = self._pending[0]
            try:
                await self._call("settle", self._script("settle", keys, args))
            except _Unavailable:
                return
            self._pending.popleft()

    # ---- checks -----------------------------------------------------------------------
    def _admit_args(self, now: float, rid: str, checks: Sequence[Check], probing: bool) -> list[str]:
        s = self._s
        args = [f"{now:.6f}", f"{now - WINDOW_S:.6f}", rid, f"{now + s.concurrency_lease_s:.6f}", str(int(WINDOW_S * 1000))]
        args += [str(int(s.concurrency_lease_s * 1000)), str(len(checks)), "1" if probing else "0"]
        args += [repr(s.cooldown_s), str(s.half_open_probes), self._bucket(now), str(BUCKETS)]
        for c in checks:
            args += [c.kind, str(c.limit), str(c.amount)]
        return args

    def _groups(self, checks: Sequence[Check], tail: bool) -> list[list[int]]:
        """Check indices per script call: all in one standalone, one per hash tag in Cluster."""
        if not self.cluster:
            return [list(range(len(checks)))] if checks or tail else []
        by_tag: dict[tuple[str, str], list[int]] = {}
        for i, c in enumerate(checks):
            by_tag.setdefault((c.scope, c.name), []).append(i)
        return list(by_tag.values()) or ([[]] if tail else [])

    async def _run_checks(
        self, checks: Sequence[Check], now: float, rid: str, tail_keys: list[str], probing: bool
    ) -> tuple[list[Usage | None], list[list[Any]], bool]:
        """Every check all-or-nothing (per hash tag in Cluster), plus the health summaries
        or probe claim of `tail_keys` in the last script. Raises LimitExceeded/_ProbeRefused."""
        day, month, to_day, to_month = self._periods(now)
        groups = self._groups(checks, bool(tail_keys))
        calls = []
        for n, idx in enumerate(groups):
            keys = [k for i in idx for k in self._keys(checks[i], day, month)]
            keys += tail_keys if n == len(groups) - 1 else []
            calls.append(self._script("admit", keys, self._admit_args(now, rid, [checks[i] for i in idx], probing)))
        # one call (standalone, or one tag) needs no gather: if it fails it took nothing
        replies: list[Any] = [await calls[0]] if len(calls) == 1 else await asyncio.gather(*calls, return_exceptions=True)
        failed = [r for r in replies if isinstance(r, BaseException)]
        refused = [(idx[int(r[1]) - 1] if int(r[1]) else -1, r) for idx, r in zip(groups, replies, strict=True)
                   if not isinstance(r, BaseException) and int(r[0]) == 0]
        if failed or refused:
            ops: Ops = {}
            for idx, r in zip(groups, replies, strict=True):
                if not isinstance(r, BaseException) and int(r[0]):  # Cluster: give back what this tag took
                    self._add_ops(ops, [checks[i] for i in idx], rid, "refund", day, month)
            await asyncio.gather(*(self._script("settle", k, a) for k, a in self._batches(ops)), return_exceptions=True)
            if failed:
                raise failed[0]
            i, r = min(refused, key=lambda x: x[0])
            if i < 0:
                raise _ProbeRefused
            c = checks[i]
            retry = (to_day if c.kind == DAILY_USD else to_month) if int(r[2]) < 0 else int(r[2]) / 1000
            raise LimitExceeded(c, retry, Usage(c.limit, 0, int(r[3]) / 1000) if c.kind in (RPM, TPM) else None)
        usages: list[Usage | None] = [None] * len(checks)
        for idx, r in zip(groups, replies, strict=True):
            for i, (left, reset) in zip(idx, r[1], strict=True):
                if checks[i].kind in (RPM, TPM):
                    usages[i] = Usage(checks[i].limit, int(left), int(reset) / 1000)
        last: Any = replies[-1] if replies else [1, [], [], 0]
        return usages, list(last[2]), int(last[3]) == 2

    async def _summaries(self, target_ids: Sequence[str], now: float) -> list[list[Any]]:
        keys, args = [self._health_key(t) for t in target_ids], [self._bucket(now), str(BUCKETS)]
        if not keys:
            return []
        if not self.cluster:
            return list(await self._script("health", keys, args))
        replies = await asyncio.gather(*(self._script("health", [k], args) for k in keys))
        return [r[0] for r in replies]

    def _views(self, target_ids: Sequence[str], summaries: Sequence[list[Any]], now: float) -> dict[str, TargetHealth]:
        out = {t: CircuitRecord.from_summary(f, self._bucket(now)).view(now, self._s) for t, f in zip(target_ids, summaries, strict=True)}
        set_circuit(self._metrics, out)
        return out

    async def _admit(self, checks: list[Check], target_ids: Sequence[str], now: float, rid: str) -> tuple[list[Usage | None], list[list[Any]]]:
        if not self.cluster:
            usages, summaries, _ = await self._run_checks(checks, now, rid, [self._health_key(t) for t in target_ids], False)
            return usages, summaries
        done, summaries = await asyncio.gather(self._run_checks(checks, now, rid, [], False), self._summaries(target_ids, now), return_exceptions=True)
        for r in (done, summaries):
            if isinstance(r, BaseException):
                raise r
        return done[0], summaries

    # ---- the SharedState interface ----------------------------------------------------
    async def admit(self, adm: Admission, target_ids: Sequence[str]) -> tuple[Grant, dict[str, TargetHealth]]:
        now, rid, checks = self._clock(), self._rid(), plan_checks(adm)
        undo: tuple[Check, ...] = ()
        if self._available():
            try:
                usages, summaries = await self._call("admit", self._admit(checks, target_ids, now, rid))
            except LimitExceeded as e:
                count_rejection(self._metrics, e.check)
                raise
            except _Unavailable:
                # A timed-out script may still have run: settle must free its concurrency
                # slot (removing an absent one is a no-op), or the key stays locked for a lease.
                undo = tuple(c for c in checks if c.kind == CONCURRENT)
            else:
                grant = Grant(headers_for(checks, usages), rid, adm.key, tuple(checks), max(0, adm.tokens), "redis")
                return grant, self._views(target_ids, summaries, now)
        if checks and not self._s.fail_open:
            if undo:
                await self.settle(Grant({}, rid, adm.key, undo, 0, "redis"), None, None, 0.0)
            raise state_unavailable(self._reason)
        # fail open: no limits, but the spend still reaches Redis (queued) at settle
        return Grant({}, rid, adm.key, undo, max(0, adm.tokens), "redis"), await self._local.health(target_ids)

    async def reserve_target(self, target_id: str, limits: LimitSpec, tokens: int) -> TargetGrant | None:
        now, rid, checks = self._clock(), self._rid(), target_checks(target_id, limits, tokens)
        if self._available():
            try:
                work = self._run_checks(checks, now, rid, [self._health_key(target_id)], True)
                usages, _, probe = await self._call("reserve_target", work)
            except LimitExceeded as e:
                count_rejection(self._metrics, e.check)
                return None
            except _ProbeRefused:
                return None
            except _Unavailable:
                pass
            else:
                return TargetGrant(target_id, rid, tuple(checks), max(0, tokens), probe, "redis", headers_for(checks, usages))
        if not self._s.fail_open:
            return None
        return await self._local.reserve_target(target_id, LimitSpec(), tokens)

    def _add_ops(self, ops: Ops, checks: Sequence[Check], rid: str, actual: str | None, day: str, month: str) -> None:
        """Settle ops per hash tag: tokens to `actual` ("refund": drop), slot release."""
        for c in checks:
            if (c.kind == TPM and actual is not None) or c.kind == CONCURRENT or (actual == "refund" and c.kind == RPM):
                keys, args = ops.setdefault(f"{c.scope}:{c.name}", ([], []))
                keys += self._keys(c, day, month)
                args += [c.kind, rid, actual or "", ""]

    def _batches(self, ops: Ops) -> list[tuple[list[str], list[str]]]:
        """One settle script per hash tag in Cluster, one for everything standalone."""
        groups = list(ops.values()) if self.cluster else [([k for v in ops.values() for k in v[0]], [a for v in ops.values() for a in v[1]])]
        return [(keys, [str(len(args) // 4), *args]) for keys, args in groups if keys]

    async def release_target(self, target: TargetGrant, actual_tokens: int | None = 0) -> None:
        await self.settle(None, target, actual_tokens, 0.0)

    async def settle(self, grant: Grant | None, target: TargetGrant | None, actual_tokens: int | None, cost_usd: float) -> None:
        """Grant and target in one script (standalone) or one per hash tag (Cluster)."""
        ops: Ops = {}
        day, month, _, _ = self._periods(self._clock())
        actual = None if actual_tokens is None else str(max(0, actual_tokens))
        if target is not None and target.backend == "memory":
            await self._local.release_target(target, actual_tokens)
        elif target is not None and not target.settled:
            target.settled = True
            self._add_ops(ops, target.checks, target.rid, actual, day, month)
        if grant is not None and grant.backend == "memory":
            await self._local.settle(grant, None, actual_tokens, cost_usd)
        elif grant is not None and not grant.settled:
            grant.settled = True
            self._add_ops(ops, grant.checks, grant.rid, actual, day, month)
            if grant.key is not None and (micro := to_micro(cost_usd)) > 0:
                keys, args = ops.setdefault(f"key:{grant.key}", ([], []))
                for kind in BUDGET_KINDS:
                    keys += self._keys(Check("key", grant.key, kind, 0, 0), day, month)
                    args += ["spend", grant.rid, str(micro), str(SPEND_TTL_MS[kind])]
        batches = self._batches(ops)
        if batches and self._available():
            calls = [self._script("settle", k, a) for k, a in batches]
            try:
                await self._call("settle", calls[0] if len(calls) == 1 else asyncio.gather(*calls))
                return
            except _Unavailable:
                pass
        self._pending.extend(batches)  # replayed when Redis is back; the oldest drop first

    async def record(self, target_id: str, ok: bool, latency_s: float | None, stream: bool = False) -> None:
        s, now = self._s, self._clock()
        if self._available():
            args = [f"{now:.6f}", "1" if ok else "0", "" if latency_s is None else repr(float(latency_s))]
            args += [repr(s.ewma_alpha), str(s.failure_threshold), repr(s.error_rate_threshold), str(s.min_samples)]
            args += [repr(s.cooldown_s), self._bucket(now), str(BUCKETS), str(HEALTH_TTL_MS), "1" if stream else "0"]
            try:
                before, after = await self._call("record", self._script("record", [self._health_key(target_id)], args))
            except _Unavailable:
                pass
            else:
                log_transition(target_id, before.decode(), after.decode())
                set_circuit(self._metrics, {target_id: TargetHealth(after.decode(), None, 0.0, 0)})
                return
        await self._local.record(target_id, ok, latency_s, stream)

    async def health(self, target_ids: Sequence[str]) -> dict[str, TargetHealth]:
        if self._available():
            now = self._clock()
            try:
                return self._views(target_ids, await self._call("health", self._summaries(target_ids, now)), now)
            except _Unavailable:
                pass
        return await self._local.health(target_ids)

    async def ready(self) -> tuple[bool, str]:
        if self._available():
            try:
                await self._call("ping", self._ping())
                return True, "redis ok"
            except _Unavailable:
                pass
        mode = "serving on local state" if self._s.fail_open else "refusing requests (fail closed)"
        return self._s.fail_open, f"redis down: {self._reason}, {mode}"

    async def close(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            await asyncio.gather(self._probe_task, return_exceptions=True)
        await self._client.aclose()
