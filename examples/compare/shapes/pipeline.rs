//! S5, S5T, S5B and S5L: the whole `Pipeline` (one item at a time, with a time-based
//! feature, in batches) vs 4 hand-written tasks reading a bounded async-channel (and, in S5,
//! a bounded flume channel), and an
//! item's latency from its push to the start of its batch's work.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backpressure_pipeline::{Batch, Pipeline, PipelineBuilder, Policy};

use crate::peer_channel::PeerChannel;
use crate::runtime::{run, spawn, spawner, work};

const S5_ITEMS: u64 = 200_000;
const S5_CAPACITY: usize = 1024;
const S5_WORKERS: usize = 4;

pub(crate) fn s5_pipeline() -> f64 {
    s5_run(|| {
        s5_builder()
            .spawn(spawner(), |item: u64| async move {
                work();
                black_box(item);
            })
            .expect("valid pipeline")
    })
}

/// S5T: the pipeline with a time-based feature, whose clock reads and stamps are the cost
/// (nothing is shed: every item is younger than the age and CoDel's target).
pub(crate) fn s5_timed(feature: fn(PipelineBuilder<u64>) -> PipelineBuilder<u64>) -> f64 {
    s5_run(move || {
        feature(s5_builder())
            .spawn(spawner(), |item: u64| async move {
                work();
                black_box(item);
            })
            .expect("valid pipeline")
    })
}

/// S5's pipeline settings, shared by its one-item and batched rows.
fn s5_builder<T: Send + 'static>() -> backpressure_pipeline::PipelineBuilder<T> {
    Pipeline::builder(S5_CAPACITY, Policy::Block)
        .workers(S5_WORKERS)
        .deadline(Duration::from_secs(60))
}

/// Pushes S5's items through the pipeline `start` makes (on the executor), shuts it down,
/// and returns the items per second.
fn s5_run(start: impl FnOnce() -> Pipeline<u64> + Send + 'static) -> f64 {
    let begun = Instant::now();
    let report = run(async move {
        let pipeline = start();
        for i in 0..S5_ITEMS {
            assert!(pipeline.push(i).await.is_accepted());
        }
        pipeline.shutdown().await
    });
    let elapsed = begun.elapsed();
    assert!(report.is_conserved() && report.all_joined());
    assert_eq!(report.processed, S5_ITEMS);
    S5_ITEMS as f64 / elapsed.as_secs_f64()
}

/// S5's hand-written pool: 4 tasks reading a bounded channel of peer `P`, joined at the end.
pub(crate) fn s5_pool<P: PeerChannel>() -> f64 {
    let start = Instant::now();
    let processed = run(async {
        let (tx, rx) = P::bounded(S5_CAPACITY);
        let tasks: Vec<_> = (0..S5_WORKERS)
            .map(|_| {
                let rx = rx.clone();
                spawn(async move {
                    let mut n = 0u64;
                    while let Some(item) = P::recv(&rx).await {
                        work();
                        black_box(item);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        drop(rx);
        for i in 0..S5_ITEMS {
            assert!(P::send(&tx, i).await, "workers alive");
        }
        drop(tx);
        let mut n = 0;
        for task in tasks {
            n += task.await;
        }
        n
    });
    let elapsed = start.elapsed();
    assert_eq!(processed, S5_ITEMS);
    S5_ITEMS as f64 / elapsed.as_secs_f64()
}

// S5B and S5L: the pipeline in batches, and an item's latency from push to the start of its
// work.

/// The batch sizes measured (with their row names), each with `S5B_WAIT` as the longest
/// wait after a first item.
pub(crate) const S5B_SIZES: [(&str, usize); 3] = [
    ("batches of 1", 1),
    ("batches of 16", 16),
    ("batches of 64", 64),
];
const S5B_WAIT: Duration = Duration::from_millis(1);
/// The latency run: items pushed at a steady pace the workers keep up with (the latency of a
/// saturated queue is its queueing delay, which no batch size changes).
const S5L_ITEMS: u64 = 20_000;
const S5L_PACE: Duration = Duration::from_micros(10);

/// S5's run with workers that take batches of up to `max_items` (the same ~1 µs per item).
pub(crate) fn s5_batched(max_items: usize) -> f64 {
    s5_run(move || {
        s5_builder()
            .spawn_batched(
                spawner(),
                Batch::new(max_items, S5B_WAIT),
                |batch: Vec<u64>| async move {
                    for item in batch {
                        work();
                        black_box(item);
                    }
                },
            )
            .expect("valid pipeline")
    })
}

/// The `quantile` of the time from an item's push to the start of its batch's work, in µs,
/// with items pushed every `S5L_PACE`.
pub(crate) fn s5_latency(max_items: usize, quantile: f64) -> f64 {
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(
        S5L_ITEMS as usize,
    )));
    let report = run({
        let latencies = latencies.clone();
        async move {
            let pipeline = s5_builder()
                .spawn_batched(
                    spawner(),
                    Batch::new(max_items, S5B_WAIT),
                    move |batch: Vec<Instant>| {
                        let latencies = latencies.clone();
                        async move {
                            let started = Instant::now();
                            latencies
                                .lock()
                                .expect("not poisoned")
                                .extend(batch.iter().map(|pushed| started - *pushed));
                            for item in batch {
                                work();
                                black_box(item);
                            }
                        }
                    },
                )
                .expect("valid pipeline");
            let begun = Instant::now();
            for i in 0..S5L_ITEMS {
                // A steady pace: wait (spinning, to keep the timer out of it) for this
                // item's slot, yielding so that the workers run.
                let slot = begun + S5L_PACE * i as u32;
                while Instant::now() < slot {
                    smol::future::yield_now().await;
                }
                assert!(pipeline.push(Instant::now()).await.is_accepted());
            }
            pipeline.shutdown().await
        }
    });
    assert!(report.is_conserved() && report.processed == S5L_ITEMS);
    let mut latencies = latencies.lock().expect("not poisoned").clone();
    latencies.sort();
    let at = ((latencies.len() - 1) as f64 * quantile).round() as usize;
    latencies[at].as_secs_f64() * 1e6
}
