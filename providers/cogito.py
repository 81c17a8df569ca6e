"""Cogito (Decart): OpenAI-like, with `ignore_eos`, catalog-suffixed model ids and
`cached_input_tokens` in chat usage."""

from __future__ import annotations

from typing import Any

from providers.base import Adapter, Unsupported
from providers.fields import CHAT, COMPLETIONS
from router.schema import Endpoint


_ROLES = ("system", "user", "assistant", "tool")
# What both of Cogito's documented request bodies take, besides prompt/messages.
_SAMPLING = frozenset({"model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "stop",
                       "presence_penalty", "frequency_penalty"})


class CogitoAdapter(Adapter):
    kind = "cogito"
    paths = {Endpoint.COMPLETIONS: "/v1/completions", Endpoint.CHAT: "/v1/chat/completions"}
    takes = {
        COMPLETIONS: _SAMPLING | {"prompt", "ignore_eos"},
        CHAT: _SAMPLING | {"tools", "response_format"},
    }
    renames = {COMPLETIONS: {"max_completion_tokens": "max_tokens"}, CHAT: {"max_completion_tokens": "max_tokens"}}
    translates = {CHAT: {"messages": "`developer` as `system`, text parts joined",
                         "tool_choice": "passed; `required` refused"}}

    def translate(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """Cogito's chat schema takes roles system/user/assistant/tool, string content (never
        null), and `tool_choice` as auto, none or an object."""
        if endpoint == Endpoint.CHAT:
            body["messages"] = [self._message(i, m) for i, m in enumerate(body["messages"])]
            if body.get("tool_choice") == "required":
                raise Unsupported(self.name, "tool_choice", "cogito takes tool_choice auto, none or a named "
                                  "function, not required")
        return body

    def _message(self, i: int, m: dict[str, Any]) -> dict[str, Any]:
        role, content = m.get("role"), m.get("content")
        if role not in _ROLES and role != "developer":
            raise Unsupported(self.name, f"messages[{i}].role", f"cogito takes the roles {', '.join(_ROLES)}")
        if role == "developer" or isinstance(content, list) or (content is None and "content" in m):
            m = dict(m)
            m["role"] = "system" if role == "developer" else role
            if content is None:  # an assistant's tool-call turn: OpenAI's null, Cogito's string
                m["content"] = ""
            if isinstance(content, list):
                if any(part.get("type") != "text" for part in content):
                    raise Unsupported(self.name, f"messages[{i}].content", "cogito takes text only")
                m["content"] = "".join(str(part.get("text", "")) for part in content)
        return m

    def fix_response(self, endpoint: str, data: dict[str, Any]) -> None:
        _cached_tokens(data.get("usage"))

    def fix_chunk(self, endpoint: str, data: dict[str, Any]) -> None:
        usage = data.get("usage")
        if usage:
            _cached_tokens(usage)


def _cached_tokens(usage: Any) -> None:
    """Cogito reports `cached_input_tokens`; OpenAI's name is prompt_tokens_details.cached_tokens."""
    if isinstance(usage, dict) and "cached_input_tokens" in usage:
        usage.setdefault("prompt_tokens_details", {"cached_tokens": usage["cached_input_tokens"]})
