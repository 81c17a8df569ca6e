"""Limits hold across replicas: three `router serve` processes sharing one Redis (or Cluster).

The replicas are real processes with their own event loops and connection pools, in front
of one contract-checked stand-in; the only thing they share is Redis.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
import yaml

from providers.standins import Reply
from tests.fixtures_proxy import key_env
from tests.serving import PATIENT_REDIS_MS

N = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def routes(vendor, model_limits: dict, keys: dict | None = None) -> dict:
    doc = {
        "providers": {"up": {"kind": vendor.kind, "base_url": vendor.url, "api_key_env": key_env(vendor.kind)}},
        "models": {"m": {"limits": model_limits, "targets": [{"provider": "up", "model": "m-1",
                                                              "price": {"input": 1000, "output": 1000}}]}},
    }
    if keys:
        doc["keys"] = keys
    return doc


async def start_replicas(tmp_path: Path, doc: dict, redis_url: str, vendor, count: int = 3,
                         extra_env: dict | None = None, ready: str = "/readyz", log_level: str = "WARNING",
                         stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL):
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "REDIS_URL": redis_url, "ROUTER_REDIS_TIMEOUT_MS": PATIENT_REDIS_MS,
           key_env(vendor.kind): vendor.api_key, **(extra_env or {})}
    procs, urls = [], []
    for _ in range(count):
        port = free_port()
        procs.append(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "router", "serve", "--config", str(path), "--port", str(port),
            "--log-level", log_level, env=env, stdout=stdout, stderr=stderr))
        urls.append(f"http://127.0.0.1:{port}")
    async with aiohttp.ClientSession() as s:
        for url in urls:
            for _ in range(150):
                try:
                    async with s.get(url + ready) as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError(f"replica {url} did not become ready")
    return procs, urls


async def stop(procs) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        await p.wait()


async def fire(urls: list[str], total: int, body: dict, headers: dict | None = None) -> list[tuple[int, dict]]:
    async with aiohttp.ClientSession() as s:
        async def one(i: int) -> tuple[int, dict]:
            async with s.post(urls[i % len(urls)] + "/v1/completions", json=body, headers=headers) as r:
                return r.status, dict(r.headers)
        return await asyncio.gather(*(one(i) for i in range(total)))


@pytest.fixture(params=["redis", "cluster"])
def shared_redis(request) -> str:
    return request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")


async def test_rpm_limit_admits_exactly_n_across_three_replicas(tmp_path, vendors, shared_redis):
    procs, urls = await start_replicas(tmp_path, routes(vendors.openai, {"rpm": N}), shared_redis, vendors.openai)
    try:
        results = await fire(urls, 3 * N, {"model": "m", "prompt": "hi", "max_tokens": 5})
    finally:
        await stop(procs)
    statuses = Counter(s for s, _ in results)
    assert statuses == {200: N, 429: 2 * N}, statuses
    refused = [h for s, h in results if s == 429]
    assert all(int(h["Retry-After"]) >= 1 for h in refused)
    assert all(h["x-ratelimit-limit-requests"] == str(N) for s, h in results)


async def test_concurrent_token_reservations_never_exceed_the_tpm_limit(tmp_path, vendors, shared_redis):
    # Each request reserves its estimated prompt (1 token for "hi") plus max_tokens 100 = 101;
    # the answers are slow, so every request is in flight when the others are checked.
    vendors.openai.control.push(*[Reply(delay=1.0)] * (3 * N))
    procs, urls = await start_replicas(tmp_path, routes(vendors.openai, {"tpm": 1000}), shared_redis,
                                       vendors.openai)
    try:
        results = await fire(urls, 3 * N, {"model": "m", "prompt": "hi", "max_tokens": 100})
    finally:
        await stop(procs)
    statuses = Counter(s for s, _ in results)
    assert statuses[200] == 1000 // 101, statuses
    assert statuses[429] == 3 * N - 1000 // 101
    vendors.openai.control.clear()


async def test_key_budget_refuses_with_insufficient_quota_across_replicas(tmp_path, vendors, redis_url,
                                                                         monkeypatch):
    # Price 1000 USD per million tokens; a stand-in answer is 7 + 5 tokens = 0.012 USD.
    keys = {"team": {"key_env": "ROUTER_TEST_TEAM_KEY", "budget": {"daily_usd": 0.03}}}
    procs, urls = await start_replicas(tmp_path, routes(vendors.openai, {}, keys), redis_url, vendors.openai,
                                       extra_env={"ROUTER_TEST_TEAM_KEY": "sk-team-secret"})
    try:
        headers = {"Authorization": "Bearer sk-team-secret"}
        statuses = []
        async with aiohttp.ClientSession() as s:
            for i in range(5):
                async with s.post(urls[i % 3] + "/v1/completions", headers=headers,
                                  json={"model": "m", "prompt": "hi", "max_tokens": 5}) as r:
                    statuses.append(r.status)
                    body = await r.json()
                await asyncio.sleep(0.2)   # spend settles just after each answer
    finally:
        await stop(procs)
    assert statuses == [200, 200, 200, 429, 429]
    assert body["error"]["code"] == "insufficient_quota"
    assert "sk-team-secret" not in body["error"]["message"]
