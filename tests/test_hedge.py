"""Hedged first tokens: a late first event starts the same stream on the next target; the first
to answer wins, the other is hung up on at once and its reservation returned."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from providers.standins import Reply, StandinControl
from providers.standins.run import start_standin
from router.config import Hedge
from tests.test_client_behaviour import metric, wait_for
from tests.test_resume import text_of, tpm_used


@pytest.fixture
async def pair(start_proxy):
    """Two openai-kind stand-ins, `a` tried first, `b` the hedge; both with token limits."""
    a = await start_standin("openai", control=StandinControl(), api_key=None)
    b = await start_standin("openai", control=StandinControl(), api_key=None)
    targets = [{"provider": "a", "model": "m", "limits": {"tpm": 100000}},
               {"provider": "b", "model": "m", "limits": {"tpm": 100000}}]
    proxy = await start_proxy({
        "providers": {"a": {"kind": "openai", "base_url": a.url}, "b": {"kind": "openai", "base_url": b.url}},
        "models": {"h": {"targets": targets, "hedge": {"after_ms": 100}},
                   "patient": {"targets": targets, "hedge": {"after_ms": 5000}},
                   "plain": {"targets": targets}},
        "settings": {"retry": {"attempts": 1}}})
    yield proxy, a, b
    await a.close()
    await b.close()


async def stream(proxy, model: str) -> tuple[dict[str, str], list]:
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + "/v1/completions", json={"model": model, "prompt": "p", "stream": True}) as r:
            assert r.status == 200
            raw, headers = (await r.read()).decode(), dict(r.headers)
    return headers, ["[DONE]" if b[6:] == "[DONE]" else orjson.loads(b[6:]) for b in raw.split("\n\n") if b.strip()]


async def test_slow_first_target_is_hedged_and_the_fast_answer_wins(pair):
    proxy, a, b = pair
    a.control.push(Reply(text="slow answer", delay=30))
    b.control.push(Reply(text="fast answer"))
    headers, events = await stream(proxy, "h")
    assert text_of(events) == "fast answer" and events[-1] == "[DONE]"
    assert headers["x-router-provider"] == "b"
    assert await wait_for(lambda: len(a.runner.server.connections) == 0, timeout=5.0), \
        "the losing upstream's connection stayed open"
    assert await wait_for(lambda: metric(proxy, "router_requests_total") >= 1)
    assert tpm_used(proxy, "target", "a/m") == 0, "the loser's token reservation was not returned"
    assert tpm_used(proxy, "target", "b/m") == 7 + 5
    assert metric(proxy, "router_hedges_started_total", provider="b") == 1
    assert metric(proxy, "router_hedges_won_total", provider="b", side="hedge") == 1


async def test_first_target_answering_after_the_hedge_started_still_wins(pair):
    proxy, a, b = pair
    a.control.push(Reply(text="first answer", delay=0.4))
    b.control.push(Reply(text="hedge answer", delay=30))
    headers, events = await stream(proxy, "h")
    assert text_of(events) == "first answer" and headers["x-router-provider"] == "a"
    assert await wait_for(lambda: len(b.runner.server.connections) == 0, timeout=5.0)
    assert await wait_for(lambda: metric(proxy, "router_requests_total") >= 1)
    assert tpm_used(proxy, "target", "b/m") == 0
    assert metric(proxy, "router_hedges_won_total", provider="a", side="first") == 1


async def test_first_event_within_the_threshold_starts_no_hedge(pair):
    proxy, a, b = pair
    a.control.push(Reply(text="prompt answer"))
    _, events = await stream(proxy, "patient")
    assert text_of(events) == "prompt answer"
    assert not b.control.requests
    assert metric(proxy, "router_hedges_started_total") == 0


async def test_hedging_is_off_by_default(pair):
    proxy, a, b = pair
    a.control.push(Reply(text="slow but only", delay=0.4))
    _, events = await stream(proxy, "plain")
    assert text_of(events) == "slow but only" and not b.control.requests


@pytest.mark.parametrize(("hedge", "ewma", "want"), [
    (Hedge(after_ms=800), 0.1, 0.8),
    (Hedge(after="ttft_p95"), 0.25, 0.5),                   # p95 read as twice the EWMA
    (Hedge(after="ttft_p95", factor=3), 0.25, 0.75),
    (Hedge(after="ttft_p95", fallback_ms=1500), None, 1.5),  # no TTFT measured yet
])
def test_hedge_threshold_is_fixed_or_a_multiple_of_the_ttft_ewma(hedge, ewma, want):
    assert hedge.threshold_s(ewma) == pytest.approx(want)


async def test_client_leaving_mid_race_closes_both_upstreams_and_returns_both_reservations(pair):
    proxy, a, b = pair
    a.control.push(Reply(text="never", delay=30))
    b.control.push(Reply(text="never either", delay=30))
    async with aiohttp.ClientSession() as s:
        with pytest.raises(TimeoutError):
            await s.post(proxy.url + "/v1/completions", json={"model": "h", "prompt": "p", "stream": True},
                         timeout=aiohttp.ClientTimeout(total=0.6))
    assert await wait_for(lambda: not a.runner.server.connections and not b.runner.server.connections, timeout=3.0)
    assert await wait_for(lambda: metric(proxy, "router_requests_total") >= 1)
    assert metric(proxy, "router_hedges_started_total", provider="b") == 1
    assert tpm_used(proxy, "target", "a/m") == 0 and tpm_used(proxy, "target", "b/m") == 0
