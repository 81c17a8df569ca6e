"""Health of provider targets: latency EWMAs, recent error rate, circuit breaker.

One record per target holds everything. The memory backend applies the transitions below
in Python; the Redis backend runs the same rules in Lua (at the end of this module) so
replicas update one record atomically. Both store the same fields, and reading (`view`)
is the same Python code for both, so "open" turning into "half_open" after the cooldown
is decided at read time: no timer, no background job, nothing to lose on a restart.

Stored fields: st (closed|open|half_open), oa (opened at), cf (consecutive failures),
ew (latency EWMA of whole non-stream answers, seconds), tt (time-to-first-token EWMA of
streams: a different quantity, so kept apart; a record written before tt existed reads it
as unknown), pb/pw (half-open probes claimed, since when), and per error bucket k: i<k>
(bucket number = time // bucket width), n<k> (attempts), e<k> (failures).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
BUCKETS = 6  # error-rate window split in six buckets: the rate forgets old failures smoothly


@dataclass(frozen=True)
class HealthSettings:
    """The circuit breaker's knobs (a `StateSettings` carries the same names)."""

    failure_threshold: int = 5
    error_rate_threshold: float = 0.5
    min_samples: int = 20
    cooldown_s: float = 30.0
    half_open_probes: int = 2
    ewma_alpha: float = 0.3
    error_window_s: float = 60.0


class Latencies(Protocol):
    """The two latency averages of a target (TargetHealth, or a strategy's view of it)."""

    @property
    def latency_ewma(self) -> float | None: ...
    @property
    def ttft_ewma(self) -> float | None: ...


def latency_for(h: Latencies, stream: bool) -> float | None:
    """The latency a request of this kind can expect: a stream waits for its first token,
    anything else for the whole answer. A stream target not yet measured streaming is judged
    by its whole-answer latency, an upper bound on its time to first token."""
    if stream and h.ttft_ewma is not None:
        return h.ttft_ewma
    return h.latency_ewma


class TargetHealth(NamedTuple):
    """What the router needs to pick a target; `usable` filters, `score_for` orders (a
    tuple: one per target on every admit, cheaper to make than a frozen dataclass)."""

    state: str  # "closed" | "open" | "half_open"
    latency_ewma: float | None  # seconds to a whole non-stream answer; None before the first success
    error_rate: float  # 0..1 over the error window
    consecutive_failures: int
    probes_left: int = 0  # half-open probe slots still free
    samples: int = 0  # attempts in the error window
    ttft_ewma: float | None = None  # seconds to a stream's first event; None before the first success

    @property
    def usable(self) -> bool:
        """Closed, or half-open with a probe slot free."""
        return self.state == CLOSED or (self.state == HALF_OPEN and self.probes_left > 0)

    @property
    def score(self) -> float:
        """`score_for` a non-stream request."""
        return self.score_for(False)

    def score_for(self, stream: bool) -> float:
        """Expected seconds per successful answer (streams: to the first token); lower is
        better, inf when unusable. A target never measured counts as 1s so it gets tried."""
        if not self.usable:
            return math.inf
        latency = latency_for(self, stream)
        return (latency if latency is not None else 1.0) / max(0.05, 1.0 - self.error_rate)


HEALTHY = TargetHealth(CLOSED, None, 0.0, 0)


@dataclass
class CircuitRecord:
    """The stored fields of one target, as the memory backend keeps them."""

    st: str = CLOSED
    oa: float = 0.0
    cf: int = 0
    ew: float | None = None
    tt: float | None = None
    pb: int = 0
    pw: float = 0.0
    buckets: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # k -> (i, n, e)

    @classmethod
    def from_summary(cls, fields: Sequence[bytes | str | int], bucket: int | str) -> CircuitRecord:
        """From the Redis scripts' summary: st, oa, cf, ew, pb, pw, the error window's
        attempts and failures (summed in Lua, kept here as one current bucket), then tt."""
        st, oa, cf, ew, pb, pw = (f.decode() if isinstance(f, bytes) else str(f) for f in fields[:6])
        n, e = int(fields[6]), int(fields[7])
        tt = fields[8].decode() if isinstance(fields[8], bytes) else str(fields[8])
        return cls(
            st=st, oa=float(oa), cf=int(float(cf)), ew=float(ew) if ew else None, tt=float(tt) if tt else None,
            pb=int(float(pb)), pw=float(pw), buckets={0: (int(bucket), n, e)} if n else {},
        )

    def effective_state(self, now: float, s: HealthSettings) -> str:
        if self.st == OPEN and now - self.oa >= s.cooldown_s:
            return HALF_OPEN
        return self.st

    def window(self, now: float, s: HealthSettings) -> tuple[int, int]:
        """(attempts, failures) in the error window."""
        width = s.error_window_s / BUCKETS
        cur = int(now // width)
        n = e = 0
        for i, bn, be in self.buckets.values():
            if cur - BUCKETS < i <= cur:
                n, e = n + bn, e + be
        return n, e

    def view(self, now: float, s: HealthSettings) -> TargetHealth:
        state = self.effective_state(now, s)
        probes_left = 0
        if state == HALF_OPEN:
            live = self.st == HALF_OPEN and now - self.pw < s.cooldown_s
            probes_left = max(0, s.half_open_probes - self.pb) if live else s.half_open_probes
        n, e = self.window(now, s)
        return TargetHealth(state, self.ew, (e / n) if n else 0.0, self.cf, probes_left, n, self.tt)

    def claim_probe(self, now: float, s: HealthSettings) -> bool:
        """May one more attempt go to this target now? Takes a half-open probe slot.
        Claims older than a cooldown are forgotten, so a replica that died mid-probe
        cannot keep the target half-open forever."""
        state = self.effective_state(now, s)
        if state == CLOSED:
            return True
        if state == OPEN:
            return False
        if self.st != HALF_OPEN or now - self.pw >= s.cooldown_s:
            self.st, self.pw, self.pb = HALF_OPEN, now, 0
        if self.pb >= s.half_open_probes:
            return False
        self.pb += 1
        return True

    def release_probe(self) -> None:
        """A probe that ended without a verdict (the client's own error, or cancelled) gives
        its slot back; the circuit stays half-open for the next probe to decide."""
        if self.st == HALF_OPEN and self.pb > 0:
            self.pb -= 1

    def record(
        self, ok: bool, latency_s: float | None, now: float, s: HealthSettings, stream: bool = False,
        probe: bool = False,
    ) -> tuple[str, str]:
        """Apply one attempt's outcome; returns (state before, state after).
        Latency feeds an EWMA on success only (a failure's timing, a timeout or an instant
        500, says nothing about how fast the target answers): a stream's time to first
        event feeds tt, a whole answer's latency ew. Only a half-open circuit's own probe
        moves it: an attempt begun before it opened, or sent as a last resort, is counted
        but decides nothing."""
        before = self.effective_state(now, s)
        if ok and latency_s is not None:
            a, old = s.ewma_alpha, self.tt if stream else self.ew
            new = latency_s if old is None else a * latency_s + (1 - a) * old
            if stream:
                self.tt = new
            else:
                self.ew = new
        width = s.error_window_s / BUCKETS
        cur = int(now // width)
        k = cur % BUCKETS
        i, n, e = self.buckets.get(k, (cur, 0, 0))
        if i != cur:
            n = e = 0
        self.buckets[k] = (cur, n + 1, e + (0 if ok else 1))
        self.cf = 0 if ok else self.cf + 1
        after = before
        if before == HALF_OPEN and not probe:
            pass
        elif before == HALF_OPEN:
            if ok:
                after, self.st, self.cf, self.pb = CLOSED, CLOSED, 0, 0
                self.buckets.clear()  # a fresh start: the failures that opened it are history
            else:
                after, self.st, self.oa, self.pb = OPEN, OPEN, now, 0
        elif before == CLOSED and not ok:
            wn, we = self.window(now, s)
            if self.cf >= s.failure_threshold or (wn >= s.min_samples and we / wn >= s.error_rate_threshold):
                after, self.st, self.oa, self.pb = OPEN, OPEN, now, 0
        return before, after


def summary_view(fields: Sequence[bytes | str | int], bucket: int, now: float, s: HealthSettings) -> TargetHealth:
    """CircuitRecord.from_summary(fields, bucket).view(now, s), read straight off the summary
    when the circuit is closed (every admit reads one per target)."""
    if fields[0] != b"closed":
        return CircuitRecord.from_summary(fields, bucket).view(now, s)
    n, e = int(fields[6]), int(fields[7])
    ew, tt = fields[3], fields[8]
    return TargetHealth(CLOSED, float(ew) if ew else None, e / n if n else 0.0, int(float(fields[2])), 0, n,
                        float(tt) if tt else None)
