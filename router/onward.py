"""The targets after the one being tried, for a hedge or a resume to go on to.

`Proxy.serve` builds one `Onward` per candidate only when the model group turns resume or
hedging on, so the plain path builds nothing. It holds the serving target's grant, which a
hedge won by the second target, or a resume, hands over to the target that took over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from providers.failures import MAX_ERROR_BODY, stalled, transport_error
from router.attempts import Attempts
from router.bodies import read_body
from router.candidates import Candidate
from router.config import Hedge, Resume
from router.exchange import Exchange
from router.health import CLOSED, TargetHealth
from router.limits import LimitSpec
from router.normalize import Normalized
from router.state import TargetGrant
from router.streaming import Opened, open_stream
from router.table import Target
from router.watchdog import Watchdog
from router.upstream import Upstream, UpstreamResponse

NO_LIMITS = LimitSpec()


@dataclass(slots=True)
class Onward:
    proxy: Attempts
    ex: Exchange
    norm: Normalized
    rest: list[Candidate]            # the candidates after the one being tried, in order
    health: Mapping[str, TargetHealth] | None
    tokens: int                      # what a target reserves for this request
    grant: TargetGrant | None        # the serving target's
    resume: Resume | None
    hedge: Hedge | None

    async def reserve(self, target: Target) -> tuple[bool, TargetGrant | None]:
        """May `target` be sent this request, and its grant: as `serve` decides it, a target
        with limits or a circuit not closed holds a reservation (or is skipped)."""
        h = self.health.get(target.id) if self.health else None
        if target.limits is None and (h is None or h.state == CLOSED):
            return True, None
        grant = await self.proxy.state.reserve_target(target.id, target.limits or NO_LIMITS, self.tokens)
        if grant is None:
            return False, None
        if grant.probe:
            self.ex.probes.append(target.id)
        return True, grant

    def release(self, grant: TargetGrant | None, used: int | None = 0) -> None:
        """A grant given back: its request counts, its tokens settle to `used` (0: all refunded)."""
        if grant is not None:
            self.proxy.state.settle_soon(None, grant, used, 0.0)


async def open_events(upstream: Upstream, ex: Exchange, target: Target, endpoint: str,
                      payload: bytes, limit: float) -> tuple[UpstreamResponse, Opened]:
    """One streamed call up to its first event within `limit` seconds; UpstreamError otherwise,
    its connection closed (also when cancelled: a losing hedge hangs up at once)."""
    adapter = target.adapter
    loop = asyncio.get_running_loop()
    hard = loop.time() + limit
    headers = adapter.request_headers(ex.request_id)
    resp: UpstreamResponse | None = None
    try:
        try:
            async with Watchdog(loop, hard) as wd:
                resp = await upstream.post(adapter.urls[endpoint], payload, headers, min(target.connect_timeout_s, limit))
                if resp.status != 200:
                    raw = await read_body(resp, target.provider, wd, hard, target.idle_timeout_s, MAX_ERROR_BODY,
                                          cut_ok=True)
                    raise adapter.map_error(resp.status, resp.headers, raw)
                return resp, await open_stream(adapter, target.provider, resp)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            if resp is not None and isinstance(exc, asyncio.TimeoutError):
                raise stalled(target.provider) from None
            raise transport_error(target.provider, exc) from None
    except BaseException:
        if resp is not None:
            resp.close()
        raise


def first_event_limit(target: Target, deadline: float) -> float:
    """How long a streamed call may take to its first event: as `Proxy._attempt` allows."""
    return min(target.timeout_s, target.idle_timeout_s, max(0.0, deadline - time.monotonic()))


__all__ = ["Onward", "first_event_limit", "open_events"]
