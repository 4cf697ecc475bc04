//! The shutdown's edges, found by a review of the pipeline side: a panic payload whose
//! `Drop` panics, a second `shutdown` while the first is kept unpolled, the cause when a
//! parent stop and a panic stop meet, a `tracing` subscriber that panics at shutdown; and,
//! pinned, no leak through the stop hook and huge limits that neither panic nor hang.

mod common;

use std::future::pending;
use std::time::Duration;

use backpressure_pipeline::{CancellationToken, OnPanic, Pipeline, Policy, StopCause};
use common::Sp;
use futures_util::future::{self, Either};

/// Fails instead of hanging: far above any bound the tests use, far below the suite's own.
const HANG_GUARD: Duration = Duration::from_secs(20);

/// Races `fut` against the hang guard (a failure detector, not synchronisation).
async fn within_guard<F: std::future::Future>(sp: &Sp, fut: F) -> Option<F::Output> {
    match future::select(std::pin::pin!(fut), sp.sleep(HANG_GUARD)).await {
        Either::Left((out, _)) => Some(out),
        Either::Right(_) => None,
    }
}

// ---- Faults the review found (each failed before its fix) ----

/// A panic payload whose own `Drop` panics.
struct Bomb;

impl Drop for Bomb {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("the panic payload panics in its Drop");
        }
    }
}

/// `OnPanic::Isolate` promises the worker "goes on with the next item" and "no task is
/// lost", also when the caught payload's own `Drop` panics (the worker loop used to drop it
/// outside any `catch_unwind`, and died with it: the next item was never processed).
async fn isolate_survives_a_panic_payload_that_panics_on_drop(sp: Sp) {
    let pipeline = Pipeline::builder(4, Policy::Block)
        .on_panic(OnPanic::Isolate)
        .deadline(Duration::MAX)
        .spawn(sp, |n: u32| async move {
            if n == 0 {
                std::panic::panic_any(Bomb);
            }
        })
        .unwrap();
    assert!(pipeline.push(0).await.is_accepted());
    assert!(pipeline.push(1).await.is_accepted());
    // Deadline MAX: shutdown waits for the drain however long it takes.
    let report = pipeline.shutdown().await;
    assert!(report.is_conserved(), "{report}");
    assert_eq!(
        (report.panicked, report.processed, report.abandoned),
        (1, 1, 0),
        "the worker died with the payload: {report}"
    );
}

/// A second `shutdown` while the first call is alive but not being polled (kept in a
/// `select!` branch that lost, say) keeps the bound deadline + grace + unresponsive_after
/// (here ~100 ms); it used to wait on a state lock the first call held across its waits.
async fn a_second_shutdown_is_bounded_while_the_first_is_parked(sp: Sp) {
    let pipeline = Pipeline::builder(4, Policy::Block)
        .deadline(Duration::from_millis(50))
        .grace(Duration::ZERO)
        .unresponsive_after(Duration::from_millis(50))
        .spawn(sp.clone(), |_: u32| pending::<()>())
        .unwrap();
    assert!(pipeline.push(1).await.is_accepted());
    while !pipeline.is_empty() {
        common::yield_now().await;
    }
    let mut first = Box::pin(pipeline.shutdown());
    assert!(futures_util::poll!(first.as_mut()).is_pending());
    // `first` stays alive, unpolled.
    let second = within_guard(&sp, pipeline.shutdown()).await;
    assert!(
        second.is_some(),
        "a concurrent shutdown hung past {HANG_GUARD:?} (bound ~100 ms)"
    );
    drop(first);
}

/// `StopCause` is "what started the shutdown": here the parent stops the pipeline first,
/// and a panic during the drain (under `StopPipeline`) must not rename the cause (it used to
/// make the report say `Panic`). The first stop wins, whichever it is.
async fn a_parent_stop_followed_by_a_panic_reports_external(sp: Sp) {
    let parent = CancellationToken::new();
    let trigger = CancellationToken::new();
    let alive = common::Live::new();
    let pipeline = Pipeline::builder(4, Policy::Block)
        .parent(&parent)
        .on_panic(OnPanic::StopPipeline)
        .spawn(sp, {
            let trigger = trigger.clone();
            let tracked = alive.track();
            move |n: u32| {
                let _ = &tracked;
                let trigger = trigger.clone();
                async move {
                    if n == 0 {
                        trigger.cancelled().await;
                        panic!("item 0 panics, as asked");
                    }
                }
            }
        })
        .unwrap();
    assert!(pipeline.push(0).await.is_accepted());
    while !pipeline.is_empty() {
        common::yield_now().await;
    }
    assert!(pipeline.push(1).await.is_accepted());
    parent.cancel(); // the pipeline is stopped here, by its parent
    assert!(pipeline.is_closed());
    trigger.cancel(); // then item 0 panics during the drain
                      // The worker has ended (its closure is gone): the panic stop is complete.
    alive.all_dropped().await;
    let report = pipeline.shutdown().await;
    assert!(report.is_conserved(), "{report}");
    assert_eq!(report.cause, StopCause::External, "{report}");
}

async fn cancelling_the_handed_out_worker_token_stops_no_worker(sp: Sp) {
    // The token a worker watches is a child of the pipeline's own: a user who cancels it
    // (by mistake, or to stop their own code) does not end the workers while producers
    // still wait for them under `Block`.
    let builder = Pipeline::builder(1, Policy::Block).workers(2);
    let token = builder.worker_token();
    let pipeline = builder.spawn(sp, |_: u32| async {}).unwrap();
    assert!(token.cancel());
    for n in 0..100 {
        assert!(pipeline.push(n).await.is_accepted(), "item {n}");
    }
    let report = pipeline.shutdown().await;
    assert_eq!(report.processed, 100, "{report}");
    assert!(report.is_conserved() && report.all_joined(), "{report}");
}

async fn a_state_whose_drop_panics_ends_its_worker_cleanly(sp: Sp) {
    struct Poisoned;
    impl Drop for Poisoned {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                panic!("the state's Drop panics");
            }
        }
    }
    let pipeline = Pipeline::builder(4, Policy::Block)
        .workers(2)
        .spawn_with_state(
            sp,
            |_| async { Ok::<_, std::convert::Infallible>(Poisoned) },
            |_: &mut Poisoned, _: u32| Box::pin(async {}),
        )
        .unwrap();
    for n in 0..10 {
        assert!(pipeline.push(n).await.is_accepted());
    }
    let report = pipeline.shutdown().await;
    assert_eq!(report.processed, 10, "{report}");
    assert_eq!(
        (report.workers_joined, report.workers_aborted),
        (2, 0),
        "{report}"
    );
    assert!(report.is_conserved(), "{report}");
}

on_every_runtime!(
    isolate_survives_a_panic_payload_that_panics_on_drop,
    a_second_shutdown_is_bounded_while_the_first_is_parked,
    a_parent_stop_followed_by_a_panic_reports_external,
    cancelling_the_handed_out_worker_token_stops_no_worker,
    a_state_whose_drop_panics_ends_its_worker_cleanly,
);

/// Counts before user code: with `tracing`, shutdown's summary line calls the subscriber
/// (user code), which used to run after the leftovers were taken but before the report was
/// stored; a subscriber that panicked there lost the leftovers from every later report.
#[cfg(feature = "tracing")]
mod tracing_subscriber_panic {
    use super::*;
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    /// Panics on the "shedding stopped" summary (the event with a `lasted` field).
    struct PanicsOnSummary;

    impl Subscriber for PanicsOnSummary {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            if event.metadata().fields().field("lasted").is_some() && !std::thread::panicking() {
                panic!("the subscriber panics");
            }
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    async fn a_panicking_subscriber_at_shutdown_keeps_the_law(sp: Sp) {
        let _guard = tracing::subscriber::set_default(PanicsOnSummary);
        let pipeline = Pipeline::builder(1, Policy::DropNewest)
            .deadline(Duration::ZERO)
            .grace(Duration::ZERO)
            .unresponsive_after(Duration::from_millis(50))
            .spawn(sp, |_: u32| pending::<()>())
            .unwrap();
        assert!(pipeline.push(0).await.is_accepted());
        while !pipeline.is_empty() {
            common::yield_now().await;
        }
        assert!(pipeline.try_push(1).is_accepted());
        assert!(matches!(
            pipeline.try_push(2),
            backpressure_pipeline::PushOutcome::Shed(2)
        ));
        let first = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
            pipeline.shutdown(),
        ))
        .await;
        assert!(first.is_err(), "the subscriber panicked in the first call");
        let report = pipeline.shutdown().await;
        assert_eq!(report.produced, 3, "{report}");
        assert!(report.is_conserved(), "{report}");
    }

    on_every_runtime!(a_panicking_subscriber_at_shutdown_keeps_the_law);
}

// ---- Edges the review checked, pinned ----

mod keep {
    use super::*;

    /// The futures of a pipeline shared between tasks are `Send`, and the pipeline `Sync`, for an
    /// item that is `Send` only.
    #[allow(dead_code)]
    fn shutdown_and_push_futures_are_send(p: &Pipeline<std::cell::Cell<u8>>) {
        fn send<T: Send>(_: &T) {}
        fn sync<T: Sync>() {}
        sync::<Pipeline<std::cell::Cell<u8>>>();
        send(&p.shutdown());
        send(&p.push(std::cell::Cell::new(0)));
    }

    /// No cycle through the stop token's hook: the pipeline's shared state (here, the `on_shed`
    /// closure it owns) is freed once the pipeline and its producers are gone, whether the parent
    /// lives on or was cancelled, shut down or just dropped, or built under a cancelled parent.
    async fn the_shared_state_is_freed_with_a_live_parent(sp: Sp) {
        for (case, cancel_first, shut_down) in [
            (0, false, false),
            (1, false, true),
            (2, true, true),
            (3, true, false),
        ] {
            let parent = CancellationToken::new();
            if case == 3 {
                parent.cancel(); // built under a cancelled parent: the hook runs at once
            }
            let shared = common::Live::new();
            let pipeline = Pipeline::builder(1, Policy::DropNewest)
                .parent(&parent)
                .workers(2)
                .on_shed({
                    let tracked = shared.track();
                    move |_: &u32| {
                        let _ = &tracked;
                    }
                })
                .spawn(sp.clone(), |_: u32| async {})
                .unwrap();
            if case == 3 {
                assert!(pipeline.is_closed(), "the hook closed the queue at once");
            }
            let producer = pipeline.producer();
            let _ = producer.try_push(1);
            if cancel_first {
                parent.cancel();
                assert!(pipeline.is_closed(), "case {case}");
            }
            if shut_down {
                let report = pipeline.shutdown().await;
                assert!(
                    report.is_conserved() && report.all_joined(),
                    "case {case}: {report}"
                );
            }
            drop(pipeline);
            assert!(producer.is_closed());
            drop(producer);
            let freed = within_guard(&sp, shared.all_dropped()).await;
            assert!(freed.is_some(), "case {case}: the shared state leaked");
            drop(parent);
        }
    }

    /// Limits that are huge but still representable as an `Instant` (unlike `Duration::MAX`) go
    /// through the watchdog's thread and the runtime's timer without a panic or a hang.
    async fn huge_representable_limits_neither_panic_nor_hang(sp: Sp) {
        let huge = Duration::from_secs(u64::MAX / 4);
        let builder = Pipeline::builder(4, Policy::Block);
        let stop_early = builder.worker_token();
        let pipeline = builder
            .deadline(Duration::ZERO)
            .grace(huge)
            .unresponsive_after(huge)
            .spawn(sp.clone(), move |_: u32| {
                let stop_early = stop_early.clone();
                // Cooperative: ends its item when the worker token is cancelled.
                async move { stop_early.cancelled().await }
            })
            .unwrap();
        assert!(pipeline.push(1).await.is_accepted());
        while !pipeline.is_empty() {
            common::yield_now().await;
        }
        assert!(pipeline.push(2).await.is_accepted());
        let report = within_guard(&sp, pipeline.shutdown())
            .await
            .expect("no hang");
        assert!(
            report.deadline_exceeded && report.is_conserved(),
            "{report}"
        );
        assert!(
            report.all_joined() && report.workers_aborted == 0,
            "{report}"
        );
        assert_eq!((report.processed, report.abandoned), (1, 1), "{report}");
    }

    on_every_runtime!(
        the_shared_state_is_freed_with_a_live_parent,
        huge_representable_limits_neither_panic_nor_hang,
    );
}
