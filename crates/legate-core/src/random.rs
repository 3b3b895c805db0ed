//! Random bytes for TLS: the operating system's, fetched 256 bytes at a time per thread.
//!
//! A TLS 1.3 handshake with two session tickets asks for random bytes seven times (the server
//! random, each ticket's nonce, age offset and encryption nonce). Through ring's
//! `SystemRandom` each is a `getrandom(2)` call; from a thread's buffer, one call serves ~20
//! handshakes. The bytes are the kernel's CSPRNG output all the same, each handed out once and
//! wiped from the buffer as it is; a request larger than half the buffer goes to the kernel
//! directly. Key generation and signatures inside ring keep using ring's own source.

use std::cell::RefCell;

use ring::error::Unspecified;
use ring::rand::{SecureRandom as _, SystemRandom};

const POOL: usize = 256;

struct Pool {
    bytes: [u8; POOL],
    /// Bytes from here on are unused.
    next: usize,
}

thread_local! {
    static POOL_OF_THREAD: RefCell<Pool> = const {
        RefCell::new(Pool { bytes: [0; POOL], next: POOL })
    };
}

/// Fills `dest` with random bytes; fails only if the kernel has none to give.
pub fn fill(dest: &mut [u8]) -> Result<(), Unspecified> {
    if dest.len() > POOL / 2 {
        return SystemRandom::new().fill(dest);
    }
    POOL_OF_THREAD.with_borrow_mut(|pool| {
        if POOL - pool.next < dest.len() {
            SystemRandom::new().fill(&mut pool.bytes)?;
            pool.next = 0;
        }
        let taken = &mut pool.bytes[pool.next..pool.next + dest.len()];
        dest.copy_from_slice(taken);
        taken.fill(0);
        pool.next += dest.len();
        Ok(())
    })
}

/// [`fill`] as rustls's source of randomness (the providers Legate builds use it).
#[derive(Debug)]
pub struct Buffered;

impl rustls::crypto::SecureRandom for Buffered {
    fn fill(&self, buf: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
        fill(buf).map_err(|_| rustls::crypto::GetRandomFailed)
    }
}

#[cfg(test)]
mod tests {
    use super::{POOL, fill};

    /// Draws across many refills of the pool, and ones that bypass it, are all different.
    #[test]
    fn bytes_are_never_handed_out_twice() {
        let mut seen = std::collections::HashSet::new();
        for len in [12, 32, 4, 16]
            .repeat(40)
            .into_iter()
            .chain([POOL / 2 + 1, 1000])
        {
            let mut draw = vec![0u8; len];
            fill(&mut draw).unwrap();
            assert!(seen.insert(draw), "a repeated {len}-byte draw");
        }
        assert_eq!(seen.len(), 162);
    }
}
