"""Benchmark: the proxy's cost per request against a bare aiohttp relay, side by side, everything on.

Not a test (pytest does not collect it): run by hand, it prints a table of medians and ratios.

    python tests/bench/bench_proxy.py                      # req, stream, lat1; 3 rounds of 5 s
    python tests/bench/bench_proxy.py --cases req,stream,lat1,stream256,open1000,startup --cluster
    python tests/bench/bench_proxy.py --cases soak --soak-seconds 600
    python tests/bench/bench_proxy.py --litellm /tmp/litellm-venv/bin/litellm \
        --portkey /tmp/portkey/node_modules/@portkey-ai/gateway/build/start-server.js

The router runs with what users turn on: a client key, rpm/tpm/concurrency limits on the key
and rpm/tpm on the model, a price, metrics, and the access log (to a file), in-process
("router") and on a redis-server the benchmark starts itself ("router+redis"; with
--cluster also a 3-node Redis Cluster, "router+cluster"; with --ahead N also each of those
taking N admissions ahead, the opt-in ROUTER_ADMIT_AHEAD, "+ahead"). Every contender is started at once,
pinned to core 0 (idle ones cost nothing); the canned OpenAI-shaped upstreams, Redis and wrk
run on core 1. req, stream and lat1 run in front of a static nginx, the cheapest upstream
there is, which sends a stream's 20 events in one write (--python-upstream: an aiohttp
upstream that writes each event on its own, as a model's server does); the other cases need
events spaced, so they use the aiohttp one. Each case runs --rounds rounds, every contender
in turn within a round, and the table shows medians, so drift hits every contender alike.
The relay does the least any proxy must: read the body, POST it upstream on a pooled
session, return the answer (a stream is passed through as its bytes come: iter_any ->
write).

Cases:
  req        non-stream, 64 connections: req/s, p50, p99, CPU per request (from /proc),
             and for the Redis contenders Redis's own CPU per request: what one Redis
             shared by every replica can carry
  stream     20 SSE events back to back, 16 connections
  lat1       one connection: the added p50 and p99 over the upstream alone
  stream256  256 connections, events 10 ms apart as a model sends them: p99
  open1000   1,000 streams held open at once (the upstream sends one event per 100 ms):
             resident memory of each contender
  startup    seconds from launch to a first complete answer
  instructions  instructions per request and per stream (callgrind; needs valgrind), with
             their ratio to the relay's: a measure this machine's neighbours do not move
             (tests/bench/instructions.py says what it leaves out)
  soak       --soak-seconds of steady load: resident memory and open descriptors after
             warm-up and at the end (the upstream keep-alive pool counted apart: its size is
             whatever the load's end left it)

Before each timed run one request is checked by hand (status 200; for a stream every chunk
and `data: [DONE]`), so a contender that answers fast but wrong shows up. Then a one-second
warm-up, and a wait until the contender is idle: the warm-up's streams are cut off when wrk
stops, and the timed run should not measure the recovery from that.

LiteLLM (optional, installed apart, never vendored here): `python -m venv /tmp/litellm-venv
&& /tmp/litellm-venv/bin/pip install 'litellm[proxy]'`; it gets a generated config with one
model and no callbacks, retries, database or logging, and one worker. Portkey's gateway
(optional): `npm install @portkey-ai/gateway` and --portkey naming its build/start-server.js;
it is told the upstream per request (x-portkey-provider / x-portkey-custom-host headers).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import instructions  # noqa: E402  (tests/bench/instructions.py, beside this script)

# The upstreams' canned answers, one module for both: the Python upstream imports it, the
# benchmark runs it to write nginx's configuration.
CANNED = textwrap.dedent('''
    import orjson
    USAGE = {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}
    TEXT = orjson.dumps({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "text": "Hello there, this is a canned answer.", "finish_reason": "stop",
                     "logprobs": None}], "usage": USAGE})
    CHAT = orjson.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there, this is a canned answer."},
                     "finish_reason": "stop"}], "usage": USAGE})
    def sse(o): return b"data: " + orjson.dumps(o) + b"\\n\\n"
    def chunks(chat, count):
        out = []
        for i in range(count):
            fin = "stop" if i == count - 1 else None
            if chat:
                delta = {"role": "assistant", "content": ""} if i == 0 else {"content": f"tok{i} and "}
                out.append(sse({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                                "choices": [{"index": 0, "delta": delta, "finish_reason": fin}]}))
            else:
                out.append(sse({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
                                "choices": [{"index": 0, "text": f"tok{i} and ", "finish_reason": fin, "logprobs": None}]}))
        obj = "chat.completion.chunk" if chat else "text_completion"
        usage = sse({"id": "cmpl-1", "object": obj, "created": 1, "model": "m", "choices": [], "usage": USAGE})
        return out, usage
''')

UPSTREAM = textwrap.dedent('''
    import asyncio, sys, orjson, uvloop
    from aiohttp import web
    from canned import CHAT, TEXT, chunks
    CHUNKS, GAP = int(sys.argv[2]), float(sys.argv[3]) / 1000
    STREAMS = {False: chunks(False, CHUNKS), True: chunks(True, CHUNKS)}
    async def handle(request):
        req = orjson.loads(await request.read())
        chat = request.path.endswith("/chat/completions")
        if not req.get("stream"):
            return web.Response(body=CHAT if chat else TEXT, content_type="application/json")
        events, usage = STREAMS[chat]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        try:
            for ev in events:
                await resp.write(ev)
                if GAP:
                    await asyncio.sleep(GAP)
            if (req.get("stream_options") or {}).get("include_usage"):
                await resp.write(usage)
            await resp.write(b"data: [DONE]\\n\\n")
            await resp.write_eof()
        except ConnectionError:  # wrk hangs up mid-stream when its time is up
            pass
        return resp
    async def models(request):
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "bench"}]})
    app = web.Application()
    app.router.add_post("/v1/completions", handle); app.router.add_post("/v1/chat/completions", handle)
    app.router.add_get("/v1/models", models)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, backlog=4096,
                loop=uvloop.new_event_loop())
''')

RELAY = textwrap.dedent('''
    import sys, aiohttp, uvloop
    from aiohttp import web
    UP = f"http://127.0.0.1:{sys.argv[2]}"
    async def session(app):
        app["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app["s"].close()
    async def handle(request):
        body = await request.read()
        async with request.app["s"].post(UP + request.path, data=body, headers={"Content-Type": "application/json"}) as r:
            if r.content_type != "text/event-stream":
                return web.Response(body=await r.read(), status=r.status, content_type="application/json")
            resp = web.StreamResponse(status=r.status, headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            async for data in r.content.iter_any():
                await resp.write(data)
            await resp.write_eof()
            return resp
    app = web.Application(); app.cleanup_ctx.append(session)
    app.router.add_post("/v1/completions", handle); app.router.add_post("/v1/chat/completions", handle)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, backlog=4096,
                loop=uvloop.new_event_loop())
''')

ROUTES = textwrap.dedent('''
    providers:
      up: {kind: openai, base_url: "http://127.0.0.1:%d/v1"}
    keys:
      bench:
        key_env: ROUTER_BENCH_KEY
        limits: {rpm: 100000000, tpm: 100000000000, concurrent: 100000}
    models:
      m:
        limits: {rpm: 100000000, tpm: 100000000000}
        targets:
          - {provider: up, model: m, price: {input: 1, output: 2}}
''')

LITELLM_CONFIG = textwrap.dedent('''
    model_list:
      - model_name: m
        litellm_params:
          model: openai/m
          api_base: "http://127.0.0.1:%d/v1"
          api_key: sk-dummy-upstream-key
    litellm_settings:
      callbacks: []
      success_callback: []
      failure_callback: []
      num_retries: 0
      request_timeout: 30
      set_verbose: false
    general_settings:
      disable_spend_logs: true
      disable_error_logs: true
''')

WRK_LUA = textwrap.dedent('''
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
    wrk.headers["Authorization"] = "Bearer %s"
    wrk.headers["x-portkey-provider"] = "openai"
    wrk.headers["x-portkey-custom-host"] = "http://127.0.0.1:%d/v1"
    wrk.body = '%s'
''')


def request_body(chat: bool, stream: bool) -> bytes:
    prompt = "Say hello in one short sentence."
    head = f'{{"model": "m", "messages": [{{"role": "user", "content": "{prompt}"}}]' if chat else \
        f'{{"model": "m", "prompt": "{prompt}"'
    return (head + ', "max_tokens": 16, "temperature": 0.2' + (', "stream": true' if stream else "") + "}").encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def pinned(core: int, argv: list[str]) -> list[str]:
    return (["taskset", "-c", str(core)] if shutil.which("taskset") else []) + argv


def nginx_upstream(tmp: Path, port: int, stream: bool) -> list[str] | None:
    """A static nginx upstream pinned to core 1: the Python upstream's canned answers (a
    stream's 20 events and [DONE], without usage) whatever the request; None without nginx."""
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if binary is None:
        return None
    canned: dict[str, Any] = {}
    exec(CANNED, canned)
    bodies = {}
    for chat, name in ((True, "chat/completions"), (False, "completions")):
        bodies[name] = (b"".join(canned["chunks"](chat, 20)[0]) + b"data: [DONE]\n\n") if stream else \
            canned["CHAT" if chat else "TEXT"]
    ctype = "text/event-stream" if stream else "application/json"
    locations = "".join(f"    location = /v1/{name} {{ default_type {ctype}; return 200 '{body.decode()}'; }}\n"
                        for name, body in bodies.items())
    conf = tmp / f"nginx-{port}.conf"
    temp = tmp / f"nginx-{port}"
    temp.mkdir()
    conf.write_text(f"""worker_processes 1; daemon off; pid {temp}/nginx.pid;
events {{ worker_connections 8192; }}
http {{
  access_log off; keepalive_requests 100000000; keepalive_timeout 600s;
  client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy; fastcgi_temp_path {temp}/fastcgi;
  uwsgi_temp_path {temp}/uwsgi; scgi_temp_path {temp}/scgi;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
{locations}  }}
}}
""")
    return pinned(1, [binary, "-c", str(conf), "-p", str(temp), "-e", str(temp / "error.log")])


def terminate(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()


@contextlib.contextmanager
def started(argv: list[str], log_path: Path, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A process for the length of the block, its output in log_path; ended (by its pid) after."""
    with open(log_path, "wb") as log:
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        try:
            yield p
        finally:
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def cpu_seconds(pid: int) -> float:
    """utime+stime of pid and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            raw = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()  # fields from 3 (state) on
        stats[int(d)] = fields
        children.setdefault(int(fields[1]), []).append(int(d))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            total += int(stats[p][11]) + int(stats[p][12])  # utime, stime
        todo.extend(children.get(p, []))
    return total / os.sysconf("SC_CLK_TCK")


def probe(port: int, path: str, body: bytes, key: str, stream: bool, chunks: int, up: int = 0) -> str:
    """One request by hand: what came back, in a few words; raises if it is not a full answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", path, body, {"Content-Type": "application/json", "Authorization": f"Bearer {key}",
                                      # Portkey's gateway is told its upstream per request
                                      "x-portkey-provider": "openai", "x-portkey-custom-host": f"http://127.0.0.1:{up}/v1"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"probe got {resp.status}: {data[:300]!r}")
    if not stream:
        if b"canned answer" not in data:
            raise RuntimeError(f"probe got an unexpected body: {data[:300]!r}")
        return f"200, {len(data)} B"
    events = [ln for ln in data.split(b"\n") if ln.startswith(b"data:")]
    text = [e for e in events if b"tok" in e]
    if len(text) < chunks - 1 or events[-1].strip() != b"data: [DONE]":
        raise RuntimeError(f"probe got {len(events)} events, {len(text)} with text: {data[-300:]!r}")
    return f"200, {len(events)} events incl. [DONE]"


def need(pattern: str, text: str) -> re.Match[str]:
    m = re.search(pattern, text)
    if m is None:
        raise RuntimeError(f"no {pattern!r} in wrk's output:\n{text}")
    return m


def wrk(port: int, path: str, seconds: int, connections: int, script: Path) -> dict[str, float]:
    out = subprocess.run(pinned(1, ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
                                    "--latency", "-s", str(script), f"http://127.0.0.1:{port}{path}"]),
                         capture_output=True, text=True, check=True).stdout
    rps = float(need(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(need(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    lat = {}
    for q in ("50", "99"):
        m = need(rf"\s{q}%\s+([\d.]+)(us|ms|s)", out)
        lat[q] = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    return {"rps": rps, "requests": total, "p50_ms": lat["50"], "p99_ms": lat["99"],
            "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "sockerr": sum(int(g) for g in sock.groups()) if sock else 0}


def quiet(pid: int, timeout: float = 10.0) -> None:
    """Wait until pid has gone a quarter second without CPU: the warm-up's cut-off streams
    have ended, so the timed run starts from a steady state for every contender alike."""
    end = time.monotonic() + timeout
    last = cpu_seconds(pid)
    while time.monotonic() < end:
        time.sleep(0.25)
        now = cpu_seconds(pid)
        if now - last < 0.005:
            return
        last = now


def rss_kb(pid: int) -> int:
    """Resident memory of pid and its descendants, in KiB."""
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def open_fds(pid: int) -> int:
    return sum(len(os.listdir(f"/proc/{p}/fd")) for p in [pid, *descendants(pid)] if os.path.exists(f"/proc/{p}/fd"))


def pool_conns(pid: int, port: int) -> int:
    """pid's open connections to 127.0.0.1:port (its keep-alive pool to an upstream), from /proc."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for row in rows if (f := row.split())[2].endswith(f":{port:04X}") and f[9] in inodes)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                raw = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(raw[raw.rindex(")") + 2:].split()[1]), []).append(int(d))
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def hold_streams(port: int, path: str, body: bytes, key: str, n: int, pid: int, up: int) -> tuple[int, int]:
    """Open n streams at once (the upstream sends slowly) and read the contender's resident
    memory once every one has its first event; returns (RSS KiB, streams open)."""
    import asyncio

    import aiohttp

    async def run() -> tuple[int, int]:
        opened = 0
        started = asyncio.Event()
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as s:
            async def one() -> None:
                nonlocal opened
                async with s.post(f"http://127.0.0.1:{port}{path}", data=body,
                                  headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}",
                                           "x-portkey-provider": "openai",
                                           "x-portkey-custom-host": f"http://127.0.0.1:{up}/v1"}) as r:
                    await r.content.readline()
                    opened += 1
                    if opened == n:
                        started.set()
                    await started.wait()
                    await asyncio.sleep(1.0)
            tasks = [asyncio.ensure_future(one()) for _ in range(n)]
            try:
                await asyncio.wait_for(started.wait(), 60)
                await asyncio.sleep(0.5)
                return rss_kb(pid), opened
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    return asyncio.run(run())


def time_to_answer(argv: list[str], env: dict[str, str], cwd: Path, port: int, path: str, body: bytes,
                   key: str, log_path: Path, up: int) -> float:
    """Seconds from launching the contender to its first complete answer."""
    t0 = time.monotonic()
    with started(pinned(0, argv), log_path, env=env, cwd=cwd) as p:
        while time.monotonic() - t0 < 30:
            if p.poll() is not None:
                raise RuntimeError(f"exited with {p.returncode}")
            try:
                probe(port, path, body, key, False, 0, up)
                return time.monotonic() - t0
            except (OSError, RuntimeError):
                time.sleep(0.01)
    raise RuntimeError("no answer within 30 s")


def start_redis(tmp: Path, cluster: bool) -> tuple[str, list[subprocess.Popen[bytes]]]:
    """A throwaway redis-server (or a 3-node Cluster) on core 1; returns (REDIS_URL, processes)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.fixtures_redis import RedisServer, start_cluster

    if cluster:
        nodes = start_cluster(shutil.which("redis-server") or "redis-server", shutil.which("redis-cli") or "redis-cli",
                              tmp / "cluster")
        for n in nodes:
            subprocess.run(["taskset", "-pc", "1", str(n.proc.pid)], capture_output=True)  # type: ignore[union-attr]
        return f"redis-cluster://127.0.0.1:{nodes[0].port}", [n.proc for n in nodes]  # type: ignore[misc]
    server = RedisServer(shutil.which("redis-server") or "redis-server", tmp / "redis")
    server.start()
    subprocess.run(["taskset", "-pc", "1", str(server.proc.pid)], capture_output=True)  # type: ignore[union-attr]
    return server.url, [server.proc]  # type: ignore[list-item]


REPO = Path(__file__).resolve().parents[2]


def precompile(trees: list[str]) -> None:
    """Byte-compile the router's packages, as a pip install does: with PYTHONDONTWRITEBYTECODE
    set (or a snapshot without __pycache__), every launch would compile them again, and the
    startup case would measure that."""
    for tree in trees:
        for pkg in ("router", "providers"):
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(tree) / pkg)], check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--python-upstream", action="store_true",
                    help="req, stream and lat1 in front of the Python upstream (events in writes of their own) "
                         "instead of static nginx")
    ap.add_argument("--seconds", type=int, default=5, help="length of each timed wrk run (default 5)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per case; the table shows medians (default 3)")
    ap.add_argument("--cases", default="req,stream,lat1",
                    help="comma-separated cases: req (64 conns), stream (16 conns, 20 events), lat1 (1 conn), "
                         "stream256 (256 conns, events 10 ms apart), open1000 (1,000 slow streams: RSS), "
                         "startup (launch to first answer), soak (see --soak-seconds), "
                         "instructions (callgrind: instructions per request)")
    ap.add_argument("--ir-requests", type=int, default=300,
                    help="requests counted per contender in the instructions case, 8 at a time (default 300)")
    ap.add_argument("--soak-seconds", type=int, default=600, help="length of the soak case (default 600)")
    ap.add_argument("--endpoint", choices=["chat", "completions"], default="chat")
    ap.add_argument("--cluster", action="store_true", help="add the router on a 3-node Redis Cluster")
    ap.add_argument("--no-redis", action="store_true", help="leave out the router on Redis")
    ap.add_argument("--ahead", type=int, default=0, metavar="N",
                    help="also the router on Redis taking N admissions ahead (ROUTER_ADMIT_AHEAD, opt-in): "
                         "'router+redis+ahead' (and '+cluster+ahead' with --cluster)")
    ap.add_argument("--litellm", metavar="PATH", help="LiteLLM's CLI (from its own venv) to add as a contender")
    ap.add_argument("--portkey", metavar="PATH", help="Portkey gateway's start script (node build/start-server.js)")
    ap.add_argument("--router-src", metavar="DIR", help="run the router from this source tree (PYTHONPATH)")
    ap.add_argument("--baseline-src", metavar="DIR",
                    help="also run the router from this tree (e.g. `git archive HEAD~ router providers`), as "
                         "'base' and 'base+redis': a change measured side by side with what it changes")
    ap.add_argument("--only", help="comma-separated contenders to run (relay,router,router+redis,...)")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        print("needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    cases = args.cases.split(",")
    chat = args.endpoint == "chat"
    path = "/v1/chat/completions" if chat else "/v1/completions"
    key = "sk-bench-" + secrets.token_hex(24)
    tmp = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    precompile([args.router_src or str(REPO), *([args.baseline_src] if args.baseline_src else [])])
    (tmp / "up.py").write_text(UPSTREAM)
    (tmp / "canned.py").write_text(CANNED)
    (tmp / "relay.py").write_text(RELAY)

    def lua(up: str, stream: bool) -> Path:
        """wrk's script for a stream or not, naming upstream `up` (for Portkey's headers)."""
        path = tmp / f"req-{up}-{int(stream)}.lua"
        if not path.exists():
            path.write_text(WRK_LUA % (key, ups[up], request_body(chat, stream).decode()))
        return path
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    extra: dict[str, dict[str, float]] = {}
    with contextlib.ExitStack() as stack:
        ups = {}
        for name, chunks, gap in (("fast", 20, 0.0), ("spaced", 20, 10.0), ("slow", 200, 100.0)):
            port = free_port()
            p = stack.enter_context(started(pinned(1, [sys.executable, str(tmp / "up.py"), str(port), str(chunks), str(gap)]),
                                            tmp / f"upstream-{name}.log"))
            wait_port(port, p)
            ups[name] = port
        # req, stream and lat1 in front of nginx; the Python upstream where events must be
        # spaced (stream256, open1000), or without nginx
        for name, stream in (("static", False), ("static-sse", True)):
            port = free_port()
            argv = None if args.python_upstream else nginx_upstream(tmp, port, stream)
            if argv is None:
                if not args.python_upstream and not stream:
                    print("no nginx: req, stream and lat1 use the Python upstream", file=sys.stderr)
                ups[name] = ups["fast"]
                continue
            p = stack.enter_context(started(argv, tmp / f"upstream-{name}.log"))
            wait_port(port, p)
            ups[name] = port
        redis_urls: dict[str, str] = {}
        redis_pids: dict[str, list[int]] = {}   # a contender's Redis processes: their CPU per request
        if not args.no_redis:
            url, procs = start_redis(tmp, False)
            stack.callback(terminate, procs)
            redis_urls["router+redis"] = url
            redis_pids["router+redis"] = redis_pids["base+redis"] = redis_pids["router+redis+ahead"] = [p.pid for p in procs]
        if args.cluster:
            url, cprocs = start_redis(tmp, True)
            stack.callback(terminate, cprocs)
            redis_urls["router+cluster"] = url
            redis_pids["router+cluster"] = redis_pids["base+cluster"] = redis_pids["router+cluster+ahead"] = \
                [p.pid for p in cprocs]

        def contenders(up: int) -> dict[str, tuple[list[str], dict[str, str], float]]:
            (tmp / f"routes-{up}.yaml").write_text(ROUTES % up)
            env = dict(os.environ, ROUTER_BENCH_KEY=key)
            if args.router_src:
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.router_src, os.environ.get("PYTHONPATH")]))
            router = [sys.executable, "-m", "router", "serve", "--config", str(tmp / f"routes-{up}.yaml"),
                      "--port", "{port}", "--log-level", "INFO"]  # INFO: the access log is on
            out = {"relay": ([sys.executable, str(tmp / "relay.py"), "{port}", str(up)], dict(os.environ), 15.0),
                   "router": (router, env, 15.0)}
            for name, url in redis_urls.items():
                out[name] = (router, dict(env, REDIS_URL=url), 15.0)
            if args.ahead:
                for name, url in redis_urls.items():
                    out[name + "+ahead"] = (router, dict(env, REDIS_URL=url, ROUTER_ADMIT_AHEAD=str(args.ahead)), 15.0)
            if args.baseline_src:
                base_env = dict(env, PYTHONPATH=os.pathsep.join(filter(None, [args.baseline_src,
                                                                              os.environ.get("PYTHONPATH")])))
                out["base"] = (router, base_env, 15.0)
                for name, url in redis_urls.items():
                    out[name.replace("router", "base")] = (router, dict(base_env, REDIS_URL=url), 15.0)
            if args.litellm:
                (tmp / "litellm.yaml").write_text(LITELLM_CONFIG % up)
                lenv = dict(os.environ, LITELLM_MASTER_KEY=key, LITELLM_LOG="ERROR", LITELLM_MODE="PRODUCTION",
                            LITELLM_LOCAL_MODEL_COST_MAP="True")
                out["litellm"] = ([args.litellm, "--config", str(tmp / "litellm.yaml"), "--host", "127.0.0.1",
                                   "--port", "{port}", "--num_workers", "1"], lenv, 90.0)
            if args.portkey:
                out["portkey"] = (["node", args.portkey, "--port={port}"], dict(os.environ), 30.0)
            if args.only:
                keep = set(args.only.split(","))
                out = {k: v for k, v in out.items() if k in keep}
            return out

        def run_contenders(up: str, fn: Callable[[str, int, subprocess.Popen[bytes]], None]) -> None:
            """Start every contender in front of upstream `up` (all on core 0, idle ones cost
            nothing), then hand each in turn to fn."""
            with contextlib.ExitStack() as inner:
                live = {}
                for name, (argv, env, start_timeout) in contenders(ups[up]).items():
                    port = free_port()
                    p = inner.enter_context(started(pinned(0, [a.replace("{port}", str(port)) for a in argv]),
                                                    tmp / f"{name}-{up}.log", env=env, cwd=tmp))
                    live[name] = (port, p, start_timeout)
                for name, (port, p, start_timeout) in live.items():
                    wait_port(port, p, start_timeout)
                for name, (port, p, _) in live.items():
                    try:
                        fn(name, port, p)
                    except Exception:
                        print(f"{name} failed; its log: {tmp / f'{name}-{up}.log'}", file=sys.stderr)
                        raise

        def timed(case: str, up: str, stream: bool, conns: int) -> Callable[[str, int, subprocess.Popen[bytes]], None]:
            def fn(name: str, port: int, p: subprocess.Popen[bytes]) -> None:
                probe(port, path, request_body(chat, stream), key, stream, 20, ups[up])
                wrk(port, path, 1, conns, lua(up, stream))  # warm-up
                quiet(p.pid)
                shared = redis_pids.get(name, [])
                cpu0, rcpu0 = cpu_seconds(p.pid), sum(map(cpu_seconds, shared))
                r = wrk(port, path, args.seconds, conns, lua(up, stream))
                r["cpu_ms"] = 1000 * (cpu_seconds(p.pid) - cpu0) / max(r["requests"], 1)
                if shared:   # what the fleet's one Redis pays per request: its capacity
                    time.sleep(0.05)   # the last settles
                    r["redis_ms"] = 1000 * (sum(map(cpu_seconds, shared)) - rcpu0) / max(r["requests"], 1)
                results.setdefault(case, {}).setdefault(name, []).append(r)
                print(f"  {case:9} {name:14} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:7.2f} ms"
                      f"  cpu {r['cpu_ms']:.3f} ms/req" + (f"  redis {r['redis_ms']:.3f} ms/req" if shared else "")
                      + f"  errors {r['non2xx'] + r['sockerr']:.0f}", flush=True)
            return fn

        plans = {"req": ("static", False, 64), "stream": ("static-sse", True, 16), "lat1": ("static", False, 1),
                 "stream256": ("spaced", True, 256)}
        for case in cases:
            if case in plans:
                up, stream, conns = plans[case]
                if case == "lat1":
                    base = [wrk(ups[up], path, args.seconds, 1, lua(up, False)) for _ in range(args.rounds)]
                    extra["upstream"] = {"p50_ms": median(b["p50_ms"] for b in base),
                                         "p99_ms": median(b["p99_ms"] for b in base)}
                for rnd in range(args.rounds):
                    print(f"{case}, round {rnd + 1}/{args.rounds}", flush=True)
                    run_contenders(up, timed(case, up, stream, conns))
            elif case == "open1000":
                def held(name: str, port: int, p: subprocess.Popen[bytes]) -> None:
                    before = rss_kb(p.pid)
                    after, n = hold_streams(port, path, request_body(chat, True), key, 1000, p.pid, ups["slow"])
                    extra.setdefault(name, {}).update(rss_idle_mb=before / 1024, rss_1000_mb=after / 1024, held=n)
                    print(f"  open1000  {name:14} {n} streams open: {after / 1024:.1f} MB resident "
                          f"(idle {before / 1024:.1f} MB)", flush=True)
                run_contenders("slow", held)
            elif case == "startup":
                for name, (argv, env, _) in contenders(ups["fast"]).items():
                    port = free_port()
                    secs = median(time_to_answer([a.replace("{port}", str(port)) for a in argv], env, tmp, port, path,
                                                 request_body(chat, False), key, tmp / f"{name}-startup.log",
                                                 ups["fast"])
                                  for _ in range(args.rounds))
                    extra.setdefault(name, {})["startup_s"] = secs
                    print(f"  startup   {name:14} first answer {secs:.2f} s after launch", flush=True)
            elif case == "instructions":
                if not instructions.available():
                    print("instructions: needs valgrind (apt-get install valgrind)", file=sys.stderr)
                    return 2
                counted: dict[str, dict[str, float]] = {}
                for up, stream in (("static", False), ("static-sse", True)):
                    for name, (argv, env, _) in contenders(ups[up]).items():
                        port = free_port()
                        out = tmp / f"callgrind-{name}-{int(stream)}.out"
                        cmd = pinned(0, instructions.wrap([a.replace("{port}", str(port)) for a in argv], out))
                        with started(cmd, tmp / f"{name}-callgrind.log", env=env, cwd=tmp) as p:
                            wait_port(port, p, 300)
                            n = instructions.per_request(
                                p.pid, out, f"http://127.0.0.1:{port}{path}", request_body(chat, stream),
                                {"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
                                args.ir_requests, 8)
                        counted.setdefault(name, {})["stream" if stream else "req"] = n
                        print(f"  instructions {name:14} {'stream' if stream else 'request'}: {n / 1000:,.0f}k",
                              flush=True)
                relay = counted.get("relay")
                for name, v in counted.items():
                    extra.setdefault(name, {}).update(
                        {f"ir_{k}_k": x / 1000 for k, x in v.items()} |
                        ({f"ir_{k}_x_relay": relay[k] / x for k, x in v.items()} if relay else {}))
            elif case == "soak":
                def soak(name: str, port: int, p: subprocess.Popen[bytes]) -> None:
                    if not name.startswith("router"):
                        return
                    wrk(port, path, 20, 64, lua("fast", False))  # warm-up
                    time.sleep(1)  # wrk's connections closed on both sides, as at the end
                    # the keep-alive pool to the upstream is as large as the load left it: not a leak
                    rss0, pool0 = rss_kb(p.pid), pool_conns(p.pid, ups["fast"])
                    fds0 = open_fds(p.pid) - pool0
                    r = wrk(port, path, args.soak_seconds, 64, lua("fast", False))
                    time.sleep(1)
                    rss1, pool1 = rss_kb(p.pid), pool_conns(p.pid, ups["fast"])
                    fds1 = open_fds(p.pid) - pool1
                    extra.setdefault(name, {}).update(soak_rss_pct=100 * (rss1 - rss0) / rss0, soak_fds=fds1 - fds0)
                    print(f"  soak      {name:14} {r['requests']:.0f} requests in {args.soak_seconds} s, errors "
                          f"{r['non2xx'] + r['sockerr']:.0f}; RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MB "
                          f"({100 * (rss1 - rss0) / rss0:+.1f}%), fds besides the upstream pool {fds0} -> {fds1} "
                          f"(pool {pool0} -> {pool1})", flush=True)
                run_contenders("fast", soak)
            else:
                print(f"unknown case {case!r}", file=sys.stderr)
                return 2
    report(results, extra, args.rounds)
    return 0


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def report(results: dict[str, dict[str, list[dict[str, float]]]], extra: dict[str, dict[str, float]], rounds: int) -> None:
    print(f"\nMedians of {rounds} round(s); each contender on core 0, upstream, Redis and wrk on core 1.")
    for case, by_name in results.items():
        base = by_name.get("relay")
        print(f"\n{case}: {'':14} {'req/s':>8} {'x relay':>8} {'p50 ms':>8} {'p99 ms':>8} {'cpu ms/req':>10} {'errors':>7}"
              f" {'redis ms/req':>12}")
        for name, runs in by_name.items():
            rps, p50, p99 = (median(r[k] for r in runs) for k in ("rps", "p50_ms", "p99_ms"))
            cpu, errors = median(r["cpu_ms"] for r in runs), sum(r["non2xx"] + r["sockerr"] for r in runs)
            ratio = rps / median(r["rps"] for r in base) if base else float("nan")
            shared = [r["redis_ms"] for r in runs if "redis_ms" in r]
            print(f"  {name:20} {rps:8.0f} {ratio:7.2f}x {p50:8.2f} {p99:8.2f} {cpu:10.3f} {errors:7.0f}"
                  + (f" {median(shared):12.3f}" if shared else ""))
        if case == "lat1" and base and "upstream" in extra:
            up = extra["upstream"]
            b50 = median(r["p50_ms"] for r in base) - up["p50_ms"]
            b99 = median(r["p99_ms"] for r in base) - up["p99_ms"]
            print(f"  upstream alone: p50 {up['p50_ms']:.3f} ms, p99 {up['p99_ms']:.3f} ms; added over it:")
            for name, runs in by_name.items():
                a50 = median(r["p50_ms"] for r in runs) - up["p50_ms"]
                a99 = median(r["p99_ms"] for r in runs) - up["p99_ms"]
                print(f"  {name:20} added p50 {a50:.3f} ms ({a50 / b50:.2f}x relay's), "
                      f"added p99 {a99:.3f} ms ({a99 / b99:.2f}x relay's)")
    for name, v in extra.items():
        if name != "upstream":
            print(f"  {name:20} " + ", ".join(f"{k} {x:.2f}" for k, x in v.items()))


if __name__ == "__main__":
    sys.exit(main())
