"""The retry policy (status x attempt x Retry-After x deadline), and one deadline and one
attempt cap across all targets of a request."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from providers.failures import Action, UpstreamError, classify, parse_retry_after, transport_error
from providers.standins import Fail, Hang, Reply
from router.retry import retrying
from router.config import Retry
from tests.fixtures_proxy import providers_for

FAST = Retry(attempts=3, backoff_initial_s=0.001, backoff_max_s=0.002, retry_after_cap_s=1.0)


def failure(status: int | str, retry_after: str | None = None) -> UpstreamError:
    if status == "connect":
        return transport_error("v", aiohttp.ClientConnectionError())
    if status == "timeout":
        return transport_error("v", asyncio.TimeoutError())
    code = "model_not_found" if status == "model_not_found" else None
    return classify("v", 404 if code else int(status), "boom", code, None, retry_after)


async def run(script: list[Any], policy: Retry = FAST, deadline_in: float = 60.0,
              budget: int = 100) -> tuple[int, list[float], Any]:
    """Run the retry loop over `script` (an UpstreamError to raise, or "ok"), one item per call.
    Returns (calls made, sleeps taken, "ok" or the error that escaped)."""
    calls = 0
    sleeps: list[float] = []
    deadline = time.monotonic() + deadline_in

    async def attempt() -> str:
        nonlocal calls
        step = script[min(calls, len(script) - 1)]
        calls += 1
        if isinstance(step, UpstreamError):
            raise step
        return step

    try:
        async for a in retrying(policy, deadline, lambda: calls < budget,
                                lambda rs: sleeps.append(rs.upcoming_sleep)):
            with a:
                result = await attempt()
                return calls, sleeps, result
    except UpstreamError as exc:
        return calls, sleeps, exc
    raise AssertionError("the loop ended without an answer or an error")


RETRIED = [429, 408, 409, 500, 502, 503, 504, 599, "connect", "timeout"]


@pytest.mark.parametrize("status", RETRIED)
async def test_retryable_failure_is_retried_on_the_same_target_until_it_succeeds(status):
    calls, sleeps, out = await run([failure(status), failure(status), "ok"])
    assert (calls, out, len(sleeps)) == (3, "ok", 2)


@pytest.mark.parametrize("status", RETRIED)
async def test_retryable_failure_gives_up_after_the_policys_attempts(status):
    calls, _, out = await run([failure(status)], Retry(attempts=2, backoff_initial_s=0.001))
    assert calls == 2 and out.action is Action.RETRY


NEVER = [(400, Action.RETURN), (401, Action.NEXT), (403, Action.NEXT), (413, Action.RETURN),
         (422, Action.RETURN), ("model_not_found", Action.NEXT)]


@pytest.mark.parametrize("status,action", NEVER)
async def test_failure_that_retrying_cannot_fix_is_not_retried(status, action):
    calls, sleeps, out = await run([failure(status), "ok"])
    assert (calls, sleeps, out.action) == (1, [], action)


RETRY_AFTER = [
    # (status, Retry-After, deadline in s, calls, sleeps): cap is 1s, the deadline is for the whole request
    (429, "0.05", 60, 2, [0.05]),        # honoured as given
    (503, "0.05", 60, 2, [0.05]),        # on a 5xx too
    (429, "1", 60, 2, [1.0]),            # exactly the cap: still honoured
    (429, "1.5", 60, 1, []),             # over the cap: move on at once, no sleep
    (429, "30", 60, 1, []),
    (429, "0.5", 0.3, 1, []),            # the wait would pass the deadline: move on at once
    (503, "0.05", 0.3, 2, [0.05]),       # a short wait inside the deadline is fine
    (429, "soon", 60, 2, None),          # not a number: ordinary backoff
]


@pytest.mark.parametrize("status,retry_after,deadline_in,calls,sleeps", RETRY_AFTER)
async def test_retry_after_is_honoured_up_to_the_cap_and_the_deadline(status, retry_after, deadline_in, calls, sleeps):
    got_calls, got_sleeps, out = await run([failure(status, retry_after), "ok"], deadline_in=deadline_in)
    assert got_calls == calls
    if sleeps is not None:
        assert got_sleeps == sleeps
    else:
        assert len(got_sleeps) == 1 and 0 <= got_sleeps[0] <= FAST.backoff_initial_s
    assert out == "ok" if calls == 2 else out.action is Action.RETRY


async def test_backoff_is_exponential_with_full_jitter_up_to_its_max():
    policy = Retry(attempts=6, backoff_initial_s=0.002, backoff_max_s=0.006, retry_after_cap_s=1)
    seen: list[list[float]] = []
    for _ in range(30):
        _, sleeps, _ = await run([failure(500)], policy)
        seen.append(sleeps)
    ceilings = [0.002, 0.004, 0.006, 0.006, 0.006]
    assert all(len(s) == 5 and all(0 <= x <= c for x, c in zip(s, ceilings)) for s in seen)
    assert len({s[0] for s in seen}) > 20, "jittered, not fixed"
    assert max(s[2] for s in seen) > 0.004, "the third wait may reach past the second's ceiling"


async def test_deadline_already_passed_means_no_retry():
    calls, sleeps, _ = await run([failure(500), "ok"], deadline_in=0.0)
    assert (calls, sleeps) == (1, [])


async def test_spent_attempt_budget_means_no_retry():
    calls, sleeps, _ = await run([failure(500), "ok"], budget=1)
    assert (calls, sleeps) == (1, [])


# --- through the proxy: retries, fallbacks, one deadline, one attempt cap ------------------------

TWO = ["openai", "cogito"]


async def start(vendors, start_proxy, group: dict[str, Any] | None = None, settings: dict | None = None):
    targets = [{"provider": k, "model": "m-1"} for k in TWO]
    doc = {"providers": providers_for([vendors[k] for k in TWO]),
           "models": {"g": {"targets": targets, **(group or {})}},
           "settings": {"retry": {"attempts": 2, "backoff_initial_s": 0.001, "backoff_max_s": 0.002,
                                  "retry_after_cap_s": 1}, **(settings or {})}}
    return await start_proxy(doc, vendors=vendors)


async def call(proxy) -> tuple[int, dict, dict]:
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + "/v1/completions", json={"model": "g", "prompt": "hi"}) as r:
            return r.status, await r.json(), dict(r.headers)


WIRE = [
    # (first vendor's script, status, who served, x-router-attempts, calls at first, calls at second)
    ([Fail("rate_limit")], 200, "openai", "2", 2, 0),
    ([Fail("server_error"), Fail("server_error")], 200, "cogito", "3", 2, 1),
    ([Fail("plain_502")], 200, "openai", "2", 2, 0),
    ([Fail("rate_limit", retry_after=30)], 200, "cogito", "2", 1, 1),      # over the cap: next target now
    ([Fail("model_not_found")], 200, "cogito", "2", 1, 1),                 # vendor lacks it: next at once
    ([Fail("auth")], 200, "cogito", "2", 1, 1),                            # our key refused: next at once
    ([Fail("bad_request")], 400, None, "1", 1, 0),                         # the client's mistake: answered
    ([Fail("context_length")], 400, None, "1", 1, 0),
]


@pytest.mark.parametrize("script,status,served,attempts,first,second", WIRE)
async def test_proxy_retries_falls_over_or_answers_by_failure(vendors, start_proxy, script, status, served,
                                                              attempts, first, second):
    proxy = await start(vendors, start_proxy)
    vendors.openai.control.push(*script)
    got, body, headers = await call(proxy)
    assert got == status, body
    if served:
        assert headers["x-router-provider"] == served
    assert headers["x-router-attempts"] == attempts
    assert (len(vendors.openai.control.requests), len(vendors.cogito.control.requests)) == (first, second)


async def test_group_retry_policy_overrides_the_settings_one(vendors, start_proxy):
    proxy = await start(vendors, start_proxy, group={"retry": {"attempts": 4, "backoff_initial_s": 0.001}})
    vendors.openai.control.push(Fail("server_error"), Fail("server_error"), Fail("server_error"))
    got, _, headers = await call(proxy)
    assert (got, headers["x-router-provider"], headers["x-router-attempts"]) == (200, "openai", "4")


async def test_attempt_cap_covers_all_targets_of_a_request(vendors, start_proxy):
    proxy = await start(vendors, start_proxy, settings={"max_attempts": 3})
    for v in TWO:
        vendors[v].control.push(*[Fail("server_error")] * 5)
    got, body, headers = await call(proxy)
    assert (got, body["error"]["code"], headers["x-router-attempts"]) == (502, "upstream_error", "3")
    assert (len(vendors.openai.control.requests), len(vendors.cogito.control.requests)) == (2, 1)


async def test_group_max_attempts_overrides_the_settings_one(vendors, start_proxy):
    proxy = await start(vendors, start_proxy, group={"max_attempts": 1})
    vendors.openai.control.push(Fail("server_error"))
    got, _, headers = await call(proxy)
    assert (got, headers["x-router-attempts"]) == (502, "1")
    assert not vendors.cogito.control.requests


async def test_one_deadline_covers_all_attempts_of_a_request(vendors, start_proxy):
    proxy = await start(vendors, start_proxy, group={"deadline_s": 0.5})
    vendors.openai.control.push(Hang(5))
    vendors.cogito.control.push(Reply())
    started = time.monotonic()
    got, body, headers = await call(proxy)
    elapsed = time.monotonic() - started
    assert (got, body["error"]["code"]) == (504, "upstream_timeout")
    assert 0.4 < elapsed < 1.5
    assert headers["x-router-attempts"] == "1"
    assert not vendors.cogito.control.requests, "no time was left for the second target"


async def test_settings_deadline_applies_when_the_group_has_none(vendors, start_proxy):
    proxy = await start(vendors, start_proxy, settings={"deadline_s": 0.4})
    vendors.openai.control.push(Hang(5))
    started = time.monotonic()
    got, _, _ = await call(proxy)
    assert got == 504 and time.monotonic() - started < 1.5


def in_seconds(s: int) -> str:
    import email.utils
    return email.utils.formatdate(time.time() + s, usegmt=True)


@pytest.mark.parametrize(("given", "wait"), [
    ("3", 3.0), ("0.25", 0.25), (" 7 ", 7.0), ("0", 0.0),
    (None, None), ("", None), ("soon", None), ("-1", None), ("inf", None), ("1e999", None), ("nan", None),
    ("86401", None),                                  # more than a day is not a hint
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),          # a date already past: retry now
    ("Mon, 99 Foo 2015 07:28:00 GMT", None),
])
def test_retry_after_in_either_form_or_unusable_is_no_hint(given, wait):
    assert parse_retry_after(given) == wait


def test_retry_after_as_an_http_date_is_seconds_from_now():
    assert 28 <= (parse_retry_after(in_seconds(30)) or 0) <= 30


@pytest.mark.parametrize(("given", "header"), [
    ("2.2", "3"), ("0", "1"), (None, "1"), ("inf", "1"), ("1e999", "1"), ("junk", "1"),
])
def test_final_429_carries_retry_after_in_whole_seconds(given, header):
    err = classify("v", 429, "slow down", None, None, given)
    assert err.error.headers == {"Retry-After": header}


def test_final_429_from_an_http_date_carries_whole_seconds():
    seconds = int(classify("v", 429, None, None, None, in_seconds(40)).error.headers["Retry-After"])
    assert 38 <= seconds <= 40


async def test_retry_after_date_past_the_cap_falls_over_at_once():
    calls, sleeps, outcome = await run([failure(429, in_seconds(30)), "ok"])
    assert (calls, sleeps) == (1, []) and isinstance(outcome, UpstreamError)
