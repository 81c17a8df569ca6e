"""Stream events shaped as bytes from a template give exactly what parsing, patching and
re-encoding gives, or decline: whatever the text, the vendor's JSON encoder or the event;
a burst of them (one network read's events) gives what they give one by one."""

from __future__ import annotations

import json
from typing import Any, Callable

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from router.event_template import BURST, EventTemplate

Encoder = Callable[[Any], bytes]
ENCODERS: dict[str, Encoder] = {
    "orjson": orjson.dumps,
    "python_ascii": lambda o: json.dumps(o).encode(),                     # \u escapes, ", " and ": "
    "python_utf8": lambda o: json.dumps(o, ensure_ascii=False, separators=(",", ":")).encode(),
}


def chat_event(text: str, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-7", "object": "chat.completion.chunk", "created": 1700000000, "model": "vendor-m",
            **extra, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}


def text_event(text: str, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": "cmpl-7", "object": "text_completion", "created": 1700000000, "model": "vendor-m",
            **extra, "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}


def whole_way(raw: bytes) -> bytes:
    """What the relay's full path makes of one event: parsed, patched, re-encoded."""
    o = orjson.loads(raw)
    o["model"] = "public"
    o["provider"] = "vendor"
    return b"data: " + orjson.dumps(o) + b"\n\n"


def taught(raw: bytes, text: str) -> EventTemplate:
    t = EventTemplate()
    t.learn(raw, text, whole_way(raw))
    return t


@settings(max_examples=300, deadline=None)
@given(first=st.text(min_size=1), later=st.text(), encoder=st.sampled_from(sorted(ENCODERS)),
       make=st.sampled_from([chat_event, text_event]))
def test_a_templated_event_is_byte_for_byte_the_whole_way_or_declined(first, later, encoder, make):
    enc = ENCODERS[encoder]
    t = taught(enc(make(first)), first)
    raw = enc(make(later))
    mid = t.text(raw)
    if mid is not None:
        assert t.head + mid + t.tail == whole_way(raw)
        assert mid.decode() == later


PLAIN = ["tok", " and ", "é", "😀 ok", "</script>", "a/b", "{\"x\"", ""]


@pytest.mark.parametrize("later", PLAIN)
@pytest.mark.parametrize("encoder", ["orjson", "python_utf8"])
@pytest.mark.parametrize("make", [chat_event, text_event])
def test_plain_texts_between_the_same_bytes_take_the_template(later, encoder, make):
    enc = ENCODERS[encoder]
    t = taught(enc(make("first words")), "first words")
    raw = enc(make(later))
    mid = t.text(raw)
    if '"' in later:
        assert mid is None, "a quote is escaped: the whole way"
    else:
        assert mid is not None and t.head + mid + t.tail == whole_way(raw)


DECLINED = [
    # (name, first event, its text, later event)
    ("escaped_newline", chat_event("a"), "a", chat_event("line\nnext")),
    ("escaped_backslash", chat_event("a"), "a", chat_event("back\\slash")),
    ("control_character", chat_event("a"), "a", chat_event("bell\x07")),
    ("finish_reason_set", chat_event("a"), "a", chat_event("b", finish="stop")),
    ("an_extra_field", chat_event("a"), "a", chat_event("b", usage={"prompt_tokens": 1})),
    ("text_the_same_as_a_value", chat_event("vendor-m"), "vendor-m", chat_event("b")),
    ("text_the_same_as_a_key", chat_event("index"), "index", chat_event("b")),
    ("escaped_first_text", chat_event("x\ny"), "x\ny", chat_event("b")),
]


@pytest.mark.parametrize(("name", "first", "text", "later"), DECLINED, ids=[d[0] for d in DECLINED])
def test_events_the_template_cannot_vouch_for_go_the_whole_way(name, first, text, later):
    t = taught(orjson.dumps(first), text)
    assert t.text(orjson.dumps(later)) is None


def test_non_ascii_escaped_by_the_vendor_goes_the_whole_way():
    enc = ENCODERS["python_ascii"]
    t = taught(enc(chat_event("first")), "first")
    assert t.text(enc(chat_event("plain"))) is not None
    assert t.text(enc(chat_event("café"))) is None   # sent as caf\u00e9


def test_invalid_utf8_goes_the_whole_way():
    raw = orjson.dumps(chat_event("ab"))
    t = taught(raw, "ab")
    assert t.text(raw.replace(b"ab", b"\xff\xfe")) is None


def test_a_stream_learns_a_bounded_number_of_templates():
    t = EventTemplate()
    for i in range(10):
        raw = orjson.dumps(chat_event("x", extra_field=i))
        t.learn(raw, "vendor-m", whole_way(raw))   # ambiguous every time: nothing kept
    raw = orjson.dumps(chat_event("plain"))
    t.learn(raw, "plain", whole_way(raw))
    assert t.text(raw) is None, "past its learning budget a template learns nothing more"


def one_by_one_tokens(texts: list[bytes]) -> int:
    return sum((len(m.decode()) + 3) // 4 for m in texts)


# Plain texts most of the time (so that bursts happen), anything now and then.
TEXTS = st.one_of(st.text(alphabet=st.characters(blacklist_characters='"\\', blacklist_categories=("Cc", "Cs"))),
                  st.text())


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(TEXTS, max_size=8), after=st.sampled_from([[], ["stop"], ["stop", "[DONE]"]]),
       encoder=st.sampled_from(sorted(ENCODERS)), make=st.sampled_from([chat_event, text_event]))
def test_a_burst_gives_what_its_events_give_one_by_one(texts, after, encoder, make):
    enc = ENCODERS[encoder]
    t = taught(enc(make("first words")), "first words")
    batch = [enc(make(x)) for x in texts]
    batch += [b"[DONE]" if a == "[DONE]" else enc(make("last", finish=a)) for a in after]
    one = [t.text(raw) for raw in batch]
    got = t.burst(batch, 0)
    n = len(texts)   # what comes after them is never the template's: a finished choice, [DONE]
    if n >= BURST and all(m is not None for m in one[:n]):
        assert got is not None
        cut, tokens, j = got
        assert (cut, tokens, j) == (one[:n], one_by_one_tokens(one[:n]), n)
        assert t.head + t.between.join(cut) + t.tail == b"".join(whole_way(raw) for raw in batch[:n])
    elif got is not None:   # never more than one by one would take
        cut, tokens, j = got
        assert j >= BURST and all(m is not None for m in one[:j])
        assert (cut, tokens) == (one[:j], one_by_one_tokens(one[:j]))


def events(*texts: str) -> list[bytes]:
    return [orjson.dumps(chat_event(x)) for x in texts]


def burst_of(batch: list[bytes]) -> tuple[list[bytes], int, int] | None:
    return taught(orjson.dumps(chat_event("first words")), "first words").burst(batch, 0)


TEMPLATE = taught(orjson.dumps(chat_event("first words")), "first words")
NOT_BURSTS = [
    # (name, batch)
    ("fewer_than_a_burst", events("a", "b")),
    ("an_escaped_text_between", events("a", "x\ny", "b", "c")),
    ("a_control_character_between", events("a", "b\x07", "c", "d")),
    ("another_id_between", [*events("a"), *(e.replace(b"chatcmpl-7", b"chatcmpl-8") for e in events("b")), *events("c", "d")]),
    ("an_extra_field_between", [*events("a"), orjson.dumps(chat_event("b", extra=1)), *events("c", "d")]),
    ("a_character_split_across_two_events",
     [*events("a"), *(e.replace(b"XX", b"\xc3") for e in events("XX")), *(e.replace(b"YY", b"\xa9") for e in events("YY")),
      *events("d")]),
    ("invalid_utf8_between", [*events("a", "b"), *(e.replace(b"ZZ", b"\xff") for e in events("ZZ")), *events("d")]),
    ("a_template_closing_quote_doubling_as_its_opening", [*events("a"), TEMPLATE.pre + TEMPLATE.suf[1:], *events("c", "d")]),
]


@pytest.mark.parametrize(("name", "batch"), NOT_BURSTS, ids=[n for n, _ in NOT_BURSTS])
def test_a_burst_with_an_event_the_template_cannot_vouch_for_is_not_taken(name, batch):
    assert burst_of(batch) is None


def test_a_burst_stops_before_a_finished_choice_and_done():
    batch = [*events("a", "b", "c"), orjson.dumps(chat_event("d", finish="stop")), b"[DONE]"]
    assert burst_of(batch) == ([b"a", b"b", b"c"], 3, 3)


def test_a_burst_estimates_tokens_per_event_whatever_the_text_length():
    texts = ["x" * 300, "é" * 5, "ab", "", "abcde"]
    got = burst_of(events(*texts))
    assert got is not None
    assert got[1] == 75 + 2 + 1 + 0 + 2 == one_by_one_tokens([x.encode() for x in texts])
