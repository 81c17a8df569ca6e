"""The Redis backend's Lua scripts: the rules of limits.py and health.py, run atomically in Redis.

Each script is the same decision the in-process backend (memory_state.py, health.py's
CircuitRecord) makes in Python; the shared test suite runs both, so a change to one is made
to the other. redis_state.py composes them (SCRIPTS) and redis_link.py sends them.
"""

from router.health import BUCKETS

# How long a paid set (the ids of the reservations whose spend was charged, one set per key
# and minute of the settle's first send) stops a replayed settle from charging its spend
# again. Replays come once Redis answers again (the link retries every 15 s at most); ids
# kept for days would hold hundreds of millions on a busy proxy. A set, not a key per id:
# 57 bytes an id in Redis instead of 133, and one key to expire a minute, not one a request.
PAID_TTL_MS = 600_000
# The longest an admission taken ahead may live (its entries are stamped that far ahead at
# most): an rpm key outlives its last admit by a window and this, so no entry dies early.
AHEAD_MAX_MS = 10_000


def _lua_list(names: list[str], zero: bool = False) -> str:
    return "{" + ("[0] = " if zero else "") + ", ".join(f"'{n}'" for n in names) + "}"


# ---- health: CircuitRecord's rules (health.py) ------------------------------------------

# The error buckets' field names spelled out: in Redis's Lua a number made a string is a
# printf, and spelling them per call cost a request's scripts two dozen of them.
_BUCKET_FIELDS = [f"{x}{k}" for k in range(BUCKETS) for x in "ine"]
LUA_FIELDS = f"""
local BI = {_lua_list([f"i{k}" for k in range(BUCKETS)], True)}
local BN = {_lua_list([f"n{k}" for k in range(BUCKETS)], True)}
local BE = {_lua_list([f"e{k}" for k in range(BUCKETS)], True)}
local SUMMARY_FIELDS = {_lua_list(["st", "oa", "cf", "ew", "pb", "pw", "tt", *_BUCKET_FIELDS])}
"""

# A target's health summary (the error window summed in Lua, so a reply is 9 values, not
# the whole hash; tt last so the indices of the others stay put) and the half-open probe claim: CircuitRecord.claim_probe.
LUA_PRELUDE = """
local function summary(h, cur, nb)
  local v = redis.call('HMGET', h, unpack(SUMMARY_FIELDS))
  local n, e = 0, 0
  for j = 0, nb - 1 do
    local i = tonumber(v[8 + 3 * j])
    if i and i > cur - nb and i <= cur then n, e = n + tonumber(v[9 + 3 * j]), e + tonumber(v[10 + 3 * j]) end
  end
  return {v[1] or 'closed', v[2] or '0', v[3] or '0', v[4] or '', v[5] or '0', v[6] or '0', n, e, v[7] or ''}
end
local function probe(h, nows, cooldown, probes, apply)
  local st, oa, pb, pw = unpack(redis.call('HMGET', h, 'st', 'oa', 'pb', 'pw'))
  local now = tonumber(nows)
  st = st or 'closed'
  local eff = st
  if st == 'open' and now - tonumber(oa or '0') >= cooldown then eff = 'half_open' end
  if eff == 'closed' then return 1 end
  if eff == 'open' then return 0 end
  pb, pw = tonumber(pb or '0'), pw or '0'
  if st ~= 'half_open' or now - tonumber(pw) >= cooldown then pb, pw = 0, nows end
  if pb >= probes then return 0 end
  if apply then redis.call('HSET', h, 'st', 'half_open', 'pw', pw, 'pb', pb + 1) end
  return 2
end
"""

# The current time for a script: the caller's clock when it passes one (tests move it),
# else Redis's own TIME, so every replica's windows and cooldowns share one clock. Asked
# once per script run: a batch of settles is one moment.
LUA_NOW = """
local redis_now
local function clock(given)
  if given ~= '' then return given end
  if not redis_now then
    local t = redis.call('TIME')
    redis_now = t[1] .. '.' .. string.format('%06d', t[2])
  end
  return redis_now
end
"""

# A tpm check's hash keeps, beside each reservation's tokens, '_' (the tokens in the window),
# '#' (every token ever reserved: the ledger's running total) and '@' (when the check's
# three keys last had their TTL set). Each script reads them once and writes them back with
# a reservation, so charging one is one HSET, not three. The TTL is twice the window and set
# again once half a window has passed: a key outlives every entry in it by at least half a
# window, for three PEXPIREs per check per half window instead of per request.
LUA_TPM = """
local tpm_state = {}
local function tpm_read(h, ...)
  local r = redis.call('HMGET', h, '_', '#', '@', ...)
  tpm_state[h] = {tonumber(r[1] or '0'), tonumber(r[2] or '0'), tonumber(r[3] or '-1e18')}
  return r[4]
end
local function tpm_get(h)
  if not tpm_state[h] then tpm_read(h) end
  return tpm_state[h]
end
-- One reservation's tokens; the first time a script meets `h`, read with its fields.
local function tpm_entry(h, rid)
  if tpm_state[h] then return redis.call('HGET', h, rid) end
  return tpm_read(h, rid)
end
"""

# KEYS: health hashes; ARGV: now, error bucket width s, #buckets. Returns {now, {summary}*}.
LUA_HEALTH = """
local nows = clock(ARGV[1])
local cur = math.floor(tonumber(nows) / tonumber(ARGV[2]))
local out = {}
for i = 1, #KEYS do out[i] = summary(KEYS[i], cur, tonumber(ARGV[3])) end
return {nows, out}
"""

# KEYS[1]: health hash. ARGV: now, ok ('1', '0', or '' for no verdict), latency, alpha,
# failure threshold, error-rate threshold, min samples, cooldown, error bucket width s,
# #buckets, ttl, stream, probe. CircuitRecord.record (and release_probe for no verdict).
LUA_RECORD = """
local h, nows = KEYS[1], clock(ARGV[1])
local now, ok, lat = tonumber(nows), ARGV[2] == '1', tonumber(ARGV[3])
local alpha, fth, rth, mins = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local cool, nb = tonumber(ARGV[8]), tonumber(ARGV[10])
local cur = math.floor(now / tonumber(ARGV[9]))
local lf, is_probe = ARGV[12] == '1' and 'tt' or 'ew', ARGV[13] == '1'
local st, oa, cf, avg, pb = unpack(redis.call('HMGET', h, 'st', 'oa', 'cf', lf, 'pb'))
st, cf = st or 'closed', tonumber(cf or '0')
local before = st
if st == 'open' and now - tonumber(oa or '0') >= cool then before = 'half_open' end
if ARGV[2] == '' then
  if is_probe and st == 'half_open' and tonumber(pb or '0') > 0 then redis.call('HINCRBY', h, 'pb', -1) end
  return {before, before}
end
if ok and lat then
  avg = tonumber(avg)
  if avg then avg = alpha * lat + (1 - alpha) * avg else avg = lat end
  redis.call('HSET', h, lf, string.format('%.6f', avg))
end
local k = cur % nb
local bi, bn, be = unpack(redis.call('HMGET', h, BI[k], BN[k], BE[k]))
if tonumber(bi) ~= cur then bn, be = 0, 0 end
if ok then cf = 0 else cf = cf + 1 end
redis.call('HSET', h, BI[k], cur, BN[k], tonumber(bn) + 1, BE[k], tonumber(be) + (ok and 0 or 1), 'cf', cf)
local after = before
if before == 'half_open' and not is_probe then
  after = before
elseif before == 'half_open' and ok then
  after = 'closed'
  redis.call('HSET', h, 'st', 'closed', 'cf', 0, 'pb', 0)
  for j = 0, nb - 1 do redis.call('HDEL', h, BI[j], BN[j], BE[j]) end
elseif not ok and before ~= 'open' then
  local s = summary(h, cur, nb)
  if before == 'half_open' or cf >= fth or (s[7] >= mins and s[8] / s[7] >= rth) then
    after = 'open'
    redis.call('HSET', h, 'st', 'open', 'oa', nows, 'pb', 0)
  end
end
redis.call('PEXPIRE', h, ARGV[11])
return {before, after}
"""


# ---- limits: MemoryState._try's rules (memory_state.py): evaluate every check, then charge
# all or none ----------------------------------------------------------------------------

# KEYS: each check's keys (tpm and rpmt: time zset + amounts hash + ledger zset; others one), then
# health hashes (or the one to claim a probe on). ARGV: now ('' = Redis's own TIME, so every
# replica's windows share one clock), rid, window ms, lease ms, #checks, probe mode, cooldown,
# probes, error bucket width s, #buckets, ahead ms, count, then kind/limit/amount per check.
# For admissions taken ahead (redis_ahead.py): `ahead` stamps the rpm and tpm entries that
# much after now, so one used at any moment of its life stays counted a whole window after
# its use; `count` > 1 takes that many at once, all or none, reservation ids rid.1 .. rid.count.
# Returns {1, {remaining, reset_ms}*, {summary}*, probe, now} or {0, check# (0: probe), retry_ms, reset_ms}.
# tpm's ledger scores each entry by the running total reserved before it, so the moment
# enough tokens leave the window is one range lookup (O(log n)), not a walk of the window;
# it counts reserved amounts, so after settles shrank them the retry hint may come early.
# 'rpmt' is an rpm whose scope has a tpm too: the tpm's time zset holds the same entries (one
# per reservation, at its admit time), so the rpm counts them there and the tpm charges them.
LUA_ADMIT = f"local AHEAD_MAX_MS = {AHEAD_MAX_MS}\n" + """
local nows, rid = clock(ARGV[1]), ARGV[2]
local now, win_ms, lease_ms, n = tonumber(nows), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local probing, cooldown, probes = ARGV[6] == '1', tonumber(ARGV[7]), tonumber(ARGV[8])
local width, nb, W = tonumber(ARGV[9]), tonumber(ARGV[10]), win_ms / 1000
local cur = math.floor(now / width)
local cutoff = string.format('%.6f', now - W)
local lease = string.format('%.6f', now + lease_ms / 1000)
local stamp = ARGV[11] == '0' and nows or string.format('%.6f', now + tonumber(ARGV[11]) / 1000)
local count = tonumber(ARGV[12])
local rids = {rid}
if count > 1 then for i = 1, count do rids[i] = rid .. '.' .. i end end
local pruned = {}
local function used_tokens(z, h, l)
  local v = tpm_get(h)
  if pruned[z] then return v[1] end
  pruned[z] = true
  local old = redis.call('ZRANGEBYSCORE', z, '-inf', cutoff)
  if #old > 0 then
    local sub = 0
    for i = 1, #old, 500 do
      local chunk = {unpack(old, i, math.min(i + 499, #old))}
      for _, a in ipairs(redis.call('HMGET', h, unpack(chunk))) do if a then sub = sub + tonumber(a) end end
      redis.call('HDEL', h, unpack(chunk))
      redis.call('ZREM', l, unpack(chunk))
    end
    redis.call('ZREMRANGEBYSCORE', z, '-inf', cutoff)
    if sub ~= 0 then
      v[1] = v[1] - sub
      redis.call('HSET', h, '_', v[1])
    end
  end
  return v[1]
end
local function until_ms(score) return math.max(1, math.ceil((tonumber(score) + W - now) * 1000)) end
local resets = {}
local function reset_ms(z)
  if resets[z] then return resets[z] end
  local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
  resets[z] = #first == 0 and 0 or until_ms(first[2])
  return resets[z]
end
local function retry_ms(kind, z, l, used, amount, limit)
  if kind == 'concurrent' then return 1000 end
  if amount > limit then return win_ms end
  local excess = used + amount - limit
  if kind ~= 'tpm' then
    local e = redis.call('ZRANGE', z, excess - 1, excess - 1, 'WITHSCORES')
    if #e == 0 then return win_ms end
    return until_ms(e[2])
  end
  local first = redis.call('ZRANGE', l, 0, 0, 'WITHSCORES')
  if #first == 0 then return win_ms end
  local e = redis.call('ZREVRANGEBYSCORE', l, '(' .. string.format('%d', tonumber(first[2]) + excess), '-inf', 'LIMIT', 0, 1)
  if #e == 0 then return win_ms end
  local t = redis.call('ZSCORE', z, e[1])
  if not t then return win_ms end
  return until_ms(t)
end
local plan, ki, ai = {}, 1, 13
for c = 1, n do
  local kind, limit, amount = ARGV[ai], tonumber(ARGV[ai + 1]), tonumber(ARGV[ai + 2]) * count
  ai = ai + 3
  local z, h, l = KEYS[ki], false, false
  ki = ki + 1
  if kind == 'tpm' or kind == 'rpmt' then h, l = KEYS[ki], KEYS[ki + 1]; ki = ki + 2 end
  local used
  if kind == 'rpmt' then
    used_tokens(z, h, l)
    used = redis.call('ZCARD', z)
  elseif kind == 'rpm' then
    redis.call('ZREMRANGEBYSCORE', z, '-inf', cutoff)
    used = redis.call('ZCARD', z)
  elseif kind == 'tpm' then
    used = used_tokens(z, h, l)
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
    return {0, c, retry_ms(kind, z, l, used, amount, limit), r}
  end
  plan[c] = {kind, z, h, l, amount, limit - used - amount}
end
if probing and probe(KEYS[ki], nows, cooldown, probes, false) == 0 then return {0, 0, 0, 0} end
local usages = {}
local function entries(score)   -- ZADD's score/member pairs, one per reservation
  local out = {}
  for i = 1, count do out[2 * i - 1], out[2 * i] = score, rids[i] end
  return out
end
for c = 1, n do
  local kind, z, h, l, amount, left = unpack(plan[c])
  if kind == 'rpm' or kind == 'tpm' then
    redis.call('ZADD', z, unpack(entries(stamp)))
    if kind == 'tpm' then
      local v, each = tpm_get(h), amount / count
      local ledger, fields = {}, {}
      for i = 1, count do   -- each in the ledger at the running total before it
        ledger[2 * i - 1], ledger[2 * i] = v[2] + (i - 1) * each, rids[i]
        fields[2 * i - 1], fields[2 * i] = rids[i], each
      end
      redis.call('ZADD', l, unpack(ledger))
      v[1], v[2] = v[1] + amount, v[2] + amount
      fields[#fields + 1], fields[#fields + 2], fields[#fields + 3], fields[#fields + 4] = '_', v[1], '#', v[2]
      if now - v[3] > W / 2 then
        v[3] = now
        fields[#fields + 1], fields[#fields + 2] = '@', nows
        redis.call('HSET', h, unpack(fields))
        redis.call('PEXPIRE', z, 2 * win_ms)
        redis.call('PEXPIRE', h, 2 * win_ms)
        redis.call('PEXPIRE', l, 2 * win_ms)
      else
        redis.call('HSET', h, unpack(fields))
      end
    else
      redis.call('PEXPIRE', z, win_ms + AHEAD_MAX_MS)
    end
  elseif kind == 'concurrent' then
    redis.call('ZADD', z, unpack(entries(lease)))
    redis.call('PEXPIRE', z, ARGV[4])
  end
end
for c = 1, n do   -- after every charge: an rpm sharing its scope's tpm zset is charged by that tpm
  local kind, z, _, _, _, left = unpack(plan[c])
  usages[c] = {left, (kind == 'rpm' or kind == 'tpm' or kind == 'rpmt') and reset_ms(z) or 0}
end
local health, claimed = {}, 0
if probing then
  claimed = probe(KEYS[ki], nows, cooldown, probes, true)
else
  for i = ki, #KEYS do health[#health + 1] = summary(KEYS[i], cur, nb) end
end
return {1, usages, health, claimed, nows}
"""

# KEYS: each op's keys; ARGV: #ops, the health constants (EWMA alpha, error bucket width s,
# #buckets, health TTL ms), then kind/rid/a/b per op: tpm -> tokens a ("refund" drops the
# entry), rpm/concurrent -> drop the entry, spend (keys: day, month, the paid set of the
# minute the settle was first sent) -> INCRBY a on both, once per reservation if replayed
# within PAID_TTL_MS; b is the day's TTL (ms), set when a spend makes the key, the month's
# is 21 times it; lease (a concurrency slot still in use) -> its deadline moved to now ('' b:
# Redis's TIME) + a ms, if it is still held; ok (key: a health hash) -> a successful attempt
# that was not a probe, latency rid ('' none) into EWMA field a, at time b: LUA_RECORD's
# rules for that case, which never move the circuit, so many requests' ok records ride in one
# call with their settles (the hash's TTL is set once per error bucket). Built by
# redis_settles.py.
LUA_SETTLE = f"local PAID_TTL = '{PAID_TTL_MS}'\n" + """
local alpha, width, nb, ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
-- A batch's ok records of one health hash and error bucket: read once, applied in order
-- (each EWMA step rounded as it is stored), written once: the hash ends as if each had
-- been written on its own.
local oks, ok_order = {}, {}
local function ok_flush(z)
  local o = oks[z]
  oks[z] = nil
  local args = {BI[o.k], o.cur, BN[o.k], o.bn, BE[o.k], o.be, 'cf', '0'}
  for f in pairs(o.set) do args[#args + 1], args[#args + 2] = f, o.avg[f] end
  redis.call('HSET', z, unpack(args))
  if o.rolled then redis.call('PEXPIRE', z, ttl) end   -- the TTL is set again once per bucket
end
local ki, ai = 1, 6
for c = 1, tonumber(ARGV[1]) do
  local kind, rid, a, b = ARGV[ai], ARGV[ai + 1], ARGV[ai + 2], ARGV[ai + 3]
  local z = KEYS[ki]
  ai, ki = ai + 4, ki + 1
  if kind == 'tpm' then
    local h, l = KEYS[ki], KEYS[ki + 1]
    ki = ki + 2
    local cur = tpm_entry(h, rid)
    if cur and a == 'refund' then
      local v = tpm_get(h)
      v[1] = v[1] - tonumber(cur)
      redis.call('ZREM', z, rid)
      redis.call('ZREM', l, rid)
      redis.call('HDEL', h, rid)
      redis.call('HSET', h, '_', v[1])
    elseif cur then
      local v = tpm_get(h)
      v[1] = v[1] + tonumber(a) - tonumber(cur)
      redis.call('HSET', h, rid, a, '_', v[1])
    end
  elseif kind == 'spend' then
    local month, marker = KEYS[ki], KEYS[ki + 1]
    ki = ki + 2
    if redis.call('SADD', marker, rid) == 1 then
      redis.call('PEXPIRE', marker, PAID_TTL)
      local n = tonumber(a)   -- a key's TTL is set when its first spend makes it: b outlives a day
      if redis.call('INCRBY', z, a) == n then redis.call('PEXPIRE', z, b) end
      if redis.call('INCRBY', month, a) == n then redis.call('PEXPIRE', month, b * 21) end
    end
  elseif kind == 'ok' then
    local now, lat = tonumber(clock(b)), tonumber(rid)
    local cur = math.floor(now / width)
    local o = oks[z]
    if o and o.cur ~= cur then ok_flush(z); o = nil end
    if not o then
      local k = cur % nb
      local bi, bn, be, avg = unpack(redis.call('HMGET', z, BI[k], BN[k], BE[k], a))
      local rolled = tonumber(bi) ~= cur   -- a new bucket
      if rolled then bn, be = 0, '0' end
      o = {cur = cur, k = k, bn = tonumber(bn), be = be, rolled = rolled, avg = {[a] = avg}, got = {[a] = true}, set = {}}
      oks[z] = o
      ok_order[#ok_order + 1] = z
    end
    o.bn = o.bn + 1
    if lat then
      if not o.got[a] then o.avg[a], o.got[a] = redis.call('HGET', z, a), true end
      local avg = tonumber(o.avg[a])
      if avg then avg = alpha * lat + (1 - alpha) * avg else avg = lat end
      o.avg[a], o.set[a] = string.format('%.6f', avg), true
    end
  elseif kind == 'lease' then
    redis.call('ZADD', z, 'XX', string.format('%.6f', tonumber(clock(b)) + tonumber(a) / 1000), rid)
    redis.call('PEXPIRE', z, a)
  else
    redis.call('ZREM', z, rid)
  end
end
for _, z in ipairs(ok_order) do if oks[z] then ok_flush(z) end end
return 1
"""
