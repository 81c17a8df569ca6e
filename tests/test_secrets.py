"""Vendor keys never leave the proxy: not in error bodies, error events, logs, metrics or
`explain`, not even when a vendor's error message repeats the Authorization header it got.
Request ids are bounded and printable; every error answer names its code in the access log."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import orjson
import pytest

from providers.standins import Fault, Reply
from router.edge import METRICS
from router.exchange import request_id
from router.explain import explain
from tests.fixtures_proxy import providers_for

FIRST, SECOND = "cogito", "nebius"
# A key the scrubber knows only by its shape, not because it is configured.
FOREIGN = "sk-proj-a1B2c3D4e5F6g7H8i9J0"


@pytest.fixture
async def proxy(vendors, start_proxy):
    doc = {"providers": providers_for([vendors[FIRST], vendors[SECOND]]),
           "models": {"g": {"targets": [{"provider": FIRST, "model": "m-1"}, {"provider": SECOND, "model": "m-1"}]},
                      "solo": {"targets": [{"provider": FIRST, "model": "m-1"}]}},
           "settings": {"retry": {"attempts": 1}}}
    return await start_proxy(doc, vendors=vendors)


async def post(proxy, model: str, stream: bool, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
    payload = body or {"model": model, "prompt": f"please repeat {FOREIGN}", "stream": stream}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s:
        async with s.post(proxy.url + "/v1/completions", json=payload) as r:
            return r.status, await r.read()


ECHOES = [
    # (what the first target does, stream, model, status the client gets)
    (Fault("echo_key", status=400), False, "solo", 400),      # a client error: the vendor's message is passed on
    (Fault("echo_key", status=400), True, "solo", 400),
    (Fault("echo_key", status=401), False, "solo", 502),
    (Fault("echo_key", status=500), False, "solo", 502),
    (Fault("echo_key", status=429), True, "solo", 429),
    (Fault("echo_key", status=500), True, "g", 200),           # falls over: the second target answers
    (Fault("echo_key", after=1), True, "solo", 200),           # in-band, after the stream began
]


@pytest.mark.parametrize(("step", "stream", "model", "status"), ECHOES,
                         ids=[f"{s.status}-{'stream' if st else 'plain'}-{m}{'-inband' if s.after else ''}"
                              for s, st, m, _ in ECHOES])
async def test_vendor_key_echoed_by_a_vendor_never_reaches_client_log_or_metrics(
        proxy, vendors, caplog, step, stream, model, status):
    caplog.set_level(logging.DEBUG)
    vendors[FIRST].control.push(step)
    vendors[SECOND].control.push(Reply())
    got, raw = await post(proxy, model, stream)
    assert got == status
    if step.after:
        assert b"[redacted]" in raw and raw.endswith(b"data: [DONE]\n\n")
    elif status != 200:
        message = orjson.loads(raw)["error"]["message"]
        assert "Bearer" not in message
    output = [raw.decode(errors="replace"), proxy.app[METRICS].render().decode()]
    output += [r.getMessage() for r in caplog.records] + [repr(r.__dict__) for r in caplog.records]
    for vendor in vendors:
        assert not [o for o in output if vendor.api_key in o], f"{vendor.kind}'s key leaked"
    vendors[SECOND].control.clear()


def test_bearer_looking_tokens_are_blanked_from_vendor_messages(vendors):
    from providers import REGISTRY
    from providers.base import ProviderSettings

    adapter = REGISTRY["openai"](ProviderSettings("x", "http://127.0.0.1", "configured-secret-1", {}))
    err = adapter.map_error(400, {}, orjson.dumps({"error": {
        "message": f"bad key {FOREIGN}; header was Bearer abc.def-ghi; ours configured-secret-1; "
                   "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", "code": "invalid_api_key"}}))
    message = err.error.message
    for secret in (FOREIGN, "abc.def-ghi", "configured-secret-1", "eyJhbGciOiJIUzI1NiJ9"):
        assert secret not in message
    assert message.count("[redacted]") == 4


def test_explain_shows_no_vendor_key(vendors, monkeypatch):
    from router.routes import parse
    from tests.fixtures_proxy import key_env

    env = {key_env(v.kind): v.api_key for v in vendors}
    table = parse({"providers": providers_for(vendors),
                   "models": {"g": {"targets": [{"provider": v.kind, "model": "m"} for v in vendors]}}}, environ=env)
    out = explain(table, {"model": "g", "prompt": "hi"})
    assert "cogito" in out
    for vendor in vendors:
        assert vendor.api_key not in out


@pytest.mark.parametrize("given", ["abc\n", "abc\r\nX-Evil: 1", "a" * 129, "tab\there", "nul\x00", "del\x7f", ""])
def test_request_id_with_control_characters_or_too_long_is_replaced(given):
    assert request_id(given) != given


def test_sane_request_id_is_kept():
    assert request_id("req-123_abc.def:ghi/jkl+mno=") == "req-123_abc.def:ghi/jkl+mno="


async def test_validation_error_names_its_code_in_the_access_log(proxy, caplog):
    caplog.set_level(logging.INFO, logger="router.access")
    status, raw = await post(proxy, "g", False, {"model": "g", "prompt": "hi", "max_tokens": "many"})
    assert status == 400
    lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "router.access"]
    assert [line["error"] for line in lines] == [orjson.loads(raw)["error"]["code"] or "invalid_request_error"]
    assert lines[0]["error"] is not None
