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
back and replays the queued settles (a settle whose reply was lost may apply twice:
spend then over-counts, never under-counts).
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

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from router.health import BUCKETS, CircuitRecord, TargetHealth
from router.limits import (
    BUDGET_KINDS,
    CONCURRENT,
    DAILY_USD,
    RPM,
    TPM,
    WINDOW_S,
    Admission,
    Check,
    LimitExceeded,
    LimitSpec,
    Usage,
    budget_periods,
    headers_for,
    plan_checks,
    state_unavailable,
    target_checks,
    to_micro,
)
from router.state import (
    Grant,
    MemoryState,
    StateSettings,
    TargetGrant,
    count_rejection,
    log_transition,
    new_rid,
    set_circuit,
)

if TYPE_CHECKING:
    from router.metrics import Metrics

log = logging.getLogger("router.state")
T = TypeVar("T")
REDIS_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)
WINDOW_MS = int(WINDOW_S * 1000)
HEALTH_TTL_MS = 86_400_000  # a target nobody calls for a day starts afresh
SPEND_TTL_MS = {DAILY_USD: 3 * 86_400_000, "monthly_usd": 62 * 86_400_000}

_PROBE_LUA = """
local function probe(h, nows, cooldown, probes, apply)
  local st, oa, pb, pw = unpack(redis.call('HMGET', h, 'st', 'oa', 'pb', 'pw'))
  local now = tonumber(nows)
  st = st or 'closed'
  local eff = st
  if st == 'open' and now - tonumber(oa or '0') >= cooldown then eff = 'half_open' end
  if eff == 'closed' then return 1 end
  if eff == 'open' then return 0 end
  pb, pw = tonumber(pb or '0'), tonumber(pw or '0')
  if st ~= 'half_open' or now - pw >= cooldown then pb, pw = 0, nows end
  if pb >= probes then return 0 end
  if apply then redis.call('HSET', h, 'st', 'half_open', 'pw', pw, 'pb', pb + 1) end
  return 2
end
"""

# KEYS: each check's keys (tpm: zset + hash; others one), then health hashes.
# ARGV: now, cutoff, rid, lease deadline, window ms, lease ms, #checks, probe mode,
#       cooldown, probes, then kind/limit/amount per check.
# Returns {1, {remaining, reset_ms}*, {hgetall}*, probe} or {0, check#, retry_ms, reset_ms}.
ADMIT = _PROBE_LUA + """
local nows, cutoff, rid, lease = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now, win_ms, lease_ms, n = tonumber(nows), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local probing, cooldown, probes = ARGV[8] == '1', tonumber(ARGV[9]), tonumber(ARGV[10])
local W = win_ms / 1000
local function prune_tokens(z, h)
  local old = redis.call('ZRANGEBYSCORE', z, '-inf', cutoff)
  if #old > 0 then
    local sub = 0
    for i = 1, #old, 500 do
      local chunk = {unpack(old, i, math.min(i + 499, #old))}
      for _, a in ipairs(redis.call('HMGET', h, unpack(chunk))) do if a then sub = sub + tonumber(a) end end
      redis.call('HDEL', h, unpack(chunk))
    end
    redis.call('ZREMRANGEBYSCORE', z, '-inf', cutoff)
    if sub ~= 0 then redis.call('HINCRBY', h, '_', -sub) end
  end
  return tonumber(redis.call('HGET', h, '_') or '0')
end
local function reset_ms(z)
  local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
  if #first == 0 then return 0 end
  return math.max(0, math.ceil((tonumber(first[2]) + W - now) * 1000))
end
local function retry_ms(kind, z, h, used, amount, limit)
  if kind == 'concurrent' then return 1000 end
  if amount > limit then return win_ms end
  local excess = used + amount - limit
  if kind == 'rpm' then
    local e = redis.call('ZRANGE', z, excess - 1, excess - 1, 'WITHSCORES')
    if #e == 0 then return win_ms end
    return math.max(1, math.ceil((tonumber(e[2]) + W - now) * 1000))
  end
  local start = 0
  while true do
    local e = redis.call('ZRANGE', z, start, start + 199, 'WITHSCORES')
    if #e == 0 then return win_ms end
    local ids = {}
    for i = 1, #e, 2 do ids[#ids + 1] = e[i] end
    local amts = redis.call('HMGET', h, unpack(ids))
    for i = 1, #ids do
      excess = excess - tonumber(amts[i] or '0')
      if excess <= 0 then return math.max(1, math.ceil((tonumber(e[2 * i]) + W - now) * 1000)) end
    end
    start = start + 200
  end
end
local plan, ki, ai = {}, 1, 11
for c = 1, n do
  local kind, limit, amount = ARGV[ai], tonumber(ARGV[ai + 1]), tonumber(ARGV[ai + 2])
  ai = ai + 3
  local z, h = KEYS[ki], false
  ki = ki + 1
  if kind == 'tpm' then h = KEYS[ki]; ki = ki + 1 end
  local used
  if kind == 'rpm' then
    redis.call('ZREMRANGEBYSCORE', z, '-inf', cutoff)
    used = redis.call('ZCARD', z)
  elseif kind == 'tpm' then
    used = prune_tokens(z, h)
  elseif kind == 'concurrent' then
    redis.call('ZREMRANGEBYSCORE', z, '-inf', nows)
    used = redis.call('ZCARD', z)
  else
    used = tonumber(redis.call('GET', z) or '0')
    if used >= limit then return {0, c, -1, 0} end
  end
  if used + amount > limit then
    local r = 0
    if kind ~= 'concurrent' then r = reset_ms(z) end
    return {0, c, retry_ms(kind, z, h, used, amount, limit), r}
  end
  plan[c] = {kind, z, h, amount, limit - used - amount}
end
if probing and probe(KEYS[ki], nows, cooldown, probes, false) == 0 then return {0, 0, 0, 0} end
local usages = {}
for c = 1, n do
  local kind, z, h, amount, left = unpack(plan[c])
  if kind == 'rpm' or kind == 'tpm' then
    redis.call('ZADD', z, nows, rid)
    redis.call('PEXPIRE', z, win_ms)
    if h then
      redis.call('HSET', h, rid, amount)
      redis.call('HINCRBY', h, '_', amount)
      redis.call('PEXPIRE', h, win_ms)
    end
    usages[#usages + 1] = {left, reset_ms(z)}
  elseif kind == 'concurrent' then
    redis.call('ZADD', z, lease, rid)
    redis.call('PEXPIRE', z, lease_ms)
    usages[#usages + 1] = {left, 0}
  else
    usages[#usages + 1] = {left, 0}
  end
end
local health, claimed = {}, 0
if probing then
  claimed = probe(KEYS[ki], nows, cooldown, probes, true)
else
  for i = ki, #KEYS do health[#health + 1] = redis.call('HGETALL', KEYS[i]) end
end
return {1, usages, health, claimed}
"""

# KEYS: each op's keys; ARGV: rid, #ops, then kind/a/b per op. Undoes or settles
# reservations: tpm -> tokens a ("refund" drops the entry), rpm refund, slot release, spend.
SETTLE = """
local rid, n, ki, ai = ARGV[1], tonumber(ARGV[2]), 1, 3
for c = 1, n do
  local kind, a, b = ARGV[ai], ARGV[ai + 1], ARGV[ai + 2]
  ai = ai + 3
  local z = KEYS[ki]
  ki = ki + 1
  if kind == 'tpm' then
    local h = KEYS[ki]
    ki = ki + 1
    local cur = redis.call('HGET', h, rid)
    if cur then
      if a == 'refund' then
        redis.call('ZREM', z, rid)
        redis.call('HDEL', h, rid)
        redis.call('HINCRBY', h, '_', -tonumber(cur))
      else
        redis.call('HSET', h, rid, a)
        redis.call('HINCRBY', h, '_', tonumber(a) - tonumber(cur))
      end
    end
  elseif kind == 'spend' then
    redis.call('INCRBY', z, a)
    redis.call('PEXPIRE', z, b)
  else
    redis.call('ZREM', z, rid)
  end
end
return 1
"""

# KEYS[1]: health hash. ARGV: now, ok, latency, alpha, failure threshold, error-rate
# threshold, min samples, cooldown, error window, buckets, ttl. Same rules as health.py.
RECORD = """
local h, nows = KEYS[1], ARGV[1]
local now, ok, lat = tonumber(nows), ARGV[2] == '1', tonumber(ARGV[3])
local alpha, fth, rth, mins = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local cool, nb = tonumber(ARGV[8]), tonumber(ARGV[10])
local width = tonumber(ARGV[9]) / nb
local st, oa, cf, ew = unpack(redis.call('HMGET', h, 'st', 'oa', 'cf', 'ew'))
st, cf = st or 'closed', tonumber(cf or '0')
local before = st
if st == 'open' and now - tonumber(oa or '0') >= cool then before = 'half_open' end
if ok and lat then
  ew = tonumber(ew)
  if ew then ew = alpha * lat + (1 - alpha) * ew else ew = lat end
  redis.call('HSET', h, 'ew', string.format('%.6f', ew))
end
local cur = math.floor(now / width)
local k = cur % nb
local bi, bn, be = unpack(redis.call('HMGET', h, 'i' .. k, 'n' .. k, 'e' .. k))
if tonumber(bi) ~= cur then bn, be = 0, 0 end
bn, be = tonumber(bn) + 1, tonumber(be) + (ok and 0 or 1)
if ok then cf = 0 else cf = cf + 1 end
redis.call('HSET', h, 'i' .. k, cur, 'n' .. k, bn, 'e' .. k, be, 'cf', cf)
local after = before
if before == 'half_open' then
  if ok then
    after = 'closed'
    redis.call('HSET', h, 'st', 'closed', 'cf', 0, 'pb', 0)
    for j = 0, nb - 1 do redis.call('HDEL', h, 'i' .. j, 'n' .. j, 'e' .. j) end
  else
    after = 'open'
    redis.call('HSET', h, 'st', 'open', 'oa', nows, 'pb', 0)
  end
elseif before == 'closed' and not ok then
  local sn, se = 0, 0
  for j = 0, nb - 1 do
    local i2, n2, e2 = unpack(redis.call('HMGET', h, 'i' .. j, 'n' .. j, 'e' .. j))
    i2 = tonumber(i2)
    if i2 and i2 > cur - nb and i2 <= cur then sn, se = sn + tonumber(n2), se + tonumber(e2) end
  end
  if cf >= fth or (sn >= mins and se / sn >= rth) then
    after = 'open'
    redis.call('HSET', h, 'st', 'open', 'oa', nows, 'pb', 0)
  end
end
redis.call('PEXPIRE', h, ARGV[11])
return {before, after}
"""

SCRIPTS = {"admit": ADMIT, "settle": SETTLE, "record": RECORD}
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
    flag = query.pop("cluster", ["false"])[0].lower() in ("1", "true", "yes")
    cluster = flag or parts.scheme.endswith("-cluster")
    scheme = "rediss" if parts.scheme.startswith("rediss") else "redis"
    clean = urlunsplit((scheme, parts.netloc, parts.path, urlencode(query, doseq=True), parts.fragment))
    kw: dict[str, Any] = {
        "socket_timeout": s.redis_timeout_s,
        "socket_connect_timeout": s.redis_timeout_s,
        "retry": Retry(NoBackoff(), 1),
    }
    if cluster:
        return RedisCluster.from_url(clean, **kw), True
    return Redis.from_url(clean, **kw), False


class _Unavailable(Exception):
    """Redis failed or is held off; the caller falls back."""


class RedisState:
    """SharedState on Redis for a fleet of replicas (see the module docstring)."""

    def __init__(self, url: str, settings: StateSettings, metrics: Metrics | None = None) -> None:
        self._s, self._metrics = settings, metrics
        self._clock = settings.clock or time.time
        self._client, self.cluster = make_client(url, settings)
        self._local = MemoryState(settings, metrics)  # health and probes while Redis is down
        self._p = settings.key_prefix
        self._up: bool | None = None  # None: not tried yet
        self._reason = "not connected yet"
        self._backoff = settings.reconnect_min_s
        self._retry_at = 0.0
        self._probe_task: asyncio.Task[None] | None = None
        self._cluster_ready = False
        self._init_lock = asyncio.Lock()
        self._pending: deque[tuple[list[str], list[str]]] = deque(maxlen=settings.pending_settles)

    # ---- keys -------------------------------------------------------------------------
    def _base(self, scope: str, name: str) -> str:
        return f"{self._p}:{{{scope[0]}:{_esc(name)}}}"

    def _keys(self, c: Check, day: str, month: str) -> list[str]:
        b = self._base(c.scope, c.name)
        if c.kind == TPM:
            return [f"{b}:tpm", f"{b}:tpm:h"]
        if c.kind in BUDGET_KINDS:
            return [f"{b}:spend:{day if c.kind == DAILY_USD else month}"]
        return [f"{b}:{'conc' if c.kind == CONCURRENT else c.kind}"]

    def _health_key(self, target_id: str) -> str:
        return f"{self._base('target', target_id)}:health"

    # ---- plumbing ---------------------------------------------------------------------
    async def _call(self, op: str, aw: Awaitable[T]) -> T:
        """Run one Redis operation under the timeout. Any failure, even an unexpected one
        from the client library, marks Redis down: the caller falls back, never a 500."""
        try:
            async with asyncio.timeout(self._s.redis_timeout_s):
                if self.cluster and not self._cluster_ready:
                    async with self._init_lock:  # commands racing the first topology load fail
                        await self._client.initialize()  # type: ignore[union-attr]
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
            self._up = False
            self._backoff = self._s.reconnect_min_s
            self._retry_at = time.monotonic() + self._backoff

    def _mark_up(self) -> None:
        if self._up is not True:
            if self._up is False:
                log.warning("redis is back: shared limits and health again")
            self._up = True
            if self._metrics is not None:
                self._metrics.redis_up.set(1)

    async def _probe(self) -> None:
        """One PING after the hold-off; on success replay queued settles."""
        try:
            async with asyncio.timeout(self._s.redis_timeout_s):
                await self._client.ping()
        except REDIS_ERRORS as e:
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

    # ---- admit ------------------------------------------------------------------------
    def _admit_args(self, now: float, rid: str, checks: Sequence[Check], probing: bool) -> list[str]:
        s = self._s
        args = [f"{now:.6f}", f"{now - WINDOW_S:.6f}", rid, f"{now + s.concurrency_lease_s:.6f}", str(WINDOW_MS)]
        args += [str(int(s.concurrency_lease_s * 1000)), str(len(checks)), "1" if probing else "0"]
        args += [repr(s.cooldown_s), str(s.half_open_probes)]
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

    def _refund_ops(self, checks: Sequence[Check], day: str, month: str) -> tuple[list[str], list[str]]:
        keys: list[str] = []
        ops: list[str] = []
        for c in checks:
            if c.kind in (RPM, TPM, CONCURRENT):
                keys += self._keys(c, day, month)
                ops += [c.kind, "refund", ""]
        return keys, ops

    async def _run_checks(
        self, checks: Sequence[Check], now: float, rid: str, tail_keys: list[str], probing: bool
    ) -> tuple[list[Usage | None], list[list[bytes]], bool]:
        """Every check all-or-nothing (per hash tag in Cluster), plus the health hashes or
        probe claim of `tail_keys` in the last script. Raises LimitExceeded or _ProbeRefused."""
        day, month, to_day, to_month = budget_periods(now)
        groups = self._groups(checks, bool(tail_keys))
        calls = []
        for n, idx in enumerate(groups):
            keys = [k for i in idx for k in self._keys(checks[i], day, month)]
            keys += tail_keys if n == len(groups) - 1 else []
            calls.append(self._script("admit", keys, self._admit_args(now, rid, [checks[i] for i in idx], probing)))
        replies = await asyncio.gather(*calls, return_exceptions=True)
        failed = [r for r in replies if isinstance(r, BaseException)]
        refused = [(idx[int(r[1]) - 1] if int(r[1]) else -1, r) for idx, r in zip(groups, replies, strict=True)
                   if not isinstance(r, BaseException) and int(r[0]) == 0]
        if failed or refused:
            took = [i for idx, r in zip(groups, replies, strict=True) if not isinstance(r, BaseException) and int(r[0]) for i in idx]
            keys, ops = self._refund_ops([checks[i] for i in took], day, month)
            if keys:  # Cluster: another tag refused or failed; give back what these took
                await asyncio.gather(self._script("settle", keys, [rid, str(len(ops) // 3), *ops]), return_exceptions=True)
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
        last = replies[-1] if replies else [1, [], [], 0]
        return usages, list(last[2]), int(last[3]) == 2

    async def _read_health(self, keys: list[str]) -> list[list[bytes]]:
        """HGETALL of each key in one pipeline (Cluster: one round trip per node)."""
        if not keys:
            return []
        pipe = self._client.pipeline(transaction=False)
        for k in keys:
            pipe.hgetall(k)
        return [[x for kv in raw.items() for x in kv] for raw in await pipe.execute()]

    def _views(self, target_ids: Sequence[str], raws: Sequence[list[bytes]], now: float) -> dict[str, TargetHealth]:
        out = {}
        for tid, raw in zip(target_ids, raws, strict=True):
            out[tid] = CircuitRecord.parse(dict(zip(raw[::2], raw[1::2], strict=True))).view(now, self._s)
        set_circuit(self._metrics, out)
        return out

    async def _admit(self, checks: list[Check], target_ids: Sequence[str], now: float, rid: str) -> tuple[list[Usage | None], list[list[bytes]]]:
        hkeys = [self._health_key(t) for t in target_ids]
        if not self.cluster:
            usages, raws, _ = await self._run_checks(checks, now, rid, hkeys, False)
            return usages, raws
        done, health = await asyncio.gather(self._run_checks(checks, now, rid, [], False), self._read_health(hkeys), return_exceptions=True)
        for r in (done, health):
            if isinstance(r, BaseException):
                raise r
        return done[0], health  # type: ignore[index,return-value]

    async def admit(self, adm: Admission, target_ids: Sequence[str]) -> tuple[Grant, dict[str, TargetHealth]]:
        now, rid, checks = self._clock(), new_rid(), plan_checks(adm)
        if self._available():
            try:
                usages, raws = await self._call("admit", self._admit(checks, target_ids, now, rid))
            except LimitExceeded as e:
                count_rejection(self._metrics, e.check)
                raise
            except _Unavailable:
                pass
            else:
                grant = Grant(headers_for(checks, usages), rid, adm.key, tuple(checks), max(0, adm.tokens), "redis")
                return grant, self._views(target_ids, raws, now)
        if checks and not self._s.fail_open:
            raise state_unavailable(self._reason)
        # fail open: no limits, but the spend still reaches Redis (queued) at settle
        return Grant({}, rid, adm.key, (), max(0, adm.tokens), "redis"), await self._local.health(target_ids)

    async def reserve_target(self, target_id: str, limits: LimitSpec, tokens: int) -> TargetGrant | None:
        now, rid, checks = self._clock(), new_rid(), target_checks(target_id, limits, tokens)
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

    # ---- settle, record, health -------------------------------------------------------
    def _settle_ops(self, g: Grant | TargetGrant, actual: int | None, micro: int, now: float) -> dict[str, tuple[list[str], list[str]]]:
        """Settle ops per hash tag: token reservation to actual, slot release, spend."""
        day, month, _, _ = budget_periods(now)
        out: dict[str, tuple[list[str], list[str]]] = {}
        for c in g.checks:
            if (c.kind == TPM and actual is not None) or c.kind == CONCURRENT:
                keys, ops = out.setdefault(f"{c.scope}:{c.name}", ([], []))
                keys += self._keys(c, day, month)
                ops += [c.kind, str(max(0, actual or 0)), ""]
        if isinstance(g, Grant) and g.key is not None and micro > 0:
            keys, ops = out.setdefault(f"key:{g.key}", ([], []))
            for kind in BUDGET_KINDS:
                keys += self._keys(Check("key", g.key, kind, 0, 0), day, month)
                ops += ["spend", str(micro), str(SPEND_TTL_MS[kind])]
        return out

    async def release_target(self, target: TargetGrant, actual_tokens: int | None = 0) -> None:
        if target.backend == "memory":
            await self._local.release_target(target, actual_tokens)
        elif not target.settled:
            target.settled = True
            await self._send_settles(self._settle_ops(target, actual_tokens, 0, self._clock()), target.rid)

    async def settle(self, grant: Grant, target: TargetGrant | None, actual_tokens: int | None, cost_usd: float) -> None:
        if target is not None:
            await self.release_target(target, actual_tokens)
        if grant.backend == "memory":
            await self._local.settle(grant, None, actual_tokens, cost_usd)
        elif not grant.settled:
            grant.settled = True
            await self._send_settles(self._settle_ops(grant, actual_tokens, to_micro(cost_usd), self._clock()), grant.rid)

    async def _send_settles(self, by_tag: dict[str, tuple[list[str], list[str]]], rid: str) -> None:
        batches = [(keys, [rid, str(len(ops) // 3), *ops]) for keys, ops in by_tag.values()]
        if not self.cluster and len(batches) > 1:
            batches = [([k for b in batches for k in b[0]], [rid, str(sum(int(b[1][1]) for b in batches)), *[a for b in batches for a in b[1][2:]]])]
        if not batches:
            return
        if self._available():
            try:
                await self._call("settle", asyncio.gather(*(self._script("settle", k, a) for k, a in batches)))
                return
            except _Unavailable:
                pass
        self._pending.extend(batches)  # replayed when Redis is back; the oldest drop first

    async def record(self, target_id: str, ok: bool, latency_s: float | None) -> None:
        s, now = self._s, self._clock()
        if self._available():
            args = [f"{now:.6f}", "1" if ok else "0", "" if latency_s is None else repr(float(latency_s))]
            args += [repr(s.ewma_alpha), str(s.failure_threshold), repr(s.error_rate_threshold), str(s.min_samples)]
            args += [repr(s.cooldown_s), repr(s.error_window_s), str(BUCKETS), str(HEALTH_TTL_MS)]
            try:
                before, after = await self._call("record", self._script("record", [self._health_key(target_id)], args))
            except _Unavailable:
                pass
            else:
                before, after = before.decode(), after.decode()
                log_transition(target_id, before, after)
                if self._metrics is not None:
                    set_circuit(self._metrics, {target_id: TargetHealth(after, None, 0.0, 0)})
                return
        await self._local.record(target_id, ok, latency_s)

    async def health(self, target_ids: Sequence[str]) -> dict[str, TargetHealth]:
        if self._available():
            try:
                raws = await self._call("health", self._read_health([self._health_key(t) for t in target_ids]))
                return self._views(target_ids, raws, self._clock())
            except _Unavailable:
                pass
        return await self._local.health(target_ids)

    async def ready(self) -> tuple[bool, str]:
        if self._available():
            try:
                await self._call("ping", self._client.ping())
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


class _ProbeRefused(Exception):
    """The target's circuit is open, or its half-open probe slots are taken."""
