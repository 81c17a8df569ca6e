"""The proxy's HTTP/1.1 client for vendor calls: keep-alive connections per origin, little else.

aiohttp's ClientSession builds URL, header, request, response, cookie, trace and timer objects
for every call, and measured on one core that costs more than everything else the proxy does
for a request. A vendor call needs none of it: this client writes the request as one buffer
on a pooled connection and reads the answer with aiohttp's own protocol and C parser
(`ResponseHandler`), so the status, headers, streamed body (`content`, an aiohttp
StreamReader), chunked encoding, compression and their failures (aiohttp.ClientError and
asyncio.TimeoutError subclasses) are exactly what aiohttp's client gives.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ConnectionKey, RequestInfo
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

READ_BUFSIZE = 2 ** 16
MAX_LINE = 8190        # aiohttp's own limits for a status line and a header
KEEPALIVE_S = 15.0     # an idle connection older than this is not reused (aiohttp's default)
# Connections being opened to one origin at once. A burst of calls on an empty pool would
# otherwise open them all together and overflow the vendor's accept queue (128 by default
# for many servers): the dropped SYNs come back only after 1 s or 3 s of TCP retransmission.
CONNECTING = 32


class _Origin:
    """One scheme://host:port: its idle connections, and how many are in use."""

    __slots__ = ("host", "port", "tls", "host_header", "idle", "busy", "connecting", "waiters", "live", "key")

    def __init__(self, scheme: str, host: str, port: int, host_header: str) -> None:
        self.host, self.port, self.tls, self.host_header = host, port, scheme == "https", host_header
        self.idle: deque[tuple[ResponseHandler, float]] = deque()
        self.busy = 0
        self.connecting = 0
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.live: set[ResponseHandler] = set()
        self.key = ConnectionKey(host, port, self.tls, True, None, None, None)

    def wake(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return


class UpstreamResponse:
    """A vendor's answer: `status`, `headers`, `content` as aiohttp's ClientResponse has them.
    The connection goes back to the pool once the body is read to its end (or on
    `release()` after that); `close()`, or releasing a body not read to its end, hangs up."""

    __slots__ = ("status", "reason", "headers", "content", "_proto", "_origin", "_client", "_timer", "_done")

    def __init__(self, client: Upstream, origin: _Origin, proto: ResponseHandler, status: int, reason: str | None,
                 headers: CIMultiDictProxy[str], content: StreamReader, timer: asyncio.TimerHandle | None) -> None:
        self.status, self.reason, self.headers, self.content = status, reason, headers, content
        self._client, self._origin, self._proto, self._timer = client, origin, proto, timer
        self._done = False

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "application/octet-stream").partition(";")[0].strip().lower()

    async def read(self) -> bytes:
        """The whole body."""
        return await self.content.read()

    def release(self) -> None:
        """Done with it: a body read to its end leaves the connection for the next call."""
        self._notify()
        self._eof()

    def close(self) -> None:
        """Hang up, whatever is left of the body (a reader still waiting on it fails)."""
        self._notify()
        self._end(self._client._hang_up)

    def _eof(self) -> None:
        self._end(self._client._give_back)

    def _end(self, how: Callable[[_Origin, ResponseHandler, UpstreamResponse], None]) -> None:
        if not self._done:
            self._done = True
            if self._timer is not None:
                self._timer.cancel()
            how(self._origin, self._proto, self)

    def _notify(self) -> None:
        # as aiohttp's ClientResponse: a read after the end of the call fails instead of waiting
        if self.content.exception() is None:
            self.content.set_exception(aiohttp.ClientConnectionError("Connection closed"))


class Upstream:
    """Keep-alive connections per origin, at most `limit_per_host` in use and `connecting` being
    opened at once (a call past either waits: for an idle connection or a turn to open one);
    shared by every request of an app."""

    def __init__(self, limit_per_host: int = 512, keepalive_s: float = KEEPALIVE_S, connecting: int = CONNECTING) -> None:
        self.limit_per_host, self.keepalive_s, self.connecting = limit_per_host, keepalive_s, connecting
        self._origins: dict[str, _Origin] = {}
        self._targets: dict[str, tuple[_Origin, bytes]] = {}   # url -> (origin, "POST <path> HTTP/1.1\r\nHost: ..")
        self._tls: ssl.SSLContext | None = None
        self._open: set[UpstreamResponse] = set()   # answers whose connection is still theirs
        self.closed = False

    async def post(self, url: str, data: bytes, headers: Mapping[str, str], connect_s: float | None,
                   read_s: float | None = None, total_s: float | None = None) -> UpstreamResponse:
        """POST `data` and wait for the answer's status and headers. `connect_s` bounds opening
        a connection, `read_s` each wait for bytes, `total_s` the call to the end of its body
        (each raises an asyncio.TimeoutError subclass; None: no bound)."""
        if self.closed:
            raise aiohttp.ClientConnectionError("the upstream client is closed")
        origin, start = self._target(url)
        lines = [start]
        for name, value in headers.items():
            if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
                raise ValueError(f"a newline in the value of request header {name!r}")
            lines.append(f"{name}: {value}\r\n".encode())
        lines.append(b"Content-Length: %d\r\n\r\n" % len(data))
        lines.append(data)
        request = b"".join(lines)
        loop = asyncio.get_running_loop()
        proto = await self._acquire(origin, connect_s, loop)
        proto.set_response_params(read_until_eof=True, auto_decompress=True, read_timeout=read_s,
                                  read_bufsize=READ_BUFSIZE, max_line_size=MAX_LINE, max_field_size=MAX_LINE)
        deadline = loop.time() + total_s if total_s is not None else None
        timer = loop.call_at(deadline, _expire, proto, None) if deadline is not None else None
        try:
            transport = proto.transport
            if transport is None or transport.is_closing():
                raise aiohttp.ServerDisconnectedError()
            transport.write(request)
            proto.start_timeout()
            while True:
                message, payload = await proto.read()
                if not 100 <= message.code <= 199 or message.code == 101:
                    break
        except BaseException as exc:
            if timer is not None:
                timer.cancel()
            self._hang_up(origin, proto)
            if isinstance(exc, HttpProcessingError):
                info = RequestInfo(URL(url), "POST", CIMultiDictProxy(CIMultiDict(headers)), URL(url))
                raise aiohttp.ClientResponseError(info, (), status=exc.code, message=exc.message,
                                                  headers=exc.headers) from None
            if isinstance(exc, OSError) and not isinstance(exc, aiohttp.ClientError):
                raise aiohttp.ClientOSError(*exc.args) from None
            raise
        if timer is not None:
            timer.cancel()
            timer = loop.call_at(deadline, _expire, proto, payload)   # type: ignore[arg-type]
        if type(payload) is StreamReader:
            payload.__class__ = Body
        resp = UpstreamResponse(self, origin, proto, message.code, message.reason, message.headers, payload, timer)
        self._open.add(resp)
        payload.on_eof(resp._eof)
        return resp

    def _target(self, url: str) -> tuple[_Origin, bytes]:
        found = self._targets.get(url)
        if found is None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"not an http(s) URL: {url!r}")
            port = parts.port or (443 if parts.scheme == "https" else 80)
            host_header = parts.netloc.rpartition("@")[2]
            name = f"{parts.scheme}://{host_header}"
            origin = self._origins.get(name)
            if origin is None:
                origin = self._origins[name] = _Origin(parts.scheme, parts.hostname, port, host_header)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            found = self._targets[url] = (origin, f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\n".encode())
        return found

    async def _acquire(self, origin: _Origin, connect_s: float | None, loop: asyncio.AbstractEventLoop) -> ResponseHandler:
        """A connection: the most recently used idle one still open, else a new one."""
        while True:
            while origin.idle:
                proto, since = origin.idle.pop()
                if proto.is_connected() and time.monotonic() - since < self.keepalive_s:
                    origin.busy += 1
                    return proto
                self._drop(origin, proto)
            if origin.busy < self.limit_per_host and origin.connecting < self.connecting:
                break
            fut = loop.create_future()
            origin.waiters.append(fut)
            try:
                await fut
            except BaseException:
                if fut.done() and not fut.cancelled():
                    origin.wake()   # pass on the turn this waiter was given
                raise
        origin.busy += 1
        origin.connecting += 1
        try:
            proto = await self._connect(origin, connect_s)
        except BaseException:
            origin.busy -= 1
            raise
        finally:
            origin.connecting -= 1
            origin.wake()
        origin.live.add(proto)
        return proto

    async def _connect(self, origin: _Origin, connect_s: float | None) -> ResponseHandler:
        loop = asyncio.get_running_loop()
        tls = None
        if origin.tls:
            tls = self._tls = self._tls or ssl.create_default_context()
        try:
            async with asyncio.timeout(connect_s):
                _, proto = await loop.create_connection(lambda: ResponseHandler(loop), origin.host, origin.port,
                                                        ssl=tls, server_hostname=origin.host if tls else None)
        except TimeoutError:
            raise aiohttp.ConnectionTimeoutError(f"Connection timeout to host {origin.host}:{origin.port}") from None
        except OSError as exc:
            raise aiohttp.ClientConnectorError(origin.key, exc) from None
        return proto

    def _give_back(self, origin: _Origin, proto: ResponseHandler, resp: UpstreamResponse) -> None:
        """A call's connection, free again: kept for the next call if its answer was read whole."""
        self._open.discard(resp)
        origin.busy -= 1
        if not self.closed and not proto.should_close and proto.is_connected():
            # time.monotonic, not the loop's clock: asking for the running loop is a getpid
            # system call on Python 3.11, twice per call here
            now = time.monotonic()
            origin.idle.append((proto, now))
            if len(origin.idle) > 1:
                oldest, since = origin.idle[0]
                if now - since >= self.keepalive_s:
                    origin.idle.popleft()
                    self._drop(origin, oldest)
        else:
            self._drop(origin, proto)
        origin.wake()

    def _hang_up(self, origin: _Origin, proto: ResponseHandler, resp: UpstreamResponse | None = None) -> None:
        self._open.discard(resp)   # type: ignore[arg-type]
        origin.busy -= 1
        self._drop(origin, proto)
        origin.wake()

    @staticmethod
    def _drop(origin: _Origin, proto: ResponseHandler) -> None:
        origin.live.discard(proto)
        proto.close()

    async def close(self) -> None:
        """Hang up every connection, idle or in use (a read still waiting fails)."""
        self.closed = True
        for resp in list(self._open):
            resp.close()
        for origin in self._origins.values():
            origin.idle.clear()
            for proto in list(origin.live):
                proto.close()
            origin.live.clear()
            while origin.waiters:
                fut = origin.waiters.popleft()
                if not fut.done():
                    fut.set_exception(aiohttp.ClientConnectionError("the upstream client is closed"))


class Body(StreamReader):
    """aiohttp's StreamReader, whose readany() takes every buffered chunk in one join. A vendor
    sends a stream as one HTTP chunk per event, and aiohttp's own read pops them one at a
    time, each with a flow-control call: a tenth of a stream's CPU in the proxy's profile."""

    __slots__ = ()

    def _read_nowait(self, n: int) -> bytes:
        buffer = self._buffer
        if n != -1 or self._buffer_offset or not buffer:
            return super()._read_nowait(n)
        self._timer.assert_timeout()
        data = b"".join(buffer)
        buffer.clear()
        self._size -= len(data)
        self._cursor += len(data)
        splits = self._http_chunk_splits
        while splits and splits[0] < self._cursor:
            splits.popleft()
        if self._size < self._low_water and (splits is None or len(splits) < self._low_water_chunks):
            self._protocol.resume_reading()
        return data


def _expire(proto: ResponseHandler, payload: StreamReader | None) -> None:
    """A call's total time is up: its waits fail as aiohttp's read timeout makes them."""
    exc = aiohttp.ServerTimeoutError("Timeout on reading data from socket")
    proto.set_exception(exc)
    if payload is not None:
        payload.set_exception(exc)
    proto.close()
