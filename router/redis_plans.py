"""Admit plans for Redis: each (key, model, targets) combination's keys and fixed script
arguments, built once and kept, with the settle pieces and keys that go with them.

Key layout (see redis_state.py): "<prefix>:{<scope initial>:<name>}:<kind>", the {hash tag}
keeping one scope's counters on one Cluster slot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from router.health import BUCKETS
from router.limits import BUDGET_KINDS, CONCURRENT, DAILY_USD, RPM, TPM, WINDOW_S, Check, Usage
from router.redis_resp import Packer, bulk, bulks, hash_tag
from router.state import StateSettings

PLAN_CACHE = 4096  # distinct (key, model, targets) combinations kept; past it the cache starts over

# What a settle gives back of a plan's reservation (Plan.settle_parts): its concurrency slots
# (the answer's token count unknown); those and its tpm amounts; all of it, rpm entries too
# (a refund); or, for a stream still running, its slots' leases renewed.
SLOTS, TOKENS, REFUND, RENEW = range(4)
_GIVES = {SLOTS: {CONCURRENT}, TOKENS: {CONCURRENT, TPM}, REFUND: {CONCURRENT, TPM, RPM}, RENEW: {CONCURRENT}}
_LEASE = bulk("lease")
SettlePart = tuple[str, str, bytes, int, list[bytes]]   # tag, first key, keys, how many, each op's kind
RPM_SHARED = "rpmt"   # the admit script's kind for an rpm counted in its scope's tpm zset


def esc(name: str) -> str:
    """Names go inside a {hash tag}: braces would end it early."""
    return name.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


AHEAD_AT = 10   # where an admit's `ahead` (ms) and then its count go in its arguments (after now and rid)


class Call:
    """One admit script of a plan: its keys, fixed arguments, where tpm amounts go, and the
    call packed but for what varies per request (time, reservation id, tpm amounts)."""

    __slots__ = ("idx", "keys", "args", "tpm_at", "packer")

    def __init__(self, idx: list[int], keys: list[str], args: list[str], tpm_at: list[int], packer: Packer) -> None:
        self.idx, self.keys, self.args, self.tpm_at, self.packer = idx, keys, args, tpm_at, packer


class Ran(NamedTuple):
    """What an admitted plan's calls answered: each check's usage (rpm and tpm, for the
    headers) and what it has left, the targets' health summaries, the probe claim, Redis's time."""

    usages: list[Usage | None]
    lefts: list[int]
    summaries: list[Any]
    claimed: int
    now: float | None


class Plan:
    """A combination's checks, each check's keys, and its script calls; built once."""

    __slots__ = ("checks", "keys", "calls", "health", "_settle")

    def __init__(self, checks: tuple[Check, ...], keys: list[list[str]], calls: list[Call], health: list[str]) -> None:
        self.checks, self.keys, self.calls, self.health = checks, keys, calls, health
        self._settle: dict[tuple[int, int], SettlePart | None] = {}

    def settle_parts(self, gives: int, call: int) -> SettlePart | None:
        """What a settle of kind `gives` (SLOTS, TOKENS, REFUND, RENEW) takes from the checks
        of script call `call` (one hash tag): the tag and first key that route it, the keys
        (encoded, and how many) and each op's kind; None when it gives back nothing there."""
        ident = (gives, call)
        if ident not in self._settle:
            kinds = _GIVES[gives]
            idx = [i for i in self.calls[call].idx if self.checks[i].kind in kinds and self.keys[i]]
            keys = [k for i in idx for k in self.keys[i]]
            self._settle[ident] = (hash_tag(keys[0]), keys[0], bulks(keys), len(keys),
                                   [_LEASE if gives == RENEW else bulk(self.checks[i].kind) for i in idx]) if idx else None
        return self._settle[ident]


class Planner:
    """Builds and keeps plans and the keys settles need; knows key names, not what they mean."""

    def __init__(self, settings: StateSettings, cluster: bool, packer: Callable[..., Packer]) -> None:
        s = self._s = settings
        self.cluster, self._packer = cluster, packer
        self._plans: dict[tuple[Any, ...], Plan] = {}
        self._spend: dict[tuple[str, str, str], tuple[str, bytes, str]] = {}   # (key, day, month) -> spend_keys()
        self._health: dict[str, tuple[str, bytes, str]] = {}
        self.width = repr(s.error_window_s / BUCKETS)
        self._fixed = [str(int(WINDOW_S * 1000)), str(int(s.concurrency_lease_s * 1000))]
        self._breaker = [repr(s.cooldown_s), str(s.half_open_probes), self.width, str(BUCKETS)]

    def base(self, scope: str, name: str) -> str:
        return f"{self._s.key_prefix}:{{{scope[0]}:{esc(name)}}}"

    def _keys(self, c: Check, day: str, month: str) -> list[str]:
        b = self.base(c.scope, c.name)
        if c.kind == TPM:
            return [f"{b}:tpm", f"{b}:tpm:h", f"{b}:tpm:l"]
        if c.kind in BUDGET_KINDS:
            return [f"{b}:spend:{day if c.kind == DAILY_USD else month}"]
        return [f"{b}:{'conc' if c.kind == CONCURRENT else c.kind}"]

    def health_key(self, target_id: str) -> str:
        return f"{self.base('target', target_id)}:health"

    def _build(self, checks: list[Check], health_ids: Sequence[str], probing: bool, day: str, month: str) -> Plan:
        keys = [self._keys(c, day, month) for c in checks]
        # An rpm beside a tpm of the same scope counts the tpm's time zset: the same entries,
        # kept once. Its admit reads all three tpm keys; a refund of the tpm drops the entry.
        tpm_keys = {(c.scope, c.name): keys[i] for i, c in enumerate(checks) if c.kind == TPM}
        kinds = [c.kind for c in checks]
        admit_keys = list(keys)
        for i, c in enumerate(checks):
            shared = tpm_keys.get((c.scope, c.name)) if c.kind == RPM else None
            if shared is not None:
                kinds[i], admit_keys[i], keys[i] = RPM_SHARED, shared, []
        health = [self.health_key(t) for t in health_ids]
        groups: list[list[int]]
        tails: list[list[str]]
        if self.cluster and not probing:
            by_tag: dict[tuple[str, str], list[int]] = {}
            for i, c in enumerate(checks):
                by_tag.setdefault((c.scope, c.name), []).append(i)
            groups, tails = list(by_tag.values()), [[] for _ in by_tag]
        else:  # standalone; a target's checks and its health share one tag
            groups, tails = ([list(range(len(checks)))], [health]) if checks or health else ([], [])
        calls = []
        for idx, tail in zip(groups, tails, strict=True):
            args = [*self._fixed, str(len(idx)), "1" if probing else "0", *self._breaker, "0", "1"]
            tpm_at = []
            for i in idx:
                c = checks[i]
                if c.kind == TPM:
                    tpm_at.append(len(args) + 2)
                args += [kinds[i], str(c.limit), str(c.amount)]
            call_keys = [k for i in idx for k in admit_keys[i]] + tail
            slots = [0, 1, *(at + 2 for at in tpm_at)]   # now, rid, tpm amounts
            packer = self._packer("admit", call_keys, ["", "", *args], slots)
            calls.append(Call(idx, call_keys, args, tpm_at, packer))
        return Plan(tuple(checks), keys, calls, health if self.cluster and not probing else [])

    def plan(self, cache_key: tuple[Any, ...], build: Any, *how: Any) -> Plan:
        plan = self._plans.get(cache_key)
        if plan is None:
            if len(self._plans) >= PLAN_CACHE:
                self._plans.clear()
            plan = self._plans[cache_key] = self._build(build(), *how)
        return plan

    def health_part(self, target_id: str) -> tuple[str, bytes, str]:
        """A target's health key, the same in wire format, and its hash tag."""
        part = self._health.get(target_id)
        if part is None:
            if len(self._health) >= PLAN_CACHE:
                self._health.clear()
            key = self.health_key(target_id)
            part = self._health[target_id] = (key, bulk(key), hash_tag(key))
        return part

    def spend_keys(self, key: str, day: str, month: str) -> tuple[str, bytes, str]:
        """A key's day spend key, its day and month spend keys (wire format) and the prefix of
        its paid sets (one per minute)."""
        spend = self._spend.get((key, day, month))
        if spend is None:
            if len(self._spend) >= PLAN_CACHE:
                self._spend.clear()
            b = self.base("key", key)
            keys = [f"{b}:spend:{day}", f"{b}:spend:{month}"]
            spend = self._spend[(key, day, month)] = (keys[0], bulks(keys), f"{b}:paid:")
        return spend
