//! Helpers shared by the end-to-end tests: finding the binaries, running a validation.

#![allow(dead_code)]

mod scratch;
#[allow(unused_imports)]
pub use scratch::ScratchDir;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The outcome of one `--mode validate` run.
pub struct Validation {
    pub accepted: bool,
    /// Killed by a signal (a crash or a stack overflow), or did not finish in time.
    pub crashed: bool,
    pub output: String,
}

pub enum Validator {
    Legate(PathBuf),
    Envoy(PathBuf),
}

pub fn legate() -> Validator {
    Validator::Legate(PathBuf::from(env!("CARGO_BIN_EXE_legate")))
}

/// Real Envoy, if installed (`$ENVOY`, else the project's `.venv`).
pub fn envoy() -> Option<Validator> {
    let path = std::env::var_os("ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/envoy"));
    if path.is_file() {
        return Some(Validator::Envoy(path));
    }
    assert!(
        std::env::var("LEGATE_REQUIRE_ENVOY").as_deref() != Ok("1"),
        "LEGATE_REQUIRE_ENVOY=1 but no Envoy at {}",
        path.display()
    );
    eprintln!(
        "note: Envoy not found at {}; differential checks skipped",
        path.display()
    );
    None
}

/// Each Envoy gets its own base id so that parallel tests do not collide on shared memory.
fn next_base_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    1000 + std::process::id() % 10_000 * 10 + NEXT.fetch_add(1, Ordering::Relaxed) % 10
}

impl Validator {
    pub fn validate(&self, file: &Path) -> Validation {
        let mut cmd = match self {
            Validator::Legate(bin) => {
                let mut c = Command::new(bin);
                c.args(["--mode", "validate", "-c"]).arg(file);
                c
            }
            Validator::Envoy(bin) => {
                let mut c = Command::new(bin);
                c.args(["--mode", "validate", "--log-level", "error", "--base-id"])
                    .arg(next_base_id().to_string())
                    .arg("-c")
                    .arg(file);
                c
            }
        };
        run(cmd.stdin(Stdio::null()))
    }
}

/// Runs a command to completion with a generous bound, so that a hang fails the test
/// instead of stalling it. Output is drained on threads so a chatty child cannot block.
pub fn run(cmd: &mut Command) -> Validation {
    use std::io::Read;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut output = String::from_utf8_lossy(&stdout.join().unwrap()).into_owned();
    output.push_str(&String::from_utf8_lossy(&stderr.join().unwrap()));
    // Envoy echoes a whole refused config; keep what a failure message needs.
    if output.len() > 4000 {
        let tail = output.len() - 2000;
        output = format!(
            "{}\n...\n{}",
            &output[..output.floor_char_boundary(2000)],
            &output[output.ceil_char_boundary(tail)..]
        );
    }
    match status {
        Some(s) => Validation {
            accepted: s.success(),
            crashed: s.code().is_none(),
            output,
        },
        None => Validation {
            accepted: false,
            crashed: true,
            output: format!("timed out\n{output}"),
        },
    }
}
