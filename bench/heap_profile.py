#!/usr/bin/env python3
"""Where a configured cluster's memory goes: heap bytes per cluster by allocation site.

Runs Legate under valgrind's DHAT twice — on the memory benchmark's bootstrap with 1 cluster
and with --clusters (default 2,000), each cluster with a route — waits until the admin server
answers /ready, ends it with SIGABRT (DHAT then writes what is allocated at that moment; a
clean exit would free it first), and prints what the second run holds beyond the first,
divided by the extra clusters: bytes and blocks per cluster for each allocation site (the
first frame in Legate's own code, with the type being allocated when the stack names one).

DHAT sees only malloc, so this needs a build with the C library's allocator, kept apart from
target/release (the first build compiles every dependency again, ~15 minutes on two cores):

    CARGO_TARGET_DIR=target/heap-profile cargo build --release -p legate --features system-allocator

Usage: bench/heap_profile.py [--clusters 2000] [--top 30] [--frames 1] [--binary PATH]
Needs: valgrind (bench/setup.sh installs it). Loopback only; every process is stopped by PID.
Takes ~2 minutes with 2,000 clusters.
"""

import argparse
import collections
import json
import os
import re
import signal
import time
from pathlib import Path

from common import RESULTS, ROOT, get, guarded, run_main, spawn, stop
from memory import bootstrap

DEFAULT_BINARY = ROOT / "target/heap-profile/release/legate"
PORT, ADMIN, UPSTREAM = 18660, 18661, 18662


def run_dhat(binary, clusters, work):
    """Runs Legate under DHAT with `clusters` clusters until ready; returns the profile path."""
    config = work / f"c{clusters}.yaml"
    config.write_text(
        f"admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {ADMIN}}}}}}}\n"
        + bootstrap(PORT, clusters, UPSTREAM))
    out = work / f"dhat.{clusters}.json"
    proc = spawn(["valgrind", "--tool=dhat", f"--dhat-out-file={out}", str(binary), "-c", str(config),
                  "--concurrency", "1", "--log-level", "warn"], log_path=work / f"dhat.{clusters}.log")
    started = time.monotonic()
    try:
        while (get(ADMIN, "/ready") or (None,))[0] != 200:
            if proc.poll() is not None:
                raise RuntimeError(f"legate exited {proc.returncode}: see {work}/dhat.{clusters}.log")
            if time.monotonic() - started > 600:
                raise RuntimeError(f"not ready after 600 s with {clusters} clusters")
            time.sleep(1)
        print(f"  {clusters} cluster(s): ready under DHAT in {time.monotonic() - started:.0f} s")
        os.kill(proc.pid, signal.SIGABRT)
        proc.wait(timeout=120)  # DHAT writes its profile as the process dies
    finally:
        stop(proc)
    if not out.exists():
        raise RuntimeError(f"DHAT wrote no profile: see {work}/dhat.{clusters}.log")
    return out


def sites(path, frames):
    """Bytes and blocks live at exit, by allocation site (see the module docs)."""
    profile = json.loads(path.read_text())
    table = profile["ftbl"]
    live, blocks = collections.Counter(), collections.Counter()
    for pp in profile["pps"]:
        if not pp.get("eb"):
            continue
        allocated, kept = "", []
        for frame in (table[i] for i in pp["fs"][1:]):
            m = re.search(r": (.*) \((.*?)\)$", frame)
            if not m:
                continue
            function, location = m.groups()
            if location.startswith(("library/", "src/", "/rustc")) or ".cargo/registry" in location:
                if "<" in function and not kept:
                    allocated = function  # e.g. new<legate_upstream::manager::Cluster>
                continue
            kept.append(f"{function} ({location})")
            if len(kept) == frames:
                break
        key = (f"{allocated} @ " if allocated else "") + " <- ".join(kept)
        live[key] += pp["eb"]
        blocks[key] += pp.get("ebk", 0)
    return live, blocks


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clusters", type=int, default=2000)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--frames", type=int, default=1, help="frames of Legate's code per site")
    ap.add_argument("--binary", type=Path, default=DEFAULT_BINARY)
    args = ap.parse_args()
    if not args.binary.exists():
        raise SystemExit(f"no {args.binary}: build it first (see `{Path(__file__).name} --help`)")
    work = RESULTS / "heap_profile"
    work.mkdir(parents=True, exist_ok=True)

    def body():
        print(f"heap profile: {args.binary}, 1 and {args.clusters} clusters; profiles in {work}")
        base_live, base_blocks = sites(run_dhat(args.binary, 1, work), args.frames)
        live, blocks = sites(run_dhat(args.binary, args.clusters, work), args.frames)
        extra = args.clusters - 1
        per = {k: (live[k] - base_live.get(k, 0)) / extra for k in live}
        total = sum(per.values())
        print(f"\nheap held per cluster (with its route): {total:,.0f} bytes\n")
        print(f"{'bytes':>8} {'blocks':>6}  site")
        for key, b in sorted(per.items(), key=lambda kv: -kv[1])[:args.top]:
            n = (blocks[key] - base_blocks.get(key, 0)) / extra
            print(f"{b:8,.0f} {n:6.1f}  {key[:200]}")
    return guarded(body, grace=120)


if __name__ == "__main__":
    run_main(main)
