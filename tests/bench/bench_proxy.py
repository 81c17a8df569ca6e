"""Benchmark: the proxy's added cost per request against a bare aiohttp relay, side by side.

Not a test (pytest does not collect it): run by hand, it prints a table of ratios.

    python tests/bench/bench_proxy.py [--seconds 10] [--connections 32]
    python tests/bench/bench_proxy.py --stream [--chunks 20] [--gap-ms 0]
    python tests/bench/bench_proxy.py --litellm /tmp/litellm-venv/bin/litellm [--stream]

The router runs from the installed (editable) tree, uncommitted edits included; to time the
committed one instead, snapshot it and point --router-src at it:

    mkdir -p /tmp/router-head && git archive HEAD router providers | tar -x -C /tmp/router-head
    python tests/bench/bench_proxy.py --router-src /tmp/router-head

Three or four processes on loopback: a canned OpenAI-shaped upstream (core 1), then in turn
a bare aiohttp relay, the router and, when --litellm names its CLI, LiteLLM's proxy (each
pinned to core 0), loaded by wrk (core 1). The relay does the least any proxy must: read the
body, POST it upstream on a pooled session, return the answer (a stream is passed through
as its bytes come: iter_any -> write). The differences between the contenders are what
each one adds on top of that. The request is POST /v1/chat/completions by default
(--endpoint completions for /v1/completions; LiteLLM's proxy serves that legacy endpoint
through a path that builds a new upstream client, so a new connection, per request).

What it measures, per contender:
  req/s, p50, p99   wrk's numbers at --connections connections, core 0 saturated
  non-2xx, sock err wrk's counts of non-2xx answers and socket errors (both should be 0)
  cpu ms/req        the contender's own CPU time (utime+stime from /proc, its process
                    tree) over the timed run, divided by the requests wrk completed
Then the ratios against the relay, and the added CPU time per request (1/rps difference:
core 0 is saturated, so the time per request on it is 1/rps). With --stream the upstream
answers `"stream": true` with --chunks SSE events of a few tokens each (the last one has
finish_reason, a usage event follows when stream_options.include_usage asks for it, then
`data: [DONE]`), and the added time is also given per chunk (divided by --chunks). With
--gap-ms 0 the chunks are written back to back, so a busy relay often reads several in one
go; --gap-ms 1 (with more --connections, e.g. 256, to keep core 0 busy) spaces them out
as a real model does, which costs the relay a read and a write per chunk too.

Before each timed run one request is checked by hand: status 200, and for a stream every
chunk and `data: [DONE]` present, so a contender that answers fast but wrong shows up.

LiteLLM (optional; installed apart, never vendored here): `python -m venv /tmp/litellm-venv
&& /tmp/litellm-venv/bin/pip install 'litellm[proxy]'` (1.105.3 was the one measured). It gets a generated config.yaml with
one model `m` -> `openai/m` whose api_base is the canned upstream and a dummy api_key; no
callbacks, no retries, no database (spend and error logs off), LITELLM_LOG=ERROR,
LITELLM_MODE=PRODUCTION and LITELLM_LOCAL_MODEL_COST_MAP=True (no fetch at startup), one
uvicorn worker (its docs: one worker per CPU, and it has one core here). LiteLLM refuses to
start without a master key, so one is generated and every contender is sent it as
`Authorization: Bearer ...` (the relay and the router, configured without keys, ignore it).
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
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

UPSTREAM = textwrap.dedent('''
    import asyncio, sys, orjson, uvloop
    from aiohttp import web
    CHUNKS, GAP = int(sys.argv[2]), float(sys.argv[3]) / 1000
    USAGE = {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}
    TEXT = orjson.dumps({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "text": "Hello there, this is a canned answer.", "finish_reason": "stop",
                     "logprobs": None}], "usage": USAGE})
    CHAT = orjson.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there, this is a canned answer."},
                     "finish_reason": "stop"}], "usage": USAGE})
    def sse(o): return b"data: " + orjson.dumps(o) + b"\\n\\n"
    def chunks(chat):
        out = []
        for i in range(CHUNKS):
            fin = "stop" if i == CHUNKS - 1 else None
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
    STREAMS = {False: chunks(False), True: chunks(True)}
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
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=uvloop.new_event_loop())
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
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=uvloop.new_event_loop())
''')

ROUTES = textwrap.dedent('''
    providers:
      up: {kind: openai, base_url: "http://127.0.0.1:%d/v1"}
    models:
      m:
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


def probe(port: int, path: str, body: bytes, key: str, stream: bool, chunks: int) -> str:
    """One request by hand: what came back, in a few words; raises if it is not a full answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", path, body, {"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--stream", action="store_true", help='request "stream": true; the upstream answers in SSE chunks')
    ap.add_argument("--chunks", type=int, default=20, help="SSE events with text per streamed answer (default 20)")
    ap.add_argument("--gap-ms", type=float, default=0.0, help="upstream pause between stream chunks (default 0)")
    ap.add_argument("--endpoint", choices=["chat", "completions"], default="chat",
                    help="POST /v1/chat/completions (default) or /v1/completions")
    ap.add_argument("--litellm", metavar="PATH", help="LiteLLM's CLI (from its own venv) to add as a third contender")
    ap.add_argument("--router-src", metavar="DIR", help="run the router from this source tree (PYTHONPATH) "
                    "instead of the installed one, e.g. a `git archive HEAD` snapshot")
    ap.add_argument("--only", help="comma-separated contenders to run (relay,router,litellm)")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        print("needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    chat = args.endpoint == "chat"
    path = "/v1/chat/completions" if chat else "/v1/completions"
    body = request_body(chat, args.stream)
    key = "sk-bench-" + secrets.token_hex(24)
    tmp = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    (tmp / "up.py").write_text(UPSTREAM)
    (tmp / "relay.py").write_text(RELAY)
    (tmp / "req.lua").write_text(WRK_LUA % (key, body.decode()))
    up_port = free_port()
    results: dict[str, dict[str, float]] = {}
    with started(pinned(1, [sys.executable, str(tmp / "up.py"), str(up_port), str(args.chunks), str(args.gap_ms)]),
                 tmp / "upstream.log") as up:
        wait_port(up_port, up)
        (tmp / "routes.yaml").write_text(ROUTES % up_port)
        router_env = dict(os.environ)
        if args.router_src:
            router_env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.router_src, os.environ.get("PYTHONPATH")]))
        contenders: dict[str, tuple[list[str], dict[str, str], float]] = {
            "relay": ([sys.executable, str(tmp / "relay.py"), "{port}", str(up_port)], dict(os.environ), 15),
            "router": ([sys.executable, "-m", "router", "serve", "--config", str(tmp / "routes.yaml"),
                        "--port", "{port}", "--log-level", "WARNING"], router_env, 15),
        }
        if args.litellm:
            (tmp / "litellm.yaml").write_text(LITELLM_CONFIG % up_port)
            env = dict(os.environ, LITELLM_MASTER_KEY=key, LITELLM_LOG="ERROR", LITELLM_MODE="PRODUCTION",
                       LITELLM_LOCAL_MODEL_COST_MAP="True")
            contenders["litellm"] = ([args.litellm, "--config", str(tmp / "litellm.yaml"), "--host", "127.0.0.1",
                                      "--port", "{port}", "--num_workers", "1"], env, 90)
        else:
            print("(LiteLLM skipped: pass --litellm /path/to/venv/bin/litellm to add it)")
        if args.only:
            keep = set(args.only.split(","))
            contenders = {k: v for k, v in contenders.items() if k in keep}
        for name, (argv, env, start_timeout) in contenders.items():
            port = free_port()
            with started(pinned(0, [a.replace("{port}", str(port)) for a in argv]), tmp / f"{name}.log",
                         env=env, cwd=tmp) as p:
                try:
                    wait_port(port, p, start_timeout)
                    print(f"{name:8} probe: {probe(port, path, body, key, args.stream, args.chunks)}", flush=True)
                    wrk(port, path, 2, args.connections, tmp / "req.lua")  # warm-up
                    cpu0 = cpu_seconds(p.pid)
                    r = wrk(port, path, args.seconds, args.connections, tmp / "req.lua")
                    r["cpu_ms"] = 1000 * (cpu_seconds(p.pid) - cpu0) / max(r["requests"], 1)
                    results[name] = r
                except Exception:
                    print(f"{name} failed; its log: {tmp / f'{name}.log'}", file=sys.stderr)
                    raise

    mode = f"stream, {args.chunks} chunks" + (f", {args.gap_ms:g} ms apart" if args.gap_ms else "") \
        if args.stream else "non-stream"
    print(f"\nPOST {path} ({mode}), {args.connections} connections, {args.seconds} s, contender on core 0")
    print(f"{'':8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'sock err':>8} {'cpu ms/req':>10}")
    for name, v in results.items():
        print(f"{name:8} {v['rps']:8.0f} {v['p50_ms']:8.2f} {v['p99_ms']:8.2f} {v['non2xx']:8d} {v['sockerr']:8d}"
              f" {v['cpu_ms']:10.3f}")
    base = results.get("relay")
    if base:
        print()
        for name, v in results.items():
            if name == "relay":
                continue
            added_ms = 1000 / v["rps"] - 1000 / base["rps"]
            line = (f"{name}/relay: throughput {v['rps'] / base['rps']:.2f}x, p50 {v['p50_ms'] / base['p50_ms']:.2f}x; "
                    f"added {added_ms:.3f} ms per request (1/rps)")
            if args.stream:
                line += f" = {1000 * added_ms / args.chunks:.1f} us per chunk"
            line += f"; cpu/req {v['cpu_ms'] - base['cpu_ms']:+.3f} ms"
            print(line)
    bad = [n for n, v in results.items() if v["non2xx"] or v["sockerr"]]
    if bad:
        print(f"\nWARNING: non-2xx answers or socket errors from {', '.join(bad)}: their numbers are not comparable")
    return 0


if __name__ == "__main__":
    sys.exit(main())
