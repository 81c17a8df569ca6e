"""redis-py, where the proxy's own connection (redis_wire.py) does not reach: TLS, unix
sockets, and a Cluster's slot map and redirections. redis-py itself is imported only inside
make_client, so plain redis:// never loads it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from hiredis import pack_command

from router.redis_commands import Command
from router.redis_wire import NoScript, ReplyError, Wire, open_wire
from router.state import StateSettings

REDIRECTS = ("MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN")  # a Cluster's "not here, not now"


def is_cluster(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme.endswith("-cluster") or \
        parse_qs(parts.query).get("cluster", ["false"])[0].lower() in ("1", "true", "yes")


def make_client(url: str, s: StateSettings) -> Any:
    """redis-py's client for TLS, sockets and Cluster. One immediate retry inside redis-py,
    for a pooled connection that went stale (Redis restarted, Cluster client
    re-initialised); `redis_timeout_s` still bounds the batch."""
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    parts = urlsplit(url)
    query = parse_qs(parts.query)
    query.pop("cluster", None)
    scheme = "rediss" if parts.scheme.startswith("rediss") else "redis"
    clean = urlunsplit((scheme, parts.netloc, parts.path, urlencode(query, doseq=True), parts.fragment))
    kw: dict[str, Any] = {
        "socket_timeout": s.redis_timeout_s,
        "socket_connect_timeout": s.redis_timeout_s,
        "retry": Retry(NoBackoff(), 1),
    }
    if is_cluster(url):
        return RedisCluster.from_url(clean, max_connections=s.redis_max_connections, **kw)
    # a blocking pool: a burst past the pool size waits for a connection (within the
    # timeout) instead of failing with "Too many connections"
    pool = BlockingConnectionPool.from_url(clean, max_connections=s.redis_max_connections, timeout=s.redis_timeout_s, **kw)
    return Redis.from_pool(pool)


def _ours(reply: Any) -> Any:
    """A redis-py error reply as the wire's own (NoScript, ReplyError)."""
    if isinstance(reply, Exception) and not isinstance(reply, (ReplyError, OSError, TimeoutError)):
        return (NoScript if type(reply).__name__ == "NoScriptError" else ReplyError)(str(reply))
    return reply


async def run_pipeline(client: Any, batch: Sequence[Command], verb: str, code: dict[str, str]) -> list[Any]:
    """The batch through redis-py: TLS, sockets, and Cluster commands redirected mid-batch."""
    pipe: Any = client.pipeline(transaction=False)
    # execute_command: a Cluster pipeline refuses its own evalsha method, not the command
    for c in batch:
        pipe.execute_command(verb, code[c.name], len(c.keys), *c.keys, *c.args)
    return [_ours(r) for r in await pipe.execute(raise_on_error=False)]


class ClusterNodes:
    """A plain (not TLS) Cluster's primaries, each on a connection of the proxy's own:
    redis-py's client keeps the slot map and follows redirections, the calls go out here."""

    def __init__(self, client: Any, creds: tuple[str | None, str | None]) -> None:
        self.client = client
        self._creds = creds
        self._wires: dict[str, Wire] = {}
        self._lock = asyncio.Lock()

    def wires(self) -> list[Wire]:
        return list(self._wires.values())

    def groups(self, batch: Sequence[Command]) -> list[tuple[Wire, list[int]]] | None:
        """The connected wire of the primary holding each command's slot; None when one is
        not connected yet."""
        by_node: dict[str, tuple[Wire, list[int]]] = {}
        for i, c in enumerate(batch):
            name = self.client.get_node_from_key(c.route).name
            group = by_node.get(name)
            if group is None:
                wire = self._wires.get(name)
                if wire is None or wire.lost:
                    return None
                group = by_node[name] = (wire, [])
            group[1].append(i)
        return list(by_node.values())

    async def run(self, batch: Sequence[Command], verb: str, code: dict[str, str]) -> list[Any]:
        """Each command to its primary, one write per node; a command the cluster redirects
        (resharding, failover) goes again through redis-py, and the slot map is reloaded."""
        by_node: dict[str, tuple[Any, list[int]]] = {}
        for i, c in enumerate(batch):
            node = self.client.get_node_from_key(c.keys[0])
            by_node.setdefault(node.name, (node, []))[1].append(i)
        sent = []
        for node, idx in by_node.values():
            wire = await self._wire(node.name, node.host, node.port)
            packed = b"".join([pack_command((verb, code[batch[i].name], len(batch[i].keys), *batch[i].keys,  # type: ignore[arg-type]
                                             *batch[i].args)) for i in idx])
            sent.append(wire.send(packed, len(idx)))
        replies: list[Any] = [None] * len(batch)
        for (_, idx), got in zip(by_node.values(), await asyncio.gather(*sent), strict=True):
            for i, reply in zip(idx, got, strict=True):
                replies[i] = reply
        moved = [i for i, r in enumerate(replies) if isinstance(r, ReplyError) and str(r).startswith(REDIRECTS)]
        if moved:
            await self.client.nodes_manager.initialize()
            again = await run_pipeline(self.client, [batch[i] for i in moved], verb, code)
            for i, reply in zip(moved, again, strict=True):
                replies[i] = reply
        return replies

    async def _wire(self, name: str, host: str, port: int) -> Wire:
        wire = self._wires.get(name)
        if wire is None or wire.lost:
            async with self._lock:
                wire = self._wires.get(name)
                if wire is None or wire.lost:
                    wire = self._wires[name] = await open_wire(host, port, *self._creds, 0)
        return wire
