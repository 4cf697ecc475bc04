//! Review of the queue-delay change (issue 12): each test pins one fault found in review,
//! and fixed (the doc of each says what went wrong before the fix). Time is a manual clock;
//! workers are gated; nothing waits on real time.

mod common;

use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backpressure_pipeline::{Codel, Pipeline, Policy, PushOutcome};
use common::clock::ManualSpawner;
use common::delay::{accept, gated, recorder, ExpiredLog};
use common::gate::gate;
use common::Sp;
use futures_util::future::poll_immediate;

const MS: Duration = Duration::from_millis(1);

/// CoDel enters its dropping state; the backlog is then served (not dropped) down to empty
/// during shutdown's drain. The queue is empty and closed, and CoDel would leave the dropping
/// state at the next dequeue (RFC 8289: an empty queue is below target), yet `overloaded`
/// stays `true` for good: the closed-and-empty take returns before `on_empty`, and
/// `take_all` leaves the CoDel state alone. The final `record_metrics` publishes
/// `backpressure_pipeline_overloaded = 1` for a drained, shut-down pipeline.
async fn overloaded_is_cleared_once_the_queue_has_drained(sp: Sp) {
    let (spawner, clock) = ManualSpawner::new(sp);
    let log: ExpiredLog = Arc::default();
    let (pipeline, gate) = gated(spawner, 16, |b| {
        b.codel(Codel::new(5 * MS, 100 * MS))
            .on_expired(recorder(&log))
    });
    accept(&pipeline, 0).await;
    assert_eq!(gate.next().await, 0);
    for id in 1..=4 {
        accept(&pipeline, id).await; // t = 0
    }
    clock.advance(10 * MS);
    gate.release();
    assert_eq!(gate.next().await, 1); // armed
    clock.advance(100 * MS); // t = 110 ms
    gate.release();
    assert_eq!(gate.next().await, 3); // entered: 2 shed, 3 served
    assert!(pipeline.stats().overloaded);
    // Shutdown: intake stops, the worker drains what is left (4 is served: the next drop
    // is not due before 210 ms).
    let mut stop = pin!(pipeline.shutdown());
    assert!(poll_immediate(&mut stop).await.is_none());
    gate.open();
    let report = stop.await;
    assert!(report.is_conserved(), "{report}");
    assert_eq!((report.processed, report.expired), (4, 1), "{report}");
    let stats = pipeline.stats();
    assert_eq!(stats.depth, 0);
    assert!(
        !stats.overloaded,
        "an empty, closed queue is not overloaded: {stats:?}"
    );
}

/// `export::describe` describes the metrics once per *process* (`std::sync::Once`), into
/// whatever recorder is current at that first call. The docs invite calling
/// `record_metrics` before a recorder is installed ("a no-op until a recorder is installed");
/// after such a call, the recorder the application installs later never gets a unit or a
/// description for any metric (nor does a second recorder, e.g. a local one).
async fn metrics_are_described_to_a_recorder_installed_after_the_first_record(sp: Sp) {
    #[cfg(not(feature = "metrics"))]
    let _ = sp;
    #[cfg(feature = "metrics")]
    described_late(sp).await;
}

#[cfg(feature = "metrics")]
async fn described_late(sp: Sp) {
    use metrics_util::debugging::DebuggingRecorder;
    let pipeline = Pipeline::builder(4, Policy::Block)
        .name("late-recorder")
        .spawn(sp, |_: u32| async {})
        .unwrap();
    pipeline.record_metrics(); // no recorder yet: a no-op, as documented
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || pipeline.record_metrics());
    let snapshot = snapshotter.snapshot().into_vec();
    let depth = snapshot
        .iter()
        .find(|(key, ..)| key.key().name() == "backpressure_pipeline_depth")
        .expect("the depth gauge is recorded");
    assert!(
        depth.2.is_some(),
        "no description reached the recorder: {:?}",
        (depth.1, &depth.2)
    );
    let report = pipeline.shutdown().await;
    assert!(report.is_conserved(), "{report}");
}

/// A spawner on a manual clock whose `now`, on the thread named "held", reads the time and
/// then waits for the test before returning it: the push on that thread is stamped with
/// the earlier time but enters the buffer after the pushes the test makes meanwhile, as a
/// producer thread preempted between its clock read and the lock would.
#[derive(Debug)]
struct HeldClock {
    inner: ManualSpawner,
    read: std::sync::mpsc::SyncSender<()>,
    go: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl backpressure_pipeline::Spawner for HeldClock {
    fn spawn(
        &self,
        task: backpressure_pipeline::BoxFuture,
    ) -> Result<(), backpressure_pipeline::SpawnError> {
        self.inner.spawn(task)
    }

    fn sleep(&self, duration: Duration) -> backpressure_pipeline::BoxFuture {
        self.inner.sleep(duration)
    }

    fn now(&self) -> std::time::Instant {
        let now = self.inner.clock.instant();
        if std::thread::current().name() == Some("held") {
            self.read.send(()).unwrap();
            self.go.lock().unwrap().recv().unwrap();
        }
        now
    }
}

/// Stamps are read before the lock (timed.rs invariant 2), so racing producers leave them
/// out of order, and `oldest_age` promises "the oldest stamp, wherever it sits" — but it
/// looks only at the front and the back. With stamps [10, 0, 20] ms at t = 30 ms the
/// oldest item has waited 30 ms; `Stats::oldest_age` says 20 ms.
async fn oldest_age_is_the_oldest_stamp_wherever_it_sits(sp: Sp) {
    let (manual, clock) = ManualSpawner::new(sp);
    let (read_tx, read_rx) = std::sync::mpsc::sync_channel(1);
    let (go_tx, go_rx) = std::sync::mpsc::sync_channel(1);
    let spawner = HeldClock {
        inner: manual,
        read: read_tx,
        go: Mutex::new(go_rx),
    };
    let (gate, held) = gate();
    let pipeline = Arc::new(
        Pipeline::builder(8, Policy::Block)
            .measure_queue_delay()
            .spawn(spawner, move |id: u32| {
                let held = held.clone();
                async move { held.hold(id).await }
            })
            .unwrap(),
    );
    assert_eq!(pipeline.try_push(0), PushOutcome::Accepted);
    assert_eq!(gate.next().await, 0); // the worker holds 0: nothing else is taken
    let producer = std::thread::Builder::new()
        .name("held".into())
        .spawn({
            let pipeline = pipeline.clone();
            move || pipeline.try_push(1) // stamped t = 0, enqueued later
        })
        .unwrap();
    read_rx.recv().unwrap(); // the held producer has read t = 0
    clock.advance(10 * MS);
    assert_eq!(pipeline.try_push(2), PushOutcome::Accepted); // t = 10, at the front
    go_tx.send(()).unwrap();
    assert_eq!(producer.join().unwrap(), PushOutcome::Accepted); // t = 0, in the middle
    clock.advance(10 * MS);
    assert_eq!(pipeline.try_push(3), PushOutcome::Accepted); // t = 20, at the back
    clock.advance(10 * MS); // t = 30
    assert_eq!(pipeline.len(), 3);
    assert_eq!(
        pipeline.stats().oldest_age,
        Some(30 * MS),
        "item 1 has waited 30 ms"
    );
    gate.open();
    let report = pipeline.shutdown().await;
    assert!(report.is_conserved(), "{report}");
}

/// A stall of 20 minutes (past the last bucket's lower edge, 2^30 µs ≈ 17.9 min) makes the
/// exported p99 gauge `Duration::MAX` in seconds, about 1.8e19 s (585 billion years): the
/// open last bucket has no upper edge, and `export.rs` publishes it as is. A dashboard or
/// an alert on `queue_delay_p99_seconds` gets a meaningless value exactly when a stall
/// happens. (Rust users of `quantile` get the same value.)
async fn the_exported_p99_stays_finite_after_a_long_stall(sp: Sp) {
    let (spawner, clock) = ManualSpawner::new(sp);
    let (pipeline, gate) = gated(spawner, 8, |b| b.measure_queue_delay().name("stall"));
    accept(&pipeline, 0).await;
    assert_eq!(gate.next().await, 0);
    accept(&pipeline, 1).await;
    clock.advance(Duration::from_secs(20 * 60));
    gate.release();
    assert_eq!(gate.next().await, 1); // served after 20 minutes in the queue
    let p99 = pipeline
        .stats()
        .queue_delay
        .unwrap()
        .quantile(0.99)
        .unwrap();
    assert!(
        p99 < Duration::from_secs(365 * 24 * 3600),
        "a 20-minute wait is reported as a p99 of {p99:?}"
    );
    gate.open();
    let report = pipeline.shutdown().await;
    assert!(report.is_conserved(), "{report}");
}

on_every_runtime!(
    overloaded_is_cleared_once_the_queue_has_drained,
    metrics_are_described_to_a_recorder_installed_after_the_first_record,
    oldest_age_is_the_oldest_stamp_wherever_it_sits,
    the_exported_p99_stays_finite_after_a_long_stall,
);
