"""Every upstream fault, plain and streaming, against the vendor stand-ins: one table.

Each fault is played by the first target of a two-target model, then by the only target of
a one-target model. The client gets the second target's clean answer, or one OpenAI-shaped
error, or (once a stream has begun) an error event and `data: [DONE]`: never a hang, never a
silent success, never the vendor's raw body. The README's fault table is rendered from this
table and checked against it, so the two cannot drift.
"""

from __future__ import annotations

import email.utils
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import aiohttp
import orjson
import pytest

from providers.standins import BreakStream, Fail, Fault, Hang, Reply, Step
from tests.fixtures_proxy import providers_for

FIRST, SECOND = "cogito", "nebius"
CLIENT_TIMEOUT = 20   # far past every limit below: a hang fails the test instead of stalling it


@dataclass(frozen=True)
class Expect:
    """What the proxy does: `retry` (the same target again, then the next), `next` (the next
    target at once), `break` (a begun stream ends with an error event and [DONE]), `ok`
    (relayed whole). `status`/`code`: the error the client gets when no target is left."""

    does: str
    status: int = 0
    code: str = ""
    retry_after: Callable[[int], bool] | None = None   # a check of the final 429's Retry-After

    def text(self) -> str:
        if self.does == "ok":
            return "relayed whole"
        if self.does == "break":
            return f"error event `{self.code}`, then `[DONE]`"
        first = "retried, then next target" if self.does == "retry" else "next target at once"
        return f"{first}; if none: {self.status} `{self.code}`"


@dataclass(frozen=True)
class Row:
    fault: str                                    # as the README names it
    step: Callable[[bool], Step] | None           # what the first target does (None: refused)
    plain: Expect | None                          # None: the fault has no plain form
    stream: Expect | None


def http_date(seconds_ahead: int) -> str:
    return email.utils.formatdate(time.time() + seconds_ahead, usegmt=True)


def whole(n: int) -> bool:
    return n >= 1


def status(n: int, code: str = "upstream_error") -> Expect:
    return Expect("retry", {500: 502}.get(n, n), code)


FAULTS: list[Row] = [
    Row("connection refused", None,
        Expect("retry", 502, "upstream_unavailable"), Expect("retry", 502, "upstream_unavailable")),
    Row("reset before the first byte of the body", lambda s: BreakStream(after=0),
        Expect("retry", 502, "upstream_unavailable"), Expect("retry", 502, "upstream_unavailable")),
    Row("reset mid-body", lambda s: BreakStream(after=1),
        Expect("retry", 502, "upstream_unavailable"), Expect("break", code="upstream_stream_interrupted")),
    Row("first byte slower than `timeout_s`", lambda s: Hang(seconds=5),
        Expect("retry", 504, "upstream_timeout"), Expect("retry", 504, "upstream_timeout")),
    Row("silent after the headers (before the first event)", lambda s: Fault("stall", after=0, seconds=5),
        Expect("next", 504, "upstream_timeout"), Expect("next", 504, "upstream_timeout")),
    Row("stalls mid-way (`stream_idle_timeout_s`)", lambda s: Fault("stall", after=1, seconds=5),
        Expect("next", 504, "upstream_timeout"), Expect("break", code="upstream_stream_interrupted")),
    Row("keep-alive comments only, past the first-event limit", lambda s: Fault("ping", seconds=5),
        Expect("next", 504, "upstream_timeout"), Expect("next", 504, "upstream_timeout")),
    Row("500", lambda s: Fault("status", status=500), status(500), status(500)),
    Row("502", lambda s: Fault("status", status=502), status(502), status(502)),
    Row("503", lambda s: Fault("status", status=503), status(503), status(503)),
    Row("504", lambda s: Fault("status", status=504), status(504), status(504)),
    Row("429, `Retry-After: 0`", lambda s: Fault("status", status=429, retry_after="0"),
        *[Expect("retry", 429, "rate_limit_exceeded", lambda n: n == 1)] * 2),
    Row("429, `Retry-After` in seconds past `retry_after_cap_s`",
        lambda s: Fault("status", status=429, retry_after="120"),
        *[Expect("next", 429, "rate_limit_exceeded", lambda n: n == 120)] * 2),
    Row("429, `Retry-After` as an HTTP-date past the cap",
        lambda s: Fault("status", status=429, retry_after=http_date(120)),
        *[Expect("next", 429, "rate_limit_exceeded", lambda n: 100 <= n <= 121)] * 2),
    Row("429, no `Retry-After`", lambda s: Fault("status", status=429),
        *[Expect("retry", 429, "rate_limit_exceeded", whole)] * 2),
    Row("429, `Retry-After: inf` (or any unusable value)", lambda s: Fault("status", status=429, retry_after="inf"),
        *[Expect("retry", 429, "rate_limit_exceeded", whole)] * 2),
    Row("error body that never ends", lambda s: Fault("endless_error", status=503), status(503), status(503)),
    Row("HTML from a load balancer", lambda s: Fail("plain_502"), status(502), status(502)),
    Row("malformed JSON", lambda s: Fault("bad_json", after=1 if s else 0),
        Expect("next", 502, "upstream_bad_response"), Expect("break", code="upstream_bad_response")),
    Row("malformed first event", lambda s: Fault("bad_json", after=0),
        None, Expect("next", 502, "upstream_bad_response")),
    Row("200 not in the promised shape", lambda s: Fault("wrong_shape"),
        Expect("next", 502, "upstream_bad_response"), Expect("next", 502, "upstream_bad_response")),
    Row("broken SSE line", lambda s: Fault("broken_line", after=1), None, Expect("break", code="upstream_bad_response")),
    Row("missing `[DONE]`", lambda s: Fault("no_done"), None, Expect("break", code="upstream_stream_interrupted")),
    Row("events split across reads at every byte", lambda s: Fault("split"), None, Expect("ok")),
    Row("in-band error event before the first token", lambda s: Fault("error_event", after=0),
        None, Expect("retry", 502, "upstream_error")),
    Row("in-band error event after the first token", lambda s: Fault("error_event", after=1),
        None, Expect("break", code="upstream_error")),
]

CASES = [pytest.param(row, stream, id=f"{row.fault}-{'stream' if stream else 'plain'}")
         for row in FAULTS for stream in (False, True) if (row.stream if stream else row.plain) is not None]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def proxy(vendors, start_proxy):
    providers = providers_for([vendors[FIRST], vendors[SECOND]])
    # The faulty target's limits are short so the table runs fast; its own idle limit also
    # shows a provider overriding settings.stream_idle_timeout_s.
    providers[FIRST].update(timeout_s=2, stream_idle_timeout_s=1.2)
    providers["dead"] = {"kind": "openai", "base_url": f"http://127.0.0.1:{closed_port()}/v1", "timeout_s": 2}
    models = {
        "g": {"targets": [{"provider": FIRST, "model": "m-1"}, {"provider": SECOND, "model": "m-1"}]},
        "solo": {"targets": [{"provider": FIRST, "model": "m-1"}]},
        "g-dead": {"targets": [{"provider": "dead", "model": "m-1"}, {"provider": SECOND, "model": "m-1"}]},
        "solo-dead": {"targets": [{"provider": "dead", "model": "m-1"}]},
    }
    settings = {"retry": {"attempts": 2, "backoff_initial_s": 0.01, "backoff_max_s": 0.02, "retry_after_cap_s": 1}}
    return await start_proxy({"providers": providers, "models": models, "settings": settings}, vendors=vendors)


async def send(proxy, model: str, stream: bool) -> tuple[int, dict[str, str], bytes]:
    body = {"model": model, "prompt": "hi", "stream": stream}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)) as s:
        async with s.post(proxy.url + "/v1/completions", json=body) as r:
            return r.status, dict(r.headers), await r.read()


def events_of(raw: bytes) -> list[Any]:
    out: list[Any] = []
    for block in raw.decode().split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            data = block[len("data: "):]
            out.append("[DONE]" if data == "[DONE]" else orjson.loads(data))
    return out


def assert_one_openai_error(raw: bytes, status: int, code: str) -> dict[str, Any]:
    body = orjson.loads(raw)
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["code"] == code, body
    message = body["error"]["message"]
    assert "<html" not in message and '{"' not in message and len(message) < 2000, "a vendor's raw body leaked"
    return body["error"]


@pytest.mark.parametrize(("row", "stream"), CASES)
async def test_upstream_fault_is_retried_fallen_over_or_answered_cleanly(proxy, vendors, row, stream):
    expect = row.stream if stream else row.plain
    assert expect is not None
    first = vendors[FIRST].control
    pair, alone = ("g", "solo") if row.step is not None else ("g-dead", "solo-dead")
    tries = 2 if expect.does == "retry" else 1

    # With a second target: its clean answer, after the attempts the policy allows.
    if row.step is not None:
        first.push(*[row.step(stream) for _ in range(tries)])
    vendors[SECOND].control.push(Reply(text="clean answer"))
    code, headers, raw = await send(proxy, pair, stream)
    assert code == 200
    if expect.does in ("break", "ok"):
        assert headers["x-router-provider"] == FIRST and headers["x-router-attempts"] == "1"
        events = events_of(raw) if stream else []
        assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
        if expect.does == "ok":
            assert not any("error" in e for e in events[:-1])
            assert "".join(e["choices"][0]["text"] for e in events[:-1] if e["choices"]) == "Hello from the stand-in."
        else:
            assert "choices" in events[0], "the stream had begun before it broke"
            error = events[-2]["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["code"] == expect.code
            assert all("error" not in e for e in events[:-2])
        vendors[SECOND].control.clear()
        return
    assert headers["x-router-provider"] == SECOND
    assert headers["x-router-attempts"] == str(tries + 1)
    if stream:
        events = events_of(raw)
        assert events[-1] == "[DONE]" and not any("error" in e for e in events[:-1])
    else:
        assert orjson.loads(raw)["choices"][0]["text"] == "clean answer"

    # Alone: one OpenAI-shaped error, never the vendor's body.
    if row.step is not None:
        first.push(*[row.step(stream) for _ in range(tries)])
    code, headers, raw = await send(proxy, alone, stream)
    assert code == expect.status
    assert headers["Content-Type"].startswith("application/json")
    assert headers["x-router-attempts"] == str(tries)
    assert_one_openai_error(raw, expect.status, expect.code)
    if expect.retry_after is not None:
        assert re.fullmatch(r"\d+", headers["Retry-After"]) and expect.retry_after(int(headers["Retry-After"]))
    assert first.pending == 0


README_START, README_END = "<!-- fault-table:start -->", "<!-- fault-table:end -->"


def render_table() -> str:
    lines = ["| upstream fault | plain request | stream |", "| --- | --- | --- |"]
    for row in FAULTS:
        cells = [e.text() if e else "(no plain form)" for e in (row.plain, row.stream)]
        lines.append(f"| {row.fault} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def test_readme_fault_table_is_the_tested_table():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert README_START in readme and README_END in readme, "README lost its fault table markers"
    shown = readme.split(README_START)[1].split(README_END)[0].strip()
    assert shown == render_table(), "README's fault table differs from tests/test_faults.py:\n" + render_table()
