//! Overload must not starve the workers: a producer looping on `push().await` under a
//! shedding policy, on a runtime with one thread, lets the workers make steady progress
//! (it yields once after 256 pushes into a full queue with no pop in between).

// The one-thread runtimes here are tokio's current-thread and an `async_executor::Executor`.
#![cfg(any(feature = "tokio", feature = "smol"))]

use std::sync::Arc;

use backpressure_pipeline::{Pipeline, Policy, Spawner};

const PUSHES: u32 = 100_000;
const CHECKPOINT: u32 = 10_000;

/// The producer's loop, in the same task as `block_on`: the workers can run only when it
/// yields. Between checkpoints the number processed must grow.
async fn producer_leaves_room_for_workers(spawner: Arc<dyn Spawner>, policy: Policy) {
    let pipeline = Pipeline::builder(16, policy)
        .workers(2)
        .spawn(spawner, |_: u32| async {})
        .unwrap();
    let mut last = 0;
    for i in 1..=PUSHES {
        let _ = pipeline.push(i).await;
        if i % CHECKPOINT == 0 {
            let processed = pipeline.stats().processed;
            assert!(
                processed > last,
                "{policy:?}: no item processed between pushes {} and {i}",
                i - CHECKPOINT
            );
            last = processed;
        }
    }
    let report = pipeline.shutdown().await;
    assert!(report.is_conserved(), "{report}");
    assert_eq!(report.produced, u64::from(PUSHES));
}

#[cfg(feature = "tokio")]
#[test]
fn tokio_current_thread() {
    for policy in [Policy::DropOldest, Policy::DropNewest] {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let spawner = backpressure_pipeline::TokioSpawner::new(rt.handle().clone()).unwrap();
        rt.block_on(producer_leaves_room_for_workers(Arc::new(spawner), policy));
    }
}

#[cfg(feature = "smol")]
#[test]
fn executor_on_one_thread() {
    for policy in [Policy::DropOldest, Policy::DropNewest] {
        let ex = Arc::new(async_executor::Executor::new());
        let spawner = backpressure_pipeline::ExecutorSpawner::new(ex.clone());
        smol::block_on(ex.run(producer_leaves_room_for_workers(Arc::new(spawner), policy)));
    }
}
