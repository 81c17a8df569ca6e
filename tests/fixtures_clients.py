"""`demo_proxy`: the proxy serving `router demo`'s own routes, in front of the contract-checked
stand-ins, so client tests (and the README's snippets) use the model names a user of the
demo sees: kimi (Cogito, then Nebius), malibu (Poolside), llama (Nebius or Interactive by
cost), fallback-demo (a missing Cogito model, then Interactive)."""

from __future__ import annotations

from typing import Any

import pytest

from router.demo import demo_routes
from tests.fixtures_proxy import RunningProxy, StartProxy, key_env


@pytest.fixture
async def demo_proxy(vendors: Any, start_proxy: StartProxy) -> RunningProxy:
    doc = demo_routes({v.kind: v.url for v in vendors})
    for provider in doc["providers"].values():
        provider["api_key_env"] = key_env(provider["kind"])
    return await start_proxy(doc, vendors=vendors)
