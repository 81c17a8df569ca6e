"""`router demo`: the four vendors' stand-ins on loopback and the proxy in front of them.

Nothing to configure and nothing leaves the machine: it is the quickest way to see the
routing, the fallbacks and the one OpenAI shape, with real sockets and real dialects.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web

from providers.standins import base_path, create_standin_app
from router.app import create_app
from router.routes import parse
from router.settings import ServeSettings

log = logging.getLogger("router.demo")

VENDORS = ("cogito", "poolside", "nebius", "interactive")

_ASK = [{"role": "user", "content": "Hello"}]
_WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
_CITY = {"type": "json_schema", "json_schema": {"name": "city", "schema": {
    "type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"]}}}
# What the demo suggests trying, as (path, body, streamed): a chat, a fallback, a tool call
# and a JSON answer (kimi's first target, Cogito, takes tools and response_format).
EXAMPLES: list[tuple[str, dict[str, Any], bool]] = [
    ("/v1/chat/completions", {"model": "kimi", "messages": _ASK}, False),
    ("/v1/completions", {"model": "fallback-demo", "prompt": "Say hi", "stream": True}, True),
    ("/v1/chat/completions", {"model": "kimi", "messages": [
        {"role": "user", "content": "Weather in Paris?"}], "tools": [_WEATHER]}, False),
    ("/v1/chat/completions", {"model": "kimi", "messages": [
        {"role": "user", "content": "Name a city"}], "response_format": _CITY}, False),
]


def example_commands(base: str) -> str:
    """The EXAMPLES as curl commands against `base`, as the demo prints them."""
    return "\n".join(
        f"  curl -s{'N' if streamed else ''} {base}{path} -H 'Content-Type: application/json' \\\n"
        f"    -d '{json.dumps(body)}'"
        for path, body, streamed in EXAMPLES)


def demo_routes(urls: dict[str, str]) -> dict[str, Any]:
    """The embedded routes document; `urls` maps a vendor kind to its stand-in base URL."""
    providers = {kind: {"kind": kind, "base_url": urls[kind]} for kind in VENDORS}
    price = {"input": 0.5, "output": 1.5}
    return {
        "providers": providers,
        "models": {
            "kimi": {"targets": [
                {"provider": "cogito", "model": "moonshotai/kimi-k2.6:appliedcompute", "price": price},
                {"provider": "nebius", "model": "moonshotai/Kimi-K2-Instruct", "price": price},
            ]},
            "malibu": {"targets": [{"provider": "poolside", "model": "poolside/malibu", "price": price}]},
            "llama": {"strategy": "cost", "targets": [
                {"provider": "nebius", "model": "meta-llama/Llama-3.3-70B-Instruct",
                 "price": {"input": 0.13, "output": 0.4}},
                {"provider": "interactive", "model": "meta-llama/llama-3.3-70b-instruct",
                 "price": {"input": 0.2, "output": 0.6}},
            ]},
            # The first target does not exist at the vendor: watch the proxy fall over.
            "fallback-demo": {"targets": [
                {"provider": "cogito", "model": "missing-model", "price": price},
                {"provider": "interactive", "model": "openai/gpt-oss-120b", "price": price},
            ]},
        },
    }


async def run_demo(host: str, port: int, *, ready: asyncio.Event | None = None) -> None:
    runners: list[web.AppRunner] = []
    urls: dict[str, str] = {}
    try:
        for kind in VENDORS:
            runner = web.AppRunner(create_standin_app(kind), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            runners.append(runner)
            vport = runner.addresses[0][1]
            urls[kind] = f"http://127.0.0.1:{vport}{base_path(kind)}"
        table = parse(demo_routes(urls), "demo routes")
        app = create_app(ServeSettings(host=host, port=port), table)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        runners.append(runner)
        base = f"http://{host}:{port}"
        log.warning("demo: no client keys configured, the proxy is open to anyone who can reach %s", base)
        print(f"""
router demo: the proxy is on {base}, in front of local stand-ins of {', '.join(VENDORS)}.
Models: {', '.join(table.groups)}.  Try a chat, a fallback, a tool call and a JSON answer:

{example_commands(base)}
  curl -s {base}/v1/models;  curl -s {base}/metrics | grep router_spend

Ctrl-C stops it.
""", flush=True)
        if ready is not None:
            ready.set()
        await asyncio.Event().wait()
    finally:
        for r in reversed(runners):
            await r.cleanup()
