"""The adapter contract: how the proxy speaks one vendor's dialect.

An adapter is built once per provider entry whenever routes.yaml is loaded, so URLs,
auth headers and field tables are computed then, not per request. Per request it does
four things, none of which touch the network:

- `build_body(endpoint, body, vendor_model)`: the OpenAI-dialect body -> the vendor's body,
  field by field as the adapter's field table decides (providers/fields.py): passed,
  translated where the meaning is kept, dropped with a note where it is only a hint, and
  refused (`Unsupported`) where dropping it would change the answer. Never dropped silently.
- `openai_response(endpoint, data, fill)` / `openai_chunk(endpoint, data, fill)`: the vendor's
  JSON (whole answer, or one SSE event) -> OpenAI's shape, in place: the vendor's own quirks
  (`fix_response` / `fix_chunk`), then what OpenAI requires and the vendor left out (`Fill`).
- `map_error(status, headers, body)`: the vendor's error in its own shape -> an
  `UpstreamError` saying what the client should see and what the proxy should do next.

The subclass for an OpenAI-compatible vendor is a few lines: its paths and field table.
"""

from __future__ import annotations

import logging
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import orjson

from providers.fields import (ANSWER_FIELDS, CHAT_PREFIX, COMPLETIONS, MANY_CHOICES, ONE_OF, OPENAI_FIELDS, PASS,
                             PROMPT_SHAPES, REFUSED, TEXT, TEXT_PROMPT, TOKEN_PROMPTS, TOKENS, Decision, decisions,
                             is_off, prompt_shape)
from providers.failures import UpstreamError, classify
from router.errors import RouterError
from router.schema import Endpoint

log = logging.getLogger("router.providers")

def body_bytes(body: Mapping[str, Any]) -> bytes:
    """A vendor request body as JSON, copied into a bytes object of its own length: the body
    is held for the whole attempt (a stream's too), and orjson's own result keeps its whole
    write buffer allocated (4 KiB for a small body, several times the JSON for a large one)."""
    return bytes(memoryview(orjson.dumps(body)))


class Unsupported(RouterError):
    """The vendor cannot take a field without changing the answer: next target, or 400."""

    def __init__(self, provider: str, field: str, why: str) -> None:
        super().__init__(400, f"Provider '{provider}' cannot take '{field}': {why}.", param=field,
                         code="unsupported_parameter")


class Fill:
    """What OpenAI requires and a vendor may leave out, made once per answer, so every chunk
    of a stream (and every part of a split request) carries the same `id` and `created`.
    Made on first use: most vendors send both, and then the answer never pays for them."""

    __slots__ = ("_prefix", "_id", "_created")

    def __init__(self, endpoint: str) -> None:
        self._prefix = "chatcmpl-" if endpoint == Endpoint.CHAT else "cmpl-"
        self._id: str | None = None
        self._created: int | None = None

    @classmethod
    def new(cls, endpoint: str) -> Fill:
        return cls(endpoint)

    @property
    def id(self) -> str:
        if self._id is None:
            # ids only need to be unique, not secret: no system call per answer (random
            # reseeds itself in each forked worker)
            self._id = f"{self._prefix}{random.getrandbits(96):024x}"
        return self._id

    @property
    def created(self) -> int:
        if self._created is None:
            self._created = int(time.time())
        return self._created


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    name: str
    base_url: str
    api_key: str | None = field(repr=False)
    options: Mapping[str, Any]


class Adapter:
    """OpenAI's own dialect; vendors override the class attributes and the few hooks they need."""

    kind: ClassVar[str] = "openai"
    paths: ClassVar[dict[str, str]] = {Endpoint.COMPLETIONS: "/completions", Endpoint.CHAT: "/chat/completions"}
    # The field table, per endpoint: what the vendor takes as OpenAI sends it, what it takes
    # under another name, and what `translate` rewrites; every other field follows the
    # defaults in providers/fields.py (refused unless off, or dropped as a hint).
    takes: ClassVar[dict[str, frozenset[str]]] = dict(OPENAI_FIELDS)
    renames: ClassVar[dict[str, dict[str, str]]] = {COMPLETIONS: {"max_completion_tokens": "max_tokens"}}
    translates: ClassVar[dict[str, dict[str, str]]] = {}
    # The shapes of `prompt` one upstream call takes. A batch the vendor cannot take whole is
    # split, one call per prompt (router/split.py), where it takes each prompt alone; refused
    # naming `prompt` where it does not (token ids to a vendor that takes only strings).
    prompt_shapes: ClassVar[frozenset[str]] = PROMPT_SHAPES
    # True where the vendor's schema has additionalProperties: unknown (non-OpenAI) fields pass.
    open_schema: ClassVar[bool] = True
    options_allowed: ClassVar[frozenset[str]] = frozenset()
    # How the vendor continues a chat's trailing assistant message (see `continue_chat`); None
    # where its documentation promises no way, so a broken chat stream is not resumed there.
    chat_prefix: ClassVar[str | None] = None

    def __init__(self, settings: ProviderSettings) -> None:
        self.name = settings.name
        self.options = dict(settings.options)
        unknown = set(self.options) - self.options_allowed
        if unknown:
            raise ValueError(f"unknown option(s) for kind {self.kind}: {', '.join(sorted(unknown))}")
        base = settings.base_url.rstrip("/")
        self.urls = {ep: base + path + self.query_string() for ep, path in self.paths.items()}
        self.headers: dict[str, str] = {"Content-Type": "application/json"}
        if settings.api_key:
            self.headers["Authorization"] = f"Bearer {settings.api_key}"
        self.has_key = bool(settings.api_key)
        self.fields = {ep: self.field_table(ep) for ep in self.paths}
        self.prefix_style: str | None = self.options.get("chat_prefix", self.chat_prefix)
        if self.prefix_style not in CHAT_PREFIX_STYLES:
            raise ValueError(f"chat_prefix must be one of: {', '.join(s for s in CHAT_PREFIX_STYLES if s)}")
        self.can = {ep: self.capabilities(ep, self.prefix_style) for ep in self.paths}
        # Every vendor key the table holds (set by the table once all adapters exist): none
        # may reach a client or a log, even when a vendor's error message repeats it.
        self.secrets: tuple[str, ...] = (settings.api_key,) if settings.api_key else ()

    @classmethod
    def capabilities(cls, endpoint: str, chat_prefix: str | None = None) -> frozenset[str]:
        """What this vendor can do on `endpoint` (providers/fields.py CAPABILITIES), from what
        it declares: its field table, its prompt shapes, its way of continuing a message."""
        can: set[str] = set()
        if cls.field_table(endpoint)["n"].verdict != REFUSED:
            can.add(MANY_CHOICES)
        if endpoint == COMPLETIONS:
            if TEXT in cls.prompt_shapes:
                can.add(TEXT_PROMPT)
            if TOKENS in cls.prompt_shapes:
                can.add(TOKEN_PROMPTS)
        elif (chat_prefix or cls.chat_prefix) is not None:
            can.add(CHAT_PREFIX)
        return frozenset(can)

    def continue_chat(self, body: dict[str, Any]) -> dict[str, Any]:
        """A vendor body whose last message is the assistant's partial answer, marked so the
        vendor continues that message rather than answering after it."""
        if self.prefix_style == "continue_final_message":   # vLLM, SGLang
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        elif self.prefix_style == "prefix":                 # Mistral-style: the message carries the flag
            body["messages"][-1] = {**body["messages"][-1], "prefix": True}
        return body

    @classmethod
    def field_table(cls, endpoint: str) -> dict[str, Decision]:
        """This vendor's decision on every field of `endpoint` (built once per config load)."""
        return decisions(cls.takes[endpoint], cls.renames.get(endpoint, {}), cls.translates.get(endpoint, {}))

    # --- requests ---------------------------------------------------------------------------

    def query_string(self) -> str:
        return ""

    def build_body(self, endpoint: str, body: dict[str, Any], vendor_model: str,
                   want_usage: bool, dropped: list[str] | None = None) -> dict[str, Any]:
        """A new dict for the vendor; `body` itself is shared across attempts and left alone.
        Hint fields left out are appended to `dropped`, for the caller to count."""
        table = self.fields[endpoint]
        out: dict[str, Any] = {}
        renamed: list[tuple[str, Any]] = []
        for name, value in body.items():
            d = table.get(name)
            if d is PASS:
                out[name] = value
            elif d is None:
                if not self.open_schema:
                    raise Unsupported(self.name, name, f"{self.kind} does not accept unknown fields")
                out[name] = value
            elif d.to is not None:
                renamed.append((d.to, value))
            elif d.verdict == REFUSED:
                if not is_off(value, ANSWER_FIELDS.get(name, ())):
                    raise Unsupported(self.name, name, f"{self.kind} does not support it")
            elif d.how:
                out[name] = value   # `translate` rewrites it
            else:
                log.info("dropped hint field %r for provider %s", name, self.name)
                if dropped is not None:
                    dropped.append(name)
        for name, value in renamed:   # the OpenAI name wins over the vendor's own (max_completion_tokens)
            out[name] = value
        out["model"] = vendor_model
        if out.get("stream") and want_usage:
            opts = dict(out.get("stream_options") or {})
            opts["include_usage"] = True
            out["stream_options"] = opts
        return self.translate(endpoint, out)

    def translate(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """Vendor-specific rewrites of an already filtered body."""
        return body

    def split_prompt(self, endpoint: str, body: dict[str, Any]) -> list[Any] | None:
        """The prompts of a batch this vendor takes one per call (None: one call takes the body)."""
        if endpoint != COMPLETIONS:
            return None
        prompt = body.get("prompt")
        shape = prompt_shape(prompt)
        if shape in self.prompt_shapes:
            return None
        if prompt and ONE_OF.get(shape) in self.prompt_shapes:
            return list(prompt)
        takes = " or ".join(sorted(self.prompt_shapes))
        raise Unsupported(self.name, "prompt", f"{self.kind} takes a prompt as {takes}, not {shape}")

    # --- answers ----------------------------------------------------------------------------

    def fix_response(self, endpoint: str, data: dict[str, Any]) -> None:
        """The vendor's own quirks in a whole answer, undone in place."""

    def fix_chunk(self, endpoint: str, data: dict[str, Any]) -> None:
        """The vendor's own quirks in one stream event, undone in place; on the per-chunk path, keep it cheap.
        Never read or change a choice's text here: the relay shapes events that differ only in
        their text as bytes, from one that came through here (router/event_template.py)."""

    def openai_response(self, endpoint: str, data: dict[str, Any], fill: Fill) -> None:
        """A whole answer as OpenAI's schema requires it: `id`, `created`, each choice's
        `logprobs` (null when not asked for) and a chat message's `refusal` (null)."""
        self.fix_response(endpoint, data)
        if "id" not in data:
            data["id"] = fill.id
        if "created" not in data:
            data["created"] = fill.created
        chat = endpoint == Endpoint.CHAT
        for choice in data["choices"]:
            if not isinstance(choice, dict):
                continue
            if "logprobs" not in choice:
                choice["logprobs"] = None
            message = choice.get("message") if chat else None
            if isinstance(message, dict) and "refusal" not in message:
                message["refusal"] = None

    def openai_chunk(self, endpoint: str, data: dict[str, Any], fill: Fill) -> None:
        """One stream event as OpenAI's schema requires it: the answer's one `id` and `created`,
        and a text choice's `logprobs`. The per-chunk path: plain dict operations only."""
        self.fix_chunk(endpoint, data)
        if "id" not in data:
            data["id"] = fill.id
        if "created" not in data:
            data["created"] = fill.created
        if endpoint == Endpoint.COMPLETIONS:
            for choice in data.get("choices") or ():
                if "logprobs" not in choice:
                    choice["logprobs"] = None

    # --- errors -----------------------------------------------------------------------------

    def error_fields(self, status: int, body: Any) -> tuple[str | None, str | None, str | None]:
        """(message, code, param) from the vendor's error body; OpenAI's `{error: {...}}` here."""
        if isinstance(body, dict):
            err = body.get("error")
            if isinstance(err, dict):
                return _str(err.get("message")), _str(err.get("code")) or _str(err.get("type")), _str(err.get("param"))
            if isinstance(err, str):
                return err, _str(body.get("code")), None
            if isinstance(body.get("message"), str):
                return body["message"], _str(body.get("code")), None
        return None, None, None

    def request_headers(self, request_id: str) -> dict[str, str]:
        """One call's headers: the adapter's own (auth, content type) and the request's id."""
        return {**self.headers, "X-Request-Id": request_id}

    def map_error(self, status: int, headers: Mapping[str, str], raw: bytes) -> UpstreamError:
        body: Any = None
        if raw[:1] in (b"{", b"["):
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = None
        message, code, param = self.error_fields(status, body)
        if message:
            message = self.scrub(message[:MAX_MESSAGE_CHARS])
        if param:
            param = self.scrub(param[:MAX_MESSAGE_CHARS])
        return classify(self.name, status, message, code, param, headers.get("Retry-After"))

    def scrub(self, text: str) -> str:
        """`text` with every configured vendor key and anything bearer-token-like blanked."""
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return _TOKENISH.sub(REDACTED, text)


# The ways vendors take an assistant prefix to continue (None: not at all).
CHAT_PREFIX_STYLES = (None, "continue_final_message", "prefix")

REDACTED = "[redacted]"
# What a vendor's message may echo of a credential: an Authorization value, an sk-/pk- style
# key, a JWT. Over-blanking a word costs a clearer message; under-blanking leaks a key.
_TOKENISH = re.compile(r"(?i)\bbearer\s+[^\s\"',;]+|\b(?:sk|pk|rk)-[A-Za-z0-9_\-]{6,}"
                       r"|\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-.]*")
MAX_MESSAGE_CHARS = 1000


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else (str(value) if isinstance(value, int) else None)
