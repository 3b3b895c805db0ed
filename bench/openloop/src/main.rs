//! openloop: HTTP/1.1 GET requests at a fixed rate, whatever the server does, and the latency
//! of each measured from when it was due (scenario 6 of the performance issue; wrk and h2load
//! are closed-loop: a slow response delays the requests behind it, which are then never
//! measured as late).
//!
//! Request `i` is due at `start + i / rate` and goes to connection `i mod connections`. A
//! connection carries one request at a time (keep-alive, no pipelining): a request due while its
//! connection still waits for an earlier response is sent when that response is in, and its
//! latency still counts from when it was due — so a stall in the server is charged to every
//! request it held up, as wrk2 measures it.
//!
//! One thread, non-blocking sockets and `ppoll` with nanosecond timeouts (timer slack set to
//! 1 µs): how late the generator itself noticed requests were due is reported too
//! (`schedule_lag`), so a run whose generator fell behind can be told apart.
//!
//! Prints a summary and then one line `JSON {...}` for scripts (bench/http_bench.py).

mod response;

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "Open-loop HTTP/1.1 load at a fixed rate; latency from when each request was due"
)]
struct Args {
    /// Where to send GET requests: http://IP:PORT/PATH (an IP address, not a host name)
    url: String,
    /// Requests per second, spaced evenly in time
    #[arg(long)]
    rate: f64,
    /// Seconds of load
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Keep-alive connections; requests go to them in turn
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Seconds to wait, once the load ends, for responses still outstanding (those not in by
    /// then count as timeouts)
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Also list the N slowest requests, in the order they were due, with when they were due:
    /// shows whether the tail comes in bursts or at a period
    #[arg(long, default_value_t = 0)]
    slowest: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(report) => {
            // A reader that stopped early (`| head`) is not an error of the run.
            let _ = report.print(&args, &mut std::io::stdout().lock());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("openloop: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `http://127.0.0.1:8080/path` -> the address and the path.
fn parse_url(url: &str) -> Result<(SocketAddr, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let addr = authority
        .parse()
        .map_err(|_| format!("{url}: the authority must be IP:PORT"))?;
    Ok((addr, path))
}

/// What a run measured.
#[derive(Default)]
struct Report {
    /// Latencies of the answered requests, from when each was due (nanoseconds).
    latencies: Vec<u64>,
    /// (latency, when it was due since the start), nanoseconds, of each answered request.
    timeline: Vec<(u64, u64)>,
    start: Option<Instant>,
    /// How late the generator noticed each request was due (nanoseconds).
    schedule_lag: Vec<u64>,
    non_2xx: u64,
    /// Requests lost with their connection (closed or failed); it is opened again.
    errors: u64,
    reconnects: u64,
    timeouts: u64,
    scheduled: u64,
    elapsed: Duration,
}

/// A keep-alive connection and the requests given to it.
struct Conn {
    stream: TcpStream,
    /// When each request given to this connection and not yet answered was due, oldest first.
    due: VecDeque<Instant>,
    wire: Wire,
    buf: Vec<u8>,
}

/// The oldest due request of a connection: not on the wire yet, partly written (bytes), or
/// written and waiting for its response.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wire {
    Idle,
    Writing(usize),
    Sent,
}

impl Conn {
    fn open(addr: SocketAddr) -> Result<Self, String> {
        let stream =
            TcpStream::connect(addr).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok(Conn {
            stream,
            due: VecDeque::new(),
            wire: Wire::Idle,
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    /// Writes the oldest due request if none is on the wire (or the rest of a partial write).
    fn send(&mut self, request: &[u8]) -> std::io::Result<()> {
        let mut at = match self.wire {
            _ if self.due.is_empty() => return Ok(()),
            Wire::Sent => return Ok(()),
            Wire::Idle => 0,
            Wire::Writing(at) => at,
        };
        while at < request.len() {
            match self.stream.write(&request[at..]) {
                Ok(n) => at += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.wire = Wire::Writing(at);
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        self.wire = Wire::Sent;
        Ok(())
    }

    /// Reads what arrived and takes the complete responses out, recording their latencies.
    fn receive(&mut self, now: Instant, report: &mut Report) -> std::io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let mut closed = false;
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        while let Some(r) = response::parse(&self.buf)
            .map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))?
        {
            self.buf.drain(..r.len);
            let Some(due) = self.due.pop_front() else {
                return Err(std::io::Error::new(
                    ErrorKind::InvalidData,
                    "a response to no request",
                ));
            };
            self.wire = Wire::Idle;
            let latency = nanos(now.saturating_duration_since(due));
            report.latencies.push(latency);
            if let Some(start) = report.start {
                report
                    .timeline
                    .push((latency, nanos(due.saturating_duration_since(start))));
            }
            if !(200..300).contains(&r.status) {
                report.non_2xx += 1;
            }
        }
        if closed {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn run(args: &Args) -> Result<Report, String> {
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        return Err(format!("--rate {}: must be above 0", args.rate));
    }
    if !(args.duration > 0.0) || args.connections == 0 {
        return Err("--duration and --connections must be above 0".into());
    }
    let (addr, path) = parse_url(&args.url)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: openloop\r\n\r\n");
    let request = request.as_bytes();
    // SAFETY: PR_SET_TIMERSLACK takes a value and has no memory effects. Without it a ppoll
    // timeout may end up to 50 µs late.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };

    let mut conns = (0..args.connections)
        .map(|_| Conn::open(addr))
        .collect::<Result<Vec<_>, _>>()?;
    let total = (args.rate * args.duration).round() as u64;
    let spacing_ns = 1e9 / args.rate;
    let start = Instant::now() + Duration::from_millis(10);
    let due_at = |i: u64| start + Duration::from_nanos((i as f64 * spacing_ns) as u64);
    let load_end = due_at(total);
    let give_up = load_end + Duration::from_secs_f64(args.timeout);
    let mut report = Report {
        scheduled: total,
        latencies: Vec::with_capacity(total as usize),
        schedule_lag: Vec::with_capacity(total as usize),
        start: (args.slowest > 0).then_some(start),
        ..Report::default()
    };
    let mut next = 0u64;
    let mut polled: Vec<libc::pollfd> = Vec::with_capacity(conns.len());
    let mut polled_conn: Vec<usize> = Vec::with_capacity(conns.len());
    loop {
        let now = Instant::now();
        while next < total && due_at(next) <= now {
            let due = due_at(next);
            report.schedule_lag.push(nanos(now - due));
            let conn = (next % conns.len() as u64) as usize;
            conns[conn].due.push_back(due);
            next += 1;
        }
        for i in 0..conns.len() {
            if let Err(e) = conns[i].send(request) {
                reopen(&mut conns[i], addr, &e, &mut report)?;
            }
        }
        let outstanding: usize = conns.iter().map(|c| c.due.len()).sum();
        if next == total && outstanding == 0 {
            break;
        }
        if now >= give_up {
            report.timeouts = outstanding as u64;
            break;
        }

        let wake = if next < total { due_at(next) } else { give_up };
        let mut wait = wake.saturating_duration_since(now);
        polled.clear();
        polled_conn.clear();
        for (i, c) in conns.iter().enumerate() {
            let events = match c.wire {
                _ if c.due.is_empty() => continue,
                Wire::Sent => libc::POLLIN,
                Wire::Writing(_) => libc::POLLOUT,
                Wire::Idle => {
                    // Reopened with requests queued: send them on the next turn.
                    wait = Duration::ZERO;
                    continue;
                }
            };
            polled.push(libc::pollfd {
                fd: c.stream.as_raw_fd(),
                events,
                revents: 0,
            });
            polled_conn.push(i);
        }
        let timeout = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `polled` holds `polled.len()` initialised pollfds of open sockets.
        let ready = unsafe {
            libc::ppoll(
                polled.as_mut_ptr(),
                polled.len() as libc::nfds_t,
                &timeout,
                std::ptr::null(),
            )
        };
        if ready < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != ErrorKind::Interrupted {
                return Err(format!("ppoll: {e}"));
            }
            continue;
        }
        if ready == 0 {
            continue;
        }
        let now = Instant::now();
        for (p, &i) in polled.iter().zip(&polled_conn) {
            if p.revents == 0 {
                continue;
            }
            let conn = &mut conns[i];
            let result = match conn.wire {
                Wire::Sent => conn.receive(now, &mut report),
                _ => conn.send(request),
            };
            if let Err(e) = result {
                reopen(conn, addr, &e, &mut report)?;
            }
        }
    }
    report.elapsed = Instant::now().saturating_duration_since(start);
    Ok(report)
}

/// The connection failed or was closed: its request on the wire is lost (an error), the
/// others are sent on a new connection.
fn reopen(
    conn: &mut Conn,
    addr: SocketAddr,
    why: &std::io::Error,
    report: &mut Report,
) -> Result<(), String> {
    if report.errors == 0 {
        eprintln!("openloop: first error: {why}");
    }
    if conn.wire != Wire::Idle {
        conn.due.pop_front();
        report.errors += 1;
    }
    let due = std::mem::take(&mut conn.due);
    *conn = Conn::open(addr)?;
    conn.due = due;
    report.reconnects += 1;
    Ok(())
}

/// The value at or below which `q` percent of `sorted` lie (nearest rank).
fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    // (Less a hair, so that 99.9% of 1,000 is the 999th and not, by rounding, the 1,000th.)
    let rank = (q / 100.0 * sorted.len() as f64 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Report {
    fn print(mut self, args: &Args, out: &mut impl Write) -> std::io::Result<()> {
        self.latencies.sort_unstable();
        self.schedule_lag.sort_unstable();
        let ms = |ns: u64| ns as f64 / 1e6;
        let lat = |q| ms(percentile(&self.latencies, q));
        let answered = self.latencies.len() as u64;
        let rps = answered as f64 / self.elapsed.as_secs_f64();
        writeln!(
            out,
            "{answered} of {} requests answered in {:.2} s ({rps:.0}/s; target {:.0}/s over {} connections)",
            self.scheduled,
            self.elapsed.as_secs_f64(),
            args.rate,
            args.connections
        )?;
        writeln!(
            out,
            "latency from when due: p50 {:.3} ms  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  p99.99 {:.3}  max {:.3}",
            lat(50.0),
            lat(90.0),
            lat(99.0),
            lat(99.9),
            lat(99.99),
            ms(self.latencies.last().copied().unwrap_or(0))
        )?;
        writeln!(
            out,
            "errors {} (reconnects {}), timeouts {}, non-2xx {}; generator's own lateness p99 {:.3} ms, max {:.3} ms",
            self.errors,
            self.reconnects,
            self.timeouts,
            self.non_2xx,
            ms(percentile(&self.schedule_lag, 99.0)),
            ms(self.schedule_lag.last().copied().unwrap_or(0))
        )?;
        if args.slowest > 0 {
            self.timeline
                .sort_unstable_by_key(|&(latency, _)| std::cmp::Reverse(latency));
            self.timeline.truncate(args.slowest);
            self.timeline.sort_unstable_by_key(|&(_, due)| due);
            writeln!(
                out,
                "the {} slowest, in the order they were due:",
                self.timeline.len()
            )?;
            for (latency, due) in &self.timeline {
                writeln!(
                    out,
                    "  due at {:9.3} ms  latency {:7.3} ms",
                    ms(*due),
                    ms(*latency)
                )?;
            }
        }
        writeln!(
            out,
            "JSON {{\"scheduled\": {}, \"requests\": {answered}, \"errors\": {}, \"timeouts\": {}, \
             \"non_2xx\": {}, \"duration_s\": {:.6}, \"rps\": {rps:.1}, \"target_rps\": {}, \
             \"p50_ms\": {:.4}, \"p90_ms\": {:.4}, \"p99_ms\": {:.4}, \"p999_ms\": {:.4}, \
             \"p9999_ms\": {:.4}, \"max_ms\": {:.4}, \"schedule_lag_p99_ms\": {:.4}, \
             \"schedule_lag_max_ms\": {:.4}}}",
            self.scheduled,
            self.errors,
            self.timeouts,
            self.non_2xx,
            self.elapsed.as_secs_f64(),
            args.rate,
            lat(50.0),
            lat(90.0),
            lat(99.0),
            lat(99.9),
            lat(99.99),
            ms(self.latencies.last().copied().unwrap_or(0)),
            ms(percentile(&self.schedule_lag, 99.0)),
            ms(self.schedule_lag.last().copied().unwrap_or(0)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 50.0), 500);
        assert_eq!(percentile(&v, 99.9), 999);
        assert_eq!(percentile(&v, 100.0), 1000);
        assert_eq!(percentile(&[7], 99.99), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn urls_name_an_address_and_a_path() {
        let (addr, path) = parse_url("http://127.0.0.1:8080/a/b?c").unwrap();
        assert_eq!(addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(path, "/a/b?c");
        assert_eq!(parse_url("http://[::1]:80").unwrap().1, "/");
        assert!(parse_url("https://127.0.0.1:1/").is_err());
        assert!(parse_url("http://localhost:1/").is_err());
    }

    /// A server that answers every request after `delay`, one connection: latency is counted
    /// from when a request was due, so requests queued behind a slow one are charged for it.
    #[test]
    fn latency_counts_from_when_a_request_was_due() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = s.read(&mut chunk).unwrap();
                if n == 0 {
                    return; // the client is done
                }
                buf.extend_from_slice(&chunk[..n]);
                while let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.drain(..i + 4);
                    std::thread::sleep(Duration::from_millis(20));
                    s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .unwrap();
                }
            }
        });
        // 100 requests a second over one connection whose server takes 20 ms each: the
        // connection can carry only 50 a second, so the queue (and latency) grows.
        let args = Args {
            url: format!("http://{addr}/"),
            rate: 100.0,
            duration: 0.2,
            connections: 1,
            timeout: 5.0,
            slowest: 3,
        };
        let mut report = run(&args).unwrap();
        server.join().unwrap();
        assert_eq!(report.latencies.len(), 20);
        // The slowest come last: the queue only grows.
        let mut printed = Vec::new();
        Report {
            latencies: report.latencies.clone(),
            timeline: report.timeline.clone(),
            ..Report::default()
        }
        .print(&args, &mut printed)
        .unwrap();
        let printed = String::from_utf8(printed).unwrap();
        let slowest: Vec<&str> = printed.lines().filter(|l| l.contains("due at")).collect();
        assert_eq!(slowest.len(), 3, "{printed}");
        assert!(slowest[2].contains("due at   190.000 ms"), "{printed}");
        assert_eq!((report.errors, report.timeouts), (0, 0));
        report.latencies.sort_unstable();
        let first = Duration::from_nanos(report.latencies[0]);
        let last = Duration::from_nanos(report.latencies[19]);
        assert!(first >= Duration::from_millis(20), "{first:?}");
        // The 20th request was due at 190 ms and answered at ~400 ms.
        assert!(last >= Duration::from_millis(180), "{last:?}");
    }
}
