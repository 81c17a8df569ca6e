"""The series a request touches are updated without prometheus_client's per-call checks and
lock (router/metrics.py): what /metrics shows must be exactly what its own calls give."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from router.metrics import LATENCY_BUCKETS, TTFT_BUCKETS, Metrics

# Any duration, and the buckets' own bounds (a bucket counts what equals its bound).
AMOUNTS = st.one_of(st.floats(min_value=0, max_value=1000, allow_nan=False),
                    st.sampled_from(LATENCY_BUCKETS + TTFT_BUCKETS + (0.0,)))


def exposition(metrics: Metrics) -> list[str]:
    """/metrics without the series' creation times, which differ between two registries."""
    return [line for line in metrics.render().decode().splitlines() if "_created" not in line]


@settings(max_examples=100, deadline=None)
@given(amounts=st.lists(AMOUNTS, max_size=12), stream=st.booleans(), status=st.sampled_from([200, 429, 502]))
def test_fast_updates_show_what_prometheus_client_s_own_calls_show(amounts, stream, status):
    fast, own = Metrics(), Metrics()
    s = "true" if stream else "false"
    for x in amounts:
        series = fast.request_series("m", "p", "k", "chat", stream, status)
        series.requests(1)
        series.duration(x)
        series.overhead(x)
        series.prompt_tokens(int(x))
        series.completion_tokens(int(x) + 1)
        series.cached_tokens(int(x) // 2)
        series.spend(x / 7)
        attempts, duration = fast.attempt_series("p", "ok")
        attempts(1)
        duration(x)
        fast.ttft_series("m", "p")(x)
        fast.in_flight_add(1)

        own.requests.labels("m", "p", "k", "chat", s, f"{status // 100}xx").inc()
        own.request_duration.labels("m", "p", "chat", s).observe(x)
        own.overhead.labels("chat", s).observe(x)
        own.tokens.labels("m", "p", "k", "prompt").inc(int(x))
        own.tokens.labels("m", "p", "k", "completion").inc(int(x) + 1)
        own.tokens.labels("m", "p", "k", "cached").inc(int(x) // 2)
        own.spend.labels("k", "m", "p").inc(x / 7)
        own.attempts.labels("p", "ok").inc()
        own.upstream_duration.labels("p", "ok").observe(x)
        own.ttft.labels("m", "p").observe(x)
        own.in_flight.inc()
    if amounts:
        fast.in_flight_add(-1)
        own.in_flight.dec()
    assert exposition(fast) == exposition(own)
