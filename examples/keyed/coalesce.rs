//! Part 1: many updates over few keys, into workers whose write costs a timer sleep. With
//! `coalesce()` a key's waiting update is replaced by a newer one, so the workers write
//! only what is still current; without it they write every update.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backpressure_pipeline::{Pipeline, Policy, PushOutcome};

use crate::runtime::Runtime;

/// One run's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Setup {
    pub(crate) updates: u64,
    pub(crate) keys: u32,
    pub(crate) capacity: usize,
    pub(crate) workers: usize,
    pub(crate) service: Duration,
    pub(crate) seed: u64,
    pub(crate) coalesce: bool,
}

/// An update: the key, and a value that grows with each push (the push's index + 1).
#[derive(Debug, Clone, Copy)]
struct Update {
    key: u32,
    value: u64,
}

/// What one run measured, every count checked against the report before it is returned.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Measured {
    pub(crate) processed: u64,
    pub(crate) superseded: u64,
    pub(crate) wall: Duration,
}

/// Pushes `setup.updates` updates, keys drawn at random (fixed seed) from `0..keys`, with
/// `push().await` from one producer task; shuts down with a drain long enough for all of
/// them; checks that every update is accounted for and that each key's last value was
/// written, in order.
pub(crate) fn run(rt: Runtime, setup: Setup) -> Measured {
    let keys = setup.keys as usize;
    // Per key, the last value a worker wrote (0: none yet; values start at 1).
    let written: Arc<Vec<AtomicU64>> = Arc::new((0..keys).map(|_| AtomicU64::new(0)).collect());
    let out_of_order = Arc::new(AtomicU64::new(0));
    let spawner = rt.spawner();
    let started = Instant::now();
    let (report, last_pushed, superseded_seen) = rt.run({
        let (written, out_of_order) = (written.clone(), out_of_order.clone());
        async move {
            // `Block`: with coalescing a push never waits anyway while the keys fit in the
            // capacity, since a key has at most one update waiting.
            let builder = Pipeline::builder(setup.capacity, Policy::Block)
                .workers(setup.workers)
                // Long enough to drain every waiting key: the check below needs each
                // key's last update written, not handed back.
                .deadline(Duration::from_secs(600))
                .key_by(|update: &Update| update.key);
            let builder = if setup.coalesce {
                builder.coalesce()
            } else {
                builder
            };
            let sleeper = spawner.clone();
            let pipeline = builder
                .spawn(spawner, move |update: Update| {
                    let (sleeper, written, out_of_order) =
                        (sleeper.clone(), written.clone(), out_of_order.clone());
                    async move {
                        // The write: ~1 ms on the runtime's timer.
                        sleeper.sleep(setup.service).await;
                        // Relaxed: a key's items run one at a time, and the queue's lock,
                        // taken to release this one and to take the next, orders them.
                        let before =
                            written[update.key as usize].swap(update.value, Ordering::Relaxed);
                        if before >= update.value {
                            // Relaxed: a count read after every worker is joined.
                            out_of_order.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
                .expect("valid pipeline");
            let mut rng = fastrand::Rng::with_seed(setup.seed);
            let mut last_pushed = vec![0u64; keys];
            let mut superseded = 0u64;
            for i in 0..setup.updates {
                let update = Update {
                    key: rng.u32(..setup.keys),
                    value: i + 1,
                };
                last_pushed[update.key as usize] = update.value;
                match pipeline.push(update).await {
                    PushOutcome::Accepted => {}
                    PushOutcome::Superseded(old) if setup.coalesce => {
                        assert!(old.key == update.key && old.value < update.value);
                        superseded += 1;
                    }
                    other => panic!("unexpected push outcome: {other:?}"),
                }
            }
            (pipeline.shutdown().await, last_pushed, superseded)
        }
    });
    let wall = started.elapsed();

    assert!(report.is_conserved(), "conservation law broken: {report}");
    assert!(report.all_joined(), "a worker was not joined: {report}");
    assert_eq!(report.produced, setup.updates, "{report}");
    assert_eq!(
        report.superseded, superseded_seen,
        "superseded vs the pushes' outcomes"
    );
    assert_eq!(
        report.processed + report.superseded,
        setup.updates,
        "an update neither written nor superseded: {report}"
    );
    assert_eq!(
        out_of_order.load(Ordering::Relaxed),
        0,
        "a key's writes out of push order"
    );
    for (key, (written, &last)) in written.iter().zip(&last_pushed).enumerate() {
        let written = written.load(Ordering::Relaxed);
        assert_eq!(
            written, last,
            "key {key}: last written {written}, last pushed {last}"
        );
    }
    Measured {
        processed: report.processed,
        superseded: report.superseded,
        wall,
    }
}
