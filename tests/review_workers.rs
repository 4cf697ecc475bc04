//! Review of the worker change (issue 10): faults found by an adversarial reading of
//! `src/pipeline/invoke.rs`, `ledger.rs`, `producer.rs`, `builder.rs`, `pipeline.rs` and
//! `src/retry.rs`. Each test states its minimal input and what is expected; each fault is
//! fixed, and the comment after its test says what it was.

mod common;

use std::future::{pending, poll_fn};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backpressure_pipeline::{
    BoxFuture, OnPanic, Outcome, Pipeline, Policy, Retry, SpawnError, Spawner, StopCause,
    WorkFuture,
};
use common::{Live, Sp};

const ZERO: Duration = Duration::ZERO;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------------------------------
// 1. A panic in the work closure before it returns its future.

async fn sync_panic_in_the_work_closure_is_caught_per_item(sp: Sp) {
    // Minimal input: one worker, default `OnPanic::Isolate`; the closure panics for item 0
    // before it builds its future (`|row| { let r = parse(&row).unwrap(); async move {..} }`).
    // Expected: item 0 panicked, the worker goes on with items 1 and 2.
    let pipeline = Pipeline::builder(4, Policy::Block)
        .spawn(sp, |n: u32| {
            assert!(n != 0, "item 0 panics before its future exists");
            async {}
        })
        .unwrap();
    for n in 0..3 {
        assert!(pipeline.push(n).await.is_accepted());
    }
    let report = pipeline.shutdown().await;
    assert!(report.is_conserved(), "{report}");
    assert_eq!(
        (report.processed, report.panicked, report.abandoned),
        (2, 1, 0),
        "{report}"
    );
}

// Fixed: invoke.rs:289 calls job.call (the user's closure) outside catch_unwind: the worker
// task dies, the item counts as lost in flight instead of panicked, on_panic is not applied

// ---------------------------------------------------------------------------------------
// 2. A panic in the init closure before it returns its future.

async fn sync_panic_in_init_is_a_start_failure(sp: Sp) {
    // Minimal input: one worker whose `init` closure panics before it returns its future,
    // one attempt. Expected: a start failure; no worker can start, so the pipeline stops
    // itself (NoWorkers) and a producer on a full Block queue is released.
    let live = Live::new();
    let held = live.track();
    let pipeline = Pipeline::builder(1, Policy::Block)
        .start_retry(Retry::attempts(1))
        .spawn_with_state(
            sp,
            move |_: usize| {
                let _ = &held;
                let down = true;
                assert!(!down, "init panics before its future exists");
                async { Ok::<(), String>(()) }
            },
            |_: &mut (), _: u32| -> WorkFuture<'_, ()> { Box::pin(async {}) },
        )
        .unwrap();
    // The init closure is dropped with the last worker: every worker has ended.
    live.all_dropped().await;
    assert!(
        pipeline.is_closed(),
        "no worker can start, yet the pipeline is open: a producer on a full Block queue \
         would wait forever"
    );
    let report = pipeline.shutdown().await;
    assert_eq!(report.cause, StopCause::NoWorkers, "{report}");
    assert_eq!(
        (report.start_failures, report.workers_not_started),
        (1, 1),
        "{report}"
    );
}

// Fixed: invoke.rs:225 calls job.start (the user's init closure) outside catch_quietly: no
// start failure, no retry, the worker dies as Panicked and NoWorkers never fires

// ---------------------------------------------------------------------------------------
// 3. A worker in a start backoff when the stop comes with items queued.

/// A spawner that says when a worker is inside the `backoff` wait: the second poll of a
/// sleep of exactly `backoff` comes after the first poll of everything it is raced with.
#[derive(Debug)]
struct SignalInBackoff {
    inner: Sp,
    backoff: Duration,
    waiting: async_channel::Sender<()>,
}

impl Spawner for SignalInBackoff {
    fn spawn(&self, task: BoxFuture) -> Result<(), SpawnError> {
        self.inner.spawn(task)
    }

    fn sleep(&self, duration: Duration) -> BoxFuture {
        let mut inner = self.inner.sleep(duration);
        if duration != self.backoff {
            return inner;
        }
        let waiting = self.waiting.clone();
        let mut polls = 0u32;
        Box::pin(poll_fn(move |cx| {
            polls += 1;
            match polls {
                // Come back once the rest of the select has been polled.
                1 => cx.waker().wake_by_ref(),
                2 => {
                    let _ = waiting.try_send(());
                }
                _ => {}
            }
            inner.as_mut().poll(cx)
        }))
    }
}

async fn a_start_backoff_ends_when_the_queue_drains_after_the_stop(sp: Sp) {
    // Minimal input: 2 workers. Worker 0 starts and holds item 0 until a gate opens; item 1
    // waits in the queue. Shutdown begins; then worker 1's init fails and it waits a 7 s
    // start backoff. The gate opens, worker 0 drains the queue and ends.
    // Expected: worker 1 sees that nothing is left and ends: shutdown returns at once with
    // every worker joined and none aborted.
    // Observed: worker 1 waits until deadline + grace + unresponsive_after and is aborted
    // (or, on a single-threaded runtime, named unresponsive).
    let backoff = Duration::from_secs(7);
    let (waiting_tx, waiting) = async_channel::unbounded();
    let (fail_tx, fail) = async_channel::unbounded::<()>();
    let (gate_tx, gate) = async_channel::unbounded::<()>();
    let spawner = SignalInBackoff {
        inner: sp,
        backoff,
        waiting: waiting_tx,
    };
    let deadline = ms(300);
    let pipeline = Pipeline::builder(4, Policy::Block)
        .workers(2)
        .start_retry(Retry::attempts(2).backoff(backoff, backoff).jitter(false))
        .deadline(deadline)
        .grace(ms(50))
        .unresponsive_after(ms(50))
        .spawn_with_state(
            spawner,
            move |index: usize| {
                let fail = fail.clone();
                async move {
                    if index == 0 {
                        return Ok(());
                    }
                    let _ = fail.recv().await;
                    Err("the database is down")
                }
            },
            move |_: &mut (), n: u32| -> WorkFuture<'_, ()> {
                let gate = gate.clone();
                Box::pin(async move {
                    if n == 0 {
                        let _ = gate.recv().await;
                    }
                })
            },
        )
        .unwrap();
    assert!(pipeline.push(0).await.is_accepted());
    assert!(pipeline.push(1).await.is_accepted());
    let begun = Instant::now();
    let drive = async {
        // `join` polls the shutdown first: the stop is in.
        assert!(pipeline.is_closed());
        fail_tx.send(()).await.unwrap();
        waiting.recv().await.unwrap();
        // Worker 1 is in its backoff, with item 1 still queued: now drain.
        gate_tx.send(()).await.unwrap();
    };
    let (report, ()) = futures_util::future::join(pipeline.shutdown(), drive).await;
    let took = begun.elapsed();
    assert_eq!((report.processed, report.abandoned), (2, 0), "{report}");
    assert!(
        report.all_joined() && report.workers_aborted == 0,
        "an idle worker in a start backoff was aborted or named unresponsive after {took:?}: \
         {report}"
    );
    assert!(took < deadline, "shutdown took {took:?}");
}

// Fixed: invoke.rs:263-269 wait_to_start looks at the queue once, when the stop is seen: if it
// is not empty then, the worker waits its whole backoff (or the deadline) even after the queue
// has drained, and shutdown aborts it after deadline + grace + unresponsive_after

// ---------------------------------------------------------------------------------------
// 4. An idle worker aborted with no wait after the abort.

async fn an_aborted_idle_worker_is_not_named_unresponsive(sp: Sp) {
    // Minimal input: one worker whose `init` never completes (an async connect that hangs),
    // no items, deadline 0. Nothing is left, so shutdown waits grace + unresponsive_after
    // and then aborts the worker, which ends at its next poll: it is responsive.
    // Expected: workers_aborted 1, workers_unresponsive 0.
    // Observed: shutdown polls the join once right after the abort, before the runtime could
    // run the aborted task, and names the worker unresponsive.
    let pipeline = Pipeline::builder(4, Policy::Block)
        .deadline(ZERO)
        .grace(ms(20))
        .unresponsive_after(ms(20))
        .spawn_with_state(
            sp,
            |_: usize| pending::<Result<(), String>>(),
            |_: &mut (), _: u32| -> WorkFuture<'_, ()> { Box::pin(async {}) },
        )
        .unwrap();
    let report = pipeline.shutdown().await;
    assert_eq!(
        (report.workers_aborted, report.workers_unresponsive),
        (1, 0),
        "{report}"
    );
}

async fn a_worker_watching_the_worker_token_is_not_aborted(sp: Sp) {
    // Minimal input: one worker whose `init` waits for a connection that never comes, and
    // gives up when the worker token is cancelled (as `PipelineBuilder::worker_token` says
    // to: "capture it in the worker to wind down cooperatively"); no items, deadline 0,
    // grace 200 ms. Expected (`grace`: "how long shutdown waits, after the deadline, for
    // workers to stop on their own once the worker token is cancelled, before it aborts
    // them"): the token is cancelled at the deadline, init gives up, the worker ends on its
    // own and shutdown returns at once. Observed: with nothing left, the token is never
    // cancelled; the worker is aborted after grace + unresponsive_after (and named
    // unresponsive when the runtime has not polled it yet).
    let builder = Pipeline::builder(4, Policy::Block)
        .deadline(ZERO)
        .grace(ms(200))
        .unresponsive_after(ms(20));
    let token = builder.worker_token();
    let pipeline = builder
        .spawn_with_state(
            sp,
            move |_: usize| {
                let token = token.clone();
                async move {
                    token.cancelled().await;
                    Err::<(), _>("stopped while connecting")
                }
            },
            |_: &mut (), _: u32| -> WorkFuture<'_, ()> { Box::pin(async {}) },
        )
        .unwrap();
    let begun = Instant::now();
    let report = pipeline.shutdown().await;
    let took = begun.elapsed();
    assert!(
        report.all_joined() && report.workers_aborted == 0,
        "a worker watching the worker token was aborted after {took:?}: {report}"
    );
}

// Fixed: pipeline.rs:456-471 with nothing left at the deadline, shutdown never cancels the
// worker token and leaves no wait after the abort: a worker watching the token is aborted
// instead of ending on its own, and one aborted in an await is named unresponsive before the
// runtime could poll it

// ---------------------------------------------------------------------------------------
// 5. A zero backoff retries after the deadline.

async fn no_attempt_starts_after_the_deadline(sp: Sp) {
    // Minimal input: one worker, `Retry::attempts(10).backoff(0, 0)`; the work always hands
    // its item back, and its first attempt lasts until the deadline passes (it waits for the
    // worker token). Expected: the item is waiting for its next attempt when the deadline
    // passes, so it is handed back, and no attempt starts after the worker token is cancelled
    // (as with any non-zero backoff).
    // Observed on smol, the executor and async-std (whose zero sleep is ready at its first
    // poll): `select(sleep, deadline)` polls the sleep first, so the worker ignores the
    // deadline and runs the 9 remaining attempts; the item is dead-lettered as failed.
    let builder = Pipeline::builder(4, Policy::Block)
        .retry(Retry::attempts(10).backoff(ZERO, ZERO))
        .deadline(ZERO)
        .grace(Duration::from_secs(10));
    let stop = builder.worker_token();
    let calls = Arc::new(AtomicU32::new(0));
    let (started_tx, started) = async_channel::unbounded::<()>();
    let pipeline = builder
        .spawn(sp, {
            let calls = calls.clone();
            move |n: u32| {
                let (stop, calls, started) = (stop.clone(), calls.clone(), started_tx.clone());
                async move {
                    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        let _ = started.try_send(());
                        stop.cancelled().await;
                    }
                    Outcome::Retry(n, "the service is down")
                }
            }
        })
        .unwrap();
    assert!(pipeline.push(7).await.is_accepted());
    // The first attempt is running: the deadline passes during it.
    started.recv().await.unwrap();
    let report = pipeline.shutdown().await;
    let leftovers = pipeline.take_leftovers();
    assert!(report.is_conserved(), "{report}");
    assert_eq!(
        (
            calls.load(Ordering::SeqCst),
            report.failed,
            report.handed_back
        ),
        (1, 0, 1),
        "attempts after the deadline: {report}"
    );
    assert_eq!(leftovers, [7]);
}

// Fixed: invoke.rs:333 select(sleep, deadline) polls the sleep first: with a zero (or already
// elapsed) backoff a retry starts after the worker token is cancelled; with many attempts and
// ready work the worker never yields and cannot even be aborted

// ---------------------------------------------------------------------------------------
// 6. `restarts` counts rebuilds that never happened.

async fn restarts_counts_only_states_rebuilt(sp: Sp) {
    // Minimal input: one worker under `OnPanic::Restart`, one start attempt; its init
    // succeeds the first time only; item 0 panics. The state is dropped and never rebuilt
    // (init fails, the worker gives up, NoWorkers). Expected, by the docs of `Report::restarts`
    // ("worker states rebuilt after a panic") and `OnPanic::Restart` ("each rebuild is
    // counted"): restarts 0. Observed: 1, counted before the rebuild is even tried.
    let inits = Arc::new(AtomicU32::new(0));
    let pipeline = Pipeline::builder(4, Policy::Block)
        .on_panic(OnPanic::Restart)
        .start_retry(Retry::attempts(1).backoff(ZERO, ZERO))
        .spawn_with_state(
            sp,
            {
                let inits = inits.clone();
                move |_: usize| {
                    let first = inits.fetch_add(1, Ordering::SeqCst) == 0;
                    async move {
                        if first {
                            Ok(())
                        } else {
                            Err("the database is down")
                        }
                    }
                }
            },
            |_: &mut (), _: u32| -> WorkFuture<'_, ()> { Box::pin(async { panic!("poisoned") }) },
        )
        .unwrap();
    assert!(pipeline.push(0).await.is_accepted());
    while !pipeline.is_closed() {
        common::yield_now().await; // the worker panics, fails to restart, gives up
    }
    let report = pipeline.shutdown().await;
    assert_eq!(report.cause, StopCause::NoWorkers, "{report}");
    assert_eq!((report.panicked, report.start_failures), (1, 1), "{report}");
    assert_eq!(report.restarts, 0, "no state was rebuilt: {report}");
}

// Fixed: invoke.rs:200 counts a restart before the state is rebuilt: a rebuild that fails or
// is stopped is still counted in Report::restarts / Stats::restarts

// ---------------------------------------------------------------------------------------
// 7. A parent future that panics.

async fn a_panicking_parent_future_does_not_vanish(sp: Sp) {
    // Minimal input: `.parent(fut)` where `fut` panics (a signal source that failed).
    // Expected: the watcher catches it like any user code and stops the pipeline (a stop
    // signal that can no longer fire must not leave the pipeline running unwatched).
    // Observed: the watcher task dies with the panic (swallowed by the runtime, the task
    // being detached) and the pipeline stays open with no parent.
    let live = Live::new();
    let held = live.track();
    let pipeline = Pipeline::builder(4, Policy::Block)
        .parent(async move {
            let _held = held;
            panic!("the signal source failed");
        })
        .spawn(sp, |_: u32| async {})
        .unwrap();
    // The watcher stops the pipeline at its first turn (the watchdog bounds this loop; its
    // locals are dropped by the unwind itself, before the watcher can act, so their drop
    // says nothing about the stop).
    while !pipeline.is_closed() {
        common::yield_now().await;
    }
    live.all_dropped().await;
    let report = pipeline.shutdown().await;
    assert_eq!(report.cause, StopCause::External, "{report}");
}

// Fixed: builder.rs:620-628 watch_parent polls the user's future without catch_unwind: a panic
// kills the detached watcher silently and the pipeline never stops on its signal

// ---------------------------------------------------------------------------------------
// 8. `Retry::delay` stops doubling after 32 doublings.

// Fixed: retry.rs used 1u32.checked_shl(n), None from n = 32 and replaced by u32::MAX: the
// delay stopped doubling at 2^32 x initial (and dropped by one unit).
#[test]
fn retry_delay_keeps_doubling_up_to_max() {
    // Minimal input: initial 1 ns, max Duration::MAX.
    let retry = Retry::attempts(100).backoff(Duration::from_nanos(1), Duration::MAX);
    assert_eq!(retry.delay(33), Duration::from_nanos(1 << 32));
    // Expected 2^33 ns (8.6 s); observed 2^32 - 1 ns (4.3 s), less than delay(33).
    assert!(retry.delay(34) >= retry.delay(33), "not monotonic");
    assert_eq!(retry.delay(34), Duration::from_nanos(1 << 33));
    assert_eq!(retry.delay(41), Duration::from_nanos(1 << 40));
}

on_every_runtime!(
    sync_panic_in_the_work_closure_is_caught_per_item,
    sync_panic_in_init_is_a_start_failure,
    a_start_backoff_ends_when_the_queue_drains_after_the_stop,
    an_aborted_idle_worker_is_not_named_unresponsive,
    a_worker_watching_the_worker_token_is_not_aborted,
    no_attempt_starts_after_the_deadline,
    restarts_counts_only_states_rebuilt,
    a_panicking_parent_future_does_not_vanish,
);
