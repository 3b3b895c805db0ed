//! The process's allocator: mimalloc.
//!
//! Measured against glibc's malloc with `bench/instructions.sh` (callgrind, instructions per
//! keep-alive request): glibc spent ~18% of the proxy's user-space instructions in
//! `malloc`/`free`, because a request's few large allocations (its boxed futures, the upstream
//! codec's 8 KiB read buffer) are above glibc's per-thread cache and take its slow path.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sets the allocator's options before it reads them, which it does in its constructor, before
/// `main`: the binary registers this as an earlier constructor.
///
/// mimalloc's arenas are committed eagerly by default, which on an idle proxy showed as
/// ~6 MB more anonymous RSS than commit on demand (idle RssAnon 10.9 -> 5.3 MB) for no
/// measured difference in instructions per request.
pub extern "C" fn configure() {
    // SAFETY: setting an option has no preconditions.
    unsafe { libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0) }
}

/// Returns the memory freed so far to the OS (after the configuration is loaded: its
/// parse trees are garbage by then).
pub fn release_free_memory() {
    // SAFETY: mi_collect only frees mimalloc's own empty pages; it has no preconditions.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// `mi_option_arena_eager_commit` in mimalloc 3's `mimalloc.h` (the bindings do not name it).
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
