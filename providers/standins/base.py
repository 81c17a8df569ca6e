"""The script a test (or the demo) gives a stand-in, and what the stand-in saw.

A test pushes steps (`Reply`, `Fail`, `BreakStream`, `Hang`, `Fault`) that are consumed one per request,
in order; with nothing queued the stand-in just succeeds. Every request that reaches a stand-in
is recorded, so a test can assert on exactly what the proxy sent upstream.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Union

ERROR_KINDS: tuple[str, ...] = (
    "model_not_found",
    "context_length",
    "rate_limit",
    "server_error",
    "plain_502",
    "auth",
    "bad_request",
)


class Headers(dict[str, str]):
    """Request headers with lower-cased names; lookups ignore case, as HTTP does."""

    def __init__(self, items: Any = ()) -> None:
        super().__init__((str(k).lower(), str(v)) for k, v in dict(items).items())

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)


@dataclass
class RecordedRequest:
    """One request as it arrived: `body` is the parsed JSON object ({} if it was not one)."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Reply:
    """A normal success: JSON, or SSE when the request has `stream: true`."""

    text: str = "Hello from the stand-in."
    prompt_tokens: int = 7
    completion_tokens: int = 5
    chunks: int = 3
    delay: float = 0.0
    chunk_delay: float = 0.0


@dataclass
class Fail:
    """An error in the vendor's own shape and status; `error` is one of ERROR_KINDS."""

    error: str
    retry_after: int | None = None
    param: str | None = None

    def __post_init__(self) -> None:
        if self.error not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {self.error!r}; expected one of {ERROR_KINDS}")


@dataclass
class BreakStream:
    """Send `after` content events, then drop the TCP connection without `[DONE]`; with
    `mid_char`, first the next event's bytes up to the middle of its first multi-byte character.
    `text` and `chunks` shape the answer as `Reply`'s do (the default text when None)."""

    after: int = 3
    mid_char: bool = False
    text: str | None = None
    chunks: int | None = None


@dataclass
class Hang:
    """Wait `seconds` before answering normally: long enough to trip a client's timeout."""

    seconds: float = 30.0


FAULT_KINDS: tuple[str, ...] = (
    "status",         # `status` in the vendor's error shape, with `retry_after` sent as given
    "bad_json",       # a 200 whose body (or, after `after` events, whose next event) is not JSON
    "wrong_shape",    # a 200 JSON answer (or first event) without `choices`
    "broken_line",    # after `after` events, one event's data line cut in two by a newline
    "no_done",        # every event, then a clean end without `data: [DONE]`
    "split",          # the whole stream, one byte per write
    "error_event",    # after `after` events, an in-band `{"error": ...}` event, then [DONE]
    "stall",          # `after` events (half the body, unstreamed) then `seconds` of silence
    "ping",           # `: ping` comments for `seconds` before the first event
    "echo_key",       # error `status` whose message repeats the request's Authorization header
                      # (in a stream with `after` events: an in-band error event that does)
    "endless_error",  # error `status` whose body never ends
)


@dataclass
class Fault:
    """Break the vendor's contract on purpose: bytes no spec allows, for the proxy's fault tests.

    Unlike the other steps, its answers are not held to the vendor's schema (they cannot be).
    """

    kind: str
    after: int = 0
    status: int = 500
    retry_after: str | None = None
    seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {self.kind!r}; expected one of {FAULT_KINDS}")


Step = Union[Reply, Fail, BreakStream, Hang, Fault]


@dataclass
class StandinControl:
    """The handle a test holds on a running stand-in.

    `demo` makes unscripted replies name the vendor and model and echo the prompt
    (`create_standin_app` turns it on when it creates the control itself); tests that pass
    their own control get the plain `Reply()` text, so assertions on it stay simple.
    """

    demo: bool = False
    requests: list[RecordedRequest] = field(default_factory=list)
    _steps: deque[Step] = field(default_factory=deque, repr=False)

    def push(self, *steps: Step) -> None:
        """Queue steps; each request consumes one, first in first out."""
        for step in steps:
            if not isinstance(step, (Reply, Fail, BreakStream, Hang, Fault)):
                raise TypeError(f"not a stand-in step: {step!r}")
        self._steps.extend(steps)

    def clear(self) -> None:
        """Forget recorded requests and any steps not yet consumed."""
        self.requests.clear()
        self._steps.clear()

    @property
    def pending(self) -> int:
        """How many pushed steps are still waiting for a request."""
        return len(self._steps)

    def next_step(self) -> Step | None:
        """The step for the request being handled, or None when nothing is scripted."""
        return self._steps.popleft() if self._steps else None
