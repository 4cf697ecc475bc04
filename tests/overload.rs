//! Overload must not starve the workers: a producer looping on `push().await`, or forwarding
//! a stream into the queue's sink, under a shedding policy, on a runtime with one thread,
//! lets the workers make steady progress (it yields once after 256 pushes into a full queue
//! with no pop in between).

// The one-thread runtimes here are tokio's current-thread and an `async_executor::Executor`.
#![cfg(any(feature = "tokio", feature = "smol"))]

use std::sync::Arc;

use backpressure_pipeline::{Pipeline, Policy, Queue, Spawner};
use futures_util::{stream, StreamExt};

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

/// The same through the sink: `stream.forward(sink)` of always-ready items into a shedding
/// queue lets the queue's consumer, on the same thread, take items while it runs.
async fn forward_leaves_room_for_the_consumer(spawner: Arc<dyn Spawner>, policy: Policy) {
    let queue = Arc::new(Queue::new(16, policy).unwrap());
    let (count_tx, count_rx) = futures_channel::oneshot::channel();
    spawner
        .spawn(Box::pin({
            let queue = queue.clone();
            async move {
                let mut received = 0u32;
                while queue.pop().await.is_some() {
                    received += 1;
                }
                let _ = count_tx.send(received);
            }
        }))
        .unwrap();
    // `forward` closes the sink at the end, which closes the queue and ends the consumer.
    let items = stream::iter(0..PUSHES).map(Ok);
    items.forward(queue.clone().into_sink()).await.unwrap();
    let received = count_rx.await.unwrap();
    // One yield per 256 sends into a full queue, and the consumer drains the queue at each:
    // without the yield it would only get the last 16, after the close.
    assert!(
        received >= PUSHES / 256,
        "{policy:?}: the consumer got {received} of {PUSHES}"
    );
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
        let spawner: Arc<dyn Spawner> = Arc::new(spawner);
        rt.block_on(producer_leaves_room_for_workers(spawner.clone(), policy));
        rt.block_on(forward_leaves_room_for_the_consumer(spawner, policy));
    }
}

#[cfg(feature = "smol")]
#[test]
fn executor_on_one_thread() {
    for policy in [Policy::DropOldest, Policy::DropNewest] {
        let ex = Arc::new(async_executor::Executor::new());
        let spawner = backpressure_pipeline::ExecutorSpawner::new(ex.clone());
        let spawner: Arc<dyn Spawner> = Arc::new(spawner);
        smol::block_on(ex.run(producer_leaves_room_for_workers(spawner.clone(), policy)));
        smol::block_on(ex.run(forward_leaves_room_for_the_consumer(spawner, policy)));
    }
}
