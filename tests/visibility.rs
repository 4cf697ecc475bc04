//! Visibility of loss beyond the returned item: live stats, the shed hook, producer handles;
//! on every runtime.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backpressure_pipeline::{CancellationToken, Pipeline, Policy, PushOutcome};
use common::Sp;

/// A one-worker pipeline whose worker holds its first item until `gate` opens; returns it
/// once the worker holds that item, so the queue's state is decided by the test alone.
async fn gated(
    sp: Sp,
    capacity: usize,
    policy: Policy,
    gate: &CancellationToken,
    shed: Option<Arc<Mutex<Vec<u32>>>>,
) -> Pipeline<u32> {
    let (taken_tx, taken_rx) = async_channel::bounded(1);
    let mut builder = Pipeline::builder(capacity, policy).deadline(Duration::MAX);
    if let Some(shed) = shed {
        builder = builder.on_shed(move |id: &u32| shed.lock().unwrap().push(*id));
    }
    let pipeline = builder
        .spawn(sp, {
            let gate = gate.clone();
            move |_: u32| {
                let (gate, taken_tx) = (gate.clone(), taken_tx.clone());
                async move {
                    let _ = taken_tx.try_send(());
                    gate.cancelled().await;
                }
            }
        })
        .unwrap();
    assert!(pipeline.push(0).await.is_accepted());
    taken_rx.recv().await.unwrap();
    pipeline
}

async fn stats_are_live(sp: Sp) {
    let gate = CancellationToken::new();
    let pipeline = gated(sp, 3, Policy::DropNewest, &gate, None).await;
    let stats = pipeline.stats();
    assert_eq!((stats.produced, stats.processed, stats.depth), (1, 0, 0));
    assert_eq!(stats.time_full, Duration::ZERO);
    for id in 1..=5 {
        let _ = pipeline.try_push(id);
    }
    let producer = pipeline.producer();
    let stats = producer.stats();
    assert_eq!((stats.produced, stats.dropped), (6, 2));
    assert_eq!((stats.depth, stats.peak_depth), (3, 3));
    // Full since the third push: time passes while it stays full. Measured against a clock
    // read before and after, not a sleep: only the order is asserted.
    let before = pipeline.stats().time_full;
    let after = pipeline.stats().time_full;
    assert!(after >= before);
    gate.cancel();
    let report = pipeline.shutdown().await;
    let stats = pipeline.stats();
    assert_eq!(
        (stats.produced, stats.processed, stats.dropped),
        (report.produced, report.processed, report.dropped)
    );
    assert_eq!((stats.processed, stats.depth, stats.peak_depth), (4, 0, 3));
    assert!(
        stats.time_full > Duration::ZERO,
        "the queue was full for a while: {stats:?}"
    );
}

async fn shed_hook_sees_every_shed_item(sp: Sp) {
    for (policy, expected) in [
        (Policy::DropNewest, vec![4, 5, 6]),
        (Policy::DropOldest, vec![1, 2, 3]),
    ] {
        let gate = CancellationToken::new();
        let shed = Arc::new(Mutex::new(Vec::new()));
        let pipeline = gated(sp.clone(), 3, policy, &gate, Some(shed.clone())).await;
        let mut handed_back = Vec::new();
        for id in 1..=6 {
            if let Some(id) = pipeline.try_push(id).into_inner() {
                handed_back.push(id);
            }
        }
        assert_eq!(*shed.lock().unwrap(), expected, "{policy:?}");
        assert_eq!(
            handed_back, expected,
            "{policy:?}: the hook saw what the producer got back"
        );
        gate.cancel();
        let report = pipeline.shutdown().await;
        assert_eq!(report.dropped, expected.len() as u64);
        assert!(report.is_conserved(), "{report}");
    }
}

async fn producers_share_one_pipeline(sp: Sp) {
    let processed = Arc::new(AtomicU64::new(0));
    let pipeline = Pipeline::builder(4, Policy::Block)
        .workers(2)
        .spawn(sp.clone(), {
            let processed = processed.clone();
            move |_: u64| {
                let processed = processed.clone();
                async move {
                    processed.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
        .unwrap();
    let tasks: Vec<_> = (0..4u64)
        .map(|p| {
            let producer = pipeline.producer();
            common::spawn(&sp, async move {
                for i in 0..250 {
                    assert_eq!(producer.push(p * 1000 + i).await, PushOutcome::Accepted);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let producer = pipeline.producer();
    let report = pipeline.shutdown().await;
    assert_eq!((report.produced, report.processed), (1000, 1000));
    assert_eq!(processed.load(Ordering::SeqCst), 1000);
    assert!(producer.is_closed());
    assert_eq!(producer.push(7).await, PushOutcome::Closed(7));
    assert_eq!(producer.try_push(8), PushOutcome::Closed(8));
}

async fn live_stats_never_tear(sp: Sp) {
    // A capacity-1 queue that fills and empties on every item, a producer thread shedding,
    // and samples taken meanwhile: no counter goes backwards, and no snapshot shows more
    // items finished than produced.
    let pipeline = Arc::new(
        Pipeline::builder(1, Policy::DropNewest)
            .workers(2)
            .spawn(sp, |_: u32| async {})
            .unwrap(),
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = std::thread::spawn({
        let (producer, stop) = (pipeline.producer(), stop.clone());
        move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let _ = producer.try_push(i);
                i += 1;
            }
        }
    });
    let mut last = pipeline.stats();
    for _ in 0..20_000 {
        let now = pipeline.stats();
        assert!(now.produced >= last.produced, "{last:?} then {now:?}");
        assert!(now.processed >= last.processed, "{last:?} then {now:?}");
        assert!(now.dropped >= last.dropped, "{last:?} then {now:?}");
        assert!(now.time_full >= last.time_full, "{last:?} then {now:?}");
        assert!(now.peak_depth >= last.peak_depth, "{last:?} then {now:?}");
        assert!(
            now.produced >= now.processed + now.dropped + now.panicked,
            "{now:?}"
        );
        assert!(now.depth <= 1, "{now:?}");
        last = now;
        if last.processed == 0 {
            // Let the workers in on a one-thread runtime.
            common::yield_now().await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    producer.join().unwrap();
    let pipeline = Arc::try_unwrap(pipeline).expect("the only handle");
    assert!(pipeline.shutdown().await.is_conserved());
}

on_every_runtime!(
    live_stats_never_tear,
    stats_are_live,
    shed_hook_sees_every_shed_item,
    producers_share_one_pipeline
);
