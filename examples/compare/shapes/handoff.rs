//! S1, back-pressure hand-off: `Policy::Block`, `push().await` / `pop().await`, 1 producer
//! → 1, 4, 16 consumer tasks, vs bounded async-channel, flume, kanal and crossfire channels.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use backpressure_pipeline::Policy;

use crate::bench_queue::BenchQueue;
use crate::peer_channel::PeerChannel;
use crate::runtime::{run, spawn};

const S1_ITEMS: u64 = 300_000;

pub(crate) fn s1_queue<Q: BenchQueue>(capacity: usize, consumers: usize) -> f64 {
    let queue = Arc::new(Q::make(capacity, Policy::Block));
    let start = Instant::now();
    let total = run(async move {
        let tasks: Vec<_> = (0..consumers)
            .map(|_| {
                let queue = queue.clone();
                spawn(async move {
                    let mut n = 0u64;
                    while let Some(item) = queue.pop().await {
                        black_box(item);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        for i in 0..S1_ITEMS {
            assert!(queue.push(i).await.is_accepted());
        }
        queue.close();
        let mut total = 0;
        for task in tasks {
            total += task.await;
        }
        total
    });
    assert_eq!(total, S1_ITEMS);
    S1_ITEMS as f64 / start.elapsed().as_secs_f64()
}

/// The same with a peer: each consumer holds a receiver; dropping the sender closes it.
pub(crate) fn s1_channel<P: PeerChannel>(capacity: usize, consumers: usize) -> f64 {
    let (tx, rx) = P::bounded(capacity);
    let start = Instant::now();
    let total = run(async move {
        let tasks: Vec<_> = (0..consumers)
            .map(|_| {
                let rx = rx.clone();
                spawn(async move {
                    let mut n = 0u64;
                    while let Some(item) = P::recv(&rx).await {
                        black_box(item);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        drop(rx);
        for i in 0..S1_ITEMS {
            assert!(P::send(&tx, i).await, "receivers alive");
        }
        drop(tx);
        let mut total = 0;
        for task in tasks {
            total += task.await;
        }
        total
    });
    assert_eq!(total, S1_ITEMS);
    S1_ITEMS as f64 / start.elapsed().as_secs_f64()
}
