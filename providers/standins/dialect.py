"""How a stand-in shapes its bodies. The defaults are OpenAI's; each vendor overrides what differs.

Keeping every body in one overridable place means a vendor module reads as a list of its
quirks (ids, number types, extra fields, error shapes) rather than a copy of a server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from providers.standins.answers import Answer, compose
from providers.standins.base import Fail, Reply

# Default human-readable messages; dialects reuse them inside their own error shapes.
MESSAGES: dict[str, str] = {
    "model_not_found": "The model `{model}` does not exist.",
    "context_length": (
        "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens "
        "(8000 in the prompt, 1000 for the completion). Please reduce the length of the prompt or completion."
    ),
    "rate_limit": "Rate limit reached for requests. Please try again later.",
    "server_error": "The server had an error while processing your request.",
    "auth": "Incorrect or missing API key.",
    "bad_request": "Invalid value for `{param}`.",
    "not_found": "Unknown request URL: {path}.",
}


@dataclass
class Call:
    """One request being answered: what every body builder needs to know about it."""

    kind: str
    op: str  # "completions" or "chat"
    path: str
    body: dict[str, Any]
    request_id: str
    created: int

    @property
    def model(self) -> str:
        model = self.body.get("model")
        return model if isinstance(model, str) else ""

    @property
    def stream(self) -> bool:
        return self.body.get("stream") is True

    @property
    def include_usage(self) -> bool:
        options = self.body.get("stream_options")
        return isinstance(options, dict) and options.get("include_usage") is True

    @property
    def last_role(self) -> str | None:
        """The role of a chat's last message: `tool` when a tool's result is being answered."""
        messages = self.body.get("messages")
        last = messages[-1] if isinstance(messages, list) and messages else None
        return last.get("role") if isinstance(last, dict) else None

    def prompts(self) -> list[str]:
        """What each prompt says: each prompt of a batch, or the last user (or tool) message."""
        if self.op == "chat":
            for message in reversed(self.body.get("messages") or []):
                if isinstance(message, dict) and message.get("role") in ("user", "tool"):
                    return [_text_of(message.get("content"))]
            return [""]
        prompt = self.body.get("prompt")
        if isinstance(prompt, str):
            return [prompt]
        if isinstance(prompt, list) and prompt:
            if all(isinstance(p, str) for p in prompt):
                return list(prompt)
            if all(isinstance(p, list) for p in prompt):
                return [f"<{len(p)} tokens>" for p in prompt]
            return [f"<{len(prompt)} tokens>"]
        return [""]

    def message(self, kind: str, param: str | None = None) -> str:
        return MESSAGES[kind].format(model=self.model, param=param or "body", path=self.path)


def split_text(text: str, pieces: int) -> list[str]:
    """`text` cut into `pieces` nearly equal parts (some empty when the text is short)."""
    pieces = max(1, pieces)
    bounds = [round(i * len(text) / pieces) for i in range(pieces + 1)]
    return [text[bounds[i] : bounds[i + 1]] for i in range(pieces)]


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class Dialect:
    """OpenAI's dialect; subclasses change only what their vendor does differently."""

    kind: ClassVar[str] = "openai"
    prefix: ClassVar[str] = "/v1"  # server path before /completions and /chat/completions
    model_required: ClassVar[bool] = True
    # The request fields, beyond plain text generation, the vendor's contract takes per
    # operation and the stand-in honours (see answers.py); others are ignored.
    features: ClassVar[dict[str, frozenset[str]]] = {
        "completions": frozenset({"n"}),
        "chat": frozenset({"n", "tools", "response_format"}),
    }
    # A tool-call message's `content`: OpenAI sends null; a vendor whose schema types it
    # a string sends "".
    no_content: ClassVar[str | None] = None
    statuses: ClassVar[dict[str, int]] = {
        "model_not_found": 404,
        "context_length": 400,
        "rate_limit": 429,
        "server_error": 500,
        "auth": 401,
        "bad_request": 400,
        "not_found": 404,
    }
    codes: ClassVar[dict[str, str | None]] = {
        "model_not_found": "model_not_found",
        "context_length": "context_length_exceeded",
        "rate_limit": "rate_limit_exceeded",
        "server_error": None,
        "auth": "invalid_api_key",
        "bad_request": None,
        "not_found": None,
    }
    types: ClassVar[dict[str, str]] = {
        "rate_limit": "requests",
        "server_error": "server_error",
        "auth": "invalid_request_error",
    }

    def paths(self) -> dict[str, str]:
        return {"completions": f"{self.prefix}/completions", "chat": f"{self.prefix}/chat/completions"}

    # --- the vendor's own request validation, run before anything scripted --------------------

    def check(self, call: Call) -> Fail | None:
        body = call.body
        if self.model_required and not isinstance(body.get("model"), str):
            return Fail("bad_request", param="model")
        if call.op == "chat":
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                return Fail("bad_request", param="messages")
            if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
                return Fail("bad_request", param="messages")
        elif not isinstance(body.get("prompt"), (str, list)):
            return Fail("bad_request", param="prompt")
        return None

    # --- errors ------------------------------------------------------------------------------

    def error(self, call: Call, kind: str, param: str | None) -> tuple[int, dict[str, Any]]:
        """Status and JSON body for an error kind (every kind but plain_502)."""
        if kind == "model_not_found":
            param = param or "model"
        error = {
            "message": call.message(kind, param),
            "type": self.types.get(kind, "invalid_request_error"),
            "param": param,
            "code": self.codes.get(kind),
        }
        return self.statuses[kind], {"error": error}

    def error_content_type(self, status: int) -> str:
        return "application/json"

    def headers(self, call: Call, reply: Reply | None) -> dict[str, str]:
        """Extra response headers; `reply` is None on errors."""
        return {}

    # --- success bodies ----------------------------------------------------------------------

    def response_id(self, call: Call) -> str:
        return ("cmpl-" if call.op == "completions" else "chatcmpl-") + call.request_id

    def served_model(self, call: Call) -> str:
        return call.model

    def number(self, value: int) -> int | float:
        """How the dialect writes counts and indexes in JSON."""
        return value

    def usage(self, call: Call, reply: Reply) -> dict[str, Any]:
        return {
            "prompt_tokens": self.number(reply.prompt_tokens),
            "completion_tokens": self.number(reply.completion_tokens),
            "total_tokens": self.number(reply.prompt_tokens + reply.completion_tokens),
        }

    def envelope(self, call: Call, chunk: bool) -> dict[str, Any]:
        """The fields every body and chunk starts with."""
        if call.op == "chat":
            obj = "chat.completion.chunk" if chunk else "chat.completion"
        else:
            obj = "text_completion"
        return {
            "id": self.response_id(call),
            "object": obj,
            "created": self.number(call.created),
            "model": self.served_model(call),
        }

    def extras(self, call: Call) -> dict[str, Any]:
        """Vendor fields added at the top level of every body and chunk."""
        return {}

    def choice_extras(self, call: Call, final: bool) -> dict[str, Any]:
        """Vendor fields added to every choice."""
        return {}

    def unfinished(self, call: Call) -> str | None:
        """`finish_reason` of a chunk that is not the last of its choice."""
        return None

    def answers(self, call: Call, texts: list[str]) -> list[Answer]:
        """The choices for `texts` (one per prompt), as far as this vendor honours the request."""
        return compose(call.body, self.features[call.op], call.prompts(), texts, call.request_id, call.last_role)

    def message(self, answer: Answer) -> dict[str, Any]:
        if not answer.tool_calls:
            return {"role": "assistant", "content": answer.text}
        calls = [{"id": t.id, "type": "function", "function": {"name": t.name, "arguments": t.arguments}}
                 for t in answer.tool_calls]
        return {"role": "assistant", "content": self.no_content, "tool_calls": calls}

    def success(self, call: Call, reply: Reply, answers: list[Answer]) -> dict[str, Any]:
        """The whole non-streaming body, one choice per answer."""
        body = self.envelope(call, chunk=False)
        choices = []
        for index, answer in enumerate(answers):
            choice: dict[str, Any] = {"index": self.number(index)}
            if call.op == "chat":
                choice["message"] = self.message(answer)
            else:
                choice["text"] = answer.text
            choice["finish_reason"] = answer.finish_reason
            choice.update(self.choice_extras(call, final=True))
            choices.append(choice)
        body["choices"] = choices
        body["usage"] = self.usage(call, reply)
        body.update(self.extras(call))
        return body

    def pieces(self, call: Call, answer: Answer, count: int) -> list[str | dict[str, Any]]:
        """What a stream sends of one choice, event by event: text pieces for completions,
        deltas for chat. A tool call streams as OpenAI's does: a first delta with the call's
        id, type and name (arguments ""), then argument fragments, then an empty delta."""
        if call.op == "completions":
            return [*split_text(answer.text, count)]
        if not answer.tool_calls:
            parts = split_text(answer.text, count)
            return [{"role": "assistant", "content": parts[0]}, *({"content": p} for p in parts[1:])]
        deltas: list[str | dict[str, Any]] = []
        for i, t in enumerate(answer.tool_calls):
            head = {"index": i, "id": t.id, "type": "function", "function": {"name": t.name, "arguments": ""}}
            opening: dict[str, Any] = {"tool_calls": [head]}
            if i == 0:
                opening = {"role": "assistant", "content": self.no_content, **opening}
            deltas.append(opening)
            deltas.extend({"tool_calls": [{"index": i, "function": {"arguments": p}}]}
                          for p in split_text(t.arguments, count))
        deltas.append({})
        return deltas

    def chunk(self, call: Call, index: int, piece: str | dict[str, Any], finish: str | None) -> dict[str, Any]:
        """One SSE content event of choice `index`; `finish` is set on the choice's last one."""
        body = self.envelope(call, chunk=True)
        choice: dict[str, Any] = {"index": self.number(index)}
        if call.op == "chat":
            choice["delta"] = piece
        else:
            choice["text"] = piece
        choice["finish_reason"] = finish if finish is not None else self.unfinished(call)
        choice.update(self.choice_extras(call, finish is not None))
        body["choices"] = [choice]
        body.update(self.extras(call))
        return body

    def usage_chunk(self, call: Call, reply: Reply) -> dict[str, Any]:
        """The extra last event sent when `stream_options.include_usage` is true."""
        body = self.envelope(call, chunk=True)
        body["choices"] = []
        body["usage"] = self.usage(call, reply)
        body.update(self.extras(call))
        return body
