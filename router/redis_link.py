"""The connection to Redis: the script calls of one event-loop iteration in few pipelines.

A request's own path makes one call (its admit) and waits for that reply alone; settles and
health records are handed over without waiting and ride along with the next batch. So
however many requests are in flight, Redis sees one pipelined round trip per loop
iteration, with one timeout for the whole batch instead of a timer per call; once it holds
BATCH_CALLS calls someone waits for, a batch goes out at once and the next one starts. A
call made while no batch anyone waits for is under way goes at once too: there is nothing
to join, and at one request at a time it took 23 µs off the admit's path (measured).

Faults: a batch that fails or passes `redis_timeout_s` marks Redis down (one warning per
transition, router_redis_errors_total{op}, router_redis_up 0): callers fall back at once,
settles are kept (up to `pending_settles`) and replayed when a background PING, with a
doubling hold-off, finds Redis again. A call that timed out may still have run on Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hiredis import pack_command

from router.redis_availability import Availability
from router.redis_client import REDIRECTS, ClusterNodes, is_cluster, make_client, run_pipeline
from router.redis_commands import Command, Orphan, merge_settles
from router.redis_resp import Packer, SettleOps
from router.redis_wire import Delivery, NoScript, ReplyError, Wire, cluster_creds, open_wire, wire_target
from router.state import StateSettings

if TYPE_CHECKING:
    from router.metrics import Metrics

log = logging.getLogger("router.state")
REDIS_ERRORS = (ReplyError, OSError, TimeoutError)
REPLAY_CHUNK = 200  # settles replayed per pipeline once Redis is back
# A call nobody waits for (a settle, a health record) made while a batch is on the wire goes
# with the next batch someone waits for, or after this long: one write and one read fewer per
# request under load. What a finished request gives back (a slot, unused tokens) or is charged
# (spend) lands this much later at most; it goes ahead of the admits it travels with.
LOOSE_DELAY_S = 0.002
# Calls someone waits for (admits; in Cluster also health reads) in one batch at most. Sent
# at the iteration's end, every admit of a busy iteration would reach Redis together, after
# the proxy had read all their requests, and the proxy would then wait idle for the whole
# batch's scripts (a few milliseconds under load, in step every cycle). Sent in batches of
# this many as they come, Redis runs each while the proxy reads the next requests: 1,600 ->
# 2,400 requests/s with Redis at 64 connections, measured.
BATCH_CALLS = 8


class Unavailable(Exception):
    """Redis failed or is held off; the caller falls back."""


class RedisLink:
    """Batched script calls with fail-open plumbing; knows scripts, not what they mean."""

    def __init__(self, url: str, settings: StateSettings, scripts: dict[str, str], metrics: Metrics | None = None) -> None:
        self._s, self._metrics = settings, metrics
        self._scripts = scripts
        self._shas = {name: hashlib.sha1(body.encode()).hexdigest() for name, body in scripts.items()}
        self.cluster = is_cluster(url)
        # plain redis:// goes over one pipelined connection of our own (redis_wire.py); TLS,
        # sockets and Cluster go through redis-py
        self._wire_at = None if self.cluster else wire_target(url)
        self.client: Any = make_client(url, settings) if self._wire_at is None else None
        self._queue: list[Command] = []     # calls someone waits for: sent this loop iteration
        self._loose: list[Command] = []     # calls nobody waits for: sent with the next batch
        self._soon: asyncio.Handle | None = None   # a flush scheduled now
        self._later: asyncio.TimerHandle | None = None   # a flush scheduled after LOOSE_DELAY_S
        self._sending: set[asyncio.Future[Any]] = set()  # batches under way, awaited at close
        self._posted = 0                    # batches written on the wire, replies not yet read
        self._awaited = 0                   # batches under way that someone waits for
        self._pending: deque[Command] = deque(maxlen=settings.pending_settles)
        # How long a call nobody waits for waits for others when no batch is under way (0:
        # it goes at once, off the next request's path). Set when requests seldom wait on
        # Redis (admissions taken ahead): then no batch is coming to carry it.
        self.quiet_delay_s = 0.0
        self.availability = Availability(settings, metrics, self._probe)
        self._cluster_ready, self._init_lock = False, asyncio.Lock()
        self._wire: Wire | None = None
        creds = cluster_creds(url) if self.cluster else None
        self._nodes = ClusterNodes(self.client, creds) if creds is not None else None

    # ---- calls ----------------------------------------------------------------------
    def available(self) -> bool:
        """Up (or never tried): use Redis. Down: fall back, and PING once the hold-off is over."""
        return self.availability.available()

    @property
    def reason(self) -> str:
        return self.availability.reason

    def packer(self, name: str, keys: Sequence[str], args: Sequence[str], slots: Sequence[int]) -> Packer:
        """`name`'s call with these keys and arguments, packed but for the arguments at `slots`."""
        return Packer(self._shas[name], keys, args, slots)

    def call(self, op: str, name: str, keys: Sequence[str], args: Sequence[str], orphan: Orphan | None = None,
             replay: bool = False, packer: Packer | None = None) -> asyncio.Future[Any]:
        """The reply of one script call, sent with this iteration's batch; fails with Unavailable."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        packed = packer.pack(args) if packer is not None and (self._wire is not None or self._nodes is not None) else None
        self._enqueue(Command(op, name, keys, args, fut, orphan, replay, packed))
        return fut

    def call_ops(self, op: str, ops: SettleOps) -> asyncio.Future[Any]:
        """The reply of a settle script call made of `ops`; fails with Unavailable."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue(Command(op, "settle", None, None, fut, None, True, ops=ops))
        return fut

    def send(self, op: str, name: str, keys: Sequence[str], args: Sequence[str], replay: bool = False) -> None:
        """A call nobody waits for; with `replay` it is kept while Redis is down."""
        if self.availability.up is False:
            if replay:
                self._pending.append(Command(op, name, keys, args, None, None, True))
            self.available()
            return
        self._enqueue_loose(Command(op, name, keys, args, None, None, replay))

    def send_ops(self, op: str, ops: SettleOps) -> None:
        """Settle ops nobody waits for, in wire format; kept while Redis is down."""
        cmd = Command(op, "settle", None, None, None, None, True, ops=ops)
        if self.availability.up is False:
            self._pending.append(cmd)
            self.available()
            return
        self._enqueue_loose(cmd)

    def send_now(self) -> None:
        """What waits for this loop turn's end goes now; what waits for another batch (traffic,
        or quiet_delay_s) keeps waiting for it."""
        if self._soon is not None:
            self._flush()

    def _enqueue(self, cmd: Command) -> None:
        self._queue.append(cmd)
        # Nobody else waits on Redis: no batch to join, so at once, not at the loop's next
        # turn (which would first read whatever else arrived: a settle's reply, a request).
        if len(self._queue) >= BATCH_CALLS or not self._awaited:
            self._flush()
        elif self._soon is None:
            self._soon = asyncio.get_running_loop().call_soon(self._flush)

    def _enqueue_loose(self, cmd: Command) -> None:
        if self._soon is None and self._later is None:
            if self._posted:   # traffic: another batch is about to go, this rides along
                self._later = asyncio.get_running_loop().call_later(LOOSE_DELAY_S, self._flush)
            elif self.quiet_delay_s:
                self._later = asyncio.get_running_loop().call_later(self.quiet_delay_s, self._flush)
            else:              # quiet: now, so it is not on the next request's path
                self._soon = asyncio.get_running_loop().call_soon(self._flush)
        self._loose.append(cmd)

    def _flush(self) -> None:
        if self._soon is not None:
            self._soon.cancel()   # called before its turn: a full batch
            self._soon = None
        if self._later is not None:
            self._later.cancel()
            self._later = None
        # what nobody waits for first: a finished request's slot is free before the next admit
        batch = self._loose + self._queue
        self._loose, self._queue = [], []
        batch = merge_settles(batch, self.cluster)
        if not batch:
            return
        waited = any(c.fut is not None for c in batch)
        self._awaited += waited
        groups = self._groups(batch)
        if groups is not None:
            self._post(batch, groups, waited)
            return
        self._spawn(self._send(batch, waited))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    def _groups(self, batch: list[Command]) -> list[tuple[Wire, list[int]]] | None:
        """Which connected wire each command goes out on (standalone: the one; Cluster: the
        primary holding its keys' slot); None when one is not connected yet (a task connects)."""
        if self._wire_at is not None:
            wire = self._wire
            return [(wire, list(range(len(batch))))] if wire is not None and not wire.lost else None
        if self._nodes is None or not self._cluster_ready:
            return None
        return self._nodes.groups(batch)

    def _pack(self, c: Command) -> bytes:
        if c.packed is not None:
            return c.packed
        if c.ops is not None:
            return c.ops.pack("EVALSHA", self._shas[c.name])
        return pack_command(("EVALSHA", self._shas[c.name], len(c.keys), *c.keys, *c.args))  # type: ignore[arg-type]

    def _post(self, batch: list[Command], groups: list[tuple[Wire, list[int]]], waited: bool) -> None:
        """Write the batch in this callback, no task: one write per wire, the replies handed
        over as soon as the last are read, one timer for the whole batch. A command Redis had
        no script for, or that a Cluster redirected, goes again on its own (redo)."""
        loop = asyncio.get_running_loop()
        replies: list[Any] = [None] * len(batch)
        left, done = len(groups), False

        def finish() -> bool:
            nonlocal done
            if done:   # timed out already: a late reply is read and dropped
                return False
            done = True
            timer.cancel()
            self._posted -= 1
            self._awaited -= waited
            return True

        def expire() -> None:
            if finish():
                self._failed(batch, TimeoutError())

        def part(idx: list[int]) -> Delivery:
            def deliver(got: list[Any] | None, err: Exception | None) -> None:
                nonlocal left
                if done:
                    return
                if err is not None or got is None:
                    if finish():
                        self._failed(batch, err or ConnectionError("no replies"))
                    return
                for i, reply in zip(idx, got, strict=True):
                    replies[i] = reply
                left -= 1
                if left or not finish():
                    return
                redo = [i for i, r in enumerate(replies) if isinstance(r, NoScript) or
                        (isinstance(r, ReplyError) and str(r).startswith(REDIRECTS))]
                if redo:
                    self._spawn(self._redo(batch, replies, redo))
                else:
                    self._deliver(batch, replies)
            return deliver

        timer = loop.call_later(self._s.redis_timeout_s, expire)
        self._posted += 1
        for wire, idx in groups:
            wire.post(b"".join([self._pack(batch[i]) for i in idx]), len(idx), part(idx))

    async def _redo(self, batch: list[Command], replies: list[Any], redo: list[int]) -> None:
        """The commands that did not run (no script yet: EVAL caches it; redirected: the slot
        map is reloaded), sent again; the others' replies are delivered with theirs."""
        try:
            async with asyncio.timeout(self._s.redis_timeout_s):
                if self.cluster and any(not isinstance(replies[i], NoScript) for i in redo):
                    await self.client.nodes_manager.initialize()  # type: ignore[union-attr]
                again = await self._pipeline([batch[i] for i in redo])
        except Exception as e:
            again = [e] * len(redo)
        for i, reply in zip(redo, again, strict=True):
            replies[i] = reply
        self._deliver(batch, replies)

    async def _send(self, batch: list[Command], waited: bool) -> None:
        try:
            async with asyncio.timeout(self._s.redis_timeout_s):
                await self._init_cluster()
                replies = await self._pipeline(batch)
        except Exception as e:
            self._failed(batch, e)
            return
        finally:
            self._awaited -= waited
        self._deliver(batch, replies)

    def _deliver(self, batch: list[Command], replies: list[Any]) -> None:
        failed = next((r for r in replies if isinstance(r, Exception)), None)
        if failed is not None:
            self._failed([c for c, r in zip(batch, replies, strict=True) if isinstance(r, Exception)], failed)
        else:
            self.availability.back()
        for cmd, reply in zip(batch, replies, strict=True):
            if isinstance(reply, Exception):
                continue
            if cmd.fut is None:
                continue
            if not cmd.fut.done():
                cmd.fut.set_result(reply)
            elif cmd.orphan is not None:
                cmd.orphan(reply)

    async def _pipeline(self, batch: Sequence[Command]) -> list[Any]:
        """EVALSHA for all; the calls Redis has no script for yet go again as EVAL, which caches it."""
        replies = await self._run(batch, sha=True)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScript)]
        if missing:
            again = await self._run([batch[i] for i in missing], sha=False)
            for i, r in zip(missing, again, strict=True):
                replies[i] = r
        return replies

    async def _run(self, batch: Sequence[Command], sha: bool) -> list[Any]:
        verb = "EVALSHA" if sha else "EVAL"
        code = self._shas if sha else self._scripts
        if self._wire_at is not None:
            # plain redis://: the whole batch packed in C and written at once on one connection
            wire = await self._connected()
            packed = b"".join([pack_command((verb, code[c.name], len(c.keys), *c.keys, *c.args))  # type: ignore[arg-type]
                               for c in batch])
            return await wire.send(packed, len(batch))
        if self._nodes is not None:
            return await self._nodes.run(batch, verb, code)
        return await run_pipeline(self.client, batch, verb, code)

    async def _connected(self) -> Wire:
        wire = self._wire
        if wire is None or wire.lost:
            async with self._init_lock:
                wire = self._wire
                if wire is None or wire.lost:
                    assert self._wire_at is not None
                    wire = self._wire = await open_wire(*self._wire_at)
        return wire

    async def _init_cluster(self) -> None:
        if self.cluster and not self._cluster_ready:
            async with self._init_lock:  # commands racing the first topology load fail
                if not self._cluster_ready:
                    await self.client.initialize()
                    self._cluster_ready = True

    def _failed(self, batch: Sequence[Command], e: BaseException) -> None:
        if not isinstance(e, REDIS_ERRORS) and not type(e).__module__.startswith("redis."):
            log.error("unexpected error from redis during %s: %r", batch[0].op if batch else "?", e)
        self.availability.down(batch[0].op if batch else "batch", e)
        for cmd in batch:
            if cmd.fut is not None and not cmd.fut.done():
                cmd.fut.set_exception(Unavailable(cmd.op))
            if cmd.replay:
                cmd.fut = None
                self._pending.append(cmd)

    async def ping(self) -> None:
        """Standalone: PING. Cluster: every primary answers and sees cluster_state:ok (a
        plain PING reaches one live node while another node's slots are unreachable)."""
        async with asyncio.timeout(self._s.redis_timeout_s):
            await self._init_cluster()
            if not self.cluster:
                if self.client is not None:
                    await self.client.ping()
                    return
                reply = (await (await self._connected()).send(pack_command(("PING",)), 1))[0]
                if isinstance(reply, Exception):
                    raise reply
                return
            cluster: Any = self.client
            info: dict[str, dict[str, str]] = await cluster.cluster_info(target_nodes=cluster.PRIMARIES)
        bad = [node for node, i in info.items() if i.get("cluster_state") != "ok"]
        if bad:
            raise ReplyError(f"cluster_state not ok on {', '.join(sorted(bad))}")

    async def check(self) -> bool:
        """/readyz: one PING now (when not held off)."""
        if not self.available():
            return False
        try:
            await self.ping()
        except Exception as e:
            self.availability.down("ping", e)
            return False
        self.availability.back()
        return True

    async def _probe(self) -> None:
        """One check after the hold-off (doubling, with jitter); on success replay settles."""
        try:
            await self.ping()
        except Exception as e:
            self.availability.still_down(e)
            return
        self.availability.back()
        while self._pending and self.availability.up:
            chunk = [self._pending.popleft() for _ in range(min(REPLAY_CHUNK, len(self._pending)))]
            try:
                async with asyncio.timeout(self._s.redis_timeout_s):
                    replies = await self._pipeline(chunk)
            except Exception as e:
                self._failed(chunk, e)
                return
            bad = [(c, r) for c, r in zip(chunk, replies, strict=True) if isinstance(r, Exception)]
            if bad:
                self._failed([c for c, _ in bad], bad[0][1])
                return

    async def close(self) -> None:
        await self.availability.close()
        self._flush()
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=self._s.redis_timeout_s * 2)
        until = time.monotonic() + self._s.redis_timeout_s * 2
        while self._posted > 0 and time.monotonic() < until:
            await asyncio.sleep(0.005)
        if self._pending:
            log.warning("shutting down with %d settle(s) Redis never received: their spend and token "
                        "counts are lost", len(self._pending))
        for wire in [self._wire, *(self._nodes.wires() if self._nodes is not None else ())]:
            if wire is not None:
                wire.close()
        if self.client is not None:
            await self.client.aclose()
