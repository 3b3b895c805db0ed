//! The HTTP/1.1 wire pieces both of Legate's codecs use — the downstream server's
//! (`legate-http`) and the upstream client's (`legate-upstream`): finding a head's end and its
//! lines, header fields as Envoy's codec takes them, a body's framing and decoding, and chunked
//! coding.

mod body;
mod chunk;
mod head;

pub use body::{Decoder, Framing};
pub use chunk::{CHUNK_END, LAST_CHUNK, chunk_size};
pub use head::{
    Lines, content_length, find_end, has_token, header_field, leading_blank_lines, resume_at,
    tokens,
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
