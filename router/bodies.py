"""Reading a whole body: a client's request, or a vendor's answer or error (under the
attempt's watchdog)."""

from __future__ import annotations

import aiohttp
from aiohttp import StreamReader

from providers.failures import bad_upstream_body
from router.upstream import UpstreamResponse
from router.watchdog import Watchdog

# A whole non-stream answer larger than this is not an answer the proxy will hold.
MAX_ANSWER_BODY = 64 * 1024 * 1024


def arrived(reader: StreamReader, cap: int) -> bytes | None:
    """The whole body when it all came with the headers (most do), within `cap` and without
    an error: taken from the reader at once, not through its async iterator. Else None."""
    if reader.is_eof() and reader.total_bytes <= cap and reader.exception() is None:
        return reader.read_nowait()
    return None


async def read_body(resp: UpstreamResponse, provider: str, wd: Watchdog, hard: float, idle: float,
                    cap: int, cut_ok: bool = False) -> bytes:
    """A whole body under `wd`: silence longer than `idle` between reads (or passing `hard`)
    ends it. Past `cap` bytes it is refused, or with `cut_ok` (an error body, whose status
    says enough) cut short, as is an error body the connection cuts off."""
    content = resp.content
    whole = arrived(content, cap)
    if whole is not None:
        return whole
    loop = wd.loop
    wd.rearm(min(hard, loop.time() + idle))
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in content.iter_any():
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
