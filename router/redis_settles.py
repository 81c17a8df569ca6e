"""What requests give back to Redis and what they are charged, built one way for every path.

A finished request's tpm amounts and concurrency slots, the refund of a refused or orphaned
admit, a running stream's lease renewals, a spend, a healthy attempt: each is an op of the
settle script (redis_scripts.LUA_SETTLE) in wire format, made from pieces each plan encoded
once (redis_plans.Plan.settle_parts), in one SettleOps per hash tag (standalone: one for
all). redis_link.py sends them, and merges the ops of a batch's requests by tag.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from router.redis_plans import Plan
from router.redis_resp import SettleOps, bulk, hash_tag

_EMPTY, _OK, _TT, _EW, _SPEND = map(bulk, ("", "ok", "tt", "ew", "spend"))


class Settles:
    """One send's settle ops, per hash tag."""

    __slots__ = ("_head", "_cluster", "_by_tag")

    def __init__(self, head: Sequence[str], cluster: bool) -> None:
        self._head, self._cluster = head, cluster
        self._by_tag: dict[str, SettleOps] = {}

    def __iter__(self) -> Iterator[SettleOps]:
        return iter(self._by_tag.values())

    def __bool__(self) -> bool:
        return bool(self._by_tag)

    def _ops(self, tag: str, route: str) -> SettleOps:
        at = tag if self._cluster else ""
        ops = self._by_tag.get(at)
        if ops is None:
            ops = self._by_tag[at] = SettleOps(self._head, tag, route)
        return ops

    def plan(self, plan: Plan, rid: str, gives: int, a: bytes = _EMPTY, b: bytes = _EMPTY,
             calls: Sequence[int] | None = None) -> None:
        """What reservation `rid` of `plan` gives back (redis_plans: SLOTS, TOKENS, REFUND,
        RENEW), from each of its script calls or those in `calls`; `a` and `b` are each op's
        last two arguments (the token count, "refund", a lease's length and time)."""
        tail = bulk(rid) + a + b
        for j in range(len(plan.calls)) if calls is None else calls:
            part = plan.settle_parts(gives, j)
            if part is not None:
                tag, route, keys, nkeys, kinds = part
                self._ops(tag, route).add(keys, nkeys, b"".join([kind + tail for kind in kinds]), len(kinds))

    def spend(self, day_key: str, keys: bytes, marker: str, rid: str, micro: int, ttl: bytes) -> None:
        """A reservation's spend on its key's day and month, once if replayed within
        redis_scripts.PAID_TTL_MS."""
        self._ops(hash_tag(day_key), day_key).add(keys + bulk(marker), 3, _SPEND + bulk(rid) + bulk(str(micro)) + ttl, 1)


def ok_ops(head: Sequence[str], key: str, wire: bytes, tag: str, latency_s: float | None, stream: bool,
           now: str) -> SettleOps:
    """A healthy attempt that was not a probe, on health hash `key` (`wire`: the same
    encoded; `tag`: its hash tag)."""
    ops = SettleOps(head, tag, key)
    ops.add(wire, 1, b"".join([_OK, _EMPTY if latency_s is None else bulk(repr(float(latency_s))),
                               _TT if stream else _EW, bulk(now) if now else _EMPTY]), 1)
    return ops
