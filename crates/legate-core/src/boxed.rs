//! Values and futures built in their boxes, without a copy.
//!
//! `Box::new(make())` and `Box::pin(make())` build the value on the stack and then copy all of
//! it into the box: for a request's future the whole size of its largest state (kilobytes,
//! although a future that has not started holds only its arguments), for a stream's record a
//! kilobyte. [`build`] allocates first and has the value built in the allocation: the compiler
//! then writes it there directly (checked in the release build's code: no `memcpy` of it).

use std::pin::Pin;

/// The value `make` returns, built in its box.
#[inline(always)]
pub fn build<T>(make: impl FnOnce() -> T) -> Box<T> {
    Box::write(Box::new_uninit(), make())
}

/// The future `make` returns, built in its box.
#[inline(always)]
pub fn future<F>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(build(make))
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    #[test]
    fn the_boxed_future_is_the_one_made() {
        let value = [1u8; 3];
        let future = super::future(|| async move { value.len() });
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut future = future;
        assert_eq!(future.as_mut().poll(&mut cx), std::task::Poll::Ready(3));
    }

    #[test]
    fn the_boxed_value_is_the_one_made() {
        assert_eq!(*super::build(|| [7u16; 600]), [7u16; 600]);
    }
}
