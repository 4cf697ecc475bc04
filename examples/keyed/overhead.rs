//! Part 2: what keyed lanes cost when the work costs nothing. The same pipeline (`Block`,
//! one producer with `push().await`, N items, then a drained shutdown) unkeyed, keyed with
//! every item its own key, and keyed over a few repeating keys.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backpressure_pipeline::Pipeline;
use backpressure_pipeline::Policy;

use crate::runtime::Runtime;

/// How the items are keyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keying {
    Unkeyed,
    /// Key = the item's id: no two items share a lane.
    Distinct,
    /// Key = id % n, pushed round-robin: every key has an item waiting most of the time.
    Repeating(u64),
}

impl fmt::Display for Keying {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Keying::Unkeyed => f.write_str("unkeyed"),
            Keying::Distinct => f.write_str("keyed, all keys distinct"),
            Keying::Repeating(n) => write!(f, "keyed, {n} keys round-robin"),
        }
    }
}

/// Pushes `items` ids through a pipeline of `workers` on `rt`, shuts it down (drained), and
/// returns items/s over the whole (build, pushes, drain, join). Checks that every id was
/// processed exactly once (count and sum) and the conservation law.
pub(crate) fn run(rt: Runtime, keying: Keying, workers: usize, capacity: usize, items: u64) -> f64 {
    let sum = Arc::new(AtomicU64::new(0));
    let spawner = rt.spawner();
    let started = Instant::now();
    let report = rt.run({
        let sum = sum.clone();
        async move {
            let builder = Pipeline::builder(capacity, Policy::Block)
                .workers(workers)
                .deadline(Duration::from_secs(600));
            let builder = match keying {
                Keying::Unkeyed => builder,
                Keying::Distinct => builder.key_by(|&id: &u64| id),
                Keying::Repeating(n) => builder.key_by(move |&id: &u64| id % n),
            };
            let pipeline = builder
                .spawn(spawner, move |id: u64| {
                    // The work: add the id to a counter, when the worker calls the work
                    // (not in the future), so no `Arc` is cloned per item. Relaxed: read
                    // after every worker is joined.
                    sum.fetch_add(id, Ordering::Relaxed);
                    std::future::ready(())
                })
                .expect("valid pipeline");
            for id in 0..items {
                assert!(pipeline.push(id).await.is_accepted());
            }
            pipeline.shutdown().await
        }
    });
    let elapsed = started.elapsed();
    assert!(report.is_conserved(), "conservation law broken: {report}");
    assert!(report.all_joined(), "a worker was not joined: {report}");
    assert_eq!(report.processed, items, "{report}");
    assert_eq!(
        sum.load(Ordering::Relaxed),
        items * items.saturating_sub(1) / 2,
        "an id was lost or processed twice"
    );
    items as f64 / elapsed.as_secs_f64()
}
