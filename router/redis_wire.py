"""One pipelined connection to a standalone Redis, for the request path's script calls.

Redis answers a connection's commands in order, so a batch is written in one go and its
replies are handed back as one list when the last one is parsed (hiredis, in C). No
connection pool, no task per read, no lock: the batch's waiter is the only thing on the
loop. A reply that arrives after its batch gave up (timed out) is still read and dropped,
so the connection never falls out of step; a broken connection fails what it had in flight
and the next batch opens a new one.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from hiredis import Reader, pack_command

log = logging.getLogger("router.state")


def wire_target(url: str) -> tuple[str, int, str | None, str | None, int] | None:
    """(host, port, username, password, db) for a plain redis:// URL; None for TLS, sockets
    or anything else, which go through redis-py."""
    parts = urlsplit(url)
    if parts.scheme != "redis" or parts.query:
        return None
    path = parts.path.strip("/")
    if path and not path.isdigit():
        return None
    return (parts.hostname or "localhost", parts.port or 6379, unquote(parts.username) if parts.username else None,
            unquote(parts.password) if parts.password else None, int(path or 0))


def cluster_creds(url: str) -> tuple[str | None, str | None] | None:
    """(username, password) for the nodes of a plain (not TLS) Cluster URL; None for TLS."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "redis-cluster"):
        return None
    return (unquote(parts.username) if parts.username else None, unquote(parts.password) if parts.password else None)


class ReplyError(Exception):
    """An error reply from Redis in place of a command's result (a script's error, a
    Cluster's redirection). Its own classes, so plain redis:// never loads redis-py."""


class NoScript(ReplyError):
    """NOSCRIPT: Redis does not have the script cached (a first use, or after a restart)."""


def reply_error(e: Exception) -> ReplyError:
    message = str(e)
    return NoScript(message) if message.startswith("NOSCRIPT") else ReplyError(message)


Delivery = Callable[[list[Any] | None, Exception | None], None]   # (replies, or the failure)


class _Pending:
    __slots__ = ("count", "replies", "fut", "deliver")

    def __init__(self, count: int, fut: asyncio.Future[list[Any]] | None, deliver: Delivery | None) -> None:
        self.count, self.fut, self.deliver = count, fut, deliver
        self.replies: list[Any] = []

    def done(self, replies: list[Any] | None, err: Exception | None) -> None:
        if self.deliver is not None:
            try:
                self.deliver(replies, err)
            except Exception:   # the caller's bug must not take the connection down with it
                log.exception("delivering redis replies failed")
        elif not self.fut.done():  # type: ignore[union-attr]
            if err is not None or replies is None:
                self.fut.set_exception(err or ConnectionError("no replies"))  # type: ignore[union-attr]
            else:
                self.fut.set_result(replies)  # type: ignore[union-attr]


class Wire(asyncio.Protocol):
    def __init__(self) -> None:
        self._reader = Reader(replyError=Exception)
        self._pending: deque[_Pending] = deque()
        self._transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def send(self, packed: bytes, count: int) -> asyncio.Future[list[Any]]:
        """Write `count` packed commands; the future gets their replies in order (an error
        reply is a ReplyError in its place)."""
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        if self.lost or self._transport is None:
            fut.set_exception(ConnectionError("connection to redis lost"))
            return fut
        self._pending.append(_Pending(count, fut, None))
        self._transport.write(packed)
        return fut

    def post(self, packed: bytes, count: int, deliver: Delivery) -> None:
        """send, with the replies (or the failure) handed to `deliver` as soon as they are
        read: no future, so no loop iteration between the reply and its waiters."""
        if self.lost or self._transport is None:
            deliver(None, ConnectionError("connection to redis lost"))
            return
        self._pending.append(_Pending(count, None, deliver))
        self._transport.write(packed)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                batch = self._pending[0]
                batch.replies.append(reply_error(reply) if isinstance(reply, Exception) else reply)
                if len(batch.replies) == batch.count:
                    self._pending.popleft()
                    batch.done(batch.replies, None)
        except Exception as e:  # a protocol error or a reply nobody asked for: this connection is done
            self._fail(ConnectionError(f"redis connection out of step: {e!r}"))
            if self._transport is not None:
                self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"connection to redis lost: {exc!r}" if exc else "connection to redis closed"))

    def _fail(self, err: Exception) -> None:
        self.lost = True
        while self._pending:
            self._pending.popleft().done(None, err)

    def close(self) -> None:
        self.lost = True
        if self._transport is not None:
            self._transport.close()


async def open_wire(host: str, port: int, username: str | None, password: str | None, db: int) -> Wire:
    loop = asyncio.get_running_loop()
    _, wire = await loop.create_connection(Wire, host, port)
    hello: list[tuple[Any, ...]] = []
    if password is not None:
        hello.append(("AUTH", username, password) if username else ("AUTH", password))
    if db:
        hello.append(("SELECT", db))
    if hello:
        for reply in await wire.send(b"".join(pack_command(c) for c in hello), len(hello)):
            if isinstance(reply, ReplyError):
                wire.close()
                raise reply
    return wire
