"""Redis going away and coming back under steady load: no 500, limits return with Redis."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp

from router.edge import METRICS
from router.settings import ServeSettings
from tests.fixtures_proxy import key_env

LIMIT = 5


async def readiness(s: aiohttp.ClientSession, url: str) -> dict:
    async with s.get(url + "/readyz") as r:
        return await r.json()


async def test_redis_outage_fails_open_without_500_and_limits_come_back(vendors, start_proxy,
                                                                        redis_server_factory):
    server = redis_server_factory()
    doc = {"providers": {"up": {"kind": "openai", "base_url": vendors.openai.url,
                                "api_key_env": key_env("openai")}},
           "models": {"m": {"targets": [{"provider": "up", "model": "m-1"}]},
                      "limited": {"limits": {"rpm": LIMIT}, "targets": [{"provider": "up", "model": "m-1"}]}}}
    proxy = await start_proxy(doc, vendors=[vendors.openai], settings=ServeSettings(redis_url=server.url, redis_timeout_s=2.0))
    body = {"model": "m", "prompt": "hi", "max_tokens": 5}
    limited = {**body, "model": "limited"}
    seen: Counter[int] = Counter()
    stop_load = asyncio.Event()

    async with aiohttp.ClientSession() as s:
        async def post(payload: dict) -> int:
            async with s.post(proxy.url + "/v1/completions", json=payload) as r:
                await r.read()
                return r.status

        async def steady_load() -> None:
            while not stop_load.is_set():
                seen[await post(body)] += 1
                await asyncio.sleep(0.01)

        load = asyncio.create_task(steady_load())
        assert [await post(limited) for _ in range(LIMIT + 1)] == [200] * LIMIT + [429]

        server.stop()
        await asyncio.sleep(0.5)
        outage = [await post(limited) for _ in range(LIMIT + 3)]
        assert outage == [200] * (LIMIT + 3), "limits fail open while Redis is down"
        ready = await readiness(s, proxy.url)
        assert "redis down" in ready["checks"]["state"]
        assert proxy.app[METRICS].registry.get_sample_value("router_redis_up") == 0

        server.start()
        for _ in range(100):
            if (await readiness(s, proxy.url))["checks"]["state"] == "redis ok":
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the proxy did not pick Redis back up by itself")
        await asyncio.sleep(0.3)
        back = [await post(limited) for _ in range(LIMIT + 1)]
        stop_load.set()
        await load

    assert back == [200] * LIMIT + [429], "limits are enforced again once Redis is back"
    assert seen[200] > 20 and set(seen) == {200}, seen
