//! Scratch directories under the system's temporary directory, for files a test writes
//! (configs, access logs, sockets). Shared by `common` and `e2e`.

use std::path::PathBuf;
use std::time::Instant;

/// A new, empty directory named after the test process, `tag` and a random suffix.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "legate-e2e-{}-{tag}-{}",
        std::process::id(),
        fastrand_u32()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A directory of `temp_dir`'s that is removed, with what a test wrote in it, when dropped
/// (also when the test fails).
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(tag: &str) -> ScratchDir {
        ScratchDir(temp_dir(tag))
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fastrand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish() as u32
}
