"""OpenAI wire models for the two request bodies the proxy accepts.

They validate the fields whose meaning the proxy must know (types and ranges, so a bad
value is a clear 400 here rather than a vendor's puzzle later) and keep every other
field (`extra="allow"`), so vendor extras pass through untouched. Validation is strict:
`"1"` is not an integer and `1` is not a boolean.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

NonEmptyStr = Annotated[str, Field(min_length=1)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
Stop = str | Annotated[list[str], Field(max_length=4)]


class Wire(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class StreamOptions(Wire):
    include_usage: bool | None = None


class _Common(Wire):
    model: NonEmptyStr | None = None
    models: Annotated[list[NonEmptyStr], Field(max_length=16)] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    stop: Stop | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    seed: int | None = None
    user: str | None = None


TokenIds = list[int]


class CompletionRequest(_Common):
    prompt: str | list[str] | TokenIds | list[TokenIds]
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool | None = None
    best_of: Annotated[int, Field(ge=1, le=128)] | None = None
    suffix: str | None = None


class Message(Wire):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_Common):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None


class Endpoint:
    """The two generation endpoints; plain strings so they are cheap label values."""

    COMPLETIONS = "completions"
    CHAT = "chat"
