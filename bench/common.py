"""Pieces shared by the benchmark scripts in bench/ (http_bench.py, tls_bench.py, memory.py,
xds_apply.py, validate_10k.py): starting and stopping processes by PID, CPU time and RSS from
/proc, CPU pinning, the descriptor limit, the nginx upstream, wrk and h2load and their
summaries, medians and Markdown tables.

Not a script: the scripts import it as `common` (run by path, their directory is on sys.path).
"""

import json
import os
import re
import resource
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench/results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROXY_CPU = "0"
LOAD_CPU = "1"

# ---------------------------------------------------------------------------------------------
# Processes: every one we start is recorded here and stopped by PID in `stop_all`.

STARTED = []


def spawn(cmd, log_path=None, cpu=None, **kw):
    if cpu is not None:
        cmd = ["taskset", "-c", cpu, *cmd]  # taskset execs: the PID is the command's
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if log_path else subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True, **kw)
    if log_path:
        out.close()
    STARTED.append(proc)
    return proc


def stop(proc, grace=5.0):
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
    if proc in STARTED:
        STARTED.remove(proc)


def stop_all(grace=5.0):
    for proc in list(STARTED):
        try:
            stop(proc, grace)
        except Exception as e:  # keep stopping the others
            print(f"  could not stop pid {proc.pid}: {e}", file=sys.stderr)


def run_load(cmd, timeout):
    """Runs a load generator pinned to LOAD_CPU; returns its stdout. Tracked like the rest."""
    proc = subprocess.Popen(["taskset", "-c", LOAD_CPU, *cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, text=True)
    STARTED.append(proc)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        stop(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {proc.returncode}:\n{out[-2000:]}")
    return out


def guarded(body, grace=5.0):
    """Runs body() and returns its result (None: 0); on Ctrl-C/SIGTERM returns 130, on a
    RuntimeError prints it and returns 1. Every process started is stopped in any case."""
    try:
        return body() or 0
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        stop_all(grace)


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def run_main(main):
    """The scripts' entry point: SIGTERM and SIGINT stop the run as Ctrl-C does (also when
    started in the background), and main()'s return value is the exit status."""
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())


# ---------------------------------------------------------------------------------------------
# /proc readings.

def cpu_times(pid):
    """(utime, stime) of the whole process (all threads), in seconds: the time in the process's
    own code and the time the kernel spent on its behalf (for a proxy on loopback, mostly TCP)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_seconds(pid):
    """utime + stime of the whole process (all threads), in seconds."""
    return sum(cpu_times(pid))


def rss_mib(pid, field="VmRSS"):
    """Resident memory of pid in MiB: all of it (VmRSS), or its anonymous part (RssAnon: the
    heap and stacks) or file-backed part (RssFile: the mapped pages of the binary and libraries)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


class Background:
    """A context manager that runs `self._run` in a daemon thread from the start of the block to
    its end: `_run` returns once `self._stop` is set."""

    def __init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        raise NotImplementedError

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class RssSampler(Background):
    """Samples a process's VmRSS and open file descriptors (connections, mostly) every
    `interval` seconds in a thread; keeps the peaks. With `sample_at_exit`, RSS is read once
    more when the block ends."""

    def __init__(self, pid, interval=0.2, sample_at_exit=False):
        self.pid, self.interval, self.peak, self.peak_fds = pid, interval, 0.0, 0
        self.sample_at_exit = sample_at_exit
        super().__init__()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_mib(self.pid))
                self.peak_fds = max(self.peak_fds, len(os.listdir(f"/proc/{self.pid}/fd")))
            except OSError:
                return
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        super().__exit__(*exc)
        if self.sample_at_exit:
            try:
                self.peak = max(self.peak, rss_mib(self.pid))
            except OSError:
                pass


def record_usage(res, cpu_s, rss, user_s=None):
    """Adds to a load generator's result the process's CPU time over the run (in total and per
    request; with `user_s`, also the user-space part per request) and its RSS and fd peaks (an
    RssSampler); returns the requests counted (at least 1)."""
    reqs = max(res["requests"], 1)
    res["cpu_s"] = cpu_s
    res["cpu_us_per_req"] = cpu_s * 1e6 / reqs
    if user_s is not None:
        res["user_us_per_req"] = user_s * 1e6 / reqs
    res["rss_peak_mib"] = rss.peak
    res["fds_peak"] = rss.peak_fds
    return reqs


# ---------------------------------------------------------------------------------------------
# Set-up and the tools.

def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is fine
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def insecure_tls_client():
    """A TLS client context that accepts any certificate (the benchmarks' are self-signed)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def get(port, path, timeout=2.0, tls=None):
    """One HTTP/1.1 GET on a fresh connection (over TLS with the client context `tls`); returns
    (status, body) or None. Reads exactly Content-Length bytes of body and closes: Envoy, after a
    `connection: close` response, waits up to its delayed_close_timeout (1 s) for the client to
    close first."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw, \
                (tls.wrap_socket(raw) if tls else raw) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
            data, length = b"", None
            while True:
                if length is None and b"\r\n\r\n" in data:
                    head = data.split(b"\r\n\r\n", 1)[0].lower()
                    m = re.search(rb"\r\ncontent-length: *(\d+)", head)
                    length = int(m.group(1)) if m else -1
                if length is not None and length >= 0 and len(data.split(b"\r\n\r\n", 1)[1]) >= length:
                    break
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except (OSError, ssl.SSLError):
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        return int(head.split(b" ", 2)[1]), body
    except (IndexError, ValueError):
        return None


def raise_nofile(want):
    """Raises this process's soft RLIMIT_NOFILE towards `want` (never above the hard limit: only
    a privileged process may raise that); the processes it starts inherit it. Returns the new
    soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        soft = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def busy_ports(ports):
    """The ports of {name: port} that are taken, as "name:port"."""
    return [f"{n}:{p}" for n, p in ports.items() if not port_free(p)]


def missing_binaries(binaries, needed):
    """The names in `needed` whose entry in {name: path or None} is unset or does not exist."""
    return [n for n in needed if not binaries[n] or not Path(binaries[n]).exists()]


def tool_versions(commands):
    """{name: first non-empty line that `command` prints} for (name, command) pairs ("?" if it
    cannot run)."""
    versions = {}
    for name, cmd in commands:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            text = (out.stdout + out.stderr).strip()
            versions[name] = next((l.strip() for l in text.splitlines() if l.strip()), "")
        except (OSError, subprocess.TimeoutExpired):
            versions[name] = "?"
    return versions


def read_load_before(busy_means):
    """Reads and prints the load average before the run, with a note when the machine is busy
    (`busy_means`: what that does to the numbers)."""
    load = loadavg()
    print(f"load average before: {load}")
    if load[0] > 1.0:
        print(f"note: the machine is busy (1-minute load {load[0]:.2f} on {os.cpu_count()} CPUs): absolute "
              f"numbers will be {busy_means}; compare the ratios")
    return load


def tail(path, n=2000):
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError:
        return ""


# The nginx upstream: one worker, no access log, generous limits; `servers` is the server
# blocks (and any other http-level directives) of the script, already formatted.
NGINX_CONF = """\
{comment}
worker_processes 1;
master_process off;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx.err warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    default_type text/plain;
    tcp_nodelay on;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/nginx_tmp;
    proxy_temp_path {dir}/nginx_tmp;
{servers}}}
"""


def small_body(size):
    """The small response body of the benchmarks: `size` bytes of "legate bench ", ending in a newline."""
    return (b"legate bench " * ((size // 13) + 1))[: size - 1] + b"\n"


def nginx_small_location(body):
    """An nginx `location = /` answering 200 with `body` (small_body's text) from memory.

    nginx serving a file costs an open, fstat, writev, sendfile and close per request, on the core
    the load generator shares: it capped every proxy at about the rate nginx reaches alone, so the
    benchmark measured that core, not the proxies. From memory the head and body leave in one
    writev (40-47k requests/s direct against 17-20k for the file on this machine).
    """
    text = body.decode("ascii").replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'location = / {{ return 200 "{text}"; }}'


def write_nginx_conf(work, comment, servers):
    (work / "nginx_tmp").mkdir(parents=True, exist_ok=True)
    (work / "nginx.conf").write_text(NGINX_CONF.format(comment=comment, dir=work, servers=servers))


def start_nginx(binary, work):
    """Starts nginx on work/nginx.conf (write_nginx_conf), pinned to LOAD_CPU."""
    return spawn([binary, "-p", str(work), "-c", str(work / "nginx.conf"), "-e", str(work / "nginx.err")],
                 log_path=work / "nginx.log", cpu=LOAD_CPU)


# wrk's `done` callback: prints wrk's summary as one JSON line, which `wrk` parses. A script's
# Lua file is its own lines (a comment, any request generator) followed by this.
WRK_DONE_LUA = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'JSON {"requests":%d,"duration_us":%d,"bytes":%d,"err_connect":%d,"err_read":%d,' ..
    '"err_write":%d,"err_status":%d,"err_timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"mean_us":%.1f,"max_us":%d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max))
end
"""


def wrk(port, seconds, connections, lua, path="/", headers=(), scheme="http", timeout_s=5):
    """`wrk -t1` for `seconds`; `timeout_s` is wrk's per-request timeout (a response that takes
    longer counts as a timeout error)."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", f"{timeout_s}s", "-s", str(lua)]
    for h in headers:
        cmd += ["-H", h]
    out = run_load(cmd + [f"{scheme}://127.0.0.1:{port}{path}"], timeout=seconds + timeout_s + 30)
    line = next((l for l in out.splitlines() if l.startswith("JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out[-2000:]}")
    r = json.loads(line[5:])
    errors = r["err_connect"] + r["err_read"] + r["err_write"] + r["err_status"] + r["err_timeout"]
    return {
        "requests": r["requests"],
        "errors": errors,
        "rps": r["requests"] / (r["duration_us"] / 1e6),
        "mib_per_s": r["bytes"] / (r["duration_us"] / 1e6) / (1024 * 1024),
        "p50_ms": r["p50_us"] / 1000.0,
        "p99_ms": r["p99_us"] / 1000.0,
        "mean_ms": r["mean_us"] / 1000.0,
        "raw": r,
    }


def h2load_summary(out):
    """The totals h2load prints: {"requests": succeeded, "errors": failed, errored, timed out or
    not 2xx, "rps", "wall_s", "summary": its lines}, and the mean `time for connect` and `time
    to 1st byte` in ms when printed. Raises RuntimeError if they cannot be read."""
    lines = out.splitlines()

    def line(prefix):
        return next((l for l in lines if l.startswith(prefix)), "")

    req_line, fin_line, codes_line = line("requests:"), line("finished in"), line("status codes:")
    try:
        nums = [int(w) for w in req_line.replace(",", " ").split() if w.isdigit()]
        _total, _started, _done, succeeded, failed, errored, timeouts = nums[:7]
        rps = float(fin_line.split(",")[1].split()[0])
        wall_s = float(fin_line.split()[2].rstrip("s,"))
        ok2xx = int(codes_line.split(":")[1].split()[0])
    except (IndexError, ValueError) as e:
        raise RuntimeError(f"could not parse h2load output ({e}):\n{out[-2000:]}") from None
    result = {
        "requests": succeeded,
        "errors": failed + errored + timeouts + (succeeded - ok2xx),
        "rps": rps,
        "wall_s": wall_s,
        "summary": [fin_line, req_line, codes_line],
    }
    # "time for connect:    42.99ms       2.28s       1.34s ..." (min, max, mean, sd, +/- sd).
    for prefix, key in (("time for connect:", "connect_mean_ms"), ("time to 1st byte:", "ttfb_mean_ms")):
        cols = line(prefix)[len(prefix):].split()
        if len(cols) >= 3:
            v = cols[2]
            scale = 1e-3 if v.endswith("us") else 1e3 if v.endswith("s") and not v.endswith("ms") else 1.0
            try:
                result[key] = float(v.rstrip("usm")) * scale
            except ValueError:
                pass
        result["summary"].append(line(prefix))
    return result


# ---------------------------------------------------------------------------------------------
# Results.

def median(values):
    """The median of the values that are not None; None if there are none."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, spec):
    return spec.format(v) if v is not None else "n/a"


def print_table_head(headers):
    """A Markdown table's header row and rule, the first column (the row labels) untitled."""
    print("| | " + " | ".join(headers) + " |")
    print("|---" * (len(headers) + 1) + "|")


def print_row(label, cells):
    print(f"| {label} | " + " | ".join(cells) + " |")
