//! What Envoy enforces on a downstream HTTP/2 connection and the `h2` codec does not, as a
//! layer between the socket and the codec that follows the frame headers going each way.
//!
//! Messaging errors end the connection: Envoy's default
//! (`override_stream_error_on_invalid_http_message` false) treats a malformed request
//! (RFC 9113 §8.1.1: a bad or missing pseudo-header, an upper-case or connection-specific
//! header, a body longer or shorter than its `content-length`) as an error of the whole
//! connection; h2 resets only the stream, with PROTOCOL_ERROR. The guard sees that reset go
//! out and ends the connection after it, counting `http2.rx_messaging_error`. (h2 refuses a
//! few malformed requests — an unknown pseudo-header, an upper-case name — with GOAWAY
//! PROTOCOL_ERROR, which ends the connection too; those are not counted, as nothing on the
//! wire tells them from other protocol errors.)
//!
//! The flood limits (`Http2ProtocolOptions`, Envoy's `ProtocolConstraints`):
//!
//! - `max_outbound_control_frames` (1000): PING and SETTINGS ACKs owed to the client and not
//!   yet written. Envoy reads a connection's frames whether or not the client reads what it
//!   sends back, so a client that floods PINGs or SETTINGS without reading makes the ACKs pile
//!   up in Envoy's output queue until the connection is closed. the `h2` codec stops reading
//!   while it cannot write, which bounds memory but would keep such a connection open for
//!   good; so while the socket takes no more bytes, the guard reads ahead (into a bounded
//!   buffer the codec gets later, unchanged) and counts the ACKs the frames it read will be
//!   owed, as Envoy's queue would hold them. `http2.outbound_control_flood`.
//! - `max_consecutive_inbound_frames_with_empty_payload` (1): HEADERS, CONTINUATION and DATA
//!   frames in a row with nothing in them (padding aside) and no END_STREAM.
//!   `http2.inbound_empty_frames_flood`.
//! - `max_inbound_priority_frames_per_stream` (100): PRIORITY frames past that many per stream
//!   the client opened, plus one. `http2.inbound_priority_frames_flood`.
//!
//! Past a limit, or after a messaging error, the connection ends: reads and writes fail, and
//! the codec ends the connection.
//! `max_inbound_window_update_frames_per_data_frame_sent` is not applied, as in Envoy 1.40
//! (which kept a connection that sent 100,000 WINDOW_UPDATE frames before any request), nor
//! `max_outbound_frames` (the frames the codec holds are not in sight here).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use legate_api::pb::envoy::config::core::v3::Http2ProtocolOptions;
use legate_core::stats::{Counter, Scope};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const CONTINUATION: u8 = 0x9;
/// RST_STREAM's and GOAWAY's error code for a protocol error.
const PROTOCOL_ERROR: u32 = 0x1;
const END_STREAM: u8 = 0x1;
/// SETTINGS and PING.
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
/// The client connection preface, before the first frame.
const PREFACE_LEN: usize = 24;
/// The smallest frame that asks for an ACK (an empty SETTINGS).
const SMALLEST_CONTROL_FRAME: usize = 9;

/// The limits, from the connection manager's `http2_protocol_options`.
#[derive(Clone, Copy, Debug)]
pub struct H2Limits {
    outbound_control_frames: u64,
    empty_frames_in_a_row: u64,
    priority_frames_per_stream: u64,
}

impl H2Limits {
    pub fn new(o: &Http2ProtocolOptions) -> Self {
        let or = |v: Option<&legate_api::pb::google::protobuf::UInt32Value>, default: u32| {
            u64::from(v.map_or(default, |v| v.value))
        };
        H2Limits {
            outbound_control_frames: or(o.max_outbound_control_frames.as_ref(), 1000),
            empty_frames_in_a_row: or(
                o.max_consecutive_inbound_frames_with_empty_payload.as_ref(),
                1,
            ),
            priority_frames_per_stream: or(o.max_inbound_priority_frames_per_stream.as_ref(), 100),
        }
    }

    /// How far the guard reads ahead of a blocked codec: enough PINGs and SETTINGS to go past
    /// the limit, and no more.
    fn read_ahead(&self) -> usize {
        let needed = (self.outbound_control_frames as usize + 1) * SMALLEST_CONTROL_FRAME;
        needed.clamp(16 * 1024, 1024 * 1024)
    }
}

/// `http2.*`: what the guard counts (at the root, as Envoy's downstream codec stats are).
#[derive(Clone, Copy, Debug)]
pub struct H2Stats {
    rx_messaging_error: Counter,
    outbound_control_flood: Counter,
    inbound_empty_frames_flood: Counter,
    inbound_priority_frames_flood: Counter,
}

impl H2Stats {
    pub fn new(root: &Scope) -> Self {
        let scope = root.scope("http2.");
        H2Stats {
            rx_messaging_error: scope.counter("rx_messaging_error"),
            outbound_control_flood: scope.counter("outbound_control_flood"),
            inbound_empty_frames_flood: scope.counter("inbound_empty_frames_flood"),
            inbound_priority_frames_flood: scope.counter("inbound_priority_frames_flood"),
        }
    }
}

/// A frame's header, as the scanner saw it go by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Frame {
    kind: u8,
    flags: u8,
    /// The payload's length, less its padding (and the pad length byte).
    content: usize,
    /// A RST_STREAM frame's error code.
    error_code: u32,
}

/// Follows the frames in one direction of a connection's byte stream: which bytes are a
/// frame header, which a payload to skip, and the first payload bytes a frame is reported
/// with (a padded frame's pad length, a RST_STREAM frame's error code).
#[derive(Debug, Default)]
struct FrameScanner {
    header: [u8; 9],
    have: usize,
    /// Payload bytes still to skip.
    skip: usize,
    /// A frame waiting for the first `lead_need` bytes of its payload.
    waiting: Option<Frame>,
    lead: [u8; 4],
    lead_have: usize,
    lead_need: usize,
}

impl FrameScanner {
    /// Calls `on_frame` for each frame header (with its lead bytes) that `bytes` completes.
    fn scan(&mut self, mut bytes: &[u8], mut on_frame: impl FnMut(Frame)) {
        while !bytes.is_empty() {
            if let Some(mut frame) = self.waiting {
                let n = (self.lead_need - self.lead_have).min(bytes.len());
                self.lead[self.lead_have..self.lead_have + n].copy_from_slice(&bytes[..n]);
                self.lead_have += n;
                self.skip -= n;
                bytes = &bytes[n..];
                if self.lead_have < self.lead_need {
                    return;
                }
                self.waiting = None;
                if frame.kind == RST_STREAM {
                    frame.error_code = u32::from_be_bytes(self.lead);
                } else {
                    let padding = usize::from(self.lead[0]) + 1;
                    frame.content = frame.content.saturating_sub(padding);
                }
                on_frame(frame);
                continue;
            }
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < 9 {
                return;
            }
            self.have = 0;
            let h = &self.header;
            let length = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            let frame = Frame {
                kind: h[3],
                flags: h[4],
                content: length,
                error_code: 0,
            };
            self.skip = length;
            let lead = match frame.kind {
                DATA | HEADERS if frame.flags & PADDED != 0 => 1,
                RST_STREAM => 4,
                _ => 0,
            };
            if lead > 0 && length >= lead {
                self.waiting = Some(frame);
                self.lead_need = lead;
                self.lead_have = 0;
            } else {
                on_frame(frame);
            }
        }
    }
}

/// What the guard has counted on one connection.
#[derive(Debug, Default)]
struct Counts {
    /// PING and SETTINGS frames read, less the ACKs written.
    owed_acks: u64,
    empty_in_a_row: u64,
    streams: u64,
    priority: u64,
}

/// A downstream HTTP/2 connection's I/O with Envoy's flood limits and messaging-error rule
/// applied.
pub struct H2Guard<T> {
    io: T,
    limits: H2Limits,
    stats: H2Stats,
    inbound: FrameScanner,
    outbound: FrameScanner,
    /// Preface bytes still to come before the first inbound frame.
    preface: usize,
    counts: Counts,
    /// Bytes read ahead while the codec could not write (scanned already), from `ahead_at`.
    ahead: Vec<u8>,
    ahead_at: usize,
    /// The client closed its side while the guard read ahead.
    ahead_eof: bool,
    /// A limit was passed, or a messaging error reset: the connection ends.
    ended: bool,
}

impl<T> H2Guard<T> {
    pub fn new(io: T, limits: H2Limits, stats: H2Stats) -> Self {
        H2Guard {
            io,
            limits,
            stats,
            inbound: FrameScanner::default(),
            outbound: FrameScanner::default(),
            preface: PREFACE_LEN,
            counts: Counts::default(),
            ahead: Vec::new(),
            ahead_at: 0,
            ahead_eof: false,
            ended: false,
        }
    }

    /// Counts the frames in bytes read from the client; whether a limit was passed.
    fn scan_inbound(&mut self, mut bytes: &[u8]) -> bool {
        let skip = self.preface.min(bytes.len());
        self.preface -= skip;
        bytes = &bytes[skip..];
        let counts = &mut self.counts;
        self.inbound.scan(bytes, |f| match f.kind {
            DATA | HEADERS | CONTINUATION => {
                if f.kind != DATA && f.flags & END_HEADERS != 0 {
                    counts.streams += 1;
                }
                let empty = f.content == 0 && f.flags & END_STREAM == 0;
                counts.empty_in_a_row = if empty { counts.empty_in_a_row + 1 } else { 0 };
            }
            PRIORITY => counts.priority += 1,
            SETTINGS | PING if f.flags & ACK == 0 => counts.owed_acks += 1,
            _ => {}
        });
        self.check()
    }

    /// Counts the frames in bytes written to the client; a reset for a messaging error ends
    /// the connection (once those bytes are out).
    fn scan_outbound(&mut self, bytes: &[u8]) {
        let counts = &mut self.counts;
        let mut messaging_error = false;
        self.outbound.scan(bytes, |f| match f.kind {
            SETTINGS | PING if f.flags & ACK != 0 => {
                counts.owed_acks = counts.owed_acks.saturating_sub(1);
            }
            RST_STREAM if f.error_code == PROTOCOL_ERROR => messaging_error = true,
            _ => {}
        });
        if messaging_error && !self.ended {
            self.stats.rx_messaging_error.inc();
            tracing::debug!("downstream HTTP/2 connection closed: a malformed request");
            self.ended = true;
        }
    }

    /// Whether the connection must end: a limit is passed (counted once, when it first is).
    fn check(&mut self) -> bool {
        if self.ended {
            return true;
        }
        let (c, l, s) = (&self.counts, &self.limits, &self.stats);
        let flood = if c.owed_acks > l.outbound_control_frames {
            Some((
                &s.outbound_control_flood,
                "too many control frames in the outbound queue",
            ))
        } else if c.empty_in_a_row > l.empty_frames_in_a_row {
            Some((
                &s.inbound_empty_frames_flood,
                "too many consecutive frames with an empty payload",
            ))
        } else if c.priority > l.priority_frames_per_stream * (1 + c.streams) {
            Some((&s.inbound_priority_frames_flood, "too many PRIORITY frames"))
        } else {
            None
        };
        if let Some((counter, why)) = flood {
            counter.inc();
            tracing::debug!("downstream HTTP/2 connection closed: {why}");
            self.ended = true;
        }
        self.ended
    }

    fn ended_error() -> io::Error {
        io::Error::other("HTTP/2 connection ended: flood protection or a messaging error")
    }
}

impl<T: AsyncRead + Unpin> H2Guard<T> {
    /// While the codec cannot write: reads what the client sent (up to the read-ahead bound)
    /// and counts it; whether that passes a limit. The socket's read readiness wakes the task
    /// as its write readiness does.
    fn read_ahead(&mut self, cx: &mut Context<'_>) -> bool {
        let bound = self.limits.read_ahead();
        let mut chunk = [0u8; 4096];
        while !self.ahead_eof && self.ahead.len() - self.ahead_at < bound {
            let mut buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => self.ahead_eof = true,
                Poll::Ready(Ok(())) => {
                    let read = buf.filled().len();
                    self.ahead.extend_from_slice(&chunk[..read]);
                    if self.scan_inbound(&chunk[..read]) {
                        return true;
                    }
                }
                // An error is the codec's to find when it reads.
                Poll::Ready(Err(_)) | Poll::Pending => break,
            }
        }
        false
    }

    /// A write that found the socket full: read ahead, and fail if that shows a flood.
    fn blocked<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        if self.read_ahead(cx) {
            Poll::Ready(Err(Self::ended_error()))
        } else {
            Poll::Pending
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for H2Guard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(Err(Self::ended_error()));
        }
        if this.ahead_at < this.ahead.len() {
            let n = buf.remaining().min(this.ahead.len() - this.ahead_at);
            buf.put_slice(&this.ahead[this.ahead_at..this.ahead_at + n]);
            this.ahead_at += n;
            if this.ahead_at == this.ahead.len() {
                this.ahead = Vec::new();
                this.ahead_at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if this.ahead_eof {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if this.scan_inbound(&buf.filled()[before..]) {
            return Poll::Ready(Err(Self::ended_error()));
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for H2Guard<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(Err(Self::ended_error()));
        }
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.scan_outbound(&buf[..n]);
                Poll::Ready(Ok(n))
            }
            Poll::Pending => this.blocked(cx),
            other => other,
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(Err(Self::ended_error()));
        }
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                let mut left = n;
                for b in bufs {
                    let take = left.min(b.len());
                    this.scan_outbound(&b[..take]);
                    left -= take;
                    if left == 0 {
                        break;
                    }
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => this.blocked(cx),
            other => other,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Pending => this.blocked(cx),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn the_scanner_finds_headers_across_any_split() {
        let mut bytes = frame(HEADERS, END_HEADERS, b"abc");
        bytes.extend(frame(DATA, PADDED, &[2, b'x', 0, 0]));
        bytes.extend(frame(PING, 0, &[0; 8]));
        bytes.extend(frame(DATA, PADDED | END_STREAM, &[3, 0, 0, 0]));
        bytes.extend(frame(RST_STREAM, 0, &[0, 0, 0, 1]));
        let f = |kind, flags, content, error_code| Frame {
            kind,
            flags,
            content,
            error_code,
        };
        let expected = vec![
            f(HEADERS, END_HEADERS, 3, 0),
            f(DATA, PADDED, 1, 0),
            f(PING, 0, 8, 0),
            f(DATA, PADDED | END_STREAM, 0, 0),
            f(RST_STREAM, 0, 4, 1),
        ];
        for split in 1..bytes.len() {
            let mut scanner = FrameScanner::default();
            let mut seen = Vec::new();
            for piece in bytes.chunks(split) {
                scanner.scan(piece, |f| seen.push(f));
            }
            assert_eq!(seen, expected, "pieces of {split}");
        }
    }

    fn guard(stats: H2Stats) -> H2Guard<tokio::io::Empty> {
        H2Guard::new(
            tokio::io::empty(),
            H2Limits::new(&Default::default()),
            stats,
        )
    }

    fn stats() -> H2Stats {
        H2Stats::new(&std::sync::Arc::new(legate_core::stats::Store::new()).scope(""))
    }

    #[test]
    fn acks_owed_past_the_limit_are_a_flood() {
        let stats = stats();
        let mut g = guard(stats);
        assert!(!g.scan_inbound(&[0u8; PREFACE_LEN]));
        let ping = frame(PING, 0, &[0; 8]);
        for _ in 0..1000 {
            assert!(!g.scan_inbound(&ping));
        }
        // An ACK written pays one back.
        g.scan_outbound(&frame(PING, ACK, &[0; 8]));
        assert!(!g.scan_inbound(&ping));
        assert!(g.scan_inbound(&frame(SETTINGS, 0, &[])));
        assert_eq!(stats.outbound_control_flood.value(), 1);
    }

    #[test]
    fn inbound_floods_follow_envoys_formulas() {
        let stats = stats();
        let mut g = guard(stats);
        g.scan_inbound(&[0u8; PREFACE_LEN]);
        // One empty DATA frame is allowed, a second in a row is not; one with content resets.
        assert!(!g.scan_inbound(&frame(DATA, 0, &[])));
        assert!(!g.scan_inbound(&frame(DATA, 0, b"x")));
        assert!(!g.scan_inbound(&frame(DATA, 0, &[])));
        assert!(g.scan_inbound(&frame(DATA, PADDED, &[0])));
        assert_eq!(stats.inbound_empty_frames_flood.value(), 1);

        let mut g = guard(stats);
        g.scan_inbound(&[0u8; PREFACE_LEN]);
        let priority = frame(PRIORITY, 0, &[0; 5]);
        for _ in 0..100 {
            assert!(!g.scan_inbound(&priority));
        }
        assert!(g.scan_inbound(&priority));
        assert_eq!(stats.inbound_priority_frames_flood.value(), 1);
    }

    #[test]
    fn a_protocol_error_reset_ends_the_connection() {
        let stats = stats();
        let mut g = guard(stats);
        // A reset for another reason (the client went away, a body error) does not.
        g.scan_outbound(&frame(RST_STREAM, 0, &8u32.to_be_bytes()));
        g.scan_outbound(&frame(RST_STREAM, 0, &2u32.to_be_bytes()));
        assert!(!g.check());
        let reset = frame(RST_STREAM, 0, &PROTOCOL_ERROR.to_be_bytes());
        g.scan_outbound(&reset[..6]);
        assert!(!g.check());
        g.scan_outbound(&reset[6..]);
        assert!(g.check());
        assert_eq!(stats.rx_messaging_error.value(), 1);
    }
}
