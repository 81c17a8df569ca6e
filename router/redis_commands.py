"""A batch's commands: one script call each, the settles nobody waits for merged, and
read-only calls shared by the callers that want the same one at once.

Used by redis_link.py, which sends them (SharedReads by redis_state.py). Settles are
wire-format ops (redis_resp.SettleOps), decoded to lists only for the paths through redis-py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from router.redis_resp import SettleOps

Orphan = Callable[[Any], None]


class Command:
    """One script call in a batch. `fut` is None for a call nobody waits on; `orphan` gets
    the reply of a call whose waiter was cancelled (so it can undo what the script took);
    `replay` keeps the call for when Redis is back if it could not be sent; `packed` is the
    call's EVALSHA already in Redis's wire format (see Packer); a settle may come as `ops`
    in wire format instead of keys and args (decoded only for a path that needs them)."""

    __slots__ = ("name", "_keys", "_args", "fut", "orphan", "replay", "op", "packed", "ops")

    def __init__(self, op: str, name: str, keys: Sequence[str] | None, args: Sequence[str] | None,
                 fut: asyncio.Future[Any] | None, orphan: Orphan | None, replay: bool,
                 packed: bytes | None = None, ops: SettleOps | None = None) -> None:
        self.op, self.name, self._keys, self._args = op, name, keys, args
        self.fut, self.orphan, self.replay, self.packed, self.ops = fut, orphan, replay, packed, ops

    @property
    def keys(self) -> Sequence[str]:
        if self._keys is None:
            self._decode()
        return self._keys  # type: ignore[return-value]

    @property
    def args(self) -> Sequence[str]:
        if self._args is None:
            self._decode()
        return self._args  # type: ignore[return-value]

    @property
    def route(self) -> str:
        """The key that finds a Cluster call's node (every key of a call shares its slot)."""
        return self.ops.route if self.ops is not None else self.keys[0]

    def _decode(self) -> None:
        assert self.ops is not None
        self._keys, self._args = self.ops.argv()


def merge_settles(batch: list[Command], cluster: bool) -> list[Command]:
    """Settles nobody waits for, of every request in the batch, as one script call (the settle
    script takes any number of ops), ahead of the rest. In Cluster a script's keys must share
    a slot: one call per hash tag."""
    loose = [c.ops for c in batch if c.ops is not None and c.fut is None]
    if len(loose) < 2:
        return batch
    kept = [c for c in batch if c.ops is None or c.fut is not None]
    by_tag: dict[str, SettleOps] = {}
    for one in loose:
        tag = one.tag if cluster else ""
        ops = by_tag.get(tag)
        if ops is None:
            ops = by_tag[tag] = SettleOps(one.head, one.tag, one.route)
        ops.merge(one)
    return [*(Command("settle", "settle", None, None, None, None, True, ops=ops) for ops in by_tag.values()), *kept]


class SharedReads:
    """Read-only calls in flight, shared by every caller that asks for the same one before its
    reply: the same as running them back to back, for one script call instead of many. Each
    caller gets a future of its own, so one that is cancelled leaves the others theirs."""

    def __init__(self) -> None:
        self._live: dict[str, asyncio.Future[Any]] = {}

    def get(self, ident: str, start: Callable[[], asyncio.Future[Any]]) -> asyncio.Future[Any]:
        shared = self._live.get(ident)
        if shared is None:
            shared = self._live[ident] = start()
            shared.add_done_callback(lambda f: self._live.pop(ident, None) if self._live.get(ident) is f else None)
        mine: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        shared.add_done_callback(lambda f: _copy(f, mine))
        return mine


def _copy(src: asyncio.Future[Any], dst: asyncio.Future[Any]) -> None:
    if src.cancelled():
        if not dst.done():
            dst.cancel()
        return
    exc = src.exception()   # taken even when every caller has gone, so asyncio does not report it
    if dst.done():
        return
    if exc is not None:
        dst.set_exception(exc)
    else:
        dst.set_result(src.result())
