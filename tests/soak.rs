//! Soak: many runs of several producers pushing through a pipeline with a random policy,
//! capacity, worker count, worker latency, deadline and external cancellation, on every
//! runtime. After every run: the conservation law, the producers' own counts against the
//! report, every worker joined, and (by drop counters) nothing outliving the pipeline.
//!
//! Ignored by default; run it in release:
//!
//! ```text
//! cargo test --release --all-features --test soak -- --ignored --nocapture
//! SOAK_ITEMS=5000000 SOAK_SEED=42 cargo test --release --all-features --test soak -- --ignored --nocapture
//! ```
//!
//! `SOAK_ITEMS` is the number of pushes per runtime (default 200 000). `SOAK_SEED` replays
//! the random choices of a run (the seed is printed); the interleavings are the runtime's.
//! `SOAK_VERBOSE` prints each run's configuration. Each runtime's soak must end within the
//! harness's watchdog (120 s): at the default size it takes about a second.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ::smol::future::yield_now;
use backpressure_pipeline::{
    CancellationToken, Codel, Pipeline, PipelineBuilder, Policy, PushOutcome, StopCause,
};
use common::{Live, Sp, Tracked};

/// xorshift64*: cheap, and good enough to pick configurations and latencies.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // xorshift never leaves zero; any other seed is fine.
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..n` for `n` far below 2^64.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<T: Copy>(&mut self, choices: &[T]) -> T {
        choices[self.below(choices.len() as u64) as usize]
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

fn seed() -> u64 {
    env_u64("SOAK_SEED").unwrap_or_else(|| {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        now.as_nanos() as u64
    })
}

/// One run's random configuration.
#[derive(Debug, Clone, Copy)]
struct Config {
    policy: Policy,
    capacity: usize,
    workers: usize,
    producers: u64,
    items: u64,
    /// The push after which a producer cancels the parent token, if any.
    cancel_at: Option<u64>,
    deadline: Duration,
    grace: Duration,
    unresponsive_after: Duration,
    /// Seeds each item's latency.
    latency_seed: u64,
    /// Shedding by queue delay at the exit, if any (on the real clock: some items expire).
    by_delay: ByDelay,
    /// Keyed lanes, if any.
    keys: Keys,
}

/// A run's keyed lanes: the key is the item's id modulo `modulus`.
#[derive(Debug, Clone, Copy)]
enum Keys {
    None,
    PerKey { modulus: u64, per_key: usize },
    Coalesce { modulus: u64 },
}

impl Keys {
    fn apply(self, builder: PipelineBuilder<(u64, Tracked)>) -> PipelineBuilder<(u64, Tracked)> {
        match self {
            Keys::None => builder,
            Keys::PerKey { modulus, per_key } => builder
                .key_by(move |item: &(u64, Tracked)| item.0 % modulus)
                .per_key(per_key),
            Keys::Coalesce { modulus } => builder
                .key_by(move |item: &(u64, Tracked)| item.0 % modulus)
                .coalesce(),
        }
    }
}

/// A run's shedding by queue delay.
#[derive(Debug, Clone, Copy)]
enum ByDelay {
    None,
    MaxAge(Duration),
    Codel { lifo: bool },
}

impl ByDelay {
    fn apply<T: Send + 'static>(self, builder: PipelineBuilder<T>) -> PipelineBuilder<T> {
        match self {
            ByDelay::None => builder,
            ByDelay::MaxAge(age) => builder.max_age(age),
            ByDelay::Codel { lifo } => builder.codel(
                Codel::new(Duration::from_micros(20), Duration::from_micros(200)).lifo(lifo),
            ),
        }
    }
}

impl Config {
    fn random(rng: &mut Rng, items: u64) -> Config {
        Config {
            policy: rng.pick(&[Policy::DropNewest, Policy::DropOldest, Policy::Block]),
            capacity: rng.pick(&[1, 2, 8, 64, 1024]),
            workers: 1 + rng.below(8) as usize,
            producers: 1 + rng.below(4),
            items,
            cancel_at: (rng.below(2) == 0).then(|| rng.below(items)),
            // Mostly a full drain; sometimes the deadline cuts it short.
            deadline: rng.pick(&[
                Duration::MAX,
                Duration::MAX,
                Duration::ZERO,
                Duration::from_millis(1),
            ]),
            grace: rng.pick(&[Duration::ZERO, Duration::from_millis(1)]),
            // Zero names aborted workers not yet polled again unresponsive, while they may
            // still be taking an item: the report must stay exact all the same.
            unresponsive_after: rng.pick(&[Duration::ZERO, Duration::from_secs(60)]),
            latency_seed: rng.next(),
            by_delay: match rng.below(6) {
                0 => ByDelay::MaxAge(Duration::from_micros(1 + rng.below(200))),
                1 => ByDelay::Codel {
                    lifo: rng.below(2) == 0,
                },
                _ => ByDelay::None,
            },
            keys: match rng.below(6) {
                0 | 1 => Keys::PerKey {
                    modulus: rng.pick(&[1, 7, 1000]),
                    per_key: 1 + rng.below(3) as usize,
                },
                2 => Keys::Coalesce {
                    modulus: rng.pick(&[1, 7, 1000]),
                },
                _ => Keys::None,
            },
        }
    }
}

/// What one producer saw.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    produced: u64,
    dropped: u64,
    superseded: u64,
    closed: u64,
}

/// A worker's latency for item `id`: mostly none, sometimes a few yields, rarely a short
/// sleep on the runtime's timer (the work a slow worker does).
async fn latency(sp: &Sp, seed: u64, id: u64) {
    let mut rng = Rng::new(seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    match rng.below(1000) {
        0..=899 => {}
        900..=997 => {
            for _ in 0..1 + rng.below(3) {
                yield_now().await;
            }
        }
        _ => sp.sleep(Duration::from_micros(10 + rng.below(90))).await,
    }
}

/// One producer of a run.
struct Producer {
    id: u64,
    share: u64,
    producer: backpressure_pipeline::Producer<(u64, Tracked)>,
    live: Live,
    app: CancellationToken,
    /// Pushes so far, across the run's producers.
    pushes: Arc<AtomicU64>,
    cancel_at: Option<u64>,
}

impl Producer {
    /// Counts `outcome`; returns whether to go on.
    fn count(&self, seen: &mut Seen, outcome: PushOutcome<(u64, Tracked)>) -> bool {
        match outcome {
            PushOutcome::Accepted => seen.produced += 1,
            PushOutcome::Shed(_) | PushOutcome::Evicted(_) => {
                seen.produced += 1;
                seen.dropped += 1;
            }
            PushOutcome::Closed(_) => {
                seen.closed += 1;
                return false;
            }
            PushOutcome::Full(_) => unreachable!("the producers wait for room"),
            PushOutcome::Superseded(_) => {
                seen.produced += 1;
                seen.superseded += 1;
            }
        }
        // The external cancel, at a random push of the run.
        if Some(self.pushes.fetch_add(1, Ordering::Relaxed)) == self.cancel_at {
            self.app.cancel();
        }
        true
    }

    async fn run_async(self) -> Seen {
        let mut seen = Seen::default();
        for i in 0..self.share {
            let outcome = self
                .producer
                .push(((self.id << 48) | i, self.live.track()))
                .await;
            if !self.count(&mut seen, outcome) {
                break;
            }
            if i % 32 == 31 {
                yield_now().await;
            }
        }
        seen
    }

    fn run_sync(self) -> Seen {
        let mut seen = Seen::default();
        for i in 0..self.share {
            let mut item = ((self.id << 48) | i, self.live.track());
            // Under Block, a synchronous producer waits for room its own way.
            let outcome = loop {
                match self.producer.try_push(item) {
                    PushOutcome::Full(back) => {
                        item = back;
                        thread::yield_now();
                    }
                    outcome => break outcome,
                }
            };
            if !self.count(&mut seen, outcome) {
                break;
            }
        }
        seen
    }
}

/// The totals of one runtime's soak.
#[derive(Debug, Default)]
struct Totals {
    runs: u64,
    pushes: u64,
    produced: u64,
    processed: u64,
    dropped: u64,
    expired: u64,
    superseded: u64,
    abandoned: u64,
    cancelled_runs: u64,
    unresponsive_runs: u64,
}

async fn run_once(sp: &Sp, config: Config, rng: &mut Rng, totals: &mut Totals) {
    let live = Live::new();
    let app = CancellationToken::new();
    let processed = Arc::new(AtomicU64::new(0));
    let expired = Arc::new(AtomicU64::new(0));
    let builder = config
        .keys
        .apply(Pipeline::builder(config.capacity, config.policy));
    let pipeline = config
        .by_delay
        .apply(builder)
        .on_expired({
            let expired = expired.clone();
            move |(_, item): (u64, Tracked), _| {
                drop(item);
                expired.fetch_add(1, Ordering::Relaxed);
            }
        })
        .workers(config.workers)
        .parent(&app)
        .deadline(config.deadline)
        .grace(config.grace)
        .unresponsive_after(config.unresponsive_after)
        .spawn(sp.clone(), {
            let (guard, processed, sp) = (live.track(), processed.clone(), sp.clone());
            move |(id, item): (u64, Tracked)| {
                let _ = &guard;
                let (processed, sp) = (processed.clone(), sp.clone());
                async move {
                    latency(&sp, config.latency_seed, id).await;
                    drop(item);
                    processed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .unwrap();
    let pushes = Arc::new(AtomicU64::new(0));
    // Producers are tasks pushing with `push`, or, sometimes, threads pushing with
    // `try_push`, the synchronous path. (A task must not call `try_push` while threads
    // contend for the queue: see `try_push_from_a_task_beside_a_sync_producer` in
    // `tests/faults.rs`; this soak found it.)
    let producers: Vec<_> = (0..config.producers)
        .map(|p| {
            let shared = Producer {
                id: p,
                share: config.items / config.producers
                    + u64::from(p < config.items % config.producers),
                producer: pipeline.producer(),
                live: live.clone(),
                app: app.clone(),
                pushes: pushes.clone(),
                cancel_at: config.cancel_at,
            };
            if rng.below(4) == 0 {
                let (tx, rx) = futures_channel::oneshot::channel();
                thread::spawn(move || {
                    let _ = tx.send(shared.run_sync());
                });
                rx
            } else {
                common::spawn(sp, shared.run_async())
            }
        })
        .collect();
    let mut all = Seen::default();
    for producer in producers {
        let seen = producer.await.expect("a producer panicked");
        all.produced += seen.produced;
        all.dropped += seen.dropped;
        all.superseded += seen.superseded;
        all.closed += seen.closed;
    }
    let report = pipeline.shutdown().await;
    let context = format!("{config:?}: {report}");
    assert!(report.is_conserved(), "the law: {context}");
    assert_eq!(report.panicked, 0, "{context}");
    // Every push is counted in the report or came back Closed.
    assert_eq!(
        (report.produced, report.dropped, report.superseded),
        (all.produced, all.dropped, all.superseded),
        "{context}"
    );
    if config.unresponsive_after > Duration::ZERO {
        // Aborted workers end at their next poll, well within a minute.
        assert!(report.all_joined(), "{context}");
    }
    if config.policy == Policy::Block {
        assert_eq!(report.dropped, 0, "{context}");
    }
    if app.is_cancelled() {
        assert_eq!(report.cause, StopCause::External, "{context}");
        totals.cancelled_runs += 1;
    } else {
        assert_eq!(report.cause, StopCause::Shutdown, "{context}");
        assert_eq!(all.closed, 0, "{context}");
        assert_eq!(all.produced, config.items, "{context}");
    }
    if config.deadline == Duration::MAX {
        assert_eq!(report.abandoned, 0, "{context}");
    }
    if let ByDelay::None = config.by_delay {
        assert_eq!(report.expired, 0, "{context}");
    }
    if !matches!(config.keys, Keys::Coalesce { .. }) {
        assert_eq!(report.superseded, 0, "{context}");
    }
    drop(pipeline);
    // No worker, item or closure outlives the pipeline.
    live.all_dropped().await;
    // Counted by the workers themselves, now that all have ended: a worker named
    // unresponsive may have finished its item after the report.
    let finished = processed.load(Ordering::Relaxed);
    // Each expired item went to the hook, before its worker went on.
    if report.all_joined() {
        assert_eq!(report.expired, expired.load(Ordering::Relaxed), "{context}");
    }
    if report.all_joined() {
        assert_eq!(report.processed, finished, "{context}");
    } else {
        assert!(report.processed <= finished, "{context}");
        totals.unresponsive_runs += 1;
    }
    totals.runs += 1;
    totals.pushes += all.produced + all.closed;
    totals.produced += report.produced;
    totals.processed += report.processed;
    totals.dropped += report.dropped;
    totals.expired += report.expired;
    totals.superseded += report.superseded;
    totals.abandoned += report.abandoned;
}

async fn soak(sp: Sp) {
    let items = env_u64("SOAK_ITEMS").unwrap_or(200_000);
    let seed = seed();
    let runtime = thread::current().name().unwrap_or("?").to_owned();
    println!("soak on {runtime}: {items} items, SOAK_SEED={seed}");
    let mut rng = Rng::new(seed);
    let mut totals = Totals::default();
    let started = Instant::now();
    // Until the pushes reach the target: a cancelled run pushes less than it planned.
    while totals.pushes < items {
        // Runs of random length, up to a twentieth of the total.
        let run_items = (1 + rng.below((items / 20).max(1))).min(items - totals.pushes);
        let config = Config::random(&mut rng, run_items);
        if std::env::var_os("SOAK_VERBOSE").is_some() {
            println!("soak on {runtime}: run {}: {config:?}", totals.runs);
        }
        run_once(&sp, config, &mut rng, &mut totals).await;
    }
    let elapsed = started.elapsed();
    println!(
        "soak on {runtime}: {} runs ({} cancelled, {} with workers named unresponsive), {} \
         pushes, {} produced = {} processed + {} dropped + {} expired + {} superseded + {} \
         abandoned; all \
         checked in \
         {elapsed:.2?}, {:.0} items/s",
        totals.runs,
        totals.cancelled_runs,
        totals.unresponsive_runs,
        totals.pushes,
        totals.produced,
        totals.processed,
        totals.dropped,
        totals.expired,
        totals.superseded,
        totals.abandoned,
        totals.pushes as f64 / elapsed.as_secs_f64(),
    );
}

/// `on_every_runtime!`, with the tests ignored.
macro_rules! soak_on {
    ($($module:ident = $runtime:ident if $feature:literal),* $(,)?) => {
        $(
            #[cfg(feature = $feature)]
            mod $module {
                #[test]
                #[ignore = "soak: run in release with --ignored"]
                fn soak() {
                    crate::common::run(crate::common::Runtime::$runtime, super::soak);
                }
            }
        )*
    };
}

soak_on!(
    smol = Smol if "smol",
    executor = Executor if "smol",
    tokio_mt = TokioMt if "tokio",
    tokio_ct = TokioCt if "tokio",
    async_std = AsyncStd if "async-std",
);
