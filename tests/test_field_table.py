"""Every OpenAI request field has a decision per vendor, the adapters enforce it, and the
README's field table is the adapters' own (so it cannot drift)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from providers import REGISTRY, ProviderSettings
from providers.base import Unsupported
from providers.fields import CHAT, COMPLETIONS, DROPPED, OPENAI_FIELDS, PASSED, REFUSED, TRANSLATED, render, tables

README = Path(__file__).resolve().parent.parent / "README.md"

# A value for each field that is not its "off" value, so a refusal has something to refuse.
SAMPLES = {
    "prompt": "x", "messages": [{"role": "user", "content": "x"}], "stream": True, "max_tokens": 5,
    "max_completion_tokens": 7, "stop": ["END"], "n": 2, "best_of": 2, "top_logprobs": 2, "echo": True,
    "suffix": "!", "seed": 1, "user": "u-1", "temperature": 0.5, "top_p": 0.5, "presence_penalty": 0.5,
    "frequency_penalty": 0.5, "logit_bias": {"50256": -100}, "stream_options": {"include_usage": True},
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "tool_choice": "auto", "parallel_tool_calls": False, "response_format": {"type": "json_object"},
    "reasoning_effort": "low", "metadata": {"a": "b"}, "store": True, "service_tier": "flex",
    "prediction": {"type": "content", "content": "x"}, "modalities": ["text"],
}
LOGPROBS = {COMPLETIONS: 2, CHAT: True}
BASE = {COMPLETIONS: {"prompt": "x"}, CHAT: {"messages": [{"role": "user", "content": "x"}]}}


def adapter(kind):
    return REGISTRY[kind](ProviderSettings(kind, "http://127.0.0.1:1", "k", {}))


CASES = [(kind, ep, name) for kind in REGISTRY for ep in (COMPLETIONS, CHAT)
         for name in sorted(OPENAI_FIELDS[ep] - {"model"})]


@pytest.mark.parametrize(("kind", "endpoint", "name"), CASES)
def test_adapter_does_what_its_field_table_says(kind, endpoint, name):
    a = adapter(kind)
    decision = a.fields[endpoint][name]
    value = LOGPROBS[endpoint] if name == "logprobs" else SAMPLES[name]
    body = {**BASE[endpoint], "model": "public", name: value}
    dropped: list[str] = []
    if decision.verdict == REFUSED:
        with pytest.raises(Unsupported) as info:
            a.build_body(endpoint, body, "m", want_usage=False, dropped=dropped)
        assert info.value.param == name
        return
    out = a.build_body(endpoint, body, "m", want_usage=False, dropped=dropped)
    if decision.verdict == PASSED:
        assert out[name] == value
    elif decision.verdict == DROPPED:
        assert name not in out and dropped == [name]
    else:
        assert decision.verdict == TRANSLATED
        if decision.to:
            assert out[decision.to] == value and name not in out
        else:
            assert name in out   # rewritten by the adapter's translate
    assert dropped == ([name] if decision.verdict == DROPPED else [])


@pytest.mark.parametrize("kind", list(REGISTRY))
def test_max_completion_tokens_wins_over_max_tokens_where_renamed(kind):
    a = adapter(kind)
    out = a.build_body(CHAT, {**BASE[CHAT], "max_tokens": 5, "max_completion_tokens": 9}, "m", False)
    if a.fields[CHAT]["max_completion_tokens"].to:
        assert out["max_tokens"] == 9 and "max_completion_tokens" not in out
    else:
        assert (out["max_tokens"], out["max_completion_tokens"]) == (5, 9)


def test_cogito_refuses_tool_choice_required_it_does_not_take():
    with pytest.raises(Unsupported) as info:
        adapter("cogito").build_body(CHAT, {**BASE[CHAT], "tools": SAMPLES["tools"], "tool_choice": "required"},
                                     "m", False)
    assert info.value.param == "tool_choice"


def test_readme_field_table_is_the_adapters_own():
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- field-table:start -->\n(.*?)<!-- field-table:end -->", text, re.S)
    assert found, "README.md lost its field table markers"
    assert found.group(1) == render(tables()), (
        "README's field table differs from the adapters'; paste the output of `python -m providers`")


def test_readme_capability_table_is_the_adapters_own():
    from providers.fields import capability_cells, render_capabilities
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- capability-table:start -->\n(.*?)<!-- capability-table:end -->", text, re.S)
    assert found, "README.md lost its capability table markers"
    assert found.group(1) == render_capabilities(capability_cells()), (
        "README's capability table differs from the adapters'; paste `python -m providers capabilities`")
