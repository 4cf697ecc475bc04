//! The suite: every shape's variants, their row names and what each ratio is against,
//! measured interleaved within each repetition.

use std::time::Duration;

use backpressure_pipeline::{Codel, Policy, Queue};

use crate::async_lock_copy::AsyncLockQueue;
use crate::peer_channel::{AsyncChannel, Crossfire, Flume, Kanal};
use crate::report::{Base, Row, Unit};
use crate::runtime::{runtime, Runtime};
use crate::semaphore_copy::SemaphoreQueue;
use crate::shapes::{
    mem_in_child, overload_channel, overload_peer, overload_queue, overload_tokio, s1_channel,
    s1_queue, s4_channel, s4_queue, s4_tokio, s4_vecdeque, s4b_channel, s4b_queue, s4b_tokio,
    s5_batched, s5_latency, s5_pipeline, s5_pool, s5_timed, s6_channel, s6_queue,
    sd_backlog_pipeline, sd_backlog_pool, sd_stuck, MEM_BURSTS, S5B_SIZES, SD_DEADLINE, SD_GRACE,
};

// The variants' row names, shared with the chart.
pub(crate) const OURS: &str = "Queue (spin lock)";
const OURS_SYNC: &str = "Queue try_push (spin lock)";
pub(crate) const COPY: &str = "async-lock Mutex copy (design's first choice)";
const COPY_SYNC: &str = "async-lock Mutex copy try_push";
const SEM: &str = "Queue (semaphore copy)";
const SEM_SYNC: &str = "Queue try_push (semaphore copy)";
pub(crate) const CHANNEL: &str = "async-channel";
const FLUME: &str = "flume";
const KANAL: &str = "kanal";
const CROSSFIRE: &str = "crossfire";

/// A variant of a shape: its name, what its ratio is against, and one measurement.
type Variant<'a> = (&'a str, Base, Box<dyn Fn() -> f64>);

/// One run of the suite: its options and the rows measured so far.
pub(crate) struct Suite {
    pub(crate) reps: usize,
    pub(crate) only: Option<Vec<String>>,
    /// `--shape TEXT` / `--variant TEXT`: measure only the shapes / variants whose label
    /// contains TEXT (for profiling one case; ratios then may be missing).
    pub(crate) shape_filter: Option<String>,
    pub(crate) variant_filter: Option<String>,
    pub(crate) rows: Vec<Row>,
}

impl Suite {
    /// Whether `--only` (if given) names `shape`.
    fn wants(&self, shape: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|o| o.eq_ignore_ascii_case(shape)))
    }

    /// Measures `variants` of one shape, interleaved within each repetition.
    fn measure(&mut self, shape: &str, unit: Unit, mut variants: Vec<Variant<'_>>) {
        if let Some(f) = &self.shape_filter {
            if !shape.contains(f.as_str()) {
                return;
            }
        }
        if let Some(f) = &self.variant_filter {
            variants.retain(|(name, _, _)| name.contains(f.as_str()));
        }
        let mut samples = vec![Vec::with_capacity(self.reps); variants.len()];
        for _ in 0..self.reps {
            for (i, (_, _, f)) in variants.iter().enumerate() {
                samples[i].push(f());
            }
        }
        for ((variant, base, _), samples) in variants.into_iter().zip(samples) {
            self.rows.push(Row {
                shape: shape.to_string(),
                variant: variant.to_string(),
                unit,
                samples,
                base,
            });
        }
    }

    /// Measures every shape `--only` asks for, in the order of the tables.
    pub(crate) fn run_all(&mut self) {
        if self.wants("S1") {
            self.handoff();
        }
        // S2 and S3 each ask `wants` inside.
        self.overload();
        if self.wants("S3") {
            self.overload_peers();
        }
        if self.wants("S4") {
            self.pair();
        }
        if self.wants("S5") {
            self.pipeline();
        }
        if self.wants("S5T") {
            self.timed();
        }
        if self.wants("S5B") {
            self.batched();
        }
        if self.wants("S6") {
            self.many_to_many();
        }
        if self.wants("MEM") {
            self.memory();
        }
        if self.wants("SD") {
            self.shutdown();
        }
    }

    /// S1: back-pressure hand-off at capacity 16 and 1024, 1 producer → 1, 4, 16 consumers,
    /// against async-channel, as are the other peers.
    fn handoff(&mut self) {
        let ch = || Base::Variant(CHANNEL);
        for capacity in [16, 1024] {
            for consumers in [1, 4, 16] {
                self.measure(
                    &format!("S1 Block cap {capacity}, 1→{consumers}"),
                    Unit::ItemsPerSec,
                    vec![
                        (
                            OURS,
                            ch(),
                            Box::new(move || s1_queue::<Queue<u64>>(capacity, consumers)),
                        ),
                        (
                            COPY,
                            ch(),
                            Box::new(move || s1_queue::<AsyncLockQueue<u64>>(capacity, consumers)),
                        ),
                        (
                            SEM,
                            ch(),
                            Box::new(move || s1_queue::<SemaphoreQueue<u64>>(capacity, consumers)),
                        ),
                        (
                            CHANNEL,
                            Base::None,
                            Box::new(move || s1_channel::<AsyncChannel>(capacity, consumers)),
                        ),
                        (
                            FLUME,
                            ch(),
                            Box::new(move || s1_channel::<Flume>(capacity, consumers)),
                        ),
                        (
                            KANAL,
                            ch(),
                            Box::new(move || s1_channel::<Kanal>(capacity, consumers)),
                        ),
                        (
                            CROSSFIRE,
                            ch(),
                            Box::new(move || s1_channel::<Crossfire>(capacity, consumers)),
                        ),
                    ],
                );
            }
        }
    }

    /// S2 and S3: overload into capacity 16, each queue against async-channel.
    fn overload(&mut self) {
        for (shape, policy, force) in [
            ("S2", Policy::DropOldest, true),
            ("S3", Policy::DropNewest, false),
        ] {
            if !self.wants(shape) {
                continue;
            }
            let label = format!("{shape} {policy:?} cap 16, 4×1µs");
            let base_name = if force {
                "async-channel force_send"
            } else {
                "async-channel try_send"
            };
            let base = move || Base::Variant(base_name);
            let mut variants: Vec<Variant<'_>> = vec![
                (
                    OURS,
                    base(),
                    Box::new(move || overload_queue::<Queue<u64>>(policy, false)),
                ),
                (
                    OURS_SYNC,
                    base(),
                    Box::new(move || overload_queue::<Queue<u64>>(policy, true)),
                ),
                (
                    COPY,
                    base(),
                    Box::new(move || overload_queue::<AsyncLockQueue<u64>>(policy, false)),
                ),
                (
                    COPY_SYNC,
                    base(),
                    Box::new(move || overload_queue::<AsyncLockQueue<u64>>(policy, true)),
                ),
                (
                    SEM,
                    base(),
                    Box::new(move || overload_queue::<SemaphoreQueue<u64>>(policy, false)),
                ),
                (
                    SEM_SYNC,
                    base(),
                    Box::new(move || overload_queue::<SemaphoreQueue<u64>>(policy, true)),
                ),
                (
                    base_name,
                    Base::None,
                    Box::new(move || overload_channel(force)),
                ),
            ];
            if runtime() == Runtime::Tokio {
                // Its `try_push` blocks the task's thread on the async lock (`lock_blocking`):
                // on tokio that deadlocks, the fault that ruled this design out (src/queue.rs,
                // "Lock").
                variants.retain(|(name, ..)| *name != COPY_SYNC);
            }
            self.measure(&label, Unit::ItemsPerSec, variants);
        }
    }

    /// S3's peers: the shedding `try_send` of flume, kanal, crossfire and tokio mpsc.
    fn overload_peers(&mut self) {
        let vs_tokio = || Base::Variant("tokio mpsc try_send (1 consumer)");
        self.measure(
            "S3 peers: try_send into a full channel",
            Unit::ItemsPerSec,
            vec![
                (
                    OURS_SYNC,
                    vs_tokio(),
                    Box::new(|| overload_queue::<Queue<u64>>(Policy::DropNewest, true)),
                ),
                (
                    OURS,
                    vs_tokio(),
                    Box::new(|| overload_queue::<Queue<u64>>(Policy::DropNewest, false)),
                ),
                (
                    "flume try_send",
                    vs_tokio(),
                    Box::new(overload_peer::<Flume>),
                ),
                (
                    "kanal try_send",
                    vs_tokio(),
                    Box::new(overload_peer::<Kanal>),
                ),
                (
                    "crossfire try_send",
                    vs_tokio(),
                    Box::new(overload_peer::<Crossfire>),
                ),
                (
                    "tokio mpsc try_send (1 consumer)",
                    Base::None,
                    Box::new(overload_tokio),
                ),
            ],
        );
    }

    /// S4: one thread, an uncontended push + pop pair: S4a without waiting, S4b the waiting
    /// push polled once.
    fn pair(&mut self) {
        let ch = || Base::Variant(CHANNEL);
        self.measure(
            "S4a 1 thread, try_push+pop pair",
            Unit::NsPerOp,
            vec![
                (OURS, ch(), Box::new(s4_queue::<Queue<u64>>)),
                (COPY, ch(), Box::new(s4_queue::<AsyncLockQueue<u64>>)),
                (SEM, ch(), Box::new(s4_queue::<SemaphoreQueue<u64>>)),
                (CHANNEL, Base::None, Box::new(s4_channel::<AsyncChannel>)),
                (FLUME, ch(), Box::new(s4_channel::<Flume>)),
                (KANAL, ch(), Box::new(s4_channel::<Kanal>)),
                (CROSSFIRE, ch(), Box::new(s4_channel::<Crossfire>)),
                ("tokio mpsc", ch(), Box::new(s4_tokio)),
                ("VecDeque (floor)", ch(), Box::new(s4_vecdeque)),
            ],
        );
        self.measure(
            "S4b 1 thread, push().await+pop",
            Unit::NsPerOp,
            vec![
                (OURS, ch(), Box::new(s4b_queue::<Queue<u64>>)),
                (COPY, ch(), Box::new(s4b_queue::<AsyncLockQueue<u64>>)),
                (SEM, ch(), Box::new(s4b_queue::<SemaphoreQueue<u64>>)),
                (CHANNEL, Base::None, Box::new(s4b_channel::<AsyncChannel>)),
                (FLUME, ch(), Box::new(s4b_channel::<Flume>)),
                (KANAL, ch(), Box::new(s4b_channel::<Kanal>)),
                (CROSSFIRE, ch(), Box::new(s4b_channel::<Crossfire>)),
                ("tokio mpsc", ch(), Box::new(s4b_tokio)),
            ],
        );
    }

    /// S5: the whole pipeline vs a hand-written pool.
    fn pipeline(&mut self) {
        self.measure(
            "S5 Pipeline Block cap 1024, 4×1µs",
            Unit::ItemsPerSec,
            vec![
                (
                    "Pipeline",
                    Base::Variant("hand-written pool"),
                    Box::new(s5_pipeline),
                ),
                (
                    "hand-written pool",
                    Base::None,
                    Box::new(s5_pool::<AsyncChannel>),
                ),
                (
                    "hand-written pool (flume)",
                    Base::Variant("hand-written pool"),
                    Box::new(s5_pool::<Flume>),
                ),
            ],
        );
    }

    /// S5T: the pipeline with each time-based feature vs without one.
    fn timed(&mut self) {
        self.measure(
            "S5T Pipeline with time features, cap 1024, 4×1µs",
            Unit::ItemsPerSec,
            vec![
                (
                    "measure_queue_delay",
                    Base::Variant("Pipeline (no time feature)"),
                    Box::new(|| s5_timed(|b| b.measure_queue_delay())),
                ),
                (
                    "max_age 1 h",
                    Base::Variant("Pipeline (no time feature)"),
                    Box::new(|| s5_timed(|b| b.max_age(Duration::from_secs(3600)))),
                ),
                (
                    "codel 1 s / 10 s, lifo",
                    Base::Variant("Pipeline (no time feature)"),
                    Box::new(|| {
                        s5_timed(|b| {
                            b.codel(
                                Codel::new(Duration::from_secs(1), Duration::from_secs(10))
                                    .lifo(true),
                            )
                        })
                    }),
                ),
                (
                    "Pipeline (no time feature)",
                    Base::None,
                    Box::new(s5_pipeline),
                ),
            ],
        );
    }

    /// S5B and S5L: batch workers, their throughput and an item's latency.
    fn batched(&mut self) {
        let mut variants: Vec<Variant<'_>> = Vec::new();
        for (name, size) in S5B_SIZES {
            variants.push((
                name,
                Base::Variant("hand-written pool"),
                Box::new(move || s5_batched(size)),
            ));
        }
        variants.push((
            "hand-written pool",
            Base::None,
            Box::new(s5_pool::<AsyncChannel>),
        ));
        self.measure(
            "S5B Pipeline batched, max_wait 1 ms, cap 1024, 4×1µs/item",
            Unit::ItemsPerSec,
            variants,
        );
        for (_, size) in S5B_SIZES {
            self.measure(
                &format!("S5L latency push→start, batches of {size}, 1 item/10µs"),
                Unit::Us,
                vec![
                    ("p50", Base::None, Box::new(move || s5_latency(size, 0.5))),
                    ("p99", Base::None, Box::new(move || s5_latency(size, 0.99))),
                ],
            );
        }
    }

    /// S6: 4 producers → 4 consumers, each variant checked for exactly-once delivery.
    fn many_to_many(&mut self) {
        let ch = || Base::Variant(CHANNEL);
        self.measure(
            "S6 Block cap 1024, 4→4",
            Unit::ItemsPerSec,
            vec![
                (OURS, ch(), Box::new(s6_queue::<Queue<u64>>)),
                (CHANNEL, Base::None, Box::new(s6_channel::<AsyncChannel>)),
                (FLUME, ch(), Box::new(s6_channel::<Flume>)),
                (KANAL, ch(), Box::new(s6_channel::<Kanal>)),
                (CROSSFIRE, ch(), Box::new(s6_channel::<Crossfire>)),
            ],
        );
    }

    /// MEM: peak RSS of each burst, each in its own process.
    fn memory(&mut self) {
        for n in MEM_BURSTS {
            self.measure(
                &format!("MEM burst {}M, slow workers", n / 1_000_000),
                Unit::MiB,
                vec![
                    (
                        "Pipeline DropOldest 1024",
                        Base::Variant("unbounded async-channel"),
                        Box::new(move || mem_in_child("pipeline", n)),
                    ),
                    (
                        "unbounded async-channel",
                        Base::None,
                        Box::new(move || mem_in_child("channel", n)),
                    ),
                ],
            );
        }
    }

    /// SD: shutdown with a full backlog, and with stuck workers.
    fn shutdown(&mut self) {
        self.measure(
            "SD backlog 1024 full, 4×1µs",
            Unit::Ms,
            vec![
                (
                    "Pipeline shutdown()",
                    Base::Variant("pool close+join"),
                    Box::new(sd_backlog_pipeline),
                ),
                ("pool close+join", Base::None, Box::new(sd_backlog_pool)),
            ],
        );
        let budget = (SD_DEADLINE + SD_GRACE).as_secs_f64() * 1e3;
        self.measure(
            "SD 4 stuck, deadline 50 grace 10",
            Unit::Ms,
            vec![
                (
                    "Pipeline shutdown()",
                    Base::Fixed("deadline", SD_DEADLINE.as_secs_f64() * 1e3),
                    Box::new(sd_stuck),
                ),
                ("(deadline + grace)", Base::None, Box::new(move || budget)),
            ],
        );
    }
}
