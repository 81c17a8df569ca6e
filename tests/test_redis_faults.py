"""Redis misbehaving: down at start, gone mid-run, slow, back again. Never a 500.

Each test owns a private redis-server it stops, pauses (CLIENT PAUSE) and restarts on
the same port. Hold-offs are shortened through the settings so recovery takes
milliseconds, not seconds.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from router.errors import RouterError
from router.limits import Admission, BudgetSpec, LimitExceeded, LimitSpec
from router.metrics import Metrics
from router.backends import create_state
from router.state import SharedState, StateSettings
from tests.fixtures_redis import RedisServer

T = "openai:gpt-x"
OPS = ("admit", "reserve_target", "settle", "record", "health", "ping")
QUICK: dict[str, Any] = dict(redis_timeout_s=0.1, reconnect_min_s=0.05, reconnect_max_s=0.2)


def adm(rpm: int | None = 5, concurrent: int | None = None, budget: BudgetSpec | None = None) -> Admission:
    return Admission("team-a", LimitSpec(rpm=rpm, concurrent=concurrent), budget, "gpt-x", None, 10)


def gauge(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def until(cond: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def recovered(s: SharedState) -> bool:
    return await s.ready() == (True, "redis ok")


@pytest.fixture
async def states(redis_server_factory: Callable[..., RedisServer]):  # type: ignore[no-untyped-def]
    """`await make(server, n, **settings)` → n replicas on that server; closed after."""
    made: list[SharedState] = []

    async def make(server: RedisServer, n: int = 1, metrics: Metrics | None = None, **kw: object) -> list[SharedState]:
        settings = StateSettings(**{**QUICK, **kw})  # type: ignore[arg-type]
        out = [create_state(server.url, settings, metrics) for _ in range(n)]
        made.extend(out)
        return out

    yield make
    for s in made:
        await s.close()


async def test_redis_down_at_start_fails_open_and_says_so(redis_server_factory, states, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING, "router.state")
    metrics = Metrics()
    (s,) = await states(redis_server_factory(start=False), metrics=metrics)
    for _ in range(20):  # far over the limit of 5: nothing is enforced while Redis is away
        grant, _ = await s.admit(adm(), [T])
        assert grant.headers == {}
        await s.record(T, False, 0.1)
        target = await s.reserve_target(T, LimitSpec(rpm=1), 10)
        await s.settle(grant, target, 5, 0.01)
    assert (await s.health([T]))[T].state == "open"  # health kept on local state
    ok, text = await s.ready()
    assert ok and text.startswith("redis down: ") and text.endswith("serving on local state")
    assert gauge(metrics, "router_redis_up") == 0
    assert gauge(metrics, "router_redis_errors_total", op="admit") >= 1
    assert sum("redis down" in r.message for r in caplog.records) == 1  # once per transition


async def test_redis_down_with_fail_closed_refuses_with_503(redis_server_factory, states) -> None:  # type: ignore[no-untyped-def]
    (s,) = await states(redis_server_factory(start=False), fail_open=False)
    with pytest.raises(RouterError) as e:
        await s.admit(adm(), [T])
    assert (e.value.status, e.value.code, e.value.type) == (503, "service_unavailable", "server_error")
    assert e.value.body()["error"]["message"].startswith("Rate-limit state is unavailable")
    grant, _ = await s.admit(Admission(None, None, None, "gpt-x", None, 1), [T])  # nothing to check
    assert grant.headers == {}
    assert await s.reserve_target(T, LimitSpec(rpm=10), 1) is None
    ok, text = await s.ready()
    assert not ok and "refusing requests (fail closed)" in text


async def test_redis_that_starts_late_is_picked_up(redis_server_factory, states) -> None:  # type: ignore[no-untyped-def]
    server = redis_server_factory(start=False)
    (s,) = await states(server)
    await s.admit(adm(rpm=1), [])
    await s.admit(adm(rpm=1), [])  # failing open
    server.start()
    await until(lambda: recovered(s))
    await s.admit(adm(rpm=1), [])
    with pytest.raises(LimitExceeded):
        await s.admit(adm(rpm=1), [])


async def test_redis_stopped_and_restarted_under_load(redis_server_factory, states, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING, "router.state")
    server, metrics = redis_server_factory(), Metrics()
    # A stopped Redis refuses at once; the timeout is long so that a busy machine's slow
    # reply after the restart is not taken for a second outage (one transition is the point).
    replicas = await states(server, 2, metrics=metrics, redis_timeout_s=2.0)
    escaped: list[BaseException] = []
    admitted = refused = 0
    stop = asyncio.Event()

    async def hammer(s: SharedState) -> None:
        nonlocal admitted, refused
        while not stop.is_set():
            try:
                grant, _ = await s.admit(adm(rpm=1_000_000, concurrent=1_000), [T, "other"])
                await s.record(T, True, 0.01)
                target = await s.reserve_target(T, LimitSpec(rpm=1_000_000), 10)
                await s.settle(grant, target, 5, 0.0001)
                admitted += 1
            except LimitExceeded:
                refused += 1
            except BaseException as e:  # noqa: BLE001 - the point of the test
                escaped.append(e)
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(hammer(s)) for s in replicas for _ in range(4)]
    await asyncio.sleep(0.2)
    await asyncio.to_thread(server.stop)
    await asyncio.sleep(0.3)
    assert gauge(metrics, "router_redis_up") == 0
    down_at = admitted
    await asyncio.sleep(0.2)
    assert admitted > down_at  # still serving, on local state
    await asyncio.to_thread(server.start)
    for s in replicas:
        await until(functools.partial(recovered, s))
    await asyncio.sleep(0.1)
    stop.set()
    await asyncio.gather(*tasks)
    assert escaped == [] and refused == 0
    assert gauge(metrics, "router_redis_up") == 1
    assert sum(gauge(metrics, "router_redis_errors_total", op=op) for op in OPS) >= 2  # one per replica
    downs = sum("redis down" in r.message for r in caplog.records)
    ups = sum("redis is back" in r.message for r in caplog.records)
    assert 1 <= downs <= 2 and ups == downs  # one each per replica, not one per request
    # the restarted (empty) Redis enforces limits again, across replicas
    fresh = Admission("team-b", LimitSpec(rpm=7), None, "gpt-x", None, 10)
    results = await asyncio.gather(*(_admitted(replicas[i % 2], fresh) for i in range(21)))
    assert sum(results) == 7


async def _admitted(s: SharedState, a: Admission) -> bool:
    try:
        await s.admit(a, [])
    except LimitExceeded:
        return False
    return True


async def test_slow_redis_costs_one_timeout_then_serves_locally(redis_server_factory, states) -> None:  # type: ignore[no-untyped-def]
    server = redis_server_factory()
    (s,) = await states(server, redis_timeout_s=0.1)
    await s.admit(adm(), [])
    with server.client() as c:
        c.execute_command("CLIENT", "PAUSE", "600", "ALL")
    started = time.monotonic()
    grant, _ = await s.admit(adm(), [T])
    assert time.monotonic() - started < 0.3
    assert grant.headers == {}
    started = time.monotonic()
    for _ in range(50):  # held off: no more waiting on Redis
        await s.admit(adm(), [T])
    assert time.monotonic() - started < 0.2
    assert "redis down: TimeoutError" in (await s.ready())[1]
    await until(lambda: recovered(s))


async def test_settles_made_while_redis_is_away_are_replayed(redis_server_factory, states) -> None:  # type: ignore[no-untyped-def]
    server = redis_server_factory()
    a, b = await states(server, 2)
    one_slot = adm(rpm=None, concurrent=1)
    grant, _ = await a.admit(one_slot, [])
    with server.client() as c:
        c.execute_command("CLIENT", "PAUSE", "300", "ALL")
    await a.health([T])  # times out: replica a now holds Redis off
    await a.settle(grant, None, None, 0.0)  # so this settle is queued, never sent
    await asyncio.sleep(0.35)  # the pause is over; a has not retried yet (nothing called it)
    with pytest.raises(LimitExceeded):
        await b.admit(one_slot, [])  # the slot is still taken in Redis
    await until(lambda: recovered(a))  # a's probe finds Redis and replays the settle
    await until(lambda: _admitted(b, one_slot))


async def test_spend_of_requests_admitted_while_down_still_counts(redis_server_factory, states) -> None:  # type: ignore[no-untyped-def]
    server = redis_server_factory(start=False)
    (s,) = await states(server)
    budget = adm(rpm=None, budget=BudgetSpec(daily_usd=1.0))
    grant, _ = await s.admit(budget, [])
    await s.settle(grant, None, None, 1.5)  # queued
    server.start()
    await until(lambda: recovered(s))
    with pytest.raises(LimitExceeded) as e:
        await s.admit(budget, [])
    assert e.value.code == "insufficient_quota"


async def test_a_cluster_node_lost_and_back(redis_binary: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """One primary dies: a plain PING to the others still answers, but its slots do not.
    The proxy must stay down (no flapping) until every primary is back and the cluster ok."""
    from tests.fixtures_redis import need, start_cluster

    nodes = await asyncio.to_thread(start_cluster, redis_binary, need("redis-cli"), tmp_path)
    metrics = Metrics()
    state = create_state(f"redis-cluster://127.0.0.1:{nodes[0].port}", StateSettings(**QUICK), metrics)
    try:
        keys = [Admission(f"team-{i}", LimitSpec(rpm=1_000_000), None, "gpt-x", None, 1) for i in range(12)]
        for a in keys:  # a dozen keys: some surely hash to the node about to die
            await state.admit(a, [T])
        await asyncio.to_thread(nodes[1].stop)
        for _ in range(30):
            for a in keys:
                await state.admit(a, [T])
            await asyncio.sleep(0.01)
        ok, text = await state.ready()
        assert ok and text.startswith("redis down")
        await asyncio.to_thread(nodes[1].start)
        await until(lambda: recovered(state), timeout=20)
        errors = sum(gauge(metrics, "router_redis_errors_total", op=op) for op in OPS)
        fresh = Admission("fresh", LimitSpec(rpm=2), None, "gpt-x", None, 1)
        results = [await _admitted(state, fresh) for _ in range(4)]
        assert results == [True, True, False, False]
        assert sum(gauge(metrics, "router_redis_errors_total", op=op) for op in OPS) == errors  # stable once back
    finally:
        await state.close()
        for n in nodes:
            n.stop()


@pytest.mark.parametrize(("ci", "outcome"), [("1", pytest.fail.Exception), (None, pytest.skip.Exception)])
def test_a_missing_redis_server_fails_in_ci_and_skips_locally(monkeypatch, ci, outcome) -> None:  # type: ignore[no-untyped-def]
    from tests.fixtures_redis import need

    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="not installed"):
        need("redis-server-that-does-not-exist")


class SlowReplies:
    """A loopback TCP relay to Redis that delays every reply: commands run at once, their
    answers arrive late, as over a congested network."""

    def __init__(self, port: int, delay: float) -> None:
        self.port, self.delay = port, delay
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delayed: bool) -> None:
            try:
                while data := await src.read(65536):
                    if delayed and self.delay:
                        await asyncio.sleep(self.delay)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_admit_that_timed_out_but_ran_frees_its_concurrency_slot(redis_server_factory) -> None:  # type: ignore[no-untyped-def]
    server = redis_server_factory()
    slow = SlowReplies(server.port, delay=0)
    one_slot = adm(rpm=None, concurrent=1)
    a = create_state(await slow.start(), StateSettings(**QUICK))
    b = create_state(server.url, StateSettings(**QUICK))
    try:
        await a.settle(*(await a.admit(one_slot, []))[:1], None, None, 0.0)  # connected, script loaded
        slow.delay = 0.3
        grant, _ = await a.admit(one_slot, [])  # runs on Redis, but its answer comes too late
        await asyncio.sleep(0.35)
        with pytest.raises(LimitExceeded):
            await b.admit(one_slot, [])  # the script did take the slot
        slow.delay = 0
        await a.settle(grant, None, None, 0.0)  # the request ended: its slot must come back
        await until(lambda: recovered(a))
        await until(lambda: _admitted(b, one_slot))
    finally:
        await a.close()
        await b.close()
        await slow.close()
