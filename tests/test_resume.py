"""Mid-stream resume: a stream that broke after content went out goes on from the next target,
and the client sees one unbroken answer whose usage and spend both vendors account for."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import orjson
import pytest

from providers.standins import BreakStream, Fault, Reply
from providers.standins.dialect import split_text
from router.handlers import STATE
from tests.fixtures_proxy import providers_for
from tests.test_client_behaviour import metric, wait_for

FIRST, SECOND, PREFIX = "cogito", "nebius", "openai"
TEXT = "ééé ààà üüü ööö ñññ 😀😀 ok"   # every piece of six holds a multi-byte character
PIECES = split_text(TEXT, 6)
REST = "and the rest."
PRICE = {"input": 1000.0, "output": 2000.0}


@pytest.fixture
async def proxy(vendors, start_proxy):
    providers = providers_for([vendors[FIRST], vendors[SECOND], vendors[PREFIX]])
    providers[PREFIX]["options"] = {"chat_prefix": "continue_final_message"}

    def group(second: str, **extra: Any) -> dict[str, Any]:
        return {"targets": [{"provider": FIRST, "model": "m-1", "price": PRICE, "limits": {"tpm": 100000}},
                            {"provider": second, "model": "m-1", "price": PRICE, "limits": {"tpm": 100000}}],
                "limits": {"tpm": 100000}, **extra}

    doc = {"providers": providers,
           "models": {"g": group(SECOND, resume={"max_resumes": 1}),
                      "prefixed": group(PREFIX, resume={}),
                      "off": group(SECOND)},
           "settings": {"retry": {"attempts": 1}}}
    return await start_proxy(doc, vendors=vendors)


async def stream(proxy, path: str, body: dict[str, Any]) -> list[Any]:
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + path, json=body) as r:
            assert r.status == 200
            raw = (await r.read()).decode()
    return ["[DONE]" if b[6:] == "[DONE]" else orjson.loads(b[6:]) for b in raw.split("\n\n") if b.strip()]


def text_of(events: list[Any]) -> str:
    return "".join(c.get("text") or (c.get("delta") or {}).get("content") or ""
                   for e in events if isinstance(e, dict) for c in e.get("choices", []))


def estimate(pieces: list[str]) -> int:
    """The relay's estimate of a broken part's completion tokens (about four characters a token)."""
    return sum((len(p) + 3) // 4 for p in pieces if p)


def tpm_used(proxy, scope: str, name: str) -> int:
    log = proxy.app[STATE]._logs.get((scope, name, "tpm"))
    return log.total if log is not None else 0


BREAKS = [BreakStream(after=k, text=TEXT, chunks=6) for k in (1, 2, 4)] + [
    BreakStream(after=2, mid_char=True, text=TEXT, chunks=6)]


@pytest.mark.parametrize("brk", BREAKS, ids=lambda b: f"after{b.after}{'-mid-char' if b.mid_char else ''}")
async def test_broken_completion_resumes_on_the_next_target_with_prompt_plus_partial_text(proxy, vendors, brk):
    vendors[FIRST].control.push(brk)
    vendors[SECOND].control.push(Reply(text=REST, chunks=3))
    events = await stream(proxy, "/v1/completions", {"model": "g", "prompt": "Say it:", "stream": True,
                                                     "max_tokens": 50, "stream_options": {"include_usage": True}})
    partial = "".join(PIECES[:brk.after])
    assert events[-1] == "[DONE]" and not any("error" in e for e in events[:-1])
    assert text_of(events) == partial + REST, "exactly the two upstreams' texts, nothing lost or doubled"
    sent = vendors[SECOND].control.requests[-1].body
    assert sent["prompt"] == "Say it:" + partial
    assert sent["max_tokens"] == 50 - estimate(PIECES[:brk.after])
    chunks = [e for e in events[:-1] if e["choices"]]
    assert len({e["id"] for e in events[:-1]}) == 1 and len({e["created"] for e in events[:-1]}) == 1
    assert {e["model"] for e in events[:-1]} == {"g"}
    assert all(c["index"] == 0 for e in chunks for c in e["choices"])
    finishes = [c["finish_reason"] for e in chunks for c in e["choices"]]
    assert finishes[-1] == "stop" and not any(finishes[:-1]), "the finish of the part that finished"
    usage = events[-2]["usage"]
    assert usage["completion_tokens"] == estimate(PIECES[:brk.after]) + 5
    assert usage["prompt_tokens"] == (len("Say it:") // 4 + 1) + 7
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_resumed_stream_settles_both_parts_and_bills_each_provider(proxy, vendors, caplog):
    caplog.set_level(logging.INFO, logger="router.access")
    vendors[FIRST].control.push(BreakStream(after=3, text=TEXT, chunks=6))
    vendors[SECOND].control.push(Reply(text=REST, chunks=3))
    events = await stream(proxy, "/v1/completions", {"model": "g", "prompt": "Say it:", "stream": True,
                                                     "max_tokens": 50})
    assert text_of(events) == "".join(PIECES[:3]) + REST
    first = (len("Say it:") // 4 + 1) + estimate(PIECES[:3])
    second = 7 + 5
    assert await wait_for(lambda: metric(proxy, "router_requests_total") >= 1)
    assert tpm_used(proxy, "model", "g") == first + second, "the model's limit settles both parts"
    assert tpm_used(proxy, "target", f"{FIRST}/m-1") == first, "each target's limit settles its own part"
    assert tpm_used(proxy, "target", f"{SECOND}/m-1") == second
    assert metric(proxy, "router_resumes_total", from_provider=FIRST, to_provider=SECOND) == 1
    spend_first = metric(proxy, "router_spend_usd_total", provider=FIRST)
    spend_second = metric(proxy, "router_spend_usd_total", provider=SECOND)
    assert spend_first == pytest.approx(((len("Say it:") // 4 + 1) * 1000 + estimate(PIECES[:3]) * 2000) / 1e6)
    assert spend_second == pytest.approx((7 * 1000 + 5 * 2000) / 1e6)
    (line,) = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "router.access"]
    assert line["resumes"] == [f"{FIRST}->{SECOND}"] and line["provider"] == SECOND
    assert line["parts"] == [{"provider": FIRST, "prompt_tokens": len("Say it:") // 4 + 1,
                              "completion_tokens": estimate(PIECES[:3])}]
    assert line["completion_tokens"] == estimate(PIECES[:3]) + 5
    assert line["cost_usd"] == pytest.approx(spend_first + spend_second)


async def test_broken_chat_resumes_with_the_partial_answer_as_an_assistant_prefix(proxy, vendors):
    vendors[FIRST].control.push(BreakStream(after=2, text=TEXT, chunks=6))
    vendors[PREFIX].control.push(Reply(text=REST, chunks=3))
    messages = [{"role": "user", "content": "Say it."}]
    events = await stream(proxy, "/v1/chat/completions", {"model": "prefixed", "messages": messages,
                                                          "stream": True})
    partial = "".join(PIECES[:2])
    assert text_of(events) == partial + REST and events[-1] == "[DONE]"
    sent = vendors[PREFIX].control.requests[-1].body
    assert sent["messages"] == messages + [{"role": "assistant", "content": partial}]
    assert sent["continue_final_message"] is True and sent["add_generation_prompt"] is False
    roles = [c["delta"].get("role") for e in events[:-1] for c in e["choices"] if c["delta"].get("role")]
    assert roles == ["assistant"], "the role comes once, as in one answer"
    assert len({e["id"] for e in events[:-1]}) == 1


async def test_broken_chat_without_prefix_support_ends_with_an_error_event(proxy, vendors):
    vendors[FIRST].control.push(BreakStream(after=2, text=TEXT, chunks=6))
    events = await stream(proxy, "/v1/chat/completions", {"model": "g", "stream": True,
                                                          "messages": [{"role": "user", "content": "hi"}]})
    assert text_of(events) == "".join(PIECES[:2])
    assert events[-2]["error"]["code"] == "upstream_stream_interrupted" and events[-1] == "[DONE]"
    assert not vendors[SECOND].control.requests, "nebius's adapter declares no way to continue a message"
    assert metric(proxy, "router_resumes_total", from_provider=FIRST, to_provider="none") == 1


@pytest.mark.parametrize("fault", [Fault("error_event", after=2), Fault("stall", after=2, seconds=30)],
                         ids=["in-band-error", "silence"])
async def test_in_band_error_and_silence_after_content_are_resumed(vendors, start_proxy, fault):
    proxy = await start_proxy({"providers": providers_for([vendors[FIRST], vendors[SECOND]]),
                               "models": {"g": {"targets": [{"provider": FIRST, "model": "m-1"},
                                                            {"provider": SECOND, "model": "m-1"}],
                                                "resume": {}}},
                               "settings": {"retry": {"attempts": 1}, "stream_idle_timeout_s": 1.5}},
                              vendors=vendors)
    vendors[FIRST].control.push(fault)
    vendors[SECOND].control.push(Reply(text=REST, chunks=2))
    events = await stream(proxy, "/v1/completions", {"model": "g", "prompt": "p", "stream": True})
    first_two = "".join(split_text(Reply.text, 3)[:2])
    assert text_of(events) == first_two + REST and events[-1] == "[DONE]"
    assert vendors[SECOND].control.requests[-1].body["prompt"] == "p" + first_two


async def test_resume_is_off_by_default(proxy, vendors):
    vendors[FIRST].control.push(BreakStream(after=2, text=TEXT, chunks=6))
    events = await stream(proxy, "/v1/completions", {"model": "off", "prompt": "p", "stream": True})
    assert events[-2]["error"]["code"] == "upstream_stream_interrupted"
    assert not vendors[SECOND].control.requests


async def test_resumes_stop_at_max_resumes(proxy, vendors):
    vendors[FIRST].control.push(BreakStream(after=1, text=TEXT, chunks=6))
    vendors[SECOND].control.push(BreakStream(after=1, text=REST, chunks=3))
    events = await stream(proxy, "/v1/completions", {"model": "g", "prompt": "p", "stream": True})
    assert text_of(events) == PIECES[0] + split_text(REST, 3)[0]
    assert events[-2]["error"]["code"] == "upstream_stream_interrupted", "one resume allowed, the second break ends it"
    assert len(vendors[SECOND].control.requests) == 1


def test_resume_and_hedge_settings_are_checked_with_their_path():
    from router.routes import ConfigError, parse
    doc = {"providers": {"a": {"kind": "openai", "base_url": "http://x/v1"}},
           "models": {"m": {"targets": [{"provider": "a", "model": "x"}], "hedge": {"after_ms": 5, "after": "ttft_p95"},
                            "resume": {"max_resume": 1}}}}
    with pytest.raises(ConfigError) as err:
        parse(doc)
    text = str(err.value)
    assert "models.m.hedge: give exactly one of 'after_ms' or 'after: ttft_p95'" in text
    assert "models.m.resume.max_resume: unknown key" in text


def test_readme_resume_and_hedge_example_is_a_valid_model_group():
    import re
    from pathlib import Path

    import yaml

    from router.routes import parse
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Resume and hedging"):]
    doc = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))
    doc["providers"]["cogito"] = {"kind": "cogito", "base_url": "https://api.cogito.decart.ai"}
    group = parse(doc, environ={}).groups["kimi-k2"]
    assert group.resume is not None and group.resume.max_resumes == 1
    assert group.hedge is not None and group.hedge.threshold_s(None) == 0.8
    assert group.targets[1].adapter.can["chat"] >= {"chat_prefix"}
