"""With nobody else waiting on Redis, a request's Redis calls go at once, not at the loop's
next turn: a lone admit before the proxy reads whatever else arrived, the last request's
settle as it finishes. With others in flight they still wait to go together.

Each check blocks the proxy's loop and watches a real Redis: what was only scheduled for the
loop's next turn cannot arrive while the loop is blocked.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import pytest
import redis

from providers.standins import Reply
from router.backends import create_state
from router.drain import DRAIN
from router.limits import Admission, LimitSpec
from router.settings import ServeSettings
from router.state import StateSettings
from tests.fixtures_proxy import key_env
from tests.fixtures_redis import RedisServer
from tests.test_state import admitted

KEY_ENV = "ROUTER_TEST_QUIET_KEY"
CONC = "router:{k:team}:conc"


def evalsha_calls(c: redis.Redis) -> int:
    return int(c.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def blocked_until(check: Callable[[], bool], seconds: float = 2.0) -> bool:
    """Polls `check` without yielding to the loop, up to `seconds`."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


async def test_a_lone_admit_reaches_redis_before_the_loop_turns_and_later_ones_wait_to_go_together(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    s = create_state(server.url, StateSettings(redis_timeout_s=2.0))
    a = Admission("team-a", LimitSpec(rpm=100), None, "gpt-x", None, 10)
    try:
        assert await admitted(s, a)   # connected, script loaded
        with server.client() as c:
            c.config_resetstat()
            lone = asyncio.ensure_future(admitted(s, a))
            await asyncio.sleep(0)   # its first step ran: the admit is made
            assert blocked_until(lambda: evalsha_calls(c) == 1), "the lone admit waited for the loop's next turn"
            # the lone admit is awaited (its reply cannot be read while the loop is blocked): these join a batch
            later = [asyncio.ensure_future(admitted(s, a)) for _ in range(3)]
            await asyncio.sleep(0)
            assert not blocked_until(lambda: evalsha_calls(c) > 1, seconds=0.3)
        assert await lone and all(await asyncio.gather(*later))
        with server.client() as c:
            assert evalsha_calls(c) == 4
    finally:
        await s.close()


@pytest.fixture
async def proxy_on_redis(vendors, start_proxy, redis_server_factory, monkeypatch):
    server = redis_server_factory()
    monkeypatch.setenv(KEY_ENV, "sk-quiet-team")
    doc = {"providers": {"up": {"kind": "openai", "base_url": vendors.openai.url, "api_key_env": key_env("openai")}},
           "keys": {"team": {"key_env": KEY_ENV, "limits": {"concurrent": 2}}},
           "models": {"m": {"targets": [{"provider": "up", "model": "m-1"}]}}}
    proxy = await start_proxy(doc, vendors=[vendors.openai],
                              settings=ServeSettings(redis_url=server.url, redis_timeout_s=2.0))
    yield proxy, server
    vendors.openai.control.clear()


async def test_the_last_request_in_flight_frees_its_slot_in_redis_before_the_loop_turns(proxy_on_redis) -> None:
    proxy, server = proxy_on_redis
    freed: list[bool] = []
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer sk-quiet-team"}) as s:
        async def ask() -> None:
            async with s.post(proxy.url + "/v1/completions", json={"model": "m", "prompt": "hi"}) as r:
                assert r.status == 200, await r.text()
                await r.read()

        await ask()   # Redis has every script now: none is sent again from a task
        with server.client() as c:
            proxy.app[DRAIN].on_idle.append(lambda: freed.append(blocked_until(lambda: c.zcard(CONC) == 0)))
            await ask()
    assert freed == [True]


async def test_a_request_ending_while_another_is_in_flight_leaves_its_sends_to_the_loop(
    proxy_on_redis, vendors,
) -> None:
    proxy, _ = proxy_on_redis
    idle: list[int] = []
    proxy.app[DRAIN].on_idle.append(lambda: idle.append(len(proxy.app[DRAIN].live)))
    vendors.openai.control.push(Reply(chunks=6, chunk_delay=0.1))
    body = {"model": "m", "prompt": "hi"}
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer sk-quiet-team"}) as s:
        async with s.post(proxy.url + "/v1/completions", json={**body, "stream": True}) as stream:
            await stream.content.readline()   # the stream is under way
            async with s.post(proxy.url + "/v1/completions", json=body) as r:
                assert r.status == 200
                await r.read()
            await asyncio.sleep(0.05)
            assert idle == []
            await stream.read()
    await asyncio.sleep(0.05)
    assert idle == [0]
