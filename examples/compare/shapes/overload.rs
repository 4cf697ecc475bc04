//! S2 and S3, overload into capacity 16 with 4 consumers at ~1 µs per item: the producer's
//! push rate with `DropOldest` (vs async-channel's `force_send`) and `DropNewest` (vs
//! `try_send` on async-channel, flume, kanal, crossfire and tokio mpsc).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use backpressure_pipeline::Policy;

use crate::bench_queue::BenchQueue;
use crate::peer_channel::PeerChannel;
use crate::runtime::{run, spawn, work};

/// Items pushed per repetition: S3 sheds most of them at a lock-free check, so it needs more.
const S2_ITEMS: u64 = 2_000_000;
const S3_ITEMS: u64 = 10_000_000;
const OVERLOAD_CAPACITY: usize = 16;
const OVERLOAD_CONSUMERS: usize = 4;

/// The producer's push rate, in items/s; `sync_push` uses `try_push` instead of `push().await`.
pub(crate) fn overload_queue<Q: BenchQueue>(policy: Policy, sync_push: bool) -> f64 {
    let items = overload_items(policy == Policy::DropOldest);
    let queue = Arc::new(Q::make(OVERLOAD_CAPACITY, policy));
    let elapsed = run(async move {
        let tasks: Vec<_> = (0..OVERLOAD_CONSUMERS)
            .map(|_| {
                let queue = queue.clone();
                spawn(async move {
                    while let Some(item) = queue.pop().await {
                        work();
                        black_box(item);
                    }
                })
            })
            .collect();
        let start = Instant::now();
        for i in 0..items {
            let outcome = if sync_push {
                queue.try_push(i)
            } else {
                queue.push(i).await
            };
            black_box(outcome.into_inner());
        }
        let elapsed = start.elapsed();
        queue.close();
        for task in tasks {
            task.await;
        }
        elapsed
    });
    items as f64 / elapsed.as_secs_f64()
}

/// S3's peers that shed the incoming item: flume's, kanal's and crossfire's `try_send`, with
/// 4 consumers as the others.
pub(crate) fn overload_peer<P: PeerChannel>() -> f64 {
    let items = S3_ITEMS;
    let (tx, rx) = P::bounded(OVERLOAD_CAPACITY);
    let elapsed = run(async move {
        let tasks: Vec<_> = (0..OVERLOAD_CONSUMERS)
            .map(|_| {
                let rx = rx.clone();
                spawn(async move {
                    while let Some(item) = P::recv(&rx).await {
                        work();
                        black_box(item);
                    }
                })
            })
            .collect();
        drop(rx);
        let start = Instant::now();
        for i in 0..items {
            black_box(P::try_send(&tx, i));
        }
        let elapsed = start.elapsed();
        drop(tx);
        for task in tasks {
            task.await;
        }
        elapsed
    });
    items as f64 / elapsed.as_secs_f64()
}

/// tokio mpsc's `try_send`, with one consumer task: tokio's channel has one receiver; it does
/// the four consumers' work in turn, so the channel is full as often as the others.
pub(crate) fn overload_tokio() -> f64 {
    let items = S3_ITEMS;
    let elapsed = run(async move {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(OVERLOAD_CAPACITY);
        let task = spawn(async move {
            while let Some(item) = rx.recv().await {
                work();
                black_box(item);
            }
        });
        let start = Instant::now();
        for i in 0..items {
            black_box(tx.try_send(i).err());
        }
        let elapsed = start.elapsed();
        drop(tx);
        task.await;
        elapsed
    });
    items as f64 / elapsed.as_secs_f64()
}

fn overload_items(evicting: bool) -> u64 {
    if evicting {
        S2_ITEMS
    } else {
        S3_ITEMS
    }
}

/// async-channel's push rate: `force_send` (evict the oldest) or `try_send` (shed the new).
pub(crate) fn overload_channel(force: bool) -> f64 {
    let items = overload_items(force);
    let (tx, rx) = async_channel::bounded::<u64>(OVERLOAD_CAPACITY);
    let elapsed = run(async move {
        let tasks: Vec<_> = (0..OVERLOAD_CONSUMERS)
            .map(|_| {
                let rx = rx.clone();
                spawn(async move {
                    while let Ok(item) = rx.recv().await {
                        work();
                        black_box(item);
                    }
                })
            })
            .collect();
        drop(rx);
        let start = Instant::now();
        for i in 0..items {
            if force {
                black_box(tx.force_send(i).expect("receivers alive"));
            } else {
                black_box(tx.try_send(i).err().map(|err| err.into_inner()));
            }
        }
        let elapsed = start.elapsed();
        drop(tx);
        for task in tasks {
            task.await;
        }
        elapsed
    });
    items as f64 / elapsed.as_secs_f64()
}
