//! S6, many to many: 4 producer tasks → 4 consumer tasks, `Policy::Block`, capacity 1024,
//! `push().await` / `pop().await`, vs async-channel, flume, kanal and crossfire. Each
//! variant checks that every item arrived exactly once.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backpressure_pipeline::Policy;

use crate::bench_queue::BenchQueue;
use crate::peer_channel::PeerChannel;
use crate::runtime::{run, spawn};

const S6_ITEMS: u64 = 1_000_000;
const S6_CAPACITY: usize = 1024;
const S6_PRODUCERS: u64 = 4;
const S6_CONSUMERS: usize = 4;

/// Producer `p`'s ids: its quarter of `0..S6_ITEMS`, so all of them cover it once.
fn ids(p: u64) -> Range<u64> {
    p * S6_ITEMS / S6_PRODUCERS..(p + 1) * S6_ITEMS / S6_PRODUCERS
}

/// What a consumer received: how many items, the sum of their ids and of their squares.
#[derive(Default)]
struct Tally {
    count: u64,
    sum: u64,
    sum_sq: u64,
}

impl Tally {
    fn add(&mut self, id: u64) {
        self.count += 1;
        self.sum += id;
        self.sum_sq += id * id;
    }

    fn merge(&mut self, other: Tally) {
        self.count += other.count;
        self.sum += other.sum;
        self.sum_sq += other.sum_sq;
    }
}

/// Asserts that the ids `0..n` each arrived once; returns items/s.
fn check(tally: Tally, elapsed: Duration) -> f64 {
    let n = S6_ITEMS;
    assert_eq!(tally.count, n, "items received");
    assert_eq!(tally.sum, n * (n - 1) / 2, "sum of the ids");
    // Count and sum alone let a duplicate and a loss cancel out (3 + 3 for 2 + 4); the sum
    // of squares does not (18 ≠ 20).
    assert_eq!(
        tally.sum_sq,
        (n - 1) * n * (2 * n - 1) / 6,
        "sum of the squares"
    );
    n as f64 / elapsed.as_secs_f64()
}

pub(crate) fn s6_queue<Q: BenchQueue>() -> f64 {
    let queue = Arc::new(Q::make(S6_CAPACITY, Policy::Block));
    let start = Instant::now();
    let tally = run(async move {
        let consumers: Vec<_> = (0..S6_CONSUMERS)
            .map(|_| {
                let queue = queue.clone();
                spawn(async move {
                    let mut tally = Tally::default();
                    while let Some(id) = queue.pop().await {
                        tally.add(id);
                    }
                    tally
                })
            })
            .collect();
        let producers: Vec<_> = (0..S6_PRODUCERS)
            .map(|p| {
                let queue = queue.clone();
                spawn(async move {
                    for id in ids(p) {
                        assert!(queue.push(id).await.is_accepted());
                    }
                })
            })
            .collect();
        for producer in producers {
            producer.await;
        }
        // Every item is in: closing now lets the consumers drain the rest, then stop.
        queue.close();
        let mut total = Tally::default();
        for consumer in consumers {
            total.merge(consumer.await);
        }
        total
    });
    check(tally, start.elapsed())
}

/// The same with a peer: each producer holds a sender, and the last one to finish closes it.
pub(crate) fn s6_channel<P: PeerChannel>() -> f64 {
    let (tx, rx) = P::bounded(S6_CAPACITY);
    let start = Instant::now();
    let tally = run(async move {
        let consumers: Vec<_> = (0..S6_CONSUMERS)
            .map(|_| {
                let rx = rx.clone();
                spawn(async move {
                    let mut tally = Tally::default();
                    while let Some(id) = P::recv(&rx).await {
                        tally.add(id);
                    }
                    tally
                })
            })
            .collect();
        drop(rx);
        let producers: Vec<_> = (0..S6_PRODUCERS)
            .map(|p| {
                let tx = tx.clone();
                spawn(async move {
                    for id in ids(p) {
                        assert!(P::send(&tx, id).await, "receivers alive");
                    }
                })
            })
            .collect();
        drop(tx);
        for producer in producers {
            producer.await;
        }
        let mut total = Tally::default();
        for consumer in consumers {
            total.merge(consumer.await);
        }
        total
    });
    check(tally, start.elapsed())
}
