//! A request body handed over to whoever reads it (usually the router, for the upstream
//! connection) through a one-frame slot that makes the connection read only as fast as the
//! body is consumed. (The connection decodes it with `legate_core::http1::Decoder`.)

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use legate_core::http1::Framing;

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
