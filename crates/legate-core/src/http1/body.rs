//! A message body's framing and its decoding from a connection's read buffer:
//! `content-length`, chunked (extensions skipped whatever their length, trailers bounded and
//! dropped), or — for a response only — everything up to the connection's end.

use bytes::{Buf, Bytes, BytesMut};

use super::Malformed;

/// How a message's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// A response with neither `content-length` nor chunked coding: the body ends with the
    /// connection.
    UntilClose,
}

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
pub struct Decoder {
    state: State,
    /// The most trailer bytes accepted (the header limit).
    max_trailer_bytes: usize,
}

#[derive(Debug)]
enum State {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

/// The most hex digits of a chunk size (2^64 - 1).
const MAX_SIZE_DIGITS: u8 = 16;

impl Decoder {
    pub fn new(framing: Framing, max_trailer_bytes: usize) -> Decoder {
        let state = match framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunk::Size { size: 0, digits: 0 }),
            Framing::UntilClose => State::UntilClose,
        };
        Decoder {
            state,
            max_trailer_bytes,
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The connection has ended: whether that ends the body (one delimited by the
    /// connection's end), rather than cutting it short.
    pub fn end_at_close(&mut self) -> bool {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                true
            }
            _ => false,
        }
    }

    /// The next piece of body in `buf`: `Ok(Some(data))`, `Ok(None)` when `buf` holds no more
    /// of it (more must be read unless [`Decoder::is_done`]). Consumes what it decodes.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, Malformed> {
        loop {
            match &mut self.state {
                State::Done => return Ok(None),
                State::UntilClose => {
                    return Ok((!buf.is_empty()).then(|| buf.split().freeze()));
                }
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
fn step(chunk: Chunk, byte: u8, max_trailer_bytes: usize) -> Result<Option<Chunk>, Malformed> {
    use Chunk::*;
    let next = match chunk {
        Size { size, digits } => match hex(byte) {
            Some(d) if digits < MAX_SIZE_DIGITS => Size {
                size: size << 4 | d,
                digits: digits + 1,
            },
            Some(_) => return Err(Malformed),
            None if digits == 0 => return Err(Malformed),
            None => return after_size(size, byte),
        },
        AfterSize { size } => return after_size(size, byte),
        Extension { size } => match byte {
            b'\n' => return Ok(Some(chunk_start(size))),
            _ => Extension { size },
        },
        SizeLf { size } => match byte {
            b'\n' => return Ok(Some(chunk_start(size))),
            _ => return Err(Malformed),
        },
        Data { .. } => unreachable!("data is taken whole"),
        DataCr => match byte {
            b'\r' => DataLf,
            b'\n' => Size { size: 0, digits: 0 },
            _ => return Err(Malformed),
        },
        DataLf => match byte {
            b'\n' => Size { size: 0, digits: 0 },
            _ => return Err(Malformed),
        },
        Trailers { line, total, cr } => {
            if total + 1 > max_trailer_bytes {
                return Err(Malformed);
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

fn after_size(size: u64, byte: u8) -> Result<Option<Chunk>, Malformed> {
    Ok(Some(match byte {
        b' ' | b'\t' => Chunk::AfterSize { size },
        b';' => Chunk::Extension { size },
        b'\r' => Chunk::SizeLf { size },
        b'\n' => chunk_start(size),
        _ => return Err(Malformed),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `raw` fed `step` bytes at a time; the body, or the error.
    fn decode(framing: Framing, raw: &[u8], step: usize) -> Result<(Vec<u8>, usize), Malformed> {
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
                Malformed,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let trailers = format!("0\r\nx: {}\r\n\r\n", "a".repeat(100));
        assert_eq!(
            decode(Framing::Chunked, trailers.as_bytes(), 10).unwrap_err(),
            Malformed
        );
    }
}
