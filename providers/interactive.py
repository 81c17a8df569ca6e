"""Interactive AI: OpenAI's shape with numbers as doubles and its own `provider` field.

Its `provider` names Interactive's upstream, which would collide with ours, so it moves
to `upstream_provider`. Its own `models` fallback list is never sent: the proxy runs the
fallbacks itself, across vendors.
"""

from __future__ import annotations

from typing import Any

from providers.base import COMMON_FIELDS, Adapter
from router.schema import Endpoint

_USAGE = ("prompt_tokens", "completion_tokens", "total_tokens")


class InteractiveAdapter(Adapter):
    kind = "interactive"
    takes = {
        **Adapter.takes,
        Endpoint.COMPLETIONS: COMMON_FIELDS | {"prompt", "best_of", "echo", "n", "logprobs", "logit_bias",
                                               "seed", "suffix", "metadata", "response_format", "user"},
    }

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
