"""Rate limits and budgets: what is configured, what one request must pass, how refusals look.

The backends (memory, Redis) share this vocabulary: an `Admission` is turned into a flat
list of `Check`s by `plan_checks`, each backend runs the list atomically, and a failed
check becomes a `LimitExceeded` with the same message and headers whichever backend ran it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, Protocol

from router.errors import RATE_LIMIT, SERVER, RouterError

WINDOW_S = 60.0  # rpm and tpm are per minute, as the vendors count them
MICRO = 1_000_000  # budgets are stored as integer micro-dollars: no float drift across replicas

RPM, TPM, CONCURRENT, DAILY_USD, MONTHLY_USD = "rpm", "tpm", "concurrent", "daily_usd", "monthly_usd"
BUDGET_KINDS = (DAILY_USD, MONTHLY_USD)


@dataclass(frozen=True)
class LimitSpec:
    """`limits: {rpm, tpm, concurrent}` of a key, a model or a provider target."""

    rpm: int | None = None
    tpm: int | None = None
    concurrent: int | None = None  # only meaningful on a client key


@dataclass(frozen=True)
class BudgetSpec:
    """`budget: {daily_usd, monthly_usd}` of a client key; UTC days and months."""

    daily_usd: float | None = None
    monthly_usd: float | None = None


class _LimitsLike(Protocol):
    rpm: int | None
    tpm: int | None
    concurrent: int | None


class _BudgetLike(Protocol):
    daily_usd: float | None
    monthly_usd: float | None


def limit_spec(cfg: _LimitsLike | None) -> LimitSpec | None:
    """routes.yaml's `limits:` as the state layer takes it (converted once, at load)."""
    return LimitSpec(cfg.rpm, cfg.tpm, cfg.concurrent) if cfg is not None else None


def budget_spec(cfg: _BudgetLike | None) -> BudgetSpec | None:
    return BudgetSpec(cfg.daily_usd, cfg.monthly_usd) if cfg is not None else None


class Admission(NamedTuple):
    """Everything one client request needs checked before it may go upstream (a tuple, one
    per request: cheaper to make than a frozen dataclass)."""

    key: str | None  # client key NAME (never the secret); None when the proxy is open
    key_limits: LimitSpec | None
    key_budget: BudgetSpec | None
    model: str  # public model name
    model_limits: LimitSpec | None
    tokens: int  # estimated prompt tokens + max_tokens: reserved up front, settled later


@dataclass(frozen=True)
class Check:
    """One counter one request must fit in. `limit`/`amount` are in the kind's unit:
    requests, tokens, slots, or micro-dollars (budgets take nothing at admit: cost is
    only known at settle, so a budget refuses once the spend has reached it)."""

    scope: str  # "key" | "model" | "target"
    name: str
    kind: str
    limit: int
    amount: int


class Usage(NamedTuple):
    """A limit's state after a check, for the x-ratelimit-* headers (a tuple: made four
    times a request, where a frozen dataclass's __init__ costs three times as much)."""

    limit: int
    remaining: int
    reset_s: float


def _spec_checks(scope: str, name: str, spec: LimitSpec | None, tokens: int, concurrent: bool) -> list[Check]:
    if spec is None:
        return []
    out = []
    if spec.rpm is not None:
        out.append(Check(scope, name, RPM, int(spec.rpm), 1))
    if spec.tpm is not None:
        out.append(Check(scope, name, TPM, int(spec.tpm), max(0, int(tokens))))
    if concurrent and spec.concurrent is not None:
        out.append(Check(scope, name, CONCURRENT, int(spec.concurrent), 1))
    return out


def plan_checks(adm: Admission) -> list[Check]:
    """The checks of one admission: the key's budgets first (a spent budget is the refusal
    worth reporting: retrying in a minute will not help), then its rates, then the model's."""
    out: list[Check] = []
    if adm.key is not None:
        b = adm.key_budget
        if b is not None and b.daily_usd is not None:
            out.append(Check("key", adm.key, DAILY_USD, to_micro(b.daily_usd), 0))
        if b is not None and b.monthly_usd is not None:
            out.append(Check("key", adm.key, MONTHLY_USD, to_micro(b.monthly_usd), 0))
        out += _spec_checks("key", adm.key, adm.key_limits, adm.tokens, concurrent=True)
    out += _spec_checks("model", adm.model, adm.model_limits, adm.tokens, concurrent=False)
    return out


def target_checks(target_id: str, limits: LimitSpec | None, tokens: int) -> list[Check]:
    """A provider target's vendor quota: rpm and tpm only."""
    return _spec_checks("target", target_id, limits, tokens, concurrent=False)


def to_micro(usd: float) -> int:
    return max(0, round(usd * MICRO))


class BudgetPeriods:
    """(day id, month id, seconds to the end of the UTC day, ... of the UTC month) for a
    time; the calendar work is done once per UTC day, not per request."""

    def __init__(self) -> None:
        self._day_start = self._day_end = self._month_end = 0.0
        self._ids = ("", "")

    def __call__(self, now: float) -> tuple[str, str, float, float]:
        if not self._day_start <= now < self._day_end:
            t = datetime.fromtimestamp(now, UTC)
            day_start = t.replace(hour=0, minute=0, second=0, microsecond=0)
            month_start = day_start.replace(day=1)
            self._day_start = day_start.timestamp()
            self._day_end = (day_start + timedelta(days=1)).timestamp()
            self._month_end = (month_start + timedelta(days=32)).replace(day=1).timestamp()
            self._ids = (t.strftime("%Y-%m-%d"), t.strftime("%Y-%m"))
        return self._ids[0], self._ids[1], self._day_end - now, self._month_end - now


def format_reset(seconds: float) -> str:
    """OpenAI's (Go's) duration format: "250ms", "1s", "6m0s", "1h2m3s"."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    s = math.ceil(seconds)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{sec}s"
    if m:
        return f"{m}m{sec}s"
    return f"{sec}s"


def tightest(usages: Sequence[Usage]) -> Usage | None:
    """The limit closest to refusing: least remaining, then the later reset."""
    if not usages:
        return None
    return min(usages, key=lambda u: (u.remaining, -u.reset_s))


def ratelimit_headers(requests: Usage | None, tokens: Usage | None) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for the tightest request and token limits."""
    h: dict[str, str] = {}
    if requests is not None:
        h["x-ratelimit-limit-requests"] = str(requests.limit)
        h["x-ratelimit-remaining-requests"] = str(max(0, requests.remaining))
        h["x-ratelimit-reset-requests"] = format_reset(requests.reset_s)
    if tokens is not None:
        h["x-ratelimit-limit-tokens"] = str(tokens.limit)
        h["x-ratelimit-remaining-tokens"] = str(max(0, tokens.remaining))
        h["x-ratelimit-reset-tokens"] = format_reset(tokens.reset_s)
    return h


def headers_for(checks: Sequence[Check], usages: Sequence[Usage | None]) -> dict[str, str]:
    """Headers of the tightest rpm and tpm among a request's checked limits (as `tightest`,
    in one pass: this runs on every admitted request)."""
    req: Usage | None = None
    tok: Usage | None = None
    for c, u in zip(checks, usages, strict=True):
        if u is None:
            continue
        if c.kind == RPM:
            if req is None or (u.remaining, -u.reset_s) < (req.remaining, -req.reset_s):
                req = u
        elif tok is None or (u.remaining, -u.reset_s) < (tok.remaining, -tok.reset_s):
            tok = u
    return ratelimit_headers(req, tok) if req is not None or tok is not None else {}


def _describe(check: Check) -> str:
    if check.kind == RPM:
        return f"{check.limit} requests per minute"
    if check.kind == TPM:
        return f"{check.limit} tokens per minute"
    if check.kind == CONCURRENT:
        return f"{check.limit} concurrent requests"
    period = "daily" if check.kind == DAILY_USD else "monthly"
    return f"{period} budget of ${check.limit / MICRO:,.2f}"


class LimitExceeded(RouterError):
    """429 for a rate limit or budget, in OpenAI's shape, naming the scope and limit."""

    def __init__(self, check: Check, retry_after_s: float, usage: Usage | None = None) -> None:
        budget = check.kind in BUDGET_KINDS
        message = f"{check.scope} '{check.name}' is over its {_describe(check)}"
        if check.kind == TPM and check.amount > check.limit:
            message += f": this request needs {check.amount} tokens, more than the limit allows at all"
        elif budget:
            message += "; it resets at the start of the next UTC " + ("day" if check.kind == DAILY_USD else "month")
        else:
            message += f"; retry after {format_reset(retry_after_s)}"
        headers = {"retry-after": str(max(1, math.ceil(retry_after_s)))}
        if usage is not None and check.kind == RPM:
            headers |= ratelimit_headers(usage, None)
        elif usage is not None and check.kind == TPM:
            headers |= ratelimit_headers(None, usage)
        super().__init__(
            429,
            message,
            type=RATE_LIMIT,
            code="insufficient_quota" if budget else "rate_limit_exceeded",
            headers=headers,
        )
        self.check = check
        self.retry_after_s = retry_after_s


def state_unavailable(reason: str) -> RouterError:
    """503 when shared state is down and the operator chose to fail closed."""
    return RouterError(
        503,
        f"Rate-limit state is unavailable ({reason}); the proxy refuses requests until it returns.",
        type=SERVER,
        code="service_unavailable",
        headers={"retry-after": "1"},
    )
