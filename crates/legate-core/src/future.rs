//! Boxing a future without copying all of it.
//!
//! `Box::pin(make())` builds the future on the stack and then copies all of it into the box:
//! the whole size of its largest state (kilobytes for a request's future), although a future
//! that has not started holds only its arguments. [`boxed`] allocates first and has the
//! future built for the allocation: what is copied into it is the arguments alone (a few
//! hundred bytes for a request's; seen under gdb with a breakpoint on `memcpy`).

use std::pin::Pin;

/// The future `make` returns, built in its box.
#[inline(always)]
pub fn boxed<F>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    #[test]
    fn the_boxed_future_is_the_one_made() {
        let value = [1u8; 3];
        let mut future = super::boxed(|| async move { value.len() });
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert_eq!(future.as_mut().poll(&mut cx), std::task::Poll::Ready(3));
    }
}
