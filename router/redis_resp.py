"""Script calls in Redis's wire format (RESP), built from pieces encoded once.

Most of what a request sends to Redis never changes between requests of the same key,
model and target: the keys, the limits, the kinds of its settle ops. Encoding them once and
joining bytes per request costs a fraction of packing every argument each time.
"""

from __future__ import annotations

from collections.abc import Sequence

from hiredis import Reader


def bulk(value: str) -> bytes:
    """One argument as RESP's bulk string."""
    data = value.encode()
    return b"$%d\r\n%b\r\n" % (len(data), data)


def bulks(values: Sequence[str]) -> bytes:
    return b"".join(map(bulk, values))


def hash_tag(key: str) -> str:
    """The {hash tag} of a key, which picks its Cluster slot."""
    return key[key.find("{"):key.find("}") + 1]


def decode(encoded: bytes, count: int) -> list[str]:
    """`count` bulk strings back as str (for the paths that need the arguments as a list)."""
    if not count:
        return []
    reader = Reader(encoding="utf-8")
    reader.feed(b"*%d\r\n" % count + encoded)
    out = reader.gets()
    return [str(x) for x in out]


class Packer:
    """One EVALSHA whose keys and most arguments are the same on every call (an admit plan's):
    packed once, so a call encodes only the arguments at `slots` (hiredis would pack all of
    them, each time)."""

    __slots__ = ("_head", "_steps", "_tail")

    def __init__(self, sha: str, keys: Sequence[str], args: Sequence[str], slots: Sequence[int]) -> None:
        fixed = [str(a) for a in ("EVALSHA", sha, len(keys), *keys)]
        self._head = b"*%d\r\n" % (len(fixed) + len(args)) + bulks(fixed)
        self._steps: list[tuple[bytes, int]] = []
        at = 0
        for slot in sorted(slots):
            self._steps.append((bulks(args[at:slot]), slot))
            at = slot + 1
        self._tail = bulks(args[at:])

    def pack(self, args: Sequence[str]) -> bytes:
        out = [self._head]
        for fixed, slot in self._steps:
            out += (fixed, bulk(args[slot]))
        out.append(self._tail)
        return b"".join(out)


class SettleOps:
    """Ops of the settle script (redis_scripts.LUA_SETTLE) in wire format. A script call lists
    all its keys before its arguments, so the two are kept apart; the ops of every request in
    a batch merge into one call by joining them. `head` is the script's fixed arguments after
    the op count; `tag` the {hash tag} of the keys and `route` the first key (in Cluster a
    call's keys share a slot: ops merge by tag, and the first key finds the node)."""

    __slots__ = ("head", "tag", "route", "keys", "nkeys", "args", "nops")

    def __init__(self, head: Sequence[str], tag: str = "", route: str = "") -> None:
        self.head, self.tag, self.route = head, tag, route
        self.keys: list[bytes] = []
        self.nkeys = 0
        self.args: list[bytes] = []
        self.nops = 0

    def add(self, keys: bytes, nkeys: int, args: bytes, nops: int) -> None:
        """`nops` ops of four arguments each."""
        self.keys.append(keys)
        self.nkeys += nkeys
        self.args.append(args)
        self.nops += nops

    def merge(self, other: SettleOps) -> None:
        self.keys += other.keys
        self.nkeys += other.nkeys
        self.args += other.args
        self.nops += other.nops

    def pack(self, verb: str, script: str) -> bytes:
        head = [verb, script, str(self.nkeys)]
        count = len(head) + self.nkeys + 1 + len(self.head) + 4 * self.nops
        return b"".join([b"*%d\r\n" % count, bulks(head), *self.keys, bulk(str(self.nops)), bulks(self.head),
                         *self.args])

    def argv(self) -> tuple[list[str], list[str]]:
        """(keys, args) as lists, for the paths that send through redis-py or keep them."""
        keys = decode(b"".join(self.keys), self.nkeys)
        args = [str(self.nops), *self.head, *decode(b"".join(self.args), 4 * self.nops)]
        return keys, args
