#!/usr/bin/env python3
"""Copy routes.yaml into the router-routes ConfigMap (deploy/k8s/configmap.yaml).

    python3 deploy/k8s/sync_configmap.py            # rewrite configmap.yaml from routes.yaml
    python3 deploy/k8s/sync_configmap.py --check    # exit 1 if they differ

Only the data block is rewritten; the comments and metadata above it stay. Standard
library only, so it runs anywhere the repository is checked out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MARKER = "  routes.yaml: |\n"


def render(configmap: str, routes: str) -> str:
    head, sep, _old = configmap.partition(MARKER)
    if not sep:
        raise SystemExit(f"configmap: no line {MARKER.strip()!r} to put routes.yaml under")
    if not routes.endswith("\n"):
        routes += "\n"
    body = "".join(("    " + line) if line.strip() else "\n" for line in routes.splitlines(True))
    return head + MARKER + body


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--routes", type=Path, default=HERE.parent.parent / "routes.yaml")
    ap.add_argument("--configmap", type=Path, default=HERE / "configmap.yaml")
    ap.add_argument("--check", action="store_true", help="only report whether the copy is current")
    args = ap.parse_args(argv)
    current = args.configmap.read_text()
    wanted = render(current, args.routes.read_text())
    if current == wanted:
        return 0
    if args.check:
        print(f"{args.configmap} is out of date: run {sys.argv[0]}", file=sys.stderr)
        return 1
    args.configmap.write_text(wanted)
    print(f"{args.configmap}: updated from {args.routes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
