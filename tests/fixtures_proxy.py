"""The proxy under test, on a real loopback socket, in front of the vendor stand-ins.

Every answer the official SDK gets from it (`RunningProxy.client()`) is held to OpenAI's own
response schemas (tests/fakes/openai_contract.py); a violation fails the test at teardown, as
the vendor-side contract does. A test that provokes one on purpose clears `.violations`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
import pytest
from aiohttp import web

from router.app import create_app
from router.routes import RouteTable, parse
from router.settings import ServeSettings
from tests.fakes.openai_contract import CheckedTransport


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
    violations: list[str] = field(default_factory=list)

    def client(self, **kw: Any) -> openai.AsyncOpenAI:
        """The official OpenAI SDK pointed at the proxy, with its own retries off; every answer
        it receives is checked against OpenAI's schemas."""
        http = httpx2.AsyncClient(transport=CheckedTransport(self.violations))
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=kw.pop("api_key", "unused"),
                                  max_retries=0, http_client=http, **kw)


StartProxy = Callable[..., Awaitable[RunningProxy]]


@pytest.fixture
async def start_proxy(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[StartProxy]:
    """`await start_proxy(doc, vendors=...)`: serve routes document `doc` on a free port."""
    runners: list[web.AppRunner] = []
    started: list[RunningProxy] = []

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
        running = RunningProxy(f"http://127.0.0.1:{port}", app, table)
        started.append(running)
        return running

    yield start
    for r in reversed(runners):
        await r.cleanup()
    found = [v for p in started for v in p.violations]
    if found:
        pytest.fail("answers that break OpenAI's schemas:\n  " + "\n  ".join(found), pytrace=False)
