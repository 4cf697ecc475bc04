//! Ground truth for the worker tests: each item id's fate as the work, the hooks and
//! `take_leftovers` saw it, and the ids of the items dropped so far. Each id must end in
//! exactly one fate, and the report must match the ledger term by term.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use backpressure_pipeline::{Pipeline, Report};

use super::{Live, Tracked};

/// The one fate an item ends in, as the test saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fate {
    /// The work returned success (for the item, or its batch).
    Processed,
    /// The work returned a final error that consumed the item (or its batch).
    Failed,
    /// A dead-letter hook received the item.
    DeadLettered,
    /// The work panicked (on the item, or its batch).
    Panicked,
    /// The policy shed (`DropNewest`) or evicted (`DropOldest`) the item.
    Dropped,
    /// `take_leftovers` returned the item.
    HandedBack,
    /// Dropped with its aborted worker.
    Lost,
}

/// The ground truth: each id's fates, and the ids dropped so far.
#[derive(Debug, Clone, Default)]
pub struct Ledger(Arc<Mutex<Book>>);

#[derive(Debug, Default)]
struct Book {
    fates: HashMap<u32, Vec<Fate>>,
    dropped: Vec<u32>,
}

impl Ledger {
    pub fn record(&self, id: u32, fate: Fate) {
        self.record_all(&[id], fate);
    }

    pub fn record_all(&self, ids: &[u32], fate: Fate) {
        let mut book = lock(&self.0);
        for &id in ids {
            book.fates.entry(id).or_default().push(fate);
        }
    }

    /// The ids dropped so far, sorted (a repeated id would show twice).
    pub fn dropped(&self) -> Vec<u32> {
        let mut dropped = lock(&self.0).dropped.clone();
        dropped.sort_unstable();
        dropped
    }

    /// Checks that every id in `ids`, and no other, has exactly one fate; returns the ids
    /// of each fate, sorted.
    pub fn settle(&self, ids: Range<u32>) -> Settled {
        let book = lock(&self.0);
        let mut by_fate: BTreeMap<Fate, Vec<u32>> = BTreeMap::new();
        for id in ids.clone() {
            match book.fates.get(&id).map(Vec::as_slice) {
                Some(&[fate]) => by_fate.entry(fate).or_default().push(id),
                other => panic!("item {id} has fates {other:?}, not exactly one"),
            }
        }
        let strays: Vec<_> = book.fates.keys().filter(|id| !ids.contains(id)).collect();
        assert!(strays.is_empty(), "fates for unknown ids {strays:?}");
        Settled(by_fate)
    }
}

/// The ids of each fate, sorted.
#[derive(Debug)]
pub struct Settled(BTreeMap<Fate, Vec<u32>>);

impl Settled {
    pub fn ids(&self, fate: Fate) -> Vec<u32> {
        self.0.get(&fate).cloned().unwrap_or_default()
    }

    pub fn count(&self, fate: Fate) -> u64 {
        self.0.get(&fate).map_or(0, |ids| ids.len() as u64)
    }

    /// The report agrees with the ledger on every term, and the law holds.
    pub fn assert_matches(&self, report: &Report) {
        let terms = |r: &Report| {
            (
                r.produced,
                r.processed,
                r.failed,
                r.panicked,
                r.dropped,
                r.handed_back,
                r.lost_in_flight,
            )
        };
        let all: u64 = self.0.values().map(|ids| ids.len() as u64).sum();
        let expected = (
            all,
            self.count(Fate::Processed),
            self.count(Fate::Failed) + self.count(Fate::DeadLettered),
            self.count(Fate::Panicked),
            self.count(Fate::Dropped),
            self.count(Fate::HandedBack),
            self.count(Fate::Lost),
        );
        assert_eq!(terms(report), expected, "{report}");
        assert_eq!(
            report.abandoned,
            report.handed_back + report.lost_in_flight,
            "{report}"
        );
        assert!(report.is_conserved(), "{report}");
    }
}

/// An item: not `Clone`, so whatever a hook or `take_leftovers` gives back is the very item
/// pushed; counted live until dropped, and its drop recorded by id.
#[derive(Debug)]
pub struct Item {
    pub id: u32,
    _live: Tracked,
    ledger: Ledger,
}

impl Drop for Item {
    fn drop(&mut self) {
        lock(&self.ledger.0).dropped.push(self.id);
    }
}

/// The ids of a batch, in its order.
pub fn ids(batch: &[Item]) -> Vec<u32> {
    batch.iter().map(|item| item.id).collect()
}

/// What each test shares with its work and hooks.
#[derive(Debug, Clone, Default)]
pub struct Kit {
    pub items: Live,
    pub ledger: Ledger,
}

impl Kit {
    pub fn item(&self, id: u32) -> Item {
        Item {
            id,
            _live: self.items.track(),
            ledger: self.ledger.clone(),
        }
    }

    /// Records an item as processed and drops it.
    pub fn processed(&self, item: Item) {
        self.ledger.record(item.id, Fate::Processed);
    }

    /// Records a batch's fate and drops it.
    pub fn settle(&self, batch: Vec<Item>, fate: Fate) {
        self.ledger.record_all(&ids(&batch), fate);
    }

    /// Once the leftovers are dropped: every item was dropped exactly once, none leaked.
    pub fn assert_all_dropped_once(&self, ids: Range<u32>) {
        assert_eq!(self.items.count(), 0, "items leaked");
        assert_eq!(self.ledger.dropped(), ids.collect::<Vec<_>>());
    }
}

/// Takes the leftovers, records them as handed back, and returns them with their ids.
pub fn hand_back(pipeline: &Pipeline<Item>, ledger: &Ledger) -> (Vec<Item>, Vec<u32>) {
    let leftovers = pipeline.take_leftovers();
    let ids = ids(&leftovers);
    ledger.record_all(&ids, Fate::HandedBack);
    assert!(pipeline.take_leftovers().is_empty(), "handed back once");
    (leftovers, ids)
}

pub fn lock<V>(mutex: &Mutex<V>) -> MutexGuard<'_, V> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Adds one to `key`'s count; returns the new count.
pub fn bump<K: std::hash::Hash + Eq>(counts: &Mutex<HashMap<K, u32>>, key: K) -> u32 {
    let mut counts = lock(counts);
    let count = counts.entry(key).or_insert(0);
    *count += 1;
    *count
}
