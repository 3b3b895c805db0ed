//! A request body: decoding it from the connection's bytes (`content-length` or chunked —
//! extensions skipped whatever their length, trailers bounded), and handing it over to
//! whoever reads it (usually the upstream connection's task) through a one-frame slot that
//! makes the connection read only as fast as the body is consumed.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Frame, SizeHint};

use super::head::Framing;

/// Why a request body ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Bad framing: a chunk size that is not hex or overflows, a missing CRLF, trailers over
    /// the header limit.
    Malformed,
    /// The client closed the connection before the body's end.
    Incomplete,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BodyError::Malformed => "malformed request body",
            BodyError::Incomplete => "connection closed before the request body ended",
        })
    }
}

impl std::error::Error for BodyError {}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading the size's hex digits (`digits` so far).
    Size {
        size: u64,
        digits: u8,
    },
    /// After the size: whitespace, then an extension or the line's end.
    AfterSize {
        size: u64,
    },
    /// Skipping `;extension` up to the line's end.
    Extension {
        size: u64,
    },
    /// Expecting the LF of the size line.
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    /// Expecting the CRLF after a chunk's data.
    DataCr,
    DataLf,
    /// Trailer section lines after the last chunk, `line` bytes into the current line.
    Trailers {
        line: usize,
        total: usize,
        cr: bool,
    },
}

/// Decodes a body from the connection's read buffer.
#[derive(Debug)]
pub(super) struct Decoder {
    state: State,
    /// The most trailer bytes accepted (the header limit).
    max_trailer_bytes: usize,
}

#[derive(Debug)]
enum State {
    Length(u64),
    Chunked(Chunk),
    Done,
}

/// The most hex digits of a chunk size (2^64 - 1).
const MAX_SIZE_DIGITS: u8 = 16;

impl Decoder {
    pub(super) fn new(framing: Framing, max_trailer_bytes: usize) -> Decoder {
        let state = match framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunk::Size { size: 0, digits: 0 }),
        };
        Decoder {
            state,
            max_trailer_bytes,
        }
    }

    pub(super) fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The next piece of body in `buf`: `Ok(Some(data))`, `Ok(None)` when `buf` holds no more
    /// of it (more must be read unless [`Decoder::is_done`]). Consumes what it decodes.
    pub(super) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, BodyError> {
        loop {
            match &mut self.state {
                State::Done => return Ok(None),
                State::Length(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = (*left).min(buf.len() as u64) as usize;
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = State::Done;
                    }
                    return Ok(Some(buf.split_to(n).freeze()));
                }
                State::Chunked(chunk) => {
                    if let Chunk::Data { left } = chunk {
                        if buf.is_empty() {
                            return Ok(None);
                        }
                        let n = (*left).min(buf.len() as u64) as usize;
                        *left -= n as u64;
                        if *left == 0 {
                            *chunk = Chunk::DataCr;
                        }
                        return Ok(Some(buf.split_to(n).freeze()));
                    }
                    let Some(&byte) = buf.first() else {
                        return Ok(None);
                    };
                    buf.advance(1);
                    match step(*chunk, byte, self.max_trailer_bytes)? {
                        Some(next) => *chunk = next,
                        None => self.state = State::Done,
                    }
                }
            }
        }
    }
}

/// One byte of a chunked body's framing; `None` when the body has ended.
fn step(chunk: Chunk, byte: u8, max_trailer_bytes: usize) -> Result<Option<Chunk>, BodyError> {
    use Chunk::*;
    let next = match chunk {
        Size { size, digits } => match hex(byte) {
            Some(d) if digits < MAX_SIZE_DIGITS => Size {
                size: size << 4 | d,
                digits: digits + 1,
            },
            Some(_) => return Err(BodyError::Malformed),
            None if digits == 0 => return Err(BodyError::Malformed),
            None => return after_size(size, byte),
        },
        AfterSize { size } => return after_size(size, byte),
        Extension { size } => match byte {
            b'\n' => return Ok(Some(chunk_start(size))),
            _ => Extension { size },
        },
        SizeLf { size } => match byte {
            b'\n' => return Ok(Some(chunk_start(size))),
            _ => return Err(BodyError::Malformed),
        },
        Data { .. } => unreachable!("data is taken whole"),
        DataCr => match byte {
            b'\r' => DataLf,
            b'\n' => Size { size: 0, digits: 0 },
            _ => return Err(BodyError::Malformed),
        },
        DataLf => match byte {
            b'\n' => Size { size: 0, digits: 0 },
            _ => return Err(BodyError::Malformed),
        },
        Trailers { line, total, cr } => {
            if total + 1 > max_trailer_bytes {
                return Err(BodyError::Malformed);
            }
            match byte {
                // An empty line ends the trailer section, and the body.
                b'\n' if line == 0 => return Ok(None),
                b'\n' => Trailers {
                    line: 0,
                    total: total + 1,
                    cr: false,
                },
                b'\r' if line == 0 && !cr => Trailers {
                    line,
                    total: total + 1,
                    cr: true,
                },
                _ => Trailers {
                    line: line + 1,
                    total: total + 1,
                    cr: false,
                },
            }
        }
    };
    Ok(Some(next))
}

fn after_size(size: u64, byte: u8) -> Result<Option<Chunk>, BodyError> {
    Ok(Some(match byte {
        b' ' | b'\t' => Chunk::AfterSize { size },
        b';' => Chunk::Extension { size },
        b'\r' => Chunk::SizeLf { size },
        b'\n' => chunk_start(size),
        _ => return Err(BodyError::Malformed),
    }))
}

/// The state after a size line: the chunk's data, or the trailers after the last chunk.
fn chunk_start(size: u64) -> Chunk {
    if size == 0 {
        Chunk::Trailers {
            line: 0,
            total: 0,
            cr: false,
        }
    } else {
        Chunk::Data { left: size }
    }
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

/// The slot between the connection (which decodes) and the body's reader.
#[derive(Debug, Default)]
struct Slot {
    item: Option<Result<Bytes, BodyError>>,
    /// The decoder has seen the body's end (after `item` is taken the body is over).
    ended: bool,
    /// The reader dropped the body: nothing more will be taken.
    reader_gone: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

type Shared = Arc<Mutex<Slot>>;

/// A request body as the connection manager sees it: empty, or streamed from an HTTP/1
/// connection.
#[derive(Debug)]
pub struct RequestBody {
    shared: Option<Shared>,
    /// Bytes still to come, for a `content-length` body.
    left: Option<u64>,
}

/// The connection's end of a streamed body.
#[derive(Debug)]
pub(super) struct BodySender {
    shared: Shared,
}

impl RequestBody {
    pub(super) fn empty() -> RequestBody {
        RequestBody {
            shared: None,
            left: Some(0),
        }
    }

    pub(super) fn channel(framing: Framing) -> (RequestBody, BodySender) {
        let shared = Shared::default();
        let left = match framing {
            Framing::Length(n) => Some(n),
            _ => None,
        };
        let body = RequestBody {
            shared: Some(shared.clone()),
            left,
        };
        (body, BodySender { shared })
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(shared) = &self.shared else {
            return Poll::Ready(None);
        };
        let mut slot = shared.lock().unwrap_or_else(|e| e.into_inner());
        match slot.item.take() {
            Some(item) => {
                if let Some(w) = slot.writer.take() {
                    w.wake();
                }
                drop(slot);
                if let (Ok(data), Some(left)) = (&item, self.left.as_mut()) {
                    *left = left.saturating_sub(data.len() as u64);
                }
                Poll::Ready(Some(item.map(Frame::data)))
            }
            None if slot.ended => Poll::Ready(None),
            None => {
                slot.reader = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.shared {
            None => true,
            Some(shared) => {
                let slot = shared.lock().unwrap_or_else(|e| e.into_inner());
                slot.ended && slot.item.is_none()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            let mut slot = shared.lock().unwrap_or_else(|e| e.into_inner());
            slot.reader_gone = true;
            slot.item = None;
            if let Some(w) = slot.writer.take() {
                w.wake();
            }
        }
    }
}

/// What the reader's side allows the connection to do next.
pub(super) enum Room {
    /// The slot is free: one more piece may be sent.
    Free,
    /// The reader dropped the body.
    Gone,
}

impl BodySender {
    /// Ready when the previous piece has been taken.
    pub(super) fn poll_room(&self, cx: &mut Context<'_>) -> Poll<Room> {
        let mut slot = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if slot.reader_gone {
            Poll::Ready(Room::Gone)
        } else if slot.item.is_none() {
            Poll::Ready(Room::Free)
        } else {
            slot.writer = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// Hands over a piece of body (or its error); call after `poll_room` said `Free`.
    pub(super) fn send(&self, item: Result<Bytes, BodyError>) {
        let mut slot = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        slot.ended |= item.is_err();
        slot.item = Some(item);
        if let Some(w) = slot.reader.take() {
            w.wake();
        }
    }

    /// The body's end.
    pub(super) fn finish(&self) {
        let mut slot = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        slot.ended = true;
        if let Some(w) = slot.reader.take() {
            w.wake();
        }
    }
}

impl Drop for BodySender {
    /// A body whose connection went away without finishing it ends in an error.
    fn drop(&mut self) {
        let mut slot = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if !slot.ended {
            slot.ended = true;
            if slot.item.is_none() {
                slot.item = Some(Err(BodyError::Incomplete));
            }
            if let Some(w) = slot.reader.take() {
                w.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `raw` fed `step` bytes at a time; the body, or the error.
    fn decode(framing: Framing, raw: &[u8], step: usize) -> Result<(Vec<u8>, usize), BodyError> {
        let mut decoder = Decoder::new(framing, 64);
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        for piece in raw.chunks(step) {
            buf.extend_from_slice(piece);
            while let Some(data) = decoder.decode(&mut buf)? {
                body.extend_from_slice(&data);
            }
            if decoder.is_done() {
                break;
            }
        }
        assert!(decoder.is_done(), "the body did not end");
        Ok((body, buf.len()))
    }

    #[test]
    fn decodes_lengths_and_chunks_fed_in_any_pieces() {
        for step in [1, 2, 3, 7, 100] {
            assert_eq!(
                decode(Framing::Length(5), b"helloGET", step).unwrap().0,
                b"hello"
            );
            let raw = b"5;ext=1\r\nhello\r\n6 \r\n world\r\n0\r\nx-t: 1\r\n\r\nNEXT";
            let (body, _) = decode(Framing::Chunked, raw, step).unwrap();
            assert_eq!(body, b"hello world", "step {step}");
            let (body, _) = decode(Framing::Chunked, b"3\nabc\n0\n\n", step).unwrap();
            assert_eq!(body, b"abc");
        }
        let (_, left) = decode(Framing::Chunked, b"1\r\na\r\n0\r\n\r\nNEXT", 100).unwrap();
        assert_eq!(left, 4, "bytes after the body stay for the next request");
    }

    #[test]
    fn skips_extensions_of_any_length() {
        let mut raw = b"5;".to_vec();
        raw.extend(std::iter::repeat_n(b'e', 100_000));
        raw.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        assert_eq!(decode(Framing::Chunked, &raw, 4096).unwrap().0, b"hello");
    }

    #[test]
    fn refuses_bad_framing() {
        for raw in [
            &b"ffffffffffffffffff\r\n"[..],
            b"-5\r\n",
            b"0x5\r\n",
            b"5g\r\n",
            b"\r\n",
            b"1\r\nab\r\n",
        ] {
            assert_eq!(
                decode(Framing::Chunked, raw, 1).unwrap_err(),
                BodyError::Malformed,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let trailers = format!("0\r\nx: {}\r\n\r\n", "a".repeat(100));
        assert_eq!(
            decode(Framing::Chunked, trailers.as_bytes(), 10).unwrap_err(),
            BodyError::Malformed
        );
    }
}
