"""A client that goes away mid-stream stops the upstream request at once."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from providers.standins import Reply, StandinControl
from tests.fixtures_vendors import counting_standin


@pytest.mark.parametrize(("kind", "prompt", "calls"), [
    ("openai", "x", 1),
    ("poolside", ["a", "b", "c"], 3),   # a prompt list split into one upstream call per prompt
], ids=["one-stream", "every-part-of-a-split-stream"])
async def test_client_disconnect_closes_the_upstream_streams(start_proxy, kind: str, prompt, calls: int):
    control = StandinControl()
    control.push(*[Reply(text="x" * 200, chunks=100, chunk_delay=0.02)] * calls)
    vendor, sent = await counting_standin(kind, control)
    try:
        proxy = await start_proxy({"providers": {"up": {"kind": kind, "base_url": vendor.url}},
                                   "models": {"slow": {"targets": [{"provider": "up", "model": "m"}]}}})
        async with aiohttp.ClientSession() as s:
            resp = await s.post(proxy.url + "/v1/completions", json={"model": "slow", "prompt": prompt, "stream": True})
            assert resp.status == 200
            await resp.content.readuntil(b"\n\n")
            resp.close()  # the client goes away after its first event
        await asyncio.sleep(0.5)
        seen = len(sent)
        await asyncio.sleep(0.5)
        assert len(control.requests) == calls
        assert seen < 50 * calls, f"upstream kept streaming after the client left ({seen} events)"
        assert len(sent) == seen, "an upstream stream still going a second later"
    finally:
        await vendor.close()
