#!/usr/bin/env python3
"""Side-by-side: `legate --mode validate` and `envoy --mode validate` on one bootstrap with
10,000 clusters and 10,000 routes. Runs the two in turn, interleaved, for several rounds, and
prints medians of wall time and peak RSS with the Legate/Envoy ratios; raw results go to
bench/results/validate_10k.json.

Usage: bench/validate_10k.py [--rounds N] [--clusters N]
Needs: target/release/legate (cargo build --release) and .venv/bin/envoy (scripts/test.sh).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, ROOT, print_row, print_table_head


def generate(path: Path, n: int) -> None:
    """A front proxy: one listener whose route table has one route per cluster."""
    lines = [
        "static_resources:",
        "  listeners:",
        "  - name: ingress",
        "    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}",
        "    filter_chains:",
        "    - filters:",
        "      - name: envoy.filters.network.http_connection_manager",
        "        typed_config:",
        '          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager',
        "          stat_prefix: ingress",
        "          http_filters:",
        "          - name: envoy.filters.http.router",
        "            typed_config:",
        '              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router',
        "          route_config:",
        "            name: routes",
        "            virtual_hosts:",
        "            - name: all",
        '              domains: ["*"]',
        "              routes:",
    ]
    for i in range(n):
        lines.append(f'              - match: {{prefix: "/service/{i}/"}}')
        lines.append(f"                route: {{cluster: service_{i}, timeout: 5s}}")
    lines.append("  clusters:")
    for i in range(n):
        port = 20000 + i % 40000
        lines += [
            f"  - name: service_{i}",
            "    type: STATIC",
            "    connect_timeout: 1s",
            "    lb_policy: ROUND_ROBIN",
            "    load_assignment:",
            f"      cluster_name: service_{i}",
            "      endpoints:",
            "      - lb_endpoints:",
            f"        - endpoint: {{address: {{socket_address: {{address: 127.0.0.{1 + i % 250}, port_value: {port}}}}}}}",
        ]
    path.write_text("\n".join(lines) + "\n")


def run(cmd):
    """Runs a command; returns (ok, wall seconds, peak RSS in MiB) from wait4's rusage."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    ok = os.waitstatus_to_exitcode(status) == 0
    if not ok:
        print(f"  {cmd[0]} failed:\n{err[-2000:]}", file=sys.stderr)
    return ok, wall, usage.ru_maxrss / 1024.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clusters", type=int, default=10_000)
    args = ap.parse_args()

    legate = ROOT / "target/release/legate"
    envoy = Path(os.environ.get("ENVOY", ROOT / ".venv/bin/envoy"))
    for binary, hint in ((legate, "cargo build --release"), (envoy, "scripts/test.sh installs it")):
        if not binary.exists():
            print(f"missing {binary} ({hint})", file=sys.stderr)
            return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    config = RESULTS / f"bootstrap_{args.clusters}.yaml"
    generate(config, args.clusters)
    size = config.stat().st_size / 1e6
    print(f"bootstrap: {args.clusters} clusters, {args.clusters} routes, {size:.1f} MB -> {config}")

    peers = {
        "legate": [str(legate), "--mode", "validate", "-c", str(config)],
        "envoy": [str(envoy), "--mode", "validate", "--base-id", "77", "--log-level", "error", "-c", str(config)],
    }
    samples = {name: [] for name in peers}
    for r in range(1, args.rounds + 1):
        for name, cmd in peers.items():
            ok, wall, rss = run(cmd)
            if not ok:
                return 1
            samples[name].append({"wall_s": wall, "peak_rss_mib": rss})
            print(f"  round {r}/{args.rounds} {name:<6} {wall:7.3f} s  {rss:8.1f} MiB", flush=True)

    med = {
        name: {k: statistics.median(s[k] for s in runs) for k in ("wall_s", "peak_rss_mib")}
        for name, runs in samples.items()
    }
    print()
    print_table_head(["wall time (median)", "peak RSS (median)"])
    for name in peers:
        print_row(name, [f"{med[name]['wall_s']:.3f} s", f"{med[name]['peak_rss_mib']:.1f} MiB"])
    speed = med["envoy"]["wall_s"] / med["legate"]["wall_s"]
    memory = med["envoy"]["peak_rss_mib"] / med["legate"]["peak_rss_mib"]
    print_row("Legate vs Envoy", [f"{speed:.1f}x faster", f"{memory:.1f}x less memory"])
    out = RESULTS / "validate_10k.json"
    out.write_text(json.dumps({"clusters": args.clusters, "rounds": args.rounds, "samples": samples, "median": med}, indent=2))
    print(f"\nraw results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
