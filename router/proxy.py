"""The dispatch loop over targets: the only place that knows the fallback order.

For each candidate target in order: translate the body (a target that cannot take it is
skipped), then call it under the retry policy; a retryable failure retries the same
target, a "not here" failure moves to the next one, a client error is answered at once.
One deadline and one attempt cap cover the whole request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from tenacity import RetryCallState

from providers.base import Fill, Unsupported
from providers.failures import (MAX_ERROR_BODY, Action, UpstreamError, bad_upstream_body, past_deadline, stalled,
                                transport_error)
from router.bodies import MAX_ANSWER_BODY, read_body
from router.candidates import Candidate
from router.errors import UPSTREAM, RouterError
from router.exchange import Exchange
from router.hedge import race
from router.health import CLOSED, TargetHealth
from router.limits import LimitSpec
from router.metrics import Metrics
from router.normalize import Normalized
from router.onward import Onward
from router.resume import Resumer, resumable
from router.retry import retrying
from router.split import payloads, split_attempt
from router.state import Grant, SharedState, TargetGrant
from router.streaming import open_stream, relay_stream
from router.table import Target
from router.watchdog import Watchdog
from router.upstream import Upstream, UpstreamResponse


NO_LIMITS = LimitSpec()
# Attempt outcomes that count against a target's health; a client's own error or a model
# the vendor does not carry says nothing about whether the vendor is up.
UNHEALTHY = frozenset({"timeout", "connect", "server_error", "rate_limited", "upstream_auth", "bad_response",
                       "stream_interrupted"})


class Proxy:
    """Sends one normalized request to its candidates; shared by every request of an app."""

    def __init__(self, upstream: Upstream, metrics: Metrics, state: SharedState) -> None:
        self.upstream = upstream
        self.metrics = metrics
        self.state = state

    async def serve(self, request: web.Request, ex: Exchange, norm: Normalized, candidates: list[Candidate],
                    health: Mapping[str, TargetHealth] | None = None, tokens: int = 0) -> web.StreamResponse:
        first = candidates[0].group
        deadline = time.monotonic() + first.deadline_s
        cap = first.max_attempts
        last: RouterError | None = None
        # Targets whose circuit kept them out; tried as a last resort before failing outright.
        last_resort: list[Candidate] = []
        queue = candidates
        for round_ in (0, 1):
            for i, cand in enumerate(queue):
                if ex.attempts >= cap or time.monotonic() >= deadline:
                    break
                target = cand.target
                more = i + 1 < len(queue) or (round_ == 0 and bool(last_resort))
                try:
                    # Translate before reserving anything: a refused field costs no quota or probe.
                    dropped: list[str] = []
                    payload = payloads(target.adapter, norm, target.model, dropped)
                    for name in dropped:
                        self.metrics.dropped_fields.labels(target.provider, name).inc()
                except Unsupported as exc:
                    # An upstream's own failure says more than "this one cannot take a field".
                    if last is None:
                        last = exc
                        ex.provider, ex.vendor_model = target.provider, target.model   # the one it names
                    self._leave(ex, target, "unsupported", more)
                    continue
                grant: TargetGrant | None = None
                h = health.get(target.id) if health and round_ == 0 else None
                if round_ == 0 and (target.limits is not None or (h is not None and h.state != CLOSED)):
                    grant = await self.state.reserve_target(target.id, target.limits or NO_LIMITS, tokens)
                    if grant is None:
                        if target.limits is None:
                            last_resort.append(cand)
                        self._leave(ex, target, "unavailable", more)
                        continue
                    if grant.probe:
                        ex.probes.append(target.id)
                # Resume and hedging go on to the targets after this one; off, nothing is built.
                group = cand.group
                onward = (Onward(self, ex, norm, queue[i + 1:], health if round_ == 0 else None, tokens, grant,
                                 group.resume, group.hedge)
                          if norm.stream and (group.resume or group.hedge) else None)
                try:
                    response = await self._try_target(request, ex, norm, cand, payload, deadline, cap, onward)
                    ex.target_grant = grant if onward is None else onward.grant
                    return response
                except UpstreamError as exc:
                    if exc.action is Action.RETURN:
                        raise exc.error from None
                    last, reason = exc.error, exc.reason
                finally:
                    if onward is not None:   # a hedge or resume handed this target's grant over
                        grant = onward.grant
                    if grant is not None and ex.target_grant is not grant:
                        # Abandoned (or the client left): its request counts, its tokens settle
                        # to what the vendor reported, or stay reserved if it answered unreported.
                        used = ex.prompt_tokens + ex.completion_tokens
                        self.state.settle_soon(None, grant, used or (None if ex.served else 0), 0.0)
                self._leave(ex, target, reason, more)
            if not last_resort:
                break
            queue, last_resort = last_resort, []
        if last is None:
            if ex.attempts == 0 and ex.fallbacks:
                last = RouterError(503, "Every provider for this model is over its quota or failing; "
                                   "retry shortly", type=UPSTREAM, code="no_provider_available",
                                   headers={"Retry-After": "1"})
            else:
                last = RouterError(504, "The request's deadline passed before any provider could answer",
                                   type=UPSTREAM, code="deadline_exceeded")
        raise last

    async def _try_target(self, request: web.Request, ex: Exchange, norm: Normalized, cand: Candidate,
                          payload: bytes | list[bytes], deadline: float, cap: int,
                          onward: Onward | None = None) -> web.StreamResponse:
        """One target under the retry policy; raises UpstreamError when it cannot serve."""
        target = cand.target
        ex.model, ex.provider, ex.vendor_model = cand.public, target.provider, target.model
        ex.price = target.price
        # Fast path: most first attempts succeed, so the retry machinery is only built
        # once one has failed with something worth retrying.
        try:
            return await self._attempt(request, ex, norm, cand, payload, deadline, onward)
        except UpstreamError as exc:
            if exc.action is not Action.RETRY:
                raise
            failed: UpstreamError | None = exc
        async for attempt in retrying(cand.group.retry, deadline, lambda: ex.attempts < cap,
                                      self._on_retry(ex, target)):
            with attempt:
                if failed is not None:
                    # Replay the first failure so the policy counts and waits for it.
                    replay, failed = failed, None
                    raise replay
                return await self._attempt(request, ex, norm, cand, payload, deadline, onward)
        raise AssertionError("unreachable: tenacity reraises the last failure")

    def settle(self, ex: Exchange, grant: Grant) -> None:
        """After the answer (a stream's end, or its breaking off): charge real usage, free the
        concurrency slot, record healthy attempts, free the slot of a probe that reached no
        verdict. Sent without waiting: on Redis it rides along with the next batch."""
        used = ex.used_tokens()   # every part of a resumed stream
        if used:
            actual: int | None = used
        else:
            actual = None if ex.served else 0   # served without usage: keep the reservation
        state = self.state
        for target_id, latency in ex.healthy:
            state.record_soon(target_id, True, latency, ex.stream, target_id in ex.probes)
        for target_id in ex.probes:
            if target_id not in ex.judged:
                state.record_soon(target_id, None, None, ex.stream, True)
        state.settle_soon(grant, ex.target_grant, actual, ex.cost())

    def _leave(self, ex: Exchange, target: Target, reason: str, more: bool) -> None:
        ex.fallbacks.append(f"{target.provider}:{reason}")
        if more:
            self.metrics.fallbacks.labels(target.provider, reason).inc()

    def _on_retry(self, ex: Exchange, target: Target):
        def before_sleep(rs: RetryCallState) -> None:
            exc = rs.outcome.exception() if rs.outcome else None
            reason = exc.reason if isinstance(exc, UpstreamError) else "error"
            self.metrics.retries.labels(target.provider, reason).inc()
            ex.upstream_s += rs.upcoming_sleep
        return before_sleep

    async def _attempt(self, request: web.Request, ex: Exchange, norm: Normalized, cand: Candidate,
                       payload: bytes | list[bytes], deadline: float, onward: Onward | None = None
                       ) -> web.StreamResponse:
        target = cand.target
        adapter = target.adapter
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            # aiohttp reads a timeout <= 0 as none at all: past the deadline nothing is sent.
            raise past_deadline()
        ex.attempts += 1
        if isinstance(payload, list):   # a prompt list split for a vendor that takes one prompt per call
            return await split_attempt(self, request, ex, norm, cand, payload, deadline)
        loop = asyncio.get_running_loop()
        # One watchdog holds the attempt's limit until its answer starts: the whole answer of a
        # non-stream request, a stream's first event. Trickled headers and keep-alive comments
        # do not move it, and it never passes the request's deadline.
        limit = min(target.timeout_s, remaining, target.idle_timeout_s if norm.stream else remaining)
        hard = loop.time() + limit
        headers = adapter.request_headers(ex.request_id)
        started = time.monotonic()
        outcome: str | None = None   # stays None unless the attempt completes: no health verdict
        ended: float | None = None
        resp: UpstreamResponse | None = None
        try:
            if onward is not None and onward.hedge is not None and norm.stream:
                # The first event from this target or, once it is late, from the next one.
                cand, resp, opened, started = await race(onward, cand, payload, limit)
                target = cand.target
                ex.model, ex.provider, ex.vendor_model, ex.price = cand.public, target.provider, target.model, target.price
            else:
                try:
                    async with Watchdog(loop, hard) as wd:
                        resp = await self.upstream.post(adapter.urls[norm.endpoint], payload, headers,
                                                        min(target.connect_timeout_s, limit))
                        if resp.status != 200:
                            raw = await read_body(resp, target.provider, wd, hard, target.idle_timeout_s,
                                                  MAX_ERROR_BODY, cut_ok=True)
                            raise adapter.map_error(resp.status, resp.headers, raw)
                        if norm.stream:
                            opened = await open_stream(adapter, target.provider, resp)
                        else:
                            try:
                                raw = await read_body(resp, target.provider, wd, hard, target.idle_timeout_s,
                                                      MAX_ANSWER_BODY)
                            except asyncio.CancelledError:
                                # The vendor answered and will bill it: keep what was reserved for it.
                                ex.served = not wd.expired
                                raise
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    if resp is not None and isinstance(exc, asyncio.TimeoutError):
                        # The answer began and then went silent: this target is stuck, try the next.
                        raise stalled(target.provider) from None
                    raise transport_error(target.provider, exc) from None
            if norm.stream:
                resumer = (Resumer(onward, target) if onward is not None and onward.resume is not None
                           and resumable(norm.endpoint, norm.body) else None)
                relayed = await relay_stream(request, ex, norm, cand.public, target, resp, self.metrics, opened,
                                             resumer)
                # An attempt's stream latency is its time to first event; a client that left
                # before the end leaves no verdict on the upstream.
                ended = relayed.first_event_at
                if not relayed.client_gone:
                    outcome = "stream_interrupted" if relayed.broken else "ok"
                return relayed.response
            data = self.parse_answer(target.provider, raw)
            adapter.openai_response(norm.endpoint, data, Fill.new(norm.endpoint))
            data["model"] = cand.public
            data["provider"] = target.provider
            ex.take_usage(data.get("usage"))
            ex.served = True
            outcome = "ok"
            return web.Response(body=orjson.dumps(data), content_type="application/json")
        except UpstreamError as err:
            outcome = err.reason
            raise
        finally:
            if resp is not None:
                resp.release()
            self.count_attempt(target, outcome, started, ex, ended)

    async def open_upstream(self, ex: Exchange, target: Target, norm: Normalized, payload: bytes,
                            deadline: float) -> tuple[UpstreamResponse, float]:
        """One upstream call that answered 200, and when it started; a failed one is counted and raised."""
        adapter = target.adapter
        remaining = deadline - time.monotonic()
        connect = min(target.connect_timeout_s, remaining)
        headers = adapter.request_headers(ex.request_id)
        started = time.monotonic()
        try:
            if norm.stream:   # each wait for the next bytes is bounded; the stream as a whole is not
                resp = await self.upstream.post(adapter.urls[norm.endpoint], payload, headers, connect,
                                                read_s=min(target.timeout_s, remaining))
            else:
                resp = await self.upstream.post(adapter.urls[norm.endpoint], payload, headers, connect,
                                                total_s=min(target.timeout_s, remaining))
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            err = transport_error(target.provider, exc)
            self.count_attempt(target, err.reason, started, ex)
            raise err from None
        if resp.status != 200:
            try:
                raw = await resp.read()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                raw = b""   # the status says enough; a cut-off error body must not hide it
            finally:
                resp.release()
            err = adapter.map_error(resp.status, resp.headers, raw)
            self.count_attempt(target, err.reason, started, ex)
            raise err
        return resp, started

    @classmethod
    async def read_answer(cls, provider: str, resp: UpstreamResponse) -> dict[str, Any]:
        """A whole answer's JSON, read to the end; see parse_answer."""
        try:
            raw = await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise transport_error(provider, exc) from None
        return cls.parse_answer(provider, raw)

    @staticmethod
    def parse_answer(provider: str, raw: bytes) -> dict[str, Any]:
        """A non-JSON or choice-less body is the vendor's failure."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise bad_upstream_body(provider, "a body that is not JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise bad_upstream_body(provider, "an answer without 'choices'")
        return data

    def count_attempt(self, target: Target, outcome: str | None, started: float, ex: Exchange,
                      ended: float | None = None) -> None:
        elapsed = (ended or time.monotonic()) - started
        ex.upstream_s += elapsed
        if outcome is None:
            # Cancelled (the client left) or a bug: the upstream earned no verdict either way.
            self.metrics.attempt_series(target.provider, "aborted")[0](1)
            return
        attempts, duration = self.metrics.attempt_series(target.provider, outcome)
        attempts(1)
        duration(elapsed)
        if outcome == "ok":
            ex.healthy.append((target.id, elapsed))   # recorded when the request settles
            ex.judged.add(target.id)
        elif outcome in UNHEALTHY:
            self.state.record_soon(target.id, False, None, ex.stream, target.id in ex.probes)
            ex.judged.add(target.id)
