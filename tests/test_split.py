"""Prompt lists to a vendor that takes one prompt per call: split, sent at once, stitched back."""

from __future__ import annotations

import json

import aiohttp
import openai
import pytest

from providers.standins import BreakStream, Fail
from router.edge import METRICS
from tests.fakes.openai_contract import check_answer
from tests.fixtures_proxy import providers_for

PROMPTS = ["alpha", "bravo", "charlie"]


@pytest.fixture
async def proxy(vendors, start_proxy):
    for v in vendors:
        v.control.demo = True   # each answer echoes its own prompt, so order can be checked
    models = {
        "pool": {"targets": [{"provider": "poolside", "model": "p"}]},
        "neb": {"targets": [{"provider": "nebius", "model": "n"}]},
        "pool-then-nebius": {"targets": [{"provider": "poolside", "model": "p"},
                                         {"provider": "nebius", "model": "n"}]},
        "once": {"targets": [{"provider": "poolside", "model": "p"}], "limits": {"rpm": 1}},
    }
    return await start_proxy({"providers": providers_for(vendors), "models": models}, vendors=vendors)


async def raw_stream(proxy, body: dict) -> tuple[int, dict, list]:
    """Status, headers and the SSE events of a streamed completion ("[DONE]" kept as a string)."""
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + "/v1/completions", json={**body, "stream": True}) as r:
            text = (await r.read()).decode()
            headers = dict(r.headers)
    assert check_answer("/v1/completions", r.status, headers["Content-Type"], text.encode(), True) == []
    events = [e.removeprefix("data: ") for e in text.split("\n\n") if e.startswith("data: ")]
    return r.status, headers, [e if e == "[DONE]" else json.loads(e) for e in events]


async def test_prompt_list_to_one_prompt_vendor_is_split_and_stitched(proxy, vendors):
    raw = await proxy.client().completions.with_raw_response.create(model="pool", prompt=PROMPTS)
    c = raw.parse()
    sent = sorted(r.body["prompt"] for r in vendors.poolside.control.requests)
    assert sent == sorted(PROMPTS), "one call per prompt, each a single string"
    assert [ch.index for ch in c.choices] == [0, 1, 2]
    assert all(f"You said: {p!r}" in ch.text for p, ch in zip(PROMPTS, c.choices)), "choices in prompt order"
    assert c.id.startswith("cmpl-")
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens) == (21, 15, 36)
    assert (raw.headers["x-router-provider"], raw.headers["x-router-attempts"]) == ("poolside", "1")
    tokens = proxy.app[METRICS].registry.get_sample_value(
        "router_tokens_total", {"model": "pool", "provider": "poolside", "key": "anonymous", "kind": "prompt"})
    assert tokens == 21, "the request is settled with the parts' usage summed"


@pytest.mark.parametrize("include_usage", [True, False])
async def test_split_stream_interleaves_parts_with_their_index_and_one_done(include_usage, proxy, vendors):
    status, headers, events = await raw_stream(
        proxy, {"model": "pool", "prompt": PROMPTS, "stream_options": {"include_usage": include_usage}})
    assert status == 200 and events[-1] == "[DONE]" and events.count("[DONE]") == 1
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1
    texts = {i: "".join(ch["text"] for c in chunks for ch in c["choices"] if ch["index"] == i) for i in range(3)}
    assert all(f"You said: {p!r}" in texts[i] for i, p in enumerate(PROMPTS))
    usage = [c["usage"] for c in chunks if c.get("usage")]
    assert usage == ([{"prompt_tokens": 21, "completion_tokens": 15, "total_tokens": 36}] if include_usage else [])
    assert headers["x-router-attempts"] == "1"


async def test_split_stream_validates_through_the_sdk(proxy, vendors):
    stream = await proxy.client().completions.create(model="pool", prompt=PROMPTS, stream=True)
    chunks = [c async for c in stream]
    assert {ch.index for c in chunks for ch in c.choices} == {0, 1, 2}
    assert proxy.violations == []


@pytest.mark.parametrize("stream", [False, True])
async def test_a_part_failing_before_anything_is_sent_falls_over_whole(stream, proxy, vendors):
    vendors.poolside.control.push(Fail("model_not_found"))   # whichever part takes it
    if stream:
        status, headers, events = await raw_stream(proxy, {"model": "pool-then-nebius", "prompt": PROMPTS})
        assert status == 200 and events[-1] == "[DONE]"
        assert {ch["index"] for c in events[:-1] for ch in c["choices"]} == {0, 1, 2}
    else:
        raw = await proxy.client().completions.with_raw_response.create(model="pool-then-nebius", prompt=PROMPTS)
        headers = raw.headers
        assert [ch.index for ch in raw.parse().choices] == [0, 1, 2]
    assert headers["x-router-provider"] == "nebius"
    assert vendors.nebius.control.requests[-1].body["prompt"] == PROMPTS, "nebius takes the list in one call"


async def test_a_part_failing_with_a_client_error_is_answered(proxy, vendors):
    vendors.poolside.control.push(Fail("bad_request", param="temperature"))
    with pytest.raises(openai.BadRequestError) as info:
        await proxy.client().completions.create(model="pool-then-nebius", prompt=PROMPTS)
    assert info.value.response.headers["x-router-provider"] == "poolside"
    assert vendors.nebius.control.requests == []


async def test_a_part_breaking_after_commit_ends_the_stream_with_an_error_event(proxy, vendors):
    vendors.poolside.control.push(BreakStream(after=2))
    status, _, events = await raw_stream(proxy, {"model": "pool-then-nebius", "prompt": PROMPTS})
    assert status == 200
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    assert events[-2]["error"]["code"] == "upstream_stream_interrupted"
    assert vendors.nebius.control.requests == [], "committed: no fallover"


async def test_token_id_batch_is_split_where_the_vendor_takes_one_list(proxy, vendors):
    c = await proxy.client().completions.create(model="neb", prompt=[[1, 2], [3, 4, 5]])
    assert sorted(r.body["prompt"] for r in vendors.nebius.control.requests) == [[1, 2], [3, 4, 5]]
    assert [ch.index for ch in c.choices] == [0, 1]
    assert "<2 tokens>" in c.choices[0].text and "<3 tokens>" in c.choices[1].text


async def test_token_ids_are_refused_naming_prompt_where_the_vendor_takes_none(proxy, vendors):
    with pytest.raises(openai.BadRequestError) as info:
        await proxy.client().completions.create(model="pool", prompt=[[1, 2], [3]])
    assert info.value.body["param"] == "prompt" and info.value.body["code"] == "unsupported_parameter"
    assert info.value.response.headers["x-router-provider"] == "poolside"
    assert vendors.poolside.control.requests == []


async def test_split_request_counts_once_against_limits(proxy, vendors):
    first = await proxy.client().completions.with_raw_response.create(model="once", prompt=PROMPTS)
    assert first.status_code == 200 and len(vendors.poolside.control.requests) == 3
    with pytest.raises(openai.RateLimitError):
        await proxy.client().completions.create(model="once", prompt="again")

