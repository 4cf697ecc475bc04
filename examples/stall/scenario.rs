//! One run of one mode at one capacity: warm up, stall the workers, resume, record.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use async_executor::Executor;
use backpressure_pipeline::{
    Codel, ExecutorSpawner, Expired, Pipeline, Policy, Producer, PushOutcome, Report,
};
use event_listener::Event;
use smol::Timer;

/// Threads running the one executor: the machine the numbers were taken on has 2 cores.
pub(crate) const EXECUTOR_THREADS: usize = 2;

/// How the exit of the queue treats an old item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Plain FIFO; `measure_queue_delay()` only stamps and measures.
    Fifo,
    /// `max_age`: an item older than this when a worker would take it is shed.
    Ttl,
    /// `codel(Codel::new(target, interval))`.
    Codel,
    /// The same CoDel, serving the newest item first while it is dropping.
    CodelLifo,
}

impl Mode {
    pub(crate) const ALL: [Mode; 4] = [Mode::Fifo, Mode::Ttl, Mode::Codel, Mode::CodelLifo];
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Fifo => "FIFO",
            Mode::Ttl => "TTL",
            Mode::Codel => "CoDel",
            Mode::CodelLifo => "CoDel+LIFO",
        })
    }
}

/// What one run needs to know; every duration is wall-clock time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Setup {
    pub(crate) mode: Mode,
    pub(crate) capacity: usize,
    pub(crate) workers: usize,
    /// Each item's work: a timer sleep of this long.
    pub(crate) service: Duration,
    /// Items pushed per second, from the start to the end of the run.
    pub(crate) rate: f64,
    /// Before the stall: the workers run, the queue fills, CoDel settles.
    pub(crate) warmup: Duration,
    pub(crate) stall: Duration,
    /// After the resume, until the producer stops.
    pub(crate) after: Duration,
    pub(crate) max_age: Duration,
    pub(crate) codel: (Duration, Duration),
}

/// One served item's three stamps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Served {
    pub(crate) pushed: Instant,
    /// When its work began: after the worker passed the gate.
    pub(crate) started: Instant,
    pub(crate) finished: Instant,
}

/// What a run leaves behind: the stamps and the pipeline's own counts.
#[derive(Debug)]
pub(crate) struct Trace {
    pub(crate) served: Vec<Served>,
    pub(crate) resume: Instant,
    pub(crate) report: Report,
    /// Items the producer saw shed at the door (`PushOutcome::Shed`).
    pub(crate) shed_seen: u64,
    /// Items handed to `on_expired`.
    pub(crate) expired_seen: u64,
    /// The pipeline's own p99 queue delay over the whole run (log2 bucket upper bound).
    pub(crate) library_p99: Option<Duration>,
    /// `Stats::oldest_age` when the producer stopped: how stale the queue's head was.
    pub(crate) oldest_at_end: Option<Duration>,
}

/// An item: only its push stamp.
#[derive(Debug)]
struct Job {
    pushed: Instant,
}

/// The stall: workers wait here while it is shut.
///
/// A worker that finds the gate open goes on without touching the event; one that finds it
/// shut registers a listener and checks again before waiting, so an `open` between the first
/// check and the registration is not missed.
#[derive(Debug, Default)]
struct Gate {
    shut: AtomicBool,
    opened: Event,
}

impl Gate {
    fn shut(&self) {
        // Relaxed: the workers need only see it eventually; the stall is measured from the
        // producer's side, not from the instant a worker notices.
        self.shut.store(true, Ordering::Relaxed);
    }

    fn open(&self) {
        // SeqCst, paired with `pass`: the store is ordered before the notification, and a
        // worker's listener registration before its second load, so one of the two sees it.
        self.shut.store(false, Ordering::SeqCst);
        self.opened.notify(usize::MAX);
    }

    async fn pass(&self) {
        // Terminates: each round either returns or waits for an `open`, and after an `open`
        // the next load sees the gate open unless it was shut again.
        loop {
            if !self.shut.load(Ordering::SeqCst) {
                return;
            }
            let listener = self.opened.listen();
            if !self.shut.load(Ordering::SeqCst) {
                return;
            }
            listener.await;
        }
    }
}

/// One executor for the whole process, run on [`EXECUTOR_THREADS`] threads.
pub(crate) fn executor() -> &'static Arc<Executor<'static>> {
    static EX: OnceLock<Arc<Executor<'static>>> = OnceLock::new();
    EX.get_or_init(|| {
        let ex = Arc::new(Executor::new());
        for i in 0..EXECUTOR_THREADS {
            let ex = ex.clone();
            thread::Builder::new()
                .name(format!("ex-{i}"))
                .spawn(move || smol::block_on(ex.run(std::future::pending::<()>())))
                .expect("spawn an executor thread");
        }
        ex
    })
}

/// Runs one scenario on the executor and waits for it from this thread.
pub(crate) fn run(setup: Setup) -> Trace {
    smol::block_on(executor().spawn(scenario(setup)))
}

async fn scenario(setup: Setup) -> Trace {
    let spawner = ExecutorSpawner::new(executor().clone());
    let gate = Arc::new(Gate::default());
    let served = Arc::new(Mutex::new(Vec::with_capacity(estimate(&setup))));
    let expired = Arc::new(AtomicU64::new(0));

    let builder = Pipeline::builder(setup.capacity, Policy::DropNewest)
        .workers(setup.workers)
        // At the end, stop at once: the backlog left is not part of the measurement.
        .deadline(Duration::ZERO)
        .grace(Duration::from_millis(5));
    let builder = match setup.mode {
        Mode::Fifo => builder.measure_queue_delay(),
        Mode::Ttl => builder.max_age(setup.max_age),
        Mode::Codel => builder.codel(Codel::new(setup.codel.0, setup.codel.1)),
        Mode::CodelLifo => builder.codel(Codel::new(setup.codel.0, setup.codel.1).lifo(true)),
    };
    let builder = builder.on_expired({
        let expired = expired.clone();
        move |_job: Job, _why: Expired| {
            // Relaxed: a count read after shutdown has joined every worker.
            expired.fetch_add(1, Ordering::Relaxed);
        }
    });
    let pipeline = builder
        .spawn(spawner, {
            let gate = gate.clone();
            let served = served.clone();
            let service = setup.service;
            move |job: Job| {
                let gate = gate.clone();
                let served = served.clone();
                async move {
                    gate.pass().await;
                    let started = Instant::now();
                    Timer::after(service).await;
                    let finished = Instant::now();
                    served
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(Served {
                            pushed: job.pushed,
                            started,
                            finished,
                        });
                }
            }
        })
        .expect("start the pipeline");

    // The pipeline's clock (`Spawner::now`) is `Instant::now()` for this spawner, so the
    // example's stamps and the pipeline's ages are on one clock.
    let start = Instant::now();
    let stall_at = start + setup.warmup;
    let resume_at = stall_at + setup.stall;
    let end = resume_at + setup.after;
    let producer = executor().spawn(produce(pipeline.producer(), setup.rate, start, end));

    sleep_until(stall_at).await;
    gate.shut();
    sleep_until(resume_at).await;
    let resume = Instant::now();
    gate.open();
    let shed_seen = producer.await;

    let stats = pipeline.stats();
    let library_p99 = stats.queue_delay.and_then(|h| h.quantile(0.99));
    let report = pipeline.shutdown().await;
    let served = std::mem::take(&mut *served.lock().unwrap_or_else(PoisonError::into_inner));
    Trace {
        served,
        resume,
        report,
        shed_seen,
        // Relaxed: every worker, and so every hook call, has been joined.
        expired_seen: expired.load(Ordering::Relaxed),
        library_p99,
        oldest_at_end: stats.oldest_age,
    }
}

/// Pushes at `rate` items per second from `start` until `end`, in small bursts: each tick
/// pushes what the elapsed time calls for, so a late timer costs a bigger burst, not a lower
/// rate. Returns the number shed at the door.
async fn produce(producer: Producer<Job>, rate: f64, start: Instant, end: Instant) -> u64 {
    let tick = Duration::from_millis(1);
    let mut pushed = 0_u64;
    let mut shed = 0_u64;
    loop {
        let now = Instant::now();
        if now >= end {
            return shed;
        }
        let due = (rate * (now - start).as_secs_f64()) as u64;
        while pushed < due {
            // DropNewest: `try_push` never waits; a full queue hands the new item back.
            match producer.try_push(Job {
                pushed: Instant::now(),
            }) {
                PushOutcome::Accepted => {}
                PushOutcome::Shed(_) => shed += 1,
                other => panic!("unexpected push outcome {other:?}"),
            }
            pushed += 1;
        }
        Timer::after(tick).await;
    }
}

async fn sleep_until(at: Instant) {
    Timer::at(at).await;
}

/// Room for every item the workers could finish in the run, so the log never reallocates
/// while they write to it.
fn estimate(setup: &Setup) -> usize {
    let total = setup.warmup + setup.stall + setup.after;
    let per_worker = total.as_secs_f64() / setup.service.as_secs_f64();
    (per_worker * setup.workers as f64 * 1.2) as usize + 1024
}
