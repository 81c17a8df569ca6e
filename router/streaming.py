"""Relay one upstream SSE stream to the client, committing only after its first event.

Until the first event has arrived nothing is written, so a target that fails early can
still fall over to the next one. After that the stream is the client's: an upstream
failure ends it with an OpenAI-shaped error event and `data: [DONE]`, never a silent
200 that just stops. If the client goes away, the upstream request is closed at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

import aiohttp
import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from providers.base import Adapter, Fill, bad_upstream_body, transport_error
from router.errors import UPSTREAM, RouterError
from router.exchange import Exchange
from router.metrics import Metrics
from router.normalize import Normalized
from router.routes import Target
from router.sse import DONE, encode, event_batches

log = logging.getLogger("router.stream")

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(slots=True)
class Relayed:
    """A stream the client received: when its first event came, and whether it broke off."""

    response: web.StreamResponse
    first_event_at: float
    broken: bool


async def first_events(adapter: Adapter, provider: str, resp: aiohttp.ClientResponse
                       ) -> tuple[AsyncIterator[list[bytes]], list[bytes], dict[str, Any]]:
    """The upstream's events as batches, its first batch, and that batch's first event parsed;
    a stream that fails before its first good event raises UpstreamError (nothing is sent yet)."""
    upstream = event_batches(resp.content).__aiter__()
    try:
        batch = await anext(upstream, None)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise transport_error(provider, exc) from None
    except (HttpProcessingError, ValueError):
        raise bad_upstream_body(provider, "a stream that could not be read") from None
    first = batch[0] if batch else None
    if first is None or first == b"[DONE]":
        raise bad_upstream_body(provider, "a stream with no events")
    obj = load_event(first)
    if obj is None:
        raise bad_upstream_body(provider, "a stream event that is not JSON")
    if "error" in obj:
        raise adapter.map_error(500, {}, first)
    if not isinstance(obj.get("choices"), list):
        raise bad_upstream_body(provider, "a first stream event without 'choices'")
    return upstream, batch or [], obj


async def relay_stream(request: web.Request, ex: Exchange, norm: Normalized, public: str, target: Target,
                       resp: aiohttp.ClientResponse, metrics: Metrics) -> Relayed:
    adapter = target.adapter
    provider = target.provider
    endpoint = norm.endpoint
    keep_usage = norm.include_usage
    upstream, batch, obj = await first_events(adapter, provider, resp)

    first_at = time.monotonic()
    ex.served = True
    response = web.StreamResponse(headers=SSE_HEADERS)
    ex.committed = True
    await response.prepare(request)
    ex.ttft_s = first_at - ex.started
    metrics.ttft.labels(public, provider).observe(ex.ttft_s)

    fill = Fill.new(endpoint)

    def shape(o: dict[str, Any]) -> bytes | None:
        adapter.openai_chunk(endpoint, o, fill)
        o["model"] = public
        o["provider"] = provider
        if "usage" in o:
            usage = o["usage"]
            if usage:
                ex.take_usage(usage)
            if not keep_usage:
                if not o.get("choices"):
                    return None
                del o["usage"]
        return encode(o)

    # From here on the stream is the client's: whatever happens upstream ends it with an
    # error event and [DONE], never an exception that would leave the client hanging.
    failure: RouterError | None = None
    done = False
    try:
        try:
            first_out = shape(obj)
            rest: list[bytes] = batch[1:]   # events that came in the same read
            while True:
                out = [first_out] if first_out else []
                first_out = None
                for data in rest:
                    if data == b"[DONE]":
                        done = True
                        break
                    obj = load_event(data)
                    if obj is None:
                        failure = broken_stream(provider, "sent a stream event that is not JSON",
                                                "upstream_bad_response")
                        break
                    if "error" in obj:
                        failure = adapter.map_error(500, {}, data).error
                        break
                    chunk = shape(obj)
                    if chunk:
                        out.append(chunk)
                if out:   # one write per upstream read, however many events it carried
                    await response.write(out[0] if len(out) == 1 else b"".join(out))
                if done or failure is not None:
                    break
                nxt = await anext(upstream, None)
                if nxt is None:
                    break
                rest = nxt
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            failure = broken_stream(provider, f"broke off ({type(exc).__name__})", "upstream_stream_interrupted")
        except Exception as exc:  # a malformed event, an over-long line: still the vendor's fault
            log.warning("unreadable stream from %s: %r", provider, exc, extra={"request_id": ex.request_id})
            failure = broken_stream(provider, "sent a stream the proxy could not read", "upstream_bad_response")
        if failure is None and not done:
            failure = broken_stream(provider, "ended without [DONE]", "upstream_stream_interrupted")
        if failure is not None:
            ex.status = failure.status
            ex.error_code = failure.code
            log.warning("stream from %s broke after commit: %s", provider, failure.message,
                        extra={"request_id": ex.request_id})
            await response.write(encode(failure.body()))
        await response.write(DONE)
        await response.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        ex.status = 499
        ex.error_code = "client_closed_request"
        resp.close()
    finally:
        ex.upstream_s += time.monotonic() - first_at
    return Relayed(response, first_at, failure is not None)


def broken_stream(provider: str, what: str, code: str) -> RouterError:
    return RouterError(502, f"The stream from provider '{provider}' {what}", type=UPSTREAM, code=code)


def load_event(data: bytes) -> dict[str, Any] | None:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None

