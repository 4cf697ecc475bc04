//! Driving a future to completion on the calling thread, for [`Queue::push_blocking`].
//!
//! The thread polls the future, and between polls parks until the future's waker has been
//! woken. The waker is an `Arc` holding the thread's handle and a `notified` flag.
//!
//! # Invariants
//!
//! 1. `notified` is set by every wake and cleared only by the polling thread, which parks
//!    only after it has cleared it and seen it unset. A wake that lands after that look finds
//!    the flag unset and unparks the thread; one that lands before it leaves the flag set, and
//!    the thread polls again without parking. So no wake-up is lost between a `Pending` poll
//!    and the park.
//! 2. `park` may return with no wake (a spurious wake-up, or the token of an `unpark` whose
//!    flag was already consumed): the thread only polls again once it has seen the flag set.
//!
//! The flag, the `Arc` and the parking are std's, never loom's (`crate::sync`): `std::task::Wake`
//! needs std's `Arc`, and the thread that parks is a real OS thread, which loom does not model.
//!
//! [`Queue::push_blocking`]: super::Queue::push_blocking

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

/// Wakes the thread blocked in [`block_on`].
#[derive(Debug)]
struct Unparker {
    thread: Thread,
    /// Woken since the thread last looked (invariant 1).
    notified: AtomicBool,
}

impl Wake for Unparker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Release: what the waking side did before the wake is visible to the poll it causes.
        // Only the first wake since the thread's last look unparks it (invariant 1).
        if !self.notified.swap(true, Ordering::Release) {
            self.thread.unpark();
        }
    }
}

/// Polls `future` on the calling thread until it completes, parking the thread in between.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let unparker = Arc::new(Unparker {
        thread: thread::current(),
        notified: AtomicBool::new(false),
    });
    let waker = Waker::from(Arc::clone(&unparker));
    let mut cx = Context::from_waker(&waker);
    // Terminates when the future does: each turn polls it once, after a wake-up.
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        // Acquire: pairs with the Release in `wake_by_ref`. Loops past spurious unparks
        // (invariant 2).
        while !unparker.notified.swap(false, Ordering::Acquire) {
            thread::park();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A future that is pending until a wake-up from another thread, then ready: the waker is
    /// woken after the poll that returned `Pending` (invariant 1) and the thread unparks.
    #[test]
    fn a_wake_from_another_thread_completes_the_future() {
        let mut handed_off = false;
        let (tx, rx) = std::sync::mpsc::channel::<Waker>();
        let waker_thread = thread::spawn(move || {
            if let Ok(waker) = rx.recv() {
                waker.wake();
            }
        });
        let output = block_on(std::future::poll_fn(|cx| {
            if handed_off {
                return Poll::Ready(7);
            }
            handed_off = true;
            tx.send(cx.waker().clone())
                .expect("the waker thread is alive");
            Poll::Pending
        }));
        assert_eq!(output, 7);
        waker_thread.join().expect("the waker thread");
    }

    /// A future that wakes itself before returning `Pending` (the wake lands before the look):
    /// the thread polls again without parking.
    #[test]
    fn a_wake_before_the_park_is_not_lost() {
        let mut pending = 3;
        block_on(std::future::poll_fn(|cx| {
            if pending == 0 {
                return Poll::Ready(());
            }
            pending -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }));
        assert_eq!(pending, 0);
    }
}
