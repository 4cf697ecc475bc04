//! Keyed lanes: per-key order across parallel workers, what each policy means under keys,
//! coalescing, and keys through retries, batches and shutdown. Each body runs on every
//! runtime; the time-based ones on a manual clock.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backpressure_pipeline::{
    Batch, BuildError, ConfigError, Outcome, Pipeline, Policy, PushOutcome, Retry,
};
use common::clock::ManualSpawner;
use common::gate::gate;
use common::ledger::lock;
use common::Sp;

/// (key, value)
type Kv = (u32, u32);

fn key(item: &Kv) -> u32 {
    item.0
}

// ---- Head of line ----

const WORKERS: usize = 16;
const FAST_KEYS: u32 = 64;
const FAST_ITEMS: u32 = 25;
const SLOW_KEY: u32 = u32::MAX;
const SLOW_ITEMS: u32 = 20;
/// Every fast key has finished this many of its items: the measured point.
const TARGET: u32 = 15;

/// The virtual time at which every fast key has finished `TARGET` items, with or without a
/// slow key 100 times slower fed beside them, on 16 workers (fast work 1 ms, slow 100 ms).
async fn time_to_target(sp: Sp, slow: bool) -> Duration {
    let (spawner, clock) = ManualSpawner::new(sp);
    let done: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
    // Once measured, the rest runs without its work's time.
    let measured = Arc::new(AtomicBool::new(false));
    let pipeline = Pipeline::builder(4096, Policy::Block)
        .workers(WORKERS)
        .key_by(key)
        .spawn(spawner, {
            let (clock, done, measured) = (clock.clone(), done.clone(), measured.clone());
            move |(key, _): Kv| {
                let (clock, done, measured) = (clock.clone(), done.clone(), measured.clone());
                async move {
                    let ms = if key == SLOW_KEY { 100 } else { 1 };
                    if !measured.load(Ordering::Relaxed) {
                        clock.sleep(Duration::from_millis(ms)).await;
                    }
                    *lock(&done).entry(key).or_default() += 1;
                }
            }
        })
        .expect("a valid pipeline");
    // Round robin, the slow key's items among them.
    for value in 0..FAST_ITEMS {
        for key in 0..FAST_KEYS {
            assert_eq!(pipeline.push((key, value)).await, PushOutcome::Accepted);
        }
        if slow && value < SLOW_ITEMS {
            assert_eq!(
                pipeline.push((SLOW_KEY, value)).await,
                PushOutcome::Accepted
            );
        }
    }
    // Each step: every worker is in its work's sleep (items of ready keys are left for all
    // of them up to the target), then the clock moves 1 ms.
    let reached = loop {
        clock.until_sleepers(WORKERS).await;
        let least = {
            let done = lock(&done);
            (0..FAST_KEYS)
                .map(|key| done.get(&key).copied().unwrap_or(0))
                .min()
                .unwrap_or(0)
        };
        if least >= TARGET {
            break clock.now();
        }
        clock.advance(Duration::from_millis(1));
    };
    measured.store(true, Ordering::Relaxed);
    clock.advance(Duration::MAX); // the sleeps under way end; the rest take no time
    let report = pipeline.shutdown().await;
    assert!(report.is_conserved(), "{report}");
    let total = FAST_KEYS * FAST_ITEMS + if slow { SLOW_ITEMS } else { 0 };
    assert_eq!(report.processed, u64::from(total), "{report}");
    reached
}

/// A key 100 times slower than the others leaves their throughput within 10% of a run
/// without it: it holds up its own items only (no fixed lanes). With 16 workers, the slow
/// key takes one of them at a time, so the others keep 15/16 of the pool.
async fn a_slow_key_holds_up_no_other_key(sp: Sp) {
    let without = time_to_target(sp.clone(), false).await;
    let with = time_to_target(sp, true).await;
    // 64 × 15 items over 16 workers at 1 ms each: 60 ms.
    assert_eq!(without, Duration::from_millis(60));
    let throughput = without.as_secs_f64() / with.as_secs_f64();
    assert!(
        throughput >= 0.9,
        "the fast keys' throughput fell to {throughput:.3} of a run without the slow key \
         ({with:?} against {without:?})"
    );
}

// ---- Order and the per-key bound ----

/// Items of one key run one at a time, in push order; another key runs beside them.
async fn a_keys_items_run_one_at_a_time_in_push_order(sp: Sp) {
    let (gate, gated) = gate::<Kv>();
    let gated = Arc::new(gated);
    let pipeline = Pipeline::builder(8, Policy::Block)
        .workers(3)
        .key_by(key)
        .spawn(sp, move |item: Kv| {
            let gated = gated.clone();
            async move {
                // Key 1's items wait for the test; key 2's run through.
                match item.0 {
                    1 => gated.hold(item).await,
                    _ => gated.announce(item),
                }
            }
        })
        .expect("a valid pipeline");
    for item in [(1, 0), (1, 1), (2, 0), (1, 2), (2, 1)] {
        assert_eq!(pipeline.push(item).await, PushOutcome::Accepted);
    }
    // Key 1's first item and key 2's run; key 1's others wait, though workers are free.
    let mut first = vec![gate.next().await, gate.next().await, gate.next().await];
    first.sort_unstable();
    assert_eq!(first, [(1, 0), (2, 0), (2, 1)]);
    gate.assert_none().await;
    gate.release();
    assert_eq!(gate.next().await, (1, 1));
    gate.assert_none().await;
    gate.release();
    assert_eq!(gate.next().await, (1, 2));
    gate.open();
    let report = pipeline.shutdown().await;
    assert_eq!(report.processed, 5, "{report}");
    assert!(report.is_conserved(), "{report}");
}

/// `per_key(2)`: two items of a key at once, the third waits for one of them.
async fn per_key_runs_that_many_at_once(sp: Sp) {
    let (gate, gated) = gate::<Kv>();
    let gated = Arc::new(gated);
    let pipeline = Pipeline::builder(8, Policy::Block)
        .workers(4)
        .key_by(key)
        .per_key(2)
        .spawn(sp, move |item: Kv| {
            let gated = gated.clone();
            async move { gated.hold(item).await }
        })
        .expect("a valid pipeline");
    for value in 0..3 {
        assert_eq!(pipeline.push((5, value)).await, PushOutcome::Accepted);
    }
    let mut first = vec![gate.next().await, gate.next().await];
    first.sort_unstable();
    assert_eq!(first, [(5, 0), (5, 1)]);
    gate.assert_none().await;
    gate.release();
    assert_eq!(gate.next().await, (5, 2));
    gate.open();
    assert!(pipeline.shutdown().await.is_conserved());
}

// ---- The policies under keys ----

/// One worker holds key 1's first item; the queue (capacity 3) holds key 1's second and
/// keys 2 and 3. What a push of key 4 does is the policy's.
async fn full_behind_a_busy_key(sp: Sp, policy: Policy) -> (Pipeline<Kv>, common::gate::Gate<Kv>) {
    let (gate, gated) = gate::<Kv>();
    let gated = Arc::new(gated);
    let pipeline = Pipeline::builder(3, policy)
        .key_by(key)
        .deadline(Duration::ZERO)
        .grace(Duration::ZERO)
        .spawn(sp, move |item: Kv| {
            let gated = gated.clone();
            async move { gated.hold(item).await }
        })
        .expect("a valid pipeline");
    assert_eq!(pipeline.push((1, 0)).await, PushOutcome::Accepted);
    assert_eq!(gate.next().await, (1, 0));
    for item in [(1, 1), (2, 0), (3, 0)] {
        assert_eq!(pipeline.push(item).await, PushOutcome::Accepted);
    }
    (pipeline, gate)
}

/// `DropOldest` evicts the oldest queued item of any key, here the busy key's.
async fn drop_oldest_evicts_the_oldest_item_of_any_key(sp: Sp) {
    let (pipeline, gate) = full_behind_a_busy_key(sp, Policy::DropOldest).await;
    assert_eq!(pipeline.push((4, 0)).await, PushOutcome::Evicted((1, 1)));
    gate.open();
    let report = pipeline.shutdown().await;
    assert!(report.is_conserved(), "{report}");
    assert_eq!(report.dropped, 1, "{report}");
}

/// `DropNewest` sheds the incoming item, whatever its key.
async fn drop_newest_sheds_the_incoming_item(sp: Sp) {
    let (pipeline, gate) = full_behind_a_busy_key(sp, Policy::DropNewest).await;
    assert_eq!(pipeline.push((4, 0)).await, PushOutcome::Shed((4, 0)));
    gate.open();
    assert!(pipeline.shutdown().await.is_conserved());
}

/// `Block` waits for a free slot, whichever key frees it: here key 1's second item, which
/// may run once its first is done.
async fn block_waits_for_a_slot_of_any_key(sp: Sp) {
    let (pipeline, gate) = full_behind_a_busy_key(sp.clone(), Policy::Block).await;
    let producer = pipeline.producer();
    let push = common::spawn(&sp, async move { producer.push((4, 0)).await });
    gate.assert_none().await;
    gate.release(); // (1, 0) done: (1, 1) is the oldest that may run
    assert_eq!(gate.next().await, (1, 1));
    assert_eq!(push.await.expect("the push ends"), PushOutcome::Accepted);
    gate.open();
    // (A zero deadline: what is left is handed back.)
    let report = pipeline.shutdown().await;
    assert_eq!(report.produced, 5, "{report}");
    assert!(report.is_conserved(), "{report}");
}

// ---- Coalescing ----

/// A waiting item is replaced by the newer one of its key and handed back; the running one
/// is not; a replacing push needs no slot, even in a full queue.
async fn coalescing_keeps_the_latest_waiting_item_per_key(sp: Sp) {
    let (gate, gated) = gate::<Kv>();
    let gated = Arc::new(gated);
    let pipeline = Pipeline::builder(2, Policy::DropNewest)
        .key_by(key)
        .coalesce()
        .spawn(sp, move |item: Kv| {
            let gated = gated.clone();
            async move { gated.hold(item).await }
        })
        .expect("a valid pipeline");
    assert_eq!(pipeline.push((1, 0)).await, PushOutcome::Accepted);
    assert_eq!(gate.next().await, (1, 0)); // running
    assert_eq!(pipeline.push((1, 1)).await, PushOutcome::Accepted);
    assert_eq!(pipeline.push((2, 0)).await, PushOutcome::Accepted); // full now
    assert_eq!(pipeline.push((3, 0)).await, PushOutcome::Shed((3, 0)));
    assert_eq!(pipeline.push((1, 2)).await, PushOutcome::Superseded((1, 1)));
    assert_eq!(pipeline.push((2, 1)).await, PushOutcome::Superseded((2, 0)));
    let stats = pipeline.stats();
    assert_eq!((stats.superseded, stats.depth), (2, 2));
    gate.open();
    let mut rest = vec![gate.next().await, gate.next().await];
    rest.sort_unstable();
    assert_eq!(rest, [(1, 2), (2, 1)], "the latest of each key ran");
    let report = pipeline.shutdown().await;
    assert_eq!(
        (
            report.produced,
            report.processed,
            report.dropped,
            report.superseded
        ),
        (6, 3, 1, 2),
        "{report}"
    );
    assert!(report.is_conserved(), "{report}");
}

/// Under `Block`, a full queue keeps taking replacements at once, and a producer waiting
/// for a slot replaces its key's waiting item as soon as one appears.
async fn a_replacing_push_never_waits(sp: Sp) {
    let (gate, gated) = gate::<Kv>();
    let gated = Arc::new(gated);
    let pipeline = Pipeline::builder(1, Policy::Block)
        .key_by(key)
        .coalesce()
        .spawn(sp, move |item: Kv| {
            let gated = gated.clone();
            async move { gated.hold(item).await }
        })
        .expect("a valid pipeline");
    assert_eq!(pipeline.push((1, 0)).await, PushOutcome::Accepted);
    assert_eq!(gate.next().await, (1, 0));
    assert_eq!(pipeline.push((1, 1)).await, PushOutcome::Accepted); // full
    for value in 2..10 {
        assert_eq!(
            pipeline.push((1, value)).await,
            PushOutcome::Superseded((1, value - 1))
        );
    }
    gate.open();
    assert_eq!(gate.next().await, (1, 9));
    let report = pipeline.shutdown().await;
    assert_eq!((report.processed, report.superseded), (2, 8), "{report}");
}

/// The replacement keeps the waiting item's arrival time: `max_age` counts from when the
/// key began to wait, so a key updated faster than it is served still sheds stale work.
async fn a_replacement_keeps_the_waiting_items_arrival_time(sp: Sp) {
    let (spawner, clock) = ManualSpawner::new(sp);
    let (gate, gated) = gate::<Kv>();
    let gated = Arc::new(gated);
    let expired = Arc::new(Mutex::new(Vec::new()));
    let pipeline = Pipeline::builder(4, Policy::Block)
        .key_by(key)
        .coalesce()
        .max_age(Duration::from_millis(10))
        .on_expired({
            let expired = expired.clone();
            move |item: Kv, _| lock(&expired).push(item)
        })
        .spawn(spawner, move |item: Kv| {
            let gated = gated.clone();
            async move { gated.hold(item).await }
        })
        .expect("a valid pipeline");
    assert_eq!(pipeline.push((1, 0)).await, PushOutcome::Accepted);
    assert_eq!(gate.next().await, (1, 0));
    assert_eq!(pipeline.push((1, 1)).await, PushOutcome::Accepted); // waits from t = 0
    clock.advance(Duration::from_millis(8));
    assert_eq!(pipeline.push((1, 2)).await, PushOutcome::Superseded((1, 1)));
    clock.advance(Duration::from_millis(3)); // 11 ms since the key began to wait
    gate.release();
    gate.assert_none().await;
    let report = pipeline.shutdown().await;
    assert_eq!(*lock(&expired), [(1, 2)]);
    assert_eq!(
        (report.processed, report.superseded, report.expired),
        (1, 1, 1),
        "{report}"
    );
    assert!(report.is_conserved(), "{report}");
}

// ---- Retries, batches, shutdown ----

/// A retried item keeps its key busy through its backoff: the key's next item waits, and
/// another key's runs.
async fn a_retried_item_keeps_its_keys_order(sp: Sp) {
    let (spawner, clock) = ManualSpawner::new(sp);
    let order = Arc::new(Mutex::new(Vec::new()));
    let attempts: Arc<Mutex<HashMap<Kv, u32>>> = Arc::default();
    let pipeline = Pipeline::builder(8, Policy::Block)
        .workers(2)
        .key_by(key)
        .retry(Retry::attempts(3).jitter(false))
        .spawn(spawner, {
            let (order, attempts) = (order.clone(), attempts.clone());
            move |item: Kv| {
                let (order, attempts) = (order.clone(), attempts.clone());
                async move {
                    let attempt = common::ledger::bump(&attempts, item);
                    lock(&order).push((item, attempt));
                    if item == (1, 0) && attempt == 1 {
                        return Outcome::Retry(item, "once");
                    }
                    Outcome::Done
                }
            }
        })
        .expect("a valid pipeline");
    for item in [(1, 0), (1, 1), (2, 0)] {
        assert_eq!(pipeline.push(item).await, PushOutcome::Accepted);
    }
    // (1, 0) failed and waits 100 ms; (2, 0) ran; (1, 1) waits for its key.
    clock.until_sleepers(1).await;
    common::idle().await;
    let seen: Vec<Kv> = lock(&order).iter().map(|&(item, _)| item).collect();
    assert!(
        !seen.contains(&(1, 1)),
        "ran before its key's retry: {seen:?}"
    );
    clock.advance(Duration::from_millis(100));
    let report = pipeline.shutdown().await;
    let key_one: Vec<(Kv, u32)> = lock(&order)
        .iter()
        .copied()
        .filter(|&((key, _), _)| key == 1)
        .collect();
    assert_eq!(key_one, [((1, 0), 1), ((1, 0), 2), ((1, 1), 1)]);
    assert_eq!((report.processed, report.retried), (3, 1), "{report}");
}

/// A batch holds each of its keys until the whole batch is done; and a batch being filled
/// never waits on items of keys it holds itself: with the queue full of them (`Block`) it
/// is delivered at once.
async fn a_batch_holds_its_keys_and_never_waits_on_them(sp: Sp) {
    let (gate, gated) = gate::<Vec<Kv>>();
    let gated = Arc::new(gated);
    let pipeline = Pipeline::builder(2, Policy::Block)
        .key_by(key)
        .spawn_batched(sp, Batch::new(4, Duration::MAX), move |batch: Vec<Kv>| {
            let gated = gated.clone();
            async move { gated.hold(batch).await }
        })
        .expect("a valid pipeline");
    // The worker takes (1, 0) and waits for more; (1, 1) and (1, 2) fill the queue but may
    // not join the batch (their key is the batch's): the batch is delivered.
    assert_eq!(pipeline.push((1, 0)).await, PushOutcome::Accepted);
    assert_eq!(pipeline.push((1, 1)).await, PushOutcome::Accepted);
    assert_eq!(pipeline.push((1, 2)).await, PushOutcome::Accepted);
    assert_eq!(gate.next().await, [(1, 0)]);
    // The next batch takes (1, 1) and is delivered at once ((1, 2), of its key, waits),
    // then (1, 2) alone.
    gate.open();
    let report = pipeline.shutdown().await;
    assert_eq!(gate.next().await, [(1, 1)]);
    assert_eq!(gate.next().await, [(1, 2)]);
    assert_eq!(report.processed, 3, "{report}");
    assert!(report.is_conserved(), "{report}");
}

/// At the deadline, the leftovers come back in push order, so each key's in its order: the
/// item waiting for a retry first (its key's oldest), then the queue's.
async fn leftovers_come_back_in_each_keys_order(sp: Sp) {
    let (spawner, clock) = ManualSpawner::new(sp);
    let pipeline = Pipeline::builder(8, Policy::Block)
        .key_by(key)
        .deadline(Duration::ZERO)
        .grace(Duration::ZERO)
        .retry(Retry::attempts(2).jitter(false))
        .spawn(spawner, |item: Kv| async move {
            Outcome::<Kv, &str>::Retry(item, "not now")
        })
        .expect("a valid pipeline");
    for item in [(1, 0), (1, 1), (2, 0), (1, 2), (2, 1)] {
        assert_eq!(pipeline.push(item).await, PushOutcome::Accepted);
    }
    // One worker: (1, 0) failed and waits for its retry; the rest wait in the queue.
    clock.until_sleepers(1).await;
    let report = pipeline.shutdown().await;
    assert_eq!(
        pipeline.take_leftovers(),
        [(1, 0), (1, 1), (2, 0), (1, 2), (2, 1)]
    );
    assert_eq!((report.handed_back, report.retried), (5, 1), "{report}");
    assert!(report.is_conserved(), "{report}");
}

/// The law with `superseded` on the deadline path: replaced items, an item lost in a
/// worker's hands, and waiting ones handed back.
async fn the_law_holds_with_superseded_at_the_deadline(sp: Sp) {
    let (gate, gated) = gate::<Kv>();
    let gated = Arc::new(gated);
    let pipeline = Pipeline::builder(8, Policy::Block)
        .key_by(key)
        .coalesce()
        .deadline(Duration::ZERO)
        .grace(Duration::ZERO)
        .spawn(sp, move |item: Kv| {
            let gated = gated.clone();
            async move { gated.hold(item).await }
        })
        .expect("a valid pipeline");
    assert_eq!(pipeline.push((1, 0)).await, PushOutcome::Accepted);
    assert_eq!(gate.next().await, (1, 0));
    assert_eq!(pipeline.push((1, 1)).await, PushOutcome::Accepted);
    assert_eq!(pipeline.push((1, 2)).await, PushOutcome::Superseded((1, 1)));
    assert_eq!(pipeline.push((2, 0)).await, PushOutcome::Accepted);
    assert_eq!(pipeline.push((2, 1)).await, PushOutcome::Superseded((2, 0)));
    let report = pipeline.shutdown().await;
    assert_eq!(pipeline.take_leftovers(), [(1, 2), (2, 1)]);
    assert_eq!(
        (
            report.produced,
            report.superseded,
            report.handed_back,
            report.lost_in_flight
        ),
        (5, 2, 2, 1),
        "{report}"
    );
    assert!(report.is_conserved(), "{report}");
}

// ---- Configuration ----

async fn keyed_settings_are_checked(sp: Sp) {
    let build = |builder: backpressure_pipeline::PipelineBuilder<Kv>| {
        builder.spawn(sp.clone(), |_: Kv| async {}).map(drop)
    };
    let config = |err| Err(BuildError::Config(err));
    let builder = || Pipeline::builder(4, Policy::Block);
    assert_eq!(build(builder().per_key(2)), config(ConfigError::NoKey));
    assert_eq!(build(builder().coalesce()), config(ConfigError::NoKey));
    assert_eq!(
        build(builder().key_by(key).per_key(0)),
        config(ConfigError::ZeroPerKey)
    );
    assert_eq!(
        build(builder().key_by(key).per_key(2).coalesce()),
        config(ConfigError::CoalescePerKey)
    );
    assert_eq!(build(builder().key_by(key).per_key(3)), Ok(()));
}

on_every_runtime!(
    a_slow_key_holds_up_no_other_key,
    a_keys_items_run_one_at_a_time_in_push_order,
    per_key_runs_that_many_at_once,
    drop_oldest_evicts_the_oldest_item_of_any_key,
    drop_newest_sheds_the_incoming_item,
    block_waits_for_a_slot_of_any_key,
    coalescing_keeps_the_latest_waiting_item_per_key,
    a_replacing_push_never_waits,
    a_replacement_keeps_the_waiting_items_arrival_time,
    a_retried_item_keeps_its_keys_order,
    a_batch_holds_its_keys_and_never_waits_on_them,
    leftovers_come_back_in_each_keys_order,
    the_law_holds_with_superseded_at_the_deadline,
    keyed_settings_are_checked,
);
