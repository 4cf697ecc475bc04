//! Keyed lanes: which queued item a worker may take when items carry a key.
//!
//! Items stay in the one buffer, in push order, so that the capacity, the policies, the
//! stamps and the leftovers work as they do without keys. Beside the buffer, each key has a
//! lane: how many of its items are running (taken and not yet released) and the sequence
//! numbers of its queued items, oldest first. A lane whose oldest queued item may run now
//! (fewer than `per_key` running) is *ready*, filed under that item's sequence number; a
//! take serves the ready item with the lowest number, so items are served in push order,
//! skipping only those whose key is busy. Nothing is a fixed hash lane: a slow key holds up
//! its own items and no others.
//!
//! # Invariants
//!
//! 1. `order` runs parallel to the buffer: `order[i]` is `buf[i]`'s sequence number and
//!    lane, sequence numbers strictly increasing, so an item's position is a binary search.
//! 2. A lane's `queued` holds its items' sequence numbers in push order; every item in the
//!    buffer is in exactly one lane's `queued`.
//! 3. A lane is in `ready`, under its first queued number, if and only if it has a queued
//!    item and `running < per_key`.
//! 4. A lane with nothing queued and nothing running is forgotten: its key leaves `ids` and
//!    its slot is free. The lanes are bounded by the items queued or running.
//! 5. Keys are compared by a 128-bit hash computed before the lock from two randomly seeded
//!    SipHash keys (the key function and `Hash` are user code, and never run under the
//!    lock): two distinct keys share a lane with a probability near 2^-128 per pair.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};

/// A key's identity (invariant 5).
pub(crate) type KeyHash = u128;

/// Hashes a key to its 128-bit identity, with two random seeds fixed per queue.
#[derive(Debug, Clone)]
pub(crate) struct KeyHasher(RandomState, RandomState);

impl KeyHasher {
    pub(crate) fn new() -> KeyHasher {
        KeyHasher(RandomState::new(), RandomState::new())
    }

    pub(crate) fn hash<K: Hash + ?Sized>(&self, key: &K) -> KeyHash {
        let (mut high, mut low) = (self.0.build_hasher(), self.1.build_hasher());
        key.hash(&mut high);
        key.hash(&mut low);
        (u128::from(high.finish()) << 64) | u128::from(low.finish())
    }
}

/// `ids` is keyed by a hash already: its low half is the map's hash.
#[derive(Debug, Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is used; this keeps any other use correct.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64;
    }
}

#[derive(Debug, Default)]
struct Lane {
    key: KeyHash,
    running: usize,
    queued: VecDeque<u64>,
}

/// The lanes of a keyed queue, under the buffer lock.
#[derive(Debug)]
pub(super) struct Keys {
    per_key: usize,
    coalesce: bool,
    ids: HashMap<KeyHash, u32, BuildHasherDefault<Identity>>,
    lanes: Vec<Lane>,
    free: Vec<u32>,
    /// Ready lanes by their first queued sequence number (invariant 3).
    ready: Ready,
    /// Parallel to the buffer (invariant 1).
    order: VecDeque<(u64, u32)>,
    next_seq: u64,
    /// Items replaced by a newer one of their key (coalescing).
    pub(super) superseded: u64,
}

impl Keys {
    /// `per_key` is at least 1; coalescing runs one item of a key at a time.
    pub(super) fn new(per_key: usize, coalesce: bool) -> Keys {
        debug_assert!(per_key >= 1 && !(coalesce && per_key > 1));
        Keys {
            per_key,
            coalesce,
            ids: HashMap::default(),
            lanes: Vec::new(),
            free: Vec::new(),
            ready: Ready::default(),
            order: VecDeque::new(),
            next_seq: 0,
            superseded: 0,
        }
    }

    /// Whether a queued item may be taken now.
    #[inline]
    pub(super) fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// With coalescing, the position of `key`'s pending item, if it has one: a push of the
    /// key replaces it rather than take a slot.
    pub(super) fn pending(&self, key: KeyHash) -> Option<usize> {
        if !self.coalesce {
            return None;
        }
        let lane = &self.lanes[*self.ids.get(&key)? as usize];
        lane.queued.front().map(|&seq| self.position(seq))
    }

    /// Whether any of `held` (lanes a worker holds) has an item queued: a batch being filled
    /// must not wait on it.
    pub(super) fn any_queued(&self, held: &[u32]) -> bool {
        held.iter()
            .any(|&id| !self.lanes[id as usize].queued.is_empty())
    }

    /// Files an item of `key` pushed at the back of the buffer.
    pub(super) fn push(&mut self, key: KeyHash) -> bool {
        let id = self.lane_of(key);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.push_back((seq, id));
        let lane = &mut self.lanes[id as usize];
        lane.queued.push_back(seq);
        if lane.queued.len() == 1 && lane.running < self.per_key {
            self.ready.insert(seq, id);
        }
        // One more item may run now if the lane's queued items fit in its free places
        // (`running <= per_key` always: only ready lanes are served).
        lane.queued.len() + lane.running <= self.per_key
    }

    /// A replaced item: counted (the new one keeps its place, its stamp and its number).
    pub(super) fn supersede(&mut self) {
        self.superseded += 1;
    }

    /// The position of the next item to serve: the oldest ready one, or with `newest` the
    /// newest ready one (adaptive LIFO across keys; a key's own items stay in order).
    #[inline]
    pub(super) fn next(&self, newest: bool) -> Option<usize> {
        let seq = if newest {
            self.ready.last()?
        } else {
            self.ready.first()?
        };
        Some(self.position(seq))
    }

    /// Takes the item at `pos` out of the lanes, for service (`serve`: its lane counts one
    /// more running, released by [`release`](Keys::release)) or unserved (evicted, shed
    /// at the exit, left at the end). Returns its lane. The item must be its lane's oldest
    /// queued one, as every item the queue removes is.
    pub(super) fn remove(&mut self, pos: usize, serve: bool) -> u32 {
        let (seq, id) = self
            .order
            .remove(pos)
            .expect("a lane entry per item (invariant 1)");
        let lane = &mut self.lanes[id as usize];
        let first = lane.queued.pop_front();
        debug_assert_eq!(first, Some(seq), "items leave their lane oldest first");
        self.ready.remove(seq);
        if serve {
            lane.running += 1;
        }
        self.refile(id);
        id
    }

    /// A served item of lane `id` is done: its key may run another. Returns whether one
    /// more queued item may run now (a popper is woken for it).
    pub(super) fn release(&mut self, id: u32) -> bool {
        let lane = &mut self.lanes[id as usize];
        debug_assert!(lane.running > 0, "released once per item served");
        lane.running = lane.running.saturating_sub(1);
        // One more may run if a queued item was waiting for this place.
        let freed = lane.queued.len() + lane.running >= self.per_key;
        self.refile(id);
        freed
    }

    /// Every queued item leaves (the buffer was emptied); running items stay counted.
    pub(super) fn clear(&mut self) {
        self.order.clear();
        self.ready.clear();
        for id in 0..self.lanes.len() as u32 {
            if !self.lanes[id as usize].queued.is_empty() {
                self.lanes[id as usize].queued.clear();
                self.refile(id);
            }
        }
    }

    /// How many distinct keys have items queued or running.
    #[cfg(test)]
    fn keys(&self) -> usize {
        self.ids.len()
    }

    fn position(&self, seq: u64) -> usize {
        // Invariant 1; the front is the common case.
        match self.order.front() {
            Some(&(front, _)) if front == seq => 0,
            _ => self
                .order
                .binary_search_by_key(&seq, |&(seq, _)| seq)
                .expect("a queued item's number is in order (invariant 1)"),
        }
    }

    fn lane_of(&mut self, key: KeyHash) -> u32 {
        let Keys {
            ids, lanes, free, ..
        } = self;
        // One probe of the map, found or made.
        *ids.entry(key).or_insert_with(|| {
            let id = match free.pop() {
                Some(id) => id,
                None => {
                    lanes.push(Lane::default());
                    u32::try_from(lanes.len() - 1).expect("fewer keys than 2^32 at once")
                }
            };
            lanes[id as usize].key = key;
            id
        })
    }

    /// Restores invariants 3 and 4 for lane `id` after a change.
    fn refile(&mut self, id: u32) {
        let lane = &mut self.lanes[id as usize];
        match lane.queued.front() {
            Some(&first) if lane.running < self.per_key => {
                self.ready.insert(first, id);
            }
            Some(_) => {}
            None if lane.running == 0 => {
                self.ids.remove(&lane.key);
                // A lane that once held many items gives its memory back.
                if lane.queued.capacity() > 64 {
                    lane.queued = VecDeque::new();
                }
                self.free.push(id);
            }
            None => {}
        }
    }
}

/// The ready lanes, by the sequence number of their first queued item, in a deque kept in
/// order: a push files its lane at the back (its number is the newest), a take serves the
/// front, so the common changes are at the ends; a lane freed by a release is filed in its
/// place by a binary search.
#[derive(Debug, Default)]
struct Ready(VecDeque<(u64, u32)>);

impl Ready {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn first(&self) -> Option<u64> {
        self.0.front().map(|&(seq, _)| seq)
    }

    fn last(&self) -> Option<u64> {
        self.0.back().map(|&(seq, _)| seq)
    }

    /// Files lane `id` under `seq`; a lane already filed there stays filed once.
    #[inline]
    fn insert(&mut self, seq: u64, id: u32) {
        match self.0.back() {
            Some(&(last, _)) if last == seq => {}
            Some(&(last, _)) if last > seq => {
                if let Err(pos) = self.0.binary_search_by_key(&seq, |&(seq, _)| seq) {
                    self.0.insert(pos, (seq, id));
                }
            }
            _ => self.0.push_back((seq, id)),
        }
    }

    #[inline]
    fn remove(&mut self, seq: u64) {
        match self.0.front() {
            Some(&(first, _)) if first == seq => {
                self.0.pop_front();
            }
            _ => {
                if let Ok(pos) = self.0.binary_search_by_key(&seq, |&(seq, _)| seq) {
                    self.0.remove(pos);
                }
            }
        }
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_in_push_order_skipping_busy_keys() {
        let mut keys = Keys::new(1, false);
        // a1 b1 a2 c1
        assert!(keys.push(1));
        assert!(keys.push(2));
        assert!(!keys.push(1), "a's second item waits for its first");
        assert!(keys.push(3));
        let a = keys.remove(keys.next(false).unwrap(), true); // a1
        assert_eq!(keys.next(false), Some(0)); // b1, now at the front
        let b = keys.remove(0, true);
        // a2 waits for a1; c1 is next.
        assert_eq!(keys.next(false), Some(1));
        let c = keys.remove(1, true);
        assert_eq!(keys.next(false), None);
        assert!(keys.release(a), "a2 may run now");
        assert_eq!(keys.next(false), Some(0));
        keys.remove(0, true);
        assert!(!keys.release(b));
        assert!(!keys.release(c));
        assert!(!keys.release(a));
        assert_eq!(keys.keys(), 0, "idle lanes are forgotten");
    }

    #[test]
    fn per_key_allows_that_many_at_once() {
        let mut keys = Keys::new(2, false);
        assert!(keys.push(7));
        assert!(keys.push(7));
        assert!(!keys.push(7));
        let first = keys.remove(keys.next(false).unwrap(), true);
        let second = keys.remove(keys.next(false).unwrap(), true);
        assert_eq!(keys.next(false), None);
        assert!(keys.release(first));
        keys.remove(keys.next(false).unwrap(), true);
        assert!(!keys.release(second));
    }

    #[test]
    fn coalescing_finds_the_pending_item() {
        let mut keys = Keys::new(1, true);
        assert_eq!(keys.pending(5), None);
        keys.push(5);
        keys.push(6);
        assert_eq!(keys.pending(6), Some(1));
        let five = keys.remove(0, true);
        assert_eq!(keys.pending(5), None, "a running item is not pending");
        keys.push(5);
        assert_eq!(keys.pending(5), Some(1));
        assert!(keys.release(five));
    }

    #[test]
    fn eviction_and_clear_keep_the_lanes_whole() {
        let mut keys = Keys::new(1, false);
        keys.push(1);
        keys.push(1);
        keys.push(2);
        keys.remove(0, false); // the oldest evicted: key 1's next item is ready
        assert_eq!(keys.next(false), Some(0));
        let one = keys.remove(0, true);
        keys.push(1);
        keys.clear();
        assert_eq!(keys.next(false), None);
        assert_eq!(keys.keys(), 1, "the running lane stays");
        assert!(!keys.release(one));
        assert_eq!(keys.keys(), 0);
    }

    #[test]
    fn a_lane_is_filed_once_however_often_it_is_refiled() {
        let mut keys = Keys::new(3, false);
        keys.push(1);
        keys.push(1);
        keys.push(1);
        keys.push(2);
        let first = keys.remove(0, true); // key 1 runs one, its next item stays filed
        assert!(!keys.release(first), "key 1 had places free");
        // Filed once each: key 1 under its next item, key 2.
        assert_eq!(keys.ready.0, [(1, 0), (3, 1)]);
        keys.remove(keys.next(false).unwrap(), true);
        keys.remove(keys.next(false).unwrap(), true);
        keys.remove(keys.next(false).unwrap(), true);
        assert_eq!(keys.next(false), None);
    }

    #[test]
    fn hashes_differ_by_key_and_agree_for_equal_keys() {
        let hasher = KeyHasher::new();
        assert_eq!(hasher.hash("a"), hasher.hash(&String::from("a")));
        assert_ne!(hasher.hash(&1u64), hasher.hash(&2u64));
    }
}
