//! Where access-log lines go: one background writer thread per destination (a file path,
//! stdout or stderr), shared by every logger that writes there.
//!
//! As in Envoy's `AccessLogFileImpl`, the worker that logs never touches the file: it formats
//! the line and hands it over. Here the hand-over is a bounded channel; when it is full (the
//! disk cannot keep up) the line is dropped and counted rather than blocking traffic. The
//! writer buffers and flushes when 64 KiB have accumulated or every `file_flush_interval`
//! (bootstrap field, default 1 s), and reopens the file on request (SIGUSR1 /
//! `/reopen_logs`), which is how log rotation works with Envoy.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// Lines that may wait for one writer before new ones are dropped.
const QUEUE_LINES: usize = 16 * 1024;
/// Envoy's `min_flush_size_`: the buffer is written out once it holds this much.
const FLUSH_BYTES: usize = 64 * 1024;

/// Where a logger writes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Destination {
    File(PathBuf),
    Stdout,
    Stderr,
}

enum Message {
    Line(String),
    /// Look at the flags (reopen) now rather than at the next flush tick.
    Wake,
}

/// Counters of one destination, shared with its writer thread.
#[derive(Debug, Default)]
struct Counters {
    dropped: AtomicU64,
    written: AtomicU64,
    write_failed: AtomicU64,
    reopen_failed: AtomicU64,
}

/// One open destination and its writer thread. The thread ends (after a last flush) when the
/// last logger holding it is dropped.
#[derive(Debug)]
pub struct LogFile {
    destination: Destination,
    sender: SyncSender<Message>,
    reopen: Arc<AtomicBool>,
    counters: Arc<Counters>,
}

impl LogFile {
    /// Queues one formatted line (written as is: formats carry their own newline). Never
    /// blocks; a full queue drops the line.
    pub fn write(&self, line: String) {
        match self.sender.try_send(Message::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn destination(&self) -> &Destination {
        &self.destination
    }

    /// Lines dropped because the writer could not keep up.
    pub fn dropped_lines(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Lines handed to the operating system.
    pub fn written_lines(&self) -> u64 {
        self.counters.written.load(Ordering::Relaxed)
    }

    /// Failed writes (Envoy's `access_log_file.write_failed`).
    pub fn write_failures(&self) -> u64 {
        self.counters.write_failed.load(Ordering::Relaxed)
    }

    /// Failed reopens (Envoy's `access_log_file.reopen_failed`); the old file stays in use.
    pub fn reopen_failures(&self) -> u64 {
        self.counters.reopen_failed.load(Ordering::Relaxed)
    }

    fn request_reopen(&self) {
        self.reopen.store(true, Ordering::Release);
        // Best effort: a full queue means the writer is busy and will see the flag soon.
        let _ = self.sender.try_send(Message::Wake);
    }
}

/// The process-wide registry of open destinations (Envoy's `AccessLogManager`): loggers that
/// name the same path share one file and one writer.
pub struct AccessLogFiles;

fn registry() -> &'static Mutex<HashMap<Destination, Weak<LogFile>>> {
    static FILES: OnceLock<Mutex<HashMap<Destination, Weak<LogFile>>>> = OnceLock::new();
    FILES.get_or_init(Default::default)
}

fn lock_registry() -> std::sync::MutexGuard<'static, HashMap<Destination, Weak<LogFile>>> {
    match registry().lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// `file_flush_interval` in milliseconds, read by every writer at each tick.
static FLUSH_INTERVAL_MS: AtomicU64 = AtomicU64::new(1000);
/// Lines dropped by writers that have since closed, so the total never goes down.
static RETIRED_DROPPED: AtomicU64 = AtomicU64::new(0);

impl AccessLogFiles {
    /// The writer for `destination`, opening the file (append, created 0644 like Envoy) and
    /// starting its thread if no logger uses it yet. Called at configuration time; the error
    /// is Envoy's `unable to open file '<path>': <reason>`.
    pub fn open(destination: Destination) -> Result<Arc<LogFile>, String> {
        let mut files = lock_registry();
        files.retain(|_, file| file.strong_count() > 0);
        if let Some(file) = files.get(&destination).and_then(Weak::upgrade) {
            return Ok(file);
        }
        let sink = Sink::open(&destination)?;
        let (sender, receiver) = mpsc::sync_channel(QUEUE_LINES);
        let reopen = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let writer = Writer {
            destination: destination.clone(),
            out: BufWriter::with_capacity(FLUSH_BYTES, sink),
            reopen: reopen.clone(),
            counters: counters.clone(),
        };
        std::thread::Builder::new()
            .name("legate-access-log".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| format!("unable to start the access log writer: {e}"))?;
        let file = Arc::new(LogFile {
            destination: destination.clone(),
            sender,
            reopen,
            counters,
        });
        files.insert(destination, Arc::downgrade(&file));
        Ok(file)
    }

    /// Reopens every open file (SIGUSR1, admin `/reopen_logs`): after a rotation renamed the
    /// file, the next lines go to a new file at the configured path.
    pub fn reopen_all() {
        for file in lock_registry().values().filter_map(Weak::upgrade) {
            file.request_reopen();
        }
    }

    /// Sets `file_flush_interval` for every writer (bootstrap; Envoy's default is 1 s).
    pub fn set_flush_interval(interval: Duration) {
        let ms = u64::try_from(interval.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        FLUSH_INTERVAL_MS.store(ms, Ordering::Relaxed);
    }

    /// Lines dropped by all writers since the process started.
    pub fn dropped_lines() -> u64 {
        let live: u64 = lock_registry()
            .values()
            .filter_map(Weak::upgrade)
            .map(|f| f.dropped_lines())
            .sum();
        live + RETIRED_DROPPED.load(Ordering::Relaxed)
    }
}

/// Reopens every access-log file; see [`AccessLogFiles::reopen_all`].
pub fn reopen_all() {
    AccessLogFiles::reopen_all();
}

impl Drop for LogFile {
    fn drop(&mut self) {
        RETIRED_DROPPED.fetch_add(self.dropped_lines(), Ordering::Relaxed);
    }
}

enum Sink {
    File(File),
    Stdout,
    Stderr,
}

impl Sink {
    fn open(destination: &Destination) -> Result<Sink, String> {
        match destination {
            Destination::File(path) => open_file(path)
                .map(Sink::File)
                .map_err(|e| format!("unable to open file '{}': {e}", path.display())),
            Destination::Stdout => Ok(Sink::Stdout),
            Destination::Stderr => Ok(Sink::Stderr),
        }
    }
}

fn open_file(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(path)
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::File(f) => f.write(buf),
            Sink::Stdout => io::stdout().lock().write(buf),
            Sink::Stderr => io::stderr().lock().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::File(f) => f.flush(),
            Sink::Stdout => io::stdout().lock().flush(),
            Sink::Stderr => io::stderr().lock().flush(),
        }
    }
}

/// The writer thread's state.
struct Writer {
    destination: Destination,
    out: BufWriter<Sink>,
    reopen: Arc<AtomicBool>,
    counters: Arc<Counters>,
}

impl Writer {
    fn run(mut self, receiver: mpsc::Receiver<Message>) {
        let mut last_flush = Instant::now();
        loop {
            let interval = Duration::from_millis(FLUSH_INTERVAL_MS.load(Ordering::Relaxed));
            let wait = interval.saturating_sub(last_flush.elapsed());
            match receiver.recv_timeout(wait) {
                Ok(message) => {
                    self.handle(message);
                    // Take what else is queued without waking up per line.
                    while let Ok(message) = receiver.try_recv() {
                        self.handle(message);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush();
                    return;
                }
            }
            if self.reopen.swap(false, Ordering::AcqRel) {
                self.flush();
                self.reopen_file();
                last_flush = Instant::now();
            } else if last_flush.elapsed() >= interval {
                self.flush();
                last_flush = Instant::now();
            }
        }
    }

    fn handle(&mut self, message: Message) {
        if let Message::Line(line) = message {
            match self.out.write_all(line.as_bytes()) {
                Ok(()) => {
                    self.counters.written.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    self.counters.write_failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn flush(&mut self) {
        if self.out.flush().is_err() {
            self.counters.write_failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn reopen_file(&mut self) {
        let Destination::File(path) = &self.destination else {
            return;
        };
        match open_file(path) {
            Ok(file) => *self.out.get_mut() = Sink::File(file),
            Err(_) => {
                self.counters.reopen_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
