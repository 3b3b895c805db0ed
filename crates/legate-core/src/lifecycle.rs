//! What a listener tells the connections it accepted: keep serving, drain (close gracefully:
//! HTTP/1.1 with `connection: close` on the next response, HTTP/2 with GOAWAY), or close now
//! (the drain time is over). One watch channel carries it, so that a connection waits on one
//! signal for both.

/// A listener's phase; it only moves forward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    #[default]
    Serving,
    Draining,
    Closing,
}

/// Moves `phase` forward to `to` (never back), waking the connections if it changed.
pub fn advance(phase: &tokio::sync::watch::Sender<Phase>, to: Phase) {
    phase.send_if_modified(|p| {
        let forward = to > *p;
        if forward {
            *p = to;
        }
        forward
    });
}
