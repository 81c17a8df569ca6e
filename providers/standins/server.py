"""One request cycle of a stand-in: record, authenticate, validate, then play the script.

The order mirrors a real vendor: a bad key is refused before anything else, a body the
vendor's schema rejects is refused before the model runs, and only then does the scripted
step (or the default success) decide the answer.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from itertools import zip_longest
from typing import Any

import orjson
from aiohttp import web

from providers.standins.answers import Answer
from providers.standins.base import (BreakStream, Fail, Fault, Hang, Headers, RecordedRequest, Reply, StandinControl,
                                     Step)
from providers.standins.dialect import Call, Dialect

EventTap = Callable[[dict[str, Any]], None]

# Set on a request (by a test middleware) to see every SSE JSON payload the stand-in sends.
EVENT_TAP: web.RequestKey[EventTap] = web.RequestKey("standin_event_tap", object)  # type: ignore[arg-type]

PLAIN_502 = b"<html><body><h1>502 Bad Gateway</h1></body></html>"


def demo_text(call: Call, prompt: str) -> str:
    """What the demo answers: who answered, and a short echo of the prompt (or tool result)."""
    said = " ".join(prompt.split())
    if len(said) > 60:
        said = said[:57] + "..."
    if call.op == "chat" and call.last_role == "tool":
        return f"[{call.kind}:{call.model}] The tool answered: {said!r}"
    return f"[{call.kind}:{call.model}] Hello from the stand-in. You said: {said!r}"


class StandinServer:
    """The aiohttp handlers of one stand-in, for one dialect, control and API key."""

    def __init__(self, dialect: Dialect, control: StandinControl, api_key: str | None) -> None:
        self.dialect = dialect
        self.control = control
        self.api_key = api_key

    def app(self) -> web.Application:
        app = web.Application()
        for op, path in self.dialect.paths().items():
            app.router.add_post(path, self._handler(op))
        app.router.add_route("*", "/{tail:.*}", self.unknown_path)
        return app

    def _handler(self, op: str) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self.handle(request, op)

        return handle

    async def unknown_path(self, request: web.Request) -> web.StreamResponse:
        call = self._call(request, "completions", {})
        return self.fail(call, Fail("bad_request"), kind="not_found")

    def _call(self, request: web.Request, op: str, body: dict[str, Any]) -> Call:
        return Call(self.dialect.kind, op, request.path, body, uuid.uuid4().hex, int(time.time()))

    async def handle(self, request: web.Request, op: str) -> web.StreamResponse:
        raw = await request.read()
        try:
            parsed: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = None
        body = parsed if isinstance(parsed, dict) else {}
        self.control.requests.append(
            RecordedRequest(request.path, dict(request.query), Headers(request.headers), body)
        )
        call = self._call(request, op, body)
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self.fail(call, Fail("auth"))
        problem = Fail("bad_request") if not isinstance(parsed, dict) else self.dialect.check(call)
        if problem is not None:
            return self.fail(call, problem)

        step: Step | None = self.control.next_step()
        demo = False
        if isinstance(step, Hang):
            await asyncio.sleep(step.seconds)
            step = Reply()
        elif step is None:
            if "missing" in call.model:
                step = Fail("model_not_found")
            else:
                step, demo = Reply(), self.control.demo
        if isinstance(step, Fail):
            return self.fail(call, step)
        texts = [demo_text(call, p) if demo else None for p in call.prompts()]
        if isinstance(step, Fault):
            reply = Reply(chunks=max(step.after + 1, Reply.chunks))
            return await self.fault(request, call, step, reply,
                                    self.dialect.answers(call, [t or reply.text for t in texts]))
        if isinstance(step, BreakStream):
            reply = Reply(chunks=step.chunks or max(step.after + 1, Reply.chunks))
            answers = self.dialect.answers(call, [t or step.text or reply.text for t in texts])
            return await self.cut(request, call, reply, answers, step.after, step.mid_char)
        if step.delay:
            await asyncio.sleep(step.delay)
        answers = self.dialect.answers(call, [t or step.text for t in texts])
        if call.stream:
            return await self.stream(request, call, step, answers)
        payload = orjson.dumps(self.dialect.success(call, step, answers))
        return web.Response(body=payload, content_type="application/json", headers=self.dialect.headers(call, step))

    def fail(self, call: Call, fail: Fail, kind: str | None = None) -> web.Response:
        """The vendor's error for `fail` (or for `kind`, an internal kind such as not_found)."""
        if fail.error == "plain_502" and kind is None:
            return web.Response(status=502, body=PLAIN_502, content_type="text/html")
        status, body = self.dialect.error(call, kind or fail.error, fail.param)
        headers = self.dialect.headers(call, None)
        if fail.retry_after is not None and fail.error in ("rate_limit", "server_error"):
            headers["Retry-After"] = str(fail.retry_after)
        return web.Response(
            status=status,
            body=orjson.dumps(body),
            content_type=self.dialect.error_content_type(status),
            headers=headers,
        )

    def events(self, call: Call, reply: Reply, answers: list[Answer]) -> list[dict[str, Any]]:
        """The content events of a stream: the choices' pieces taken in turn, each choice's
        last one finished."""
        per_choice = []
        for index, answer in enumerate(answers):
            pieces = self.dialect.pieces(call, answer, reply.chunks)
            last = len(pieces) - 1
            per_choice.append([
                self.dialect.chunk(call, index, piece, answer.finish_reason if k == last else None)
                for k, piece in enumerate(pieces)
            ])
        return [event for turn in zip_longest(*per_choice) for event in turn if event is not None]

    async def _open_stream(self, request: web.Request, call: Call, reply: Reply) -> web.StreamResponse:
        headers = self.dialect.headers(call, reply)
        headers.update({"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        resp = web.StreamResponse(status=200, headers=headers)
        await resp.prepare(request)
        return resp

    async def _send(self, request: web.Request, resp: web.StreamResponse, payload: dict[str, Any]) -> None:
        tap = request.get(EVENT_TAP)
        if tap is not None:
            tap(payload)
        await resp.write(b"data: " + orjson.dumps(payload) + b"\n\n")

    async def stream(self, request: web.Request, call: Call, reply: Reply, answers: list[Answer]) -> web.StreamResponse:
        resp = await self._open_stream(request, call, reply)
        for i, event in enumerate(self.events(call, reply, answers)):
            if i and reply.chunk_delay:
                await asyncio.sleep(reply.chunk_delay)
            await self._send(request, resp, event)
        if call.include_usage:
            await self._send(request, resp, self.dialect.usage_chunk(call, reply))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def fault(self, request: web.Request, call: Call, fault: Fault, reply: Reply,
                    answers: list[Answer]) -> web.StreamResponse:
        """Play one contract-breaking fault; raw bytes, so nothing here passes the schema checks."""
        kind = fault.kind
        echo = f"Invalid credentials: {request.headers.get('Authorization', '')}"
        if kind in ("status", "echo_key", "endless_error") and not (kind == "echo_key" and call.stream and fault.after):
            error_kind = "rate_limit" if fault.status == 429 else "server_error"
            _, body = self.dialect.error(call, error_kind, None)
            if kind == "echo_key":
                # Some vendors do this: "invalid key Bearer sk-...", the caller's own secret.
                body = {"error": {"message": echo, "type": "invalid_request_error", "param": None, "code": None}}
            headers = {"Content-Type": "application/json"}
            if fault.retry_after is not None:
                headers["Retry-After"] = fault.retry_after
            resp = web.StreamResponse(status=fault.status, headers=headers)
            await resp.prepare(request)
            if kind == "endless_error":
                await resp.write(b'{"error": {"message": "')
                while True:   # until the client hangs up
                    await resp.write(b"x" * 65536)
            await resp.write(orjson.dumps(body))
            await resp.write_eof()
            return resp
        if not call.stream:
            payload = orjson.dumps(self.dialect.success(call, reply, answers))
            raw = {"bad_json": payload[: len(payload) // 2], "wrong_shape": b'{"status": "ok"}'}.get(kind, payload)
            resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            await resp.prepare(request)
            if kind == "stall":
                await resp.write(payload[: len(payload) // 2])
                await asyncio.sleep(fault.seconds)
                raw = payload[len(payload) // 2:]
            elif kind == "ping":
                await asyncio.sleep(fault.seconds)
            await resp.write(raw)
            await resp.write_eof()
            return resp
        resp = await self._open_stream(request, call, reply)
        events = [b"data: " + orjson.dumps(e) + b"\n\n" for e in self.events(call, reply, answers)]
        if call.include_usage:
            events.append(b"data: " + orjson.dumps(self.dialect.usage_chunk(call, reply)) + b"\n\n")
        done = b"data: [DONE]\n\n"
        head, tail = events[: fault.after], events[fault.after:]
        if kind == "ping":
            end = asyncio.get_running_loop().time() + fault.seconds
            while asyncio.get_running_loop().time() < end:
                await resp.write(b": ping\n\n")
                await asyncio.sleep(0.05)
        elif kind == "split":
            for byte in b"".join(events) + done:
                await resp.write(bytes([byte]))
                await asyncio.sleep(0)
            await resp.write_eof()
            return resp
        for e in head:
            await resp.write(e)
        if kind == "bad_json":
            tail = [b'data: {"choices": [\n\n']
        elif kind == "wrong_shape":
            tail = [b'data: {"status": "ok"}\n\n']
        elif kind == "broken_line":
            line = tail[0] if tail else events[-1]
            tail = [line[:20] + b"\n" + line[20:]] + tail[1:]
        elif kind == "echo_key":   # in-band, after the stream began
            tail = [b"data: " + orjson.dumps({"error": {"message": echo, "type": "server_error"}}) + b"\n\n"]
        elif kind == "error_event":
            tail = [b'data: {"error": {"message": "The server had an error while processing your request.", '
                    b'"type": "server_error", "param": null, "code": null}}\n\n']
        elif kind == "stall":
            await asyncio.sleep(fault.seconds)
        for e in tail:
            await resp.write(e)
        if kind != "no_done":
            await resp.write(done)
        await resp.write_eof()
        return resp

    async def cut(
        self, request: web.Request, call: Call, reply: Reply, answers: list[Answer], after: int,
        mid_char: bool = False,
    ) -> web.StreamResponse:
        """Answer part of the response, then close the TCP connection under the client.

        A stream gets `after` content events and no `[DONE]`; a JSON answer gets its headers
        and half of its body, so the client sees a truncated payload either way.
        """
        if call.stream:
            resp = await self._open_stream(request, call, reply)
            events = self.events(call, reply, answers)
            for event in events[:after]:
                await self._send(request, resp, event)
            if mid_char and after < len(events):
                raw = b"data: " + orjson.dumps(events[after]) + b"\n\n"
                cut = next(i for i, byte in enumerate(raw) if byte >= 0xC0) + 1   # a lead byte, not its tail
                await resp.write(raw[:cut])
        else:
            payload = orjson.dumps(self.dialect.success(call, reply, answers))
            resp = web.StreamResponse(status=200, headers=self.dialect.headers(call, reply))
            resp.content_type = "application/json"
            resp.content_length = len(payload)
            await resp.prepare(request)
            await resp.write(payload[: len(payload) // 2])
        if request.transport is not None:
            request.transport.close()  # flushes what was written, then closes: no chunk terminator
        return resp
