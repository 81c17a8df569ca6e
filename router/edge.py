"""The edge of every request: its Exchange, its error encoding, its headers, its record.

One middleware wraps every handler so that whatever goes wrong, the client gets OpenAI's
error shape and the router headers (a stream, already sent when its handler returns, gets
them from the relay just before its headers go out: `Exchange.stamp`; a whole answer is sent
by its handler with `answer`). When a generation request ends, after its answer is out, it
is counted in the metrics and written as one JSON log line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

from aiohttp import web

from router.access_log import ACCESS_LOG, AccessLog
from router.drain import DRAIN
from router.errors import SERVER, RouterError, status_error
from router.exchange import EXCHANGE, Exchange, request_id
from router.metrics import Metrics

log = logging.getLogger("router")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
METRICS = web.AppKey("metrics", Metrics)

_HTTP_MESSAGES = {
    404: ("Unknown path {path}; this proxy serves POST /v1/completions, POST /v1/chat/completions, "
          "GET /v1/models and GET /v1/models/{{model}} (GET /openapi.json describes them)."),
    405: "Method {method} is not allowed on {path}.",
    413: "The request body is larger than this proxy accepts.",
}


def error_response(err: RouterError) -> web.Response:
    return web.Response(status=err.status, body=err.encode(), content_type="application/json",
                        headers=err.headers or None)


@web.middleware
async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
    ex = Exchange(request_id(request.headers.get("X-Request-Id")))
    request[EXCHANGE] = ex
    app = request.app   # a property chain of its own on each use
    metrics = app[METRICS]
    metrics.in_flight_add(1)
    live = app[DRAIN].live
    live.add(ex)
    try:
        response = await handler(request)
        _seal(ex, response)
        return response
    except RouterError as err:
        return _fail(ex, err)
    except web.HTTPException as exc:
        template = _HTTP_MESSAGES.get(exc.status, exc.reason)
        http_error = status_error(exc.status, template.format(path=request.path, method=request.method))
        if "Allow" in exc.headers:
            http_error.headers["Allow"] = exc.headers["Allow"]
        return _fail(ex, http_error)
    except asyncio.CancelledError:
        ex.status = 499
        ex.error_code = "client_closed_request"
        raise
    except Exception:
        log.exception("unexpected error serving %s", request.path, extra={"request_id": ex.request_id})
        if ex.committed:
            raise   # a stream already under way: aiohttp closes the connection, the client sees it end
        return _fail(ex, RouterError(500, "The proxy failed unexpectedly; the request id is in x-request-id.",
                                     type=SERVER, code="internal_error"))
    finally:
        live.discard(ex)
        metrics.in_flight_add(-1)
        if not live:
            app[DRAIN].idle()   # first: Redis runs the settle while the record is made
        if ex.endpoint:
            access_log = app[ACCESS_LOG]
            record(metrics, access_log, ex)
            if not live:
                access_log.flush()


async def answer(request: web.Request, ex: Exchange, response: web.StreamResponse) -> None:
    """Sends a whole answer now, so the client has it before the request's bookkeeping (its
    settle, metrics and access log line) runs; a stream is already sent."""
    if response.prepared:
        return
    _seal(ex, response)
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        pass   # the client left; aiohttp's own finish meets the same and closes the connection


def _seal(ex: Exchange, response: web.StreamResponse) -> None:
    """The request's status from its response, unless set already; the router's headers on a
    response not yet sent."""
    if not ex.status:
        ex.status = response.status
    if not response.prepared:
        ex.stamp(response)


def _fail(ex: Exchange, err: RouterError) -> web.Response:
    ex.status = err.status
    ex.error_code = err.code or err.type   # the access log names every error, code or not
    response = error_response(err)
    ex.stamp(response)
    return response


def record(metrics: Metrics, access_log: AccessLog, ex: Exchange) -> None:
    """Metrics and the access log line of one finished generation request."""
    total = time.monotonic() - ex.started
    provider = ex.provider or "none"
    cost = ex.cost()
    m = metrics.request_series(ex.model, provider, ex.key, ex.endpoint, ex.stream, ex.status)
    m.requests(1)
    m.duration(total)
    m.overhead(max(0.0, total - ex.upstream_s))
    if ex.prompt_tokens or ex.completion_tokens:
        m.prompt_tokens(ex.prompt_tokens)
        m.completion_tokens(ex.completion_tokens)
        if ex.cached_tokens:
            m.cached_tokens(ex.cached_tokens)
    own_cost = cost - sum(p.cost() for p in ex.parts) if ex.parts else cost
    if own_cost > 0:
        m.spend(own_cost)
    for part in ex.parts:   # a resumed stream: each part's tokens and spend on the provider that made them
        _count_part(metrics, ex, part.provider or "none", part.prompt_tokens, part.completion_tokens,
                    part.cached_tokens, part.cost())
    if access_log.enabled:
        line = {
            "ts": round(time.time(), 3), "request_id": ex.request_id, "key": ex.key,
            "endpoint": ex.endpoint, "stream": ex.stream, "model": ex.model, "provider": ex.provider or None,
            "vendor_model": ex.vendor_model or None, "attempts": ex.attempts, "fallbacks": ex.fallbacks,
            "status": ex.status, "error": ex.error_code, "latency_ms": round(total * 1000, 2),
            "ttft_ms": round(ex.ttft_s * 1000, 2) if ex.ttft_s is not None else None,
            "prompt_tokens": ex.prompt_tokens, "completion_tokens": ex.completion_tokens,
            "cached_tokens": ex.cached_tokens, "cost_usd": round(cost, 8),
        }
        if ex.parts:   # the token fields above are then the whole stream's
            line.update(ex.usage_total())
            del line["total_tokens"]
            line["cached_tokens"] = ex.cached_tokens + sum(p.cached_tokens for p in ex.parts)
            line["resumes"] = ex.resumes
            line["parts"] = [{"provider": p.provider, "prompt_tokens": p.prompt_tokens,
                              "completion_tokens": p.completion_tokens} for p in ex.parts]
        if ex.hedge:
            line["hedge_won_by"] = ex.hedge
        if ex.prompt is not None:
            line["prompt"] = ex.prompt
        access_log.write(line)


def _count_part(metrics: Metrics, ex: Exchange, provider: str, prompt: int, completion: int, cached: int,
                cost: float) -> None:
    if prompt or completion:
        metrics.tokens.labels(ex.model, provider, ex.key, "prompt").inc(prompt)
        metrics.tokens.labels(ex.model, provider, ex.key, "completion").inc(completion)
        if cached:
            metrics.tokens.labels(ex.model, provider, ex.key, "cached").inc(cached)
    if cost > 0:
        metrics.spend.labels(ex.key, ex.model, provider).inc(cost)
