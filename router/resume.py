"""Mid-stream resume: a stream that broke after content went out goes on from the next target.

`relay_stream` keeps the text it relayed (one choice only: a request for several choices, a
prompt that is not one string, or `echo` is never resumed) and calls `Resumer.next` only once
its upstream broke. The continuation asks the next candidate for the rest of the same answer:

- completions: the original prompt plus the text so far, for the `max_tokens` left;
- chat: the messages plus the partial answer as a trailing assistant message, marked the way
  the target's adapter says its vendor continues a message (`CHAT_PREFIX`); a target whose
  adapter declares no way is skipped, and with none left the stream ends as before, with an
  error event.

Each part's usage is its own (Exchange.parts): its target's limits settle its tokens here,
its spend is counted against its provider, and the key's and model's limits settle the sum.
"""

from __future__ import annotations

import logging
import time
from typing import Any


from providers.base import Unsupported, body_bytes
from providers.failures import UpstreamError
from providers.fields import CHAT_PREFIX, TEXT_PROMPT
from router.onward import Onward, first_event_limit, open_events
from router.schema import Endpoint
from router.streaming import Continued
from router.table import Target
from router.upstream import UpstreamResponse

log = logging.getLogger("router.stream")


def resumable(endpoint: str, body: dict[str, Any]) -> bool:
    """Whether a request's answer can be continued: one choice, and (completions) one string
    prompt whose echo is not asked for."""
    for name in ("n", "best_of"):
        if body.get(name) not in (None, 1):
            return False
    if endpoint == Endpoint.COMPLETIONS:
        return isinstance(body.get("prompt"), str) and not body.get("echo")
    return True


class Resumer:
    """Continues one client stream on the targets after the one serving it, `max_resumes` times."""

    def __init__(self, onward: Onward, serving: Target) -> None:
        assert onward.resume is not None
        self.onward = onward
        self.left = onward.resume.max_resumes
        self.tried = {serving.id}
        self.serving = serving
        self.part: tuple[Target, UpstreamResponse, float, float] | None = None   # a continuation's

    async def next(self, said: str, failure_provider: str) -> Continued | None:
        """The next target's continuation of `said`, or None when none can continue it. The part
        that broke ends here: its usage moves to the exchange's parts, its grant settles."""
        onward, ex, norm = self.onward, self.onward.ex, self.onward.norm
        self.end_part(broken=True)
        part = ex.end_part()
        onward.release(onward.grant, part.prompt_tokens + part.completion_tokens)
        onward.grant = None
        if self.left <= 0:
            return None
        self.left -= 1
        metrics = onward.proxy.metrics
        for cand in onward.rest:
            target = cand.target
            if target.id in self.tried:
                continue
            payload = self._payload(target, said)
            if payload is None:
                continue
            ok, grant = await onward.reserve(target)
            if not ok:
                continue
            self.tried.add(target.id)
            ex.attempts += 1
            started = time.monotonic()
            try:
                resp, opened = await open_events(onward.proxy.upstream, ex, target, norm.endpoint, payload,
                                                 first_event_limit(target, float("inf")))
            except UpstreamError as err:
                onward.release(grant)
                onward.proxy.count_attempt(target, err.reason, started, ex)
                continue
            except BaseException:
                onward.release(grant)
                onward.proxy.count_attempt(target, None, started, ex)
                raise
            onward.grant = grant
            self.part = (target, resp, started, time.monotonic())
            ex.model, ex.provider, ex.vendor_model, ex.price = cand.public, target.provider, target.model, target.price
            ex.resumes.append(f"{failure_provider}->{target.provider}")
            metrics.resumes.labels(cand.public, failure_provider, target.provider).inc()
            log.info("stream from %s resumed on %s after %d characters", failure_provider, target.provider,
                     len(said), extra={"request_id": ex.request_id})
            self.serving = target
            return Continued(cand, resp, opened)
        metrics.resumes.labels(ex.model, failure_provider, "none").inc()
        ex.provider, ex.price = self.serving.provider, self.serving.price   # the part that broke, for the log
        return None

    def _payload(self, target: Target, said: str) -> bytes | None:
        """The continuation body for `target`, or None when it cannot continue this answer."""
        norm, parts = self.onward.norm, self.onward.ex.parts
        adapter = target.adapter
        endpoint = norm.endpoint
        body = dict(norm.body)
        field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        if norm.max_tokens:
            body[field] = max(1, norm.max_tokens - sum(p.completion_tokens for p in parts))
        if endpoint == Endpoint.COMPLETIONS:
            if TEXT_PROMPT not in adapter.can[endpoint]:
                return None
            body["prompt"] = body["prompt"] + said
        elif said:
            if CHAT_PREFIX not in adapter.can[endpoint]:
                return None
            body["messages"] = [*body["messages"], {"role": "assistant", "content": said}]
        try:
            built = adapter.build_body(endpoint, body, target.model, want_usage=True)
            if adapter.split_prompt(endpoint, built) is not None:
                return None
        except Unsupported:
            return None
        if endpoint == Endpoint.CHAT and said:
            built = adapter.continue_chat(built)
        return body_bytes(built)

    def end_part(self, broken: bool, gone: bool = False) -> None:
        """A continuation's connection closed and its attempt counted (the first part's is
        `Proxy._attempt`'s own)."""
        if self.part is None:
            return
        target, resp, started, first_at = self.part
        self.part = None
        resp.close()
        outcome = None if gone else ("stream_interrupted" if broken else "ok")
        self.onward.proxy.count_attempt(target, outcome, started, self.onward.ex, first_at)

    def finish(self, broken: bool, gone: bool) -> None:
        """The stream's end: the last continuation's attempt counted, its grant settled with
        its own tokens (the key's and model's settle the sum, in Proxy.settle)."""
        if self.part is None and not self.onward.ex.parts:
            return   # never resumed: the first target's grant settles as usual
        self.end_part(broken, gone)
        ex = self.onward.ex
        used = ex.prompt_tokens + ex.completion_tokens
        self.onward.release(self.onward.grant, used or (None if ex.served else 0))
        self.onward.grant = None


__all__ = ["Continued", "Resumer", "resumable"]
