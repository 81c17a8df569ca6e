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
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from providers import REGISTRY, Adapter, ProviderSettings

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]


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
    retry_after_cap_s: NonNegFloat = 5.0


class ProviderConfig(Strict):
    kind: str
    base_url: Annotated[str, Field(pattern=r"^https?://[^\s]+$")]
    api_key_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    timeout_s: PositiveFloat = 600.0
    connect_timeout_s: PositiveFloat = 5.0
    options: dict[str, Any] = Field(default_factory=dict)


class TargetConfig(Strict):
    provider: str
    model: Annotated[str, Field(min_length=1)]
    weight: NonNegFloat = 1.0
    price: Price | None = None
    limits: Limits | None = None


class ModelConfig(Strict):
    targets: Annotated[list[TargetConfig], Field(min_length=1)]
    strategy: Literal["fallback", "weighted", "latency", "cost"] = "fallback"
    limits: Limits | None = None
    deadline_s: PositiveFloat | None = None
    max_attempts: PositiveInt | None = None
    retry: Retry | None = None


class Settings(Strict):
    deadline_s: PositiveFloat = 300.0
    max_attempts: PositiveInt = 6
    retry: Retry = Retry()
    max_body_bytes: PositiveInt = 4 * 1024 * 1024
    default_max_tokens: PositiveInt = 1024


class RoutesConfig(Strict):
    providers: Annotated[dict[str, ProviderConfig], Field(min_length=1)]
    models: Annotated[dict[str, ModelConfig], Field(min_length=1)]
    settings: Settings = Settings()


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
    limits: Limits | None
    timeout_s: float
    connect_timeout_s: float


@dataclass(frozen=True, slots=True)
class ModelGroup:
    name: str
    targets: tuple[Target, ...]
    strategy: str
    limits: Limits | None
    deadline_s: float
    max_attempts: int
    retry: Retry


@dataclass(slots=True)
class RouteTable:
    """Everything per-config, computed once at load; requests only read it."""

    config: RoutesConfig
    groups: dict[str, ModelGroup]
    adapters: dict[str, Adapter]
    warnings: list[str] = field(default_factory=list)
    generation: int = 0

    @property
    def settings(self) -> Settings:
        return self.config.settings


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _message(err: dict[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key (check its spelling and indentation)"
    if err["type"] == "missing":
        return "required key is missing"
    return err["msg"][0].lower() + err["msg"][1:]


def parse(data: Any, source: str = "routes.yaml", environ: dict[str, str] | None = None) -> RouteTable:
    """Validate a parsed routes document whole and build its table, or raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(["(top level): must be a mapping with 'providers' and 'models'"], source)
    try:
        cfg = RoutesConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([f"{_loc(e['loc'])}: {_message(e)}" for e in exc.errors()], source) from None
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
                                  t.weight, t.price, t.limits, p.timeout_s, p.connect_timeout_s))
        if m.strategy == "cost" and any(t.price is None for t in m.targets):
            problems.append(f"models.{mname}.strategy: 'cost' needs a price on every target")
        groups[mname] = ModelGroup(mname, tuple(targets), m.strategy, m.limits, m.deadline_s or s.deadline_s,
                                   m.max_attempts or s.max_attempts, m.retry or s.retry)
    if problems:
        raise ConfigError(problems, source)
    return RouteTable(cfg, groups, adapters, warnings)


def load(path: str | Path, environ: dict[str, str] | None = None) -> RouteTable:
    """Read, parse and validate a routes file; every failure is a ConfigError naming the file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read the file: {exc.strerror}"], source) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f"line {where.line + 1}, column {where.column + 1}: " if where else ""
        raise ConfigError([f"{at}not valid YAML: {getattr(exc, 'problem', exc)}"], source) from None
    return parse(data, source, environ)
