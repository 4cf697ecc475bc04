//! A manual clock for tests: a [`Spawner`] whose `sleep` completes only when the test moves
//! the clock, so a test can put a timer exactly at, or one nanosecond before, its deadline.
//!
//! # Invariants
//!
//! 1. A sleep's deadline is fixed when the sleep is created: the clock's `now` then, plus
//!    its duration (`None`, never, for [`Duration::MAX`] or when the sum overflows).
//! 2. A sleep is pending (counted by [`ManualClock::sleepers`]) from its creation until it
//!    completes or is dropped; `advance` removes every sleep whose deadline it reaches, and
//!    a removed sleep is complete for good.
//! 3. Wakers are woken after the lock is released.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use backpressure_pipeline::{BoxFuture, SpawnError, Spawner};

use super::Sp;

/// Time that moves only when the test says so.
#[derive(Debug)]
pub struct ManualClock {
    state: Mutex<ClockState>,
    /// The instant the clock's zero stands for (`Spawner::now` is `epoch + now`).
    epoch: Instant,
}

impl Default for ManualClock {
    fn default() -> ManualClock {
        ManualClock {
            state: Mutex::default(),
            epoch: Instant::now(),
        }
    }
}

#[derive(Debug, Default)]
struct ClockState {
    /// Time since the clock was made.
    now: Duration,
    /// Ids for the sleeps, never reused.
    next_id: u64,
    /// Every sleep made so far, pending or not.
    created: u64,
    /// The pending sleeps (invariant 2), by id.
    pending: BTreeMap<u64, Pending>,
}

#[derive(Debug)]
struct Pending {
    /// `None`: never (invariant 1).
    deadline: Option<Duration>,
    /// Set once the sleep has been polled.
    waker: Option<Waker>,
}

impl ManualClock {
    /// A clock at zero with no sleeper.
    pub fn new() -> Arc<ManualClock> {
        Arc::default()
    }

    /// How far the clock has been advanced in all.
    pub fn now(&self) -> Duration {
        self.lock().now
    }

    /// The clock's time as an instant: what the spawner's `now` returns.
    pub fn instant(&self) -> Instant {
        self.epoch + self.now()
    }

    /// How many sleeps are pending: created, not complete and not dropped.
    pub fn sleepers(&self) -> usize {
        self.lock().pending.len()
    }

    /// How many sleeps were ever created (a zero one included).
    pub fn created(&self) -> u64 {
        self.lock().created
    }

    /// Moves the clock `by` forward and completes every sleep whose deadline it reaches.
    pub fn advance(&self, by: Duration) {
        let mut wakers = Vec::new();
        {
            let mut state = self.lock();
            state.now = state.now.saturating_add(by);
            let now = state.now;
            // Invariant 2: a reached sleep leaves the map, and is complete from here on.
            state.pending.retain(|_, sleep| match sleep.deadline {
                Some(deadline) if deadline <= now => {
                    wakers.extend(sleep.waker.take());
                    false
                }
                _ => true,
            });
        }
        // Invariant 3: no lock held while a woken task may run.
        for waker in wakers {
            waker.wake();
        }
    }

    /// Waits (yielding, bounded by the harness's watchdog) until at least `n` sleeps are
    /// pending: a worker has started its timer.
    pub async fn until_sleepers(&self, n: usize) {
        // Terminates when the code under test starts its timers; the watchdog catches a bug.
        while self.sleepers() < n {
            super::yield_now().await;
        }
    }

    /// A sleep of `duration` from now (invariant 1).
    pub fn sleep(self: &Arc<Self>, duration: Duration) -> ManualSleep {
        let mut state = self.lock();
        state.created += 1;
        // `Duration::MAX` is never, as on a real timer, even from zero.
        let deadline = (duration != Duration::MAX)
            .then(|| state.now.checked_add(duration))
            .flatten();
        if deadline.is_some_and(|deadline| deadline <= state.now) {
            // A zero sleep is complete at once, never pending.
            return ManualSleep {
                clock: self.clone(),
                id: None,
            };
        }
        let id = state.next_id;
        state.next_id += 1;
        state.pending.insert(
            id,
            Pending {
                deadline,
                waker: None,
            },
        );
        ManualSleep {
            clock: self.clone(),
            id: Some(id),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ClockState> {
        // Held for a few instructions, with no user code; a poisoned one is still valid.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A sleep on a [`ManualClock`]: complete once the clock reaches its deadline.
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct ManualSleep {
    clock: Arc<ManualClock>,
    /// `None` once complete.
    id: Option<u64>,
}

impl Future for ManualSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let Some(id) = this.id else {
            return Poll::Ready(());
        };
        let mut state = this.clock.lock();
        match state.pending.get_mut(&id) {
            Some(sleep) => {
                match &mut sleep.waker {
                    Some(waker) => waker.clone_from(cx.waker()),
                    None => sleep.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            // Invariant 2: `advance` removed it, so it is complete.
            None => {
                drop(state);
                this.id = None;
                Poll::Ready(())
            }
        }
    }
}

impl Drop for ManualSleep {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            let removed = self.clock.lock().pending.remove(&id);
            drop(removed); // its waker, after the lock
        }
    }
}

impl fmt::Debug for ManualSleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualSleep")
            .field("pending", &self.id.is_some())
            .finish()
    }
}

/// A spawner that runs tasks on `inner` and sleeps on `clock`.
#[derive(Debug, Clone)]
pub struct ManualSpawner {
    pub inner: Sp,
    pub clock: Arc<ManualClock>,
}

impl ManualSpawner {
    /// Tasks on `inner`, sleeps on a new clock at zero (returned too).
    pub fn new(inner: Sp) -> (ManualSpawner, Arc<ManualClock>) {
        let clock = ManualClock::new();
        let spawner = ManualSpawner {
            inner,
            clock: clock.clone(),
        };
        (spawner, clock)
    }
}

impl Spawner for ManualSpawner {
    fn spawn(&self, task: BoxFuture) -> Result<(), SpawnError> {
        self.inner.spawn(task)
    }

    fn sleep(&self, duration: Duration) -> BoxFuture {
        Box::pin(self.clock.sleep(duration))
    }

    fn now(&self) -> Instant {
        self.clock.instant()
    }
}
