#!/usr/bin/env python3
"""Side-by-side: file-based dynamic configuration (LDS/CDS/RDS), Legate vs Envoy.

LDS/CDS/RDS come from `path_config_source` files, replaced by rename; the two proxies run in
turn, interleaved over rounds.

Both proxies start from the same kind of bootstrap: `node` {id, cluster}, an admin listener,
and `dynamic_resources` whose `lds_config` and `cds_config` are `path_config_source` files; the
one listener (from LDS) has an HTTP connection manager that takes its routes by RDS from a
third file (`rds: {route_config_name: routes, config_source: {path_config_source: ...}}`).
Every file is a DiscoveryResponse in YAML (`version_info`, `resources:` with "@type").
Each update writes the new content into a staging directory beside the watched one and renames
it over the watched file (same file system: atomic), as a control plane writing files does; the
watched directory holds only the three files, so a proxy watching it sees nothing but the moves.

Scenario `apply` (per round and proxy, a fresh process each time):
  * start with a small configuration (1 cluster, 1 route, a marker route) and wait until it
    serves;
  * apply: rename into place a CDS file with --clusters STATIC clusters `c-<i>` (one endpoint
    each: nginx on loopback, answering "A") and then an RDS file with one route per cluster
    (`prefix: /svc-<i>/` -> `c-<i>`) followed, last, by `path: /marker-<tag>` with a
    direct_response whose body is <tag>. The apply time runs from just before the first
    rename until both GET /marker-<tag> answers 200 <tag> (the new route table is in use and
    every route had to be tried) and GET /svc-<last>/ answers 200 "A" from nginx (the last
    new cluster is in use). Both are polled every --poll-ms on fresh connections;
  * RSS 2 s after the apply, and the peak during it;
  * re-apply: the same sizes again with every cluster changed (its endpoint moves to a second
    nginx port answering "B") and a new marker: time until the new marker and "B" are served,
    RSS 2 s after;
  * the proxy's xDS counters from /stats (LDS/CDS/RDS update_success and friends).

Scenario `storm` (per round and proxy, a fresh process each time), with --routes routes and
clusters (every route to its own cluster, all on the same nginx; or direct_response routes
with --direct), wrk -t1 -c50 cycling over all the /svc-<i>/ paths:
  * steady: requests/s for --duration s (after a --warmup s warm-up);
  * storm: requests/s for --duration s while a thread renames a new RDS file every
    --interval-ms (its marker route changes each time) and, every --cds-every-th time, a new
    CDS file first (every cluster's connect_timeout flips between 1 s and 2 s, so every
    cluster differs from the one in use and is rebuilt);
  * the ratio storm/steady, p99s, proxy CPU per request in both phases (all threads: the
    config work counts), how many updates the proxy counted as applied (update_success deltas),
    and the delay from the last rename until its marker is served. Applied can be below renamed
    without anything lost: the kernel merges a MOVED_TO event into the previous identical one
    while that is still unread, so a proxy that falls behind reads the newest file once.

Pinning as bench/http_bench.py: each proxy runs one worker (--concurrency 1, --drain-time-s 1)
pinned to CPU 0; nginx, wrk and this script (the pollers and the updating thread) on CPU 1.
Everything listens on 127.0.0.1. Generated files are in bench/results/xds_apply/; every sample
goes to bench/results/xds_apply-<timestamp>.json. Every process it starts is stopped by PID at
the end, on errors and on Ctrl-C/SIGTERM.

Usage: bench/xds_apply.py [--rounds 3] [--duration 10] [--quick] [--only envoy]
                          [--scenarios apply,storm] [--clusters 10000] [--routes 100] [--direct]
Needs: target/release/legate (cargo build --release -p legate), Envoy from .venv
(scripts/test.sh; the real binary under site-packages/envoy/_bin is used when present),
nginx and wrk (bench/setup.sh). LEGATE=/path ENVOY=/path to use other binaries.
"""

import argparse
import datetime
import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from common import (LOAD_CPU, PROXY_CPU, RESULTS, ROOT, WRK_DONE_LUA, Background, RssSampler, busy_ports,
                    cpu_seconds, fmt, get, guarded, loadavg, median, missing_binaries, print_row, print_table_head,
                    read_load_before, record_usage, rss_mib, run_main, spawn, start_nginx, stop, tail, tool_versions,
                    wrk, write_nginx_conf)

PROXIES = ("legate", "envoy")
LABELS = {"legate": "Legate", "envoy": "Envoy"}
STOP_GRACE = 10.0  # seconds a process gets after SIGTERM before SIGKILL (common.stop's default: 5)
BODY_A, BODY_B = b"A\n", b"B\n"

# ---------------------------------------------------------------------------------------------
# Configuration templates. The bootstrap and LDS file name paths; CDS and RDS content does not,
# so it is generated once and written into each proxy's directory.

# nginx: common.NGINX_CONF with these servers.
NGINX_COMMENT = '# Generated by bench/xds_apply.py: the upstream, "A" on {a} and "B" on {b}.'
NGINX_SERVERS = """\
    server {{
        listen 127.0.0.1:{a} backlog=4096;
        location / {{ return 200 "A\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{b} backlog=4096;
        location / {{ return 200 "B\\n"; }}
    }}
"""

BOOTSTRAP = """\
# Generated by bench/xds_apply.py: everything but the admin listener comes from files.
node: {{id: xds-bench-{name}, cluster: xds-bench}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
dynamic_resources:
  lds_config:
    resource_api_version: V3
    path_config_source: {{path: {dir}/lds.yaml}}
  cds_config:
    resource_api_version: V3
    path_config_source: {{path: {dir}/cds.yaml}}
"""

LDS = """\
version_info: "1"
resources:
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: ingress
  address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
  filter_chains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: ingress
        rds:
          route_config_name: routes
          config_source:
            resource_api_version: V3
            path_config_source: {{path: {dir}/rds.yaml}}
        http_filters:
        - name: envoy.filters.http.router
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""

CLUSTER = """\
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: c-{i}
  type: STATIC
  connect_timeout: {ct}s
  load_assignment:
    cluster_name: c-{i}
    endpoints:
    - lb_endpoints:
      - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"""


def cds_yaml(version, n, port, connect_timeout=1):
    parts = [f'version_info: "{version}"\nresources:\n']
    parts += [CLUSTER.format(i=i, ct=connect_timeout, port=port) for i in range(n)]
    return "".join(parts)


def rds_yaml(version, n, tag, direct=False):
    """A route per cluster, then the marker route last: `path: /marker-<tag>` -> 200 <tag>."""
    parts = [
        f'version_info: "{version}"\n'
        "resources:\n"
        '- "@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration\n'
        "  name: routes\n"
        "  virtual_hosts:\n"
        "  - name: all\n"
        '    domains: ["*"]\n'
        "    routes:\n"
    ]
    if direct:
        action = '      direct_response: {status: 200, body: {inline_string: "A\\n"}}\n'
        parts += [f'    - match: {{prefix: "/svc-{i}/"}}\n' + action for i in range(n)]
    else:
        parts += [f'    - match: {{prefix: "/svc-{i}/"}}\n      route: {{cluster: c-{i}}}\n' for i in range(n)]
    parts.append(f'    - match: {{path: "/marker-{tag}"}}\n'
                 f'      direct_response: {{status: 200, body: {{inline_string: "{tag}"}}}}\n')
    return "".join(parts)


WRK_LUA = """\
-- Generated by bench/xds_apply.py: cycles over /svc-0/ .. /svc-{last}/; prints one JSON line.
local reqs = {{}}
local n = {n}
local i = 0
init = function(args)
  for k = 0, n - 1 do reqs[k + 1] = wrk.format("GET", "/svc-" .. k .. "/") end
end
request = function()
  i = i % n + 1
  return reqs[i]
end
"""  # then common.WRK_DONE_LUA

# The xDS-related stats read from each proxy's admin /stats after every phase.
STATS_RE = (r"^(listener_manager\.(lds\.|total_listeners_active|listener_added|listener_modified)"
            r"|cluster_manager\.(cds\.|active_clusters|warming_clusters|cluster_added|cluster_modified"
            r"|cluster_removed|cluster_updated)|http\.ingress\.rds\.|server\.memory_)")

# ---------------------------------------------------------------------------------------------
# Helpers (the rest are in common.py).

def replace(proxy, name, text):
    """Writes `text` to the proxy's staging directory and renames it over the watched file (the
    same file system: the rename is atomic, and the watched directory sees only the move)."""
    tmp = proxy.staging / name
    tmp.write_text(text)
    os.rename(tmp, proxy.dir / name)


def stats(admin_port, timeout=60.0):
    """The xDS-related stats (STATS_RE) from the admin /stats, as {name: int or str}. The regex
    goes to the proxy as ?filter= and is applied here too."""
    url = f"http://127.0.0.1:{admin_port}/stats?filter={urllib.parse.quote(STATS_RE)}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            text = r.read().decode(errors="replace")
    except OSError as e:
        return {"error": str(e)}
    out = {}
    keep = re.compile(STATS_RE)
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if not sep or not keep.match(name):
            continue
        value = value.strip()
        try:
            out[name] = int(value)
        except ValueError:
            out[name] = value.strip('"')
    return out


def counter(st, *names):
    for n in names:
        if isinstance(st.get(n), int):
            return st[n]
    return None


def xds_counts(st):
    """The update counters that matter, under short names."""
    return {
        "lds_update_success": counter(st, "listener_manager.lds.update_success"),
        "cds_update_success": counter(st, "cluster_manager.cds.update_success"),
        "cds_update_rejected": counter(st, "cluster_manager.cds.update_rejected"),
        "rds_update_success": counter(st, "http.ingress.rds.routes.update_success"),
        "rds_update_rejected": counter(st, "http.ingress.rds.routes.update_rejected"),
        "active_clusters": counter(st, "cluster_manager.active_clusters"),
        "warming_clusters": counter(st, "cluster_manager.warming_clusters"),
    }


class Proxy:
    """One proxy process with its own directory of watched files."""

    def __init__(self, name, binary, work, port, admin, base_id, drain_s):
        self.name, self.binary, self.port, self.admin = name, binary, port, admin
        # The watched files alone in their directory: Envoy watches the directory and is told of
        # every write in it (a log file there costs an inotify event per log line), so the next
        # versions are written in a sibling directory and renamed across.
        self.home = work / name
        self.dir = self.home / "xds"
        self.staging = self.home / "staging"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)
        self.log = self.home / "proxy.log"
        self.base_id, self.drain_s = base_id, drain_s
        self.proc = None

    def write_initial(self, cds, rds):
        for stale in self.staging.iterdir():
            stale.unlink()
        (self.home / "bootstrap.yaml").write_text(BOOTSTRAP.format(name=self.name, admin=self.admin, dir=self.dir))
        (self.dir / "lds.yaml").write_text(LDS.format(port=self.port, dir=self.dir))
        (self.dir / "cds.yaml").write_text(cds)
        (self.dir / "rds.yaml").write_text(rds)

    def start(self, ready_path, ready_body, deadline_s=60.0):
        cmd = [str(self.binary), "-c", str(self.home / "bootstrap.yaml"), "--concurrency", "1",
               "--drain-time-s", str(self.drain_s), "--log-level", "warn"]
        if self.name == "envoy":
            cmd += ["--base-id", str(self.base_id)]
        self.proc = spawn(cmd, log_path=self.log, cpu=PROXY_CPU)
        start = time.monotonic()
        got = None
        while time.monotonic() - start < deadline_s:
            if self.proc.poll() is not None:
                hint = ("\n(a Legate built before it read dynamic_resources? --only envoy runs Envoy alone)"
                        if self.name == "legate" and "not supported" in tail(self.log) else "")
                raise RuntimeError(f"{self.name} exited {self.proc.returncode} at start-up; log {self.log}:\n"
                                   f"{tail(self.log)}{hint}")
            got = get(self.port, ready_path, timeout=1.0)
            if got == (200, ready_body):
                return time.monotonic() - start
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not serving {ready_path} after {deadline_s:.0f} s (last: {got}); "
                           f"log {self.log}:\n{tail(self.log)}")

    def stop(self):
        if self.proc is not None:
            stop(self.proc, STOP_GRACE)
            self.proc = None


def wait_served(proxy, probes, t0, deadline_s, poll_s, poll_timeout=5.0):
    """Polls each (path, expected (status, body)) on fresh connections until all have been seen.
    Returns ({path: seconds after t0 when first seen}, {path: [[seconds, status, body], ...]},
    [seconds each poll took]), the second being every distinct answer seen on the way: the
    third shows whether the proxy kept answering promptly while it applied the update."""
    seen, states, latencies, failures = {}, {p: [] for p, _ in probes}, [], [0]
    while len(seen) < len(probes):
        if proxy.proc.poll() is not None:
            raise RuntimeError(f"{proxy.name} exited {proxy.proc.returncode}; log {proxy.log}:\n{tail(proxy.log)}")
        for path, want in probes:
            if path in seen:
                continue
            sent = time.monotonic()
            got = get(proxy.port, path, timeout=poll_timeout)
            now = time.monotonic() - t0
            latencies.append(now + t0 - sent)
            if got is None:
                failures[0] += 1
            state = None if got is None else [got[0], got[1][:60].decode(errors="replace")]
            if not states[path] or states[path][-1][1:] != (state or [None, None]):
                states[path].append([round(now, 4)] + (state or [None, None]))
            if got == want:
                seen[path] = now
        if len(seen) < len(probes):
            if time.monotonic() - t0 > deadline_s:
                missing = [p for p, _ in probes if p not in seen]
                raise RuntimeError(f"{proxy.name}: {missing} not served as expected {deadline_s:.0f} s after the "
                                   f"rename (answers seen: {states}); stats: {xds_counts(stats(proxy.admin))}; "
                                   f"log {proxy.log}:\n{tail(proxy.log)}")
            time.sleep(poll_s)
    return seen, states, latencies, failures[0]


def answers(states):
    """[[t, status, body], ...] -> "404 > 200 A" (None: no answer within the poll's timeout)."""
    return " > ".join("no answer" if a[1] is None else f"{a[1]} {a[2].strip()}".strip() for a in states)


# ---------------------------------------------------------------------------------------------
# Scenario 1: apply time.

def apply_round(proxy, rnd, args, big, ports):
    n = args.clusters
    sample = {"round": rnd}
    tag0 = f"r{rnd}-init"
    proxy.write_initial(cds_yaml("1", 1, ports["nginx_a"]), rds_yaml("1", 1, tag0))
    sample["ready_s"] = proxy.start(f"/marker-{tag0}", tag0.encode())
    try:
        time.sleep(1.0)
        sample["idle_rss_mib"] = rss_mib(proxy.proc.pid)
        sample["stats_initial"] = stats(proxy.admin)
        for phase, version, body, cds_text in (("apply", "2", BODY_A, big["cds_a"]),
                                               ("reapply", "3", BODY_B, big["cds_b"])):
            tag = f"r{rnd}-{phase}"
            last = f"/svc-{n - 1}/"
            if get(proxy.port, f"/marker-{tag}") == (200, tag.encode()):
                raise RuntimeError(f"{proxy.name}: /marker-{tag} answered before the update")
            (proxy.staging / "cds.yaml").write_text(cds_text)
            (proxy.staging / "rds.yaml").write_text(big["rds_head"].replace('"VERSION"', f'"{version}"', 1)
                                                       + big["rds_marker"].format(tag=tag))
            cpu0 = cpu_seconds(proxy.proc.pid)
            with RssSampler(proxy.proc.pid, interval=0.1, sample_at_exit=True) as rss:
                t0, t0_wall = time.monotonic(), time.time()
                os.rename(proxy.staging / "cds.yaml", proxy.dir / "cds.yaml")
                os.rename(proxy.staging / "rds.yaml", proxy.dir / "rds.yaml")
                seen, states, lat, failures = wait_served(
                    proxy, [(f"/marker-{tag}", (200, tag.encode())), (last, (200, body))], t0, args.apply_timeout,
                    args.poll_ms / 1000.0)
                elapsed = max(seen.values())
                cpu_applied = cpu_seconds(proxy.proc.pid)
                time.sleep(args.settle)
            res = {
                "apply_s": elapsed,
                "marker_seen_s": seen[f"/marker-{tag}"],
                "last_cluster_seen_s": seen[last],
                "answers": states,
                "polls": len(lat),
                "poll_failures": failures,
                "poll_ms_median": statistics.median(lat) * 1000,
                "poll_ms_max": max(lat) * 1000,
                "cpu_s": cpu_applied - cpu0,  # all threads, rename to visible (the polls' share is small)
                "peak_rss_mib": rss.peak,
                "rss_after_mib": rss_mib(proxy.proc.pid),
            }
            t_stats = time.monotonic()
            res["stats"] = stats(proxy.admin)
            res["stats_fetch_s"] = time.monotonic() - t_stats
            res["xds"] = xds_counts(res["stats"])
            # The proxy's own clock: *.update_time is the wall time (ms) of the last accepted update.
            for key, stat in (("cds_done_s", "cluster_manager.cds.update_time"),
                              ("rds_done_s", "http.ingress.rds.routes.update_time")):
                v = res["stats"].get(stat)
                res[key] = (v / 1000.0 - t0_wall) if isinstance(v, int) and v / 1000.0 > t0_wall else None
            sample[phase] = res
            x = res["xds"]
            print(f"  round {rnd}/{args.rounds} {proxy.name:<6} {phase:<7} {elapsed:7.3f} s  (routes at "
                  f"{res['marker_seen_s']:.3f} s, last cluster at {res['last_cluster_seen_s']:.3f} s; own "
                  f"update_time CDS {fmt(res['cds_done_s'], '{:.2f}')}, RDS {fmt(res['rds_done_s'], '{:.2f}')} s; "
                  f"slowest poll {res['poll_ms_max']:.0f} ms; {last} answered "
                  f"{answers(states[last])}; {res['poll_failures']} polls unanswered)  "
                  f"RSS {res['rss_after_mib']:6.1f} MiB (peak {res['peak_rss_mib']:.1f})  "
                  f"cpu {res['cpu_s']:.2f} s  cds/rds ok {x['cds_update_success']}/{x['rds_update_success']} "
                  f"clusters {x['active_clusters']}", flush=True)
    finally:
        proxy.stop()
    return sample


# ---------------------------------------------------------------------------------------------
# Scenario 2: requests/s during an update storm.

class Storm(Background):
    """Renames a new RDS file every `interval` s and, every `cds_every`-th time, a new CDS file
    (first). Update k's marker route is /marker-s<k>."""

    def __init__(self, proxy, args, ports):
        self.proxy, self.args, self.ports = proxy, args, ports
        self.updates = self.cds_updates = 0
        self.last_tag, self.last_rename = None, None
        self.late = 0.0  # the largest delay of a tick behind its schedule
        self.error = None
        super().__init__()

    def _run(self):
        a, interval = self.args, self.args.interval_ms / 1000.0
        start = time.monotonic()
        k = 0
        try:
            while not self._stop.is_set():
                k += 1
                due = start + k * interval
                delay = due - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                self.late = max(self.late, time.monotonic() - due)
                version = str(100 + k)
                if a.cds_every and k % a.cds_every == 0:
                    if a.cds_change == "all":  # every cluster differs from the one in use
                        text = cds_yaml(version, a.routes, self.ports["nginx_a"],
                                        connect_timeout=2 if k // a.cds_every % 2 else 1)
                    else:  # the clusters in use unchanged, one extra cluster renamed each time
                        text = cds_yaml(version, a.routes, self.ports["nginx_a"]) + CLUSTER.format(
                            i=f"extra-{k}", ct=1, port=self.ports["nginx_b"])
                    replace(self.proxy, "cds.yaml", text)
                    self.cds_updates += 1
                tag = f"s{k}"
                replace(self.proxy, "rds.yaml", rds_yaml(version, a.routes, tag, a.direct))
                self.last_rename = time.monotonic()
                self.last_tag = tag
                self.updates += 1
        except Exception as e:  # reported by the main thread
            self.error = e


def storm_round(proxy, rnd, args, ports, lua):
    sample = {"round": rnd}
    proxy.write_initial(cds_yaml("1", args.routes, ports["nginx_a"]), rds_yaml("1", args.routes, "s0", args.direct))
    sample["ready_s"] = proxy.start("/marker-s0", b"s0")
    try:
        if get(proxy.port, "/svc-0/") != (200, BODY_A):
            raise RuntimeError(f"{proxy.name}: /svc-0/ does not answer 200 A: {get(proxy.port, '/svc-0/')}")
        if args.warmup:
            wrk(proxy.port, args.warmup, args.connections, lua)
        for phase in ("steady", "storm"):
            st0 = stats(proxy.admin)
            cpu0 = cpu_seconds(proxy.proc.pid)
            with RssSampler(proxy.proc.pid, interval=0.2, sample_at_exit=True) as rss:
                if phase == "steady":
                    res = wrk(proxy.port, args.duration, args.connections, lua)
                else:
                    with Storm(proxy, args, ports) as storm:
                        res = wrk(proxy.port, args.duration, args.connections, lua)
            cpu1 = cpu_seconds(proxy.proc.pid)
            if proxy.proc.poll() is not None:
                raise RuntimeError(f"{proxy.name} died during {phase}; log {proxy.log}:\n{tail(proxy.log)}")
            record_usage(res, cpu1 - cpu0, rss)
            if phase == "storm":
                if storm.error:
                    raise RuntimeError(f"the updating thread failed: {storm.error!r}")
                # The last update must become visible: how long after its rename?
                tag = storm.last_tag
                seen, _, _, _ = wait_served(proxy, [(f"/marker-{tag}", (200, tag.encode()))], storm.last_rename,
                                      args.apply_timeout, 0.005)
                res["last_update_visible_s"] = seen[f"/marker-{tag}"]
                res["renames_rds"], res["renames_cds"] = storm.updates, storm.cds_updates
                res["schedule_late_max_s"] = storm.late
                # Replaced clusters' connections should be gone once the load has stopped.
                time.sleep(1.0)
                res["fds_after"] = len(os.listdir(f"/proc/{proxy.proc.pid}/fd"))
            st1 = stats(proxy.admin)
            c0, c1 = xds_counts(st0), xds_counts(st1)
            res["xds_delta"] = {k: (c1[k] - c0[k]) if isinstance(c1[k], int) and isinstance(c0[k], int) else None
                                for k in c1 if k.endswith(("success", "rejected"))}
            res["stats_after"] = st1
            sample[phase] = res
            warn = f"  WARNING {res['errors']} errors/non-2xx" if res["errors"] else ""
            extra = ""
            if phase == "storm":
                d = res["xds_delta"]
                extra = (f"  renames rds/cds {res['renames_rds']}/{res['renames_cds']}, applied "
                         f"{d['rds_update_success']}/{d['cds_update_success']}, last visible after "
                         f"{res['last_update_visible_s'] * 1000:.0f} ms; fds {res['fds_after']} 1 s after")
            print(f"  round {rnd}/{args.rounds} {proxy.name:<6} {phase:<6} {res['rps']:8.0f} rps  "
                  f"p50 {res['p50_ms']:6.2f} ms  p99 {res['p99_ms']:6.2f} ms  cpu {res['cpu_us_per_req']:6.1f} us/req  "
                  f"RSS {res['rss_peak_mib']:.1f} MiB  fds {res['fds_peak']}{extra}{warn}", flush=True)
        sample["storm_over_steady"] = sample["storm"]["rps"] / sample["steady"]["rps"]
    finally:
        proxy.stop()
    return sample


# ---------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scenarios", default="apply,storm", help="comma-separated: apply, storm")
    ap.add_argument("--only", default=",".join(PROXIES), help="comma-separated subset of legate,envoy")
    ap.add_argument("--clusters", type=int, default=10_000, help="apply: clusters and routes applied (default 10000)")
    ap.add_argument("--poll-ms", type=float, default=10.0, help="apply: polling interval (default 10 ms)")
    ap.add_argument("--settle", type=float, default=2.0, help="apply: seconds after an apply before reading RSS")
    ap.add_argument("--apply-timeout", type=float, default=120.0)
    ap.add_argument("--routes", type=int, default=100, help="storm: routes and clusters (default 100)")
    ap.add_argument("--duration", type=int, default=10, help="storm: seconds per measured run (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="storm: seconds of unmeasured load first")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--interval-ms", type=float, default=100.0, help="storm: one RDS rename every this often")
    ap.add_argument("--cds-every", type=int, default=5, help="storm: a CDS rename with every N-th RDS rename (0: never)")
    ap.add_argument("--cds-change", choices=("all", "one"), default="all",
                    help="storm: what a CDS update changes: every cluster's connect_timeout (all, the default) or "
                         "only an extra unused cluster that is replaced each time (one)")
    ap.add_argument("--direct", action="store_true",
                    help="storm: routes answer with direct_response instead of proxying to nginx")
    ap.add_argument("--base-port", type=int, default=18500)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round, 3 s storm runs, 1 s warm-up")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 3, 1
    targets = [t for t in args.only.split(",") if t]
    scenarios = [s for s in args.scenarios.split(",") if s]
    if set(targets) - set(PROXIES) or not targets:
        ap.error(f"--only: choose from {PROXIES}")
    if set(scenarios) - {"apply", "storm"} or not scenarios:
        ap.error("--scenarios: choose from apply, storm")

    real_envoy = sorted(glob.glob(str(ROOT / ".venv/lib/python3*/site-packages/envoy/_bin/envoy")))
    binaries = {
        "legate": Path(os.environ.get("LEGATE", ROOT / "target/release/legate")),
        "envoy": Path(os.environ.get("ENVOY", real_envoy[-1] if real_envoy else ROOT / ".venv/bin/envoy")),
        "nginx": shutil.which("nginx"),
        "wrk": shutil.which("wrk"),
        "taskset": shutil.which("taskset"),
    }
    needed = set(targets) | {"nginx", "taskset"} | ({"wrk"} if "storm" in scenarios else set())
    missing = missing_binaries(binaries, needed)
    if missing:
        print(f"missing: {', '.join(sorted(missing))} (bench/setup.sh installs nginx and wrk; cargo build --release "
              "-p legate builds legate; scripts/test.sh installs envoy)", file=sys.stderr)
        return 2
    if len(os.sched_getaffinity(0)) < 2:
        print("needs 2 CPUs (proxy on CPU 0; nginx, wrk and this script on CPU 1)", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {int(LOAD_CPU)})  # the pollers and the updating thread stay off the proxy's CPU

    ports = {"nginx_a": args.base_port, "nginx_b": args.base_port + 1, "legate": args.base_port + 10,
             "envoy": args.base_port + 11, "legate_admin": args.base_port + 20, "envoy_admin": args.base_port + 21}
    busy = busy_ports(ports)
    if busy:
        print(f"ports in use: {', '.join(busy)} (pick others with --base-port)", file=sys.stderr)
        return 2

    RESULTS.mkdir(parents=True, exist_ok=True)
    work = RESULTS / "xds_apply"
    write_nginx_conf(work, NGINX_COMMENT.format(a=ports["nginx_a"], b=ports["nginx_b"]),
                     NGINX_SERVERS.format(a=ports["nginx_a"], b=ports["nginx_b"]))
    lua = work / "wrk_cycle.lua"
    lua.write_text(WRK_LUA.format(n=args.routes, last=args.routes - 1) + WRK_DONE_LUA)
    base_id = 41000 + os.getpid() % 10000  # Envoy's shared-memory id: unique to this run and round

    versions = tool_versions((
        ("legate", [str(binaries["legate"]), "--version"]), ("envoy", [str(binaries["envoy"]), "--version"]),
        ("nginx", [binaries["nginx"], "-v"]), ("wrk", [binaries["wrk"] or "true", "-v"])))
    build = {}
    if binaries["legate"].exists():
        build["legate_mtime"] = datetime.datetime.fromtimestamp(binaries["legate"].stat().st_mtime).isoformat(
            timespec="seconds")
    try:
        build["head"] = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %cI %s"],
                                       capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass

    # The big files, generated once (only the marker differs between proxies and rounds).
    big = {}
    if "apply" in scenarios:
        t = time.monotonic()
        big["cds_a"] = cds_yaml("2", args.clusters, ports["nginx_a"])
        big["cds_b"] = cds_yaml("3", args.clusters, ports["nginx_b"])
        rds = rds_yaml("VERSION", args.clusters, "TAG")
        cut = rds.rindex('    - match: {path: "/marker-TAG"}')
        big["rds_head"], big["rds_marker"] = rds[:cut], rds[cut:].replace("{", "{{").replace("}", "}}").replace(
            "TAG", "{tag}")
        print(f"generated CDS {len(big['cds_a']) / 1e6:.1f} MB ({args.clusters} clusters) and RDS "
              f"{len(rds) / 1e6:.1f} MB ({args.clusters} routes + marker) in {time.monotonic() - t:.2f} s")

    print(f"xds_apply: {', '.join(targets)}; scenarios {', '.join(scenarios)}; {args.rounds} round(s); "
          f"files in {work}")
    print(f"  legate {versions.get('legate')} ({binaries['legate']}, built {build.get('legate_mtime', '-')}); "
          f"HEAD {build.get('head', '?')}")
    print(f"  envoy {versions.get('envoy')} ({binaries['envoy']})")
    load_before = read_load_before("noisy")

    proxies = {name: Proxy(name, binaries[name], work, ports[name], ports[f"{name}_admin"], base_id, 1)
               for name in targets}
    samples = {s: {t: [] for t in targets} for s in scenarios}
    started = time.monotonic()

    def rounds():
        nginx = start_nginx(binaries["nginx"], work)
        t = time.monotonic()
        while get(ports["nginx_a"], "/") != (200, BODY_A) or get(ports["nginx_b"], "/") != (200, BODY_B):
            if nginx.poll() is not None or time.monotonic() - t > 10:
                raise RuntimeError(f"nginx not serving; {work / 'nginx.err'}:\n{tail(work / 'nginx.err')}")
            time.sleep(0.05)

        for scenario in scenarios:
            print(f"\n{scenario}: " + (
                f"small config -> {args.clusters} clusters + {args.clusters} routes (CDS then RDS renamed), then "
                f"all {args.clusters} clusters changed; polling every {args.poll_ms:g} ms"
                if scenario == "apply" else
                f"{args.routes} routes/clusters ({'direct_response' if args.direct else 'nginx upstream'}), "
                f"wrk -t1 -c{args.connections} {args.duration} s steady then {args.duration} s with an RDS rename "
                f"every {args.interval_ms:g} ms" + (f" and a CDS rename every {args.cds_every}th (changing "
                f"{'every cluster' if args.cds_change == 'all' else 'one unused cluster'})" if args.cds_every
                else ", no CDS")), flush=True)
            for rnd in range(1, args.rounds + 1):
                order = targets[(rnd - 1) % len(targets):] + targets[: (rnd - 1) % len(targets)]
                for name in order:
                    proxies[name].base_id = base_id + len(samples[scenario][name]) + (100 if scenario == "storm" else 0)
                    if scenario == "apply":
                        s = apply_round(proxies[name], rnd, args, big, ports)
                    else:
                        s = storm_round(proxies[name], rnd, args, ports, lua)
                    samples[scenario][name].append(s)

    rc = guarded(rounds, STOP_GRACE)
    if rc:
        return rc
    elapsed = time.monotonic() - started
    load_after = loadavg()

    print(f"\nwall {elapsed:.0f} s; load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
          f"medians of {args.rounds} round(s)")
    med, ratios, targets_met = {}, {}, {}
    both = "legate" in targets and "envoy" in targets

    if "apply" in scenarios:
        keys = [("apply", "apply_s"), ("reapply", "apply_s"), ("apply", "rss_after_mib"), ("reapply", "rss_after_mib"),
                ("apply", "peak_rss_mib"), (None, "ready_s"), (None, "idle_rss_mib"), ("apply", "cpu_s"),
                ("apply", "poll_ms_max"), ("reapply", "poll_ms_max"), ("apply", "cds_done_s"), ("apply", "rds_done_s"),
                ("reapply", "cds_done_s"), ("reapply", "rds_done_s")]
        m = {name: {f"{p}_{k}" if p else k: median([(s[p] if p else s)[k] for s in runs]) for p, k in keys}
             for name, runs in samples["apply"].items()}
        med["apply"] = m
        print(f"\n### apply: {args.clusters} clusters + {args.clusters} routes from files\n")
        heads = ["apply (median)", "re-apply, all changed", "RSS after apply", "RSS after re-apply",
                 "peak RSS in apply", "slowest answer in apply", "start-up (small)", "idle RSS (small)"]
        specs = ["{:.3f} s", "{:.3f} s", "{:.1f} MiB", "{:.1f} MiB", "{:.1f} MiB", "{:.0f} ms", "{:.3f} s", "{:.1f} MiB"]
        cols = ["apply_apply_s", "reapply_apply_s", "apply_rss_after_mib", "reapply_rss_after_mib",
                "apply_peak_rss_mib", "apply_poll_ms_max", "ready_s", "idle_rss_mib"]
        print_table_head(heads)
        for name in targets:
            print_row(LABELS[name], [fmt(m[name][c], sp) for c, sp in zip(cols, specs)])
        if both:
            r = {c: (m["envoy"][c] / m["legate"][c]) if m["legate"][c] and m["envoy"][c] else None for c in cols}
            ratios["apply_envoy_over_legate"] = r
            print_row("Envoy / Legate", [fmt(r[c], "{:.1f}x") for c in cols])
            targets_met["apply_under_1s"] = m["legate"]["apply_apply_s"] < 1.0
            targets_met["apply_5x_faster"] = (r["apply_apply_s"] or 0) >= 5.0
            print(f"\n(Envoy / Legate: above 1 means Legate is faster or smaller.) Issue targets: apply under 1 s: "
                  f"{'met' if targets_met['apply_under_1s'] else 'NOT met'} ({m['legate']['apply_apply_s']:.3f} s); "
                  f">= 5x faster than Envoy: {'met' if targets_met['apply_5x_faster'] else 'NOT met'} "
                  f"({fmt(r['apply_apply_s'], '{:.1f}x')})")
        for name in targets:
            per = " / ".join(f"{s['apply']['apply_s']:.2f}" for s in samples["apply"][name])
            per2 = " / ".join(f"{s['reapply']['apply_s']:.2f}" for s in samples["apply"][name])
            print(f"  {LABELS[name]} per round: apply {per} s; re-apply {per2} s")

    if "storm" in scenarios:
        runs_of = samples["storm"]
        m = {}
        for name, runs in runs_of.items():
            m[name] = {
                "steady_rps": median([s["steady"]["rps"] for s in runs]),
                "storm_rps": median([s["storm"]["rps"] for s in runs]),
                "storm_over_steady": median([s["storm_over_steady"] for s in runs]),
                "steady_p99_ms": median([s["steady"]["p99_ms"] for s in runs]),
                "storm_p99_ms": median([s["storm"]["p99_ms"] for s in runs]),
                "steady_cpu_us_per_req": median([s["steady"]["cpu_us_per_req"] for s in runs]),
                "storm_cpu_us_per_req": median([s["storm"]["cpu_us_per_req"] for s in runs]),
                "storm_errors": median([s["storm"]["errors"] for s in runs]),
                "rds_applied": median([s["storm"]["xds_delta"]["rds_update_success"] for s in runs]),
                "cds_applied": median([s["storm"]["xds_delta"]["cds_update_success"] for s in runs]),
                "renames_rds": median([s["storm"]["renames_rds"] for s in runs]),
                "renames_cds": median([s["storm"]["renames_cds"] for s in runs]),
                "last_update_visible_ms": median([s["storm"]["last_update_visible_s"] * 1000 for s in runs]),
                "steady_rss_peak_mib": median([s["steady"]["rss_peak_mib"] for s in runs]),
                "storm_rss_peak_mib": median([s["storm"]["rss_peak_mib"] for s in runs]),
                "steady_fds_peak": median([s["steady"]["fds_peak"] for s in runs]),
                "storm_fds_peak": median([s["storm"]["fds_peak"] for s in runs]),
                "fds_after_storm": median([s["storm"]["fds_after"] for s in runs]),
            }
        med["storm"] = m
        print(f"\n### update storm: {args.routes} routes, {'direct_response' if args.direct else 'nginx upstream'}; "
              f"RDS every {args.interval_ms:g} ms, " + (f"CDS every {args.cds_every}th ({args.cds_change} changed)\n"
                                                         if args.cds_every else "no CDS\n"))
        heads = ["steady rps", "storm rps", "storm / steady", "steady p99", "storm p99", "CPU/req steady",
                 "CPU/req storm", "errors in storm", "RDS applied / renamed", "CDS applied / renamed",
                 "last update served after", "RSS steady / storm", "open fds steady / storm / after"]
        print_table_head(heads)
        for name in targets:
            x = m[name]
            cells = [fmt(x["steady_rps"], "{:,.0f}"), fmt(x["storm_rps"], "{:,.0f}"),
                     fmt(x["storm_over_steady"], "{:.2f}"), fmt(x["steady_p99_ms"], "{:.2f} ms"),
                     fmt(x["storm_p99_ms"], "{:.2f} ms"), fmt(x["steady_cpu_us_per_req"], "{:.1f} µs"),
                     fmt(x["storm_cpu_us_per_req"], "{:.1f} µs"), fmt(x["storm_errors"], "{:.0f}"),
                     f"{fmt(x['rds_applied'], '{:.0f}')} / {fmt(x['renames_rds'], '{:.0f}')}",
                     f"{fmt(x['cds_applied'], '{:.0f}')} / {fmt(x['renames_cds'], '{:.0f}')}",
                     fmt(x["last_update_visible_ms"], "{:.0f} ms"),
                     f"{fmt(x['steady_rss_peak_mib'], '{:.1f}')} / {fmt(x['storm_rss_peak_mib'], '{:.1f} MiB')}",
                     f"{fmt(x['steady_fds_peak'], '{:.0f}')} / {fmt(x['storm_fds_peak'], '{:.0f}')} / "
                     f"{fmt(x['fds_after_storm'], '{:.0f}')}"]
            print_row(LABELS[name], cells)
        if both:
            r = {k: (m["legate"][k] / m["envoy"][k]) if m["legate"][k] and m["envoy"][k] else None
                 for k in ("steady_rps", "storm_rps", "steady_p99_ms", "storm_p99_ms", "steady_cpu_us_per_req",
                           "storm_cpu_us_per_req")}
            ratios["storm_legate_over_envoy"] = r
            print(f"| Legate / Envoy | {fmt(r['steady_rps'], '{:.2f}x')} | {fmt(r['storm_rps'], '{:.2f}x')} | | "
                  f"{fmt(r['steady_p99_ms'], '{:.2f}x')} | {fmt(r['storm_p99_ms'], '{:.2f}x')} | "
                  f"{fmt(r['steady_cpu_us_per_req'], '{:.2f}x')} | {fmt(r['storm_cpu_us_per_req'], '{:.2f}x')} "
                  "| | | | | | |")
        if "legate" in targets:
            targets_met["storm_within_10pct"] = (m["legate"]["storm_over_steady"] or 0) >= 0.90
            print(f"\nIssue target: Legate's requests/s in the storm within 10% of steady: "
                  f"{'met' if targets_met['storm_within_10pct'] else 'NOT met'} "
                  f"({fmt(m['legate']['storm_over_steady'], '{:.2f}')})")
        for name in targets:
            per = " / ".join(f"{s['steady']['rps']:.0f}->{s['storm']['rps']:.0f}" for s in runs_of[name])
            print(f"  {LABELS[name]} per round, steady->storm rps: {per}")

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"xds_apply-{stamp}.json"
    out.write_text(json.dumps({
        "args": vars(args), "ports": ports, "versions": versions, "build": build,
        "binaries": {k: str(v) for k, v in binaries.items()},
        "load_average_before": load_before, "load_average_after": load_after, "wall_s": elapsed,
        "pinning": {"proxy_cpu": PROXY_CPU, "nginx_wrk_and_script_cpu": LOAD_CPU},
        "samples": samples, "median": med, "ratios": ratios, "targets_met": targets_met,
    }, indent=2))
    print(f"\nraw results: {out}")
    return 0


if __name__ == "__main__":
    run_main(main)
