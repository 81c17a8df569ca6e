"""Limits, quotas and circuits as a client sees them through the proxy (in-process state)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from providers.standins import Fail, Reply
from router.edge import METRICS
from router.handlers import STATE
from tests.fixtures_proxy import providers_for

KEYS = {
    "team-a": {"key_env": "ROUTER_TEST_KEY_A", "limits": {"rpm": 3}},
    "team-b": {"key_env": "ROUTER_TEST_KEY_B", "limits": {"concurrent": 1}},
    "team-c": {"key_env": "ROUTER_TEST_KEY_C", "limits": {"tpm": 300}},
}


@pytest.fixture
async def proxy(vendors, start_proxy, monkeypatch):
    for name, secret in (("A", "sk-a"), ("B", "sk-b"), ("C", "sk-c")):
        monkeypatch.setenv(f"ROUTER_TEST_KEY_{name}", secret)
    models = {
        "m": {"targets": [{"provider": "openai", "model": "m-1"}]},
        "quota": {"targets": [{"provider": "cogito", "model": "c", "limits": {"rpm": 1}},
                              {"provider": "nebius", "model": "n"}]},
        "pair": {"targets": [{"provider": "cogito", "model": "c"}, {"provider": "nebius", "model": "n"}]},
    }
    return await start_proxy({"providers": providers_for(vendors), "models": models, "keys": KEYS},
                             vendors=vendors)


async def post(proxy, secret: str, model: str = "m", **extra) -> tuple[int, dict, dict]:
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + "/v1/completions", headers={"Authorization": f"Bearer {secret}"},
                          json={"model": model, "prompt": "hi", "max_tokens": 10, **extra}) as r:
            return r.status, dict(r.headers), await r.json()


async def test_key_over_its_rpm_gets_429_with_retry_after_and_ratelimit_headers(proxy, vendors):
    answers = [await post(proxy, "sk-a") for _ in range(4)]
    assert [a[0] for a in answers] == [200, 200, 200, 429]
    assert [a[1]["x-ratelimit-remaining-requests"] for a in answers[:3]] == ["2", "1", "0"]
    status, headers, body = answers[3]
    assert body["error"]["code"] == "rate_limit_exceeded" and body["error"]["type"] == "rate_limit_error"
    assert "team-a" in body["error"]["message"] and "sk-a" not in body["error"]["message"]
    assert int(headers["Retry-After"]) >= 1
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert len(vendors.openai.control.requests) == 3, "a refused request never reaches a vendor"
    rejected = proxy.app[METRICS].registry.get_sample_value(
        "router_limit_rejections_total", {"scope": "key", "limit": "rpm"})
    assert rejected == 1


async def test_key_concurrency_slot_is_held_until_the_answer_ends(proxy, vendors):
    vendors.openai.control.push(Reply(delay=0.5))
    slow = asyncio.create_task(post(proxy, "sk-b"))
    await asyncio.sleep(0.2)
    assert (await post(proxy, "sk-b"))[0] == 429
    assert (await slow)[0] == 200
    assert (await post(proxy, "sk-b"))[0] == 200, "the slot is free again once the answer ended"


async def test_token_reservation_settles_to_real_usage(proxy, vendors):
    # Each request reserves 1 (prompt estimate) + 100 (max_tokens); the answer uses 7 + 5.
    first = await post(proxy, "sk-c", max_tokens=100)
    assert first[0] == 200
    assert first[1]["x-ratelimit-remaining-tokens"] == str(300 - 101)
    await asyncio.sleep(0.05)
    second = await post(proxy, "sk-c", max_tokens=100)
    assert second[1]["x-ratelimit-remaining-tokens"] == str(300 - 12 - 101), "the first settled to 12 tokens"
    # 24 used; 1 + 280 more would pass 300.
    assert (await post(proxy, "sk-c", max_tokens=280))[0] == 429
    assert (await post(proxy, "sk-c", max_tokens=270))[0] == 200


async def test_target_over_its_vendor_quota_is_skipped_without_a_call(proxy, vendors):
    first = await post(proxy, "sk-a", model="quota")
    second = await post(proxy, "sk-a", model="quota")
    assert (first[0], first[1]["x-router-provider"]) == (200, "cogito")
    assert (second[0], second[1]["x-router-provider"], second[1]["x-router-attempts"]) == (200, "nebius", "1")
    assert len(vendors.cogito.control.requests) == 1


async def test_open_circuit_sends_traffic_to_the_healthy_target(proxy, vendors):
    state = proxy.app[STATE]
    for _ in range(5):
        await state.record("cogito/c", False, None)
    status, headers, _ = await post(proxy, "sk-a", model="pair")
    assert (status, headers["x-router-provider"]) == (200, "nebius")
    assert vendors.cogito.control.requests == []
    assert proxy.app[METRICS].registry.get_sample_value("router_circuit_state", {"target": "cogito/c"}) == 2


async def test_open_circuits_everywhere_still_try_a_last_resort(proxy, vendors):
    state = proxy.app[STATE]
    for target in ("cogito/c", "nebius/n"):
        for _ in range(5):
            await state.record(target, False, None)
    status, headers, _ = await post(proxy, "sk-a", model="pair")
    assert status == 200, "an open circuit is a preference, not a refusal"
    assert headers["x-router-provider"] == "cogito"


async def test_failures_through_the_proxy_open_the_circuit(proxy, vendors):
    vendors.cogito.control.push(*[Fail("server_error")] * 10)
    for _ in range(3):
        status, headers, _ = await post(proxy, "sk-b", model="pair")
        assert (status, headers["x-router-provider"]) == (200, "nebius")
    await asyncio.sleep(0.05)
    health = await proxy.app[STATE].health(["cogito/c"])
    assert health["cogito/c"].state == "open"
    before = len(vendors.cogito.control.requests)
    assert (await post(proxy, "sk-b", model="pair"))[1]["x-router-provider"] == "nebius"
    assert len(vendors.cogito.control.requests) == before, "an open target is not called while others serve"
