//! Chunked coding on the way out: the size line before each chunk, the CRLF after it, and the
//! last chunk.

use bytes::{BufMut, BytesMut};

/// The size line before a chunk of `len` bytes.
pub fn chunk_size(out: &mut BytesMut, len: usize) {
    use std::fmt::Write as _;
    let _ = write!(Hex(out), "{len:x}\r\n");
}

/// What follows a chunk's data.
pub const CHUNK_END: &[u8] = b"\r\n";
/// The last chunk, with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

struct Hex<'a>(&'a mut BytesMut);

impl std::fmt::Write for Hex<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.put_slice(s.as_bytes());
        Ok(())
    }
}
