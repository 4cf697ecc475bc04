//! The ledger: where each accepted item's one fate is recorded.
//!
//! The queue records the fates it decides under its lock (accepted, shed, evicted, popped);
//! this records what becomes of a popped item: processed, failed, panicked, or lost in
//! flight (its worker was aborted while it held the item). An item waiting for a retry sits
//! in its worker's parking slot, and shutdown hands it back with the queue's leftovers.
//! [`Stats`] and [`Report`](super::Report) are both views of the same [`Fates`], so the
//! conservation law is one sum over one structure:
//!
//! ```text
//! produced = shed + accepted
//! accepted = evicted + expired + superseded + popped + in queue
//! popped   = processed + failed + panicked + lost + parked + in a worker's hands
//! ```

use crate::stats::{QueueStats, Stats};
use crate::sync::{AtomicU64, Ordering};

/// What became of a popped item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fate {
    Processed,
    Failed,
    Panicked,
}

/// The workers' side of the ledger. Each counter only grows.
///
/// The fates are counted per worker, each worker's counters on cache lines of their own, and
/// summed when read: a count shared by every worker moved its line between the cores on every
/// item (9–10 % of a pipeline's cycles in a profile of 4 workers; issue 14).
#[derive(Debug)]
pub(super) struct Ledger {
    /// One per worker, by index.
    slots: Box<[Slot]>,
    /// Failed attempts that were tried again (not a fate: the item is still in play).
    retried: AtomicU64,
    /// Worker states rebuilt after a panic ([`OnPanic::Restart`](super::OnPanic::Restart)).
    restarts: AtomicU64,
    /// Failed attempts to build a worker's state.
    start_failures: AtomicU64,
}

/// One worker's fates; only that worker writes them.
#[derive(Debug)]
#[repr(align(128))]
struct Slot {
    processed: AtomicU64,
    failed: AtomicU64,
    panicked: AtomicU64,
    /// Items the worker held when its future was dropped (aborted, or its runtime shut down).
    lost: AtomicU64,
}

/// The workers' counters, read at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct WorkerCounts {
    pub(super) processed: u64,
    pub(super) failed: u64,
    pub(super) panicked: u64,
    pub(super) lost: u64,
    pub(super) retried: u64,
    pub(super) restarts: u64,
    pub(super) start_failures: u64,
}

impl WorkerCounts {
    /// Popped items whose fate is recorded here.
    pub(super) fn settled(&self) -> u64 {
        self.processed + self.failed + self.panicked + self.lost
    }
}

/// Every fate, from the queue's counters and the workers'.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fates {
    pub(super) queue: QueueStats,
    pub(super) workers: WorkerCounts,
}

impl Ledger {
    /// A ledger for `workers` workers (indices `0..workers`).
    pub(super) fn new(workers: usize) -> Ledger {
        Ledger {
            slots: (0..workers)
                .map(|_| Slot {
                    processed: AtomicU64::new(0),
                    failed: AtomicU64::new(0),
                    panicked: AtomicU64::new(0),
                    lost: AtomicU64::new(0),
                })
                .collect(),
            retried: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            start_failures: AtomicU64::new(0),
        }
    }

    pub(super) fn retried(&self) {
        // Relaxed: an event count, in no sum with the queue's counters.
        self.retried.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn restarted(&self) {
        // Relaxed: as `retried`.
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn start_failed(&self) {
        // Relaxed: as `retried`.
        self.start_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn counts(&self) -> WorkerCounts {
        // Acquire: pairs with the Release increments, which follow their pops; a queue
        // snapshot taken after these loads includes those pops. Each slot's loads see at
        // most what was settled, so the sums never exceed what was popped.
        let (mut processed, mut failed, mut panicked, mut lost) = (0, 0, 0, 0);
        for slot in &*self.slots {
            processed += slot.processed.load(Ordering::Acquire);
            failed += slot.failed.load(Ordering::Acquire);
            panicked += slot.panicked.load(Ordering::Acquire);
            lost += slot.lost.load(Ordering::Acquire);
        }
        WorkerCounts {
            processed,
            failed,
            panicked,
            lost,
            retried: self.retried.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            start_failures: self.start_failures.load(Ordering::Relaxed),
        }
    }
}

impl Fates {
    pub(super) fn stats(&self) -> Stats {
        let (q, w) = (&self.queue, &self.workers);
        Stats {
            produced: q.accepted + q.shed,
            processed: w.processed,
            failed: w.failed,
            dropped: q.shed + q.evicted,
            expired: q.expired,
            superseded: q.superseded,
            panicked: w.panicked,
            retried: w.retried,
            restarts: w.restarts,
            depth: q.len,
            peak_depth: q.peak_len,
            time_full: q.time_full,
            oldest_age: None,
            queue_delay: None,
            overloaded: false,
        }
    }

    /// Popped items with no recorded fate: parked for a retry, or in a worker's hands.
    pub(super) fn unsettled(&self) -> u64 {
        // Never negative: a fate is recorded after its pop, and read before it (`counts`).
        self.queue.popped.saturating_sub(self.workers.settled())
    }
}

/// The items in a worker's hands (one, or a batch): if the worker's future is dropped
/// (aborted) while it holds some, they are lost in flight, and the drop records them.
#[derive(Debug)]
pub(super) struct InHand<'a> {
    /// The worker's own counters.
    slot: &'a Slot,
    held: u64,
}

impl<'a> InHand<'a> {
    /// Empty hands, of worker `index` (below the ledger's worker count).
    pub(super) fn new(ledger: &'a Ledger, index: usize) -> InHand<'a> {
        InHand {
            slot: &ledger.slots[index],
            held: 0,
        }
    }

    /// Records the fate of `items` popped items (a batch shares one).
    fn record(&self, fate: Fate, items: u64) {
        let counter = match fate {
            Fate::Processed => &self.slot.processed,
            Fate::Failed => &self.slot.failed,
            Fate::Panicked => &self.slot.panicked,
        };
        // Release: a snapshot that sees this count also sees the pop before it (it reads
        // these first, with Acquire, and the queue's counters after).
        counter.fetch_add(items, Ordering::Release);
    }

    /// `items` items were taken (popped, or back from the parking slot).
    pub(super) fn take(&mut self, items: u64) {
        self.held = items;
    }

    /// Their fate, recorded before any user code that follows can run.
    pub(super) fn settle(&mut self, fate: Fate) {
        let items = std::mem::take(&mut self.held);
        self.record(fate, items);
    }

    /// How many items are in hand.
    pub(super) fn held(&self) -> u64 {
        self.held
    }

    /// Of the items in hand, `kept` stay; the others succeeded (a batch that hands back
    /// only its failed items). `kept` is at most the items in hand.
    pub(super) fn keep(&mut self, kept: u64) {
        let done = self.held.saturating_sub(kept);
        if done > 0 {
            self.record(Fate::Processed, done);
            self.held -= done;
        }
    }

    /// They went to the parking slot, from which shutdown can hand them back.
    pub(super) fn park(&mut self) {
        self.held = 0;
    }
}

impl Drop for InHand<'_> {
    fn drop(&mut self) {
        if self.held > 0 {
            // Release: as `Ledger::record`.
            self.slot.lost.fetch_add(self.held, Ordering::Release);
        }
    }
}
