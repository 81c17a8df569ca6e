"""routes.yaml's schema: the pydantic models a routes file is validated into, and nothing else.

Unknown keys are rejected (`Strict`), so a misspelt key is an error naming its path rather
than a silent default. Cross-checks between sections, and compiling the result into a
RouteTable, are router.routes' job; this module imports none of the modules that compile it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
NonNegInt = Annotated[int, Field(ge=0)]
Name = Annotated[str, Field(min_length=1)]

def _listify(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


# One name or glob, or a list of them: always a list once validated.
Globs = Annotated[list[Name], BeforeValidator(_listify), Field(min_length=1)]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(Strict):
    rpm: PositiveInt | None = None
    tpm: PositiveInt | None = None
    concurrent: PositiveInt | None = None


class Budget(Strict):
    daily_usd: PositiveFloat | None = None
    monthly_usd: PositiveFloat | None = None


class Price(Strict):
    """USD per million tokens. `cached_input` prices prompt tokens served from the vendor's cache."""

    input: NonNegFloat
    output: NonNegFloat
    cached_input: NonNegFloat | None = None


class Retry(Strict):
    attempts: Annotated[int, Field(ge=1, le=10)] = 2          # tries of one target, first included
    backoff_initial_s: NonNegFloat = 0.1
    backoff_max_s: NonNegFloat = 2.0
    retry_after_cap_s: NonNegFloat = 5.0      # also bounds backoff waits: past it, the next target

    @model_validator(mode="after")
    def _ordered(self) -> "Retry":
        if self.backoff_initial_s > self.backoff_max_s:
            raise ValueError(f"'backoff_initial_s' ({self.backoff_initial_s:g}) is above 'backoff_max_s' "
                             f"({self.backoff_max_s:g})")
        return self


class ProviderConfig(Strict):
    kind: str
    base_url: Annotated[str, Field(pattern=r"^https?://[^\s]+$")]
    api_key_env: EnvName | None = None
    timeout_s: PositiveFloat = 600.0
    connect_timeout_s: PositiveFloat = 5.0
    stream_idle_timeout_s: PositiveFloat | None = None   # overrides settings.stream_idle_timeout_s
    options: dict[str, Any] = Field(default_factory=dict)


class TargetConfig(Strict):
    provider: str
    model: Annotated[str, Field(min_length=1)]
    weight: NonNegFloat = 1.0
    price: Price | None = None
    limits: Limits | None = None


class Resume(Strict):
    """Continue a stream that broke after content went out on the next candidate target."""

    max_resumes: Annotated[int, Field(ge=1, le=5)] = 1


class Hedge(Strict):
    """Start the same stream on the next healthy target when no first event came within
    `after_ms`, or within `factor` times the target's time-to-first-token EWMA (`after: ttft_p95`)."""

    after_ms: PositiveInt | None = None
    after: Literal["ttft_p95"] | None = None
    factor: PositiveFloat = 2.0            # p95 approximated as this multiple of the TTFT EWMA
    fallback_ms: PositiveInt = 2000        # `after: ttft_p95` for a target with no TTFT yet

    @model_validator(mode="after")
    def _one(self) -> "Hedge":
        if (self.after_ms is None) == (self.after is None):
            raise ValueError("give exactly one of 'after_ms' or 'after: ttft_p95'")
        return self

    def threshold_s(self, ttft_ewma: float | None) -> float:
        if self.after_ms is not None:
            return self.after_ms / 1000
        return self.factor * ttft_ewma if ttft_ewma else self.fallback_ms / 1000


class ModelConfig(Strict):
    targets: Annotated[list[TargetConfig], Field(min_length=1)]
    strategy: str = "fallback"
    limits: Limits | None = None
    deadline_s: PositiveFloat | None = None
    max_attempts: PositiveInt | None = None
    retry: Retry | None = None
    max_output_tokens: PositiveInt | None = None     # ceiling on a request's max_tokens; else settings'
    resume: Resume | None = None      # off unless given
    hedge: Hedge | None = None        # off unless given


class Settings(Strict):
    deadline_s: PositiveFloat = 300.0
    max_attempts: PositiveInt = 6
    retry: Retry = Retry()
    max_body_bytes: PositiveInt = 4 * 1024 * 1024
    default_max_tokens: PositiveInt = 1024
    # Longest upstream silence between a stream's events (or a body's reads), and longest a
    # client may leave a stream's write unread; a provider may set its own.
    stream_idle_timeout_s: PositiveFloat = 60.0
    max_output_tokens: PositiveInt = 131072      # ceiling on a request's max_tokens / max_completion_tokens


class KeyConfig(Strict):
    """A client key: its secret from an env var, or only its SHA-256 (hex) in the file."""

    key_env: EnvName | None = None
    key_sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")] | None = None
    models: Annotated[list[Name], Field(min_length=1)] | None = None    # globs; absent: all
    limits: Limits | None = None
    budget: Budget | None = None

    @model_validator(mode="after")
    def _one_secret(self) -> "KeyConfig":
        if (self.key_env is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of 'key_env' or 'key_sha256'")
        return self


class Bounds(Strict):
    min: NonNegInt | None = None
    max: NonNegInt | None = None

    @model_validator(mode="after")
    def _some(self) -> "Bounds":
        if self.min is None and self.max is None:
            raise ValueError("give 'min', 'max' or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"'min' ({self.min}) is above 'max' ({self.max})")
        return self


class HeaderMatch(Strict):
    equals: str | None = None
    glob: Name | None = None
    present: bool | None = None

    @model_validator(mode="after")
    def _one(self) -> "HeaderMatch":
        if sum(v is not None for v in (self.equals, self.glob, self.present)) != 1:
            raise ValueError("give exactly one of 'equals', 'glob' or 'present'")
        return self


HeaderName = Annotated[str, Field(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]
# A bare string is a glob (an exact value when it has no wildcard).
HeaderSpec = Annotated[HeaderMatch, BeforeValidator(lambda v: {"glob": v} if isinstance(v, str) else v)]


class Match(Strict):
    """Every condition given must hold; none given matches every request."""

    model: Globs | None = None
    key: Globs | None = None
    headers: dict[HeaderName, HeaderSpec] | None = None
    endpoint: Literal["completions", "chat"] | None = None
    stream: bool | None = None
    prompt_tokens: Bounds | None = None
    max_tokens: Bounds | None = None


class Deny(Strict):
    message: Name
    status: Literal[400, 403] = 403


DenySpec = Annotated[Deny, BeforeValidator(lambda v: {"message": v} if isinstance(v, str) else v)]


class RuleConfig(Strict):
    name: Name | None = None
    match: Match = Match()
    route: Globs | None = None          # model group name(s); replaces the request's model and models
    rewrite: Name | None = None         # replaces `model` only; the client's `models` still follow
    strategy: str | None = None
    deny: DenySpec | None = None

    @model_validator(mode="after")
    def _action(self) -> "RuleConfig":
        if self.deny is not None and (self.route or self.rewrite or self.strategy):
            raise ValueError("'deny' cannot be combined with 'route', 'rewrite' or 'strategy'")
        if self.route is not None and self.rewrite is not None:
            raise ValueError("give 'route' or 'rewrite', not both")
        if self.deny is None and self.route is None and self.rewrite is None and self.strategy is None:
            raise ValueError("a rule needs an action: 'route', 'rewrite', 'strategy' or 'deny'")
        return self


class RoutesConfig(Strict):
    providers: Annotated[dict[str, ProviderConfig], Field(min_length=1)]
    models: Annotated[dict[str, ModelConfig], Field(min_length=1)]
    settings: Settings = Settings()
    keys: Annotated[dict[Name, KeyConfig], Field(min_length=1)] | None = None
    rules: list[RuleConfig] = Field(default_factory=list)
