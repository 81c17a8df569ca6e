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
from typing import Any, AsyncIterator, Protocol

import aiohttp
import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from providers.base import Adapter, Fill
from providers.failures import bad_upstream_body, transport_error
from router.candidates import Candidate
from router.errors import UPSTREAM, RouterError
from router.event_template import BURST, EventTemplate
from router.exchange import Exchange
from router.metrics import Metrics
from router.normalize import Normalized
from router.sse import DONE, EventBatches, EventStream, encode
from router.table import Target
from router.watchdog import Watchdog
from router.upstream import UpstreamResponse

log = logging.getLogger("router.stream")

loads, dumps = orjson.loads, orjson.dumps

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


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


@dataclass(slots=True)
class Continued:
    """A continuation whose first event arrived: relay_stream switches to it."""

    cand: Candidate
    resp: UpstreamResponse
    opened: Opened


class Continuer(Protocol):
    """What relay_stream asks of router.resume.Resumer (a Protocol: resume imports this module)."""

    async def next(self, said: str, failure_provider: str) -> Continued | None: ...

    def finish(self, broken: bool, gone: bool) -> None: ...


async def open_stream(adapter: Adapter, provider: str, resp: UpstreamResponse) -> Opened:
    """Wait for a stream's first event and check it; raises UpstreamError (or the transport's
    error) so the caller can still fall over, since nothing went to the client yet."""
    upstream = EventBatches(resp.content)
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


async def first_events(adapter: Adapter, provider: str, resp: UpstreamResponse
                       ) -> tuple[AsyncIterator[list[bytes]], list[bytes], dict[str, Any]]:
    """open_stream for a caller without a watchdog of its own (a split prompt's part): the
    transport's errors become the vendor's failure too."""
    try:
        opened = await open_stream(adapter, provider, resp)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise transport_error(provider, exc) from None
    return opened.upstream, opened.batch, opened.first


async def relay_stream(request: web.Request, ex: Exchange, norm: Normalized, public: str, target: Target,
                       resp: UpstreamResponse, metrics: Metrics, opened: Opened,
                       resumer: Continuer | None = None) -> Relayed:
    adapter = target.adapter
    provider = target.provider
    endpoint = norm.endpoint
    keep_usage = norm.include_usage
    upstream = opened.upstream
    idle = target.idle_timeout_s

    first_at = time.monotonic()
    ex.served = True
    response = EventStream(headers=SSE_HEADERS)
    ex.committed = True
    ex.upstream = resp
    ex.stamp(response)
    await response.prepare(request)
    if request.transport is not None:
        request.transport.set_write_buffer_limits(high=CLIENT_BUFFER_BYTES)
    ex.ttft_s = first_at - ex.started
    metrics.ttft_series(public, provider)(ex.ttft_s)
    reported = False
    estimate = 0   # completion tokens relayed, estimated from their text: charged if usage never comes
    prompt_estimate = norm.prompt_tokens

    fill = Fill.new(endpoint)
    template = EventTemplate()
    # Resume bookkeeping, only with a resumer: the text relayed (one choice), whether it
    # finished or turned into tool calls; and, once resumed, the first part's id and created.
    said: list[str] | None = [] if resumer is not None else None
    finished = False
    same: tuple[Any, Any] | None = None
    continued = False

    def track(c: dict[str, Any]) -> None:
        nonlocal finished
        if c.get("finish_reason") or c.get("index", 0) != 0:
            finished = True
        delta = c.get("delta")
        if isinstance(delta, dict) and delta.get("tool_calls"):
            finished = True   # a tool call is not continued as text

    chunk_fix = adapter.openai_chunk

    def shape(o: dict[str, Any], raw: bytes) -> bytes | None:
        """One event (`raw`, parsed into `o`) as the client gets it; the per-chunk path, so
        exact-type checks (orjson makes plain dicts and strs) and no calls that are not needed."""
        nonlocal reported, estimate, same
        chunk_fix(endpoint, o, fill)
        if said is not None:
            if same is None:
                same = (o["id"], o["created"])
            elif continued:
                o["id"], o["created"] = same
        o["model"] = public
        o["provider"] = provider
        choices = o.get("choices")
        text = None
        if type(choices) is list:
            for c in choices:
                if type(c) is not dict:
                    continue
                text = c.get("text")
                if text is None:
                    delta = c.get("delta")
                    if type(delta) is dict:
                        text = delta.get("content")
                if text and type(text) is str:
                    estimate += (len(text) + 3) // 4
                    if said is not None:
                        said.append(text)
                if said is not None:
                    track(c)
        if "usage" in o:
            usage = o["usage"]
            if usage:
                ex.take_usage(usage)
                reported = True
                if ex.parts:
                    o["usage"] = ex.usage_total()
            if not keep_usage:
                if not choices:
                    return None
                del o["usage"]
            # never a template: a later event with these bytes must have its usage taken too
            return b"data: " + dumps(o) + b"\n\n"
        out = b"data: " + dumps(o) + b"\n\n"
        # a finished choice is the last of its stream: nothing after it to shape by template
        if (template.learns and text and type(text) is str and type(choices) is list and len(choices) == 1
                and not choices[0].get("finish_reason")):
            template.learn(raw, text, out)
        return out

    def end_part() -> None:
        """The serving part's usage, where its vendor never reported it: what was surely used."""
        if not reported:
            ex.prompt_tokens = prompt_estimate
            ex.completion_tokens = max(ex.completion_tokens, estimate)

    # From here on the stream is the client's: whatever happens upstream ends it with an
    # error event and [DONE], never an exception that would leave the client hanging. One
    # watchdog bounds both sides: the upstream's silence between events, and a write the
    # client leaves unread (a client that stopped reading must not hold the stream forever).
    failure: RouterError | None = None
    first_failure: RouterError | None = None
    done = False
    gone = False
    live = True   # the serving part's usage is still to be counted
    last = b""    # the answer's last events, written with [DONE] and the body's end in one write
    loop = asyncio.get_running_loop()
    try:
        first_obj: dict[str, Any] = opened.first
        first_raw = opened.batch[0]
        rest: list[bytes] = opened.batch[1:]   # events that came in the same read
        opened.batch, opened.first = [], {}    # taken: a held stream keeps no read it has written
        while True:
            wd = Watchdog(loop, loop.time() + idle)
            try:
                async with wd:
                    first_out = shape(first_obj, first_raw)
                    first_obj, first_raw = {}, b""
                    while True:
                        out = [first_out] if first_out else []
                        first_out = None
                        i, n = 0, len(rest)
                        burst = n >= BURST   # at most one failed try per read: see EventTemplate.burst
                        while i < n:
                            data = rest[i]
                            i += 1
                            if data == b"[DONE]":
                                done = True
                                break
                            mid = template.text(data)
                            if mid is not None:   # shaped as bytes: see router/event_template.py
                                if burst and n - i >= BURST - 1:
                                    run = template.burst(rest, i - 1)
                                    if run is not None:
                                        texts, tokens, i = run
                                        estimate += tokens
                                        if said is not None:
                                            said.extend(map(bytes.decode, texts))
                                        out += (template.head, template.between.join(texts), template.tail)
                                        continue
                                    burst = False
                                if mid:
                                    estimate += ((len(mid) if mid.isascii() else len(mid.decode())) + 3) // 4
                                    if said is not None:
                                        said.append(mid.decode())
                                out += (template.head, mid, template.tail)
                                continue
                            try:
                                obj = loads(data)
                            except orjson.JSONDecodeError:
                                obj = None
                            if type(obj) is not dict:
                                failure = broken_stream(provider, "sent a stream event that is not JSON", "upstream_bad_response")
                                break
                            if "error" in obj:
                                failure = adapter.map_error(500, {}, data).error
                                break
                            chunk = shape(obj, data)
                            if chunk:
                                out.append(chunk)
                        if out and done:
                            last = out[0] if len(out) == 1 else b"".join(out)
                        elif out:   # one write per upstream read, however many events it carried
                            wd.phase = "client"
                            await response.write(out[0] if len(out) == 1 else b"".join(out))
                            wd.phase = "upstream"
                        if done or failure is not None:
                            break
                        # nothing of this read stays referenced while the stream waits for the next
                        out = rest = []
                        obj = nxt = chunk = mid = run = None
                        texts = []
                        data = b""
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
            if first_failure is None and not continued:
                first_failure = failure
            if failure is None or resumer is None or finished:
                break
            # The upstream broke after content went out: go on from the next target, if one can.
            log.warning("stream from %s broke after commit: %s; resuming", provider, failure.message,
                        extra={"request_id": ex.request_id})
            resp.close()
            end_part()
            live = False
            nxt_part = await resumer.next("".join(said or ()), provider)
            if nxt_part is None:
                break
            live, continued, failure, reported, estimate = True, True, None, False, 0
            prompt_estimate = norm.prompt_tokens + sum(p.completion_tokens for p in ex.parts)
            cand = nxt_part.cand
            adapter, provider, resp = cand.target.adapter, cand.target.provider, nxt_part.resp
            idle, upstream = cand.target.idle_timeout_s, nxt_part.opened.upstream
            first_obj, rest = nxt_part.opened.first, nxt_part.opened.batch[1:]
            nxt_part.opened.batch, nxt_part.opened.first = [], {}
            first_raw = b""   # its role is taken out below: not a template for the events after it
            template = EventTemplate()
            for c in first_obj.get("choices") or ():   # the client had the role already
                if isinstance(c, dict) and isinstance(c.get("delta"), dict):
                    c["delta"].pop("role", None)
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
        last += tail
        transport = request.transport
        # headers still held back and the chunk's framing come well within the margin
        if transport is None or transport.get_write_buffer_size() + len(last) + 8192 < CLIENT_BUFFER_BYTES:
            await response.write_eof(last)   # it fits the socket's buffer: nothing to wait for
        else:
            async with Watchdog(loop, loop.time() + idle, "client"):
                await response.write_eof(last)
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
        if live and not done:
            # Abandoned or broken before the vendor's usage came: charge what was surely used.
            end_part()
        if resumer is not None:
            resumer.finish(failure is not None, gone)
    return Relayed(response, first_at, first_failure is not None, gone)


class ClientStalled(Exception):
    """A write to the client made no progress within the stream's idle limit."""


def _client_failed(ex: Exchange, request: web.Request, resp: UpstreamResponse, code: str,
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

