"""A body that came whole with its headers is taken at once; anything else is left to the read loop."""

import asyncio
from unittest import mock

import pytest
from aiohttp import ClientPayloadError, StreamReader

from router.bodies import arrived


def reader(chunks: list[bytes], eof: bool, error: BaseException | None = None) -> StreamReader:
    r = StreamReader(mock.Mock(_reading_paused=False), 2 ** 16, loop=asyncio.get_running_loop())
    for c in chunks:
        r.feed_data(c)
    if error is not None:
        r.set_exception(error)
    if eof:
        r.feed_eof()
    return r


@pytest.mark.parametrize("chunks, eof, cap, error, expected", [
    ([b'{"a":', b" 1}"], True, 100, None, b'{"a": 1}'),   # every piece, joined
    ([b"x" * 10], True, 10, None, b"x" * 10),              # exactly the cap
    ([b""], True, 10, None, b""),                           # an empty body is a whole one
    ([b"x" * 11], True, 10, None, None),                    # over the cap: the loop refuses or cuts it
    ([b"partial"], False, 100, None, None),                 # still coming: the loop waits for it
    ([b"partial"], True, 100, ClientPayloadError("cut"), None),   # broken: the loop raises it
])
async def test_arrived_takes_only_a_whole_clean_body_within_the_cap(chunks, eof, cap, error, expected):
    r = reader(chunks, eof, error)
    assert arrived(r, cap) == expected
    if expected is None and error is None:   # nothing was taken: the read loop still gets every byte
        assert r.read_nowait() == b"".join(chunks)
