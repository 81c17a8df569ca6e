"""The `vendors` fixture: one stand-in per vendor kind on a real loopback socket, held to its spec.

Each stand-in sits behind a middleware that checks every request body the proxy sends against
the vendor's request schema, and every JSON body and SSE chunk the stand-in answers with
against the vendor's response schema. A violation either way fails the test at teardown, so
a test passing against the fakes means the proxy spoke the vendors' real contracts.
A test that provokes violations on purpose asserts on `.violations` and then clears it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from providers.standins import EVENT_TAP, STANDIN_KINDS, StandinControl
from providers.standins.run import RunningStandin, start_standin
from tests.fakes.contract import validate_request, validate_response


def api_key_for(kind: str) -> str:
    """The key each stand-in demands (as if from the vendor's API-key env var)."""
    return f"test-key-{kind}"


@dataclass
class Vendor:
    """One running stand-in: point the proxy's base_url at `url` with `api_key`."""

    kind: str
    url: str  # base_url for the proxy (root, root+"/api/v1" for interactive, root+"/v1" for openai)
    root: str  # http://127.0.0.1:<port>
    control: StandinControl
    api_key: str
    violations: list[str] = field(default_factory=list)
    running: RunningStandin | None = field(default=None, repr=False)


class Vendors:
    """All stand-ins of a test, by kind: `vendors.poolside` or `vendors["poolside"]`."""

    def __init__(self, by_kind: dict[str, Vendor]) -> None:
        self._by_kind = by_kind

    def __getitem__(self, kind: str) -> Vendor:
        return self._by_kind[kind]

    def __getattr__(self, kind: str) -> Vendor:
        try:
            return self.__dict__["_by_kind"][kind]
        except KeyError:
            raise AttributeError(kind) from None

    def __iter__(self) -> Iterator[Vendor]:
        return iter(self._by_kind.values())

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self._by_kind)

    def violations(self) -> list[str]:
        return [v for vendor in self for v in vendor.violations]


def contract_middleware(kind: str, violations: list[str]) -> Any:
    """Record every way a request to, or a response from, stand-in `kind` breaks its spec."""

    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path
        raw = await request.read()  # cached: the handler can read it again
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            violations.append(f"{kind} request to {path}: body is not JSON: {raw[:100]!r}")
        else:
            violations.extend(validate_request(kind, path, body))

        def on_event(payload: dict[str, Any]) -> None:
            violations.extend(validate_response(kind, path, payload, chunk=True))

        request[EVENT_TAP] = on_event
        resp = await handler(request)
        if isinstance(resp, web.Response) and isinstance(resp.body, bytes) and resp.content_type.endswith("json"):
            try:
                answer = orjson.loads(resp.body)
            except orjson.JSONDecodeError:
                violations.append(f"{kind} answered {path} with invalid JSON: {resp.body[:100]!r}")
            else:
                violations.extend(validate_response(kind, path, answer, status=resp.status))
        return resp

    return check


async def start_vendor(kind: str, api_key: str | None = None) -> Vendor:
    """Start stand-in `kind` behind the contract middleware (a plain, non-demo control)."""
    key = api_key or api_key_for(kind)
    violations: list[str] = []
    running = await start_standin(
        kind, control=StandinControl(), api_key=key, middlewares=[contract_middleware(kind, violations)]
    )
    return Vendor(kind, running.url, running.root, running.control, key, violations, running)


@pytest.fixture
async def vendors() -> AsyncIterator[Vendors]:
    """One contract-checked stand-in per vendor kind; fails the test on any contract violation."""
    started: dict[str, Vendor] = {}
    try:
        for kind in STANDIN_KINDS:
            started[kind] = await start_vendor(kind)
        yield Vendors(started)
    finally:
        for vendor in started.values():
            if vendor.running is not None:
                await vendor.running.close()
    found = [v for vendor in started.values() for v in vendor.violations]
    if found:
        pytest.fail("vendor contract violations:\n  " + "\n  ".join(found), pytrace=False)


async def counting_standin(kind: str, control: StandinControl) -> tuple[RunningStandin, list[int]]:
    """A stand-in (no key) and the list that grows by one per stream event it sends: how a test
    sees whether an upstream stream goes on after the client left."""
    sent: list[int] = []

    @web.middleware
    async def count_events(request: web.Request, handler: Any) -> web.StreamResponse:
        request[EVENT_TAP] = lambda payload: sent.append(1)
        return await handler(request)

    return await start_standin(kind, control=control, api_key=None, middlewares=[count_events]), sent
