//! Workers that real services need, on every runtime: fallible work and its error hook,
//! retries with a dead-letter hook, a retry parked at shutdown, per-worker state built by
//! `init` (and rebuilt under `OnPanic::Restart`), init failures, hooks that panic, and the
//! items a zero-deadline shutdown hands back.
//!
//! Each test keeps a ledger of ground truth: the fate of every item id as the work, the hooks
//! and `take_leftovers` saw it, and the ids of the items dropped so far. Each id must end in
//! exactly one fate, and the report must match the ledger term by term.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::future::pending;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backpressure_pipeline::{
    OnPanic, Outcome, Pipeline, Policy, PushOutcome, Report, Retry, StopCause, WorkFuture,
};
use common::ledger::{bump, hand_back, lock, Fate, Item, Kit};
use common::{Live, Sp, Tracked};

const ZERO: Duration = Duration::ZERO;

/// Every backoff zero: waiting is not what these tests are about.
fn no_backoff(attempts: u32) -> Retry {
    Retry::attempts(attempts).backoff(ZERO, ZERO)
}

/// A work error that names its item and attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Bad {
    id: u32,
    attempt: u32,
}

// 1. Fallible work: `Result<(), E>`.

async fn fallible_work_counts_failures_and_shows_each_error(sp: Sp) {
    // Items 1..=100, those whose id is divisible by 3 fail: processed 67, failed 33.
    let kit = Kit::default();
    let errors = Arc::new(Mutex::new(Vec::new()));
    let pipeline = Pipeline::builder(8, Policy::Block)
        .workers(3)
        .on_error({
            let errors = errors.clone();
            move |e: &Bad| lock(&errors).push(e.id)
        })
        .spawn(sp, {
            let kit = kit.clone();
            move |item: Item| {
                let kit = kit.clone();
                async move {
                    if item.id % 3 == 0 {
                        kit.ledger.record(item.id, Fate::Failed);
                        return Err(Bad {
                            id: item.id,
                            attempt: 1,
                        });
                    }
                    kit.processed(item);
                    Ok(())
                }
            }
        })
        .unwrap();
    for id in 1..=100 {
        assert!(pipeline.push(kit.item(id)).await.is_accepted());
    }
    // The live stats count failures too, as soon as every item is settled.
    // Terminates: the workers settle all 100 (the watchdog bounds a bug).
    let stats = loop {
        let stats = pipeline.stats();
        if stats.processed + stats.failed == 100 {
            break stats;
        }
        common::yield_now().await;
    };
    assert_eq!(
        (
            stats.produced,
            stats.processed,
            stats.failed,
            stats.panicked
        ),
        (100, 67, 33, 0),
        "{stats:?}"
    );
    let report = pipeline.shutdown().await;
    let settled = kit.ledger.settle(1..101);
    let failing: Vec<u32> = (1..=100).filter(|id| id % 3 == 0).collect();
    assert_eq!(settled.ids(Fate::Failed), failing);
    settled.assert_matches(&report);
    assert_eq!(
        (report.produced, report.processed, report.failed),
        (100, 67, 33),
        "{report}"
    );
    assert_eq!((report.abandoned, report.retried), (0, 0), "{report}");
    assert!(report.all_joined() && !report.deadline_exceeded, "{report}");
    // The hook saw exactly the 33 errors, once each.
    let mut seen = lock(&errors).clone();
    seen.sort_unstable();
    assert_eq!(seen, failing);
    kit.assert_all_dropped_once(1..101);
}

// 2. Retries, rejects and final failures: `Outcome<T, E>`.

/// How many attempts item `id` fails before one succeeds: 0 to 4, ten items each.
fn failures_needed(id: u32) -> u32 {
    id % 5
}

async fn retries_then_dead_letters_the_very_item(sp: Sp) {
    // With 3 attempts in all, items needing at most 2 failures are processed; the others
    // fail 3 times and reach the dead-letter hook, item in hand.
    let kit = Kit::default();
    let attempts = Arc::new(Mutex::new(HashMap::new()));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let dead = Arc::new(Mutex::new(Vec::new()));
    let pipeline = Pipeline::builder(8, Policy::Block)
        .workers(3)
        .retry(no_backoff(3))
        .on_error({
            let errors = errors.clone();
            move |e: &Bad| lock(&errors).push(*e)
        })
        .dead_letter({
            let (dead, ledger) = (dead.clone(), kit.ledger.clone());
            move |item: Item, e: Bad| {
                ledger.record(item.id, Fate::DeadLettered);
                lock(&dead).push((item, e));
            }
        })
        .spawn(sp, {
            let (kit, attempts) = (kit.clone(), attempts.clone());
            move |item: Item| {
                let (kit, attempts) = (kit.clone(), attempts.clone());
                async move {
                    let id = item.id;
                    let attempt = bump(&attempts, id);
                    if attempt > failures_needed(id) {
                        kit.processed(item);
                        Outcome::Done
                    } else {
                        Outcome::Retry(item, Bad { id, attempt })
                    }
                }
            }
        })
        .unwrap();
    for id in 0..50 {
        assert!(pipeline.push(kit.item(id)).await.is_accepted());
    }
    let report = pipeline.shutdown().await;
    let settled = kit.ledger.settle(0..50);
    let (ok, doomed): (Vec<u32>, Vec<u32>) = (0..50).partition(|&id| failures_needed(id) <= 2);
    assert_eq!(settled.ids(Fate::Processed), ok);
    assert_eq!(settled.ids(Fate::DeadLettered), doomed);
    settled.assert_matches(&report);
    // Retried: min(failures, 2) per item: 10 × (0 + 1 + 2 + 2 + 2).
    assert_eq!(
        (report.processed, report.failed, report.retried),
        (30, 20, 70),
        "{report}"
    );
    assert!(report.all_joined() && report.abandoned == 0, "{report}");
    // Each item was tried min(failures + 1, 3) times.
    let attempts = lock(&attempts).clone();
    for id in 0..50 {
        assert_eq!(attempts[&id], (failures_needed(id) + 1).min(3), "item {id}");
    }
    // The error hook saw every failed attempt, the last ones included: 90 in all.
    let mut seen = lock(&errors).clone();
    seen.sort_unstable();
    let expected: Vec<Bad> = (0..50)
        .flat_map(|id| (1..=failures_needed(id).min(3)).map(move |attempt| Bad { id, attempt }))
        .collect();
    assert_eq!(seen.len(), 90);
    assert_eq!(seen, expected);
    // The dead letters hold the very items (not `Clone`: nothing else could be), alive,
    // each with its last error.
    let mut dead = std::mem::take(&mut *lock(&dead));
    dead.sort_by_key(|(item, _)| item.id);
    let letters: Vec<(u32, Bad)> = dead.iter().map(|(item, e)| (item.id, *e)).collect();
    let expected: Vec<(u32, Bad)> = doomed
        .iter()
        .map(|&id| (id, Bad { id, attempt: 3 }))
        .collect();
    assert_eq!(letters, expected);
    assert_eq!(kit.items.count(), 20, "the dead letters are alive");
    assert_eq!(
        kit.ledger.dropped(),
        ok,
        "only the processed items were dropped"
    );
    drop(dead);
    kit.assert_all_dropped_once(0..50);
}

async fn reject_dead_letters_at_once_and_failed_has_no_letter(sp: Sp) {
    // Ids ≡ 0 (mod 3) are rejected, ≡ 1 fail for good, ≡ 2 succeed; retries are allowed
    // but neither `Reject` nor `Failed` is retried.
    let kit = Kit::default();
    let attempts = Arc::new(Mutex::new(HashMap::new()));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let dead = Arc::new(Mutex::new(Vec::new()));
    let pipeline = Pipeline::builder(8, Policy::Block)
        .workers(2)
        .retry(no_backoff(3))
        .on_error({
            let errors = errors.clone();
            move |e: &Bad| lock(&errors).push(e.id)
        })
        .dead_letter({
            let (dead, ledger) = (dead.clone(), kit.ledger.clone());
            move |item: Item, e: Bad| {
                ledger.record(item.id, Fate::DeadLettered);
                lock(&dead).push((item, e));
            }
        })
        .spawn(sp, {
            let (kit, attempts) = (kit.clone(), attempts.clone());
            move |item: Item| {
                let (kit, attempts) = (kit.clone(), attempts.clone());
                async move {
                    let id = item.id;
                    let attempt = bump(&attempts, id);
                    match id % 3 {
                        0 => Outcome::Reject(item, Bad { id, attempt }),
                        1 => {
                            kit.ledger.record(id, Fate::Failed);
                            Outcome::Failed(Bad { id, attempt })
                        }
                        _ => {
                            kit.processed(item);
                            Outcome::Done
                        }
                    }
                }
            }
        })
        .unwrap();
    for id in 0..30 {
        assert!(pipeline.push(kit.item(id)).await.is_accepted());
    }
    let report = pipeline.shutdown().await;
    let settled = kit.ledger.settle(0..30);
    let class = |r: u32| (0..30).filter(move |id| id % 3 == r).collect::<Vec<u32>>();
    assert_eq!(settled.ids(Fate::DeadLettered), class(0));
    assert_eq!(settled.ids(Fate::Failed), class(1));
    assert_eq!(settled.ids(Fate::Processed), class(2));
    settled.assert_matches(&report);
    assert_eq!(
        (report.processed, report.failed, report.retried),
        (10, 20, 0),
        "{report}"
    );
    // One attempt each: nothing was retried.
    assert!(lock(&attempts).values().all(|&n| n == 1));
    assert_eq!(lock(&attempts).len(), 30);
    // The error hook saw both kinds of failure; the dead letters hold only the rejects.
    let mut seen = lock(&errors).clone();
    seen.sort_unstable();
    let failing: Vec<u32> = (0..30).filter(|id| id % 3 != 2).collect();
    assert_eq!(seen, failing);
    let mut dead = std::mem::take(&mut *lock(&dead));
    dead.sort_by_key(|(item, _)| item.id);
    let letters: Vec<(u32, Bad)> = dead.iter().map(|(item, e)| (item.id, *e)).collect();
    let expected: Vec<(u32, Bad)> = class(0)
        .into_iter()
        .map(|id| (id, Bad { id, attempt: 1 }))
        .collect();
    assert_eq!(letters, expected);
    assert_eq!(kit.items.count(), 10, "the dead letters are alive");
    drop(dead);
    kit.assert_all_dropped_once(0..30);
}

// 3. A retry waiting at shutdown.

async fn a_retry_waiting_at_shutdown_is_handed_back_by_the_deadline(sp: Sp) {
    // Two workers each park an item for a retry half an hour or more away; three more wait
    // in the queue. A 50 ms deadline ends the wait, and all five come back. With a long
    // grace the workers leave their wait on the worker token (shutdown returns as soon as
    // they have); with none they may be aborted mid-wait instead, which must lose nothing.
    for grace in [Duration::from_secs(10), ZERO] {
        retry_parked_at_shutdown(sp.clone(), grace).await;
    }
}

async fn retry_parked_at_shutdown(sp: Sp, grace: Duration) {
    let kit = Kit::default();
    let (parked_tx, parked) = async_channel::unbounded();
    let hour = Duration::from_secs(3600);
    let pipeline = Pipeline::builder(8, Policy::Block)
        .workers(2)
        .retry(Retry::attempts(10).backoff(hour, hour))
        .deadline(Duration::from_millis(50))
        .grace(grace)
        // An aborted worker ends at its next poll: this only bounds a bug.
        .unresponsive_after(Duration::from_secs(10))
        // Runs after the item is parked: a signal that it is.
        .on_error(move |e: &Bad| {
            let _ = parked_tx.try_send(e.id);
        })
        .spawn(sp, |item: Item| async move {
            let id = item.id;
            Outcome::Retry(item, Bad { id, attempt: 1 })
        })
        .unwrap();
    for id in 0..5 {
        assert!(pipeline.push(kit.item(id)).await.is_accepted());
    }
    let mut first = BTreeSet::new();
    for _ in 0..2 {
        first.insert(parked.recv().await.unwrap());
    }
    assert_eq!(first, BTreeSet::from([0, 1]), "each worker parked one item");
    let begun = Instant::now();
    let report = pipeline.shutdown().await;
    let took = begun.elapsed();
    // A hang guard, not a timing test: about 50 ms, far below the half hour of the backoff.
    assert!(took < Duration::from_secs(30), "shutdown took {took:?}");
    let (leftovers, ids) = hand_back(&pipeline, &kit.ledger);
    // Retries first (in some worker order), then the queue in push order.
    assert_eq!(ids[..2].iter().copied().collect::<BTreeSet<_>>(), first);
    assert_eq!(ids[2..], [2, 3, 4]);
    let settled = kit.ledger.settle(0..5);
    settled.assert_matches(&report);
    // `retried` counts the two retries scheduled, though neither attempt came.
    assert_eq!(
        (report.produced, report.retried, report.handed_back),
        (5, 2, 5),
        "{grace:?}: {report}"
    );
    assert_eq!(
        (report.abandoned, report.lost_in_flight),
        (5, 0),
        "{grace:?}: {report}"
    );
    assert!(report.deadline_exceeded, "{grace:?}: {report}");
    if !grace.is_zero() {
        assert_eq!(
            report.workers_aborted, 0,
            "the workers left their wait: {report}"
        );
    }
    assert!(report.all_joined(), "{grace:?}: {report}");
    // Nothing was dropped: all five are alive in the leftovers.
    assert_eq!(kit.items.count(), 5);
    assert!(kit.ledger.dropped().is_empty());
    drop(leftovers);
    kit.assert_all_dropped_once(0..5);
}

// 4. Per-worker state.

/// A worker's state: counts its calls; on drop, reports them.
#[derive(Debug)]
struct State {
    index: usize,
    calls: u32,
    _live: Tracked,
    dropped: Arc<Mutex<Vec<(usize, u32)>>>,
}

impl Drop for State {
    fn drop(&mut self) {
        lock(&self.dropped).push((self.index, self.calls));
    }
}

async fn each_worker_owns_its_state(sp: Sp) {
    const WORKERS: usize = 3;
    let kit = Kit::default();
    let states = Live::new();
    let inits = Arc::new(Mutex::new(Vec::new()));
    let dropped = Arc::new(Mutex::new(Vec::new()));
    // Which worker's state served each item.
    let served = Arc::new(Mutex::new(HashMap::new()));
    let (started_tx, started) = async_channel::unbounded();
    let (gate_tx, gate) = async_channel::bounded::<()>(1);
    let pipeline = Pipeline::builder(8, Policy::Block)
        .workers(WORKERS)
        .spawn_with_state(
            sp,
            {
                let (states, inits, dropped) = (states.clone(), inits.clone(), dropped.clone());
                move |index: usize| {
                    lock(&inits).push(index);
                    let state = State {
                        index,
                        calls: 0,
                        _live: states.track(),
                        dropped: dropped.clone(),
                    };
                    async move { Ok::<State, Bad>(state) }
                }
            },
            {
                let (kit, served) = (kit.clone(), served.clone());
                move |state: &mut State, item: Item| -> WorkFuture<'_, ()> {
                    let (kit, served) = (kit.clone(), served.clone());
                    let (started_tx, gate) = (started_tx.clone(), gate.clone());
                    Box::pin(async move {
                        state.calls += 1;
                        lock(&served).insert(item.id, state.index);
                        if item.id < WORKERS as u32 {
                            // Hold this worker until every worker holds one item.
                            let _ = started_tx.try_send(state.index);
                            let _ = gate.recv().await;
                        }
                        kit.processed(item);
                    })
                }
            },
        )
        .unwrap();
    for id in 0..WORKERS as u32 {
        assert!(pipeline.push(kit.item(id)).await.is_accepted());
    }
    // Each worker holds one of the first three items, each with its own state.
    let mut holders = Vec::new();
    for _ in 0..WORKERS {
        holders.push(started.recv().await.unwrap());
    }
    holders.sort_unstable();
    assert_eq!(holders, [0, 1, 2]);
    assert_eq!(states.count(), WORKERS, "one state per worker, alive");
    let mut indices = lock(&inits).clone();
    indices.sort_unstable();
    assert_eq!(indices, [0, 1, 2], "init ran once per index");
    gate_tx.close();
    for id in WORKERS as u32..100 {
        assert!(pipeline.push(kit.item(id)).await.is_accepted());
    }
    let report = pipeline.shutdown().await;
    // The workers are joined, so their states are gone.
    assert_eq!(
        states.count(),
        0,
        "every state dropped by the end of shutdown"
    );
    let settled = kit.ledger.settle(0..100);
    settled.assert_matches(&report);
    assert_eq!((report.processed, report.restarts), (100, 0), "{report}");
    assert!(report.all_joined(), "{report}");
    let mut indices = lock(&inits).clone();
    indices.sort_unstable();
    assert_eq!(indices, [0, 1, 2], "and never again");
    // Each state counted exactly the calls made with it: its worker's items.
    let mut dropped = lock(&dropped).clone();
    dropped.sort_unstable();
    assert_eq!(
        dropped.iter().map(|&(i, _)| i).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    let served = lock(&served).clone();
    for &(index, calls) in &dropped {
        let mine = served.values().filter(|&&i| i == index).count() as u32;
        assert_eq!(calls, mine, "worker {index}");
    }
    let total: u32 = dropped.iter().map(|&(_, calls)| calls).sum();
    assert_eq!(u64::from(total), report.processed);
    kit.assert_all_dropped_once(0..100);
}

// 5. Init failures.

#[derive(Debug)]
#[allow(dead_code)] // Read through `Debug` only.
struct InitError {
    index: usize,
    attempt: u32,
}

async fn init_failures_are_retried_and_counted(sp: Sp) {
    // Worker 0's init fails twice, then succeeds; worker 1's succeeds at once.
    let kit = Kit::default();
    let states = Live::new();
    let attempts = Arc::new(Mutex::new(HashMap::new()));
    let (ready_tx, ready) = async_channel::unbounded();
    let pipeline = Pipeline::builder(8, Policy::Block)
        .workers(2)
        .start_retry(no_backoff(5))
        .spawn_with_state(
            sp,
            {
                let (states, attempts) = (states.clone(), attempts.clone());
                move |index: usize| {
                    let attempt = bump(&attempts, index);
                    let built = if index == 0 && attempt <= 2 {
                        Err(InitError { index, attempt })
                    } else {
                        let _ = ready_tx.try_send(index);
                        Ok(states.track())
                    };
                    async move { built }
                }
            },
            {
                let kit = kit.clone();
                move |_: &mut Tracked, item: Item| -> WorkFuture<'_, ()> {
                    let kit = kit.clone();
                    Box::pin(async move { kit.processed(item) })
                }
            },
        )
        .unwrap();
    // Both workers built their state (worker 0 at its third attempt).
    let mut up: Vec<usize> = vec![ready.recv().await.unwrap(), ready.recv().await.unwrap()];
    up.sort_unstable();
    assert_eq!(up, [0, 1]);
    for id in 0..20 {
        assert!(pipeline.push(kit.item(id)).await.is_accepted());
    }
    let report = pipeline.shutdown().await;
    assert_eq!(states.count(), 0);
    let settled = kit.ledger.settle(0..20);
    settled.assert_matches(&report);
    assert_eq!(
        (
            report.processed,
            report.start_failures,
            report.workers_not_started
        ),
        (20, 2, 0),
        "{report}"
    );
    assert_eq!(report.cause, StopCause::Shutdown);
    assert!(report.all_joined(), "{report}");
    assert_eq!(*lock(&attempts), HashMap::from([(0, 3), (1, 1)]));
    kit.assert_all_dropped_once(0..20);
}

async fn no_worker_can_start_so_the_pipeline_stops_itself(sp: Sp) {
    // Every init fails (twice each, once the gate opens): the pipeline stops itself, which
    // releases a producer waiting on the full queue, and the queued items come back.
    const WORKERS: usize = 2;
    let kit = Kit::default();
    let attempts = Arc::new(Mutex::new(HashMap::new()));
    let (gate_tx, gate) = async_channel::bounded::<()>(1);
    let pipeline = Pipeline::builder(2, Policy::Block)
        .workers(WORKERS)
        .start_retry(no_backoff(2))
        .spawn_with_state(
            sp.clone(),
            {
                let attempts = attempts.clone();
                move |index: usize| {
                    let (attempts, gate) = (attempts.clone(), gate.clone());
                    async move {
                        let _ = gate.recv().await;
                        let attempt = bump(&attempts, index);
                        Err::<Tracked, _>(InitError { index, attempt })
                    }
                }
            },
            |_: &mut Tracked, item: Item| -> WorkFuture<'_, ()> {
                Box::pin(async move { drop(item) })
            },
        )
        .unwrap();
    for id in 0..2 {
        assert!(pipeline.push(kit.item(id)).await.is_accepted());
    }
    assert_eq!(pipeline.len(), 2, "full, and no worker has started");
    let producer = pipeline.producer();
    let third = kit.item(2);
    let waiting = common::spawn(&sp, async move { producer.push(third).await });
    // Let the producer park on the full queue (its outcome is the same if it has not yet).
    for _ in 0..10 {
        common::yield_now().await;
    }
    gate_tx.close();
    // Released by the pipeline's own stop: nothing else will ever make room.
    let refused = match waiting.await.expect("the producer's task ran to the end") {
        PushOutcome::Closed(item) => item,
        other => panic!("expected Closed, got {other:?}"),
    };
    assert_eq!(refused.id, 2, "the producer's own item comes back");
    drop(refused);
    assert!(pipeline.is_closed());
    let report = pipeline.shutdown().await;
    assert_eq!(report.cause, StopCause::NoWorkers, "{report}");
    assert_eq!(
        (report.workers_spawned, report.workers_not_started),
        (WORKERS, WORKERS),
        "{report}"
    );
    assert_eq!(report.start_failures, 2 * WORKERS as u64, "{report}");
    let (leftovers, ids) = hand_back(&pipeline, &kit.ledger);
    assert_eq!(ids, [0, 1]);
    let settled = kit.ledger.settle(0..2);
    settled.assert_matches(&report);
    assert_eq!(
        (report.produced, report.processed, report.handed_back),
        (2, 0, 2),
        "{report}"
    );
    assert_eq!(
        (report.abandoned, report.lost_in_flight),
        (2, 0),
        "{report}"
    );
    assert!(report.all_joined(), "{report}");
    assert_eq!(*lock(&attempts), HashMap::from([(0, 2), (1, 2)]));
    assert_eq!(
        kit.ledger.dropped(),
        [2],
        "only the refused item was dropped"
    );
    drop(leftovers);
    kit.assert_all_dropped_once(0..3);
}

// 6. Panics in stateful work: `Restart` rebuilds the state, `Isolate` keeps it.

/// Whether item `id`'s work panics: 0, 7, 14, 21, 28.
fn panics_on(id: u32) -> bool {
    id % 7 == 0
}

/// What a run of the panicking stateful work saw.
#[derive(Debug, Default)]
struct Probe {
    /// Each call of init, by index.
    inits: Mutex<Vec<usize>>,
    /// The indices whose state is alive now.
    alive: Mutex<BTreeSet<usize>>,
    /// Indices whose init ran while a state of theirs was still alive.
    overlaps: Mutex<Vec<usize>>,
    /// Which worker's state served each item.
    served: Mutex<HashMap<u32, usize>>,
}

/// A worker's state for the panic tests: on drop, leaves `alive` and reports its calls.
#[derive(Debug)]
struct PanicState {
    inner: State,
    probe: Arc<Probe>,
}

impl Drop for PanicState {
    fn drop(&mut self) {
        lock(&self.probe.alive).remove(&self.inner.index);
    }
}

/// Runs 30 items, five of which panic, through two stateful workers under `on_panic`;
/// returns the report, the probe, the states' (index, calls) at their drops, and the kit.
async fn run_panicking_workers(
    sp: Sp,
    on_panic: OnPanic,
) -> (Report, Arc<Probe>, Vec<(usize, u32)>, Kit) {
    const WORKERS: usize = 2;
    let kit = Kit::default();
    let states = Live::new();
    let probe = Arc::new(Probe::default());
    let dropped = Arc::new(Mutex::new(Vec::new()));
    let (init_tx, inits) = async_channel::unbounded();
    let pipeline = Pipeline::builder(8, Policy::Block)
        .workers(WORKERS)
        .on_panic(on_panic)
        .start_retry(no_backoff(5))
        .spawn_with_state(
            sp,
            {
                let (states, probe, dropped) = (states.clone(), probe.clone(), dropped.clone());
                move |index: usize| {
                    lock(&probe.inits).push(index);
                    if !lock(&probe.alive).insert(index) {
                        lock(&probe.overlaps).push(index);
                    }
                    let state = PanicState {
                        inner: State {
                            index,
                            calls: 0,
                            _live: states.track(),
                            dropped: dropped.clone(),
                        },
                        probe: probe.clone(),
                    };
                    let _ = init_tx.try_send(index);
                    async move { Ok::<PanicState, InitError>(state) }
                }
            },
            {
                let (kit, probe) = (kit.clone(), probe.clone());
                move |state: &mut PanicState, item: Item| -> WorkFuture<'_, ()> {
                    let (kit, probe) = (kit.clone(), probe.clone());
                    Box::pin(async move {
                        let state = &mut state.inner;
                        state.calls += 1;
                        lock(&probe.served).insert(item.id, state.index);
                        if panics_on(item.id) {
                            kit.ledger.record(item.id, Fate::Panicked);
                            panic!("item {} panics, as asked", item.id);
                        }
                        kit.processed(item);
                    })
                }
            },
        )
        .unwrap();
    for id in 0..30 {
        assert!(pipeline.push(kit.item(id)).await.is_accepted());
    }
    let panics = (0..30).filter(|&id| panics_on(id)).count();
    if on_panic == OnPanic::Restart {
        // Wait for every rebuild before shutdown (a stop would cancel a pending one).
        for _ in 0..WORKERS + panics {
            inits.recv().await.unwrap();
        }
    }
    let report = pipeline.shutdown().await;
    assert_eq!(
        states.count(),
        0,
        "every state dropped by the end of shutdown"
    );
    assert!(lock(&probe.alive).is_empty());
    assert!(report.all_joined(), "{report}");
    let settled = kit.ledger.settle(0..30);
    let expected: Vec<u32> = (0..30).filter(|&id| panics_on(id)).collect();
    assert_eq!(settled.ids(Fate::Panicked), expected);
    settled.assert_matches(&report);
    assert_eq!(
        (report.processed, report.panicked),
        (25, panics as u64),
        "{report}"
    );
    let dropped = lock(&dropped).clone();
    (report, probe, dropped, kit)
}

async fn restart_rebuilds_the_state_of_the_worker_that_panicked(sp: Sp) {
    let (report, probe, dropped, kit) = run_panicking_workers(sp, OnPanic::Restart).await;
    assert_eq!((report.restarts, report.start_failures), (5, 0), "{report}");
    // Init ran once per worker, and again for each panic, for the index that panicked.
    let served = lock(&probe.served).clone();
    let mut inits = lock(&probe.inits).clone();
    inits.sort_unstable();
    let mut expected: Vec<usize> = (0..30)
        .filter(|&id| panics_on(id))
        .map(|id| served[&id])
        .chain([0, 1])
        .collect();
    expected.sort_unstable();
    assert_eq!(inits, expected);
    // Each old state was dropped before its replacement was built.
    assert!(
        lock(&probe.overlaps).is_empty(),
        "{:?}",
        lock(&probe.overlaps)
    );
    assert_eq!(
        dropped.len(),
        7,
        "two states, and five rebuilt ones, all dropped"
    );
    let total: u32 = dropped.iter().map(|&(_, calls)| calls).sum();
    assert_eq!(
        total, 30,
        "every call, panicking or not, on a state of its worker"
    );
    kit.assert_all_dropped_once(0..30);
}

async fn isolate_keeps_the_state_of_the_worker_that_panicked(sp: Sp) {
    let (report, probe, dropped, kit) = run_panicking_workers(sp, OnPanic::Isolate).await;
    assert_eq!((report.restarts, report.start_failures), (0, 0), "{report}");
    let mut inits = lock(&probe.inits).clone();
    inits.sort_unstable();
    assert_eq!(inits, [0, 1], "no init after a panic");
    // One state per worker served all its worker's items, across the panics.
    let served = lock(&probe.served).clone();
    let mut dropped = dropped;
    dropped.sort_unstable();
    assert_eq!(dropped.iter().map(|&(i, _)| i).collect::<Vec<_>>(), [0, 1]);
    for &(index, calls) in &dropped {
        let mine = served.values().filter(|&&i| i == index).count() as u32;
        assert_eq!(calls, mine, "worker {index}");
    }
    kit.assert_all_dropped_once(0..30);
}

// 7. Hooks that panic.

async fn panicking_hooks_do_not_take_the_worker_down(sp: Sp) {
    // One worker; ids ≡ 1 (mod 4) fail (the error hook panics), ids ≡ 2 are rejected (the
    // error hook and the dead-letter hook panic), the rest succeed. The worker goes on.
    let kit = Kit::default();
    let errors = Arc::new(Mutex::new(Vec::new()));
    let pipeline = Pipeline::builder(4, Policy::Block)
        .on_error({
            let errors = errors.clone();
            move |e: &Bad| {
                lock(&errors).push(e.id);
                panic!("the error hook panics on item {}", e.id);
            }
        })
        .dead_letter({
            let ledger = kit.ledger.clone();
            move |item: Item, e: Bad| {
                ledger.record(item.id, Fate::DeadLettered);
                panic!("the dead-letter hook panics on item {}", e.id);
            }
        })
        .spawn(sp, {
            let kit = kit.clone();
            move |item: Item| {
                let kit = kit.clone();
                async move {
                    let id = item.id;
                    let e = Bad { id, attempt: 1 };
                    match id % 4 {
                        1 => {
                            kit.ledger.record(id, Fate::Failed);
                            Outcome::Failed(e)
                        }
                        2 => Outcome::Reject(item, e),
                        _ => {
                            kit.processed(item);
                            Outcome::Done
                        }
                    }
                }
            }
        })
        .unwrap();
    for id in 0..20 {
        assert!(pipeline.push(kit.item(id)).await.is_accepted());
    }
    let report = pipeline.shutdown().await;
    let settled = kit.ledger.settle(0..20);
    let class = |r: u32| (0..20).filter(move |id| id % 4 == r).collect::<Vec<u32>>();
    assert_eq!(settled.ids(Fate::Failed), class(1));
    assert_eq!(settled.ids(Fate::DeadLettered), class(2));
    // The last item, 19, came after every panicking hook, and the same worker did it.
    let mut processed = class(0);
    processed.extend(class(3));
    processed.sort_unstable();
    assert_eq!(settled.ids(Fate::Processed), processed);
    settled.assert_matches(&report);
    assert_eq!(
        (report.processed, report.failed, report.panicked),
        (10, 10, 0),
        "{report}"
    );
    assert_eq!(
        (
            report.workers_spawned,
            report.workers_joined,
            report.workers_aborted
        ),
        (1, 1, 0),
        "{report}"
    );
    assert!(
        !report.deadline_exceeded && report.abandoned == 0,
        "{report}"
    );
    let mut seen = lock(&errors).clone();
    seen.sort_unstable();
    let failing: Vec<u32> = (0..20).filter(|id| id % 4 == 1 || id % 4 == 2).collect();
    assert_eq!(seen, failing);
    // The dead-letter hook's item was dropped as it unwound.
    kit.assert_all_dropped_once(0..20);
}

// 8. Leftovers after a zero-deadline shutdown.

async fn zero_deadline_hands_back_the_queue_in_push_order(sp: Sp) {
    // Item 0 is stuck in the only worker forever; 1..=5 wait in the queue.
    let kit = Kit::default();
    let (started_tx, started) = async_channel::unbounded();
    let pipeline = Pipeline::builder(8, Policy::Block)
        .deadline(ZERO)
        .grace(ZERO)
        // An aborted worker ends at its next poll: this only bounds a bug.
        .unresponsive_after(Duration::from_secs(10))
        .spawn(sp, {
            let kit = kit.clone();
            move |item: Item| {
                let (kit, started_tx) = (kit.clone(), started_tx.clone());
                async move {
                    if item.id == 0 {
                        let _ = started_tx.try_send(());
                        pending::<()>().await;
                    }
                    kit.processed(item);
                }
            }
        })
        .unwrap();
    assert!(pipeline.push(kit.item(0)).await.is_accepted());
    started.recv().await.unwrap();
    for id in 1..=5 {
        assert!(pipeline.push(kit.item(id)).await.is_accepted());
    }
    let report = pipeline.shutdown().await;
    // The aborted worker dropped item 0 with its future, before it was joined.
    assert_eq!(kit.ledger.dropped(), [0], "item 0 went with its worker");
    kit.ledger.record(0, Fate::Lost);
    let (leftovers, ids) = hand_back(&pipeline, &kit.ledger);
    assert_eq!(ids, [1, 2, 3, 4, 5]);
    let settled = kit.ledger.settle(0..6);
    settled.assert_matches(&report);
    assert_eq!(
        (report.produced, report.processed, report.abandoned),
        (6, 0, 6),
        "{report}"
    );
    assert_eq!(
        (report.handed_back, report.lost_in_flight),
        (5, 1),
        "{report}"
    );
    assert!(report.deadline_exceeded, "{report}");
    assert_eq!(
        (report.workers_aborted, report.workers_unresponsive),
        (1, 0),
        "{report}"
    );
    assert_eq!(kit.items.count(), 5, "the leftovers are alive");
    drop(leftovers);
    kit.assert_all_dropped_once(0..6);
}

on_every_runtime!(
    fallible_work_counts_failures_and_shows_each_error,
    retries_then_dead_letters_the_very_item,
    reject_dead_letters_at_once_and_failed_has_no_letter,
    a_retry_waiting_at_shutdown_is_handed_back_by_the_deadline,
    each_worker_owns_its_state,
    init_failures_are_retried_and_counted,
    no_worker_can_start_so_the_pipeline_stops_itself,
    restart_rebuilds_the_state_of_the_worker_that_panicked,
    isolate_keeps_the_state_of_the_worker_that_panicked,
    panicking_hooks_do_not_take_the_worker_down,
    zero_deadline_hands_back_the_queue_in_push_order,
    a_panic_building_the_work_future_is_caught_per_item,
    a_panic_building_the_stateful_work_future_restarts_the_worker,
    a_panic_building_the_init_future_is_a_start_failure,
);

// A closure that panics before it returns its future: caught like a panic inside it (a
// review found both escaping the per-item and per-start catch).

async fn a_panic_building_the_work_future_is_caught_per_item(sp: Sp) {
    // Minimal input: one worker; the work closure panics before it returns its future for
    // items 1 and 4 (as `|item| { let row = parse(&item).unwrap(); async move { … } }`
    // does). Each such panic is a panic in the work: counted as panicked, and the worker
    // goes on with items 2, 3 and 5.
    let kit = Kit::default();
    let pipeline = Pipeline::builder(8, Policy::Block)
        .on_panic(OnPanic::Isolate)
        .spawn(sp, {
            let kit = kit.clone();
            move |item: Item| {
                if item.id % 3 == 1 {
                    kit.ledger.record(item.id, Fate::Panicked);
                    panic!("item {} panics before its future exists", item.id);
                }
                let kit = kit.clone();
                async move { kit.processed(item) }
            }
        })
        .unwrap();
    for id in 0..6 {
        assert!(pipeline.push(kit.item(id)).await.is_accepted());
    }
    let report = pipeline.shutdown().await;
    assert_eq!(
        (report.processed, report.panicked, report.abandoned),
        (4, 2, 0),
        "{report}"
    );
    let settled = kit.ledger.settle(0..6);
    assert_eq!(settled.ids(Fate::Panicked), [1, 4]);
    settled.assert_matches(&report);
    kit.assert_all_dropped_once(0..6);
}

async fn a_panic_building_the_stateful_work_future_restarts_the_worker(sp: Sp) {
    // The same with state, under `Restart`: the closure panics on item 1 before it
    // returns its boxed future. The state is rebuilt once and items 2 and 3 are processed.
    let kit = Kit::default();
    let inits = Arc::new(Mutex::new(Vec::new()));
    let pipeline = Pipeline::builder(8, Policy::Block)
        .on_panic(OnPanic::Restart)
        .start_retry(no_backoff(2))
        .spawn_with_state(
            sp,
            {
                let inits = inits.clone();
                move |index: usize| {
                    lock(&inits).push(index);
                    async move { Ok::<Vec<u32>, InitError>(Vec::new()) }
                }
            },
            {
                let kit = kit.clone();
                move |rows: &mut Vec<u32>, item: Item| -> WorkFuture<'_, ()> {
                    if item.id == 1 {
                        kit.ledger.record(item.id, Fate::Panicked);
                        panic!("item 1 panics before its future exists");
                    }
                    let kit = kit.clone();
                    Box::pin(async move {
                        rows.push(item.id);
                        kit.processed(item);
                    })
                }
            },
        )
        .unwrap();
    for id in 0..4 {
        assert!(pipeline.push(kit.item(id)).await.is_accepted());
    }
    let report = pipeline.shutdown().await;
    assert_eq!(
        (report.processed, report.panicked, report.restarts),
        (3, 1, 1),
        "{report}"
    );
    let settled = kit.ledger.settle(0..4);
    settled.assert_matches(&report);
    assert_eq!(*lock(&inits), [0, 0], "the state was rebuilt once");
    kit.assert_all_dropped_once(0..4);
}

async fn a_panic_building_the_init_future_is_a_start_failure(sp: Sp) {
    // Minimal input: two workers whose `init` closure panics before it returns its future
    // (as `|i| { let url = urls[i].clone(); async move { … } }` with too few urls does),
    // two attempts each. As for a panic inside the future, each attempt is a start failure,
    // and with no worker able to start the pipeline stops itself: a producer on a full
    // `Block` queue would otherwise wait forever.
    const WORKERS: usize = 2;
    let calls = Arc::new(Mutex::new(HashMap::new()));
    // Alive while a worker can still run: the workers share the init closure that holds it.
    let workers_alive = Live::new();
    let pipeline = Pipeline::builder(1, Policy::Block)
        .workers(WORKERS)
        .start_retry(no_backoff(2))
        .spawn_with_state(
            sp,
            {
                let (calls, alive) = (calls.clone(), workers_alive.track());
                move |index: usize| {
                    let _ = &alive;
                    let attempt = bump(&calls, index);
                    assert!(attempt > 2, "init panics before its future exists");
                    async move { Err::<Tracked, _>(InitError { index, attempt }) }
                }
            },
            |_: &mut Tracked, _: u32| -> WorkFuture<'_, ()> { Box::pin(async {}) },
        )
        .unwrap();
    // Every worker has ended, however it ended.
    workers_alive.all_dropped().await;
    assert!(
        pipeline.is_closed(),
        "no worker can start: the pipeline stopped itself"
    );
    assert_eq!(pipeline.push(7).await, PushOutcome::Closed(7));
    let report = pipeline.shutdown().await;
    assert_eq!(report.cause, StopCause::NoWorkers, "{report}");
    assert_eq!(
        (report.start_failures, report.workers_not_started),
        (2 * WORKERS as u64, WORKERS),
        "{report}"
    );
    assert_eq!(*lock(&calls), HashMap::from([(0, 2), (1, 2)]));
    assert!(report.is_conserved() && report.all_joined(), "{report}");
}
