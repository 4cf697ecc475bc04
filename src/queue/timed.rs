//! What a queue holds beyond its buffer, present only when configured: the time-based state
//! (a stamp per item, the maximum age, CoDel, the delay histogram), set when a pipeline is
//! built with a time-based feature; and the pressure watermarks (`Queue::watermarks`, or the
//! pipeline's builder).
//!
//! # Invariants
//!
//! 1. `stamps` runs parallel to the buffer: `stamps[i]` is when `buf[i]` was taken in. Every
//!    change to the buffer makes the same change to `stamps`, under the buffer lock.
//! 2. Stamps are read from the spawner's clock *before* the lock is taken (the clock is user
//!    code), so two producers racing may leave them slightly out of order; an age is
//!    `now - stamp`, saturating at zero, and the maximum age is checked on the item about to
//!    be served, whatever its neighbours' stamps.
//! 3. An item shed at the exit is counted in `expired` in the same critical section that
//!    takes it out, and handed to the caller with its reason: nothing is dropped under the
//!    lock.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Wake, Waker};
use std::time::{Duration, Instant};

use event_listener::Event;

use super::keyed::Keys;
use crate::delay::{Codel, CodelState, DelayHistogram, Expired, Verdict};
use crate::sync::{AtomicBool, AtomicU64, Ordering};

/// What the pipeline configures on its queue.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Timing {
    pub(crate) max_age: Option<Duration>,
    pub(crate) codel: Option<Codel>,
}

/// What a queue has beyond the plain buffer, when configured: one box behind one field, so
/// a queue without any pays a single test per change.
#[derive(Debug, Default)]
pub(super) struct Extras {
    pub(super) timed: Option<Timed>,
    pub(super) marks: Option<Marks>,
    pub(super) keys: Option<Keys>,
}

/// The items a take chooses from: the buffer front to back, or its keyed lanes.
pub(super) trait Line<T> {
    /// The position of the next item to serve: the oldest, or with `newest` the newest;
    /// `None` if none may be served now.
    fn next(&self, newest: bool) -> Option<usize>;

    /// Whether nothing at all is queued.
    fn is_empty(&self) -> bool;

    /// Removes the item at `pos`, for service or unserved (shed at the exit).
    fn remove(&mut self, pos: usize, serve: bool) -> T;
}

/// The plain buffer: the oldest item is the front.
pub(super) struct Plain<'a, T>(pub(super) &'a mut VecDeque<T>);

impl<T> Line<T> for Plain<'_, T> {
    #[inline]
    fn next(&self, newest: bool) -> Option<usize> {
        match self.0.len() {
            0 => None,
            len if newest => Some(len - 1),
            _ => Some(0),
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    #[inline]
    fn remove(&mut self, pos: usize, _: bool) -> T {
        let item = if pos == 0 {
            self.0.pop_front()
        } else {
            self.0.remove(pos)
        };
        item.expect("a position in the buffer")
    }
}

/// The buffer through its keyed lanes: the oldest item whose key may run; each item served
/// leaves its lane in `lanes`, to be released when its work is done.
pub(super) struct KeyedLine<'a, T> {
    pub(super) buf: &'a mut VecDeque<T>,
    pub(super) keys: &'a mut Keys,
    pub(super) lanes: &'a mut Vec<u32>,
}

impl<T> Line<T> for KeyedLine<'_, T> {
    #[inline]
    fn next(&self, newest: bool) -> Option<usize> {
        self.keys.next(newest)
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    #[inline]
    fn remove(&mut self, pos: usize, serve: bool) -> T {
        let lane = self.keys.remove(pos, serve);
        if serve {
            self.lanes.push(lane);
        }
        let item = if pos == 0 {
            self.buf.pop_front()
        } else {
            self.buf.remove(pos)
        };
        item.expect("a position in the buffer")
    }
}

/// Under the buffer lock.
#[derive(Debug)]
pub(super) struct Timed {
    /// Invariant 1.
    pub(super) stamps: VecDeque<Instant>,
    max_age: Option<Duration>,
    codel: Option<CodelState>,
    lifo: bool,
    pub(super) delays: DelayHistogram,
    /// Items shed at the exit (invariant 3).
    pub(super) expired: u64,
}

/// What one timed or keyed take removed: the items to serve, and those shed with their
/// reasons.
#[derive(Debug)]
pub(crate) struct Taken<T, S> {
    pub(crate) served: S,
    pub(crate) shed: Vec<(T, Expired)>,
}

impl<T, S: Default> Default for Taken<T, S> {
    fn default() -> Self {
        Taken {
            served: S::default(),
            shed: Vec::new(),
        }
    }
}

/// Where a timed take puts the items it serves: one (`Option`, no allocation) or a batch
/// (`Vec`).
pub(crate) trait Served<T>: Default {
    fn put(&mut self, item: T);
}

impl<T> Served<T> for Option<T> {
    fn put(&mut self, item: T) {
        debug_assert!(self.is_none(), "a take for one item serves one");
        *self = Some(item);
    }
}

impl<T> Served<T> for Vec<T> {
    fn put(&mut self, item: T) {
        self.push(item);
    }
}

impl Timed {
    pub(super) fn new(timing: Timing) -> Timed {
        Timed {
            stamps: VecDeque::new(),
            max_age: timing.max_age,
            codel: timing.codel.as_ref().map(CodelState::new),
            lifo: timing.codel.is_some_and(|codel| codel.is_lifo()),
            delays: DelayHistogram::new(),
            expired: 0,
        }
    }

    /// Whether CoDel is in its dropping state.
    pub(super) fn overloaded(&self) -> bool {
        self.codel.as_ref().is_some_and(CodelState::is_dropping)
    }

    /// A worker found the buffer empty.
    pub(super) fn on_empty(&mut self) {
        if let Some(codel) = &mut self.codel {
            codel.on_empty();
        }
    }

    /// Takes up to `limit` items to serve from a non-empty buffer at `now`, shedding on the
    /// way those older than the maximum age and those CoDel drops. Ends when `limit` are
    /// served or the buffer is empty; may serve none (all shed). Bounded by the buffer.
    pub(super) fn take<T, S: Served<T>>(
        &mut self,
        line: &mut impl Line<T>,
        limit: usize,
        now: Instant,
    ) -> (Taken<T, S>, u64) {
        let mut taken = Taken::<T, S>::default();
        let mut served = 0;
        while served < limit {
            let Some(head) = line.next(false) else {
                if line.is_empty() {
                    self.on_empty();
                }
                break;
            };
            let head_age = self.age(head, now);
            // The maximum age first: a stale head is shed whatever CoDel would say.
            if self.max_age.is_some_and(|max_age| head_age > max_age) {
                let item = self.remove(line, head, false);
                taken.shed.push((item, Expired::MaxAge { age: head_age }));
                continue;
            }
            if let Some(codel) = &mut self.codel {
                if codel.verdict(now, head_age) == Verdict::Drop {
                    let item = self.remove(line, head, false);
                    taken.shed.push((item, Expired::Codel { age: head_age }));
                    continue;
                }
            }
            // Adaptive LIFO: the newest first while CoDel is dropping.
            let pos = match self.lifo && self.overloaded() {
                true => line.next(true).unwrap_or(head),
                false => head,
            };
            let age = self.age(pos, now);
            // Invariant 2: the item served is itself within the maximum age.
            if self.max_age.is_some_and(|max_age| age > max_age) {
                let item = self.remove(line, pos, false);
                taken.shed.push((item, Expired::MaxAge { age }));
                continue;
            }
            let item = self.remove(line, pos, true);
            self.delays.record(age);
            taken.served.put(item);
            served += 1;
        }
        self.expired += taken.shed.len() as u64;
        (taken, served as u64)
    }

    /// Removes the head (or the back) item and its stamp (invariant 1).
    fn age(&self, pos: usize, now: Instant) -> Duration {
        now.saturating_duration_since(self.stamps[pos])
    }

    fn remove<T>(&mut self, line: &mut impl Line<T>, pos: usize, serve: bool) -> T {
        self.stamps
            .remove(pos)
            .expect("a stamp for every item (invariant 1)");
        line.remove(pos, serve)
    }

    pub(super) fn oldest_age(&self, now: Instant) -> Option<Duration> {
        // Invariant 2: the oldest stamp, wherever it sits.
        self.stamps
            .iter()
            .min()
            .map(|&stamp| now.saturating_duration_since(stamp))
    }
}

/// The pressure watermarks, under the buffer lock: `high` once the length reaches the high
/// mark, and back to normal only once it falls to the low mark.
#[derive(Debug)]
pub(super) struct Marks {
    high_mark: usize,
    low_mark: usize,
    high: bool,
    /// Set by close: the level stays where it is.
    closed: bool,
    pub(super) cell: Arc<PressureCell>,
}

/// The level and the crossings, for the [`Pressure`](crate::Pressure) handles to read
/// without the buffer lock.
#[derive(Debug, Default)]
pub(crate) struct PressureCell {
    /// Crossings so far; odd while high.
    pub(crate) crossings: AtomicU64,
    /// Set when the queue closes, or when new marks replace these, under the buffer lock: no
    /// crossing comes after.
    pub(crate) closed: AtomicBool,
    /// Notified after a crossing or the close, with no lock held.
    pub(crate) event: Event,
}

/// The cell as a waker: the queue wakes it, after unlocking, as it wakes any waiter, and
/// waking it notifies every watcher.
impl Wake for PressureCell {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.event.notify(usize::MAX);
    }
}

impl Marks {
    pub(super) fn new(high_mark: usize, low_mark: usize) -> Marks {
        Marks {
            high_mark,
            low_mark,
            high: false,
            closed: false,
            cell: Arc::default(),
        }
    }

    /// Under the lock, after the length changed to `len`: if it crossed a mark, a waker
    /// that notifies the watchers, for the caller to wake after unlocking.
    pub(super) fn update(&mut self, len: usize) -> Option<Waker> {
        if self.closed {
            return None;
        }
        let crossed = if self.high {
            len <= self.low_mark
        } else {
            len >= self.high_mark
        };
        if crossed {
            self.high = !self.high;
            // Release: a handle that reads the new count reads the level with it (the level
            // is the count's parity).
            self.cell.crossings.fetch_add(1, Ordering::Release);
        }
        crossed.then(|| Waker::from(self.cell.clone()))
    }

    /// Under the lock, when the queue closes: no crossing after this one (the draining
    /// backlog does not count), and the handles are told.
    pub(super) fn close(&mut self) -> Waker {
        self.closed = true;
        // Release: a handle that sees the flag sees every crossing, all made before it.
        self.cell.closed.store(true, Ordering::Release);
        Waker::from(self.cell.clone())
    }
}
