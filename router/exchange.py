"""What the proxy learns about one client request as it serves it.

One `Exchange` per request, created by the middleware; the proxy fills it in, and the
response headers, the access log line and the metrics are all read from it at the end.
"""

from __future__ import annotations

import re
import time
import random
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from router.config import Price
from router.metrics import ANONYMOUS, UNKNOWN
from router.state import Grant, TargetGrant

# Whole-string match (`$` alone would let a trailing newline through): at most 128 printable
# characters, none of them a control character or a space.
_SANE_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


@dataclass(slots=True)
class Part:
    """What one earlier part of a resumed stream used, and who produced (and bills) it."""

    provider: str
    price: Price | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    def cost(self) -> float:
        return _cost(self.price, self.prompt_tokens, self.completion_tokens, self.cached_tokens)


def _cost(price: Price | None, prompt: int, completion: int, cached: int) -> float:
    """USD from a price table (per million tokens)."""
    if price is None:
        return 0.0
    cached = min(cached, prompt) if price.cached_input is not None else 0
    return ((prompt - cached) * price.input + cached * (price.cached_input or 0.0) + completion * price.output) / 1e6


def request_id(given: str | None) -> str:
    """The client's own id when it is safe to log and forward; otherwise a fresh one."""
    if given and _SANE_ID.fullmatch(given):
        return given
    return f"{random.getrandbits(128):032x}"   # unique, not secret: no system call per request


@dataclass(slots=True, eq=False)  # one per request, kept in a set while in flight
class Exchange:
    request_id: str
    started: float = field(default_factory=time.monotonic)
    endpoint: str = ""
    stream: bool = False
    key: str = ANONYMOUS
    model: str = UNKNOWN          # public name that served (or was asked for); a config name or `unknown`
    provider: str = ""
    vendor_model: str = ""
    attempts: int = 0
    fallbacks: list[str] = field(default_factory=list)   # "provider:reason" of each target left
    status: int = 0
    error_code: str | None = None
    upstream_s: float = 0.0       # time inside upstream calls and backoff sleeps
    ttft_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    headers: dict[str, str] = field(default_factory=dict)   # extra response headers (rate limits)
    price: Price | None = None    # of the target that served
    committed: bool = False       # a stream's headers went out: no other response is possible
    served: bool = False          # an upstream answer (or a stream's first event) arrived
    healthy: list[tuple[str, float]] = field(default_factory=list)   # (target id, latency) of good attempts
    grant: Grant | None = None    # this request's admission, while it runs (its leases are renewed)
    target_grant: TargetGrant | None = None
    upstream: Any = None          # a committed stream's upstream response, while it is relayed
    draining: bool = False        # the process is shutting down and ended this stream
    probes: list[str] = field(default_factory=list)    # targets this request holds a half-open probe slot of
    judged: set[str] = field(default_factory=set)      # targets an attempt gave a health verdict on
    prompt: Any = None            # only with ROUTER_LOG_PROMPTS (debugging): logged, never counted
    # A resumed stream's earlier parts; the token fields above are then the last part's.
    parts: list[Part] = field(default_factory=list)
    resumes: list[str] = field(default_factory=list)   # "from->to" provider of each resume
    hedge: str | None = None      # "first" or "hedge": which side won a hedged start

    def stamp(self, response: web.StreamResponse) -> None:
        """The router's headers on a response not yet sent: errors and streams included."""
        h = response.headers
        h["x-request-id"] = self.request_id
        h["x-router-provider"] = self.provider or "none"
        h["x-router-model"] = self.vendor_model or "none"
        h["x-router-attempts"] = str(self.attempts)
        if self.headers:
            h.update(self.headers)

    def cost(self) -> float:
        """USD from each part's target's price table (per million tokens) and its usage."""
        cost = _cost(self.price, self.prompt_tokens, self.completion_tokens, self.cached_tokens)
        for part in self.parts:
            cost += part.cost()
        return cost

    def used_tokens(self) -> int:
        """Prompt and completion tokens of every part: what the key's and model's limits settle."""
        return self.prompt_tokens + self.completion_tokens + sum(p.prompt_tokens + p.completion_tokens
                                                                 for p in self.parts)

    def end_part(self) -> Part:
        """The serving part's usage moved to `parts`, for the next part to start from zero."""
        part = Part(self.provider, self.price, self.prompt_tokens, self.completion_tokens, self.cached_tokens)
        self.parts.append(part)
        self.prompt_tokens = self.completion_tokens = self.cached_tokens = 0
        return part

    def usage_total(self) -> dict[str, int]:
        """Every part's usage summed, as the client's usage chunk."""
        prompt = self.prompt_tokens + sum(p.prompt_tokens for p in self.parts)
        completion = self.completion_tokens + sum(p.completion_tokens for p in self.parts)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def take_usage(self, usage: object) -> None:
        """Token counts as the vendor reported them; anything not a count reads as 0."""
        if not isinstance(usage, dict):
            return
        self.prompt_tokens = _count(usage.get("prompt_tokens"))
        self.completion_tokens = _count(usage.get("completion_tokens"))
        details = usage.get("prompt_tokens_details")
        self.cached_tokens = _count(details.get("cached_tokens")) if isinstance(details, dict) else 0


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 2**53:
        return 0
    return int(value)


EXCHANGE = web.RequestKey("exchange", Exchange)
