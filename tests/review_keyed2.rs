//! Review (2) of keyed lanes: release at the next take, `Queue::halt`, `Queue::stuck`, and
//! the key function's single run per push. No sleeps: gates, the manual clock, `idle()`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use backpressure_pipeline::{Batch, OnPanic, Pipeline, Policy, PushOutcome, Retry, WorkFuture};
use common::clock::ManualSpawner;
use common::gate::gate;
use common::Sp;

const HOUR: Duration = Duration::from_secs(3600);
const MS: Duration = Duration::from_millis(1);

type Item = (u8, u32);

fn lock<V>(m: &Mutex<V>) -> MutexGuard<'_, V> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn until(mut cond: impl FnMut() -> bool) {
    while !cond() {
        common::yield_now().await;
    }
}

/// per_key 2, 3 workers: two of A run, the third waits for A; a release lets it run.
async fn per_key_two_release_runs_the_waiting_item(sp: Sp) {
    let (gate, gated) = gate::<Item>();
    let pipeline = Pipeline::builder(8, Policy::Block)
        .workers(3)
        .deadline(HOUR)
        .key_by(|i: &Item| i.0)
        .per_key(2)
        .spawn(sp, move |i: Item| {
            let gated = gated.clone();
            async move { gated.hold(i).await }
        })
        .expect("build");
    for s in 1..=4 {
        assert_eq!(pipeline.push((0, s)).await, PushOutcome::Accepted);
    }
    let mut got = vec![gate.next().await, gate.next().await];
    got.sort();
    assert_eq!(got, [(0, 1), (0, 2)]);
    gate.assert_none().await;
    gate.release();
    assert_eq!(gate.next().await, (0, 3));
    gate.assert_none().await;
    gate.release();
    assert_eq!(gate.next().await, (0, 4));
    gate.open();
    let r = pipeline.shutdown().await;
    assert!(r.is_conserved(), "{r:?}");
    assert_eq!(r.processed, 4);
}

/// A batch worker holding A and B; another worker waits; both keys' next items run once the
/// batch's work is done, whichever worker takes them.
async fn batch_release_runs_both_keys(sp: Sp) {
    let (gate, gated) = gate::<Vec<Item>>();
    let pipeline = Pipeline::builder(8, Policy::Block)
        .workers(2)
        .deadline(HOUR)
        .key_by(|i: &Item| i.0)
        .spawn_batched(sp, Batch::new(2, Duration::ZERO), move |b: Vec<Item>| {
            let gated = gated.clone();
            async move { gated.hold(b).await }
        })
        .expect("build");
    let _ = pipeline.try_push((0, 1));
    let _ = pipeline.try_push((1, 1));
    let _ = pipeline.try_push((0, 2));
    let _ = pipeline.try_push((1, 2));
    // One batch of both, or one each (whichever worker took first); never a second item
    // of a key while its first is held.
    let mut seen = vec![gate.next().await];
    while !(seen.concat().contains(&(0, 1)) && seen.concat().contains(&(1, 1))) {
        seen.push(gate.next().await);
    }
    gate.assert_none().await;
    let flat: Vec<Item> = seen.concat();
    assert!(
        !flat.contains(&(0, 2)) && !flat.contains(&(1, 2)),
        "{seen:?}"
    );
    // Open, not one release per batch: a release can reach any held worker, and a worker
    // that runs twice on two releases leaves the other holding its key.
    gate.open();
    let mut next: Vec<Item> = gate.next().await;
    while next.len() < 2 {
        next.extend(gate.next().await);
    }
    next.sort();
    assert_eq!(next, [(0, 2), (1, 2)]);
    let r = pipeline.shutdown().await;
    assert!(r.is_conserved(), "{r:?}");
    assert_eq!(r.processed, 4);
}

/// Timed keyed: the releasing worker sheds the key's stale next item at the exit and runs
/// the following one; a waiting worker is not needed, and none is left waiting on a ready
/// item.
async fn max_age_shed_on_release_runs_the_next(sp: Sp) {
    let (spawner, clock) = ManualSpawner::new(sp.clone());
    let (gate, gated) = gate::<Item>();
    let expired = Arc::new(AtomicUsize::new(0));
    let pipeline = Pipeline::builder(8, Policy::Block)
        .workers(2)
        .deadline(HOUR)
        .max_age(10 * MS)
        .on_expired({
            let expired = expired.clone();
            move |_, _| {
                expired.fetch_add(1, Ordering::SeqCst);
            }
        })
        .key_by(|i: &Item| i.0)
        .spawn(spawner, move |i: Item| {
            let gated = gated.clone();
            async move { gated.hold(i).await }
        })
        .expect("build");
    let _ = pipeline.try_push((0, 1));
    assert_eq!(gate.next().await, (0, 1));
    gate.assert_none().await; // the other worker waits: nothing ready
    let _ = pipeline.try_push((0, 2)); // will be stale
    clock.advance(20 * MS);
    let _ = pipeline.try_push((0, 3)); // fresh
    gate.assert_none().await;
    gate.release(); // (A,1) done: its next take sheds (A,2) and runs (A,3)
    assert_eq!(gate.next().await, (0, 3));
    gate.assert_none().await;
    let _ = pipeline.try_push((2, 1)); // the waiting worker takes it
    assert_eq!(gate.next().await, (2, 1));
    gate.open();
    let r = pipeline.shutdown().await;
    assert!(r.is_conserved(), "{r:?}");
    assert_eq!((r.processed, r.expired), (3, 1), "{r:?}");
    assert_eq!(expired.load(Ordering::SeqCst), 1);
}

/// Unkeyed: a normal shutdown drains everything (halt is only for the deadline).
async fn unkeyed_drains_fully(sp: Sp) {
    let (gate, gated) = gate::<u32>();
    let pipeline = Pipeline::builder(16, Policy::Block)
        .workers(2)
        .deadline(HOUR)
        .spawn(sp.clone(), move |i: u32| {
            let gated = gated.clone();
            async move { gated.hold(i).await }
        })
        .expect("build");
    for i in 0..16 {
        assert_eq!(pipeline.push(i).await, PushOutcome::Accepted);
    }
    let pipeline = Arc::new(pipeline);
    let report = common::spawn(&sp, {
        let p = pipeline.clone();
        async move { p.shutdown().await }
    });
    until(|| pipeline.is_closed()).await;
    gate.open();
    let r = report.await.expect("report");
    assert!(r.is_conserved(), "{r:?}");
    assert_eq!(
        (r.processed, r.handed_back, r.deadline_exceeded),
        (16, 0, false),
        "{r:?}"
    );
}

/// Unkeyed at the deadline: leftovers in order, the law, no take after the deadline.
async fn unkeyed_deadline_leftovers(sp: Sp) {
    let (spawner, clock) = ManualSpawner::new(sp.clone());
    let (gate, gated) = gate::<u32>();
    let builder = Pipeline::builder(8, Policy::Block)
        .workers(1)
        .deadline(Duration::ZERO)
        .grace(HOUR);
    let token = builder.worker_token();
    let pipeline = Arc::new(
        builder
            .spawn(spawner, move |i: u32| {
                let gated = gated.clone();
                async move { gated.hold(i).await }
            })
            .expect("build"),
    );
    for i in 0..4 {
        let _ = pipeline.push(i).await;
    }
    assert_eq!(gate.next().await, 0);
    let mut report = common::spawn(&sp, {
        let p = pipeline.clone();
        async move { p.shutdown().await }
    });
    token.cancelled().await;
    gate.release();
    until(|| pipeline.stats().processed >= 1).await;
    loop {
        if let Ok(Some(r)) = report.try_recv() {
            assert!(r.is_conserved(), "{r:?}");
            assert_eq!((r.processed, r.handed_back), (1, 3), "{r:?}");
            assert!(r.deadline_exceeded);
            assert_eq!(pipeline.take_leftovers(), [1, 2, 3]);
            gate.assert_none().await;
            return;
        }
        clock.advance(HOUR);
        common::yield_now().await;
    }
}

/// Restart workers at the deadline: a worker restarting (long backoff) and one working.
async fn restart_worker_at_deadline(sp: Sp) {
    let (spawner, clock) = ManualSpawner::new(sp.clone());
    let (gate, gated) = gate::<Item>();
    let builder = Pipeline::builder(8, Policy::Block)
        .workers(2)
        .deadline(Duration::ZERO)
        .grace(HOUR)
        .on_panic(OnPanic::Restart)
        .start_retry(Retry::attempts(3).backoff(HOUR, HOUR).jitter(false))
        .key_by(|i: &Item| i.0);
    let token = builder.worker_token();
    let pipeline = Arc::new(
        builder
            .spawn_with_state(
                spawner,
                |_| async { Ok::<(), ()>(()) },
                move |_: &mut (), i: Item| -> WorkFuture<'_, ()> {
                    let gated = gated.clone();
                    Box::pin(async move {
                        if i.1 == 0 {
                            gated.announce(i);
                            panic!("boom");
                        }
                        gated.hold(i).await
                    })
                },
            )
            .expect("build"),
    );
    let _ = pipeline.push((0, 0)).await; // panics: its worker restarts after an hour
    assert_eq!(gate.next().await, (0, 0));
    let _ = pipeline.push((0, 1)).await; // A released at once: runs on the other worker
    assert_eq!(gate.next().await, (0, 1));
    let _ = pipeline.push((0, 2)).await;
    let _ = pipeline.push((1, 1)).await; // nobody free: the restarting worker waits
    gate.assert_none().await;
    let mut report = common::spawn(&sp, {
        let p = pipeline.clone();
        async move { p.shutdown().await }
    });
    token.cancelled().await;
    gate.release();
    until(|| pipeline.stats().processed >= 1).await;
    loop {
        if let Ok(Some(r)) = report.try_recv() {
            assert!(r.is_conserved(), "{r:?}");
            assert_eq!((r.processed, r.panicked, r.handed_back), (1, 1, 2), "{r:?}");
            gate.assert_none().await;
            let mut left = pipeline.take_leftovers();
            left.sort();
            assert_eq!(left, [(0, 2), (1, 1)]);
            return;
        }
        clock.advance(HOUR);
        common::yield_now().await;
    }
}

/// A keyed batch filling ends when its own key's item waits, and on close.
async fn keyed_batch_fill_ends_on_close(sp: Sp) {
    let batches = Arc::new(Mutex::new(Vec::<Vec<Item>>::new()));
    let pipeline = Pipeline::builder(8, Policy::Block)
        .workers(1)
        .deadline(HOUR)
        .key_by(|i: &Item| i.0)
        .spawn_batched(sp, Batch::new(4, Duration::MAX), {
            let batches = batches.clone();
            move |b: Vec<Item>| {
                let batches = batches.clone();
                async move { lock(&batches).push(b) }
            }
        })
        .expect("build");
    let _ = pipeline.try_push((0, 1));
    until(|| pipeline.is_empty()).await;
    common::idle().await;
    // An item of the filling batch's own key ends the fill at once (queue not full); the
    // next batch, (0, 2), fills until the close ends it.
    let _ = pipeline.try_push((0, 2));
    until(|| !lock(&batches).is_empty()).await;
    assert_eq!(*lock(&batches), [vec![(0, 1)]]);
    let r = pipeline.shutdown().await;
    assert!(r.is_conserved(), "{r:?}");
    assert_eq!(r.processed, 2, "{r:?}");
    assert_eq!(*lock(&batches), [vec![(0, 1)], vec![(0, 2)]]);
}

// Was a fault, fixed: the "stuck" end of a keyed fill was judged when the filler looked,
// not when it was woken. Capacity 2, two batch workers, Batch(4, MAX): F1 fills holding A,
// W2 holding B; (A,2) and (B,2) fill the queue and wake every popper. If W2 looked first,
// its fill ended, it ran, and its next take freed B and took (B,2): the queue was no longer
// full when F1 looked, so F1 waited on, holding A with (A,2) behind it (a hang about 1 run
// in 2-10). Now a filling take ends whenever an item of a key it holds waits, and while a
// batch fills, a push of a busy key wakes every popper.
/// Two keyed batch workers, each filling with its own key; the queue fills with their
/// keys' items: both fills end (wake-all), and everything runs.
async fn two_fillers_end_when_full(sp: Sp) {
    let batches = Arc::new(Mutex::new(Vec::<Vec<Item>>::new()));
    let (gate, gated) = gate::<Vec<Item>>();
    let pipeline = Pipeline::builder(2, Policy::Block)
        .workers(2)
        .deadline(HOUR)
        .key_by(|i: &Item| i.0)
        .spawn_batched(sp, Batch::new(4, Duration::MAX), {
            let batches = batches.clone();
            move |b: Vec<Item>| {
                let batches = batches.clone();
                let gated = gated.clone();
                async move {
                    lock(&batches).push(b.clone());
                    gated.announce(b);
                }
            }
        })
        .expect("build");
    let _ = pipeline.try_push((0, 1));
    until(|| pipeline.is_empty()).await;
    common::idle().await;
    let _ = pipeline.try_push((1, 1));
    common::idle().await;
    // Either the first filler took B too, or the second worker holds it.
    assert_eq!(pipeline.push((0, 2)).await, PushOutcome::Accepted);
    assert_eq!(pipeline.push((1, 2)).await, PushOutcome::Accepted);
    // The full queue ends both fills (a later batch may wait to fill: `Duration::MAX`).
    let mut seen = Vec::new();
    while !(seen.contains(&(0, 1)) && seen.contains(&(1, 1))) {
        seen.extend(gate.next().await);
    }
    let r = pipeline.shutdown().await;
    let mut all: Vec<Item> = lock(&batches).concat();
    all.sort();
    assert_eq!(all, [(0, 1), (0, 2), (1, 1), (1, 2)]);
    assert!(r.is_conserved(), "{r:?}");
    assert_eq!(r.processed, 4);
}

/// A batch being filled ends as soon as an item of its own key waits, full queue or not;
/// an item of another key joins it.
async fn a_fill_ends_when_its_own_key_waits(sp: Sp) {
    let (gate, gated) = gate::<Vec<Item>>();
    let pipeline = Pipeline::builder(8, Policy::Block)
        .workers(1)
        .deadline(HOUR)
        .key_by(|i: &Item| i.0)
        .spawn_batched(sp, Batch::new(4, Duration::MAX), move |b: Vec<Item>| {
            let gated = gated.clone();
            async move { gated.hold(b).await }
        })
        .expect("build");
    assert_eq!(pipeline.push((0, 1)).await, PushOutcome::Accepted);
    until(|| pipeline.is_empty()).await;
    // The worker holds key 0 and fills: key 1 joins, key 0 ends the fill.
    assert_eq!(pipeline.push((1, 1)).await, PushOutcome::Accepted);
    until(|| pipeline.is_empty()).await;
    assert_eq!(pipeline.push((0, 2)).await, PushOutcome::Accepted);
    assert_eq!(gate.next().await, [(0, 1), (1, 1)]);
    gate.open();
    let r = pipeline.shutdown().await;
    assert_eq!(gate.next().await, [(0, 2)]);
    assert!(r.is_conserved(), "{r:?}");
    assert_eq!(r.processed, 3);
}

/// The key function runs once per push on every push path.
async fn key_runs_once_on_every_path(sp: Sp) {
    for policy in [Policy::Block, Policy::DropNewest, Policy::DropOldest] {
        let calls = Arc::new(AtomicUsize::new(0));
        let (gate, gated) = gate::<Item>();
        let pipeline = Arc::new(
            Pipeline::builder(1, policy)
                .workers(1)
                .deadline(HOUR)
                .key_by({
                    let calls = calls.clone();
                    move |i: &Item| {
                        calls.fetch_add(1, Ordering::SeqCst);
                        i.0
                    }
                })
                .spawn(sp.clone(), move |i: Item| {
                    let gated = gated.clone();
                    async move { gated.hold(i).await }
                })
                .expect("build"),
        );
        let _ = pipeline.push((0, 0)).await;
        assert_eq!(gate.next().await, (0, 0));
        let _ = pipeline.try_push((1, 0));
        let _ = pipeline.try_push((2, 0)); // full: shed/evicted/full
        let waiting = common::spawn(&sp, {
            let p = pipeline.clone();
            async move { p.push((3, 0)).await }
        });
        common::idle().await;
        gate.open();
        let _ = waiting.await;
        let r = pipeline.shutdown().await;
        assert!(r.is_conserved(), "{r:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 4, "{policy:?}");
    }
}

on_every_runtime!(
    per_key_two_release_runs_the_waiting_item,
    batch_release_runs_both_keys,
    max_age_shed_on_release_runs_the_next,
    unkeyed_drains_fully,
    unkeyed_deadline_leftovers,
    restart_worker_at_deadline,
    keyed_batch_fill_ends_on_close,
    two_fillers_end_when_full,
    a_fill_ends_when_its_own_key_waits,
    key_runs_once_on_every_path,
);
