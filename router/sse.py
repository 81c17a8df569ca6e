"""Server-Sent Events, read and written on the per-chunk path: keep every step here thin.

Reading goes line by line over aiohttp's buffered reader, so an event split across TCP
segments (or a multi-byte character split across them) is reassembled before parsing.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

import orjson
from aiohttp import StreamReader

DONE = b"data: [DONE]\n\n"


async def events(reader: StreamReader) -> AsyncIterator[bytes]:
    """Yield the `data` payload of each event; comments, ids and retry hints are skipped."""
    data: list[bytes] = []
    async for line in reader:
        line = line.rstrip(b"\r\n")
        if not line:
            if data:
                yield data[0] if len(data) == 1 else b"\n".join(data)
                data = []
        elif line.startswith(b"data:"):
            data.append(line[6:] if line[5:6] == b" " else line[5:])
    if data:
        yield data[0] if len(data) == 1 else b"\n".join(data)


def encode(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"
