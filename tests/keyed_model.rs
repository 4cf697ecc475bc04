//! Keyed lanes against a model, on every runtime: random runs of keyed pipelines (policy,
//! capacity, workers, `per_key`, coalescing, batches, keys and work) must keep
//!
//! - per-key order: with `per_key` 1, each key's items start in push order;
//! - the per-key bound: a key never has more than `per_key` items running at once;
//! - with coalescing, the last value per key always wins (under `Block`, every key's last
//!   pushed item is processed), and a key never has two items waiting;
//! - the law with `superseded`, and every item's one fate: processed, shed, evicted, or
//!   superseded (handed back to its pusher), each once.
//!
//! The same runs are generated on every runtime by proptest's runner (no shrinking there);
//! on smol, `proptest!` also shrinks a failing run. `PROPTEST_CASES` sets the number of
//! cases (32 per runtime by default).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backpressure_pipeline::{Batch, Pipeline, Policy, PushOutcome, Report};
use common::ledger::lock;
use common::Sp;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

/// An item: its key, its place in the push order, and its work (yields).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Item {
    key: u8,
    seq: u32,
    work: u8,
}

#[derive(Debug, Clone)]
struct Run {
    policy: Policy,
    capacity: usize,
    workers: usize,
    per_key: usize,
    coalesce: bool,
    /// `Some(max_items)`: batches, closed at once (`max_wait` zero) or after a few yields.
    batch: Option<(usize, bool)>,
    items: Vec<(u8, u8)>,
}

fn run() -> impl Strategy<Value = Run> {
    (
        prop_oneof![
            Just(Policy::Block),
            Just(Policy::DropNewest),
            Just(Policy::DropOldest)
        ],
        1usize..=8,
        1usize..=4,
        1usize..=3,
        any::<bool>(),
        proptest::option::weighted(0.3, (1usize..=4, any::<bool>())),
        1u8..=6,
        proptest::collection::vec((any::<u8>(), 0u8..=3), 0..120),
    )
        .prop_map(
            |(policy, capacity, workers, per_key, coalesce, batch, keys, items)| Run {
                policy,
                capacity,
                workers,
                // Coalescing runs one item of a key at a time.
                per_key: if coalesce { 1 } else { per_key },
                coalesce,
                batch,
                items: items.into_iter().map(|(k, w)| (k % keys, w)).collect(),
            },
        )
}

/// What the workers saw.
#[derive(Debug, Default)]
struct Seen {
    running: HashMap<u8, usize>,
    started: Vec<Item>,
    /// Each breach of the per-key bound (checked here, asserted at the end: a panic in the
    /// work would be caught as a panicked item).
    over: Vec<(Item, usize)>,
}

/// The work on some items (one, or a batch): start each, yield, finish each.
async fn work(seen: &Mutex<Seen>, per_key: usize, items: &[Item]) {
    {
        let mut seen = lock(seen);
        for &item in items {
            let running = seen.running.entry(item.key).or_default();
            *running += 1;
            let now = *running;
            if now > per_key {
                seen.over.push((item, now));
            }
            seen.started.push(item);
        }
    }
    let yields = items.iter().map(|item| item.work).max().unwrap_or(0);
    for _ in 0..yields {
        common::yield_now().await;
    }
    let mut seen = lock(seen);
    for item in items {
        *seen.running.get_mut(&item.key).expect("started") -= 1;
    }
}

async fn check(sp: Sp, run: Run) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let builder = Pipeline::builder(run.capacity, run.policy)
        .workers(run.workers)
        .deadline(Duration::MAX)
        .key_by(|item: &Item| item.key)
        .per_key(run.per_key);
    let builder = if run.coalesce {
        builder.coalesce()
    } else {
        builder
    };
    let per_key = run.per_key;
    let pipeline = match run.batch {
        None => builder.spawn(sp, {
            let seen = seen.clone();
            move |item: Item| {
                let seen = seen.clone();
                async move { work(&seen, per_key, &[item]).await }
            }
        }),
        Some((max_items, wait)) => {
            let max_wait = if wait {
                Duration::from_millis(1)
            } else {
                Duration::ZERO
            };
            builder.spawn_batched(sp, Batch::new(max_items, max_wait), {
                let seen = seen.clone();
                move |items: Vec<Item>| {
                    let seen = seen.clone();
                    async move { work(&seen, per_key, &items).await }
                }
            })
        }
    }
    .expect("a valid pipeline");

    let (mut shed, mut evicted, mut superseded) = (Vec::new(), Vec::new(), Vec::new());
    let items: Vec<Item> = run
        .items
        .iter()
        .enumerate()
        .map(|(seq, &(key, work))| Item {
            key,
            seq: seq as u32,
            work,
        })
        .collect();
    for &item in &items {
        match pipeline.push(item).await {
            PushOutcome::Accepted => {}
            PushOutcome::Shed(back) => shed.push(back),
            PushOutcome::Evicted(old) => evicted.push(old),
            PushOutcome::Superseded(old) => {
                assert_eq!(old.key, item.key, "{run:?}: superseded by another key");
                assert!(old.seq < item.seq, "{run:?}: a newer item superseded");
                superseded.push(old);
            }
            PushOutcome::Full(_) | PushOutcome::Closed(_) => {
                unreachable!("{run:?}: an open pipeline's push")
            }
        }
    }
    let report = pipeline.shutdown().await;
    let seen = std::mem::take(&mut *lock(&seen));
    check_report(&run, &report, &seen, [&shed, &evicted, &superseded]);
    assert!(
        seen.over.is_empty(),
        "{run:?}: per_key exceeded: {:?}",
        seen.over
    );

    // Every item once: processed, or handed back to its pusher.
    let mut fates: Vec<Item> = seen.started.clone();
    fates.extend(shed.iter().chain(&evicted).chain(&superseded));
    fates.sort_unstable();
    let mut all = items.clone();
    all.sort_unstable();
    assert_eq!(fates, all, "{run:?}: an item lost or seen twice");

    if run.per_key == 1 {
        // Each key's items start in push order.
        let mut last: HashMap<u8, u32> = HashMap::new();
        for item in &seen.started {
            if let Some(before) = last.insert(item.key, item.seq) {
                assert!(
                    before < item.seq,
                    "{run:?}: key {} ran {} after {before}",
                    item.key,
                    item.seq
                );
            }
        }
    }
    if run.coalesce && run.policy == Policy::Block {
        // The last value of every key wins: under `Block` nothing is shed or evicted.
        let mut last: HashMap<u8, u32> = HashMap::new();
        for item in &items {
            last.insert(item.key, item.seq);
        }
        for (key, seq) in last {
            assert!(
                seen.started.iter().any(|i| i.key == key && i.seq == seq),
                "{run:?}: key {key}'s last item {seq} was not processed"
            );
        }
    }
}

fn check_report(
    run: &Run,
    report: &Report,
    seen: &Seen,
    [shed, evicted, superseded]: [&Vec<Item>; 3],
) {
    assert!(report.is_conserved(), "{run:?}: {report}");
    assert!(report.all_joined(), "{run:?}: {report}");
    assert_eq!(report.produced, run.items.len() as u64, "{run:?}: {report}");
    assert_eq!(
        report.processed,
        seen.started.len() as u64,
        "{run:?}: {report}"
    );
    assert_eq!(
        report.dropped,
        (shed.len() + evicted.len()) as u64,
        "{run:?}: {report}"
    );
    assert_eq!(
        report.superseded,
        superseded.len() as u64,
        "{run:?}: {report}"
    );
    assert_eq!(
        (report.abandoned, report.panicked, report.failed),
        (0, 0, 0),
        "{run:?}: {report}"
    );
    if !run.coalesce {
        assert_eq!(report.superseded, 0, "{run:?}: {report}");
    }
    if run.policy == Policy::Block {
        assert_eq!(report.dropped, 0, "{run:?}: {report}");
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(32)
}

/// Random runs from proptest's generator, run on the test's runtime one after another.
async fn keyed_runs_match_the_model(sp: Sp) {
    let mut runner = TestRunner::deterministic();
    for _ in 0..cases() {
        let run = run().new_tree(&mut runner).expect("a run").current();
        check(sp.clone(), run).await;
    }
}

on_every_runtime!(keyed_runs_match_the_model);

#[cfg(feature = "smol")]
proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// The same model with shrinking, on smol's executor.
    #[test]
    fn keyed_runs_match_the_model_and_shrink(run in run()) {
        ::smol::block_on(check(Arc::new(backpressure_pipeline::SmolSpawner::new()), run));
    }
}
