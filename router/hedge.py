"""Hedged first tokens: a stream whose first event is late is also started on the next target.

When the serving target has sent no first event within the group's threshold (a fixed
`after_ms`, or `factor` times its time-to-first-token EWMA from the health scores, standing
in for its recent p95), the same request goes to the next usable target as well. Whichever
sends its first event first wins; the other's task is cancelled at once, which closes its
upstream connection, and its token reservation is returned. Nothing has been written to the
client yet, so the loser leaves no trace in the stream. Both calls may bill their prompt.
"""

from __future__ import annotations

import asyncio
import time

from providers.base import Unsupported
from providers.failures import UpstreamError
from router.candidates import Candidate
from router.onward import Onward, open_events
from router.split import payloads
from router.state import TargetGrant
from router.strategies import usable
from router.streaming import Opened
from router.upstream import UpstreamResponse

Leg = tuple[Candidate, UpstreamResponse, Opened, float]


async def race(onward: Onward, cand: Candidate, payload: bytes, limit: float) -> Leg:
    """The first of `cand` and (once it is late) a hedge target to send a first event: its
    candidate, response, first events and start time. Raises `cand`'s UpstreamError when both fail."""
    assert onward.hedge is not None
    proxy, ex, norm = onward.proxy, onward.ex, onward.norm
    h = onward.health.get(cand.target.id) if onward.health else None
    threshold = onward.hedge.threshold_s(h.ttft_ewma if h is not None else None)
    started = time.monotonic()
    first: asyncio.Future[tuple[UpstreamResponse, Opened]] = asyncio.ensure_future(
        open_events(proxy.upstream, ex, cand.target, norm.endpoint, payload, limit))
    tasks: dict[asyncio.Future[tuple[UpstreamResponse, Opened]], tuple[Candidate, float, TargetGrant | None]] = {
        first: (cand, started, onward.grant)}
    try:
        done, _ = await asyncio.wait({first}, timeout=min(threshold, limit))
        if done:
            resp, opened = first.result()
            return cand, resp, opened, started
        spare = await _spare(onward, cand)
        if spare is None:
            resp, opened = await first
            return cand, resp, opened, started
        other, other_payload, grant = spare
        ex.attempts += 1
        proxy.metrics.hedges_started.labels(cand.public, other.target.provider).inc()
        second = asyncio.ensure_future(open_events(proxy.upstream, ex, other.target, norm.endpoint, other_payload,
                                                   limit - (time.monotonic() - started)))
        tasks[second] = (other, time.monotonic(), grant)
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in (t for t in (first, second) if t in done):
                if task.exception() is None:
                    return _won(onward, tasks, task)
        return _won(onward, tasks, first)   # both failed: raises the first target's error
    except asyncio.CancelledError:
        # The client left mid-race: the hedge's leg is given back here, the first target's by serve.
        for task, (other, other_started, grant) in list(tasks.items())[1:]:
            task.cancel()
            onward.release(grant)
            proxy.count_attempt(other.target, None, other_started, ex)
        raise
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _won(onward: Onward, tasks: dict, winner: asyncio.Future) -> Leg:
    """The winner's leg; every other leg closed, counted (no health verdict when cut short) and
    its reservation returned. With no winner (`winner` failed too) its error is raised, and
    its attempt is left to Proxy._attempt to count."""
    proxy, ex = onward.proxy, onward.ex
    failed = winner.exception() is not None
    for task, (other, other_started, other_grant) in tasks.items():
        if task is winner:
            continue
        err = None
        if not task.done():
            task.cancel()   # closes its connection: open_events hangs up when cancelled
        elif not task.cancelled():
            err = task.exception()
            if err is None:
                task.result()[0].close()   # it answered as well, a moment too late
        proxy.count_attempt(other.target, err.reason if isinstance(err, UpstreamError) else None, other_started, ex)
        if not failed:
            proxy.metrics.hedge_wasted_tokens.labels(other.target.provider).inc(onward.norm.prompt_tokens)
        onward.release(other_grant)
    if failed:
        raise winner.exception()   # type: ignore[misc]
    cand, started, grant = tasks[winner]
    first = next(iter(tasks))
    side = "first" if winner is first else "hedge"
    ex.hedge = side
    proxy.metrics.hedges_won.labels(tasks[first][0].public, cand.target.provider, side).inc()
    onward.grant = grant
    resp, opened = winner.result()
    return cand, resp, opened, started


async def _spare(onward: Onward, cand: Candidate) -> tuple[Candidate, bytes, TargetGrant | None] | None:
    """The next target that can take this request whole in one call, and its grant."""
    for other in onward.rest:
        target = other.target
        if target.id == cand.target.id or not usable(target.id, onward.health or {}):
            continue
        try:
            payload = payloads(target.adapter, onward.norm, target.model, [])
        except Unsupported:
            continue
        if isinstance(payload, list):
            continue
        ok, grant = await onward.reserve(target)
        if ok:
            return other, payload, grant
    return None
