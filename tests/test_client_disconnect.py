"""A client that goes away mid-stream stops the upstream request at once."""

from __future__ import annotations

import asyncio

import aiohttp

from providers.standins import Reply, StandinControl
from tests.fixtures_vendors import counting_standin


async def test_client_disconnect_closes_upstream_stream(start_proxy):
    control = StandinControl()
    control.push(Reply(text="x" * 200, chunks=100, chunk_delay=0.02))
    vendor, sent = await counting_standin("openai", control)
    try:
        proxy = await start_proxy({"providers": {"up": {"kind": "openai", "base_url": vendor.url}},
                                   "models": {"slow": {"targets": [{"provider": "up", "model": "m"}]}}})
        async with aiohttp.ClientSession() as s:
            resp = await s.post(proxy.url + "/v1/completions",
                                json={"model": "slow", "prompt": "x", "stream": True})
            assert resp.status == 200
            await resp.content.readuntil(b"\n\n")
            resp.close()  # the client goes away after its first event
        await asyncio.sleep(0.5)
        seen = len(sent)
        await asyncio.sleep(0.5)
        assert seen < 50, f"upstream kept streaming after the client left ({seen} events)"
        assert len(sent) == seen, "upstream still streaming a second later"
    finally:
        await vendor.close()


async def test_client_disconnect_closes_every_part_of_a_split_stream(start_proxy):
    control = StandinControl()
    control.push(*[Reply(text="x" * 200, chunks=100, chunk_delay=0.02)] * 3)
    vendor, sent = await counting_standin("poolside", control)
    try:
        proxy = await start_proxy({"providers": {"up": {"kind": "poolside", "base_url": vendor.url}},
                                   "models": {"slow": {"targets": [{"provider": "up", "model": "m"}]}}})
        async with aiohttp.ClientSession() as s:
            resp = await s.post(proxy.url + "/v1/completions",
                                json={"model": "slow", "prompt": ["a", "b", "c"], "stream": True})
            assert resp.status == 200
            await resp.content.readuntil(b"\n\n")
            resp.close()  # the client goes away after its first event
        await asyncio.sleep(0.5)
        seen = len(sent)
        await asyncio.sleep(0.5)
        assert len(control.requests) == 3
        assert seen < 150, f"upstream kept streaming after the client left ({seen} events)"
        assert len(sent) == seen, "some part still streaming a second later"
    finally:
        await vendor.close()
