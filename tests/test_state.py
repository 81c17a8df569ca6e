"""Limits, reservations, budgets and target quotas: one suite, every backend.

Each test runs against the in-process backend, one standalone Redis and a three-node
Redis Cluster. "Replicas" are separate RedisState instances (own connection pools)
sharing one Redis; for the memory backend they are one instance, as in production.
Time is a fake clock, so windows slide without sleeping.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from router.limits import Admission, BudgetSpec, LimitExceeded, LimitSpec, Usage, format_reset, ratelimit_headers
from router.backends import create_state
from router.memory_state import MemoryState
from router.state import SharedState, StateSettings
from tests.fixtures_redis import Backend

def adm(
    key: str | None = "team-a",
    tokens: int = 10,
    model: str = "gpt-x",
    key_limits: LimitSpec | None = None,
    budget: BudgetSpec | None = None,
    model_limits: LimitSpec | None = None,
) -> Admission:
    return Admission(key, key_limits, budget, model, model_limits, tokens)


async def admitted(state: SharedState, a: Admission) -> bool:
    try:
        await state.admit(a, [])
    except LimitExceeded:
        return False
    return True


# ---- exactness under concurrency --------------------------------------------------------


async def test_rpm_admits_exactly_n_of_3n_concurrent_requests_across_replicas(backend: Backend) -> None:
    n = 25
    replicas = await backend.make(3)
    a = adm(key_limits=LimitSpec(rpm=n))
    results = await asyncio.gather(*(admitted(replicas[i % 3], a) for i in range(3 * n)))
    assert sum(results) == n


async def test_model_rpm_is_shared_by_every_key_and_the_open_proxy(backend: Backend) -> None:
    (s,) = await backend.make()
    m = LimitSpec(rpm=4)
    oks = [await admitted(s, adm(key=k, model_limits=m)) for k in ("a", "b", None, "c", "d")]
    assert oks == [True, True, True, True, False]


async def test_tpm_reservations_never_exceed_the_limit_under_concurrent_admits(backend: Backend) -> None:
    limit = 2_000
    replicas = await backend.make(3)
    rng = random.Random(7)
    sizes = [rng.randint(50, 250) for _ in range(60)]

    async def one(i: int, size: int) -> tuple[int, bool]:
        return size, await admitted(replicas[i % 3], adm(tokens=size, key_limits=LimitSpec(tpm=limit)))

    results = await asyncio.gather(*(one(i, s) for i, s in enumerate(sizes)))
    total = sum(size for size, ok in results if ok)
    assert total <= limit
    # nothing is refunded here, so every refused reservation truly did not fit
    assert all(total + size > limit for size, ok in results if not ok)


# ---- sliding window ---------------------------------------------------------------------


@pytest.mark.parametrize("limits", [pytest.param(LimitSpec(rpm=2), id="rpm-alone"),
                                    pytest.param(LimitSpec(rpm=2, tpm=1_000_000), id="rpm-beside-a-tpm")])
async def test_rpm_window_slides_exactly_sixty_seconds_after_each_admission(backend: Backend, limits: LimitSpec) -> None:
    (s,) = await backend.make()
    a = adm(key_limits=limits)
    assert await admitted(s, a)
    backend.clock.advance(30)
    assert await admitted(s, a)
    assert not await admitted(s, a)
    backend.clock.advance(29.9)
    with pytest.raises(LimitExceeded) as e:
        await s.admit(a, [])
    assert 0.05 <= e.value.retry_after_s <= 0.2  # the first request leaves the window at 60s
    backend.clock.advance(0.2)
    assert await admitted(s, a)
    assert not await admitted(s, a)


# ---- settle -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reserved", "actual", "next_fits", "next_refused"),
    [
        pytest.param(800, 100, 900, 901, id="refunds-unused-reservation"),
        pytest.param(100, 700, 300, 301, id="charges-usage-beyond-reservation"),
        pytest.param(600, None, 400, 401, id="none-keeps-the-reservation"),
        pytest.param(600, 0, 1000, 1001, id="zero-refunds-everything"),
    ],
)
async def test_settle_moves_the_token_reservation_to_actual_usage(
    backend: Backend, reserved: int, actual: int | None, next_fits: int, next_refused: int
) -> None:
    (s,) = await backend.make()
    lim = LimitSpec(tpm=1000)
    grant, _ = await s.admit(adm(tokens=reserved, key_limits=lim), [])
    await s.settle(grant, None, actual, 0.0)
    assert not await admitted(s, adm(tokens=next_refused, key_limits=lim))
    assert await admitted(s, adm(tokens=next_fits, key_limits=lim))


async def test_settle_is_idempotent(backend: Backend) -> None:
    (s,) = await backend.make()
    lim, budget = LimitSpec(tpm=1000, concurrent=1), BudgetSpec(daily_usd=1.0)
    grant, _ = await s.admit(adm(tokens=500, key_limits=lim, budget=budget), [])
    for _ in range(3):
        await s.settle(grant, None, 100, 0.6)
    other, _ = await s.admit(adm(tokens=900, key_limits=lim, budget=budget), [])  # slot freed once, spend 0.6
    await s.settle(grant, None, 100, 0.6)  # a repeat must not free `other`'s slot
    assert not await admitted(s, adm(tokens=1, key_limits=lim, budget=budget))
    await s.settle(other, None, 0, 0.3)
    assert await admitted(s, adm(tokens=1, key_limits=lim, budget=budget))  # 0.9 < 1.0


# ---- concurrency ------------------------------------------------------------------------


async def test_concurrency_slots_are_taken_at_admit_and_freed_at_settle(backend: Backend) -> None:
    a, b = await backend.make(2)
    lim = adm(key_limits=LimitSpec(concurrent=2))
    g1, _ = await a.admit(lim, [])
    g2, _ = await b.admit(lim, [])
    with pytest.raises(LimitExceeded) as e:
        await a.admit(lim, [])
    assert e.value.message == "key 'team-a' is over its 2 concurrent requests; retry after 1s"
    await b.settle(g1, None, None, 0.0)  # any replica may settle
    g3, _ = await b.admit(lim, [])
    assert not await admitted(a, lim)
    for g in (g2, g3):
        await a.settle(g, None, None, 0.0)
    assert await admitted(a, lim)


async def test_a_crashed_replicas_slots_free_themselves_after_the_lease(backend: Backend) -> None:
    (s,) = await backend.make(concurrency_lease_s=120.0)
    lim = adm(key_limits=LimitSpec(concurrent=1))
    await s.admit(lim, [])  # never settled
    backend.clock.advance(119)
    assert not await admitted(s, lim)
    backend.clock.advance(2)
    assert await admitted(s, lim)


# ---- budgets ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("budget", "spend", "advance_s", "refused", "phrase"),
    [
        pytest.param(BudgetSpec(daily_usd=1.0), [0.6, 0.39], 0, False, "", id="daily-under"),
        pytest.param(BudgetSpec(daily_usd=1.0), [0.6, 0.4], 0, True, "daily budget of $1.00", id="daily-reached"),
        pytest.param(BudgetSpec(daily_usd=1.0), [0.6, 0.5], 86_400, False, "", id="daily-resets-next-utc-day"),
        pytest.param(BudgetSpec(monthly_usd=2.0), [1.5, 0.6], 86_400, True, "monthly budget of $2.00", id="monthly-spans-days"),
        pytest.param(BudgetSpec(monthly_usd=2.0), [1.5, 0.6], 31 * 86_400, False, "", id="monthly-resets-next-month"),
        pytest.param(BudgetSpec(daily_usd=5, monthly_usd=1.0), [1.2], 0, True, "monthly budget", id="tighter-of-both"),
    ],
)
async def test_budgets_refuse_with_insufficient_quota_once_spent(
    backend: Backend, budget: BudgetSpec, spend: list[float], advance_s: float, refused: bool, phrase: str
) -> None:
    a, b = await backend.make(2)
    for i, usd in enumerate(spend):
        grant, _ = await (a, b)[i % 2].admit(adm(budget=budget), [])
        await (a, b)[i % 2].settle(grant, None, None, usd)
    backend.clock.advance(advance_s)
    if not refused:
        assert await admitted(a, adm(budget=budget))
        return
    with pytest.raises(LimitExceeded) as e:
        await a.admit(adm(budget=budget), [])
    assert (e.value.status, e.value.code) == (429, "insufficient_quota")
    assert phrase in e.value.message and "team-a" in e.value.message
    assert int(e.value.headers["retry-after"]) > 0


# ---- all-or-nothing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "refusing",
    [
        pytest.param(dict(model_limits=LimitSpec(tpm=50)), id="model-tpm"),
        pytest.param(dict(model_limits=LimitSpec(rpm=0)), id="model-rpm"),
        pytest.param(dict(budget=BudgetSpec(daily_usd=0)), id="key-budget"),
    ],
)
async def test_a_refused_admission_leaves_no_counter_charged(backend: Backend, refusing: dict) -> None:
    (s,) = await backend.make()
    key_limits = LimitSpec(rpm=3, tpm=300, concurrent=3)
    for _ in range(5):
        with pytest.raises(LimitExceeded):
            await s.admit(adm(tokens=100, key_limits=key_limits, **refusing), [])
    # had any refused attempt charged the key, these three would not all fit
    grants = [(await s.admit(adm(tokens=100, key_limits=key_limits), []))[0] for _ in range(3)]
    assert grants[-1].headers["x-ratelimit-remaining-requests"] == "0"
    assert grants[-1].headers["x-ratelimit-remaining-tokens"] == "0"


# ---- target quotas ----------------------------------------------------------------------


async def test_target_quota_returns_none_when_spent_and_refunds_failed_attempts(backend: Backend) -> None:
    a, b = await backend.make(2)
    q = LimitSpec(rpm=3, tpm=1000)
    g1 = await a.reserve_target("openai:gpt-x", q, 600)
    g2 = await b.reserve_target("openai:gpt-x", q, 300)
    assert g1 is not None and g2 is not None
    assert await a.reserve_target("openai:gpt-x", q, 200) is None  # tokens: 900 + 200
    assert await a.reserve_target("other:gpt-x", q, 200) is not None  # another target's quota
    await b.release_target(g1, 0)  # the attempt failed before the vendor spent tokens
    g3 = await a.reserve_target("openai:gpt-x", q, 600)
    assert g3 is not None
    assert g3.headers["x-ratelimit-remaining-requests"] == "0"
    assert await b.reserve_target("openai:gpt-x", q, 1) is None  # rpm: three attempts reached the vendor
    assert backend.metrics.limit_rejections.labels("target", "rpm")._value.get() == 1
    assert backend.metrics.limit_rejections.labels("target", "tpm")._value.get() == 1


async def test_settle_with_a_target_grant_settles_both(backend: Backend) -> None:
    (s,) = await backend.make()
    q = LimitSpec(tpm=1000)
    grant, _ = await s.admit(adm(tokens=800, key_limits=q), [])
    tg = await s.reserve_target("t1", q, 800)
    assert tg is not None
    await s.settle(grant, tg, 100, 0.0)
    assert await s.reserve_target("t1", q, 900) is not None
    assert await admitted(s, adm(tokens=900, key_limits=q))


# ---- headers, messages, metrics -----------------------------------------------------------


async def test_headers_report_the_tightest_request_and_token_limits(backend: Backend) -> None:
    (s,) = await backend.make()
    a = adm(tokens=100, key_limits=LimitSpec(rpm=10, tpm=10_000), model_limits=LimitSpec(rpm=5, tpm=50_000))
    grant, _ = await s.admit(a, [])
    backend.clock.advance(6)
    grant, _ = await s.admit(a, [])
    assert grant.headers == {
        "x-ratelimit-limit-requests": "5",
        "x-ratelimit-remaining-requests": "3",
        "x-ratelimit-reset-requests": "54s",
        "x-ratelimit-limit-tokens": "10000",
        "x-ratelimit-remaining-tokens": "9800",
        "x-ratelimit-reset-tokens": "54s",
    }


async def test_no_limits_means_no_headers_and_no_refusal(backend: Backend) -> None:
    (s,) = await backend.make()
    grant, health = await s.admit(adm(key=None), ["t1"])
    assert grant.headers == {}
    assert health["t1"].state == "closed" and health["t1"].usable


@pytest.mark.parametrize(
    ("admission", "message", "code", "limit_label"),
    [
        pytest.param(adm(key_limits=LimitSpec(rpm=1)), "key 'team-a' is over its 1 requests per minute; retry after 1m0s", "rate_limit_exceeded", ("key", "rpm"), id="key-rpm"),
        pytest.param(adm(tokens=60, model_limits=LimitSpec(tpm=100)), "model 'gpt-x' is over its 100 tokens per minute; retry after 1m0s", "rate_limit_exceeded", ("model", "tpm"), id="model-tpm"),
    ],
)
async def test_refusals_name_scope_and_limit_with_openai_headers(
    backend: Backend, admission: Admission, message: str, code: str, limit_label: tuple[str, str]
) -> None:
    (s,) = await backend.make()
    await s.admit(admission, [])
    with pytest.raises(LimitExceeded) as e:
        await s.admit(admission, [])
    err = e.value
    assert (err.status, err.code, err.type, err.message) == (429, code, "rate_limit_error", message)
    assert err.headers["retry-after"] == "60"
    kind = "requests" if limit_label[1] == "rpm" else "tokens"
    assert err.headers[f"x-ratelimit-remaining-{kind}"] == "0"
    assert backend.metrics.limit_rejections.labels(*limit_label)._value.get() == 1


async def test_a_request_larger_than_the_tpm_limit_says_so(backend: Backend) -> None:
    (s,) = await backend.make()
    with pytest.raises(LimitExceeded) as e:
        await s.admit(adm(tokens=5000, key_limits=LimitSpec(tpm=4000)), [])
    assert "needs 5000 tokens" in e.value.message


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.0123, "13ms"), (1, "1s"), (1.2, "2s"), (59.5, "1m0s"), (360, "6m0s"), (3723, "1h2m3s")],
)
def test_reset_uses_openai_duration_format(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text


def test_ratelimit_headers_clamp_remaining_at_zero() -> None:
    h = ratelimit_headers(Usage(10, -2, 3), None)
    assert h == {"x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "3s"}


async def test_names_with_braces_and_odd_characters_stay_on_their_own_counters(backend: Backend) -> None:
    (s,) = await backend.make()
    lim = LimitSpec(rpm=1)
    for name in ("team{a}", "team}a{", "team%7Ba%7D", "ключ 🔑"):
        assert await admitted(s, adm(key=name, key_limits=lim)), name
        assert not await admitted(s, adm(key=name, key_limits=lim)), name


@pytest.mark.parametrize(
    ("url", "cluster"),
    [
        ("redis://127.0.0.1:6379/0", False),
        ("rediss://cache.internal:6380", False),
        ("redis-cluster://127.0.0.1:7000", True),
        ("redis://127.0.0.1:7000?cluster=true", True),
        ("redis://127.0.0.1:7000?cluster=false", False),
    ],
)
async def test_create_state_picks_the_backend_from_the_url(url: str, cluster: bool) -> None:
    from router.redis_state import RedisState

    state = create_state(url, StateSettings())
    assert isinstance(state, RedisState) and state.cluster is cluster
    await state.close()
    assert isinstance(create_state(None, StateSettings()), MemoryState)


async def test_a_renewed_concurrency_lease_outlives_its_first_deadline(backend: Backend) -> None:
    (s,) = await backend.make(concurrency_lease_s=120)
    one = adm(key_limits=LimitSpec(concurrent=1))
    grant, _ = await s.admit(one, [])
    backend.clock.advance(100)
    s.renew_soon([grant])  # the request is still running (a long stream)
    await s.health([])  # the renewal rides along with the next call
    await asyncio.sleep(0.05)
    backend.clock.advance(100)  # past the first lease, inside the renewed one
    assert not await admitted(s, one)
    await s.settle(grant, None, None, 0.0)
    assert await admitted(s, one)


async def test_a_lease_not_renewed_frees_itself(backend: Backend) -> None:
    (s,) = await backend.make(concurrency_lease_s=120)
    one = adm(key_limits=LimitSpec(concurrent=1))
    await s.admit(one, [])
    backend.clock.advance(121)  # a replica that crashed renews nothing
    assert await admitted(s, one)
