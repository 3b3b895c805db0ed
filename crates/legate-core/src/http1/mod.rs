//! The HTTP/1.1 wire pieces both of Legate's codecs use — the downstream server's
//! (`legate-http`) and the upstream client's (`legate-upstream`): finding a head's end and its
//! lines, header fields as Envoy's codec takes them, a body's framing and decoding, and writing
//! header fields and chunked coding.

mod body;
mod encode;
mod head;
pub mod names;
mod scan;

pub use body::{Decoder, Framing};
pub use encode::{CHUNK_END, LAST_CHUNK, chunk_size, put_fields};
pub use head::{
    Connection, Fields, Lines, Seen, content_length, find_end, has_token, header_field,
    leading_blank_lines, resume_at, tokens,
};

/// Bytes that break HTTP/1.1's grammar (the caller knows what to answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed;

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("malformed HTTP/1.1")
    }
}

impl std::error::Error for Malformed {}
