//! L4: listeners and their filter chains. Today: the compiled model of a listener
//! ([`listener::ListenerConfig`]), generic over the network filter it runs, so that the
//! crates above (HTTP, TCP proxy) plug their filters in without this crate knowing them.

pub mod listener;
