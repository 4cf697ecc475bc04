//! Every way a pipeline stops releases every waiter at once, on every runtime: `shutdown`, a
//! cancelled parent token, `OnPanic::StopPipeline` and dropping the pipeline, each with a
//! producer parked on a full `Block` queue and with workers parked on an empty one. Then
//! the other faults of the "every waiter released, every item accounted for" issue that
//! need a pipeline: an item whose `Drop` panics at shutdown, a zero deadline on an idle
//! pipeline, and a producer overloading the workers on a one-thread runtime.

mod common;

use std::future::pending;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use backpressure_pipeline::{CancellationToken, OnPanic, Pipeline, Policy, PushOutcome, StopCause};
use common::{Live, Sp};

/// How a test stops its pipeline.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Shutdown,
    /// The parent is a `CancellationToken`, cancelled.
    Parent,
    /// The parent is a future (a oneshot's receiver), completed.
    ParentFuture,
    Panic,
    Drop,
}

const STOPS: [Stop; 5] = [
    Stop::Shutdown,
    Stop::Parent,
    Stop::ParentFuture,
    Stop::Panic,
    Stop::Drop,
];

/// What a worker does with an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    /// Waits on the gate forever (the gate never opens in these tests).
    Stick,
    /// Waits on the trigger, then panics.
    PanicOnTrigger,
    /// Nothing.
    Quick,
}

struct Rig {
    pipeline: Option<Pipeline<Job>>,
    parent: CancellationToken,
    /// Completes the parent future, when the parent is one.
    parent_future: Option<futures_channel::oneshot::Sender<()>>,
    trigger: CancellationToken,
    /// Alive while a worker can still run: the work closure holds it.
    workers_alive: Live,
}

fn rig(sp: Sp, capacity: usize, workers: usize, stop: Stop) -> Rig {
    let parent = CancellationToken::new();
    let trigger = CancellationToken::new();
    let workers_alive = Live::new();
    let builder = Pipeline::builder(capacity, Policy::Block).workers(workers);
    let (builder, parent_future) = if let Stop::ParentFuture = stop {
        let (complete, completed) = futures_channel::oneshot::channel::<()>();
        let builder = builder.parent(async move {
            let _ = completed.await;
        });
        (builder, Some(complete))
    } else {
        (builder.parent(&parent), None)
    };
    let pipeline = builder
        .on_panic(OnPanic::StopPipeline)
        .deadline(Duration::ZERO)
        .grace(Duration::ZERO)
        .unresponsive_after(Duration::from_millis(50))
        .spawn(sp, {
            let trigger = trigger.clone();
            let alive = workers_alive.track();
            move |job: Job| {
                let _ = &alive;
                let trigger = trigger.clone();
                async move {
                    match job {
                        Job::Stick => pending::<()>().await,
                        Job::PanicOnTrigger => {
                            trigger.cancelled().await;
                            panic!("the job panics, as asked");
                        }
                        Job::Quick => {}
                    }
                }
            }
        })
        .unwrap();
    Rig {
        pipeline: Some(pipeline),
        parent,
        parent_future,
        trigger,
        workers_alive,
    }
}

impl Rig {
    fn pipeline(&self) -> &Pipeline<Job> {
        self.pipeline.as_ref().expect("not dropped yet")
    }

    /// Pushes a job and waits until a worker has taken it.
    async fn hand_to_a_worker(&self, job: Job) {
        assert!(self.pipeline().push(job).await.is_accepted());
        // Terminates: a worker is idle and takes it (the watchdog bounds a bug).
        while !self.pipeline().is_empty() {
            common::yield_now().await;
        }
    }

    async fn stop(&mut self, stop: Stop) {
        match stop {
            Stop::Shutdown => {
                // The stop itself must release the waiters: check them before awaiting it.
                let mut shutdown = Box::pin(self.pipeline().shutdown());
                let _ = futures_util::poll!(shutdown.as_mut());
                drop(shutdown);
            }
            Stop::Parent => {
                self.parent.cancel();
            }
            Stop::ParentFuture => {
                let complete = self.parent_future.take().expect("a future parent");
                complete.send(()).expect("the watcher waits for it");
            }
            Stop::Panic => {
                self.trigger.cancel();
            }
            Stop::Drop => drop(self.pipeline.take()),
        }
    }
}

async fn each_stop_releases_a_producer_parked_on_a_full_queue(sp: Sp) {
    for stop in STOPS {
        // Two workers hold a job each (one sticks, one panics on the trigger); the queue
        // holds a third; a producer waits for room that never comes from the workers.
        let mut rig = rig(sp.clone(), 1, 2, stop);
        rig.hand_to_a_worker(Job::Stick).await;
        rig.hand_to_a_worker(Job::PanicOnTrigger).await;
        assert!(rig.pipeline().push(Job::Quick).await.is_accepted());
        let producer = rig.pipeline().producer();
        let parked = common::spawn(&sp, async move { producer.push(Job::Quick).await });
        // Let the producer park (it cannot complete: the queue is full).
        for _ in 0..10 {
            common::yield_now().await;
        }
        rig.stop(stop).await;
        // Released by the stop itself: no worker pops, no later push looks.
        let outcome = parked.await.expect("the producer's task ran to the end");
        assert_eq!(outcome, PushOutcome::Closed(Job::Quick), "{stop:?}");
        if let Some(pipeline) = rig.pipeline.take() {
            let report = pipeline.shutdown().await;
            assert!(report.is_conserved(), "{stop:?}: {report}");
            let cause = match stop {
                Stop::Shutdown => StopCause::Shutdown,
                Stop::Parent | Stop::ParentFuture => StopCause::External,
                Stop::Panic => StopCause::Panic,
                Stop::Drop => unreachable!(),
            };
            assert_eq!(report.cause, cause, "{stop:?}");
        }
    }
}

async fn each_stop_releases_workers_parked_on_an_empty_queue(sp: Sp) {
    for stop in STOPS {
        let mut rig = rig(sp.clone(), 4, 3, stop);
        if let Stop::Panic = stop {
            // One worker waits to panic; the other two wait on the empty queue.
            rig.hand_to_a_worker(Job::PanicOnTrigger).await;
        }
        rig.stop(stop).await;
        // Every worker ends, without `shutdown` being awaited: the idle ones were woken by
        // the stop (the closure they share is dropped when the last one ends).
        rig.workers_alive.all_dropped().await;
        if let Some(pipeline) = rig.pipeline.take() {
            let report = pipeline.shutdown().await;
            assert!(
                report.is_conserved() && report.all_joined(),
                "{stop:?}: {report}"
            );
            assert_eq!(report.workers_aborted, 0, "{stop:?}: {report}");
        }
    }
}

async fn a_push_racing_shutdown_never_leaks(sp: Sp) {
    // The input: `builder(1, Block).deadline(0)`, one worker stuck, the queue full, and a
    // producer's `push(x).await` racing `shutdown()`: the push returns `Closed(x)`.
    let rounds = common::iterations(50);
    for round in 0..rounds {
        let rig = rig(sp.clone(), 1, 1, Stop::Shutdown);
        rig.hand_to_a_worker(Job::Stick).await;
        assert!(rig.pipeline().push(Job::Quick).await.is_accepted());
        let producer = rig.pipeline().producer();
        let racing = common::spawn(&sp, async move { producer.push(Job::Quick).await });
        if round % 2 == 0 {
            common::yield_now().await;
        }
        let report = rig.pipeline().shutdown().await;
        let outcome = racing.await.expect("the producer's task ran to the end");
        assert_eq!(outcome, PushOutcome::Closed(Job::Quick), "round {round}");
        assert_eq!((report.produced, report.abandoned), (2, 2), "{report}");
        assert!(report.is_conserved(), "{report}");
    }
}

/// An item whose `Drop` panics when asked to.
#[derive(Debug)]
struct Fragile {
    id: u32,
    panic_on_drop: bool,
}

impl Drop for Fragile {
    fn drop(&mut self) {
        if self.panic_on_drop && !std::thread::panicking() {
            panic!("item {} panics in its Drop", self.id);
        }
    }
}

fn fragile_pipeline(sp: Sp) -> Pipeline<Fragile> {
    Pipeline::builder(4, Policy::Block)
        .deadline(Duration::ZERO)
        .grace(Duration::ZERO)
        .spawn(sp, |item: Fragile| async move {
            if item.id == 0 {
                pending::<()>().await;
            }
        })
        .unwrap()
}

/// Fills a fragile pipeline: item 0 parked in the worker forever, item 1 (whose `Drop`
/// panics) and item 2 in the queue.
async fn fill_fragile(pipeline: &Pipeline<Fragile>) {
    let item = |id, panic_on_drop| Fragile { id, panic_on_drop };
    assert!(pipeline.push(item(0, false)).await.is_accepted());
    while !pipeline.is_empty() {
        common::yield_now().await;
    }
    assert!(pipeline.push(item(1, true)).await.is_accepted());
    assert!(pipeline.push(item(2, false)).await.is_accepted());
}

async fn a_panicking_drop_at_shutdown_keeps_the_law(sp: Sp) {
    // Shutdown runs no leftover's `Drop`: the items come back whole, in queue order.
    let pipeline = fragile_pipeline(sp);
    fill_fragile(&pipeline).await;
    let report = pipeline.shutdown().await;
    assert_eq!((report.produced, report.abandoned), (3, 3), "{report}");
    assert_eq!(
        (report.handed_back, report.lost_in_flight),
        (2, 1),
        "{report}"
    );
    assert!(report.is_conserved(), "{report}");
    let mut leftovers = pipeline.take_leftovers();
    assert_eq!(leftovers.iter().map(|i| i.id).collect::<Vec<_>>(), [1, 2]);
    leftovers[0].panic_on_drop = false;
    drop(leftovers);
    assert_eq!(pipeline.shutdown().await, report);
}

async fn two_panicking_drops_at_shutdown_surface_one_panic(sp: Sp) {
    // Two leftovers whose `Drop` panics, never taken: the pipeline's drop drops each on its
    // own, so the second panic never meets the first in one unwind (which would abort the
    // process), and the first surfaces.
    let pipeline = fragile_pipeline(sp);
    fill_fragile(&pipeline).await;
    let item = Fragile {
        id: 3,
        panic_on_drop: true,
    };
    assert!(pipeline.push(item).await.is_accepted());
    let report = pipeline.shutdown().await;
    assert_eq!((report.produced, report.abandoned), (4, 4), "{report}");
    assert_eq!(report.handed_back, 3, "{report}");
    assert!(report.is_conserved(), "{report}");
    let dropped = std::panic::catch_unwind(AssertUnwindSafe(move || drop(pipeline)));
    assert!(dropped.is_err(), "the first panic surfaces");
}

async fn concurrent_shutdowns_agree_when_a_drop_panics(sp: Sp) {
    let pipeline = fragile_pipeline(sp);
    fill_fragile(&pipeline).await;
    let (a, b) = futures_util::join!(pipeline.shutdown(), pipeline.shutdown());
    assert_eq!(a, b);
    assert_eq!((a.produced, a.abandoned, a.handed_back), (3, 3, 2), "{a}");
    assert!(a.is_conserved(), "{a}");
    // The leftovers come back once.
    let mut leftovers = pipeline.take_leftovers();
    assert_eq!(leftovers.len(), 2);
    assert!(pipeline.take_leftovers().is_empty());
    leftovers[0].panic_on_drop = false;
    assert_eq!(pipeline.shutdown().await, a);
}

async fn zero_deadline_on_an_idle_pipeline_is_not_exceeded(sp: Sp) {
    let pipeline = Pipeline::builder(4, Policy::Block)
        .workers(3)
        .deadline(Duration::ZERO)
        .spawn(sp, |_: u8| async {})
        .unwrap();
    let report = pipeline.shutdown().await;
    assert!(!report.deadline_exceeded, "{report}");
    assert_eq!(report.workers_aborted, 0, "{report}");
    assert!(report.all_joined() && report.is_conserved(), "{report}");
}

async fn zero_deadline_with_work_left_is_exceeded(sp: Sp) {
    let pipeline = Pipeline::builder(4, Policy::Block)
        .deadline(Duration::ZERO)
        .grace(Duration::ZERO)
        .spawn(sp, |_: u8| pending::<()>())
        .unwrap();
    assert!(pipeline.push(1).await.is_accepted());
    let report = pipeline.shutdown().await;
    assert!(report.deadline_exceeded, "{report}");
    assert_eq!(report.abandoned, 1, "{report}");
    assert!(report.is_conserved(), "{report}");
}

/// A spawner that starts one task, then panics: the user code of a custom runtime.
#[derive(Debug)]
struct PanicsOnSecondSpawn {
    inner: Sp,
    spawned: std::sync::atomic::AtomicUsize,
}

impl backpressure_pipeline::Spawner for PanicsOnSecondSpawn {
    fn spawn(
        &self,
        task: backpressure_pipeline::BoxFuture,
    ) -> Result<(), backpressure_pipeline::SpawnError> {
        if self
            .spawned
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            panic!("the runtime's spawn panics");
        }
        self.inner.spawn(task)
    }

    fn sleep(&self, duration: Duration) -> backpressure_pipeline::BoxFuture {
        self.inner.sleep(duration)
    }
}

async fn a_spawn_that_panics_leaves_no_worker_behind(sp: Sp) {
    let alive = Live::new();
    let spawner = PanicsOnSecondSpawn {
        inner: sp,
        spawned: Default::default(),
    };
    let built = std::panic::catch_unwind(AssertUnwindSafe(|| {
        Pipeline::builder(4, Policy::Block)
            .workers(3)
            .spawn(spawner, {
                let alive = alive.track();
                move |_: u8| {
                    let _ = &alive;
                    async {}
                }
            })
    }));
    assert!(built.is_err(), "the spawner's panic reaches the caller");
    // The worker started before the panic is aborted: the closure it shares goes with it.
    alive.all_dropped().await;
}

on_every_runtime!(
    each_stop_releases_a_producer_parked_on_a_full_queue,
    each_stop_releases_workers_parked_on_an_empty_queue,
    a_push_racing_shutdown_never_leaks,
    a_panicking_drop_at_shutdown_keeps_the_law,
    concurrent_shutdowns_agree_when_a_drop_panics,
    two_panicking_drops_at_shutdown_surface_one_panic,
    zero_deadline_on_an_idle_pipeline_is_not_exceeded,
    zero_deadline_with_work_left_is_exceeded,
    a_spawn_that_panics_leaves_no_worker_behind,
);

/// Shutdown's time bound does not depend on the runtime it guards: with every worker thread
/// of a tokio multi-thread runtime blocked in synchronous code, the runtime's timer is not
/// driven, and shutdown still returns, naming both workers unresponsive.
#[cfg(feature = "tokio")]
#[test]
fn shutdown_returns_when_every_runtime_thread_is_blocked() {
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::Instant;

    let released = Arc::new((Mutex::new(false), Condvar::new()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let spawner = backpressure_pipeline::TokioSpawner::new(rt.handle().clone()).unwrap();
    let limit = Duration::from_millis(50);
    let pipeline = Pipeline::builder(8, Policy::Block)
        .workers(2)
        .deadline(limit)
        .grace(limit)
        .unresponsive_after(limit)
        .spawn(spawner, {
            let released = released.clone();
            move |_: u32| {
                let released = released.clone();
                async move {
                    // Blocks the runtime thread itself, as synchronous code does.
                    let (lock, condvar) = &*released;
                    let mut done = lock.lock().unwrap();
                    while !*done {
                        done = condvar.wait(done).unwrap();
                    }
                }
            }
        })
        .unwrap();
    let begun = Instant::now();
    let report = rt.block_on(async {
        assert!(pipeline.push(1).await.is_accepted());
        assert!(pipeline.push(2).await.is_accepted());
        pipeline.shutdown().await
    });
    let took = begun.elapsed();
    // Release the workers before any assertion can fail, so the runtime can be dropped.
    *released.0.lock().unwrap() = true;
    released.1.notify_all();
    assert_eq!(report.workers_unresponsive, 2, "{report}");
    assert_eq!(report.abandoned, 2, "{report}");
    assert!(
        report.deadline_exceeded && report.is_conserved(),
        "{report}"
    );
    // About 150 ms; without the watchdog it never returned while the workers were blocked.
    // A hang guard, not a timing test: far above the bound, far below a hang.
    assert!(took < Duration::from_secs(30), "shutdown took {took:?}");
}
