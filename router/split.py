"""A batch of prompts for a vendor that takes one prompt per call: one call per prompt, all at
once, stitched back into one OpenAI answer.

The adapter says what one call takes (`prompt_shapes`); `payloads` makes one body per prompt
where the batch must be split. The calls run concurrently as one attempt at the target: a part
that fails before anything is sent fails the attempt (the other calls are closed), so the usual
retry and fallover rules apply to the whole. The answer has one `id`, each choice's `index` in
prompt order (prompt i, choice j -> i * n + j, as OpenAI numbers them) and the parts' usage
summed. A stream commits once every part has sent its first event, then relays the parts'
chunks interleaved as they come, each with its prompt's index, then one usage chunk (when
asked for) and one `[DONE]`; a part that breaks after that ends it with an error event.
The request was admitted once, so limits and budgets count it once however many calls it takes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import orjson
from aiohttp import web

from providers.base import Adapter, Fill, body_bytes
from providers.failures import UpstreamError
from router.attempts import Attempts
from router.candidates import Candidate
from router.errors import RouterError
from router.exchange import Exchange
from router.normalize import Normalized
from router.sse import DONE, EventStream, encode
from router.streaming import SSE_HEADERS, broken_stream, first_events, load_event
from router.table import Target
from router.upstream import UpstreamResponse

log = logging.getLogger("router.stream")
T = TypeVar("T")


def payloads(adapter: Adapter, norm: Normalized, vendor_model: str, dropped: list[str]) -> bytes | list[bytes]:
    """The body to send, or one body per prompt where the vendor takes them one at a time."""
    parts = adapter.split_prompt(norm.endpoint, norm.body)
    if parts is None:
        return body_bytes(adapter.build_body(norm.endpoint, norm.body, vendor_model, want_usage=True,
                                             dropped=dropped))
    bodies = [body_bytes(adapter.build_body(norm.endpoint, {**norm.body, "prompt": prompt}, vendor_model,
                                            want_usage=True, dropped=dropped if i == 0 else None))
              for i, prompt in enumerate(parts)]
    return bodies[0] if len(bodies) == 1 else bodies


async def split_attempt(proxy: Attempts, request: web.Request, ex: Exchange, norm: Normalized, cand: Candidate,
                        bodies: list[bytes], deadline: float) -> web.StreamResponse:
    # Upstream time is the split's wall time: its calls overlap, so their own times do not add up.
    before, started = ex.upstream_s, time.monotonic()
    try:
        if norm.stream:
            return await _stream(proxy, request, ex, norm, cand, bodies, deadline)
        return await _whole(proxy, ex, norm, cand, bodies, deadline)
    finally:
        ex.upstream_s = before + time.monotonic() - started


def add_usage(total: dict[str, Any], usage: Any) -> None:
    """A part's usage added into `total`, counts and their details alike."""
    if not isinstance(usage, dict):
        return
    for key, value in usage.items():
        if isinstance(value, dict):
            add_usage(total.setdefault(key, {}), value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            total[key] = total.get(key, 0) + value


def _per_prompt(norm: Normalized) -> int:
    n = norm.body.get("n")
    return n if isinstance(n, int) and n > 0 else 1


def _index(choice: dict[str, Any]) -> int:
    index = choice.get("index")
    return index if isinstance(index, int) else 0


async def _all(calls: list[Awaitable[T]]) -> list[T]:
    """Every call's result; the first failure cancels the others and is raised."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _whole(proxy: Attempts, ex: Exchange, norm: Normalized, cand: Candidate, bodies: list[bytes],
                 deadline: float) -> web.Response:
    target = cand.target

    async def part(body: bytes) -> dict[str, Any]:
        resp, started = await proxy.open_upstream(ex, target, norm, body, deadline)
        outcome = "cancelled"
        try:
            data = await proxy.read_answer(target.provider, resp)
            outcome = "ok"
            return data
        except UpstreamError as err:
            outcome = err.reason
            raise
        finally:
            resp.release()
            proxy.count_attempt(target, outcome, started, ex)

    answers = await _all([part(b) for b in bodies])
    fill = Fill.new(norm.endpoint)
    per = _per_prompt(norm)
    choices: list[dict[str, Any]] = []
    usage: dict[str, Any] = {}
    for i, data in enumerate(answers):
        target.adapter.openai_response(norm.endpoint, data, fill)
        for choice in data["choices"]:
            if isinstance(choice, dict):
                choice["index"] = i * per + _index(choice)
                choices.append(choice)
        add_usage(usage, data.get("usage"))
    out = answers[0]
    out.update(id=fill.id, choices=sorted(choices, key=_index), model=cand.public, provider=target.provider)
    if usage:
        out["usage"] = usage
        ex.take_usage(usage)
    ex.served = True
    return web.Response(body=orjson.dumps(out), content_type="application/json")


@dataclass(slots=True, eq=False)
class _Part:
    """One prompt's upstream stream."""

    base: int                                   # index of its first choice in the answer
    resp: UpstreamResponse | None = None
    started: float = 0.0
    first_at: float | None = None
    events: AsyncIterator[list[bytes]] | None = None
    first: list[bytes] = field(default_factory=list)
    done: bool = False                          # its [DONE] arrived
    outcome: str | None = None                  # a failure of its own
    ended: bool = False

    def end(self, proxy: Attempts, target: Target, ex: Exchange) -> None:
        """Release or cut its connection and count it, once."""
        if self.resp is None or self.ended:
            return
        self.ended = True
        outcome = self.outcome or ("ok" if self.done else "cancelled")
        if outcome == "ok":
            self.resp.release()
        else:
            self.resp.close()
        proxy.count_attempt(target, outcome, self.started, ex, self.first_at)


async def _stream(proxy: Attempts, request: web.Request, ex: Exchange, norm: Normalized, cand: Candidate,
                  bodies: list[bytes], deadline: float) -> web.StreamResponse:
    target = cand.target
    adapter, provider, endpoint, public = target.adapter, target.provider, norm.endpoint, cand.public
    per = _per_prompt(norm)
    parts = [_Part(i * per) for i in range(len(bodies))]

    async def open_part(p: _Part, body: bytes) -> None:
        p.resp, p.started = await proxy.open_upstream(ex, target, norm, body, deadline)
        try:
            p.events, p.first, _ = await first_events(adapter, provider, p.resp)
        except UpstreamError as err:
            p.outcome = err.reason
            raise
        p.first_at = time.monotonic()

    readers: list[asyncio.Future[None]] = []
    usage: dict[str, Any] = {}
    response: web.StreamResponse | None = None
    try:
        await _all([open_part(p, b) for p, b in zip(parts, bodies)])
        first_at = time.monotonic()
        ex.served = True
        response = EventStream(headers=SSE_HEADERS)
        ex.committed = True
        ex.stamp(response)
        await response.prepare(request)
        ex.ttft_s = first_at - ex.started
        proxy.metrics.ttft_series(public, provider)(ex.ttft_s)

        # Bounded, so a slow client slows the upstream reads down, as a single relayed stream does.
        queue: asyncio.Queue[tuple[_Part, list[bytes] | BaseException | None]] = asyncio.Queue(2 * len(parts))
        for p in parts:
            queue.put_nowait((p, p.first))

        async def read(p: _Part) -> None:
            assert p.events is not None
            try:
                async for batch in p.events:
                    await queue.put((p, batch))
                await queue.put((p, None))
            except Exception as exc:   # handed to the writer, which ends the stream with it
                await queue.put((p, exc))

        readers = [asyncio.ensure_future(read(p)) for p in parts]
        fill = Fill.new(endpoint)

        def shape(o: dict[str, Any], base: int) -> bytes | None:
            adapter.openai_chunk(endpoint, o, fill)
            o["id"] = fill.id
            o["created"] = fill.created
            o["model"] = public
            o["provider"] = provider
            for choice in o.get("choices") or ():
                choice["index"] = base + _index(choice)
            part_usage = o.pop("usage", None)
            if part_usage:
                add_usage(usage, part_usage)
            return encode(o) if o.get("choices") else None

        failure: RouterError | None = None
        left = len(parts)
        try:
            while left and failure is None:
                p, batch = await queue.get()
                if p.done:
                    continue
                if not isinstance(batch, list):
                    p.outcome = "stream_interrupted"
                    if batch is None:
                        failure = broken_stream(provider, "ended without [DONE]", "upstream_stream_interrupted")
                    elif isinstance(batch, (aiohttp.ClientError, asyncio.TimeoutError)):
                        failure = broken_stream(provider, f"broke off ({type(batch).__name__})",
                                                "upstream_stream_interrupted")
                    else:
                        failure = broken_stream(provider, "sent a stream the proxy could not read",
                                                "upstream_bad_response")
                    break
                out: list[bytes] = []
                for data in batch:
                    if data == b"[DONE]":
                        p.done = True
                        left -= 1
                        break
                    obj = load_event(data)
                    if obj is None or "error" in obj:
                        p.outcome = "stream_interrupted"
                        failure = (adapter.map_error(500, {}, data).error if obj is not None else
                                   broken_stream(provider, "sent a stream event that is not JSON",
                                                 "upstream_bad_response"))
                        break
                    chunk = shape(obj, p.base)
                    if chunk:
                        out.append(chunk)
                if out:
                    await response.write(b"".join(out))
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            raise
        except Exception as exc:   # a malformed event: still the vendor's fault
            log.warning("unreadable stream from %s: %r", provider, exc, extra={"request_id": ex.request_id})
            failure = broken_stream(provider, "sent a stream the proxy could not read", "upstream_bad_response")
        if failure is not None:
            ex.status, ex.error_code = failure.status, failure.code
            log.warning("stream from %s broke after commit: %s", provider, failure.message,
                        extra={"request_id": ex.request_id})
            await response.write(encode(failure.body()))
        elif norm.include_usage and usage:
            await response.write(encode({"id": fill.id, "object": "text_completion", "created": fill.created,
                                         "model": public, "provider": provider, "choices": [], "usage": usage}))
        await response.write(DONE)
        await response.write_eof()
        return response
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        if response is None:
            raise
        ex.status = 499
        ex.error_code = "client_closed_request"
        return response
    finally:
        for t in readers:
            t.cancel()
        if readers:
            await asyncio.gather(*readers, return_exceptions=True)
        for p in parts:
            p.end(proxy, target, ex)
        if usage:
            ex.take_usage(usage)
