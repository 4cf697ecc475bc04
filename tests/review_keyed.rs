//! Review of the keyed lanes (`key_by`, `per_key`, `coalesce`): an adversarial reading of
//! `src/queue/keyed.rs`, `src/queue.rs`, `src/queue/timed.rs`, `src/queue/futures.rs`,
//! `src/pipeline/source.rs` and `src/pipeline/invoke.rs`.
//!
//! Tests marked `// Was a fault, fixed:` failed when the review was written (each comment
//! says what was expected, and why it did not happen); they pin the fixes. The others pin
//! down behaviour checked and found to hold.
//!
//! Nothing here synchronises with a sleep: the workers announce what they take on a gate,
//! time moves on the manual clock, and "a worker did not do X" is checked after the other
//! tasks had every chance to run (`common::idle`), which can only ever show a bug.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use backpressure_pipeline::{
    Batch, BuildError, Codel, ConfigError, Expired, OnPanic, Outcome, Pipeline, Policy,
    PushOutcome, Report, Retry,
};
use common::clock::ManualSpawner;
use common::{Live, Sp, Tracked};

const HOUR: Duration = Duration::from_secs(3600);
const MS: Duration = Duration::from_millis(1);

fn lock<V>(mutex: &Mutex<V>) -> MutexGuard<'_, V> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An item: (key, sequence number).
type Item = (u8, u32);

/// The test's side of a gate: what the workers took, and the releases they wait for.
struct Gate {
    seen: async_channel::Receiver<Item>,
    release: async_channel::Sender<()>,
}

/// The workers' side.
#[derive(Clone)]
struct Gated {
    seen: async_channel::Sender<Item>,
    release: async_channel::Receiver<()>,
}

fn gate() -> (Gate, Gated) {
    let (seen_tx, seen_rx) = async_channel::unbounded();
    let (release_tx, release_rx) = async_channel::unbounded();
    (
        Gate {
            seen: seen_rx,
            release: release_tx,
        },
        Gated {
            seen: seen_tx,
            release: release_rx,
        },
    )
}

impl Gate {
    async fn next(&self) -> Item {
        self.seen.recv().await.expect("a worker announces")
    }

    /// After the other tasks had every chance to run, nothing was announced.
    async fn assert_none(&self) {
        common::idle().await;
        assert!(
            self.seen.is_empty(),
            "unexpected take {:?}",
            self.seen.try_recv()
        );
    }

    /// What was announced and not read yet.
    fn seen_now(&self) -> Vec<Item> {
        std::iter::from_fn(|| self.seen.try_recv().ok()).collect()
    }

    fn release(&self) {
        self.release.try_send(()).expect("open");
    }

    fn open(&self) {
        self.release.close();
    }
}

impl Gated {
    fn announce(&self, item: Item) {
        let _ = self.seen.try_send(item);
    }

    async fn hold(&self, item: Item) {
        let _ = self.seen.try_send(item);
        let _ = self.release.recv().await;
    }
}

/// Waits (yielding; the watchdog bounds it) until `cond` holds.
async fn until(mut cond: impl FnMut() -> bool) {
    while !cond() {
        common::yield_now().await;
    }
}

// ---------------------------------------------------------------------------------------
// F1. A worker waiting for a busy key takes the key's next item after the deadline.

// Was a fault, fixed: a worker blocked in its take for a busy key's item is not stopped by the deadline.
// Minimal input: 2 workers, key_by, deadline ZERO, grace 1 h (manual clock). (A,1) runs
// and is held; (A,2) is queued behind it, so the second worker waits in its take. Shutdown:
// the deadline passes (the worker token is cancelled: "workers take no new item"), then
// (A,1) finishes inside the grace. Expected: (A,2) is never started and is handed back
// (processed 1, handed_back 1, leftovers [(A,2)]). Today: the release of A wakes the
// waiting worker, which takes (A,2) and runs it after the deadline.
// Cause: `Invoker::run` checks `worker_token` only at the top of its loop; a worker already
// inside `Source::take` (parked in `Queue::poll_take`, which only a keyed queue allows on a
// closed, non-empty queue: its items' keys are busy) never looks at it again. When the
// holder of A returns at its own loop top (token cancelled), its `Lease` is dropped,
// `Queue::release` notifies the parked worker, and `poll_take` serves it (A,2). Neither
// `poll_take` nor `TakeTimed` knows about the worker token; the stop does not wake them.
async fn freed_key_is_not_taken_after_the_deadline(sp: Sp) {
    let (spawner, clock) = ManualSpawner::new(sp.clone());
    let (gate, gated) = gate();
    let builder = Pipeline::builder(8, Policy::Block)
        .workers(2)
        .deadline(Duration::ZERO)
        .grace(HOUR)
        .key_by(|item: &Item| item.0);
    let token = builder.worker_token();
    let pipeline = Arc::new(
        builder
            .spawn(spawner, move |item: Item| {
                let gated = gated.clone();
                async move {
                    if item.1 == 1 {
                        gated.hold(item).await;
                    } else {
                        gated.announce(item);
                    }
                }
            })
            .expect("build"),
    );
    assert_eq!(pipeline.push((0, 1)).await, PushOutcome::Accepted);
    assert_eq!(gate.next().await, (0, 1));
    assert_eq!(pipeline.push((0, 2)).await, PushOutcome::Accepted);
    gate.assert_none().await; // the other worker waits for A
    let mut report = common::spawn(&sp, {
        let pipeline = pipeline.clone();
        async move { pipeline.shutdown().await }
    });
    token.cancelled().await; // the deadline has passed
    gate.release(); // (A,1) ends inside the grace
    until(|| pipeline.stats().processed >= 1).await;
    for _ in 0..8 {
        common::idle().await;
    }
    let took = gate.seen_now();
    loop {
        if let Ok(Some(report)) = report.try_recv() {
            assert_eq!(
                took,
                Vec::<Item>::new(),
                "a worker took an item after the deadline"
            );
            assert!(report.is_conserved(), "{report:?}");
            assert_eq!((report.processed, report.handed_back), (1, 1), "{report:?}");
            assert_eq!(pipeline.take_leftovers(), [(0, 2)]);
            return;
        }
        clock.advance(HOUR);
        common::yield_now().await;
    }
}

// ---------------------------------------------------------------------------------------
// F2. A retry cut by the deadline: its key's next item still runs.

// Was a fault, fixed: per-key order at the deadline. (A,1) fails and waits for its retry (backoff 1 h,
// manual clock), holding A; (A,2) waits behind it. Shutdown with deadline ZERO: (A,1) is
// handed back (as documented). Expected: (A,2) is handed back too, after it, and never
// runs (leftovers [(A,1), (A,2)], processed 0). Today: the retrying worker stops, releases
// A, and the other worker (waiting in its take) runs (A,2) after the deadline, while the
// earlier (A,1) is handed back undone: the key's order is broken.
// Cause: as F1 (`Step::Stop` → `lease.release()` wakes a worker blocked in `poll_take`,
// which never checks the worker token).
async fn retry_cut_by_the_deadline_keeps_its_keys_order(sp: Sp) {
    let (spawner, clock) = ManualSpawner::new(sp.clone());
    let ran = Arc::new(Mutex::new(Vec::new()));
    let builder = Pipeline::builder(8, Policy::Block)
        .workers(2)
        .deadline(Duration::ZERO)
        .grace(HOUR)
        .retry(Retry::attempts(5).backoff(HOUR, HOUR).jitter(false))
        .key_by(|item: &Item| item.0);
    let token = builder.worker_token();
    let pipeline = Arc::new(
        builder
            .spawn(spawner, {
                let ran = ran.clone();
                move |item: Item| {
                    let ran = ran.clone();
                    async move {
                        lock(&ran).push(item);
                        if item.1 == 1 {
                            Outcome::Retry(item, "try again")
                        } else {
                            Outcome::Done
                        }
                    }
                }
            })
            .expect("build"),
    );
    let _ = pipeline.push((0, 1)).await;
    until(|| !lock(&ran).is_empty()).await;
    clock.until_sleepers(1).await; // (A,1) waits for its retry
    let _ = pipeline.push((0, 2)).await;
    common::idle().await;
    let mut report = common::spawn(&sp, {
        let pipeline = pipeline.clone();
        async move { pipeline.shutdown().await }
    });
    token.cancelled().await;
    for _ in 0..8 {
        common::idle().await;
    }
    let report = loop {
        if let Ok(Some(report)) = report.try_recv() {
            break report;
        }
        clock.advance(HOUR);
        common::yield_now().await;
    };
    assert_eq!(
        *lock(&ran),
        [(0, 1)],
        "(A,2) ran while (A,1) was handed back"
    );
    assert!(report.is_conserved(), "{report:?}");
    assert_eq!(pipeline.take_leftovers(), [(0, 1), (0, 2)]);
}

// ---------------------------------------------------------------------------------------
// F3. A panic stop: a worker waiting for a busy key takes its next item after the stop.

// Was a fault, fixed: `OnPanic::StopPipeline` documents "the workers take no new item, and what is left
// is abandoned (handed back)". Minimal input: 3 workers; (A,1) held at the gate; (A,2)
// queued (a worker waits for A); (B,1) panics → the pipeline stops. Then (A,1) is let go.
// Expected: (A,2) never runs and is handed back. Today: A's release wakes the waiting worker,
// which runs (A,2) after the stop.
// Cause: as F1.
async fn panic_stop_takes_no_item_of_a_freed_key(sp: Sp) {
    let (gate, gated) = gate();
    let pipeline = Pipeline::builder(8, Policy::Block)
        .workers(3)
        .deadline(HOUR)
        .on_panic(OnPanic::StopPipeline)
        .key_by(|item: &Item| item.0)
        .spawn(sp, move |item: Item| {
            let gated = gated.clone();
            async move {
                match item {
                    (0, 1) => gated.hold(item).await,
                    (1, _) => panic!("stop the pipeline"),
                    _ => gated.announce(item),
                }
            }
        })
        .expect("build");
    let _ = pipeline.push((0, 1)).await;
    assert_eq!(gate.next().await, (0, 1));
    let _ = pipeline.push((0, 2)).await;
    gate.assert_none().await;
    let _ = pipeline.push((1, 1)).await;
    until(|| pipeline.is_closed()).await; // the panic stopped it
    gate.release();
    until(|| pipeline.stats().processed >= 1).await;
    for _ in 0..8 {
        common::idle().await;
    }
    let took = gate.seen_now();
    let report = pipeline.shutdown().await;
    assert_eq!(
        took,
        Vec::<Item>::new(),
        "a worker took an item after the panic stop"
    );
    assert!(report.is_conserved(), "{report:?}");
    assert_eq!(
        (report.processed, report.panicked, report.handed_back),
        (1, 1, 1)
    );
    assert_eq!(pipeline.take_leftovers(), [(0, 2)]);
}

// ---------------------------------------------------------------------------------------
// F4. DropOldest: a batch holding its key waits to fill while the queue is full of items
// only its own release can unblock.

/// One worker, capacity 2, `Batch::new(4, Duration::MAX)`, one key: (A,1) is taken into a
/// batch, which cannot take (A,2) and (A,3) (its own key is busy) and waits to fill. Returns
/// whether the batch [(A,1)] was delivered once the queue is full, and after pushing three
/// more items of A, the report.
async fn batch_full_of_its_own_key(sp: Sp, policy: Policy) -> (bool, Report) {
    let batches = Arc::new(Mutex::new(Vec::<Vec<Item>>::new()));
    let pipeline = Pipeline::builder(2, policy)
        .workers(1)
        .deadline(HOUR)
        .key_by(|item: &Item| item.0)
        .spawn_batched(sp, Batch::new(4, Duration::MAX), {
            let batches = batches.clone();
            move |batch: Vec<Item>| {
                let batches = batches.clone();
                async move { lock(&batches).push(batch) }
            }
        })
        .expect("build");
    let _ = pipeline.push((0, 1)).await;
    until(|| pipeline.is_empty()).await; // the worker took (A,1)
    common::idle().await; // and waits to fill its batch
    let a = pipeline.try_push((0, 2));
    let b = pipeline.try_push((0, 3)); // the queue is full of A's items
    for _ in 0..4 {
        common::idle().await;
    }
    assert_eq!((a, b), (PushOutcome::Accepted, PushOutcome::Accepted));
    // Delivered for sure (the watchdog bounds the wait): no timing in the passing case.
    until(|| !lock(&batches).is_empty()).await;
    let delivered = lock(&batches).first() == Some(&vec![(0, 1)]);
    assert!(delivered, "{:?}", lock(&batches));
    for seq in 4..7 {
        let _ = pipeline.try_push((0, seq));
        common::idle().await;
    }
    let report = pipeline.shutdown().await;
    (delivered, report)
}

/// Under `Block` (and `DropNewest`), the full queue ends the fill at once (`stuck_ends`).
async fn batch_holding_its_key_is_delivered_when_full_block(sp: Sp) {
    let (delivered, report) = batch_full_of_its_own_key(sp, Policy::Block).await;
    assert!(delivered);
    assert!(report.is_conserved(), "{report:?}");
}

// Was a fault, fixed: under `DropOldest` the same batch is not delivered: `poll_take`'s `stuck` test
// treats a full DropOldest queue as one that may still receive an item the batch can take,
// so the batch of one item waits (forever, with `Duration::MAX`), while every further push
// of its key evicts one of its queued items, unprocessed: the single worker holds (A,1),
// the queue holds (A,2)/(A,3) that nobody may run, and items 2..=4 are evicted while the
// worker is idle. Expected: delivered as under Block (or at least not starved: the items
// queued belong to keys the batch itself holds, so no wait can make them takeable).
// Cause: `Queue::stuck` (used by `poll_take`'s `stuck_ends` and by `enqueue`'s wake-all)
// is `closed || (len + reserved >= capacity && policy != DropOldest)`: under DropOldest a
// full queue is never "stuck", so neither is the batch told, nor does it end when it looks.
async fn batch_holding_its_key_is_delivered_when_full_drop_oldest(sp: Sp) {
    let (delivered, report) = batch_full_of_its_own_key(sp, Policy::DropOldest).await;
    assert!(
        delivered,
        "the batch waited to fill from a full queue of its own key's items: {report:?}"
    );
}

// ---------------------------------------------------------------------------------------
// F5. The key function runs more than once per push (the docs say once).

// Was a fault, fixed: (minor, docs vs code) `key_by` documents "`key` runs once per push,
// before the queue's lock". Under `Block`, a push that waits for room runs it again on every poll
// (`Queue::poll_push_block` calls `key_of` at its top). Minimal input: capacity 1, one
// worker held on (A,0), (B,1) queued, push (C,1) waits, then (A,0) is let go. Expected: 3
// calls for 3 pushes. Today: at least 4. A key function with side effects, or an expensive
// one (hashing a large key), runs an unbounded number of times for one waiting push.
async fn key_runs_once_per_push(sp: Sp) {
    let calls = Arc::new(AtomicUsize::new(0));
    let (gate, gated) = gate();
    let pipeline = Arc::new(
        Pipeline::builder(1, Policy::Block)
            .workers(1)
            .key_by({
                let calls = calls.clone();
                move |item: &Item| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    item.0
                }
            })
            .spawn(sp.clone(), move |item: Item| {
                let gated = gated.clone();
                async move { gated.hold(item).await }
            })
            .expect("build"),
    );
    let _ = pipeline.push((0, 0)).await;
    assert_eq!(gate.next().await, (0, 0));
    let _ = pipeline.push((1, 1)).await;
    let waiting = common::spawn(&sp, {
        let pipeline = pipeline.clone();
        async move { pipeline.push((2, 1)).await }
    });
    common::idle().await;
    gate.open();
    assert_eq!(waiting.await.expect("the push"), PushOutcome::Accepted);
    let report = pipeline.shutdown().await;
    assert!(report.is_conserved());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "key ran more than once per push"
    );
}

// ---------------------------------------------------------------------------------------
// What holds.

/// Per-key order of first attempts and the per-key bound, with retries on many keys; the
/// law; each item processed once.
async fn per_key_order_and_bound_with_retries(sp: Sp) {
    #[derive(Default)]
    struct Seen {
        running: HashMap<u8, usize>,
        firsts: HashMap<u8, Vec<u32>>,
        tries: HashMap<Item, u32>,
        over: usize,
        done: Vec<Item>,
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let pipeline = Pipeline::builder(16, Policy::Block)
        .workers(4)
        .deadline(Duration::MAX)
        .retry(Retry::attempts(3).backoff(Duration::ZERO, Duration::ZERO))
        .key_by(|item: &Item| item.0)
        .spawn(sp, {
            let seen = seen.clone();
            move |item: Item| {
                let seen = seen.clone();
                async move {
                    let attempt = {
                        let mut s = lock(&seen);
                        let running = s.running.entry(item.0).or_default();
                        *running += 1;
                        if *running > 1 {
                            s.over += 1;
                        }
                        let tries = s.tries.entry(item).or_default();
                        *tries += 1;
                        let attempt = *tries;
                        if attempt == 1 {
                            s.firsts.entry(item.0).or_default().push(item.1);
                        }
                        attempt
                    };
                    common::yield_now().await;
                    let mut s = lock(&seen);
                    *s.running.get_mut(&item.0).expect("running") -= 1;
                    if item.1 % 3 == 0 && attempt < 2 {
                        return Outcome::Retry(item, "again");
                    }
                    s.done.push(item);
                    Outcome::Done
                }
            }
        })
        .expect("build");
    let n = 300u32;
    for seq in 0..n {
        let key = (seq.wrapping_mul(7) % 5) as u8;
        assert_eq!(pipeline.push((key, seq)).await, PushOutcome::Accepted);
    }
    let report = pipeline.shutdown().await;
    assert!(report.is_conserved(), "{report:?}");
    assert_eq!(report.processed, u64::from(n));
    let s = lock(&seen);
    assert_eq!(s.over, 0, "two items of a key ran at once");
    for (key, firsts) in &s.firsts {
        assert!(
            firsts.windows(2).all(|w| w[0] < w[1]),
            "key {key}: {firsts:?}"
        );
    }
    // Each key's items also finish in push order (a retried item keeps its key).
    let mut by_key: HashMap<u8, Vec<u32>> = HashMap::new();
    for &(key, seq) in &s.done {
        by_key.entry(key).or_default().push(seq);
    }
    for (key, done) in by_key {
        assert!(done.windows(2).all(|w| w[0] < w[1]), "key {key}: {done:?}");
    }
}

/// Coalescing under `Block` with a full queue: a replacing push returns at once, even while
/// another producer waits; the latest value runs; the law holds with `superseded`.
async fn coalesce_replacing_push_never_waits(sp: Sp) {
    let (gate, gated) = gate();
    let pipeline = Arc::new(
        Pipeline::builder(1, Policy::Block)
            .workers(1)
            .key_by(|item: &Item| item.0)
            .coalesce()
            .spawn(sp.clone(), move |item: Item| {
                let gated = gated.clone();
                async move { gated.hold(item).await }
            })
            .expect("build"),
    );
    let _ = pipeline.push((0, 0)).await;
    assert_eq!(gate.next().await, (0, 0));
    assert_eq!(pipeline.push((0, 1)).await, PushOutcome::Accepted); // waiting; full
    let waiting = common::spawn(&sp, {
        let pipeline = pipeline.clone();
        async move { pipeline.push((1, 1)).await }
    });
    common::idle().await;
    assert_eq!(pipeline.push((0, 2)).await, PushOutcome::Superseded((0, 1)));
    assert_eq!(pipeline.try_push((0, 3)), PushOutcome::Superseded((0, 2)));
    gate.open();
    assert_eq!(waiting.await.expect("push"), PushOutcome::Accepted);
    let report = pipeline.shutdown().await;
    assert!(report.is_conserved(), "{report:?}");
    assert_eq!((report.processed, report.superseded), (3, 2));
    let mut ran = gate.seen_now();
    ran.sort_unstable();
    assert_eq!(ran, [(0, 3), (1, 1)]);
}

/// A coalescing producer woken with a reserved slot that then replaces its key's waiting
/// item passes the slot on to the next producer in line (no slot is lost, nobody hangs).
async fn coalescing_waiter_passes_its_reserved_slot_on(sp: Sp) {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};
    let (gate, gated) = gate();
    let pipeline = Pipeline::builder(2, Policy::Block)
        .workers(1)
        .key_by(|item: &Item| item.0)
        .coalesce()
        .spawn(sp, move |item: Item| {
            let gated = gated.clone();
            async move { gated.hold(item).await }
        })
        .expect("build");
    let mut cx = Context::from_waker(Waker::noop());
    let _ = pipeline.push((0, 0)).await;
    assert_eq!(gate.next().await, (0, 0));
    let _ = pipeline.push((1, 1)).await;
    let _ = pipeline.push((3, 1)).await; // full: [(B,1), (D,1)]
    let mut p0 = pin!(pipeline.push((0, 1)));
    let mut p1 = pin!(pipeline.push((0, 2)));
    let mut p2 = pin!(pipeline.push((2, 1)));
    assert!(p0.as_mut().poll(&mut cx).is_pending());
    assert!(p1.as_mut().poll(&mut cx).is_pending());
    assert!(p2.as_mut().poll(&mut cx).is_pending());
    gate.release(); // (A,0) ends; (B,1) is taken: a slot for p0
    assert_eq!(gate.next().await, (1, 1));
    assert_eq!(
        p0.as_mut().poll(&mut cx),
        Poll::Ready(PushOutcome::Accepted)
    );
    gate.release(); // (B,1) ends; (D,1) is taken: a slot for p1
    assert_eq!(gate.next().await, (3, 1));
    assert_eq!(
        p1.as_mut().poll(&mut cx),
        Poll::Ready(PushOutcome::Superseded((0, 1)))
    );
    // p1 did not need its slot: p2 has it.
    assert_eq!(
        p2.as_mut().poll(&mut cx),
        Poll::Ready(PushOutcome::Accepted)
    );
    gate.open();
    let report = pipeline.shutdown().await;
    assert!(report.is_conserved(), "{report:?}");
    assert_eq!((report.processed, report.superseded), (5, 1));
}

/// A superseding item keeps the replaced one's arrival time (documented): it expires by
/// the old age, goes to `on_expired`, and the law holds with `superseded` and `expired`.
async fn superseding_item_expires_by_the_old_stamp(sp: Sp) {
    let (spawner, clock) = ManualSpawner::new(sp);
    let (gate, gated) = gate();
    let expired = Arc::new(Mutex::new(Vec::new()));
    let pipeline = Pipeline::builder(4, Policy::DropNewest)
        .workers(1)
        .max_age(10 * MS)
        .on_expired({
            let expired = expired.clone();
            move |item: Item, why: Expired| lock(&expired).push((item, why))
        })
        .key_by(|item: &Item| item.0)
        .coalesce()
        .spawn(spawner, move |item: Item| {
            let gated = gated.clone();
            async move { gated.hold(item).await }
        })
        .expect("build");
    let _ = pipeline.push((0, 0)).await;
    assert_eq!(gate.next().await, (0, 0));
    assert_eq!(pipeline.push((0, 1)).await, PushOutcome::Accepted);
    clock.advance(20 * MS);
    assert_eq!(pipeline.push((0, 2)).await, PushOutcome::Superseded((0, 1)));
    assert_eq!(pipeline.push((1, 1)).await, PushOutcome::Accepted); // fresh
    gate.open();
    until(|| pipeline.stats().processed == 2).await;
    let report = pipeline.shutdown().await;
    assert!(report.is_conserved(), "{report:?}");
    assert_eq!(
        (report.processed, report.superseded, report.expired),
        (2, 1, 1)
    );
    let expired = lock(&expired);
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].0, (0, 2));
    assert!(matches!(expired[0].1, Expired::MaxAge { age } if age == 20 * MS));
}

/// At the deadline: the parked retry first, then the queue's items in push order; the
/// item in a worker's hands is lost in flight; the law holds.
async fn leftovers_parked_first_then_push_order(sp: Sp) {
    let (spawner, clock) = ManualSpawner::new(sp.clone());
    let (gate, gated) = gate();
    let pipeline = Arc::new(
        Pipeline::builder(8, Policy::Block)
            .workers(2)
            .deadline(Duration::ZERO)
            .grace(Duration::ZERO)
            .retry(Retry::attempts(5).backoff(HOUR, HOUR).jitter(false))
            .key_by(|item: &Item| item.0)
            .spawn(spawner, move |item: Item| {
                let gated = gated.clone();
                async move {
                    if item.0 == 0 {
                        gated.announce(item);
                        return Outcome::Retry(item, "later");
                    }
                    gated.hold(item).await;
                    Outcome::Done
                }
            })
            .expect("build"),
    );
    let _ = pipeline.push((0, 1)).await;
    assert_eq!(gate.next().await, (0, 1));
    clock.until_sleepers(1).await;
    let _ = pipeline.push((1, 1)).await;
    assert_eq!(gate.next().await, (1, 1));
    for item in [(0, 2), (1, 2), (0, 3), (1, 3)] {
        let _ = pipeline.push(item).await;
    }
    gate.assert_none().await;
    // Deadline and grace zero: shutdown needs no timer (the clock stays put, so the retry
    // backoff never elapses).
    let report = pipeline.shutdown().await;
    assert!(report.is_conserved(), "{report:?}");
    assert_eq!((report.handed_back, report.lost_in_flight), (5, 1));
    assert_eq!(
        pipeline.take_leftovers(),
        [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3)]
    );
    gate.open();
}

/// A closed queue holding only items of busy keys: the waiting workers are woken by each
/// release, and the drain ends (no hang), in per-key order.
async fn drain_with_busy_keys_ends(sp: Sp) {
    let (gate, gated) = gate();
    let pipeline = Arc::new(
        Pipeline::builder(16, Policy::Block)
            .workers(3)
            .deadline(Duration::MAX)
            .key_by(|item: &Item| item.0)
            .spawn(sp.clone(), move |item: Item| {
                let gated = gated.clone();
                async move { gated.hold(item).await }
            })
            .expect("build"),
    );
    for seq in 0..4 {
        let _ = pipeline.push((0, seq)).await;
        let _ = pipeline.push((1, seq)).await;
    }
    let mut report = common::spawn(&sp, {
        let pipeline = pipeline.clone();
        async move { pipeline.shutdown().await }
    });
    let mut ran = Vec::new();
    for _ in 0..8 {
        ran.push(gate.next().await);
        gate.release();
    }
    let report = loop {
        if let Ok(Some(report)) = report.try_recv() {
            break report;
        }
        common::yield_now().await;
    };
    assert!(report.is_conserved(), "{report:?}");
    assert_eq!(report.processed, 8);
    for key in 0..2 {
        let seqs: Vec<u32> = ran.iter().filter(|i| i.0 == key).map(|i| i.1).collect();
        assert_eq!(seqs, [0, 1, 2, 3]);
    }
}

/// DropOldest evicts the oldest queued item of any key; the rest of each key stays in
/// order; the law holds.
async fn drop_oldest_keeps_each_keys_order(sp: Sp) {
    let (gate, gated) = gate();
    let pipeline = Pipeline::builder(3, Policy::DropOldest)
        .workers(1)
        .key_by(|item: &Item| item.0)
        .spawn(sp, move |item: Item| {
            let gated = gated.clone();
            async move { gated.hold(item).await }
        })
        .expect("build");
    let _ = pipeline.push((0, 0)).await;
    assert_eq!(gate.next().await, (0, 0));
    for item in [(0, 1), (1, 1), (0, 2)] {
        assert_eq!(pipeline.push(item).await, PushOutcome::Accepted);
    }
    assert_eq!(pipeline.push((0, 3)).await, PushOutcome::Evicted((0, 1)));
    assert_eq!(pipeline.push((1, 2)).await, PushOutcome::Evicted((1, 1)));
    gate.open();
    let report = pipeline.shutdown().await;
    assert!(report.is_conserved(), "{report:?}");
    assert_eq!((report.processed, report.dropped), (4, 2));
    assert_eq!(gate.seen_now(), [(0, 2), (0, 3), (1, 2)]);
}

/// Time-based shedding with adaptive LIFO across keys: whatever is shed, each key's
/// processed items stay in push order, and the law holds.
async fn codel_lifo_keeps_each_keys_order(sp: Sp) {
    let (spawner, clock) = ManualSpawner::new(sp);
    let (gate, gated) = gate();
    let pipeline = Pipeline::builder(64, Policy::Block)
        .workers(1)
        .codel(Codel::new(5 * MS, 20 * MS).lifo(true))
        .key_by(|item: &Item| item.0)
        .spawn(spawner, move |item: Item| {
            let gated = gated.clone();
            async move { gated.hold(item).await }
        })
        .expect("build");
    let mut pushed = 0u64;
    for round in 0..6u32 {
        for key in 0..4u8 {
            let _ = pipeline.push((key, round * 10 + u32::from(key))).await;
            pushed += 1;
        }
        clock.advance(MS);
    }
    // One item at a time, the clock moving 30 ms per item: CoDel sees the delay stay
    // above its target for longer than its interval, and starts dropping (and LIFO).
    let mut ran = Vec::new();
    loop {
        until(|| {
            let stats = pipeline.stats();
            !gate.seen.is_empty() || stats.processed + stats.expired == pushed
        })
        .await;
        match gate.seen.try_recv() {
            Ok(item) => {
                ran.push(item);
                clock.advance(30 * MS);
                gate.release();
            }
            Err(_) => break,
        }
    }
    let report = pipeline.shutdown().await;
    assert!(report.is_conserved(), "{report:?}");
    assert!(report.expired > 0, "CoDel shed something: {report:?}");
    for key in 0..4u8 {
        let seqs: Vec<u32> = ran.iter().filter(|i| i.0 == key).map(|i| i.1).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "key {key}: {seqs:?}");
    }
}

/// Many distinct keys over time through a small queue (every lane is forgotten when idle):
/// items all processed, the law holds, quickly.
async fn many_distinct_keys(sp: Sp) {
    let live = Live::new();
    let pipeline = Pipeline::builder(32, Policy::Block)
        .workers(2)
        .deadline(Duration::MAX)
        .key_by(|item: &(u32, Tracked)| item.0)
        .spawn(sp, |_: (u32, Tracked)| async {})
        .expect("build");
    let n = 20_000u32;
    for key in 0..n {
        let _ = pipeline.push((key, live.track())).await;
    }
    let report = pipeline.shutdown().await;
    assert!(report.is_conserved(), "{report:?}");
    assert_eq!(report.processed, u64::from(n));
    drop(pipeline);
    live.all_dropped().await;
}

/// Configuration errors.
async fn keyed_config_errors(sp: Sp) {
    let err = |b: backpressure_pipeline::PipelineBuilder<Item>| {
        b.spawn(sp.clone(), |_: Item| async {})
            .map(drop)
            .unwrap_err()
    };
    let b = || Pipeline::<Item>::builder(4, Policy::Block);
    assert_eq!(err(b().per_key(2)), BuildError::Config(ConfigError::NoKey));
    assert_eq!(err(b().coalesce()), BuildError::Config(ConfigError::NoKey));
    assert_eq!(
        err(b().key_by(|i: &Item| i.0).per_key(0)),
        BuildError::Config(ConfigError::ZeroPerKey)
    );
    assert_eq!(
        err(b().key_by(|i: &Item| i.0).per_key(2).coalesce()),
        BuildError::Config(ConfigError::CoalescePerKey)
    );
}

/// A key function that panics: the push panics (user code, before the lock); the
/// pipeline stays usable, nothing is counted for it, and the law holds.
async fn panicking_key_leaves_the_pipeline_whole(sp: Sp) {
    let pipeline = Pipeline::builder(4, Policy::Block)
        .workers(1)
        .key_by(|item: &Item| {
            assert!(item.0 != 9, "bad key");
            item.0
        })
        .coalesce()
        .spawn(sp, |_: Item| async {})
        .expect("build");
    let _ = pipeline.push((0, 0)).await;
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = pipeline.try_push((9, 0));
    }));
    assert!(caught.is_err());
    let _ = pipeline.push((0, 1)).await;
    let report = pipeline.shutdown().await;
    assert!(report.is_conserved(), "{report:?}");
    assert_eq!(report.produced, 2);
}

on_every_runtime!(
    freed_key_is_not_taken_after_the_deadline,
    retry_cut_by_the_deadline_keeps_its_keys_order,
    panic_stop_takes_no_item_of_a_freed_key,
    batch_holding_its_key_is_delivered_when_full_block,
    batch_holding_its_key_is_delivered_when_full_drop_oldest,
    key_runs_once_per_push,
    per_key_order_and_bound_with_retries,
    coalesce_replacing_push_never_waits,
    coalescing_waiter_passes_its_reserved_slot_on,
    superseding_item_expires_by_the_old_stamp,
    leftovers_parked_first_then_push_order,
    drain_with_busy_keys_ends,
    drop_oldest_keeps_each_keys_order,
    codel_lifo_keeps_each_keys_order,
    many_distinct_keys,
    keyed_config_errors,
    panicking_key_leaves_the_pipeline_whole,
);
