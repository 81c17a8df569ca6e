"""A stream longer than a concurrency lease keeps its slot: `router serve` renews the leases
of the requests still in flight (here with a 1.5 s lease, on a real Redis)."""

from __future__ import annotations

import asyncio

import aiohttp

from providers.standins import Reply
from tests.test_replicas import routes, start_replicas, stop


async def test_a_stream_longer_than_the_lease_keeps_its_concurrency_slot(tmp_path, vendors, redis_url) -> None:
    keys = {"team": {"key_env": "ROUTER_TEST_TEAM_KEY", "limits": {"concurrent": 1}}}
    vendors.openai.control.push(Reply(chunks=15, chunk_delay=0.25))  # about 3.75 s, past two leases
    procs, (url,) = await start_replicas(tmp_path, routes(vendors.openai, {}, keys), redis_url, vendors.openai,
                                         count=1, extra_env={"ROUTER_TEST_TEAM_KEY": "sk-team-secret",
                                                             "ROUTER_CONCURRENCY_LEASE_S": "1.5"})
    headers = {"Authorization": "Bearer sk-team-secret"}
    body = {"model": "m", "prompt": "hi", "max_tokens": 5}
    try:
        async with aiohttp.ClientSession() as s:
            async def long_stream() -> bytes:
                async with s.post(url + "/v1/completions", json={**body, "stream": True}, headers=headers) as r:
                    return await r.read()

            stream = asyncio.ensure_future(long_stream())
            await asyncio.sleep(3.0)  # two leases later, the stream still runs
            async with s.post(url + "/v1/completions", json=body, headers=headers) as r:
                during = r.status
            assert (await stream).endswith(b"data: [DONE]\n\n")
            await asyncio.sleep(0.3)  # the settle frees the slot
            async with s.post(url + "/v1/completions", json=body, headers=headers) as r:
                after = r.status
    finally:
        await stop(procs)
        vendors.openai.control.clear()
    assert (during, after) == (429, 200)
