"""Target health and the circuit breaker, shared by replicas, on every backend.

Outcomes are recorded on one replica and read on another: a failing vendor must be
failing for the whole fleet. Time is the fake clock of the `backend` fixture.
"""

from __future__ import annotations

import math

import pytest
import redis

from router.health import TargetHealth
from router.limits import Admission, LimitSpec
from router.backends import create_state
from router.state import SharedState, StateSettings
from tests.fixtures_redis import Backend, Clock

T = "openai:gpt-x"
FAST = dict(failure_threshold=3, min_samples=10, error_rate_threshold=0.5, cooldown_s=10.0, half_open_probes=2)


async def fail(states: list[SharedState], n: int, target: str = T) -> None:
    for i in range(n):
        await states[i % len(states)].record(target, False, 0.5)


async def state_of(s: SharedState, target: str = T) -> TargetHealth:
    return (await s.health([target]))[target]


async def open_circuit(backend: Backend) -> list[SharedState]:
    a, b = await backend.make(2, **FAST)
    await fail([a, b], 3)
    return [a, b]


@pytest.mark.parametrize(
    ("outcomes", "state", "consecutive"),
    [
        pytest.param("FF", "closed", 2, id="under-threshold-stays-closed"),
        pytest.param("FFF", "open", 3, id="threshold-consecutive-failures-open"),
        pytest.param("FFSFF", "closed", 2, id="a-success-resets-the-run"),
        pytest.param("FSFSFSFSFS", "closed", 0, id="half-failing-under-min-samples"),
        pytest.param("FSFSFSFSFSF", "open", 1, id="error-rate-over-threshold-with-enough-samples"),
        pytest.param("SSSSSSSSFSFF", "closed", 2, id="error-rate-under-threshold"),
    ],
)
async def test_closed_circuit_opens_on_consecutive_failures_or_error_rate(
    backend: Backend, outcomes: str, state: str, consecutive: int
) -> None:
    a, b = await backend.make(2, **FAST)
    for i, o in enumerate(outcomes):
        await (a, b)[i % 2].record(T, o == "S", 0.2)
    h = await state_of(b)
    assert (h.state, h.consecutive_failures) == (state, consecutive)
    assert h.error_rate == pytest.approx(outcomes.count("F") / len(outcomes))
    assert h.usable is (state == "closed")


async def test_open_circuit_turns_half_open_after_the_cooldown_on_every_replica(backend: Backend) -> None:
    a, b = await open_circuit(backend)
    backend.clock.advance(9.9)
    assert (await state_of(b)).state == "open"
    assert await b.reserve_target(T, LimitSpec(), 10) is None
    backend.clock.advance(0.1)
    h = await state_of(a)
    assert (h.state, h.probes_left, h.usable) == ("half_open", 2, True)


async def test_half_open_lets_only_the_configured_probes_through(backend: Backend) -> None:
    a, b = await open_circuit(backend)
    backend.clock.advance(10)
    p1 = await a.reserve_target(T, LimitSpec(), 10)
    p2 = await b.reserve_target(T, LimitSpec(), 10)
    assert p1 is not None and p1.probe and p2 is not None and p2.probe
    assert await a.reserve_target(T, LimitSpec(), 10) is None
    h = await state_of(b)
    assert (h.state, h.probes_left, h.usable) == ("half_open", 0, False)


async def test_probe_success_closes_and_forgets_the_old_errors(backend: Backend) -> None:
    a, b = await open_circuit(backend)
    backend.clock.advance(10)
    assert await a.reserve_target(T, LimitSpec(), 10) is not None
    await a.record(T, True, 0.1, probe=True)
    h = await state_of(b)
    assert (h.state, h.consecutive_failures, h.error_rate, h.samples) == ("closed", 0, 0.0, 0)
    g = await b.reserve_target(T, LimitSpec(), 10)
    assert g is not None and not g.probe


async def test_probe_failure_reopens_for_another_cooldown(backend: Backend) -> None:
    a, b = await open_circuit(backend)
    backend.clock.advance(10)
    assert await a.reserve_target(T, LimitSpec(), 10) is not None
    await a.record(T, False, 0.1, probe=True)
    assert (await state_of(b)).state == "open"
    backend.clock.advance(9)
    assert (await state_of(b)).state == "open"
    backend.clock.advance(1)
    assert (await state_of(b)).probes_left == 2


@pytest.mark.parametrize("ok", [True, False], ids=["success", "failure"])
async def test_only_the_probe_itself_moves_a_half_open_circuit(backend: Backend, ok: bool) -> None:
    a, b = await open_circuit(backend)
    backend.clock.advance(10)
    assert await a.reserve_target(T, LimitSpec(), 10) is not None
    await b.record(T, ok, 0.1)  # an attempt begun before the circuit opened, or a last resort
    h = await state_of(a)
    assert (h.state, h.probes_left) == ("half_open", 1)


async def test_a_probe_that_ends_without_a_verdict_frees_its_slot_and_keeps_the_circuit_half_open(
    backend: Backend,
) -> None:
    a, b = await open_circuit(backend)
    backend.clock.advance(10)
    assert await a.reserve_target(T, LimitSpec(), 10) is not None
    assert await b.reserve_target(T, LimitSpec(), 10) is not None
    assert (await state_of(a)).probes_left == 0
    await a.record(T, None, None, probe=True)  # the client's own 400, or the client left
    h = await state_of(b)
    assert (h.state, h.probes_left) == ("half_open", 1)


async def test_probe_slots_of_a_replica_that_died_mid_probe_expire(backend: Backend) -> None:
    a, b = await open_circuit(backend)
    backend.clock.advance(10)
    for s in (a, b):
        assert await s.reserve_target(T, LimitSpec(), 10) is not None  # never recorded
    assert (await state_of(a)).probes_left == 0
    backend.clock.advance(10)
    assert (await state_of(a)).probes_left == 2
    assert await b.reserve_target(T, LimitSpec(), 10) is not None


async def test_a_refused_probe_leaves_the_target_quota_uncharged(backend: Backend) -> None:
    a, b = await open_circuit(backend)
    quota = LimitSpec(rpm=1)
    for _ in range(3):
        assert await a.reserve_target(T, quota, 10) is None  # open: refused before the vendor
    backend.clock.advance(10)
    g = await b.reserve_target(T, quota, 10)
    assert g is not None and g.probe


@pytest.mark.parametrize(
    ("records", "ewma"),
    [
        pytest.param([(True, 1.0)], 1.0, id="first-sample-is-the-average"),
        pytest.param([(True, 1.0), (True, 2.0)], 1.3, id="alpha-weights-the-newest"),
        pytest.param([(True, 1.0), (True, 2.0), (True, 2.0)], 1.51, id="converges"),
        pytest.param([(True, 1.0), (False, 30.0)], 1.0, id="failures-do-not-move-it"),
        pytest.param([(True, 1.0), (True, None)], 1.0, id="no-latency-no-change"),
        pytest.param([(False, 5.0)], None, id="unknown-until-a-success"),
    ],
)
async def test_latency_ewma(backend: Backend, records: list[tuple[bool, float | None]], ewma: float | None) -> None:
    a, b = await backend.make(2, ewma_alpha=0.3)
    for i, (ok, latency) in enumerate(records):
        await (a, b)[i % 2].record(T, ok, latency)
    got = (await state_of(a)).latency_ewma
    assert got == (pytest.approx(ewma) if ewma is not None else None)


@pytest.mark.parametrize(
    ("records", "latency", "ttft"),
    [
        pytest.param([(True, 0.2, True)], None, 0.2, id="stream-feeds-ttft-only"),
        pytest.param([(True, 2.0, False)], 2.0, None, id="non-stream-feeds-latency-only"),
        pytest.param([(True, 2.0, False), (True, 0.2, True), (True, 3.0, False), (True, 0.4, True)], 2.3, 0.26,
                     id="interleaved-each-its-own-average"),
        pytest.param([(True, 0.2, True), (False, 9.0, True)], None, 0.2, id="stream-failures-do-not-move-ttft"),
        pytest.param([(True, 0.2, True), (True, None, True)], None, 0.2, id="no-latency-no-change"),
    ],
)
async def test_stream_time_to_first_token_is_kept_apart_from_whole_answer_latency(
    backend: Backend, records: list[tuple[bool, float | None, bool]], latency: float | None, ttft: float | None
) -> None:
    a, b = await backend.make(2, ewma_alpha=0.3)
    for i, (ok, seconds, stream) in enumerate(records):
        await (a, b)[i % 2].record(T, ok, seconds, stream=stream)
    _, admitted = await b.admit(Admission(None, None, None, "gpt-x", None, 1), [T])
    for h in (await state_of(a), admitted[T]):  # the other replica sees both, read alone or at admit
        assert h.latency_ewma == (pytest.approx(latency) if latency is not None else None)
        assert h.ttft_ewma == (pytest.approx(ttft) if ttft is not None else None)


async def test_a_health_record_stored_before_ttft_existed_reads_ttft_as_unknown(redis_url: str) -> None:
    s = create_state(redis_url, StateSettings(clock=Clock(), redis_clock=False, redis_timeout_s=2.0))
    try:
        with redis.Redis.from_url(redis_url) as r:  # what the scripts wrote before the tt field
            r.hset(f"router:{{t:{T}}}:health", mapping={"st": "closed", "oa": "0", "cf": "0", "ew": "0.500000"})
        h = await state_of(s)
        assert (h.state, h.latency_ewma, h.ttft_ewma) == ("closed", pytest.approx(0.5), None)
        await s.record(T, True, 0.2, stream=True)
        h = await state_of(s)
        assert (h.latency_ewma, h.ttft_ewma) == (pytest.approx(0.5), pytest.approx(0.2))
    finally:
        await s.close()


async def test_error_rate_forgets_failures_older_than_the_window(backend: Backend) -> None:
    (s,) = await backend.make(error_window_s=60.0, failure_threshold=100)
    await fail([s], 4)
    await s.record(T, True, 0.1)
    assert (await state_of(s)).error_rate == pytest.approx(0.8)
    backend.clock.advance(61)
    await s.record(T, True, 0.1)
    h = await state_of(s)
    assert (h.error_rate, h.samples) == (0.0, 1)


async def test_health_reads_every_candidate_in_one_call_and_unknown_targets_are_healthy(backend: Backend) -> None:
    a, b = await open_circuit(backend)
    await a.record("other", True, 0.3)
    _, health = await b.admit(Admission(None, None, None, "gpt-x", None, 1), [T, "other", "never-seen"])
    assert [health[t].state for t in (T, "other", "never-seen")] == ["open", "closed", "closed"]
    assert health["other"].latency_ewma == pytest.approx(0.3)
    assert health["never-seen"].usable and health["never-seen"].latency_ewma is None


async def test_circuit_state_metric_follows_transitions(backend: Backend) -> None:
    a, b = await backend.make(2, **FAST)
    gauge = backend.metrics.circuit_state.labels(T)
    await a.record(T, True, 0.1)
    assert gauge._value.get() == 0
    await fail([a, b], 3)
    assert gauge._value.get() == 2
    backend.clock.advance(10)
    await b.health([T])
    assert gauge._value.get() == 1


@pytest.mark.parametrize(
    ("health", "usable", "score"),
    [
        pytest.param(TargetHealth("closed", 0.5, 0.0, 0), True, 0.5, id="closed-scores-its-latency"),
        pytest.param(TargetHealth("closed", 0.5, 0.5, 1), True, 1.0, id="errors-inflate-the-score"),
        pytest.param(TargetHealth("closed", None, 0.0, 0), True, 1.0, id="unmeasured-counts-as-one-second"),
        pytest.param(TargetHealth("half_open", 0.5, 0.0, 0, probes_left=1), True, 0.5, id="half-open-with-a-probe"),
        pytest.param(TargetHealth("half_open", 0.5, 0.0, 0, probes_left=0), False, math.inf, id="half-open-no-probe"),
        pytest.param(TargetHealth("open", 0.5, 1.0, 9), False, math.inf, id="open"),
    ],
)
def test_usable_and_score(health: TargetHealth, usable: bool, score: float) -> None:
    assert health.usable is usable
    assert health.score == pytest.approx(score)
    assert health.score_for(False) == pytest.approx(score)


@pytest.mark.parametrize(
    ("health", "stream_score", "score"),
    [
        pytest.param(TargetHealth("closed", 2.0, 0.0, 0, ttft_ewma=0.2), 0.2, 2.0, id="each-kind-its-own-latency"),
        pytest.param(TargetHealth("closed", 2.0, 0.5, 1, ttft_ewma=0.2), 0.4, 4.0, id="errors-inflate-both"),
        pytest.param(TargetHealth("closed", 2.0, 0.0, 0), 2.0, 2.0, id="stream-unmeasured-falls-back-to-whole-answers"),
        pytest.param(TargetHealth("closed", None, 0.0, 0, ttft_ewma=0.2), 0.2, 1.0, id="non-stream-ignores-ttft"),
        pytest.param(TargetHealth("closed", None, 0.0, 0), 1.0, 1.0, id="never-measured-counts-as-one-second"),
        pytest.param(TargetHealth("open", 2.0, 1.0, 9, ttft_ewma=0.2), math.inf, math.inf, id="unusable-is-inf"),
    ],
)
def test_score_for_a_stream_uses_time_to_first_token(health: TargetHealth, stream_score: float, score: float) -> None:
    assert health.score_for(True) == pytest.approx(stream_score)
    assert health.score_for(False) == pytest.approx(score)
