"""Spend and latency as Prometheus sees them, and the access log line of a fallen-over request."""

from __future__ import annotations

import asyncio
import logging
import threading
import urllib.request

import openai
import orjson
import pytest

from providers.standins import Fail, Reply
from tests.fixtures_proxy import providers_for

PRICES = {
    "cogito": {"input": 0.6, "output": 2.5, "cached_input": 0.15},
    "nebius": {"input": 0.13, "output": 0.4},
    "interactive": {"input": 1.0, "output": 3.0},
}


@pytest.fixture
async def proxy(vendors, start_proxy):
    models = {f"via-{k}": {"targets": [{"provider": k, "model": "m", "price": p}]} for k, p in PRICES.items()}
    models["flaky"] = {"targets": [{"provider": "poolside", "model": "gone"},
                                   {"provider": "nebius", "model": "m", "price": PRICES["nebius"]}]}
    return await start_proxy({"providers": providers_for(vendors), "models": models}, vendors=vendors)


def expected_cost(kind: str, usage) -> float:
    price = PRICES[kind]
    details = getattr(usage, "prompt_tokens_details", None)
    cached = (details.cached_tokens or 0) if details and "cached_input" in price else 0
    return ((usage.prompt_tokens - cached) * price["input"] + cached * price.get("cached_input", 0)
            + usage.completion_tokens * price["output"]) / 1e6


async def test_prometheus_spend_equals_usage_times_price(proxy, vendors, prometheus):
    client = proxy.client()
    expected = 0.0
    traffic = [("cogito", 1200, 300), ("nebius", 5000, 800), ("interactive", 42, 7), ("cogito", 10, 1000)]
    for kind, p, c in traffic:
        vendors[kind].control.push(Reply(prompt_tokens=p, completion_tokens=c))
        answer = await client.chat.completions.create(model=f"via-{kind}",
                                                      messages=[{"role": "user", "content": "hi"}])
        assert answer.usage.prompt_tokens == p
        expected += expected_cost(kind, answer.usage)
    vendors.nebius.control.push(Reply(prompt_tokens=100, completion_tokens=50, chunks=2))
    stream = await client.completions.create(model="via-nebius", prompt="x", stream=True)
    [c async for c in stream]
    expected += (100 * 0.13 + 50 * 0.4) / 1e6

    port = proxy.url.rsplit(":", 1)[1]
    prometheus.set_targets([f"127.0.0.1:{port}"])
    await prometheus.wait_for_async("router_spend_usd_total")
    total = await prometheus.value_async("sum(router_spend_usd_total)")
    assert total == pytest.approx(expected, rel=1e-9)
    by_provider = await prometheus.query_async("sum by (provider) (router_spend_usd_total)")
    assert {r["metric"]["provider"] for r in by_provider} == {"cogito", "nebius", "interactive"}
    cached = await prometheus.value_async('sum(router_tokens_total{kind="cached"})')
    assert cached > 0
    # Over the cumulative buckets: the traffic came before the first scrape, so rate() has nothing.
    p95 = await prometheus.value_async(
        "histogram_quantile(0.95, sum by (le) (router_request_duration_seconds_bucket))")
    assert 0 < p95 < 60


async def test_access_log_line_of_a_request_that_fell_over(proxy, vendors, caplog):
    vendors.poolside.control.push(Fail("model_not_found"))
    vendors.nebius.control.push(Reply(prompt_tokens=20, completion_tokens=10))
    with caplog.at_level(logging.INFO, logger="router.access"):
        raw = await proxy.client().completions.with_raw_response.create(
            model="flaky", prompt="the secret prompt", extra_headers={"X-Request-Id": "fell-over-1"})
    lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "router.access"]
    line = next(entry for entry in lines if entry["request_id"] == "fell-over-1")
    assert raw.headers["x-router-attempts"] == "2"
    assert line["key"] == "anonymous"
    assert line["model"] == "flaky"
    assert line["provider"] == "nebius" and line["vendor_model"] == "m"
    assert line["attempts"] == 2 and line["fallbacks"] == ["poolside:model_not_found"]
    assert line["status"] == 200 and line["error"] is None
    assert line["latency_ms"] > 0 and "ttft_ms" in line
    assert (line["prompt_tokens"], line["completion_tokens"]) == (20, 10)
    assert line["cost_usd"] == pytest.approx((20 * 0.13 + 10 * 0.4) / 1e6)
    assert "secret prompt" not in caplog.text
    assert vendors.nebius.api_key not in caplog.text


async def test_unknown_model_is_one_bounded_label(proxy):
    for name in ("typo-1", "typo-2", "typo-3"):
        with pytest.raises(openai.NotFoundError):
            await proxy.client().completions.create(model=name, prompt="x")
    from router.edge import METRICS
    text = proxy.app[METRICS].render().decode()
    assert "typo-" not in text
    assert 'model="unknown"' in text


async def test_prompts_are_logged_only_when_the_debug_option_asks(vendors, start_proxy, caplog):
    from router.settings import ServeSettings
    doc = {"providers": providers_for(vendors), "models": {"m": {"targets": [{"provider": "nebius", "model": "m"}]}}}
    for log_prompts in (False, True):
        proxy = await start_proxy(doc, vendors=vendors, settings=ServeSettings(log_prompts=log_prompts))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="router.access"):
            await proxy.client().completions.create(model="m", prompt="tell nobody")
        line = orjson.loads(next(r.getMessage() for r in caplog.records if r.name == "router.access"))
        assert ("prompt" in line) is log_prompts
        assert ("tell nobody" in caplog.text) is log_prompts


class _HeldUntilAnswered(logging.Handler):
    """Holds the proxy's loop in its access log line until the client has its whole answer:
    if the answer were sent after the line, the client could not have it yet."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.answered = threading.Event()
        self.held: list[bool] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.held.append(self.answered.wait(10))


@pytest.mark.parametrize("stream", [False, True])
async def test_the_client_has_its_answer_before_the_access_log_line_is_written(proxy, stream):
    held = _HeldUntilAnswered()
    logger = logging.getLogger("router.access")
    logger.addHandler(held)
    level = logger.level
    logger.setLevel(logging.INFO)
    body = orjson.dumps({"model": "via-nebius", "prompt": "hi", "stream": stream})

    def ask() -> bytes:
        request = urllib.request.Request(proxy.url + "/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            data = answer.read()
        held.answered.set()
        return data

    try:
        data = await asyncio.to_thread(ask)
    finally:
        logger.removeHandler(held)
        logger.setLevel(level)
    assert held.held == [True]
    assert (b"data: [DONE]" in data) if stream else orjson.loads(data)["choices"]
