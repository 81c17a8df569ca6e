"""A stream's text events shaped as bytes, from one event the relay already shaped.

Most events of a stream are the same bytes but for a choice's text: the same id, created,
model and `"finish_reason":null` around a few characters. Parsing, patching and
re-encoding each of them was 29% of a 20-event stream's instructions. Once one such event has
gone the whole way (parsed, fixed by its adapter, re-encoded), its bytes before and after
the text are kept, on both sides; a later event with the same bytes around a plain text
(no quote, backslash or control character, valid UTF-8) is answered with the kept bytes
around its text. That is byte for byte what the whole way gives: the parsed object is the
same but for that string, which orjson writes as it is. Any other event goes the whole
way, and may teach a new template (a stream's first text event often carries its role).
A burst of such events (several in one network read) is checked and cut with a few calls
that each go over the whole run in C, not several calls per event.

This relies on one rule for adapters (`Adapter.fix_chunk`): a chunk's fix never depends
on a choice's text nor changes it.
"""

from __future__ import annotations

from itertools import repeat
from operator import add, floordiv, itemgetter

import orjson

_UNPLAIN = b'"\\' + bytes(range(0x20))   # what a JSON encoder may escape in a string
_TOKENS = bytes((n + 3) // 4 for n in range(256))   # a stream text's tokens, estimated by its length
# New templates a stream part may learn: enough for a first event that differs from the
# rest, small enough that a vendor whose events never repeat costs nothing noticeable.
LEARNS = 4
NOTHING = 1 << 62   # a template's size before it learned anything
# Below this many events in a row, one by one costs less than setting up a burst.
BURST = 3


def plain(text: bytes) -> bool:
    """No quote, backslash or control character: bytes every JSON encoder writes as they are."""
    return len(text.translate(None, _UNPLAIN)) == len(text)


class EventTemplate:
    """The bytes around one event's text, as the vendor sent them and as the client gets them."""

    __slots__ = ("pre", "suf", "head", "tail", "start", "end", "size", "learns", "cut", "sep", "between")

    def __init__(self) -> None:
        self.pre = self.suf = self.head = self.tail = b""
        self.start = self.end = 0   # len(pre), len(suf)
        self.size = NOTHING         # len(pre) + len(suf); no event is as long as NOTHING
        self.learns = LEARNS
        self.cut = itemgetter(slice(0, 0))   # an event's text: data[start:-end]
        self.sep = self.between = b""       # suf + \n + pre and tail + head: between two texts

    def learn(self, data: bytes, text: str, out: bytes) -> None:
        """`data` (one event's JSON) was shaped into `out` (its whole SSE event), and `text`
        is its one choice's text: keep what surrounds that text, where it is unambiguous."""
        if not self.learns:
            return
        self.learns -= 1
        enc = orjson.dumps(text)
        if not plain(enc[1:-1]):
            return   # an escaped text may be written differently by the vendor
        i = data.find(enc)
        j = out.find(enc)
        if i < 0 or j < 0 or data.find(enc, i + 1) >= 0 or out.find(enc, j + 1) >= 0:
            return
        self.pre, self.suf = data[:i + 1], data[i + len(enc) - 1:]
        self.head, self.tail = out[:j + 1], out[j + len(enc) - 1:]
        self.start, self.end = len(self.pre), len(self.suf)
        self.size = self.start + self.end
        self.cut = itemgetter(slice(self.start, -self.end))
        self.sep = self.suf + b"\n" + self.pre
        self.between = self.tail + self.head

    def text(self, data: bytes) -> bytes | None:
        """The text of `data` if it is the template's event but for a plain text, else None."""
        n = len(data)
        if n < self.size or not data.startswith(self.pre) or not data.endswith(self.suf):
            return None
        mid = data[self.start:n - self.end]
        if not plain(mid):
            return None
        if not mid.isascii():
            try:
                mid.decode()
            except UnicodeDecodeError:
                return None
        return mid

    def burst(self, batch: list[bytes], i: int) -> tuple[list[bytes], int, int] | None:
        """The texts of the template's events from batch[i] to its last such event, with the
        tokens they are estimated at and the index after them; None where fewer than BURST are,
        or an event between is not one (the caller goes one by one). A burst is checked whole:
        its events joined equal the template's bytes joined around their texts."""
        j = len(batch)
        suf = self.suf
        while j > i and not batch[j - 1].endswith(suf):   # a run is followed by a few events at most
            j -= 1
        run = batch[i:j]
        if len(run) < BURST:
            return None
        texts = list(map(self.cut, run))
        if b"\n".join(run) != self.pre + self.sep.join(texts) + suf:
            return None
        joined = b"".join(texts)
        if not plain(joined):
            return None
        if joined.isascii():
            chars = list(map(len, texts))
        else:
            try:   # each text on its own: two halves of a character in two events are not one
                chars = list(map(len, list(map(bytes.decode, texts))))
            except UnicodeDecodeError:
                return None
        try:   # per event, as one by one: (len + 3) // 4, by table where every length fits a byte
            tokens = sum(bytes(chars).translate(_TOKENS))
        except ValueError:
            tokens = sum(map(floordiv, map(add, chars, repeat(3)), repeat(4)))
        return texts, tokens, j
