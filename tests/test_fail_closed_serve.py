"""ROUTER_LIMITS_FAIL_CLOSED through `router serve`: with Redis down, a model with limits is
refused with OpenAI's 503 when the operator asks to fail closed, and served by default."""

from __future__ import annotations

import aiohttp
import pytest

from tests.test_replicas import free_port, routes, start_replicas, stop

FAIL_CLOSED = [
    # (ROUTER_LIMITS_FAIL_CLOSED, status with Redis down)
    ("1", 503),
    ("true", 503),
    (None, 200),       # the default fails open
    ("0", 200),
]


@pytest.mark.parametrize(("value", "status"), FAIL_CLOSED, ids=[str(v) for v, _ in FAIL_CLOSED])
async def test_fail_closed_with_redis_down_is_a_503_and_the_default_fails_open(value, status, tmp_path, vendors,
                                                                                  monkeypatch):
    monkeypatch.delenv("ROUTER_LIMITS_FAIL_CLOSED", raising=False)
    down = f"redis://127.0.0.1:{free_port()}/0"          # nothing listens there
    env = {"ROUTER_LIMITS_FAIL_CLOSED": value} if value is not None else {}
    procs, urls = await start_replicas(tmp_path, routes(vendors.openai, {"rpm": 100}), down, vendors.openai,
                                       count=1, extra_env=env, ready="/healthz")
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(urls[0] + "/v1/completions", json={"model": "m", "prompt": "hi", "max_tokens": 5}) as r:
                body = await r.json()
                assert r.status == status, body
                if status == 503:
                    assert set(body["error"]) == {"message", "type", "param", "code"}
                    assert body["error"]["code"] == "service_unavailable"
                    assert r.headers["Retry-After"] == "1"
                    assert not vendors.openai.control.requests
                else:
                    assert body["choices"]
    finally:
        await stop(procs)
