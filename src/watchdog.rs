//! A timer that fires from a thread of its own, for shutdown's bounded waits.
//!
//! [`sleep`] returns a [`Watchdog`]: a future that completes once its limit has passed,
//! whatever the async runtime is doing. Shutdown's waits must end even when every runtime
//! thread is blocked in synchronous code (issue 9, item 3): a runtime's own timer is driven by
//! its worker threads, so with all of them blocked it never fires, and a watchdog must never
//! depend on what it watches.
//!
//! Each armed watchdog has one plain `std::thread` that waits on a condition variable until
//! the deadline, then wakes the last waker the future was polled with. A thread per watchdog
//! rather than one shared timer thread with a heap of deadlines: shutdown arms at most three,
//! one after another; each thread ends when its watchdog fires or is dropped, so none
//! outlives its use; there is no global state, no heap to keep in step with cancellation, and
//! no thread shared by all pipelines that one panicking waker could take down.
//!
//! # Invariants
//!
//! 1. `fired` and `cancelled` only go from `false` to `true`, and only with the lock held.
//! 2. The waker slot and `fired` change in one critical section: a poll that finds `fired`
//!    unset registers its waker before it unlocks, and the thread sets `fired` and takes the
//!    waker in one critical section. So the thread either finds that waker and wakes it, or
//!    fired before the poll and the poll returns `Ready`: no wake-up is lost between the check
//!    and the registration, and no second check is needed.
//! 3. The thread waits on `changed` only with the lock held from its last look at
//!    `cancelled`, and drop sets `cancelled` under the lock before it notifies `changed`. So a
//!    drop either lands before the thread's look (which sees it) or while the thread waits
//!    (which the notification ends): the thread ends promptly after its watchdog is dropped.
//! 4. Wakers are woken and dropped after the lock is released: runtime code never runs under
//!    it, and a waker that polls the watchdog again at once cannot deadlock on it.
//!
//! The lock and the condition variable are std's, never loom's (`crate::sync`): the thread is
//! a real OS thread waiting on real time, which loom does not model.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Returns a future that completes once `limit` has passed, timed by a thread of its own.
///
/// A zero `limit` is ready at once; a `limit` too large to be an [`Instant`] never fires.
/// Neither starts a thread. If the thread cannot be started (the OS refuses), the watchdog
/// never fires either: callers race it against the runtime's own timer
/// ([`Spawner::sleep`](crate::Spawner::sleep)), which the pipeline's shutdown does, so a
/// failed spawn costs the guarantee for blocked runtimes only, never the wait itself.
pub(crate) fn sleep(limit: Duration) -> Watchdog {
    if limit.is_zero() {
        return Watchdog {
            timer: Timer::Fired,
        };
    }
    let Some(deadline) = Instant::now().checked_add(limit) else {
        return Watchdog {
            timer: Timer::Never,
        };
    };
    let shared = Arc::new(Shared::default());
    let theirs = Arc::clone(&shared);
    let spawned = thread::Builder::new()
        .name("backpressure-pipeline-watchdog".into())
        .spawn(move || theirs.run_until(deadline));
    match spawned {
        Ok(thread) => Watchdog {
            timer: Timer::Armed {
                shared,
                deadline,
                thread: Some(thread),
            },
        },
        // No thread, no timer: see the doc above for why never firing is the safe fallback.
        Err(_) => Watchdog {
            timer: Timer::Never,
        },
    }
}

/// A future that completes once its limit has passed, from [`sleep`].
///
/// It is timed by a thread of its own, so it fires even when every thread of the runtime
/// that polls it is blocked; the waker it was last polled with is woken from that thread.
/// Dropping it before it fires ends the thread promptly.
///
/// # Cancel safety
///
/// Dropping it at any point is safe and has no effect beyond stopping the timer: nothing is
/// lost, and a new `sleep` starts a new limit from its own call.
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub(crate) struct Watchdog {
    timer: Timer,
}

enum Timer {
    /// The limit was zero.
    Fired,
    /// The limit is past what an `Instant` can hold, or no thread could be started.
    Never,
    /// A thread waits until `deadline`. Its handle is kept so that `Debug` can name it and
    /// tests can join it; dropping the handle detaches the thread, which ends by invariant 3.
    Armed {
        shared: Arc<Shared>,
        deadline: Instant,
        thread: Option<JoinHandle<()>>,
    },
}

/// What the future and its thread share.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Notified when `cancelled` is set (invariant 3).
    changed: Condvar,
}

#[derive(Default)]
struct State {
    fired: bool,
    cancelled: bool,
    /// The waker of the last poll, until the thread takes it.
    waker: Option<Waker>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section writes whole flags and the waker slot, so the state is
        // consistent even if a waker's `clone` panicked under the lock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The thread's body: wait until `deadline` or until cancelled, then fire.
    fn run_until(&self, deadline: Instant) {
        let mut state = self.lock();
        // Terminates: each pass returns when cancelled, or waits at most until `deadline`;
        // once `deadline` has passed the time left is zero and the loop ends. A spurious
        // wake-up (or an early one, from a coarse clock) only costs another pass.
        loop {
            if state.cancelled {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // By invariant 3 the lock is held from the look at `cancelled` into the wait.
            state = match self.changed.wait_timeout(state, left) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        // By invariant 2: set `fired` and take the waker together.
        state.fired = true;
        let waker = state.waker.take();
        drop(state);
        // By invariant 4: wake after unlocking.
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Future for Watchdog {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let shared = match &self.timer {
            Timer::Fired => return Poll::Ready(()),
            Timer::Never => return Poll::Pending,
            Timer::Armed { shared, .. } => shared,
        };
        let mut state = shared.lock();
        if state.fired {
            return Poll::Ready(());
        }
        // By invariant 2 this registration cannot miss the firing: the thread sets `fired`
        // and takes the waker under this same lock.
        let replaced = match &state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => None,
            _ => state.waker.replace(cx.waker().clone()),
        };
        drop(state);
        // By invariant 4: a replaced waker is dropped after unlocking.
        drop(replaced);
        Poll::Pending
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Timer::Armed { shared, .. } = &self.timer {
            let waker = {
                let mut state = shared.lock();
                state.cancelled = true;
                state.waker.take()
            };
            // By invariant 3: `cancelled` is set under the lock, then the thread is told.
            shared.changed.notify_one();
            // By invariant 4: the waker is dropped after unlocking.
            drop(waker);
        }
    }
}

impl fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (deadline, fired, thread) = match &self.timer {
            Timer::Fired => (None, true, None),
            Timer::Never => (None, false, None),
            Timer::Armed {
                shared,
                deadline,
                thread,
            } => (
                Some(deadline),
                shared.lock().fired,
                thread.as_ref().map(|t| t.thread().id()),
            ),
        };
        f.debug_struct("Watchdog")
            .field("deadline", &deadline)
            .field("fired", &fired)
            .field("thread", &thread)
            .finish()
    }
}

#[cfg(test)]
impl Watchdog {
    /// Takes the handle of the watchdog's thread, if it has one, so a test can join it.
    fn take_thread(&mut self) -> Option<JoinHandle<()>> {
        match &mut self.timer {
            Timer::Armed { thread, .. } => thread.take(),
            Timer::Fired | Timer::Never => None,
        }
    }

    fn shared_state(&self) -> Option<&Arc<Shared>> {
        match &self.timer {
            Timer::Armed { shared, .. } => Some(shared),
            Timer::Fired | Timer::Never => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc::{self, Receiver, Sender};
    use std::task::Wake;
    use std::thread::ThreadId;

    use futures_util::FutureExt;

    use super::*;

    /// How long a test waits for something that must happen before it fails instead of
    /// hanging. A hang guard only: no test waits for it to pass.
    const HANG_GUARD: Duration = Duration::from_secs(10);

    /// Long enough that a test never sees it pass.
    const FOREVER: Duration = Duration::from_secs(3600);

    /// A waker that reports each wake, with the waking thread, on a channel.
    struct ChannelWaker(Mutex<Sender<ThreadId>>);

    impl Wake for ChannelWaker {
        fn wake(self: Arc<Self>) {
            let send = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            // The test may have ended already; a wake nobody waits for is fine.
            let _ = send.send(thread::current().id());
        }
    }

    fn channel_waker() -> (Waker, Receiver<ThreadId>) {
        let (send, recv) = mpsc::channel();
        (Waker::from(Arc::new(ChannelWaker(Mutex::new(send)))), recv)
    }

    /// A waker that counts its wakes.
    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            // Relaxed: a count read after the waking thread is joined or after a channel
            // hand-off, both of which order it.
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    impl CountingWaker {
        fn wakes(&self) -> usize {
            // Relaxed: see `wake`.
            self.0.load(Ordering::Relaxed)
        }
    }

    fn poll(watchdog: &mut Watchdog, waker: &Waker) -> Poll<()> {
        Pin::new(watchdog).poll(&mut Context::from_waker(waker))
    }

    /// Joins `thread`, failing after [`HANG_GUARD`] instead of hanging.
    fn join_or_fail(thread: JoinHandle<()>) {
        let (send, recv) = mpsc::channel();
        thread::spawn(move || {
            let _ = send.send(thread.join());
        });
        recv.recv_timeout(HANG_GUARD)
            .expect("the watchdog's thread did not end")
            .expect("the watchdog's thread panicked");
    }

    #[test]
    fn it_is_a_send_sync_unpin_static_future_with_debug() {
        fn check<T: Future<Output = ()> + Send + Sync + Unpin + fmt::Debug + 'static>() {}
        check::<Watchdog>();
    }

    #[test]
    fn it_fires_after_its_limit_without_a_runtime() {
        const LIMIT: Duration = Duration::from_millis(20);
        let begun = Instant::now();
        // `smol::block_on` parks this thread and drives no timer: only the watchdog's own
        // thread can end this wait.
        smol::block_on(sleep(LIMIT));
        assert!(begun.elapsed() >= LIMIT);
    }

    #[test]
    fn it_fires_while_the_polling_thread_is_blocked() {
        const LIMIT: Duration = Duration::from_millis(20);
        let begun = Instant::now();
        let mut watchdog = sleep(LIMIT);
        let thread = watchdog
            .take_thread()
            .expect("an armed watchdog has a thread");
        let timer_thread = thread.thread().id();
        let (waker, woken) = channel_waker();
        assert!(poll(&mut watchdog, &waker).is_pending());
        assert!(!format!("{watchdog:?}").contains("fired: true"));

        // This thread now blocks in synchronous code; the wake-up comes from elsewhere.
        let waker_thread = woken.recv_timeout(HANG_GUARD).expect("the watchdog fired");
        assert_eq!(waker_thread, timer_thread);
        assert_ne!(waker_thread, thread::current().id());
        assert!(begun.elapsed() >= LIMIT);
        assert_eq!(poll(&mut watchdog, &waker), Poll::Ready(()));
        assert!(format!("{watchdog:?}").contains("fired: true"));
        // It fired once, and its thread ended after firing.
        join_or_fail(thread);
        assert!(woken.try_recv().is_err());
    }

    #[test]
    fn only_the_last_waker_is_woken() {
        let mut watchdog = sleep(Duration::from_millis(20));
        let first = Arc::new(CountingWaker::default());
        assert!(poll(&mut watchdog, &Waker::from(first.clone())).is_pending());
        let (last, woken) = channel_waker();
        assert!(poll(&mut watchdog, &last).is_pending());

        woken.recv_timeout(HANG_GUARD).expect("the watchdog fired");
        join_or_fail(watchdog.take_thread().expect("armed"));
        assert_eq!(first.wakes(), 0);
        assert_eq!(poll(&mut watchdog, &last), Poll::Ready(()));
    }

    #[test]
    fn it_fires_unpolled_and_is_ready_at_its_first_poll() {
        let mut watchdog = sleep(Duration::from_millis(1));
        // The thread fires with no waker registered and ends.
        join_or_fail(watchdog.take_thread().expect("armed"));
        assert_eq!(watchdog.now_or_never(), Some(()));
    }

    #[test]
    fn dropping_it_before_it_fires_ends_its_thread() {
        let mut watchdog = sleep(FOREVER);
        let waker = Arc::new(CountingWaker::default());
        assert!(poll(&mut watchdog, &Waker::from(waker.clone())).is_pending());
        let thread = watchdog.take_thread().expect("armed");
        let shared = Arc::downgrade(watchdog.shared_state().expect("armed"));

        drop(watchdog);
        join_or_fail(thread);
        assert_eq!(waker.wakes(), 0);
        // The thread dropped its share, the watchdog dropped its own and the waker: no leak.
        assert!(shared.upgrade().is_none());
        assert_eq!(Arc::strong_count(&waker), 1);
    }

    /// Drop against the firing, at every point the timing can land: the thread always ends,
    /// whichever of the two comes first.
    #[test]
    fn dropping_it_while_it_fires_ends_its_thread() {
        for micros in 0..200 {
            let mut watchdog = sleep(Duration::from_micros(micros));
            let (waker, _woken) = channel_waker();
            let _ = poll(&mut watchdog, &waker);
            let thread = watchdog.take_thread();
            drop(watchdog);
            if let Some(thread) = thread {
                join_or_fail(thread);
            }
        }
    }

    /// A poll against the firing, at every point the timing can land: a poll that returns
    /// `Pending` is always followed by a wake-up (invariant 2).
    #[test]
    fn a_poll_racing_the_firing_never_loses_the_wake_up() {
        for micros in 1..200 {
            let mut watchdog = sleep(Duration::from_micros(micros));
            let (waker, woken) = channel_waker();
            if poll(&mut watchdog, &waker).is_pending() {
                woken.recv_timeout(HANG_GUARD).expect("no lost wake-up");
                assert_eq!(poll(&mut watchdog, &waker), Poll::Ready(()));
            }
            join_or_fail(watchdog.take_thread().expect("armed"));
        }
    }

    /// Holds every thread that waits on it, in synchronous code, until opened or dropped.
    #[derive(Default)]
    struct Gate {
        open: Mutex<bool>,
        opened: Condvar,
    }

    impl Gate {
        fn wait(&self) {
            let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
            let _open = self
                .opened
                .wait_while(open, |open| !*open)
                .unwrap_or_else(PoisonError::into_inner);
        }

        fn open(&self) {
            *self.open.lock().unwrap_or_else(PoisonError::into_inner) = true;
            self.opened.notify_all();
        }
    }

    /// Opens the gate when dropped, so a failing test does not leave the runtime blocked.
    struct OpenOnDrop(Arc<Gate>);

    impl Drop for OpenOnDrop {
        fn drop(&mut self) {
            self.0.open();
        }
    }

    /// The fault of issue 9, item 3: on a tokio runtime whose two workers are both blocked
    /// on a `Condvar`, tokio's timer is not driven, but the watchdog still fires.
    #[test]
    fn it_fires_on_a_tokio_runtime_whose_workers_are_all_blocked() {
        const WORKERS: usize = 2;
        const LIMIT: Duration = Duration::from_millis(20);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .enable_time()
            .build()
            .expect("a tokio runtime");
        // Declared after the runtime, so dropped (and opened) before it.
        let gate = OpenOnDrop(Arc::new(Gate::default()));
        let (started, all_started) = mpsc::channel();
        for _ in 0..WORKERS {
            let gate = Arc::clone(&gate.0);
            let started = started.clone();
            runtime.spawn(async move {
                let _ = started.send(());
                gate.wait();
            });
        }
        for _ in 0..WORKERS {
            all_started
                .recv_timeout(HANG_GUARD)
                .expect("every worker blocked");
        }

        // `block_on` runs on a thread of its own so that a hang fails the test instead.
        let handle = runtime.handle().clone();
        let (done, finished) = mpsc::channel();
        thread::spawn(move || {
            let begun = Instant::now();
            handle.block_on(sleep(LIMIT));
            let _ = done.send(begun.elapsed());
        });
        let waited = finished
            .recv_timeout(HANG_GUARD)
            .expect("the watchdog fired while every worker was blocked");
        assert!(waited >= LIMIT);
        drop(gate);
    }

    #[test]
    fn a_zero_limit_is_ready_at_once_without_a_thread() {
        let mut watchdog = sleep(Duration::ZERO);
        assert!(watchdog.take_thread().is_none());
        assert!(format!("{watchdog:?}").contains("fired: true"));
        assert_eq!(watchdog.now_or_never(), Some(()));
    }

    #[test]
    fn a_limit_past_the_end_of_time_never_fires_and_starts_no_thread() {
        let mut watchdog = sleep(Duration::MAX);
        assert!(watchdog.take_thread().is_none());
        let waker = Arc::new(CountingWaker::default());
        assert!(poll(&mut watchdog, &Waker::from(waker.clone())).is_pending());
        assert!(poll(&mut watchdog, &Waker::from(waker.clone())).is_pending());
        assert!(format!("{watchdog:?}").contains("fired: false"));
        drop(watchdog);
        assert_eq!(waker.wakes(), 0);
    }
}
