"""Raw request bytes -> a validated request and the ordered list of model names to try."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from router.errors import bad_request, dotted
from router.schema import ChatRequest, CompletionRequest, Endpoint

_MODELS: dict[str, type[CompletionRequest] | type[ChatRequest]] = {
    Endpoint.COMPLETIONS: CompletionRequest, Endpoint.CHAT: ChatRequest}
_REQUIRED = {Endpoint.COMPLETIONS: "prompt", Endpoint.CHAT: "messages"}


@dataclass(slots=True)
class Normalized:
    """One client request, validated once; `body` is what adapters translate and send."""

    endpoint: str
    body: dict[str, Any]
    names: list[str]
    stream: bool
    include_usage: bool
    max_tokens: int | None
    prompt_tokens: int
    choices: int = 1                                 # answers per request: max(n, best_of)
    asked: tuple[tuple[str, int], ...] = ()          # the client's own output-length fields

    @property
    def reserve_tokens(self) -> int:
        """What limits reserve up front: the prompt, and every choice's full output."""
        return self.prompt_tokens + (self.max_tokens or 0) * self.choices


def normalize(endpoint: str, raw: bytes, default_max_tokens: int | None = None) -> Normalized:
    """`max_tokens` of the result is the request's own, else `default_max_tokens`: the one
    figure limits, rules and the cost strategy all reckon the answer's length by."""
    if not raw:
        raise bad_request("The request body is empty; send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    try:
        req = _MODELS[endpoint].model_validate(body)
    except ValidationError as exc:
        raise _validation_error(exc, endpoint) from None

    names: list[str] = []
    if req.model:
        names.append(req.model)
    for name in req.models or ():
        if name not in names:
            names.append(name)
    if not names:
        raise bad_request("Missing required parameter: 'model'.", param="model")

    body.pop("models", None)
    _integers_as_validated(body, req)
    stream = bool(req.stream)
    if not stream and req.stream_options is not None:
        raise bad_request("'stream_options' is only allowed when 'stream' is true.", param="stream_options")
    include_usage = bool(stream and req.stream_options and req.stream_options.include_usage)
    max_tokens = req.max_tokens
    asked = [("max_tokens", req.max_tokens)]
    choices = req.n or 1
    if isinstance(req, ChatRequest):
        max_tokens = req.max_completion_tokens or max_tokens
        asked.append(("max_completion_tokens", req.max_completion_tokens))
        prompt_tokens = _estimate_messages(req) + _estimate_tools(req.tools, body.get("functions"))
    else:
        prompt_tokens = _estimate_prompt(req.prompt)
        choices = max(choices, req.best_of or 1)
    max_tokens = max_tokens or default_max_tokens
    return Normalized(endpoint, body, names, stream, include_usage, max_tokens, prompt_tokens, choices,
                      tuple((field, value) for field, value in asked if value is not None))


def _integers_as_validated(body: dict[str, Any], req: CompletionRequest | ChatRequest) -> None:
    """A float the models took as an integer (2.0) goes upstream as one: vendors may refuse 2.0."""
    for name in _INT_FIELDS:
        if isinstance(body.get(name), float):
            body[name] = getattr(req, name)
    if isinstance(req, CompletionRequest) and isinstance(req.prompt, list) and req.prompt and not isinstance(
            req.prompt[0], str):
        body["prompt"] = req.prompt


def _estimate_prompt(prompt: Any) -> int:
    """About four characters a token; token-id prompts count exactly."""
    if isinstance(prompt, str):
        return len(prompt) // 4 + 1
    total = 0
    for item in prompt:
        if isinstance(item, str):
            total += len(item) // 4 + 1
        elif isinstance(item, list):
            total += len(item)
        else:
            total += 1
    return total


# An image costs what OpenAI charges for it without its size known: 85 tokens at low detail,
# a 1024x1024 picture's 765 otherwise.
IMAGE_TOKENS_LOW = 85
IMAGE_TOKENS = 765


def _estimate_messages(req: ChatRequest) -> int:
    total = 0
    for m in req.messages:
        content = m.content
        if isinstance(content, str):
            total += len(content) // 4 + 4
        elif isinstance(content, list):
            total += sum(_estimate_part(p) for p in content) + 4
    return total


def _estimate_part(part: dict[str, Any]) -> int:
    text = part.get("text")
    if isinstance(text, str):
        return len(text) // 4
    if part.get("type") == "image_url":
        image = part.get("image_url")
        low = isinstance(image, dict) and image.get("detail") == "low"
        return IMAGE_TOKENS_LOW if low else IMAGE_TOKENS
    return 0


def _estimate_tools(*definitions: Any) -> int:
    """Tool (and legacy function) definitions reach the model as prompt text."""
    return sum(len(orjson.dumps(d)) // 4 for d in definitions if d)


def _validation_error(exc: ValidationError, endpoint: str):
    err = exc.errors(include_url=False)[0]
    loc = err["loc"]
    # Unions report the failing branch as a loc element ("str", "list[int]"): drop those.
    parts = [p for p in loc if isinstance(p, int) or p in _FIELD_NAMES or not _is_type_tag(p)]
    param = dotted(parts) or None
    if err["type"] == "missing":
        return bad_request(f"Missing required parameter: '{param}'.", param=param)
    if param == _REQUIRED[endpoint] and len(parts) == 1:
        return bad_request(
            f"Invalid type for '{param}': expected "
            + ("a string, a list of strings, or token ids." if endpoint == Endpoint.COMPLETIONS else "a non-empty list of messages."),
            param=param,
        )
    given = err.get("input")
    shown = orjson.dumps(given).decode()[:80] if given is not None else "null"
    return bad_request(f"Invalid value for '{param}': {err['msg'].rstrip('.')} (got {shown}).", param=param)


_INT_FIELDS = ("max_tokens", "max_completion_tokens", "n", "best_of", "logprobs", "top_logprobs", "seed")
_FIELD_NAMES = set(CompletionRequest.model_fields) | set(ChatRequest.model_fields) | {"role", "content", "include_usage"}


def _is_type_tag(part: object) -> bool:
    return isinstance(part, str) and (
        part in {"str", "int", "float", "bool", "dict", "list"} or "[" in part or part.startswith(("function-", "constrained-"))
    )

