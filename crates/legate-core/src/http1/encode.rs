//! A message on the way out: its header fields and the end of its head, and chunked coding
//! (the size line before each chunk, the CRLF after it, and the last chunk).

use bytes::{BufMut, BytesMut};
use http::HeaderMap;

/// Writes `headers` as `name: value` lines, then the blank line that ends the head.
pub fn put_fields(out: &mut BytesMut, headers: &HeaderMap) {
    for (name, value) in headers {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
}

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
