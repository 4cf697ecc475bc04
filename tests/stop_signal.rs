//! Any stop signal stops a pipeline the same way: this crate's `CancellationToken`, any
//! future (a oneshot, tokio-util's `cancelled_owned()`), with the watcher of a future ending
//! with the pipeline, whatever stopped it. (`tests/stop_paths.rs` runs every waiter-release
//! case with a future parent too.)

mod common;

use std::sync::Arc;
use std::time::Duration;

use backpressure_pipeline::{Pipeline, Policy, PushOutcome, StopCause};
use common::{Live, Sp};
use futures_channel::oneshot;

/// A parent future that holds a tracked value until it is dropped.
fn parent_future(live: &Live) -> (oneshot::Sender<()>, impl std::future::Future<Output = ()>) {
    let (complete, completed) = oneshot::channel::<()>();
    let held = live.track();
    (complete, async move {
        let _held = held;
        let _ = completed.await;
    })
}

async fn a_future_parent_stops_intake_and_reports_external(sp: Sp) {
    let live = Live::new();
    let (complete, parent) = parent_future(&live);
    let pipeline = Pipeline::builder(4, Policy::Block)
        .parent(parent)
        .spawn(sp, |_: u32| async {})
        .unwrap();
    assert!(pipeline.push(1).await.is_accepted());
    complete.send(()).unwrap();
    // The watcher is a task: it stops the pipeline at its next turn (the watchdog bounds
    // this loop), and drops the future.
    while !pipeline.is_closed() {
        common::yield_now().await;
    }
    live.all_dropped().await;
    assert_eq!(pipeline.push(2).await, PushOutcome::Closed(2));
    let report = pipeline.shutdown().await;
    assert_eq!(report.cause, StopCause::External);
    assert_eq!((report.produced, report.processed), (1, 1), "{report}");
    assert!(report.is_conserved() && report.all_joined(), "{report}");
}

async fn the_watcher_ends_when_shutdown_stops_the_pipeline(sp: Sp) {
    // The future never completes: shutdown stops the pipeline, and the watcher drops it.
    let live = Live::new();
    let (mut complete, parent) = parent_future(&live);
    let pipeline = Pipeline::builder(4, Policy::Block)
        .parent(parent)
        .spawn(sp, |_: u32| async {})
        .unwrap();
    let report = pipeline.shutdown().await;
    assert_eq!(report.cause, StopCause::Shutdown);
    // The future is gone: its receiver (dropped after its tracked value; the watcher may
    // be on another thread) and its tracked value.
    complete.cancellation().await;
    live.all_dropped().await;
}

async fn the_watcher_ends_when_the_pipeline_is_dropped(sp: Sp) {
    let live = Live::new();
    let (mut complete, parent) = parent_future(&live);
    let pipeline = Pipeline::builder(4, Policy::Block)
        .parent(parent)
        .spawn(sp, |_: u32| async {})
        .unwrap();
    drop(pipeline);
    // The future is gone: its receiver (dropped after its tracked value; the watcher may
    // be on another thread) and its tracked value.
    complete.cancellation().await;
    live.all_dropped().await;
}

async fn a_token_by_value_is_a_parent_too(sp: Sp) {
    let app = backpressure_pipeline::CancellationToken::new();
    let pipeline = Pipeline::builder(4, Policy::Block)
        .parent(app.clone())
        .spawn(sp, |_: u32| async {})
        .unwrap();
    assert!(app.cancel());
    assert_eq!(pipeline.try_push(1), PushOutcome::Closed(1));
    assert_eq!(pipeline.shutdown().await.cause, StopCause::External);
}

async fn a_future_parent_releases_a_blocked_thread(sp: Sp) {
    // A plain thread blocked in `push_blocking` on a full queue is released by a future
    // parent's stop, with its item back.
    let (complete, completed) = oneshot::channel::<()>();
    let (taken_tx, taken_rx) = async_channel::bounded::<()>(1);
    let pipeline = Arc::new(
        Pipeline::builder(1, Policy::Block)
            .deadline(Duration::ZERO)
            .grace(Duration::ZERO)
            .parent(async move {
                let _ = completed.await;
            })
            .spawn(sp, move |_: u32| {
                let taken_tx = taken_tx.clone();
                async move {
                    let _ = taken_tx.send(()).await;
                    std::future::pending::<()>().await;
                }
            })
            .unwrap(),
    );
    assert!(pipeline.push(0).await.is_accepted());
    taken_rx.recv().await.unwrap();
    assert!(pipeline.push(1).await.is_accepted()); // the queue is full now
    let (outcome_tx, outcome_rx) = async_channel::bounded(1);
    let thread = std::thread::spawn({
        let pipeline = pipeline.clone();
        move || outcome_tx.send_blocking(pipeline.push_blocking(2)).unwrap()
    });
    complete.send(()).unwrap();
    assert_eq!(outcome_rx.recv().await.unwrap(), PushOutcome::Closed(2));
    thread.join().unwrap();
    let pipeline = Arc::try_unwrap(pipeline).expect("the thread let go");
    let report = pipeline.shutdown().await;
    assert_eq!(report.cause, StopCause::External);
    assert_eq!(
        (report.produced, report.handed_back, report.lost_in_flight),
        (2, 1, 1),
        "{report}"
    );
    assert!(report.is_conserved(), "{report}");
}

async fn a_completed_parent_future_is_the_cause_before_its_watcher_runs(sp: Sp) {
    // Shutdown right after the parent completed, before the watcher task can have run (on
    // the one-thread runtimes it cannot): the parent stopped it first. On the multi-thread
    // runtimes the watcher races shutdown: it may be polling the future, have seen it
    // complete, or be inside its cancel when shutdown looks (each was a way to `Shutdown`,
    // about 1 run of this file in 15 on smol); many rounds, to meet each.
    for _ in 0..200 {
        let (complete, completed) = oneshot::channel::<()>();
        let pipeline = Pipeline::builder(4, Policy::Block)
            .parent(async move {
                let _ = completed.await;
            })
            .spawn(sp.clone(), |_: u32| async {})
            .unwrap();
        complete.send(()).unwrap();
        let report = pipeline.shutdown().await;
        assert_eq!(report.cause, StopCause::External, "{report}");
    }
}

on_every_runtime!(
    a_completed_parent_future_is_the_cause_before_its_watcher_runs,
    a_future_parent_stops_intake_and_reports_external,
    the_watcher_ends_when_shutdown_stops_the_pipeline,
    the_watcher_ends_when_the_pipeline_is_dropped,
    a_token_by_value_is_a_parent_too,
    a_future_parent_releases_a_blocked_thread,
);

/// tokio-util's token, as its users hold it: `cancelled_owned()` is the parent.
#[cfg(feature = "tokio")]
async fn tokio_util_token_as_parent(sp: Sp) {
    let app = tokio_util::sync::CancellationToken::new();
    let pipeline = Pipeline::builder(2, Policy::Block)
        .workers(2)
        .deadline(Duration::from_secs(5))
        .parent(app.clone().cancelled_owned())
        .spawn(sp, |_: u32| async {})
        .unwrap();
    for n in 0..10 {
        assert!(pipeline.push(n).await.is_accepted());
    }
    app.cancel();
    // The watcher closes the queue: a push then comes back (poll until it does, bounded by
    // the watchdog; the watcher is a task that needs a turn).
    loop {
        match pipeline.push(99).await {
            PushOutcome::Closed(99) => break,
            PushOutcome::Accepted => {}
            other => panic!("unexpected {other:?}"),
        }
        common::yield_now().await;
    }
    let report = pipeline.shutdown().await;
    assert_eq!(report.cause, StopCause::External);
    assert_eq!(report.processed, report.produced, "{report}");
    assert!(report.is_conserved() && report.all_joined(), "{report}");
}

#[cfg(feature = "tokio")]
#[test]
fn tokio_util_token_as_parent_on_tokio_mt() {
    common::run(common::Runtime::TokioMt, tokio_util_token_as_parent);
}

#[cfg(feature = "tokio")]
#[test]
fn tokio_util_token_as_parent_on_tokio_ct() {
    common::run(common::Runtime::TokioCt, tokio_util_token_as_parent);
}
