"""The proxy under test, on a real loopback socket, in front of the vendor stand-ins."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from aiohttp import web

from router.app import create_app
from router.routes import RouteTable, parse
from router.settings import ServeSettings


def key_env(kind: str) -> str:
    return f"ROUTER_TEST_{kind.upper()}_KEY"


def providers_for(vendors: Any) -> dict[str, Any]:
    """One provider entry per running stand-in, named after its kind."""
    return {v.kind: {"kind": v.kind, "base_url": v.url, "api_key_env": key_env(v.kind)} for v in vendors}


def single_target_models(vendors: Any, model: str = "m-1") -> dict[str, Any]:
    """A public model per vendor kind (`via-<kind>`) served by that vendor alone."""
    return {f"via-{v.kind}": {"targets": [{"provider": v.kind, "model": model}]} for v in vendors}


@dataclass
class RunningProxy:
    url: str
    app: web.Application
    table: RouteTable

    def client(self, **kw: Any) -> openai.AsyncOpenAI:
        """The official OpenAI SDK pointed at the proxy, with its own retries off."""
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=kw.pop("api_key", "unused"),
                                  max_retries=0, **kw)


StartProxy = Callable[..., Awaitable[RunningProxy]]


@pytest.fixture
async def start_proxy(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[StartProxy]:
    """`await start_proxy(doc, vendors=...)`: serve routes document `doc` on a free port."""
    runners: list[web.AppRunner] = []

    async def start(doc: dict[str, Any], vendors: Any = None, settings: ServeSettings | None = None,
                    config_path: str | None = None) -> RunningProxy:
        for v in vendors or ():
            monkeypatch.setenv(key_env(v.kind), v.api_key)
        table = parse(doc)
        app = create_app(settings or ServeSettings(config_path=config_path or "routes.yaml"), table,
                         watch=config_path is not None)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return RunningProxy(f"http://127.0.0.1:{port}", app, table)

    yield start
    for r in reversed(runners):
        await r.cleanup()
