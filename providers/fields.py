"""OpenAI's request fields, and the decision each vendor's adapter makes about each one.

Every OpenAI field gets one of four decisions per vendor and endpoint:

- passed: sent as the client wrote it;
- translated: sent in the vendor's terms with the meaning kept (renamed, as Cogito's
  `max_tokens` for `max_completion_tokens`, or rewritten by the adapter's `translate`);
- dropped: a hint (attribution, storage, priority, best-effort determinism): the answer is the
  same without it, so it is left out with a log note and a metric;
- refused: dropping it would change the answer, so a value other than its "off" value moves the
  request to the next target, or answers 400 naming the field.

An adapter declares what its vendor takes (`takes`), renames (`renames`) and rewrites
(`translates`); everything else follows the defaults below. `decisions()` builds the full table
once per adapter class; `render()` writes it as the README's field table (a test keeps the two
equal, so the README cannot drift from the code).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

COMPLETIONS, CHAT = "completions", "chat"   # router.schema.Endpoint's values

PASSED, TRANSLATED, DROPPED, REFUSED = "passed", "translated", "dropped", "refused"

# Fields that change the answer when honoured, with the values that mean "off" (null is always
# one). A vendor that cannot take one may drop it only when it is off.
ANSWER_FIELDS: dict[str, tuple[Any, ...]] = {
    "n": (1,), "best_of": (1,), "echo": (False,), "logprobs": (False,), "top_logprobs": (0,),
    "suffix": (), "logit_bias": ({},), "presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0),
    "response_format": ({"type": "text"},), "tools": ([],), "tool_choice": ("none",),
    "temperature": (), "top_p": (), "stop": ([],), "max_tokens": (), "max_completion_tokens": (),
    "stream_options": (), "audio": (), "functions": ([],), "function_call": ("none",),
}
# Fields that only hint: the answer is the same without them. `seed` is best effort even at
# OpenAI; `parallel_tool_calls` and `reasoning_effort` tune how, not what, a model answers.
HINT_FIELDS = frozenset({"user", "metadata", "store", "service_tier", "prediction", "modalities", "seed",
                         "parallel_tool_calls", "reasoning_effort", "safety_identifier", "prompt_cache_key"})

COMMON_FIELDS = frozenset({"model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "stop",
                           "n", "presence_penalty", "frequency_penalty", "logit_bias", "seed", "user"})
OPENAI_FIELDS: dict[str, frozenset[str]] = {
    COMPLETIONS: COMMON_FIELDS | {"prompt", "best_of", "echo", "logprobs", "suffix"},
    CHAT: COMMON_FIELDS | {"messages", "max_completion_tokens", "logprobs", "top_logprobs", "tools", "tool_choice",
                           "parallel_tool_calls", "response_format", "reasoning_effort", "metadata", "store",
                           "service_tier", "prediction", "modalities"},
}
# Every field either endpoint may carry that an adapter must decide on, even where OpenAI
# defines it only for the other endpoint (a completions request with `tools`).
ALL_FIELDS = OPENAI_FIELDS[COMPLETIONS] | OPENAI_FIELDS[CHAT] | set(ANSWER_FIELDS) | HINT_FIELDS


# What a chat request cannot carry of completions' fields, and what chat adds that completions lack.
COMPLETION_ONLY = frozenset({"prompt", "suffix", "echo", "best_of"})
CHAT_ONLY = frozenset({"messages", "tools", "tool_choice", "parallel_tool_calls", "response_format",
                       "reasoning_effort"})


def chat_like(completion_takes: frozenset[str]) -> frozenset[str]:
    """What a vendor whose chat path is not documented takes there: what its completions take
    (the contract tests derive its chat schema the same way), plus chat's own fields, assumed
    OpenAI's; `top_logprobs` where it takes `logprobs`."""
    out = (completion_takes - COMPLETION_ONLY) | CHAT_ONLY
    return out | {"top_logprobs"} if "logprobs" in out else out


# The shapes a completions `prompt` comes in; an adapter says which one upstream call takes.
TEXT, TEXTS, TOKENS, TOKEN_LISTS = "a string", "a list of strings", "token ids", "a list of token-id lists"
PROMPT_SHAPES = frozenset({TEXT, TEXTS, TOKENS, TOKEN_LISTS})
ONE_OF = {TEXTS: TEXT, TOKEN_LISTS: TOKENS}   # a batch, and the shape of each of its prompts


# What an adapter can do beyond taking a field, per endpoint: what resume and hedging ask of
# a target before sending it anything (Adapter.capabilities), rendered as the README's table.
CHAT_PREFIX = "chat_prefix"       # continues a trailing assistant message (a chat stream's resume)
TEXT_PROMPT = "text_prompt"       # a completions prompt as one string (a completion's resume)
TOKEN_PROMPTS = "token_prompts"   # a completions prompt of token ids
MANY_CHOICES = "n"                # `n` > 1 answered in one call
CAPABILITIES = (CHAT_PREFIX, TEXT_PROMPT, TOKEN_PROMPTS, MANY_CHOICES)


def prompt_shape(prompt: Any) -> str:
    """Which of PROMPT_SHAPES a (validated) prompt is."""
    if isinstance(prompt, str):
        return TEXT
    if prompt and isinstance(prompt[0], int):
        return TOKENS
    if prompt and isinstance(prompt[0], list):
        return TOKEN_LISTS
    return TEXTS


def is_off(value: Any, offs: tuple[Any, ...]) -> bool:
    """Null, or one of `offs` of the same type (so 0 is not False: `logprobs: 0` asks for logprobs)."""
    return value is None or any(type(value) is type(v) and value == v for v in offs)


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: str                 # PASSED, TRANSLATED, DROPPED or REFUSED
    to: str | None = None        # translated by renaming: the vendor's name for the field
    how: str = ""                # translated by the adapter's `translate`: what it does, for the README


PASS = Decision(PASSED)
DROP = Decision(DROPPED)
REFUSE = Decision(REFUSED)


def decisions(takes: frozenset[str], renames: Mapping[str, str], translates: Mapping[str, str]) -> dict[str, Decision]:
    """One endpoint's full table: every field the vendor takes, and every OpenAI field."""
    out = {name: PASS for name in takes}
    for name in ALL_FIELDS - takes:
        out[name] = REFUSE if name in ANSWER_FIELDS else DROP
    for name, to in renames.items():
        out[name] = Decision(TRANSLATED, to=to)
    for name, how in translates.items():
        out[name] = Decision(TRANSLATED, how=how)
    return out


# The README table: (field, the endpoints where OpenAI defines it), in reading order.
ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("prompt", (COMPLETIONS,)), ("messages", (CHAT,)),
    ("max_tokens", (COMPLETIONS, CHAT)), ("max_completion_tokens", (COMPLETIONS, CHAT)),
    ("stop", (COMPLETIONS, CHAT)), ("n", (COMPLETIONS, CHAT)), ("best_of", (COMPLETIONS,)),
    ("logprobs", (COMPLETIONS, CHAT)), ("top_logprobs", (CHAT,)), ("echo", (COMPLETIONS,)),
    ("suffix", (COMPLETIONS,)), ("seed", (COMPLETIONS, CHAT)), ("user", (COMPLETIONS, CHAT)),
    ("temperature", (COMPLETIONS, CHAT)), ("top_p", (COMPLETIONS, CHAT)),
    ("presence_penalty", (COMPLETIONS, CHAT)), ("frequency_penalty", (COMPLETIONS, CHAT)),
    ("logit_bias", (COMPLETIONS, CHAT)), ("stream_options", (COMPLETIONS, CHAT)),
    ("tools", (CHAT,)), ("tool_choice", (CHAT,)), ("parallel_tool_calls", (CHAT,)),
    ("response_format", (COMPLETIONS, CHAT)), ("reasoning_effort", (CHAT,)), ("metadata", (COMPLETIONS, CHAT)),
    ("store", (CHAT,)), ("service_tier", (COMPLETIONS, CHAT)),
)


def _cell(d: Decision) -> str:
    if d.to:
        return f"as `{d.to}`"
    if d.how:
        return d.how
    return {REFUSED: "refused unless off"}.get(d.verdict, d.verdict)


def render(tables: Mapping[str, Mapping[str, Mapping[str, Decision]]]) -> str:
    """The README's field × vendor table from each kind's per-endpoint decisions."""
    kinds = list(tables)
    lines = ["| field | " + " | ".join(kinds) + " |", "| --- |" + " --- |" * len(kinds)]
    for name, endpoints in ROWS:
        cells = []
        for kind in kinds:
            per = {ep: _cell(tables[kind][ep][name]) for ep in endpoints}
            if len(set(per.values())) == 1:
                cells.append(next(iter(per.values())))
            else:
                cells.append("; ".join(f"{ep}: {text}" for ep, text in per.items()))
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


CAPABILITY_ROWS = (
    (CHAT_PREFIX, "continues a chat's partial answer (resume of a chat stream)"),
    (TEXT_PROMPT, "takes a completions prompt as one string (resume of a completion)"),
    (TOKEN_PROMPTS, "takes a completions prompt of token ids"),
    (MANY_CHOICES, "answers `n` > 1 in one call"),
)


def render_capabilities(cells: Mapping[str, Mapping[str, str]]) -> str:
    """The README's capability × vendor table from `capability_cells()`."""
    kinds = list(cells)
    lines = ["| capability | " + " | ".join(kinds) + " |", "| --- |" + " --- |" * len(kinds)]
    for name, what in CAPABILITY_ROWS:
        lines.append(f"| `{name}`: {what} | " + " | ".join(cells[kind][name] for kind in kinds) + " |")
    return "\n".join(lines) + "\n"


def capability_cells() -> dict[str, dict[str, str]]:
    """Per kind and capability: the endpoints it holds on, or the provider option that turns it on."""
    from providers import REGISTRY
    out: dict[str, dict[str, str]] = {}
    for kind, cls in REGISTRY.items():
        row = out[kind] = {}
        for name, _ in CAPABILITY_ROWS:
            eps = [ep for ep in (COMPLETIONS, CHAT) if name in cls.capabilities(ep)]
            if not eps and name == CHAT_PREFIX and "chat_prefix" in cls.options_allowed:
                row[name] = "chat, with `options.chat_prefix`"
            else:
                row[name] = "yes" if len(eps) == 2 else eps[0] if eps else "no"
    return out


def tables() -> dict[str, dict[str, dict[str, Decision]]]:
    """Every registered adapter's decisions, by kind and endpoint."""
    from providers import REGISTRY   # the registry imports the adapters, which import this module
    return {kind: {ep: cls.field_table(ep) for ep in (COMPLETIONS, CHAT)} for kind, cls in REGISTRY.items()}
