"""Admissions taken ahead (ROUTER_ADMIT_AHEAD): never past a limit, a ticket counted a whole
window after its use, unused ones given back, and health no staler than a ticket's life.

The shared suite (test_state.py, test_health.py) also runs on "redis-ahead" and
"cluster-ahead"; these tests
drive the cases where tickets are actually taken: limits with headroom, one combination
asked for again and again. Redis's own counters are read to see what is held.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
import redis

from router.backends import create_state
from router.limits import Admission, BudgetSpec, LimitExceeded, LimitSpec
from router.metrics import Metrics
from router.settings import ServeSettings
from router.state import SharedState, StateSettings
from tests.fixtures_redis import Clock, RedisServer
from tests.test_redis_faults import QUICK, SlowReplies, until
from tests.test_replicas import routes, start_replicas, stop
from tests.test_state import adm, admitted

RPM_KEY = "router:{k:team-a}:rpm"


class Fleet:
    """Replicas on one Redis (or Cluster), on one fake clock; closed (their tickets given
    back) at the end."""

    def __init__(self, url: str, client: Callable[[], redis.Redis | redis.RedisCluster]) -> None:
        self.url, self.client, self.clock = url, client, Clock()
        self.made: list[SharedState] = []

    def make(self, ahead: int = 8, life_s: float = 1.0, metrics: Metrics | None = None, **kw: object) -> SharedState:
        settings = StateSettings(clock=self.clock, redis_clock=False, redis_timeout_s=2.0, admit_ahead=ahead,
                                 admit_ahead_s=life_s, **kw)  # type: ignore[arg-type]
        state = create_state(self.url, settings, metrics)
        self.made.append(state)
        return state

    def held(self, key: str = RPM_KEY) -> int:
        """Entries in a window: admitted requests and tickets not yet given back."""
        with self.client() as r:
            return int(r.zcard(key))


async def _fleet(url: str, client: Callable[[], redis.Redis | redis.RedisCluster]) -> AsyncIterator[Fleet]:
    f = Fleet(url, client)
    yield f
    for s in f.made:
        await s.close()


@pytest.fixture
async def fleet(redis_server_factory: Callable[..., RedisServer]) -> AsyncIterator[Fleet]:
    server = redis_server_factory()
    async for f in _fleet(server.url, server.client):
        yield f


@pytest.fixture(params=["redis", "cluster"])
async def any_fleet(request: pytest.FixtureRequest, redis_server_factory: Callable[..., RedisServer]) -> AsyncIterator[Fleet]:
    """Standalone Redis, or the session's three-node Cluster."""
    if request.param == "redis":
        server = redis_server_factory()
        url, client = server.url, server.client
    else:
        url = request.getfixturevalue("redis_cluster_url")
        port = int(url.rsplit(":", 1)[1])
        client = lambda: redis.RedisCluster(host="127.0.0.1", port=port)  # noqa: E731
    async for f in _fleet(url, client):
        yield f


async def settled(fleet: Fleet, *keys: str) -> None:
    """Refills and refunds are sent without waiting: wait until what the windows hold has
    stopped moving (three reads 20 ms apart agree), however slow the machine."""
    last: list[int] | None = None
    same = 0
    for _ in range(250):
        await asyncio.sleep(0.02)
        now = [fleet.held(k) for k in keys or (RPM_KEY,)]
        same, last = (same + 1 if now == last else 0), now
        if same >= 2:
            return


async def test_replicas_taking_tickets_never_admit_past_the_limits_and_give_back_the_unused(any_fleet: Fleet) -> None:
    """A key's rpm and its model's: on Cluster two hash tags, two script calls per admit."""
    fleet, limit = any_fleet, 200
    replicas = [fleet.make() for _ in range(3)]
    a = adm(key_limits=LimitSpec(rpm=limit), model_limits=LimitSpec(rpm=limit + 50))
    model_key = "router:{m:gpt-x}:rpm"
    admitted_n, most_held_ahead = 0, 0
    while True:   # waves of concurrent requests on every replica, until one is refused
        wave = await asyncio.gather(*(admitted(replicas[j % 3], a) for j in range(12)))
        admitted_n += sum(wave)
        await settled(fleet, RPM_KEY, model_key)
        most_held_ahead = max(most_held_ahead, fleet.held() - admitted_n)
        assert admitted_n <= fleet.held() <= limit
        assert fleet.held(model_key) == fleet.held()   # every admission charged both, or neither
        if not all(wave):
            break
    assert most_held_ahead > 0          # tickets were taken
    assert fleet.held() == limit        # refused only once every admission was taken
    assert limit - admitted_n <= 3 * 8  # unused: a full stock per replica at most
    for s in replicas:
        await s.close()
    assert fleet.held() == fleet.held(model_key) == admitted_n   # closing gave every unused ticket back
    exact = create_state(fleet.url, StateSettings(clock=fleet.clock, redis_clock=False))
    try:
        assert sum([await admitted(exact, a) for _ in range(limit)]) == limit - admitted_n
    finally:
        await exact.close()


async def test_a_ticket_used_late_in_its_life_counts_a_whole_window_after_its_use(fleet: Fleet) -> None:
    limit = 40
    a, b = fleet.make(ahead=4, life_s=1.0), fleet.make(ahead=0)
    r = adm(key_limits=LimitSpec(rpm=limit))
    assert await admitted(a, r) and await admitted(a, r)   # the second, soon after the first, asks for tickets
    await settled(fleet)
    assert fleet.held() == 2 + 4
    assert sum([await admitted(b, r) for _ in range(limit)]) == limit - 6
    fleet.clock.advance(0.5)
    assert await admitted(a, r)   # a ticket, used at 0.5 s
    await a.close()               # the other three go back
    assert sum([await admitted(b, r) for _ in range(5)]) == 3   # at 0.5 s
    fleet.clock.advance(59.7)     # 60.2 s: the admits at 0 s have left the window, the ticket has not
    assert sum([await admitted(b, r) for _ in range(40)]) == limit - 4
    fleet.clock.advance(0.9)      # 61.1 s: the ticket's entry (stamped at 1 s) has left too
    assert sum([await admitted(b, r) for _ in range(5)]) == 4


async def test_a_ticket_left_unused_goes_back_when_its_life_ends(fleet: Fleet) -> None:
    a = fleet.make(ahead=4, life_s=0.2)
    r = adm(key_limits=LimitSpec(rpm=100))
    assert await admitted(a, r) and await admitted(a, r)
    await settled(fleet)
    assert fleet.held() == 6
    fleet.clock.advance(0.3)

    async def given_back() -> bool:
        return fleet.held() == 2

    await until(given_back)   # though no request came for this combination again


async def test_a_request_larger_than_the_tickets_is_admitted_on_its_own(fleet: Fleet) -> None:
    limit = 10_000
    a, b = fleet.make(ahead=4), fleet.make(ahead=0)
    small, large = adm(tokens=10, key_limits=LimitSpec(tpm=limit)), adm(tokens=3_000, key_limits=LimitSpec(tpm=limit))
    assert await admitted(a, small) and await admitted(a, small)
    await settled(fleet)
    reserved = 2 * 10 + 4 * 16   # two admits and four tickets of 16 tokens
    assert await admitted(b, adm(tokens=limit - reserved - 2_999, key_limits=LimitSpec(tpm=limit)))
    assert not await admitted(a, large)   # a 16-token ticket must not carry 3,000 tokens
    assert await admitted(a, small)


async def test_a_budget_is_never_taken_ahead(fleet: Fleet) -> None:
    a = fleet.make(ahead=8)
    r = Admission("team-a", LimitSpec(rpm=1_000), BudgetSpec(daily_usd=100.0), "gpt-x", None, 10)
    for _ in range(10):
        assert await admitted(a, r)
    await settled(fleet)
    assert fleet.held() == 10


async def test_a_failure_this_replica_sees_drops_its_tickets_and_their_health(fleet: Fleet) -> None:
    a, b = fleet.make(ahead=4, failure_threshold=2), fleet.make(ahead=0, failure_threshold=2)
    r = adm(key_limits=LimitSpec(rpm=1_000))
    await a.admit(r, ["t1"])
    await a.admit(r, ["t1"])
    await settled(fleet)
    assert fleet.held() == 6
    await b.record("t1", False, None)
    await b.record("t1", False, None)   # another replica opened t1's circuit
    _, views = await a.admit(r, ["t1"])
    assert views["t1"].state == "closed"   # a ticket: health as it was when it was taken
    await a.record("t1", False, None)      # this replica's own failure
    _, views = await a.admit(r, ["t1"])
    assert views["t1"].state == "open"
    await settled(fleet)
    assert fleet.held() == 2 + 1 + 1       # two admits, the ticket used, this admit: the other three went back


async def test_a_ticket_is_never_taken_for_a_target_whose_circuit_is_not_closed(fleet: Fleet) -> None:
    a = fleet.make(ahead=4, failure_threshold=1)
    r = adm(key_limits=LimitSpec(rpm=1_000))
    await a.record("t1", False, None)
    for _ in range(5):
        _, views = await a.admit(r, ["t1"])
        assert views["t1"].state == "open"
    await settled(fleet)
    assert fleet.held() == 5


@pytest.mark.parametrize(("limits", "key"), [
    pytest.param(LimitSpec(rpm=16), RPM_KEY, id="rpm"),
    pytest.param(LimitSpec(concurrent=16), "router:{k:team-a}:conc", id="concurrent"),
    pytest.param(LimitSpec(tpm=200), "router:{k:team-a}:tpm", id="tpm"),
])
async def test_no_tickets_without_headroom_for_them(fleet: Fleet, limits: LimitSpec, key: str) -> None:
    """Four tickets need four times their share left in every limit (16 requests or slots,
    256 tokens): after two admits there is less."""
    a = fleet.make(ahead=4)
    r = adm(tokens=10, key_limits=limits)
    assert await admitted(a, r) and await admitted(a, r)
    await settled(fleet, key)
    assert fleet.held(key) == 2


async def test_each_ticket_reports_what_was_left_after_it_as_a_direct_admit_would(fleet: Fleet) -> None:
    a = fleet.make(ahead=4)
    r = adm(key_limits=LimitSpec(rpm=1_000))
    remaining = []
    for _ in range(12):
        grant, _ = await a.admit(r, [])
        remaining.append(int(grant.headers["x-ratelimit-remaining-requests"]))
        await settled(fleet)
    assert fleet.held() > 12   # tickets were taken
    assert remaining == list(range(999, 987, -1))


async def test_serve_with_admit_ahead_keeps_a_key_limit_exact_across_replicas_and_gives_back_at_exit(
    tmp_path, vendors, redis_url: str,
) -> None:
    """`router serve` with ROUTER_ADMIT_AHEAD, two replicas, an rpm of 60: no more than 60
    answered, every other request a 429 in OpenAI's shape, and once both have stopped the
    window holds exactly the answered ones."""
    keys = {"team": {"key_env": "ROUTER_TEST_TEAM_KEY", "limits": {"rpm": 60}}}
    procs, urls = await start_replicas(tmp_path, routes(vendors.openai, {}, keys), redis_url, vendors.openai,
                                       count=2, extra_env={"ROUTER_TEST_TEAM_KEY": "sk-team-secret",
                                                           "ROUTER_ADMIT_AHEAD": "8"})
    headers = {"Authorization": "Bearer sk-team-secret"}
    body = {"model": "m", "prompt": "hi", "max_tokens": 5}
    statuses, most_ahead = [], 0
    try:
        async with aiohttp.ClientSession() as s:
            for i in range(100):
                async with s.post(urls[i % 2] + "/v1/completions", json=body, headers=headers) as r:
                    statuses.append(r.status)
                    answer = await r.json()
                if r.status == 429:
                    assert set(answer["error"]) >= {"message", "type", "param", "code"}
                with redis.Redis.from_url(redis_url) as db:
                    most_ahead = max(most_ahead, int(db.zcard(RPM_KEY.replace("team-a", "team"))) - statuses.count(200))
    finally:
        await stop(procs)
    answered = statuses.count(200)
    assert set(statuses) == {200, 429}
    assert 60 - 2 * 8 <= answered <= 60
    assert most_ahead > 0   # the replicas did take admissions ahead
    with redis.Redis.from_url(redis_url) as db:
        assert int(db.zcard(RPM_KEY.replace("team-a", "team"))) == answered


@pytest.mark.parametrize(("env", "ahead", "life_s"), [
    ({}, 0, 1.0),
    ({"ROUTER_ADMIT_AHEAD": "16"}, 16, 1.0),
    ({"ROUTER_ADMIT_AHEAD": "16", "ROUTER_ADMIT_AHEAD_MS": "250"}, 16, 0.25),
])
def test_admit_ahead_is_a_setting(monkeypatch: pytest.MonkeyPatch, env: dict, ahead: int, life_s: float) -> None:
    for name in ("ROUTER_ADMIT_AHEAD", "ROUTER_ADMIT_AHEAD_MS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = ServeSettings.from_env()
    assert (settings.admit_ahead, settings.admit_ahead_s) == (ahead, pytest.approx(life_s))


@pytest.mark.parametrize(("name", "raw"), [
    ("ROUTER_ADMIT_AHEAD", "-1"), ("ROUTER_ADMIT_AHEAD", "2.5"), ("ROUTER_ADMIT_AHEAD", "1000"),
    ("ROUTER_ADMIT_AHEAD_MS", "0"), ("ROUTER_ADMIT_AHEAD_MS", "60000"), ("ROUTER_ADMIT_AHEAD_MS", "soon"),
])
def test_an_admit_ahead_setting_out_of_range_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, raw: str,
) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(ValueError, match=name):
        ServeSettings.from_env()


async def test_tickets_whose_admit_timed_out_are_given_back_once_redis_answers(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    """The refill's reply comes after the batch timeout: the script ran and holds every
    ticket, so all of them (not just one) are given back when Redis is reachable again."""
    server = redis_server_factory()
    slow = SlowReplies(server.port, delay=0)
    fleet = Fleet(server.url, server.client)
    a = create_state(await slow.start(), StateSettings(clock=fleet.clock, redis_clock=False, admit_ahead=8,
                                                       **QUICK))  # type: ignore[arg-type]
    r = adm(key_limits=LimitSpec(rpm=1_000))
    try:
        assert await admitted(a, r)
        assert await admitted(a, r)   # asks for tickets; their admit goes out on the next turn
        slow.delay = 0.5              # longer than the batch timeout
        await asyncio.sleep(0.6)
        assert fleet.held() == 2 + 4   # the script ran all the same
        slow.delay = 0

        async def given_back() -> bool:
            await a.ready()
            return fleet.held() == 2

        await until(given_back)
    finally:
        await a.close()
        await slow.close()


async def test_a_multi_admit_refused_on_one_cluster_tag_charges_none(redis_cluster_url: str) -> None:
    """Tickets are admitted all at once or not at all, on every hash tag: a model with no
    room left for them refunds what the key's tag took (RedisState._run, count > 1)."""
    clock = Clock()
    port = int(redis_cluster_url.rsplit(":", 1)[1])
    a = create_state(redis_cluster_url, StateSettings(clock=clock, redis_clock=False, redis_timeout_s=2.0,
                                                      admit_ahead=8))
    r = adm(key_limits=LimitSpec(rpm=1_000), model_limits=LimitSpec(rpm=10))
    try:
        assert await admitted(a, r)   # the plan is built and cached
        plan = next(iter(a._plans._plans.values()))  # type: ignore[attr-defined]
        assert len(plan.calls) == 2   # the key's tag and the model's
        with pytest.raises(LimitExceeded):
            await a._run(plan, "multi", 10, "1000", 16)  # type: ignore[attr-defined]

        async def refunded() -> bool:   # the key's tag took 16, refunded once its call came back
            with redis.RedisCluster(host="127.0.0.1", port=port) as db:
                return int(db.zcard("router:{k:team-a}:rpm")) == int(db.zcard("router:{m:gpt-x}:rpm")) == 1

        await until(refunded)
    finally:
        await a.close()


async def test_metrics_count_admissions_taken_ahead_used_and_returned(fleet: Fleet) -> None:
    metrics = Metrics()
    a = fleet.make(ahead=8, metrics=metrics)
    r = adm(key_limits=LimitSpec(rpm=1_000))
    for _ in range(10):
        assert await admitted(a, r)
        await settled(fleet)
    held = fleet.held()
    await a.close()

    def count(outcome: str) -> float:
        return metrics.registry.get_sample_value("router_admissions_ahead_total", {"outcome": outcome}) or 0.0

    assert count("used") > 0
    assert count("returned") == held - 10   # what was held but not used went back at close
    assert count("taken") == count("used") + count("returned")
