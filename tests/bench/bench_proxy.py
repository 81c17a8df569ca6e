"""Benchmark: the proxy's added cost per request against a bare aiohttp relay, side by side.

Not a test (pytest does not collect it): run by hand, it prints a table of ratios.

    python tests/bench/bench_proxy.py [--seconds 10] [--connections 32]

Three processes on loopback: a canned OpenAI-shaped upstream (core 1), then in turn a bare
aiohttp relay and the router (each pinned to core 0), loaded by wrk (core 1). The relay
does the least any proxy must: read the body, POST it upstream on a pooled session, return
the answer. The difference in latency between the two is what the router adds.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

UPSTREAM = textwrap.dedent('''
    import sys, orjson, uvloop
    from aiohttp import web
    BODY = orjson.dumps({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "text": "Hello there, this is a canned answer.", "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}})
    async def handle(request):
        await request.read()
        return web.Response(body=BODY, content_type="application/json")
    app = web.Application(); app.router.add_post("/v1/completions", handle)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=uvloop.new_event_loop())
''')

RELAY = textwrap.dedent('''
    import sys, aiohttp, uvloop
    from aiohttp import web
    UP = f"http://127.0.0.1:{sys.argv[2]}/v1/completions"
    async def session(app):
        app["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app["s"].close()
    async def handle(request):
        body = await request.read()
        async with request.app["s"].post(UP, data=body, headers={"Content-Type": "application/json"}) as r:
            return web.Response(body=await r.read(), status=r.status, content_type="application/json")
    app = web.Application(); app.cleanup_ctx.append(session); app.router.add_post("/v1/completions", handle)
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

WRK_LUA = textwrap.dedent('''
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
    wrk.body = '{"model": "m", "prompt": "Say hello in one short sentence.", "max_tokens": 16, "temperature": 0.2}'
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def pinned(core: int, argv: list[str]) -> list[str]:
    return (["taskset", "-c", str(core)] if shutil.which("taskset") else []) + argv


def wrk(port: int, seconds: int, connections: int, script: Path) -> dict[str, float]:
    out = subprocess.run(pinned(1, ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s",
                                    str(script), f"http://127.0.0.1:{port}/v1/completions"]),
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    lat = {}
    for q in ("50", "99"):
        m = re.search(rf"\s{q}%\s+([\d.]+)(us|ms|s)", out)
        lat[q] = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    return {"rps": rps, "p50_ms": lat["50"], "p99_ms": lat["99"], "errors": int(non2xx.group(1)) if non2xx else 0}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        print("needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp())
    (tmp / "up.py").write_text(UPSTREAM)
    (tmp / "relay.py").write_text(RELAY)
    (tmp / "req.lua").write_text(WRK_LUA)
    up_port = free_port()
    procs = [subprocess.Popen(pinned(1, [sys.executable, str(tmp / "up.py"), str(up_port)]))]
    results = {}
    try:
        wait_port(up_port)
        (tmp / "routes.yaml").write_text(ROUTES % up_port)
        contenders = {
            "bare relay": [sys.executable, str(tmp / "relay.py"), "{port}", str(up_port)],
            "router": [sys.executable, "-m", "router", "serve", "--config", str(tmp / "routes.yaml"),
                       "--port", "{port}", "--log-level", "WARNING"],
        }
        for name, argv in contenders.items():
            port = free_port()
            env = dict(os.environ)
            p = subprocess.Popen(pinned(0, [a.replace("{port}", str(port)) for a in argv]),
                                 stdout=subprocess.DEVNULL, env=env)
            try:
                wait_port(port)
                wrk(port, 2, args.connections, tmp / "req.lua")  # warm-up
                results[name] = wrk(port, args.seconds, args.connections, tmp / "req.lua")
            finally:
                p.terminate()
                p.wait()
    finally:
        for p in procs:
            p.terminate()
            p.wait()
    base, r = results["bare relay"], results["router"]
    print(f"{'':12} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for name, v in results.items():
        print(f"{name:12} {v['rps']:9.0f} {v['p50_ms']:8.3f} {v['p99_ms']:8.3f} {v['errors']:8d}")
    added_ms = 1000 / r["rps"] - 1000 / base["rps"]
    print(f"\nthroughput ratio router/relay: {r['rps'] / base['rps']:.2f}")
    print(f"added CPU time per request on one core: {added_ms:.3f} ms "
          f"(1/rps difference at {args.connections} connections)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
