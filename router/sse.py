"""Server-Sent Events, read and written on the per-chunk path: keep every step here thin.

Reading goes by network read, not by line: each read yields the `data` payloads of the
events it completed, so the relay can answer a burst of events with one write. An event
split across reads (or a multi-byte character split across them) waits in the buffer.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import StreamReader, web

DONE = b"data: [DONE]\n\n"
# An event larger than this without a blank line to end it is not an SSE stream.
MAX_EVENT_BYTES = 8 * 1024 * 1024


class EventStream(web.StreamResponse):
    """A stream response whose headers go out with its first events, in one write.

    aiohttp sends a StreamResponse's headers on their own at `prepare`, one more send per
    stream; a stream here is prepared only once its first event is in hand and written at
    once, so holding the headers back delays nothing. (A plain `web.Response` does the same.)
    """

    _send_headers_immediately = False


class SSEError(ValueError):
    """The upstream's bytes cannot be an SSE stream."""


def _payload(event: bytes) -> bytes | None:
    """The `data` of one event; comments, ids and retry hints are skipped."""
    if event.startswith(b"data:") and b"\n" not in event:   # the common case: one data line
        return event[6:] if event[5:6] == b" " else event[5:]
    data = [line[6:] if line[5:6] == b" " else line[5:] for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(data) if data else None


def general_payloads(events: bytes) -> list[bytes]:
    """The `data` of each event in `events` (whole events, the last blank line cut off)."""
    return [p for p in map(_payload, events.split(b"\n\n")) if p is not None]


def payloads(events: bytes) -> list[bytes]:
    """general_payloads, fast where every event is one `data: ` line, as vendors send them:
    one split instead of a call per event. Any other line leaves a newline in a payload
    (looked for in the payloads joined: a search by memchr, where counting the newlines
    went byte by byte)."""
    if events.startswith(b"data: "):
        batch = events[6:].split(b"\n\ndata: ")
        if b"\n" not in b"".join(batch):
            return batch
    return general_payloads(events)


class EventBatches:
    """Per network read, the payloads of the events that read completed. While it waits for
    the next read it keeps only an unfinished event: a held stream holds no more. A class,
    not an async generator: the loop's hooks register every async generator in a weak set
    on its first step and finalize it after, a cost per stream that buys nothing here."""

    __slots__ = ("_reader", "_buf", "_ended")

    def __init__(self, reader: StreamReader) -> None:
        self._reader, self._buf, self._ended = reader, b"", False

    def __aiter__(self) -> EventBatches:
        return self

    async def __anext__(self) -> list[bytes]:
        while not self._ended:
            chunk = await self._reader.readany()
            if not chunk:
                self._ended = True
                buf, self._buf = self._buf, b""
                tail = _payload(buf.strip(b"\n")) if buf.strip() else None
                if tail is not None:
                    return [tail]
                break
            buf = self._buf + chunk
            chunk = b""
            if b"\r" in buf:
                buf = buf.replace(b"\r\n", b"\n")
            end = buf.rfind(b"\n\n")
            if end < 0:
                if len(buf) > MAX_EVENT_BYTES:
                    raise SSEError(f"an event of over {MAX_EVENT_BYTES} bytes")
                self._buf = buf
                continue
            batch = payloads(buf[:end])
            self._buf = buf[end + 2:]
            if batch:
                return batch
        raise StopAsyncIteration


def encode(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"
