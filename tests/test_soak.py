"""Soak: a real `router serve` under mixed load for ROUTER_SOAK_SECONDS (30 by default, as in
CI; a few minutes is the slow mode), while the vendor stand-ins inject faults of every kind
they have and Redis is restarted once.

What must hold, request by request: exactly one answer, carrying its own x-request-id; a
well-formed one (JSON in OpenAI's shape, or a stream whose every event is JSON and that ends
with exactly one `[DONE]`), and one access-log line; no 5xx of the proxy's own making (every 5xx is an upstream_error,
an answer to an upstream fault); no traceback in the proxy's log. And for the process: open
file descriptors end within FD_MARGIN of where they were after warm-up, resident memory
within RSS_MARGIN_MB.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import aiohttp
import orjson

from providers.standins import BreakStream, Fail, Hang, Reply
from tests.fixtures_proxy import key_env
from tests.test_replicas import start_replicas, stop

SECONDS = float(os.environ.get("ROUTER_SOAK_SECONDS", "30"))
WORKERS = 8
FD_MARGIN = 16
RSS_MARGIN_MB = 40
TIMEOUT_S = 1.0            # the stand-ins' Hang outlasts it

FAULTS = [
    lambda: Fail("server_error"),
    lambda: Fail("plain_502"),
    lambda: Fail("rate_limit", retry_after=1),
    lambda: Fail("rate_limit"),
    lambda: Fail("model_not_found"),
    lambda: Fail("context_length"),
    lambda: Fail("auth"),
    lambda: Fail("bad_request"),
    lambda: BreakStream(after=0),
    lambda: BreakStream(after=2),
    lambda: Hang(TIMEOUT_S * 2),
    lambda: Reply(delay=0.2, chunk_delay=0.05),
]

def kind(step: object) -> str:
    return type(step).__name__ + (f":{step.error}" if isinstance(step, Fail) else "")


GOOD = {"completions": {"prompt": "Say hi", "max_tokens": 16}, "chat": {
    "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 16}}
BAD = [  # (path, raw body): bad input mixed into the load
    ("/v1/completions", b"{not json"),
    ("/v1/chat/completions", b'{"model": "pair", "messages": []}'),
    ("/v1/completions", b'{"model": "nope", "prompt": "x"}'),
    ("/v1/completions", b'{"model": "pair", "prompt": "x", "max_tokens": 1000000000000}'),
    ("/v1/chat/completions", b'{"model": "pair", "messages": [{"role": "user", "content": "\xff"}]}'),
]


def routes_doc(vendors) -> dict:
    up = {v.kind: {"kind": v.kind, "base_url": v.url, "api_key_env": key_env(v.kind), "timeout_s": TIMEOUT_S}
          for v in (vendors.openai, vendors.cogito)}
    target = {"openai": {"provider": "openai", "model": "m-1"}, "cogito": {"provider": "cogito", "model": "m-1"}}
    limits = {"rpm": 100000, "tpm": 100000000, "concurrent": 1000}
    return {"providers": up,
            "models": {"pair": {"limits": limits, "targets": [target["openai"], target["cogito"]]},
                       "solo": {"limits": limits, "targets": [target["cogito"]]}},
            "settings": {"deadline_s": 10, "retry": {"attempts": 2, "backoff_initial_s": 0.05,
                                                     "backoff_max_s": 0.2, "retry_after_cap_s": 2}}}


@dataclass
class Outcome:
    sent_id: str
    status: int
    got_id: str
    problem: str | None      # what was malformed, if anything


def error_problem(err: object, status: int) -> str | None:
    if not isinstance(err, dict) or set(err) != {"message", "type", "param", "code"} or not err["message"]:
        return f"not OpenAI's error shape: {err!r}"
    if status >= 500 and err["type"] != "upstream_error":
        return f"a {status} of the proxy's own making: {err!r}"
    return None


def json_problem(status: int, raw: bytes) -> str | None:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return f"{status} body is not JSON: {raw[:200]!r}"
    if status == 200:
        return None if body.get("choices") else f"200 without choices: {raw[:200]!r}"
    return error_problem(body.get("error"), status)


def stream_problem(raw: bytes) -> str | None:
    events = [line[5:].strip() for line in raw.split(b"\n") if line.startswith(b"data:")]
    if events.count(b"[DONE]") != 1 or events[-1] != b"[DONE]":
        return f"stream does not end with exactly one [DONE]: {raw[-300:]!r}"
    for e in events[:-1]:
        try:
            payload = orjson.loads(e)
        except orjson.JSONDecodeError:
            return f"stream event is not JSON: {e[:200]!r}"
        if "error" in payload:
            return error_problem(payload["error"], 502) if e is events[-2] else f"error event not last: {raw[-300:]!r}"
    return None


async def one(s: aiohttp.ClientSession, url: str, rng: random.Random) -> Outcome:
    rid = uuid.uuid4().hex
    stream = False
    if rng.random() < 0.1:
        path, raw = rng.choice(BAD)
    else:
        endpoint = rng.choice(["completions", "chat"])
        stream = rng.random() < 0.5
        path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
        raw = orjson.dumps({"model": rng.choice(["pair", "pair", "solo"]), "stream": stream, **GOOD[endpoint]})
    async with s.post(url + path, data=raw, headers={"Content-Type": "application/json", "X-Request-Id": rid}) as r:
        body = await r.read()
        is_stream = r.content_type == "text/event-stream"
        if is_stream and not stream:
            problem: str | None = "an event stream for a request that did not ask for one"
        else:
            problem = stream_problem(body) if is_stream else json_problem(r.status, body)
        return Outcome(rid, r.status, r.headers.get("x-request-id", ""), problem)


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


async def test_soak_mixed_load_with_faults_and_a_redis_restart(tmp_path, vendors, redis_server_factory):
    redis = redis_server_factory()
    log = open(tmp_path / "proxy.stderr", "wb")
    access = open(tmp_path / "proxy.access", "wb")
    procs, urls = await start_replicas(tmp_path, routes_doc(vendors), redis.url, vendors.openai, count=1,
                                       extra_env={key_env("cogito"): vendors.cogito.api_key},
                                       log_level="INFO", stdout=access, stderr=log)
    pid, url = procs[0].pid, urls[0]
    rng = random.Random(int(os.environ.get("ROUTER_SOAK_SEED", "9")))
    outcomes: list[Outcome] = []
    sent = 0
    stop_at = time.monotonic()
    phase = "warm-up"

    async def worker(seed: int) -> None:
        nonlocal sent
        wrng = random.Random(seed)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
            while time.monotonic() < stop_at:
                sent += 1
                try:
                    outcomes.append(await one(s, url, wrng))
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    outcomes.append(Outcome("", 0, "", f"no answer: {exc!r}"))

    injected: Counter[str] = Counter()

    async def faults() -> None:
        while time.monotonic() < stop_at:
            for v in (vendors.openai, vendors.cogito):
                if v.control.pending < 3 and rng.random() < 0.5:
                    step = rng.choice(FAULTS)()
                    v.control.push(step)
                    injected[kind(step)] += 1
            await asyncio.sleep(0.05)

    async def until_redis_up_is(wanted: float, timeout: float = 15.0) -> float:
        """router_redis_up once it reads `wanted` (or whatever it reads at the timeout)."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while True:
                async with s.get(url + "/metrics") as r:
                    text = await r.text()
                value = float(next(ln.split()[1] for ln in text.splitlines() if ln.startswith("router_redis_up ")))
                if value == wanted or time.monotonic() > deadline:
                    return value
                await asyncio.sleep(0.1)

    try:
        stop_at = time.monotonic() + 3           # warm-up: pools, caches and imports settle
        await asyncio.gather(*(worker(i) for i in range(WORKERS)))
        await asyncio.sleep(0.5)
        fd0, rss0 = fds(pid), rss_mb(pid)
        warm = len(outcomes)

        phase = "soak"
        stop_at = time.monotonic() + SECONDS
        load = asyncio.gather(*(worker(100 + i) for i in range(WORKERS)), faults())
        await asyncio.sleep(SECONDS * 0.4)
        await asyncio.to_thread(redis.stop)
        down = await until_redis_up_is(0)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(redis.start)
        await load
        up = await until_redis_up_is(1)
        for v in (vendors.openai, vendors.cogito):
            v.control.clear()
        await asyncio.sleep(TIMEOUT_S * 2 + 1)    # abandoned attempts and settles finish
        fd1, rss1 = fds(pid), rss_mb(pid)
    finally:
        await stop(procs)
        log.close()
        access.close()

    assert phase == "soak"
    assert (down, up) == (0, 1), "the proxy saw Redis go away and come back"
    assert set(injected) == {kind(f()) for f in FAULTS} and sum(injected.values()) > SECONDS * 5, injected
    statuses = Counter(o.status for o in outcomes)
    assert len(outcomes) == sent, "every request got exactly one answer"
    assert len({o.sent_id for o in outcomes}) == sent
    assert [o for o in outcomes if o.got_id != o.sent_id] == [], "an answer carried another request's id"
    logged = Counter(orjson.loads(line)["request_id"] for line in (tmp_path / "proxy.access").read_bytes().splitlines())
    assert [o.sent_id for o in outcomes if logged[o.sent_id] != 1] == [], "each request served (and logged) once"
    problems = [f"{o.status}: {o.problem}" for o in outcomes if o.problem]
    assert problems == [], "\n".join(problems[:20])
    assert 500 not in statuses, statuses
    assert statuses[200] > (len(outcomes) - warm) / 3, f"most requests are still served: {statuses}"
    stderr = (tmp_path / "proxy.stderr").read_text(errors="replace")
    assert "Traceback" not in stderr, stderr[-3000:]
    assert fd1 <= fd0 + FD_MARGIN, f"open fds {fd0} -> {fd1}"
    assert rss1 <= rss0 + RSS_MARGIN_MB, f"resident memory {rss0:.1f} MB -> {rss1:.1f} MB"
    print(f"soak {SECONDS:g}s: {len(outcomes)} requests {dict(statuses)}; {sum(injected.values())} faults; "
          f"fds {fd0} -> {fd1}; "
          f"rss {rss0:.1f} -> {rss1:.1f} MB")
