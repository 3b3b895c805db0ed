//! The process's allocator: mimalloc.
//!
//! Measured against glibc's malloc with `bench/instructions.sh` (callgrind, instructions per
//! keep-alive request): glibc spent ~18% of the proxy's user-space instructions in
//! `malloc`/`free`, because a request's few large allocations (its boxed futures, the upstream
//! codec's 8 KiB read buffer) are above glibc's per-thread cache and take its slow path.
//!
//! Built with `--features system-allocator`, Legate uses the C library's malloc instead, which
//! heap profilers that replace malloc (valgrind's DHAT and massif, heaptrack) can see.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: Mimalloc = Mimalloc;

/// mimalloc as Rust's allocator, through its plain entry points wherever they give the
/// alignment asked for.
///
/// The `mimalloc` crate's allocator calls `mi_malloc_aligned` for every allocation, which in
/// mimalloc 3 has a fast path only for blocks of up to 1 KiB: a larger block (a request's
/// boxed futures, header maps, read buffers) whose size class is not a power of two took the
/// over-allocating path — `alignment - 1` bytes more, sometimes the next size class, and the
/// block marked as holding interior pointers, which its `mi_free` then looks for. Every
/// mimalloc block is aligned to the word size, so `mi_malloc` serves any alignment up to it;
/// only the rare larger alignments (16 for `u128`, cache-line padding) go the aligned way.
/// `bench/instructions.sh`: 38,688 -> 37,568 instructions per proxied HTTP/1.1 request.
#[cfg_attr(feature = "system-allocator", allow(dead_code))]
pub struct Mimalloc;

/// The alignment every mimalloc block has (`MI_INTPTR_SIZE`).
#[cfg_attr(feature = "system-allocator", allow(dead_code))]
const WORD_ALIGN: usize = std::mem::size_of::<usize>();

// SAFETY: mimalloc's functions are thread-safe allocators honouring the sizes and alignments
// asked for (the plain ones only used where every block's word alignment suffices); `mi_free`
// takes blocks from any of them.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain calls into the allocator; see the impl's comment.
        unsafe {
            if layout.align() <= WORD_ALIGN {
                mi::mi_malloc(layout.size()) as *mut u8
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if layout.align() <= WORD_ALIGN {
                mi::mi_zalloc(layout.size()) as *mut u8
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (GlobalAlloc's contract).
        unsafe { mi::mi_free(ptr as *mut c_void) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout` (GlobalAlloc's contract).
        unsafe {
            if layout.align() <= WORD_ALIGN {
                mi::mi_realloc(ptr as *mut c_void, new_size) as *mut u8
            } else {
                mi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
            }
        }
    }
}

/// Sets the allocator's options before it reads them, which it does in its constructor, before
/// `main`: the binary registers this as an earlier constructor.
///
/// * mimalloc's arenas are committed eagerly by default, which on an idle proxy showed as
///   ~6 MB more anonymous RSS than commit on demand (idle RssAnon 10.9 -> 5.3 MB) for no
///   measured difference in instructions per request.
/// * mimalloc returns a freed page to the OS a while after it empties (1 s), and only when it
///   next allocates. Loading the configuration frees much, and a freed page still resident is
///   reused whole: when it then holds a few long-lived objects, all of its 64 KiB stay
///   resident. While loading, a page is returned as soon as it empties
///   ([`STARTUP_PURGE_DELAY_MS`]), so one reused later is fresh and only what is written to it
///   becomes resident: idle RssAnon 6.7 -> 5.8 MB with 10 ms (against 1 s), -> 4.1 MB with 0
///   (against 10 ms; the more frequent purges cost ~45 ms of the 0.79 s to be ready with
///   10,000 clusters). Serving goes back to mimalloc's delay ([`release_free_memory`]): with
///   10 ms, pages freed between bursts of new TLS connections were returned and faulted in
///   again (1.4 more page faults and ~7% more CPU per handshake).
///
/// They are defaults: mimalloc's own environment variables (`MIMALLOC_PURGE_DELAY=...`)
/// override them.
pub extern "C" fn configure() {
    // SAFETY: setting an option's default has no preconditions.
    unsafe {
        libmimalloc_sys::mi_option_set_default(ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set_default(PURGE_DELAY, STARTUP_PURGE_DELAY_MS);
    }
}

/// Returns the memory freed so far to the OS (after the configuration is loaded: its
/// parse trees are garbage by then), and sets the purge delay for serving (see [`configure`]).
pub fn release_free_memory() {
    // SAFETY: mi_collect only frees mimalloc's own empty pages; setting an option has no
    // preconditions.
    unsafe {
        libmimalloc_sys::mi_collect(true);
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            libmimalloc_sys::mi_option_set(PURGE_DELAY, SERVING_PURGE_DELAY_MS);
        }
    }
}

/// The purge delays (milliseconds) while loading (none) and while serving (mimalloc 3's default).
const STARTUP_PURGE_DELAY_MS: std::ffi::c_long = 0;
const SERVING_PURGE_DELAY_MS: std::ffi::c_long = 1000;

/// `mi_option_arena_eager_commit` and `mi_option_purge_delay` in mimalloc 3's `mimalloc.h`
/// (the bindings do not name them).
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every block has the alignment its layout asks for, on the plain path (word alignment
    /// and below) and the aligned one, for sizes on both sides of mimalloc's small blocks.
    #[test]
    fn blocks_have_the_alignment_asked_for() {
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1, 7, 8, 24, 100, 1000, 1025, 1300, 3000, 70_000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero size; each block is freed with the layout it was made with.
                unsafe {
                    let p = Mimalloc.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size}, alignment {align}");
                    p.write_bytes(0xa5, size);
                    let z = Mimalloc.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                    let grown = Mimalloc.realloc(p, layout, size * 3);
                    assert_eq!(grown as usize % align, 0);
                    assert!(
                        std::slice::from_raw_parts(grown, size)
                            .iter()
                            .all(|&b| b == 0xa5)
                    );
                    Mimalloc.dealloc(grown, Layout::from_size_align(size * 3, align).unwrap());
                    Mimalloc.dealloc(z, layout);
                }
            }
        }
    }
}
