//! Review of the batch mode (`spawn_batched`, `Batch`, `dead_letter_batch`): faults found
//! by an adversarial reading of `src/pipeline/source.rs`, `invoke.rs`, `ledger.rs`,
//! `producer.rs` and the docs in `builder.rs`. Each test states its minimal input and what
//! is expected. A test marked `#[ignore = "Fixed: ..."]` fails today (run it with
//! `--include-ignored`); the others pin down behaviour checked and found correct.
//!
//! Where the order of the worker's polls matters, the workers run on an executor that this
//! test ticks by hand (`Hand`), and time moves only on the manual clock: nothing here
//! synchronises with a sleep, and the outcome does not depend on the outer runtime.

// Without smol the tests that tick their workers by hand are left out, with what they use.
#![cfg_attr(not(feature = "smol"), allow(unused_imports, dead_code))]

mod common;

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use backpressure_pipeline::{Batch, Outcome, Pipeline, Policy, Report};
use common::clock::ManualSpawner;
use common::{Live, Sp, Tracked};

const ZERO: Duration = Duration::ZERO;
const HOUR: Duration = Duration::from_secs(3600);

fn lock<V>(mutex: &Mutex<V>) -> MutexGuard<'_, V> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Declares the `#[test]`s of a fault (found by the review, fixed since), one per enabled
/// runtime, in a module named after the body (`name::smol`, `name::tokio_ct`, ...); the
/// reason says what the fault was.
macro_rules! fault {
    ($reason:literal, $name:ident) => {
        mod $name {
            fault!(@on smol, Smol, "smol", $reason, $name);
            fault!(@on executor, Executor, "smol", $reason, $name);
            fault!(@on tokio_mt, TokioMt, "tokio", $reason, $name);
            fault!(@on tokio_ct, TokioCt, "tokio", $reason, $name);
            fault!(@on async_std, AsyncStd, "async-std", $reason, $name);
        }
    };
    (@on $module:ident, $runtime:ident, $feature:literal, $reason:literal, $name:ident) => {
        #[cfg(feature = $feature)]
        #[test]
        #[doc = $reason]
        fn $module() {
            crate::common::run(crate::common::Runtime::$runtime, super::$name);
        }
    };
}

/// Workers on an executor run only by the test (`tick`), with sleeps on a manual clock:
/// the test decides exactly when a worker runs relative to shutdown, close and the timer.
#[cfg(feature = "smol")]
struct Hand {
    ex: Arc<async_executor::Executor<'static>>,
    clock: Arc<common::clock::ManualClock>,
    spawner: ManualSpawner,
}

#[cfg(feature = "smol")]
impl Hand {
    fn new() -> Hand {
        let ex = Arc::new(async_executor::Executor::new());
        let inner: Sp = Arc::new(backpressure_pipeline::ExecutorSpawner::new(ex.clone()));
        let (spawner, clock) = ManualSpawner::new(inner);
        Hand { ex, clock, spawner }
    }

    /// Runs the workers until `done` holds (bounded: a bug fails, it does not hang).
    fn tick_until(&self, mut done: impl FnMut() -> bool) {
        for _ in 0..10_000 {
            if done() {
                return;
            }
            self.ex.try_tick();
        }
        assert!(done(), "the workers never got there");
    }

    /// Drives `shutdown` to its report: polled first with no worker run in between (so
    /// its first poll does close → deadline → abort at once when both are zero), then with
    /// the workers ticked between polls.
    async fn shutdown<T: Send + 'static>(&self, pipeline: &Pipeline<T>) -> Report {
        let mut shutdown = pin!(pipeline.shutdown());
        let mut cx = Context::from_waker(Waker::noop());
        // Terminates: every worker ends once ticked (aborted, or drained).
        loop {
            if let Poll::Ready(report) = shutdown.as_mut().poll(&mut cx) {
                return report;
            }
            self.ex.try_tick();
            common::yield_now().await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// 1. A batch being filled when the deadline passes: its items are not handed back.

#[cfg(feature = "smol")]
async fn a_filling_batch_cut_by_the_deadline_is_handed_back(_sp: Sp) {
    // Minimal input: one worker, `Batch::new(8, 1 h)` on the manual clock, deadline ZERO,
    // grace ZERO; push 3 items; the worker takes all 3 and waits for more (its timer is
    // pending); then `shutdown`. The worker is not polled between the close and the abort
    // (its executor is ticked only by this test; on a current-thread runtime, or a busy
    // multi-thread one, that is what happens anyway).
    // Expected (builder.rs: "batches not started when the deadline passes ... are handed
    // back item by item"; pipeline.rs: "Shutdown drops no item: those left are handed
    // back"): the work never saw them, so `take_leftovers` returns [0, 1, 2],
    // handed_back 3, lost_in_flight 0.
    let hand = Hand::new();
    let live = Live::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let pipeline = Pipeline::builder(16, Policy::Block)
        .deadline(ZERO)
        .grace(ZERO)
        .spawn_batched(hand.spawner.clone(), Batch::new(8, HOUR), {
            let calls = calls.clone();
            move |_batch: Vec<(u32, Tracked)>| {
                calls.fetch_add(1, Ordering::SeqCst);
                async {}
            }
        })
        .unwrap();
    for id in 0..3 {
        assert!(pipeline.push((id, live.track())).await.is_accepted());
    }
    hand.tick_until(|| pipeline.is_empty() && hand.clock.sleepers() == 1);
    let report = hand.shutdown(&pipeline).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "the work never saw a batch"
    );
    assert!(report.deadline_exceeded, "{report}");
    // The law holds (the loss is derived from popped − settled) ...
    assert!(report.is_conserved(), "{report}");
    // ... but the items were dropped with the aborted worker instead of handed back.
    let left: Vec<u32> = pipeline
        .take_leftovers()
        .iter()
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(
        (left, report.handed_back, report.lost_in_flight),
        (vec![0, 1, 2], 3, 0),
        "{report}; live items: {}",
        live.count()
    );
}

#[cfg(feature = "smol")]
fault!(
    "Fixed: a batch being filled (taken by the crate, never seen by the work) is dropped \
     by the deadline abort and counted lost_in_flight, not handed back (source.rs:113-139)",
    a_filling_batch_cut_by_the_deadline_is_handed_back
);

// ---------------------------------------------------------------------------------------
// 2. A partial `Retry` on the last attempt counts every item of the batch failed.

async fn a_partial_retry_on_the_last_attempt_fails_only_the_items_handed_back(sp: Sp) {
    // Minimal input: one worker, `Batch::new(4, 1 h)` (closes full: [0, 1, 2, 3]), the
    // default `Retry::never()`, a `dead_letter_batch` hook; the work keeps [0, 1] (they
    // succeeded) and hands back `Retry([2, 3], e)`.
    // Expected (builder.rs spawn_batched: "the batch handed back by `Retry` or `Reject` may
    // hold only the items that failed, and the others count as processed"; dead_letter_batch:
    // "Each of its items counts as failed"): processed 2, failed 2, dead letter [2, 3].
    let (spawner, _clock) = ManualSpawner::new(sp);
    let dead = Arc::new(Mutex::new(Vec::new()));
    let pipeline = Pipeline::builder(16, Policy::Block)
        .dead_letter_batch({
            let dead = dead.clone();
            move |rows: Vec<u32>, _: &str| lock(&dead).extend(rows)
        })
        .spawn_batched(spawner, Batch::new(4, HOUR), |mut rows: Vec<u32>| {
            rows.retain(|&row| row >= 2);
            std::future::ready(Outcome::Retry(rows, "rows 2 and 3 failed"))
        })
        .unwrap();
    for row in 0..4 {
        assert!(pipeline.push(row).await.is_accepted());
    }
    let report = pipeline.shutdown().await;
    assert!(report.is_conserved(), "{report}");
    assert_eq!(*lock(&dead), [2, 3]);
    assert_eq!(
        (report.processed, report.failed),
        (2, 2),
        "{report}: items 0 and 1 succeeded and were never dead-lettered"
    );
}

fault!(
    "Fixed: Retry(subset) on the last attempt records the whole batch failed \
     (invoke.rs:366-367 settles before hand.keep(back))",
    a_partial_retry_on_the_last_attempt_fails_only_the_items_handed_back
);

async fn an_empty_retry_on_the_last_attempt_is_a_success(sp: Sp) {
    // Minimal input: as above, the work hands back `Retry(vec![], e)` ("retry the rows that
    // failed": none did), with `Retry::never()`.
    // Expected (builder.rs: "handed back empty, nothing is retried", the others processed;
    // as `a_retry_with_an_empty_batch_keeps_its_worker` in tests/batch.rs shows with
    // attempts left): processed 4, failed 0, the dead letter never called (and never with
    // an empty batch).
    let (spawner, _clock) = ManualSpawner::new(sp);
    let dead = Arc::new(Mutex::new(Vec::new()));
    let pipeline = Pipeline::builder(16, Policy::Block)
        .dead_letter_batch({
            let dead = dead.clone();
            move |rows: Vec<u32>, _: &str| lock(&dead).push(rows)
        })
        .spawn_batched(spawner, Batch::new(4, HOUR), |_rows: Vec<u32>| {
            std::future::ready(Outcome::Retry(Vec::new(), "none failed"))
        })
        .unwrap();
    for row in 0..4 {
        assert!(pipeline.push(row).await.is_accepted());
    }
    let report = pipeline.shutdown().await;
    assert!(report.is_conserved(), "{report}");
    assert_eq!(
        (report.processed, report.failed, lock(&dead).clone()),
        (4, 0, Vec::<Vec<u32>>::new()),
        "{report}"
    );
}

fault!(
    "Fixed: Retry(vec![]) on the last attempt counts every item failed and dead-letters \
     an empty batch (invoke.rs:366-369; with attempts left the same batch is processed)",
    an_empty_retry_on_the_last_attempt_is_a_success
);

// ---------------------------------------------------------------------------------------
// 3. Checked and correct: the timer firing in the same turn as an item arrives.

#[cfg(feature = "smol")]
async fn an_item_arriving_as_the_timer_fires_is_neither_lost_nor_late(_sp: Sp) {
    // One worker, `Batch::new(8, 1 h)`: it takes [0] and waits. Then, with the worker not
    // polled in between, item 1 is pushed AND the clock reaches max_wait. The select polls
    // the pop first: [0, 1] is delivered, and the pop dropped for the timer takes nothing.
    // Then [2] alone (a new batch, a new timer), delivered at the drain.
    let hand = Hand::new();
    let batches = Arc::new(Mutex::new(Vec::new()));
    let pipeline = Pipeline::builder(16, Policy::Block)
        .spawn_batched(hand.spawner.clone(), Batch::new(8, HOUR), {
            let batches = batches.clone();
            move |rows: Vec<u32>| {
                lock(&batches).push(rows);
                async {}
            }
        })
        .unwrap();
    assert!(pipeline.push(0).await.is_accepted());
    hand.tick_until(|| pipeline.is_empty() && hand.clock.sleepers() == 1);
    assert!(pipeline.push(1).await.is_accepted());
    hand.clock.advance(HOUR);
    hand.tick_until(|| lock(&batches).len() == 1);
    assert_eq!(*lock(&batches), [vec![0, 1]]);
    assert!(pipeline.push(2).await.is_accepted());
    hand.tick_until(|| pipeline.is_empty() && hand.clock.sleepers() == 1);
    let report = hand.shutdown(&pipeline).await;
    assert_eq!(*lock(&batches), [vec![0, 1], vec![2]]);
    assert_eq!(
        hand.clock.now(),
        HOUR,
        "the drain did not wait for the second timer"
    );
    assert!(report.is_conserved(), "{report}");
    assert_eq!((report.processed, report.abandoned), (3, 0), "{report}");
    assert!(!report.deadline_exceeded, "{report}");
}

#[cfg(feature = "smol")]
async fn a_filling_batch_goes_with_a_dropped_pipeline(sp: Sp) {
    // Found by the final read: the pipeline dropped without `shutdown` while its worker
    // fills a batch; the aborted worker parked the batch after the drop took the parked
    // items, and a `Producer` handle kept it alive. Now it is dropped with the pipeline.
    let live = Live::new();
    let (spawner, clock) = ManualSpawner::new(sp);
    let pipeline = Pipeline::builder(8, Policy::Block)
        .spawn_batched(spawner, Batch::new(4, HOUR), |_: Vec<Tracked>| async {})
        .unwrap();
    let producer = pipeline.producer();
    assert!(pipeline.push(live.track()).await.is_accepted());
    // The worker holds the item in a batch waiting for its timer.
    clock.until_sleepers(1).await;
    assert!(pipeline.is_empty());
    drop(pipeline);
    live.all_dropped().await;
    assert!(producer.is_closed());
    drop(producer);
}

#[cfg(feature = "smol")]
on_every_runtime!(
    an_item_arriving_as_the_timer_fires_is_neither_lost_nor_late,
    a_filling_batch_goes_with_a_dropped_pipeline,
);
