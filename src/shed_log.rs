//! Rate-limited log lines when a pipeline starts and stops shedding (feature `tracing`).
//!
//! One warning when shedding starts and one summary when it stops, never one line per item:
//! at most one line per [`EVERY`]. A shedding spell that would end within that time of the
//! last line goes on instead, and its summary covers the items of both.

use std::time::{Duration, Instant};

use crate::queue::Queue;
use crate::sync::{AtomicBool, AtomicU64, Ordering};

/// The least time between two lines.
const EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct ShedLog {
    epoch: Instant,
    shedding: AtomicBool,
    /// Items shed in the current spell.
    spell: AtomicU64,
    /// When the current spell started, in nanoseconds since `epoch`.
    started: AtomicU64,
    /// When the last line was written, in nanoseconds since `epoch`, plus one; 0 for never.
    last_line: AtomicU64,
}

// Relaxed throughout: these are log decisions. A race may move a line by an item or two; the
// compare-exchange on `last_line` still keeps to one line per `EVERY`.
impl ShedLog {
    pub(crate) fn new() -> ShedLog {
        ShedLog {
            epoch: Instant::now(),
            shedding: AtomicBool::new(false),
            spell: AtomicU64::new(0),
            started: AtomicU64::new(0),
            last_line: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Claims the right to write a line now, if the last one is at least `EVERY` old.
    fn may_log(&self, now: u64) -> bool {
        let last = self.last_line.load(Ordering::Relaxed);
        let every = EVERY.as_nanos() as u64;
        if last != 0 && now < (last - 1).saturating_add(every) {
            return false;
        }
        self.last_line
            .compare_exchange(last, now + 1, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// An item was shed or evicted.
    pub(crate) fn shed<T>(&self, queue: &Queue<T>) {
        self.spell.fetch_add(1, Ordering::Relaxed);
        if !self.shedding.swap(true, Ordering::Relaxed) {
            let now = self.now();
            self.started.store(now, Ordering::Relaxed);
            if self.may_log(now) {
                tracing::warn!(
                    capacity = queue.capacity(),
                    policy = ?queue.policy(),
                    "backpressure-pipeline: queue full, shedding started"
                );
            }
        }
    }

    /// An item was accepted without shedding: the spell ends, if a line may be written.
    pub(crate) fn accepted(&self) {
        if !self.shedding.load(Ordering::Relaxed) {
            return;
        }
        let now = self.now();
        if self.may_log(now) {
            self.summarise(now);
        }
    }

    /// The pipeline shut down: a spell still going is summarised, whatever the rate.
    pub(crate) fn finish(&self) {
        if self.shedding.load(Ordering::Relaxed) {
            self.summarise(self.now());
        }
    }

    fn summarise(&self, now: u64) {
        if self.shedding.swap(false, Ordering::Relaxed) {
            let shed = self.spell.swap(0, Ordering::Relaxed);
            let lasted =
                Duration::from_nanos(now.saturating_sub(self.started.load(Ordering::Relaxed)));
            tracing::warn!(shed, ?lasted, "backpressure-pipeline: shedding stopped");
        }
    }
}
