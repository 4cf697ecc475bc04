//! The structured shutdown and its report, on every runtime: drain, deadline, external stop,
//! panics, and proof by drop counters that no worker outlives it.

mod common;

use std::future::pending;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backpressure_pipeline::{CancellationToken, OnPanic, Pipeline, Policy, PushOutcome, StopCause};
use common::{Live, Sp};
use futures_util::poll;

async fn close_drains_before_none(sp: Sp) {
    // Two gated workers hold one item each; eight more wait in the queue. Shutdown closes
    // the queue first; only then does the gate open, and every item must still be processed.
    let gate = CancellationToken::new();
    let processed = Arc::new(AtomicU64::new(0));
    let pipeline = Pipeline::builder(8, Policy::Block)
        .workers(2)
        .deadline(Duration::MAX)
        .spawn(sp, {
            let (gate, processed) = (gate.clone(), processed.clone());
            move |_: u32| {
                let (gate, processed) = (gate.clone(), processed.clone());
                async move {
                    gate.cancelled().await;
                    processed.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
        .unwrap();
    for id in 0..10 {
        assert_eq!(pipeline.push(id).await, PushOutcome::Accepted);
    }
    let mut shutdown = pin!(pipeline.shutdown());
    assert!(poll!(shutdown.as_mut()).is_pending(), "workers are gated");
    assert!(pipeline.is_closed(), "the first poll closed the queue");
    assert_eq!(pipeline.push(99).await, PushOutcome::Closed(99));
    gate.cancel();
    let report = shutdown.await;
    assert_eq!(
        (report.produced, report.processed, report.abandoned),
        (10, 10, 0)
    );
    assert_eq!(processed.load(Ordering::SeqCst), 10);
    assert!(!report.deadline_exceeded);
    assert!(report.is_conserved() && report.all_joined(), "{report}");
    assert_eq!(report.workers_aborted, 0);
}

async fn conservation_and_no_leak(sp: Sp) {
    for policy in [Policy::DropNewest, Policy::DropOldest, Policy::Block] {
        let live = Live::new();
        let processed = Arc::new(AtomicU64::new(0));
        let pipeline = Arc::new(
            Pipeline::builder(16, policy)
                .workers(4)
                .deadline(Duration::MAX)
                .spawn(sp.clone(), {
                    let (guard, processed) = (live.track(), processed.clone());
                    move |(id, item): (u64, common::Tracked)| {
                        let _ = &guard; // the closure itself is tracked too
                        let processed = processed.clone();
                        async move {
                            // Uneven work: some items yield a few times, most not at all.
                            for _ in 0..id % 5 {
                                ::smol::future::yield_now().await;
                            }
                            drop(item);
                            processed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                })
                .unwrap(),
        );
        // Two producers, counting what they saw independently of the report.
        let producers: Vec<_> = (0..2u64)
            .map(|p| {
                let (pipeline, live) = (pipeline.clone(), live.clone());
                common::spawn(&sp, async move {
                    let (mut produced, mut dropped) = (0u64, 0u64);
                    for i in 0..2000 {
                        match pipeline.push((p * 10_000 + i, live.track())).await {
                            PushOutcome::Accepted => produced += 1,
                            PushOutcome::Shed(_) | PushOutcome::Evicted(_) => {
                                produced += 1;
                                dropped += 1;
                            }
                            other => panic!("unexpected {other:?}"),
                        }
                        if i % 64 == 0 {
                            ::smol::future::yield_now().await;
                        }
                    }
                    (produced, dropped)
                })
            })
            .collect();
        let (mut produced, mut dropped) = (0, 0);
        for producer in producers {
            let (p, d) = producer.await.unwrap();
            produced += p;
            dropped += d;
        }
        let report = pipeline.shutdown().await;
        assert!(report.is_conserved(), "{policy:?}: {report}");
        assert!(report.all_joined(), "{policy:?}: {report}");
        assert_eq!(report.produced, produced, "{policy:?}");
        assert_eq!(report.dropped, dropped, "{policy:?}");
        assert_eq!(
            report.processed,
            processed.load(Ordering::SeqCst),
            "{policy:?}"
        );
        assert_eq!((report.abandoned, report.panicked), (0, 0), "{policy:?}");
        if policy == Policy::Block {
            assert_eq!((report.produced, report.dropped), (4000, 0));
        }
        assert_eq!(
            live.count(),
            0,
            "{policy:?}: an item or a worker outlived shutdown"
        );
    }
}

async fn external_stop_is_clean(sp: Sp) {
    let app = CancellationToken::new();
    let processed = Arc::new(AtomicU64::new(0));
    let (hundred_tx, hundred_rx) = async_channel::bounded(1);
    let pipeline = Arc::new(
        Pipeline::builder(16, Policy::DropOldest)
            .workers(4)
            .parent(&app)
            .spawn(sp.clone(), {
                let processed = processed.clone();
                move |_: u64| {
                    let (processed, hundred_tx) = (processed.clone(), hundred_tx.clone());
                    async move {
                        if processed.fetch_add(1, Ordering::SeqCst) + 1 == 100 {
                            let _ = hundred_tx.try_send(());
                        }
                        ::smol::future::yield_now().await;
                    }
                }
            })
            .unwrap(),
    );
    // The producer pushes until the pipeline tells it intake has stopped.
    let producer = common::spawn(&sp, {
        let pipeline = pipeline.clone();
        async move {
            let mut produced = 0u64;
            for id in 0.. {
                match pipeline.push(id).await {
                    PushOutcome::Closed(_) => return produced,
                    _ => produced += 1,
                }
                ::smol::future::yield_now().await;
            }
            unreachable!()
        }
    });
    hundred_rx.recv().await.unwrap();
    assert!(app.cancel());
    let produced = producer.await.unwrap();
    assert!(pipeline.is_closed());
    let report = pipeline.shutdown().await;
    assert_eq!(report.cause, StopCause::External);
    assert_eq!(report.produced, produced);
    assert!(report.processed >= 100);
    assert!(report.is_conserved() && report.all_joined(), "{report}");
    assert_eq!(pipeline.push(u64::MAX).await, PushOutcome::Closed(u64::MAX));
}

async fn deadline_aborts_stragglers(sp: Sp) {
    // Two workers that never finish an item; six items: two in flight, four queued.
    let live = Live::new();
    let (taken_tx, taken_rx) = async_channel::unbounded();
    let pipeline = Pipeline::builder(4, Policy::Block)
        .workers(2)
        .deadline(Duration::from_millis(20))
        .grace(Duration::from_millis(20))
        // Aborted workers end at their next poll; the bound only catches a hang.
        .unresponsive_after(Duration::from_secs(60))
        .spawn(sp, {
            let taken_tx = taken_tx.clone();
            move |item: common::Tracked| {
                let taken_tx = taken_tx.clone();
                async move {
                    let _item = item;
                    taken_tx.send(()).await.unwrap();
                    pending::<()>().await;
                }
            }
        })
        .unwrap();
    for _ in 0..2 {
        assert!(pipeline.push(live.track()).await.is_accepted());
    }
    taken_rx.recv().await.unwrap();
    taken_rx.recv().await.unwrap();
    for _ in 0..4 {
        assert!(pipeline.try_push(live.track()).is_accepted());
    }
    let report = pipeline.shutdown().await;
    assert!(report.deadline_exceeded);
    assert_eq!(
        (report.produced, report.processed, report.abandoned),
        (6, 0, 6)
    );
    assert_eq!((report.workers_joined, report.workers_aborted), (2, 2));
    assert!(report.is_conserved() && report.all_joined(), "{report}");
    assert_eq!(
        (report.handed_back, report.lost_in_flight),
        (4, 2),
        "{report}"
    );
    assert_eq!(
        pipeline.take_leftovers().len(),
        4,
        "the queued items come back"
    );
    assert_eq!(
        live.count(),
        0,
        "every worker future and item is dropped when shutdown returns"
    );
}

async fn cooperative_workers_stop_before_abort(sp: Sp) {
    // Workers that watch the worker token finish their item when the deadline passes, so
    // nothing needs aborting and the in-flight items count as processed.
    let builder = Pipeline::builder(4, Policy::Block)
        .workers(2)
        .deadline(Duration::ZERO)
        .grace(Duration::from_secs(60));
    let token = builder.worker_token();
    let (taken_tx, taken_rx) = async_channel::unbounded();
    let pipeline = builder
        .spawn(sp, move |_: u32| {
            let (token, taken_tx) = (token.clone(), taken_tx.clone());
            async move {
                taken_tx.send(()).await.unwrap();
                token.cancelled().await;
            }
        })
        .unwrap();
    for id in 0..2 {
        assert!(pipeline.push(id).await.is_accepted());
    }
    taken_rx.recv().await.unwrap();
    taken_rx.recv().await.unwrap();
    for id in 2..5 {
        assert!(pipeline.try_push(id).is_accepted());
    }
    let report = pipeline.shutdown().await;
    assert!(report.deadline_exceeded);
    assert_eq!((report.processed, report.abandoned), (2, 3), "{report}");
    assert_eq!((report.workers_joined, report.workers_aborted), (2, 0));
    assert!(report.is_conserved(), "{report}");
}

async fn panicking_worker_is_counted(sp: Sp) {
    let pipeline = Pipeline::builder(4, Policy::Block)
        .workers(2)
        .deadline(Duration::MAX)
        .spawn(sp, |id: u32| async move {
            if id % 3 == 0 {
                panic!("item {id} is poison (an expected test panic)");
            }
        })
        .unwrap();
    for id in 0..30 {
        assert!(
            pipeline.push(id).await.is_accepted(),
            "a panic does not stop the pipeline"
        );
    }
    let report = pipeline.shutdown().await;
    assert_eq!(
        (report.produced, report.processed, report.panicked),
        (30, 20, 10)
    );
    assert_eq!((report.workers_joined, report.workers_aborted), (2, 0));
    assert!(report.is_conserved() && report.all_joined(), "{report}");
}

async fn first_panic_stops_the_pipeline(sp: Sp) {
    // One worker takes items in order: 0, 1 and 2 are processed, 3 panics and stops the
    // pipeline. A push waits for room at most until the worker has popped the item four
    // places ahead, and the worker pops nothing after 3, so the pushes from item 8 on must
    // see the pipeline closed; where exactly intake stopped depends on scheduling.
    let pipeline = Pipeline::builder(4, Policy::Block)
        .on_panic(OnPanic::StopPipeline)
        .deadline(Duration::MAX)
        .spawn(sp, |id: u32| async move {
            if id == 3 {
                panic!("item 3 is poison (an expected test panic)");
            }
        })
        .unwrap();
    let mut accepted = 0;
    for id in 0..10 {
        match pipeline.push(id).await {
            PushOutcome::Accepted => {
                assert_eq!(id, accepted, "once closed, intake stays closed");
                accepted += 1;
            }
            PushOutcome::Closed(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!((4..=8).contains(&accepted), "{accepted} accepted");
    let report = pipeline.shutdown().await;
    assert_eq!(report.cause, StopCause::Panic);
    assert_eq!(
        (report.produced, report.processed, report.panicked),
        (u64::from(accepted), 3, 1)
    );
    assert_eq!(
        report.abandoned,
        u64::from(accepted) - 4,
        "what followed the panic"
    );
    assert_eq!((report.workers_joined, report.workers_aborted), (1, 0));
    assert!(!report.deadline_exceeded);
    assert!(report.is_conserved() && report.all_joined(), "{report}");
}

async fn dropped_pipeline_aborts_workers(sp: Sp) {
    let live = Live::new();
    let (taken_tx, taken_rx) = async_channel::unbounded();
    let pipeline = Pipeline::builder(4, Policy::Block)
        .workers(3)
        .spawn(sp, {
            let guard = live.track();
            move |item: common::Tracked| {
                let _ = &guard;
                let taken_tx = taken_tx.clone();
                async move {
                    let _item = item;
                    taken_tx.send(()).await.unwrap();
                    pending::<()>().await;
                }
            }
        })
        .unwrap();
    for _ in 0..3 {
        assert!(pipeline.push(live.track()).await.is_accepted());
    }
    for _ in 0..3 {
        taken_rx.recv().await.unwrap();
    }
    assert!(pipeline.try_push(live.track()).is_accepted());
    drop(pipeline);
    // No worker, item or closure survives: the count reaches zero without a shutdown (the
    // watchdog fails the test if it never does).
    live.all_dropped().await;
}

async fn zero_deadline_still_conserves(sp: Sp) {
    for policy in [Policy::DropNewest, Policy::DropOldest, Policy::Block] {
        let pipeline = Pipeline::builder(8, policy)
            .workers(2)
            .deadline(Duration::ZERO)
            .grace(Duration::ZERO)
            .spawn(sp.clone(), |_: u32| async {
                ::smol::future::yield_now().await;
            })
            .unwrap();
        for id in 0..100 {
            let _ = pipeline.try_push(id);
        }
        let report = pipeline.shutdown().await;
        assert!(report.is_conserved(), "{policy:?}: {report}");
        assert_eq!(
            report.produced,
            report.processed + report.dropped + report.abandoned
        );
    }
}

on_every_runtime!(
    close_drains_before_none,
    conservation_and_no_leak,
    external_stop_is_clean,
    deadline_aborts_stragglers,
    cooperative_workers_stop_before_abort,
    panicking_worker_is_counted,
    first_panic_stops_the_pipeline,
    dropped_pipeline_aborts_workers,
    zero_deadline_still_conserves,
);
