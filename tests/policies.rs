//! What each policy keeps, through the pipeline, on every runtime.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backpressure_pipeline::{CancellationToken, Pipeline, Policy, PushOutcome};
use common::Sp;

/// Runs a one-worker pipeline whose worker waits for `gate` before its first item, pushes
/// ids 0..8 into a buffer of 4, and returns the ids the worker saw, in order.
///
/// The worker takes item 0 and holds it until the gate opens, so the buffer holds exactly
/// the next 4 pushes when the overload starts; everything is decided before the gate opens.
async fn keeps(sp: Sp, policy: Policy) -> (Vec<u32>, Vec<PushOutcome<u32>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let gate = CancellationToken::new();
    let (taken_tx, taken_rx) = async_channel::bounded(1);
    let pipeline = Pipeline::builder(4, policy)
        .workers(1)
        .deadline(Duration::MAX)
        .spawn(sp, {
            let (seen, gate) = (seen.clone(), gate.clone());
            move |id: u32| {
                let (seen, gate, taken_tx) = (seen.clone(), gate.clone(), taken_tx.clone());
                async move {
                    let _ = taken_tx.try_send(());
                    gate.cancelled().await;
                    seen.lock().unwrap().push(id);
                }
            }
        })
        .unwrap();
    assert_eq!(pipeline.push(0).await, PushOutcome::Accepted);
    taken_rx.recv().await.unwrap(); // the worker holds item 0
    let mut outcomes = Vec::new();
    for id in 1..9 {
        outcomes.push(pipeline.try_push(id));
    }
    gate.cancel();
    let report = pipeline.shutdown().await;
    assert!(report.is_conserved(), "{report}");
    assert!(report.all_joined(), "{report}");
    // Full and Closed hand the item back without producing it; everything else counts.
    let produced = 1 + outcomes
        .iter()
        .filter(|o| !matches!(o, PushOutcome::Full(_) | PushOutcome::Closed(_)))
        .count();
    assert_eq!(report.produced, produced as u64);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(report.processed, seen.len() as u64);
    (seen, outcomes)
}

async fn drop_newest_keeps_oldest_items(sp: Sp) {
    let (seen, outcomes) = keeps(sp, Policy::DropNewest).await;
    assert_eq!(seen, [0, 1, 2, 3, 4]);
    let shed: Vec<_> = outcomes
        .into_iter()
        .filter_map(|o| match o {
            PushOutcome::Shed(id) => Some(id),
            PushOutcome::Accepted => None,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        shed,
        [5, 6, 7, 8],
        "the incoming items are shed and handed back"
    );
}

async fn drop_oldest_keeps_newest_items(sp: Sp) {
    let (seen, outcomes) = keeps(sp, Policy::DropOldest).await;
    assert_eq!(seen, [0, 5, 6, 7, 8]);
    let evicted: Vec<_> = outcomes
        .into_iter()
        .filter_map(|o| match o {
            PushOutcome::Evicted(id) => Some(id),
            PushOutcome::Accepted => None,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        evicted,
        [1, 2, 3, 4],
        "the oldest items are evicted and handed back"
    );
}

async fn block_waits_and_sheds_nothing(sp: Sp) {
    // Under Block, try_push reports Full at capacity, and push waits instead of shedding.
    let (seen, outcomes) = keeps(sp.clone(), Policy::Block).await;
    assert_eq!(seen, [0, 1, 2, 3, 4]);
    assert!(
        outcomes[4..]
            .iter()
            .all(|o| matches!(o, PushOutcome::Full(_))),
        "{outcomes:?}"
    );

    // A producer task pushing 200 items into a buffer of 2 with one gated worker: it gets
    // ahead by at most the buffer plus the item in hand, then waits; nothing is shed.
    let gate = CancellationToken::new();
    let pipeline = Arc::new(
        Pipeline::builder(2, Policy::Block)
            .workers(1)
            .deadline(Duration::MAX)
            .spawn(sp.clone(), {
                let gate = gate.clone();
                move |_: u32| {
                    let gate = gate.clone();
                    async move { gate.cancelled().await }
                }
            })
            .unwrap(),
    );
    let (progress_tx, progress_rx) = async_channel::unbounded();
    let producer = common::spawn(&sp, {
        let pipeline = pipeline.clone();
        async move {
            for id in 0..200u32 {
                assert_eq!(pipeline.push(id).await, PushOutcome::Accepted);
                progress_tx.send(id).await.unwrap();
            }
        }
    });
    // Ids 0..3 go in (one to the worker, two buffered); the fourth push must wait. The
    // worker cannot finish while the gate is shut, so the producer cannot pass id 2.
    for expected in 0..3 {
        assert_eq!(progress_rx.recv().await.unwrap(), expected);
    }
    assert!(pipeline.len() <= 2);
    assert!(progress_rx.try_recv().is_err(), "the producer did not wait");
    gate.cancel();
    producer.await.unwrap();
    let report = pipeline.shutdown().await;
    assert_eq!(
        (report.produced, report.processed, report.dropped),
        (200, 200, 0)
    );
    assert!(report.is_conserved() && report.all_joined(), "{report}");
}

on_every_runtime!(
    drop_newest_keeps_oldest_items,
    drop_oldest_keeps_newest_items,
    block_waits_and_sheds_nothing
);
