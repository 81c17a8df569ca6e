"""A vendor's failure, as the client sees it and as the proxy acts on it: one table from
(status, code) to an OpenAI error and an Action (retry here, try the next target, or answer
the client), and the failures no status carries: a transport error, a stall, a bad body.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import math
import time
from dataclasses import dataclass
from enum import Enum

from router.errors import INVALID_REQUEST, RATE_LIMIT, UPSTREAM, RouterError

# An upstream error body is read up to this many bytes; the status says enough past it.
MAX_ERROR_BODY = 64 * 1024


class Action(Enum):
    RETRY = "retry"    # the same target may succeed on a later attempt
    NEXT = "next"      # this target cannot serve it; try the next candidate
    RETURN = "return"  # the client's own mistake: answer it as it is


@dataclass(slots=True)
class UpstreamError(Exception):
    """A failed attempt: what the client would see, and what to do about it."""

    error: RouterError
    action: Action
    reason: str                    # bounded label value: rate_limited, server_error, timeout, ...
    retry_after: float | None = None


MODEL_NOT_FOUND_CODES = frozenset({"model_not_found", "model-not-found"})
CONTEXT_CODES = frozenset({"context_length_exceeded", "max-tokens-exceeded", "max_tokens_exceeded"})


# A hint longer than this is not a hint (a day): treated like none at all.
MAX_RETRY_AFTER_S = 86400.0


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from `Retry-After` in either of HTTP's forms (delta-seconds or an
    HTTP-date); None for no usable hint: absent, unparseable, negative, infinite or absurd."""
    if not value:
        return None
    value = value.strip()
    try:
        wait = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        wait = max(0.0, when.timestamp() - time.time())
    if not 0 <= wait <= MAX_RETRY_AFTER_S:   # also false for nan
        return None
    return wait


def classify(provider: str, status: int, message: str | None, code: str | None, param: str | None,
             retry_after: str | None) -> UpstreamError:
    """One table from (vendor status, vendor code) to what the client sees and what happens next."""
    said = f": {message}" if message else ""
    if code in MODEL_NOT_FOUND_CODES or status == 404:
        return UpstreamError(
            RouterError(404, f"Provider '{provider}' does not serve this model{said}", type=INVALID_REQUEST,
                        param="model", code="model_not_found"),
            Action.NEXT, "model_not_found")
    if code in CONTEXT_CODES:
        return UpstreamError(
            RouterError(400, f"The request is too long for the model{said}", param=param or "max_tokens",
                        code="context_length_exceeded"),
            Action.RETURN, "client_error")
    if status == 429:
        wait = parse_retry_after(retry_after)
        # HTTP's Retry-After is whole seconds; some vendors send fractions, dates or nothing.
        headers = {"Retry-After": str(max(1, math.ceil(wait)) if wait is not None else 1)}
        return UpstreamError(
            RouterError(429, f"Provider '{provider}' is rate limiting requests{said}", type=RATE_LIMIT,
                        code="rate_limit_exceeded", headers=headers),
            Action.RETRY, "rate_limited", wait)
    if status in (401, 403):
        return UpstreamError(
            RouterError(502, f"Provider '{provider}' refused the proxy's credentials ({status}); "
                        "the operator must check its API key", type=UPSTREAM, code="upstream_auth_failed"),
            Action.NEXT, "upstream_auth")
    if status in (408, 409) or status >= 500:
        out = status if status in (502, 503, 504) else 502
        return UpstreamError(
            RouterError(out, f"Provider '{provider}' failed with {status}{said}", type=UPSTREAM,
                        code="upstream_error"),
            Action.RETRY, "server_error", parse_retry_after(retry_after))
    if 400 <= status < 500:
        out = 413 if status == 413 else 400
        return UpstreamError(
            RouterError(out, f"Provider '{provider}' rejected the request{said}", param=param,
                        code=code if code and code.isidentifier() else "invalid_request_error"),
            Action.RETURN, "client_error")
    return UpstreamError(
        RouterError(502, f"Provider '{provider}' answered with unexpected status {status}", type=UPSTREAM,
                    code="upstream_error"),
        Action.NEXT, "bad_response")


def bad_upstream_body(provider: str, what: str) -> UpstreamError:
    return UpstreamError(
        RouterError(502, f"Provider '{provider}' sent {what}", type=UPSTREAM, code="upstream_bad_response"),
        Action.NEXT, "bad_response")


def stalled(provider: str) -> UpstreamError:
    """An answer that began (headers, keep-alive comments) and then went silent: the target
    is stuck, so the next one is tried rather than this one again."""
    return UpstreamError(RouterError(504, f"Provider '{provider}' went silent before its answer was complete",
                                     type=UPSTREAM, code="upstream_timeout"), Action.NEXT, "timeout")


def past_deadline() -> UpstreamError:
    return UpstreamError(RouterError(504, "The request's deadline passed before any provider could answer",
                                     type=UPSTREAM, code="deadline_exceeded"), Action.NEXT, "deadline")


def transport_error(provider: str, exc: BaseException) -> UpstreamError:
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamError(RouterError(504, f"Provider '{provider}' did not answer in time", type=UPSTREAM,
                                         code="upstream_timeout"), Action.RETRY, "timeout")
    return UpstreamError(RouterError(502, f"Could not reach provider '{provider}' ({type(exc).__name__})",
                                     type=UPSTREAM, code="upstream_unavailable"), Action.RETRY, "connect")
