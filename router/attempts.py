"""What the attempt helpers (onward, hedge, resume, split) use of the Proxy that calls them.

A Protocol, so that those modules need not import router.proxy, which imports them:
router.proxy.Proxy is the one implementation.
"""

from __future__ import annotations

from typing import Any, Protocol

from router.exchange import Exchange
from router.metrics import Metrics
from router.normalize import Normalized
from router.state import SharedState
from router.table import Target
from router.upstream import Upstream, UpstreamResponse


class Attempts(Protocol):
    upstream: Upstream
    metrics: Metrics
    state: SharedState

    async def open_upstream(self, ex: Exchange, target: Target, norm: Normalized, payload: bytes,
                            deadline: float) -> tuple[UpstreamResponse, float]: ...

    async def read_answer(self, provider: str, resp: UpstreamResponse) -> dict[str, Any]: ...

    def count_attempt(self, target: Target, outcome: str | None, started: float, ex: Exchange,
                      ended: float | None = None) -> None: ...
