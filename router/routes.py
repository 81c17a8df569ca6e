"""routes.yaml: its schema, its cross-checks, and the RouteTable built from it once per load.

Unknown keys are rejected and every error names its path
(`models.fast.targets[1].provider: unknown provider 'nebuis'`), so an operator editing the
file on a live system learns exactly what to fix before anything is swapped in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from providers import REGISTRY, Adapter, ProviderSettings
from router.errors import dotted
from router.keys import KeyRing, build_keyring
from router.limits import LimitSpec, limit_spec
from router.rules import RuleSet, check_rules, compile_rules
from router.strategies import strategy_problems

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


class ConfigError(Exception):
    """One message per problem, each starting with its path in the file."""

    def __init__(self, problems: list[str], source: str = "routes.yaml") -> None:
        self.problems = problems
        self.source = source
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


@dataclass(frozen=True, slots=True)
class Target:
    """One place a public model can be served; `id` is a bounded metric label."""

    id: str
    provider: str
    model: str
    adapter: Adapter
    weight: float
    price: Price | None
    limits: LimitSpec | None
    timeout_s: float
    connect_timeout_s: float
    idle_timeout_s: float = 60.0      # longest upstream silence between events, or in a body


@dataclass(frozen=True, slots=True)
class ModelGroup:
    name: str
    targets: tuple[Target, ...]
    strategy: str
    limits: LimitSpec | None
    deadline_s: float
    max_attempts: int
    retry: Retry
    max_output_tokens: int
    resume: Resume | None = None
    hedge: Hedge | None = None


@dataclass(slots=True)
class RouteTable:
    """Everything per-config, computed once at load; requests only read it."""

    config: RoutesConfig
    groups: dict[str, ModelGroup]
    adapters: dict[str, Adapter]
    warnings: list[str] = field(default_factory=list)
    generation: int = 0
    keys: KeyRing | None = None          # None: no `keys:` section, the proxy is open
    rules: RuleSet = field(default_factory=RuleSet)

    @property
    def settings(self) -> Settings:
        return self.config.settings


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key (check its spelling and indentation)"
    if err["type"] == "missing":
        return "required key is missing"
    if err["type"] == "value_error" and "error" in err.get("ctx", {}):
        return str(err["ctx"]["error"])
    return err["msg"][0].lower() + err["msg"][1:]


def parse(data: Any, source: str = "routes.yaml", environ: dict[str, str] | None = None) -> RouteTable:
    """Validate a parsed routes document whole and build its table, or raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(["(top level): must be a mapping with 'providers' and 'models'"], source)
    try:
        cfg = RoutesConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([f"{dotted(e['loc']) or '(top level)'}: {_message(e)}" for e in exc.errors()], source) from None
    env = os.environ if environ is None else environ
    problems: list[str] = []
    warnings: list[str] = []
    adapters: dict[str, Adapter] = {}
    for name, p in cfg.providers.items():
        cls = REGISTRY.get(p.kind)
        if cls is None:
            problems.append(f"providers.{name}.kind: unknown kind '{p.kind}' (one of: {', '.join(REGISTRY)})")
            continue
        key = env.get(p.api_key_env) if p.api_key_env else None
        if p.api_key_env and not key:
            warnings.append(f"providers.{name}.api_key_env: environment variable {p.api_key_env} is not set")
        try:
            adapters[name] = cls(ProviderSettings(name, p.base_url, key, p.options))
        except ValueError as exc:
            problems.append(f"providers.{name}.options: {exc}")
    secrets = tuple(secret for a in adapters.values() for secret in a.secrets)
    for adapter in adapters.values():
        adapter.secrets = secrets
    groups: dict[str, ModelGroup] = {}
    s = cfg.settings
    for mname, m in cfg.models.items():
        targets = []
        for i, t in enumerate(m.targets):
            if t.provider not in cfg.providers:
                problems.append(f"models.{mname}.targets[{i}].provider: unknown provider '{t.provider}'"
                                f" (defined: {', '.join(cfg.providers)})")
                continue
            if t.provider not in adapters:
                continue
            p = cfg.providers[t.provider]
            targets.append(Target(f"{t.provider}/{t.model}", t.provider, t.model, adapters[t.provider],
                                  t.weight, t.price, limit_spec(t.limits), p.timeout_s, p.connect_timeout_s,
                                  p.stream_idle_timeout_s or s.stream_idle_timeout_s))
        problems += strategy_problems(f"models.{mname}.strategy", m.strategy, [m])
        groups[mname] = ModelGroup(mname, tuple(targets), m.strategy, limit_spec(m.limits), m.deadline_s or s.deadline_s,
                                   m.max_attempts or s.max_attempts, m.retry or s.retry,
                                   m.max_output_tokens or s.max_output_tokens, m.resume, m.hedge)
    keys = None
    if cfg.keys is None:
        warnings.append("no 'keys:' section: the proxy is OPEN, anyone who can reach it may use every model")
    else:
        keys, key_problems, key_warnings = build_keyring(cfg.keys, env)
        problems += key_problems
        warnings += key_warnings
    problems += check_rules(cfg, warnings)
    if problems:
        raise ConfigError(problems, source)
    return RouteTable(cfg, groups, adapters, warnings, keys=keys,
                      rules=compile_rules(cfg.rules, s.default_max_tokens))


def load(path: str | Path, environ: dict[str, str] | None = None) -> RouteTable:
    """Read, parse and validate a routes file; every failure is a ConfigError naming the file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read the file: {exc.strerror}"], source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"byte {exc.start}: not UTF-8 text"], source) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f"line {where.line + 1}, column {where.column + 1}: " if where else ""
        raise ConfigError([f"{at}not valid YAML: {getattr(exc, 'problem', exc)}"], source) from None
    return parse(data, source, environ)
