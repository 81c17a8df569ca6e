"""Redis state stays exact when callers leave, replies come late or twice, clocks disagree,
windows grow large, and the process stops with work still queued.

Each test owns a private redis-server (and, where replies must come late, a delaying relay
in front of it, from test_redis_faults).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from router.backends import create_state
from router.limits import Admission, BudgetSpec, LimitExceeded, LimitSpec
from router.redis_link import BATCH_CALLS
from router.redis_scripts import PAID_TTL_MS
from router.state import SharedState, StateSettings
from tests.fixtures_redis import Clock, RedisServer
from tests.test_redis_faults import QUICK, SlowReplies, recovered, until
from tests.test_state import admitted


def one_slot() -> Admission:
    return Admission("team-a", LimitSpec(concurrent=1), None, "gpt-x", None, 10)


async def test_an_admit_whose_caller_left_gives_its_concurrency_slot_back(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    slow = SlowReplies(server.port, delay=0)
    a = create_state(await slow.start(), StateSettings(redis_timeout_s=2.0))
    b = create_state(server.url, StateSettings(redis_timeout_s=2.0))
    try:
        a.settle_soon(*(await a.admit(one_slot(), []))[:1], None, None, 0.0)  # connected, scripts loaded
        await until(lambda: _free(b))
        slow.delay = 0.3
        leaving = asyncio.ensure_future(a.admit(one_slot(), []))
        await asyncio.sleep(0.1)  # the script has run on Redis; its answer is on the way
        leaving.cancel()  # the client hung up while its request was being admitted
        with pytest.raises(asyncio.CancelledError):
            await leaving
        with pytest.raises(LimitExceeded):
            await b.admit(one_slot(), [])  # the slot is taken for now
        await until(lambda: _free(b))  # and comes back once the late answer arrives
    finally:
        await a.close()
        await b.close()
        await slow.close()


async def _free(s: SharedState) -> bool:
    """One slot free: take it and give it straight back."""
    try:
        grant, _ = await s.admit(one_slot(), [])
    except LimitExceeded:
        return False
    await s.settle(grant, None, None, 0.0)
    return True


async def test_a_settle_replayed_after_it_already_ran_charges_the_budget_once(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    """A settle whose reply timed out is queued and sent again when Redis is back, though it
    ran already: its reservation id in the paid set of the minute it was first sent makes
    the second one a no-op, however many minutes later the replay comes."""
    server = redis_server_factory()
    slow = SlowReplies(server.port, delay=0)
    now = [1_764_499_985.0]
    budget = Admission("team-a", None, BudgetSpec(daily_usd=1.5), "gpt-x", None, 10)
    settings = StateSettings(**{**QUICK, "clock": lambda: now[0], "redis_clock": False})
    a, b = create_state(await slow.start(), settings), create_state(server.url, settings)
    try:
        warm, _ = await a.admit(budget._replace(key="team-b"), [])
        await a.settle(warm, None, None, 0.01)   # Redis has the settle script: a's next one runs
        grant, _ = await a.admit(budget, [])
        slow.delay = 0.3
        await a.settle(grant, None, None, 1.0)   # runs in Redis; its reply comes after the timeout
        assert (await a.ready())[1].startswith("redis down")
        now[0] += 120
        slow.delay = 0
        await until(lambda: recovered(a))   # a's probe finds Redis and replays the settle

        async def replayed() -> bool:   # the warm-up's paid set asked once, team-a's twice (send, replay)
            with server.client() as c:
                return c.info("commandstats").get("cmdstat_sadd", {}).get("calls", 0) == 3

        await until(replayed)
        assert await admitted(b, budget)   # $1.00 of $1.50 spent, not $2.00
        grant2, _ = await b.admit(budget, [])
        await b.settle(grant2, None, None, 1.0)   # another request: it does count
        assert not await admitted(b, budget)
    finally:
        await a.close()
        await b.close()
        await slow.close()


async def test_windows_run_on_redis_time_so_a_replica_with_a_fast_clock_cannot_empty_them(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    rpm3 = Admission("team-a", LimitSpec(rpm=3), None, "gpt-x", None, 10)
    slow_clock = StateSettings(redis_timeout_s=2.0, clock=time.time)
    fast_clock = StateSettings(redis_timeout_s=2.0, clock=lambda: time.time() + 90)
    a, b = create_state(server.url, slow_clock), create_state(server.url, fast_clock)
    try:
        results = [await admitted((a, b)[i % 2], rpm3) for i in range(6)]
        assert sum(results) == 3
    finally:
        await a.close()
        await b.close()


async def test_refusing_a_large_tpm_request_costs_a_few_lookups_however_full_the_window(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    """30,000 entries in the window; a refusal must not walk them (Redis counts the
    commands scripts run, so the bound holds without timing anything)."""
    server = redis_server_factory()
    n = 30_000
    tpm = LimitSpec(tpm=n)
    s = create_state(server.url, StateSettings(redis_timeout_s=10.0))
    try:
        for start in range(0, n, 2_000):
            oks = await asyncio.gather(*(admitted(s, Admission("k", tpm, None, "m", None, 1)) for _ in range(2_000)))
            assert all(oks)
        with server.client() as c:
            c.config_resetstat()
        with pytest.raises(LimitExceeded) as refused:
            await s.admit(Admission("k", tpm, None, "m", None, n), [])
        assert 1 <= int(refused.value.headers["retry-after"]) <= 60
        with server.client() as c:
            stats = c.info("commandstats")
        lookups = sum(v["calls"] for k, v in stats.items()
                      if k.split("_", 1)[1] in ("zrange", "zrangebyscore", "zrevrangebyscore", "hmget", "zscore"))
        assert lookups <= 10, stats
    finally:
        await s.close()


async def test_settles_still_queued_at_shutdown_are_logged(
    redis_server_factory: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture,
) -> None:
    server = redis_server_factory()
    s = create_state(server.url, StateSettings(**QUICK))
    grant, _ = await s.admit(Admission("team-a", LimitSpec(rpm=5), None, "gpt-x", None, 10), [])
    server.stop()
    await s.health(["t"])  # finds Redis gone
    await s.settle(grant, None, 10, 0.5)  # queued for when it returns
    with caplog.at_level(logging.WARNING, logger="router.state"):
        await s.close()
    assert "1 settle(s) Redis never received" in caplog.text


async def test_settles_of_one_loop_iteration_all_land_though_sent_as_one_call(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    s = create_state(server.url, StateSettings(redis_timeout_s=2.0))
    a = Admission("team-a", LimitSpec(concurrent=20, tpm=2_100), None, "gpt-x", None, 100)
    try:
        grants = [(await s.admit(a, []))[0] for _ in range(20)]  # 2,000 tokens reserved, every slot taken
        for g in grants:
            s.settle_soon(g, None, 10, 0.0)  # one iteration: merged into one settle script
        await asyncio.sleep(0.2)
        # every slot back, and each reservation down to 10 tokens: 200 + 19 x 100 fits in 2,100
        assert all([await admitted(s, a) for _ in range(19)])
        assert not await admitted(s, a)
    finally:
        await s.close()


async def test_a_full_batch_of_admits_goes_to_redis_before_the_loop_iteration_ends_and_counts_exactly(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    """Redis runs the first BATCH_CALLS admits of a busy iteration while the proxy is still
    reading the next requests; the admits split over batches still admit exactly the limit."""
    server = redis_server_factory()
    s = create_state(server.url, StateSettings(redis_timeout_s=2.0))
    a = Admission("team-a", LimitSpec(rpm=13), None, "gpt-x", None, 10)
    try:
        assert await admitted(s, a)   # connected, scripts loaded
        with server.client() as c:
            c.config_resetstat()
            calls = [asyncio.ensure_future(admitted(s, a)) for _ in range(3 * BATCH_CALLS)]
            await asyncio.sleep(0)   # every admit made, in one iteration; none of them answered
            assert not any(f.done() for f in calls)
            deadline = time.monotonic() + 2.0   # the loop stays blocked here: only a batch already sent can run
            while c.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0) < BATCH_CALLS:
                assert time.monotonic() < deadline, "the first full batch did not reach Redis within the iteration"
                time.sleep(0.01)
        assert sum(await asyncio.gather(*calls)) == 12
    finally:
        await s.close()


async def test_a_script_redis_lacks_is_sent_again_alone_not_the_calls_that_ran_beside_it(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    """The admit script is cached, the record script not yet: in one batch the admit runs and
    the record is refused (NOSCRIPT). Only the record goes again; the admit counts once."""
    server = redis_server_factory()
    s = create_state(server.url, StateSettings(redis_timeout_s=2.0))
    a = Admission("team-a", LimitSpec(tpm=1_000), None, "gpt-x", None, 10)
    try:
        await s.admit(a, [])   # loads the admit script
        await asyncio.gather(s.admit(a, []), s.record("t", False, None))   # one batch
        with server.client() as c:
            assert c.hget("router:{k:team-a}:tpm:h", "_") == b"20"   # 10 tokens reserved twice, not three times
            assert c.hget("router:{t:t}:health", "cf") == b"1"
    finally:
        await s.close()


async def test_a_cluster_slot_moved_under_a_running_replica_is_followed_and_stays_exact(tmp_path) -> None:
    """The replica's slot map goes stale (a resharding moved the slot of a key it has not
    used yet): Redis answers MOVED, the command goes again where the slot now lives."""
    from redis.crc import key_slot

    from tests.fixtures_redis import need, start_cluster

    nodes = await asyncio.to_thread(start_cluster, need("redis-server"), need("redis-cli"), tmp_path)
    s = create_state(f"redis-cluster://127.0.0.1:{nodes[0].port}", StateSettings(redis_timeout_s=2.0))
    try:
        assert await admitted(s, Admission("warm", LimitSpec(rpm=5), None, "gpt-x", None, 1))  # slot map loaded
        slot = key_slot(b"k:fresh")
        ids = {}
        owner = None
        for n in nodes:
            with n.client() as c:
                ids[n.port] = c.execute_command("CLUSTER", "MYID").decode()
        with nodes[0].client() as c:
            for lo, hi, primary, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if lo <= slot <= hi:
                    owner = primary[1]
        target = next(n for n in nodes if n.port != owner)
        for n in nodes:
            with n.client() as c:
                c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target.port])
        with target.client() as c:
            c.execute_command("CLUSTER", "BUMPEPOCH")
        fresh = Admission("fresh", LimitSpec(rpm=2), None, "gpt-x", None, 1)
        assert [await admitted(s, fresh) for _ in range(3)] == [True, True, False]
        with target.client() as c:
            assert c.zcard("router:{k:fresh}:rpm") == 2  # counted where the slot now lives
    finally:
        await s.close()
        for n in nodes:
            n.stop()


async def test_every_key_written_expires_and_outlives_the_entries_in_its_window(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    """Idle scopes vanish from Redis, but never while an entry still counts: right after an
    admit each window key lives at least a window more (a tpm check's keys get their TTL
    once per half window, so they live up to two)."""
    server = redis_server_factory()
    s = create_state(server.url, StateSettings(redis_timeout_s=2.0))
    a = Admission("team-a", LimitSpec(rpm=100, tpm=10_000, concurrent=5), BudgetSpec(daily_usd=100.0), "gpt-x",
                  LimitSpec(rpm=100, tpm=10_000), 10)
    try:
        for _ in range(3):
            grant, _ = await s.admit(a, [])
            await s.settle(grant, None, 10, 0.01)
        await s.record("t", True, 0.2)
        window_ms = 60_000
        with server.client() as c:
            ttls = {k.decode(): c.pttl(k) for k in c.keys("*")}
        assert ttls and all(t > 0 for t in ttls.values()), [k for k, t in ttls.items() if t <= 0]
        windowed = {k: t for k, t in ttls.items() if k.rsplit("}:", 1)[1] in ("rpm", "tpm", "tpm:h", "tpm:l")}
        assert len(windowed) == 6, ttls   # tpm's three keys (its rpm counts there), for the key and the model
        assert all(window_ms - 1_000 < t <= 2 * window_ms for t in windowed.values()), windowed
    finally:
        await s.close()


async def test_concurrent_cluster_admits_share_one_health_read_per_target(redis_cluster, redis_cluster_url) -> None:
    """Eight admits in one loop iteration want one target's health: one read goes to its node,
    every admit gets the summary, and one that is cancelled leaves the others theirs."""
    s = create_state(redis_cluster_url, StateSettings(redis_timeout_s=2.0))
    a = Admission("team-a", LimitSpec(rpm=100), None, "gpt-x", None, 10)
    try:
        await s.record("up/m", False, None)   # one failure on record, so the summary is not empty
        await s.admit(a, ["up/m"])            # scripts loaded
        for n in redis_cluster:
            with n.client() as c:
                c.config_resetstat()
        calls = [asyncio.ensure_future(s.admit(a, ["up/m"])) for _ in range(8)]
        await asyncio.sleep(0)
        calls[0].cancel()
        done = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(done[0], asyncio.CancelledError)
        assert all(h["up/m"].consecutive_failures == 1 for _, h in done[1:]), done   # type: ignore[index]
        reads = 0   # a health read is one HMGET; an rpm admit (and its refund) makes none
        for n in redis_cluster:
            with n.client() as c:
                reads += c.info("commandstats").get("cmdstat_hmget", {}).get("calls", 0)
        assert reads == 1
    finally:
        await s.close()


async def test_paid_ids_are_kept_ten_minutes_in_one_set_per_key_and_minute(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    """Every priced request leaves its id for replays. Kept for days, a busy proxy's Redis
    would hold hundreds of millions of them; a key each, twice the memory of a set's member."""
    server = redis_server_factory()
    now = [1_764_499_985.0]
    priced = Admission("team-a", None, BudgetSpec(daily_usd=100.0), "gpt-x", None, 10)
    s = create_state(server.url, StateSettings(**{**QUICK, "clock": lambda: now[0], "redis_clock": False}))
    try:
        ids = []
        for step in (0, 20, 40, 60, 70):   # three in one minute, two in the next
            now[0] = 1_764_499_985.0 + step
            grant, _ = await s.admit(priced, [])
            await s.settle(grant, None, None, 0.01)
            ids.append(grant.rid)
        redis = server.client()
        paid = sorted(redis.scan_iter("*:paid:*"), key=lambda k: int(k.rsplit(b":", 1)[1]))
        assert [sorted(redis.smembers(k)) for k in paid] == [sorted(i.encode() for i in ids[:3]),
                                                             sorted(i.encode() for i in ids[3:])]
        assert all(0 < redis.pttl(k) <= PAID_TTL_MS for k in paid)
        spend = [k for k in redis.scan_iter("*:spend:*")]
        assert spend and all(redis.pttl(k) > PAID_TTL_MS for k in spend)   # the spend itself stays
    finally:
        await s.close()


async def test_ok_records_of_one_target_in_one_settle_call_share_one_read_and_one_write(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    """Under load a settle call carries many requests' healthy attempts, most on the same
    target: its health hash is read and written once, and ends as if written one by one."""
    server = redis_server_factory()
    s = create_state(server.url, StateSettings(clock=Clock(), redis_clock=False, redis_timeout_s=2.0))
    records = [(0.1, False), (0.2, True), (None, False), (0.05, False), (0.3, True)]   # latency, stream
    redis = server.client()

    def calls() -> dict[str, int]:
        stats = redis.info("commandstats")
        return {op: stats.get(f"cmdstat_{op}", {}).get("calls", 0) for op in ("hmget", "hget", "hset")}

    try:
        await s.health(["one-by-one", "together"])   # connected, scripts loaded
        redis.config_resetstat()
        for latency, stream in records:
            await s.record("one-by-one", True, latency, stream)   # a settle call each
        assert calls() == {"hmget": 5, "hget": 0, "hset": 5}
        redis.config_resetstat()
        for latency, stream in records:
            s.record_soon("together", True, latency, stream)   # one settle call for all
        await until(lambda: _health_written(redis, "together", len(records)))
        assert calls() == {"hmget": 1, "hget": 1, "hset": 1}   # the stream's field read when first met
        one_by_one, together = (redis.hgetall(f"router:{{t:{t}}}:health") for t in ("one-by-one", "together"))
        assert together == one_by_one
        alpha = StateSettings().ewma_alpha
        for field, stream in ((b"ew", False), (b"tt", True)):   # each step stored to the microsecond
            avg: float | None = None
            for latency, on_stream in records:
                if latency is not None and on_stream == stream:
                    avg = latency if avg is None else float(f"{alpha * latency + (1 - alpha) * avg:.6f}")
            assert together[field] == f"{avg:.6f}".encode()
        assert redis.pttl("router:{t:together}:health") > 0   # its TTL set when its bucket began
    finally:
        await s.close()


async def _health_written(redis: Any, target: str, n: int) -> bool:
    return str(n).encode() in redis.hgetall(f"router:{{t:{target}}}:health").values()
