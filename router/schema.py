"""OpenAI wire models for the two request bodies the proxy accepts.

They validate the fields whose meaning the proxy must know (types and ranges, so a bad
value is a clear 400 here rather than a vendor's puzzle later) and keep every other
field (`extra="allow"`), so vendor extras pass through untouched. Validation is strict:
`"1"` is not an integer and `1` is not a boolean.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.config import JsonDict

NonEmptyStr = Annotated[str, Field(min_length=1)]


def _integral(value: Any) -> Any:
    """JSON's 2.0 is the integer 2 (as JSON Schema says); normalize() sends it on as 2."""
    return int(value) if isinstance(value, float) and value.is_integer() and abs(value) < 2**63 else value


Integral = BeforeValidator(_integral)
# 64-bit integers, as a vendor reads them (a JSON parser turns bigger ones into floats).
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1), Integral]
Count = Annotated[int, Field(ge=1, le=2**63 - 1), Integral]
Choices = Annotated[int, Field(ge=1, le=128), Integral]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
Stop = str | Annotated[list[str], Field(max_length=4)]


class Wire(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class StreamOptions(Wire):
    include_usage: bool | None = None


# What normalize() demands besides the fields' own types, for the OpenAPI document: a model
# name, in `model` or `models`; `stream_options` only with `stream: true`.
_RULES: JsonDict = {"allOf": [
    {"anyOf": [{"required": ["model"], "properties": {"model": {"type": "string"}}},
               {"required": ["models"], "properties": {"models": {"type": "array", "minItems": 1}}}]},
    {"anyOf": [{"required": ["stream"], "properties": {"stream": {"const": True}}},
               {"properties": {"stream_options": {"type": "null"}}}]},
]}


class _Common(Wire):
    model_config = ConfigDict(json_schema_extra=_RULES)

    model: NonEmptyStr | None = None
    models: Annotated[list[NonEmptyStr], Field(max_length=16)] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: Count | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    n: Choices | None = None
    stop: Stop | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    seed: Int64 | None = None
    user: str | None = None


TokenIds = list[Int64]


class CompletionRequest(_Common):
    prompt: str | list[str] | TokenIds | list[TokenIds]
    logprobs: Annotated[int, Field(ge=0, le=5), Integral] | None = None
    echo: bool | None = None
    best_of: Choices | None = None
    suffix: str | None = None


class Message(Wire):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_Common):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Count | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20), Integral] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None


class Endpoint:
    """The two generation endpoints; plain strings so they are cheap label values."""

    COMPLETIONS = "completions"
    CHAT = "chat"
