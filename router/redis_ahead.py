"""Admissions taken ahead (opt-in, ROUTER_ADMIT_AHEAD=n): a replica admits a busy (key,
model, targets) combination's next few requests in Redis before they arrive, off any
request's path, and hands them out as they come, so a request's own path has no round trip.

Never over a limit. Each ticket is an ordinary admit, every check charged; its rpm and tpm
entries are stamped at the end of its life, so one used at any moment of that life stays
counted at least a whole window after its use. What it gives up is on the other side: an
unused ticket holds its share of each limit, so another replica can be refused while this
one holds tickets it has not used. Hence tickets are taken only while every check of the
combination has HEADROOM times what they would hold left, `n` per combination per replica
at most, each for `life` seconds; one left unused is given back when its life ends or at
shutdown. A crashed replica's unused tickets hold their concurrency slots for a lease, like
its requests in flight.

Health comes with each ticket, from its admit: a circuit another replica opened reaches
this replica's choices up to `life` late. A failure this replica sees drops its tickets at
once, and none are taken while a target's circuit is not closed. Budgets are charged as
answers settle, so a combination with a budget is never taken ahead.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine, Hashable, Sequence
from typing import Any, NamedTuple

from router.health import CLOSED, TargetHealth
from router.limits import BUDGET_KINDS, TPM, LimitExceeded, Usage
from router.metrics import Metrics, adder
from router.redis_link import Unavailable
from router.redis_plans import PLAN_CACHE, Plan, Ran

HEADROOM = 4     # tickets only while every check has this many times what they would hold left
MIN_TOKENS = 16  # a ticket's tpm share at least (a power of two: one size serves a spread of requests)


def ahead_rids(rid: str, count: int) -> list[str]:
    """The reservation ids of `count` admissions taken in one call (the admit script's rule)."""
    return [rid] if count == 1 else [f"{rid}.{i}" for i in range(1, count + 1)]


def _nothing(amount: float) -> None:
    pass


class Ticket(NamedTuple):
    """One admission taken ahead: what it holds, until when, and what its admit reported."""

    rid: str
    tokens: int
    deadline: float
    usages: list[Usage | None]
    views: dict[str, TargetHealth]


class _Stock:
    """One combination's tickets, oldest first, and when to ask for more."""

    __slots__ = ("plan", "ids", "tickets", "size", "asked", "gen", "seen", "lefts")

    def __init__(self, plan: Plan, ids: tuple[str, ...], size: int, seen: float) -> None:
        self.plan, self.ids, self.size, self.seen = plan, ids, size, seen
        self.tickets: deque[Ticket] = deque()
        self.asked = False       # a refill is under way
        self.gen = -1            # the failure count its tickets' health was read after
        self.lefts: list[int] = []   # each check's headroom after the newest ticket


class AheadAdmits:
    """Tickets per combination; RedisState runs the admits and the refunds."""

    def __init__(self, most: int, life_s: float, clock: Callable[[], float], rid: Callable[[], str],
                 run: Callable[[Plan, str, int, str, int], Coroutine[Any, Any, Ran]],
                 views: Callable[[Sequence[str], Sequence[Any], float | None], dict[str, TargetHealth]],
                 refund: Callable[[Plan, Sequence[str]], None], available: Callable[[], bool],
                 metrics: Metrics | None) -> None:
        self._most, self._life, self._ahead = most, life_s, str(int(life_s * 1000))
        self._clock, self._rid, self._run, self._views, self._give = clock, rid, run, views, refund
        self._available = available
        self._taken, self._used, self._returned = (
            adder(metrics.admissions_ahead.labels(outcome)) if metrics is not None else _nothing
            for outcome in ("taken", "used", "returned"))
        self._stocks: dict[Hashable, _Stock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeping: asyncio.TimerHandle | None = None
        self._closed = False
        self.gen = 0   # failures this replica saw: a ticket read before the last one is stale

    def take(self, key: Hashable, tokens: int) -> Ticket | None:
        """A ticket for this combination that holds at least `tokens`, if one is in stock."""
        stock = self._stocks.get(key)
        if stock is None or not stock.tickets:
            return None
        if stock.gen != self.gen:
            self._drop(stock)
            return None
        self._expire(stock, self._clock())
        tickets = stock.tickets
        if not tickets or tokens > tickets[0].tokens:
            return None
        ticket = tickets.popleft()
        self._used(1)
        if 2 * len(tickets) <= stock.size and not stock.asked:
            size = min(2 * stock.size, self._most)   # used up within their life: busy enough for more
            if self._room(stock.plan, stock.lefts, size, ticket.tokens):
                stock.size = size
                self._ask(key, stock, size - len(tickets), ticket.tokens)
        return ticket

    def offer(self, key: Hashable, plan: Plan, ids: tuple[str, ...], tokens: int, lefts: list[int],
              views: dict[str, TargetHealth]) -> None:
        """A request of this combination was admitted directly: if it came within a ticket's
        life of the one before and every limit has room, take tickets for the next ones."""
        now = self._clock()
        stock = self._stocks.get(key)
        if stock is None:
            if any(c.kind in BUDGET_KINDS for c in plan.checks) or not plan.calls:
                return
            if len(self._stocks) >= PLAN_CACHE:
                for old in self._stocks.values():
                    self._drop(old)
                self._stocks.clear()
            self._stocks[key] = _Stock(plan, ids, min(4, self._most), now)
            return
        recent, stock.seen = now - stock.seen < self._life, now
        if stock.asked or not recent or not all(v.state == CLOSED for v in views.values()):
            return
        if stock.gen != self.gen:
            self._drop(stock)
        size = max(MIN_TOKENS, 1 << max(0, tokens - 1).bit_length())   # the next power of two
        if self._room(plan, lefts, stock.size, size):
            self._ask(key, stock, stock.size - len(stock.tickets), size)

    def _room(self, plan: Plan, lefts: list[int], n: int, tokens: int) -> bool:
        return len(lefts) == len(plan.checks) and all(
            left >= HEADROOM * n * (tokens if c.kind == TPM else c.amount) for c, left in zip(plan.checks, lefts))

    def _ask(self, key: Hashable, stock: _Stock, n: int, tokens: int) -> None:
        if n <= 0 or not self._available():
            return
        stock.asked = True
        task = asyncio.get_running_loop().create_task(self._refill(key, stock, n, tokens))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refill(self, key: Hashable, stock: _Stock, n: int, tokens: int) -> None:
        """`n` tickets in one admit call, all or none."""
        gen, deadline = self.gen, self._clock() + self._life   # before Redis stamps them
        rid, plan = self._rid(), stock.plan
        rids = ahead_rids(rid, n)
        try:
            r = await self._run(plan, rid, tokens, self._ahead, n)
        except Unavailable:
            self._give(plan, rids)   # a timed-out admit may still have run
            return
        except LimitExceeded:
            return   # no room for them all: nothing held
        finally:
            stock.asked = False
        views = self._views(stock.ids, r.summaries, r.now)
        if gen != self.gen or self._stocks.get(key) is not stock or any(v.state != CLOSED for v in views.values()):
            self._give(plan, rids)
            return
        stock.gen, stock.lefts = gen, r.lefts
        amounts = [tokens if c.kind == TPM else c.amount for c in plan.checks]
        for i, one in enumerate(rids):   # each reports what was left after it, as if taken in turn
            later = n - 1 - i
            usages = [u if u is None else Usage(u.limit, u.remaining + later * a, u.reset_s)
                      for u, a in zip(r.usages, amounts)]
            stock.tickets.append(Ticket(one, tokens, deadline, usages, views))
        self._taken(n)
        self._sweep_later()

    def _expire(self, stock: _Stock, now: float) -> None:
        tickets = stock.tickets
        if tickets and tickets[0].deadline <= now:
            gone = []
            while tickets and tickets[0].deadline <= now:
                gone.append(tickets.popleft().rid)
            self._return(stock.plan, gone)
            stock.size = max(stock.size // 2, min(2, self._most))   # asked for more than came

    def _return(self, plan: Plan, rids: list[str]) -> None:
        self._give(plan, rids)
        self._returned(len(rids))

    def _drop(self, stock: _Stock) -> None:
        if stock.tickets:
            self._return(stock.plan, [t.rid for t in stock.tickets])
            stock.tickets.clear()
        stock.gen = self.gen

    def _sweep_later(self) -> None:
        if self._sweeping is None and not self._closed and any(s.tickets for s in self._stocks.values()):
            self._sweeping = asyncio.get_running_loop().call_later(self._life, self._sweep)

    def _sweep(self) -> None:
        """Give back what lived out its life unused, though no request came to notice."""
        self._sweeping = None
        now = self._clock()
        for stock in self._stocks.values():
            self._expire(stock, now)
        self._sweep_later()

    async def close(self, timeout_s: float) -> None:
        """Refills under way finish, then every unused ticket is given back."""
        self._closed = True
        if self._sweeping is not None:
            self._sweeping.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in self._tasks:   # Redis too slow: an admit left behind is undone when it answers
                task.cancel()
        for stock in self._stocks.values():
            self._drop(stock)
