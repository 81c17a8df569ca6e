"""Every Prometheus metric the proxy exports, defined once.

Each app owns its own `CollectorRegistry` (no module-level state), so tests can run
several proxies in one process. Label values are always bounded: a client key is known
by its configured name, a model the config does not know is counted as `unknown`.

A request touches about a dozen series. prometheus_client's `inc()` checks the metric and
takes a lock on every call, and `observe()` walks the buckets in Python: together about a
tenth of a request's instructions. The series a request touches are looked up once per
label combination and updated through `adder` and `observer`, which go to the series'
values directly; in one process the values have no lock (`LoopValue`): only the event
loop's thread touches them. `tests/test_metrics_fast.py` holds the exposition to what
prometheus_client's own calls give.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from typing import Any, Callable, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values
from prometheus_client.exposition import generate_latest

UNKNOWN = "unknown"
ANONYMOUS = "anonymous"

# LLM calls take from a few milliseconds (a cached error) to minutes (a long generation).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)

CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}


Add = Callable[[float], None]


class RequestSeries(NamedTuple):
    """What one finished request adds to (counters) and observes (histograms)."""

    requests: Add
    duration: Add
    overhead: Add
    prompt_tokens: Add
    completion_tokens: Add
    cached_tokens: Add
    spend: Add


class LoopValue:
    """A series' value for a proxy in one process: prometheus_client's default takes a lock
    on every update, and here only the event loop's thread updates or reads one."""

    _multiprocess = False
    __slots__ = ("_value", "_exemplar")

    def __init__(self, typ: str, metric_name: str, name: str, labelnames: Any, labelvalues: Any,
                 help_text: str, **kwargs: Any) -> None:
        self._value = 0.0
        self._exemplar: Any = None

    def inc(self, amount: float) -> None:
        self._value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self._value = value

    def set_exemplar(self, exemplar: Any) -> None:
        self._exemplar = exemplar

    def get(self) -> float:
        return self._value

    def get_exemplar(self) -> Any:
        return self._exemplar


def adder(series: Any) -> Add:
    """`series.inc` without its per-call checks: the value's own inc (a labelled series is
    always observable, and what the proxy adds is never negative)."""
    inc = getattr(getattr(series, "_value", None), "inc", None)
    return inc if callable(inc) else series.inc  # type: ignore[no-any-return]


def observer(series: Any) -> Add:
    """`series.observe` as one bisect and two increments."""
    try:
        bounds, buckets, total = list(series._upper_bounds), list(series._buckets), series._sum
    except AttributeError:
        return series.observe   # type: ignore[no-any-return]

    def observe(amount: float) -> None:
        buckets[bisect_left(bounds, amount)].inc(1)
        total.inc(amount)
    return observe


class Metrics:
    """The proxy's metrics on one registry; `render()` is the /metrics body."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # `router serve --workers N` sets PROMETHEUS_MULTIPROC_DIR: values then live in files
        # there that every worker's /metrics sums (the gauges say how, below).
        self._shared_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if self._shared_dir:
            values.ValueClass = values.MultiProcessValue()
        else:
            values.ValueClass = LoopValue
        r = self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "router_requests_total",
            "Client requests by public model, provider that served, client key, endpoint, stream and status class.",
            ["model", "provider", "key", "endpoint", "stream", "status_class"],
            registry=r,
        )
        self.request_duration = Histogram(
            "router_request_duration_seconds",
            "Whole-request latency seen by the client, to the last byte.",
            ["model", "provider", "endpoint", "stream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "router_upstream_duration_seconds",
            "Latency of one upstream attempt, to the response headers (non-stream: the whole body).",
            ["provider", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "router_time_to_first_token_seconds",
            "Time from the request's arrival to the first streamed event sent to the client.",
            ["model", "provider"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "router_overhead_seconds",
            "Time the proxy itself spent on a request, outside upstream calls and backoff waits.",
            ["endpoint", "stream"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "router_tokens_total",
            "Tokens by kind (prompt, completion, cached) as the vendor reported them.",
            ["model", "provider", "key", "kind"],
            registry=r,
        )
        self.spend = Counter(
            "router_spend_usd_total",
            "Spend in USD from the price table and the vendor's reported usage.",
            ["key", "model", "provider"],
            registry=r,
        )
        self.attempts = Counter(
            "router_upstream_attempts_total",
            "Upstream attempts by provider and outcome (ok, or the failure reason).",
            ["provider", "outcome"],
            registry=r,
        )
        self.retries = Counter(
            "router_retries_total",
            "Retries of the same target, by provider and the reason for the retry.",
            ["provider", "reason"],
            registry=r,
        )
        self.fallbacks = Counter(
            "router_fallbacks_total",
            "Moves from one target to the next, by the provider left and the reason.",
            ["provider", "reason"],
            registry=r,
        )
        self.resumes = Counter(
            "router_resumes_total",
            "Broken streams continued on another target, by public model and the providers left and "
            "taken (to_provider=none: no target could continue it). Each is billed by both providers.",
            ["model", "from_provider", "to_provider"],
            registry=r,
        )
        self.hedges_started = Counter(
            "router_hedges_started_total",
            "Streams also started on a second target because no first event came in time, by the hedge's provider.",
            ["model", "provider"],
            registry=r,
        )
        self.hedges_won = Counter(
            "router_hedges_won_total",
            "Hedged starts by the side whose first event came first (first, hedge) and its provider.",
            ["model", "provider", "side"],
            registry=r,
        )
        self.hedge_wasted_tokens = Counter(
            "router_hedge_wasted_prompt_tokens_total",
            "Prompt tokens (estimated) sent to the losing side of a hedge: what its vendor may bill for nothing.",
            ["provider"],
            registry=r,
        )
        self.dropped_fields = Counter(
            "router_dropped_fields_total",
            "Hint-only request fields a provider cannot take, dropped (with a log note) rather than refused.",
            ["provider", "field"],
            registry=r,
        )
        self.limit_rejections = Counter(
            "router_limit_rejections_total",
            "Requests refused or targets skipped by a rate limit or budget, by scope and limit.",
            ["scope", "limit"],
            registry=r,
        )
        self.circuit_state = Gauge(
            "router_circuit_state",
            "Circuit breaker state per target: 0 closed, 1 half-open, 2 open.",
            ["target"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.in_flight = Gauge(
            "router_requests_in_flight",
            "Client requests being served right now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.config_reloads = Counter(
            "router_config_reloads_total",
            "routes.yaml reloads by result (ok, error).",
            ["result"],
            registry=r,
        )
        self.redis_errors = Counter(
            "router_redis_errors_total",
            "Shared-state operations that failed against Redis, by operation.",
            ["op"],
            registry=r,
        )
        self.admissions_ahead = Counter(
            "router_admissions_ahead_total",
            "Admissions taken ahead (ROUTER_ADMIT_AHEAD) by outcome: taken in Redis, used by a request, "
            "returned unused (at the end of their life, on a failure, at shutdown).",
            ["outcome"],
            registry=r,
        )
        self.redis_up = Gauge(
            "router_redis_up",
            "1 when the shared-state backend answers, 0 while the proxy runs on local state.",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.config_info = Gauge(
            "router_config_generation",
            "Generation number of the routes table in force (rises on every successful reload).",
            registry=r,
            multiprocess_mode="livemin",
        )

        self.in_flight_add = adder(self.in_flight)
        self._circuit_seen: dict[str, str] = {}
        self._series: dict[tuple[str, str, str, str, bool, int], RequestSeries] = {}
        self._attempts: dict[tuple[str, str], tuple[Add, Add]] = {}
        self._ttft: dict[tuple[str, str], Add] = {}
        # Series an alert watches with increase() must exist at 0 before their first event.
        for result in ("ok", "error"):
            self.config_reloads.labels(result)

    def request_series(self, model: str, provider: str, key: str, endpoint: str, stream: bool,
                       status: int) -> RequestSeries:
        """The series one finished request touches, looked up once per label combination
        (labels() per request costs a lock and a tuple per metric)."""
        ident = (model, provider, key, endpoint, stream, status // 100)
        series = self._series.get(ident)
        if series is None:
            s = "true" if stream else "false"
            series = self._series[ident] = RequestSeries(
                adder(self.requests.labels(model, provider, key, endpoint, s, f"{status // 100}xx")),
                observer(self.request_duration.labels(model, provider, endpoint, s)),
                observer(self.overhead.labels(endpoint, s)),
                adder(self.tokens.labels(model, provider, key, "prompt")),
                adder(self.tokens.labels(model, provider, key, "completion")),
                adder(self.tokens.labels(model, provider, key, "cached")),
                adder(self.spend.labels(key, model, provider)),
            )
        return series

    def attempt_series(self, provider: str, outcome: str) -> tuple[Add, Add]:
        """(add to the attempts counter, observe the upstream duration) of one provider and
        outcome, looked up once per pair, as request_series."""
        series = self._attempts.get((provider, outcome))
        if series is None:
            series = self._attempts[(provider, outcome)] = (
                adder(self.attempts.labels(provider, outcome)), observer(self.upstream_duration.labels(provider, outcome)))
        return series

    def ttft_series(self, model: str, provider: str) -> Add:
        """Observe the time to first token of one model and provider, looked up once per pair."""
        series = self._ttft.get((model, provider))
        if series is None:
            series = self._ttft[(model, provider)] = observer(self.ttft.labels(model, provider))
        return series

    def set_circuit(self, target: str, state: str) -> None:
        """Circuit state as this replica last saw it; the gauge is touched only on change."""
        if self._circuit_seen.get(target) != state:
            self._circuit_seen[target] = state
            self.circuit_state.labels(target).set(CIRCUIT_STATES[state])

    def render(self) -> bytes:
        if self._shared_dir:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self._shared_dir)
            return generate_latest(registry)
        return generate_latest(self.registry)
