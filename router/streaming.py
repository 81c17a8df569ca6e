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
from router.watchdog import Watchdog

log = logging.getLogger("router.stream")

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# A whole non-stream answer larger than this is not an answer the proxy will hold.
MAX_ANSWER_BODY = 64 * 1024 * 1024
# What a stream may hold in the client's socket buffer before a write waits for the client;
# with aiohttp's own 64 KiB write batch and the upstream reader's 128 KiB, a client that reads
# slowly costs at most about 256 KiB per stream, plus the one event being read (MAX_EVENT_BYTES).
CLIENT_BUFFER_BYTES = 64 * 1024


@dataclass(slots=True)
class Relayed:
    """A stream the client received: when its first event came, whether it broke off, and
    whether the client left (or stopped reading) before its end."""

    response: web.StreamResponse
    first_event_at: float
    broken: bool
    client_gone: bool


@dataclass(slots=True)
class Opened:
    """A stream whose first event arrived: nothing has been written to the client yet."""

    upstream: AsyncIterator[list[bytes]]
    batch: list[bytes]
    first: dict[str, Any]


async def read_body(resp: aiohttp.ClientResponse, provider: str, wd: Watchdog, hard: float, idle: float,
                    cap: int, cut_ok: bool = False) -> bytes:
    """A whole body under `wd`: silence longer than `idle` between reads (or passing `hard`)
    ends it. Past `cap` bytes it is refused, or with `cut_ok` (an error body, whose status
    says enough) cut short, as is an error body the connection cuts off."""
    loop = wd.loop
    wd.rearm(min(hard, loop.time() + idle))
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in resp.content.iter_any():
            wd.when = min(hard, loop.time() + idle)
            size += len(chunk)
            if size > cap:
                if not cut_ok:
                    raise bad_upstream_body(provider, f"an answer over {cap} bytes")
                chunks.append(chunk[:len(chunk) - (size - cap)])
                resp.close()   # the rest is not wanted: do not leave it on a pooled connection
                break
            chunks.append(chunk)
    except aiohttp.ClientError:
        if not cut_ok:
            raise
    return b"".join(chunks)


async def open_stream(adapter: Adapter, provider: str, resp: aiohttp.ClientResponse) -> Opened:
    """Wait for a stream's first event and check it; raises UpstreamError (or the transport's
    error) so the caller can still fall over, since nothing went to the client yet."""
    upstream = event_batches(resp.content).__aiter__()
    try:
        batch = await anext(upstream, None)
    except (HttpProcessingError, ValueError):
        raise bad_upstream_body(provider, "a stream that could not be read") from None
    if not batch or batch[0] == b"[DONE]":
        raise bad_upstream_body(provider, "a stream with no events")
    first = batch[0]
    obj = load_event(first)
    if obj is None:
        raise bad_upstream_body(provider, "a stream event that is not JSON")
    if "error" in obj:
        raise adapter.map_error(500, {}, first)
    if not isinstance(obj.get("choices"), list):
        raise bad_upstream_body(provider, "a first stream event without 'choices'")
    return Opened(upstream, batch, obj)


async def first_events(adapter: Adapter, provider: str, resp: aiohttp.ClientResponse
                       ) -> tuple[AsyncIterator[list[bytes]], list[bytes], dict[str, Any]]:
    """open_stream for a caller without a watchdog of its own (a split prompt's part): the
    transport's errors become the vendor's failure too."""
    try:
        opened = await open_stream(adapter, provider, resp)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise transport_error(provider, exc) from None
    return opened.upstream, opened.batch, opened.first


async def relay_stream(request: web.Request, ex: Exchange, norm: Normalized, public: str, target: Target,
                       resp: aiohttp.ClientResponse, metrics: Metrics, opened: Opened) -> Relayed:
    adapter = target.adapter
    provider = target.provider
    endpoint = norm.endpoint
    keep_usage = norm.include_usage
    upstream = opened.upstream
    idle = target.idle_timeout_s

    first_at = time.monotonic()
    ex.served = True
    response = web.StreamResponse(headers=SSE_HEADERS)
    ex.committed = True
    ex.upstream = resp
    await response.prepare(request)
    if request.transport is not None:
        request.transport.set_write_buffer_limits(high=CLIENT_BUFFER_BYTES)
    ex.ttft_s = first_at - ex.started
    metrics.ttft.labels(public, provider).observe(ex.ttft_s)
    reported = False
    estimate = 0   # completion tokens relayed, estimated from their text: charged if usage never comes

    fill = Fill.new(endpoint)

    def shape(o: dict[str, Any]) -> bytes | None:
        nonlocal reported, estimate
        adapter.openai_chunk(endpoint, o, fill)
        o["model"] = public
        o["provider"] = provider
        for c in o.get("choices") or ():
            text = c.get("text") if isinstance(c, dict) else None
            if text is None and isinstance(c, dict) and isinstance(c.get("delta"), dict):
                text = c["delta"].get("content")
            if isinstance(text, str) and text:
                estimate += (len(text) + 3) // 4
        if "usage" in o:
            usage = o["usage"]
            if usage:
                ex.take_usage(usage)
                reported = True
            if not keep_usage:
                if not o.get("choices"):
                    return None
                del o["usage"]
        return encode(o)

    # From here on the stream is the client's: whatever happens upstream ends it with an
    # error event and [DONE], never an exception that would leave the client hanging. One
    # watchdog bounds both sides: the upstream's silence between events, and a write the
    # client leaves unread (a client that stopped reading must not hold the stream forever).
    failure: RouterError | None = None
    done = False
    gone = False
    loop = asyncio.get_running_loop()
    wd = Watchdog(loop.time() + idle)
    try:
        try:
            async with wd:
                first_out = shape(opened.first)
                rest: list[bytes] = opened.batch[1:]   # events that came in the same read
                while True:
                    out = [first_out] if first_out else []
                    first_out = None
                    for data in rest:
                        if data == b"[DONE]":
                            done = True
                            break
                        obj = load_event(data)
                        if obj is None:
                            failure = broken_stream(provider, "sent a stream event that is not JSON", "upstream_bad_response")
                            break
                        if "error" in obj:
                            failure = adapter.map_error(500, {}, data).error
                            break
                        chunk = shape(obj)
                        if chunk:
                            out.append(chunk)
                    if out:   # one write per upstream read, however many events it carried
                        wd.phase = "client"
                        await response.write(out[0] if len(out) == 1 else b"".join(out))
                        wd.phase = "upstream"
                    if done or failure is not None:
                        break
                    nxt = await anext(upstream, None)
                    if nxt is None:
                        break
                    wd.when = loop.time() + idle
                    rest = nxt
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            raise
        except asyncio.TimeoutError:
            if wd.phase == "client":
                raise ClientStalled() from None
            failure = broken_stream(provider, f"sent nothing for {idle:g}s", "upstream_stream_interrupted")
        except aiohttp.ClientError as exc:
            failure = broken_stream(provider, f"broke off ({type(exc).__name__})", "upstream_stream_interrupted")
        except Exception as exc:  # a malformed event, an over-long line: still the vendor's fault
            log.warning("unreadable stream from %s: %r", provider, exc, extra={"request_id": ex.request_id})
            failure = broken_stream(provider, "sent a stream the proxy could not read", "upstream_bad_response")
        if failure is None and not done:
            failure = broken_stream(provider, "ended without [DONE]", "upstream_stream_interrupted")
        tail = DONE
        if ex.draining:
            failure = RouterError(503, "The proxy is shutting down and ended this stream; retry the request.",
                                  type=UPSTREAM, code="server_shutting_down")
        if failure is not None:
            ex.status = failure.status
            ex.error_code = failure.code
            log.warning("stream from %s broke after commit: %s", provider, failure.message,
                        extra={"request_id": ex.request_id})
            tail = encode(failure.body()) + DONE
        wd2 = Watchdog(loop.time() + idle, "client")
        async with wd2:
            await response.write(tail)
            await response.write_eof()
    except ClientStalled:
        gone = True
        _client_failed(ex, request, resp, "client_stalled",
                       f"the client read nothing for {idle:g}s; stream ended")
    except asyncio.TimeoutError:   # the last write went unread
        gone = True
        _client_failed(ex, request, resp, "client_stalled",
                       f"the client read nothing for {idle:g}s; stream ended")
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        gone = True
        _client_failed(ex, request, resp, "client_closed_request", None)
    except asyncio.CancelledError:
        gone = True
        resp.close()
        raise
    finally:
        ex.upstream = None
        ex.upstream_s += time.monotonic() - first_at
        if not reported and not done:
            # Abandoned or broken before the vendor's usage came: charge what was surely used.
            ex.prompt_tokens = norm.prompt_tokens
            ex.completion_tokens = max(ex.completion_tokens, estimate)
    return Relayed(response, first_at, failure is not None, gone)


class ClientStalled(Exception):
    """A write to the client made no progress within the stream's idle limit."""


def _client_failed(ex: Exchange, request: web.Request, resp: aiohttp.ClientResponse, code: str,
                   why: str | None) -> None:
    """The client, not the vendor, ended the stream: close both sides, log it as the client's."""
    ex.status = 499
    ex.error_code = code
    resp.close()
    if request.transport is not None:
        request.transport.abort()
    if why:
        log.warning("%s", why, extra={"request_id": ex.request_id})


def broken_stream(provider: str, what: str, code: str) -> RouterError:
    return RouterError(502, f"The stream from provider '{provider}' {what}", type=UPSTREAM, code=code)


def load_event(data: bytes) -> dict[str, Any] | None:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None

