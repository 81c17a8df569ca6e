"""Interactive AI: OpenAI's shape with numbers as doubles and its own `provider` field.

Its `provider` names Interactive's upstream, which would collide with ours, so it moves
to `upstream_provider`. Its own `models` fallback list is never sent: the proxy runs the
fallbacks itself, across vendors.
"""

from __future__ import annotations

from typing import Any

from providers.base import Adapter
from providers.fields import CHAT, COMPLETIONS, chat_like

_USAGE = ("prompt_tokens", "completion_tokens", "total_tokens")
_COMPLETION_FIELDS = frozenset({
    "model", "prompt", "stream", "stream_options", "max_tokens", "temperature", "top_p", "n", "best_of", "echo",
    "logprobs", "logit_bias", "seed", "suffix", "stop", "presence_penalty", "frequency_penalty", "user",
    "metadata", "response_format",
})


class InteractiveAdapter(Adapter):
    kind = "interactive"
    # The chat path is not in Interactive's pages: assumed OpenAI's, taking what its
    # completions take, `max_tokens` its only token limit.
    takes = {COMPLETIONS: _COMPLETION_FIELDS, CHAT: chat_like(_COMPLETION_FIELDS)}
    renames = {COMPLETIONS: {"max_completion_tokens": "max_tokens"}, CHAT: {"max_completion_tokens": "max_tokens"}}

    def fix_response(self, endpoint: str, data: dict[str, Any]) -> None:
        _integers(data)

    fix_chunk = fix_response


def _integers(data: dict[str, Any]) -> None:
    if "provider" in data:
        data["upstream_provider"] = data.pop("provider")
    if isinstance(data.get("created"), float):
        data["created"] = int(data["created"])
    for choice in data.get("choices") or ():
        if isinstance(choice.get("index"), float):
            choice["index"] = int(choice["index"])
    usage = data.get("usage")
    if isinstance(usage, dict):
        for k in _USAGE:
            if isinstance(usage.get(k), float):
                usage[k] = int(usage[k])
