"""Strategies order a group's targets; the planner puts unusable targets last, across groups."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import asyncio

import aiohttp
import orjson
import pytest
from aiohttp import web

from router.app import create_app
from router.candidates import plan
from router.handlers import STATE
from router.normalize import normalize
from router.routes import parse
from router.settings import ServeSettings
from router.strategies import STRATEGIES
from tests.fixtures_proxy import key_env, providers_for


@dataclass
class H:
    """Anything shaped like health.TargetHealth will do."""

    state: str = "closed"
    latency_ewma: float | None = None
    error_rate: float = 0.0
    ttft_ewma: float | None = None
    consecutive_failures: int = 0
    probes_left: int = 0

    @property
    def usable(self) -> bool:
        return self.state == "closed" or (self.state == "half_open" and self.probes_left > 0)


def group(strategy: str, targets: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"strategy": strategy, "targets": targets, **extra}


def t(provider: str, model: str = "m", **kw: Any) -> dict[str, Any]:
    return {"provider": provider, "model": model, **kw}


def table(models: dict[str, Any]):
    return parse({"providers": {p: {"kind": "openai", "base_url": "http://127.0.0.1:1"} for p in "abcd"},
                  "models": models}, environ={})


def req(prompt_tokens: int = 10, max_tokens: int | None = None, stream: bool = False):
    body: dict[str, Any] = {"model": "g", "prompt": "x" * (4 * (prompt_tokens - 1))}
    if max_tokens:
        body["max_tokens"] = max_tokens
    if stream:
        body["stream"] = True
    return normalize("completions", orjson.dumps(body))


def order(strategy: str, targets: list[dict[str, Any]], health: dict[str, H] | None = None, norm=None) -> list[str]:
    tab = table({"g": group(strategy, targets)})
    return [c.target.provider for c in plan(tab, ["g"], norm or req(), health or {})]


def test_fallback_keeps_config_order():
    assert order("fallback", [t("c"), t("a"), t("b")]) == ["c", "a", "b"]


def test_weighted_puts_each_target_first_in_proportion_to_its_weight():
    targets = [t("a", weight=3), t("b", weight=1), t("c", weight=0)]
    firsts = Counter(order("weighted", targets)[0] for _ in range(4000))
    assert abs(firsts["a"] / 4000 - 0.75) < 0.04
    assert abs(firsts["b"] / 4000 - 0.25) < 0.04
    assert firsts["c"] == 0


def test_weighted_order_always_holds_every_target_once_with_zero_weights_last():
    for _ in range(200):
        got = order("weighted", [t("a", weight=0), t("b", weight=1), t("c", weight=5)])
        assert sorted(got) == ["a", "b", "c"] and got[-1] == "a"


LATENCY = [
    # (health by provider, expected order)
    ({"a": H(latency_ewma=0.9), "b": H(latency_ewma=0.2), "c": H(latency_ewma=0.5)}, ["b", "c", "a"]),
    # Unmeasured (no entry, or no latency yet) goes first, so it gets measured.
    ({"a": H(latency_ewma=0.9), "b": H(latency_ewma=0.2)}, ["c", "b", "a"]),
    ({"a": H(latency_ewma=0.9), "b": H(latency_ewma=0.2), "c": H()}, ["c", "b", "a"]),
    # Errors stretch latency: 0.2s at 90% errors is worse than 0.5s without.
    ({"a": H(latency_ewma=0.5), "b": H(latency_ewma=0.2, error_rate=0.9), "c": H(latency_ewma=0.6)},
     ["a", "c", "b"]),
    # Ties keep config order.
    ({"a": H(latency_ewma=0.3), "b": H(latency_ewma=0.3), "c": H(latency_ewma=0.3)}, ["a", "b", "c"]),
]


@pytest.mark.parametrize("health,expected", LATENCY)
def test_latency_puts_the_fastest_recent_target_first(health, expected):
    hm = {f"{p}/m": h for p, h in health.items()}
    assert order("latency", [t("a"), t("b"), t("c")], hm) == expected


# a: first to a token but slow to finish; b: the opposite.
A_FIRST_TOKEN_B_WHOLE = {"a": H(latency_ewma=2.0, ttft_ewma=0.1), "b": H(latency_ewma=0.5, ttft_ewma=0.4)}
STREAMED = [
    # (health by provider, stream, expected order)
    (A_FIRST_TOKEN_B_WHOLE, True, ["a", "b"]),
    (A_FIRST_TOKEN_B_WHOLE, False, ["b", "a"]),
    # Not yet measured streaming: judged by its whole answers (an upper bound on the first token).
    ({"a": H(latency_ewma=2.0), "b": H(latency_ewma=0.5, ttft_ewma=1.0)}, True, ["b", "a"]),
    ({"a": H(latency_ewma=0.8), "b": H(latency_ewma=0.5, ttft_ewma=1.0)}, True, ["a", "b"]),
    # Measured neither way: first, so it gets measured.
    ({"a": H(latency_ewma=0.5, ttft_ewma=0.1), "b": H()}, True, ["b", "a"]),
    # Errors stretch time to first token too.
    ({"a": H(ttft_ewma=0.1, error_rate=0.9), "b": H(ttft_ewma=0.4)}, True, ["b", "a"]),
]


@pytest.mark.parametrize("health,stream,expected", STREAMED)
def test_latency_orders_streams_by_time_to_first_token_and_the_rest_by_whole_answer(health, stream, expected):
    hm = {f"{p}/m": h for p, h in health.items()}
    assert order("latency", [t("a"), t("b")], hm, req(stream=stream)) == expected


# a: cheap to read, dear to write; b: the opposite; c: no price at all.
COSTED = [t("a", price={"input": 0.1, "output": 10}), t("b", price={"input": 5, "output": 0.2})]
COST = [
    (req(prompt_tokens=20000, max_tokens=10), ["a", "b"]),       # a long prompt, a short answer
    (req(prompt_tokens=10, max_tokens=4000), ["b", "a"]),        # a short prompt, a long answer
    (req(prompt_tokens=10), ["b", "a"]),                         # unbounded answer: assumed long
]


@pytest.mark.parametrize("norm,expected", COST)
def test_cost_puts_the_cheapest_target_for_this_request_first(norm, expected):
    assert order("cost", COSTED, norm=norm) == expected


def test_cost_ties_keep_config_order():
    same = {"input": 1, "output": 1}
    assert order("cost", [t("b", price=same), t("a", price=same)]) == ["b", "a"]


UNHEALTHY = [
    ("fallback", {"a": H(state="open")}, ["b", "c", "a"]),
    ("fallback", {"a": H(state="half_open", probes_left=0)}, ["b", "c", "a"]),
    ("fallback", {"a": H(state="half_open", probes_left=1)}, ["a", "b", "c"]),
    ("fallback", {"a": H(state="open"), "b": H(state="open")}, ["c", "a", "b"]),
    ("latency", {"a": H(latency_ewma=0.1, state="open"), "b": H(latency_ewma=0.5)}, ["c", "b", "a"]),
    ("fallback", {"a": H(consecutive_failures=3)}, ["a", "b", "c"]),   # closed is usable, whatever else
]


@pytest.mark.parametrize("strategy,health,expected", UNHEALTHY)
def test_unusable_targets_go_last(strategy, health, expected):
    hm = {f"{p}/m": h for p, h in health.items()}
    assert order(strategy, [t("a"), t("b"), t("c")], hm) == expected


def test_unusable_targets_go_after_every_usable_target_of_the_later_groups():
    tab = table({"first": group("fallback", [t("a"), t("b")]), "second": group("fallback", [t("c"), t("a")])})
    cands = plan(tab, ["first", "second"], req(), {"a/m": H(state="open")})
    assert [(c.public, c.target.provider) for c in cands] == [("first", "b"), ("second", "c"), ("first", "a")]


def test_plan_takes_targets_of_model_then_models_without_repeats():
    tab = table({"one": group("fallback", [t("a"), t("b")]), "two": group("fallback", [t("b"), t("c")])})
    cands = plan(tab, ["one", "two"])
    assert [(c.public, c.target.id) for c in cands] == [("one", "a/m"), ("one", "b/m"), ("two", "c/m")]


def test_a_rules_strategy_overrides_the_groups_own():
    tab = table({"g": group("fallback", [t("a", price={"input": 9, "output": 9}),
                                          t("b", price={"input": 1, "output": 1})])})
    assert [c.target.provider for c in plan(tab, ["g"], req(), {}, "cost")] == ["b", "a"]


def test_registry_names_the_four_strategies():
    assert list(STRATEGIES) == ["fallback", "weighted", "latency", "cost"]


# --- over the wire: the proxy orders by the health it is given ---------------------------------


@pytest.fixture
async def serve(vendors, monkeypatch):
    """The proxy with its real in-process shared state, fed the given attempt outcomes first."""
    runners: list[web.AppRunner] = []

    async def start(models: dict[str, Any], outcomes: list[tuple[Any, ...]]) -> tuple[str, web.Application]:
        for v in vendors:
            monkeypatch.setenv(key_env(v.kind), v.api_key)
        tab = parse({"providers": providers_for([vendors.cogito, vendors.nebius]), "models": models})
        app = create_app(ServeSettings(), tab, watch=False)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        for outcome in outcomes:   # (target id, ok, latency[, stream])
            await app[STATE].record(*outcome)
        return f"http://127.0.0.1:{runner.addresses[0][1]}", app

    yield start
    for r in runners:
        await r.cleanup()


FAIL = [("cogito/m-1", False, None)] * 5   # the default failure threshold opens the circuit
WIRE = [
    ("fallback", [], "cogito"),
    ("fallback", FAIL, "nebius"),
    ("latency", [("cogito/m-1", True, 0.8), ("nebius/m-1", True, 0.1)], "nebius"),
    ("latency", [("cogito/m-1", True, 0.1), ("nebius/m-1", True, 0.8)], "cogito"),
]


@pytest.mark.parametrize("strategy,outcomes,served_by", WIRE)
async def test_proxy_sends_to_the_target_its_strategy_and_health_put_first(serve, strategy, outcomes, served_by):
    url, _ = await serve({"g": group(strategy, [t("cogito", "m-1"), t("nebius", "m-1")])}, outcomes)
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/completions", json={"model": "g", "prompt": "hi"}) as r:
            assert r.status == 200, await r.text()
            assert (r.headers["x-router-provider"], r.headers["x-router-attempts"]) == (served_by, "1")


# cogito: first to a token but slow to finish; nebius: the opposite.
SPLIT = [("cogito/m-1", True, 0.1, True), ("cogito/m-1", True, 2.0, False),
         ("nebius/m-1", True, 0.8, True), ("nebius/m-1", True, 0.3, False)]


@pytest.mark.parametrize("stream,served_by", [(True, "cogito"), (False, "nebius")])
async def test_proxy_streams_to_the_first_to_a_token_and_answers_whole_from_the_fastest_overall(
        serve, stream, served_by):
    url, app = await serve({"g": group("latency", [t("cogito", "m-1"), t("nebius", "m-1")])}, SPLIT)
    before = (await app[STATE].health([f"{served_by}/m-1"]))[f"{served_by}/m-1"]
    body = {"model": "g", "prompt": "hi", "stream": stream}
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/completions", json=body) as r:
        assert r.status == 200, await r.text()
        await r.read()
        assert (r.headers["x-router-provider"], r.headers["x-router-attempts"]) == (served_by, "1")
    # The attempt itself is recorded on its own kind's average only (at settle, just after the answer).
    for _ in range(200):
        after = (await app[STATE].health([f"{served_by}/m-1"]))[f"{served_by}/m-1"]
        if (after.ttft_ewma, after.latency_ewma) != (before.ttft_ewma, before.latency_ewma):
            break
        await asyncio.sleep(0.01)
    moved, kept = ("ttft_ewma", "latency_ewma") if stream else ("latency_ewma", "ttft_ewma")
    assert getattr(after, moved) != getattr(before, moved)
    assert getattr(after, kept) == getattr(before, kept)


@pytest.mark.parametrize(("default_max_tokens", "cheapest"), [(10, "b"), (100_000, "a")])
def test_cost_reckons_an_unbounded_answer_by_the_routes_default(default_max_tokens, cheapest):
    # a: dear input, cheap output; b: the reverse. For a 1,000-token prompt without max_tokens,
    # a short default answer makes the input price decide (b), a long one the output price (a).
    tab = table({"g": group("cost", [t("a", price={"input": 9, "output": 1}), t("b", price={"input": 1, "output": 9})])})
    norm = normalize("completions", orjson.dumps({"model": "g", "prompt": "x" * 4000}), default_max_tokens)
    assert norm.max_tokens == default_max_tokens
    assert plan(tab, ["g"], norm)[0].target.provider == cheapest


@pytest.mark.parametrize(("choices", "cheapest"), [({}, "b"), ({"n": 20}, "a"), ({"best_of": 20}, "a")])
def test_cost_counts_the_output_of_every_choice(choices, cheapest):
    # a: dear input, cheap output; b: the reverse. 1,000 prompt tokens and max_tokens 100: one
    # answer makes the input price decide (b); twenty answers make the output price decide (a).
    tab = table({"g": group("cost", [t("a", price={"input": 9, "output": 1}), t("b", price={"input": 1, "output": 9})])})
    norm = normalize("completions", orjson.dumps({"model": "g", "prompt": "x" * 4000, "max_tokens": 100, **choices}))
    assert plan(tab, ["g"], norm)[0].target.provider == cheapest
