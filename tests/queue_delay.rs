//! Shedding by queue delay, on every runtime, with time under the test's control: the
//! maximum age (TTL) at its exact boundary, CoDel's state changes on a scripted delay trace
//! (FIFO and adaptive LIFO), the watermarks' crossings, the delay statistics, and the law
//! with `expired` on every path.
//!
//! Time is a manual clock (`common/clock.rs`): it moves only when a test advances it, and the
//! pipeline reads it through `Spawner::now`. A gated worker (`common/gate.rs`) announces each
//! item it takes and waits for the test to release it, so the test decides when the next
//! take happens and at what time. No test waits on real time.

mod common;

use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backpressure_pipeline::{
    Batch, BoxFuture, BuildError, Codel, ConfigError, Expired, OnPanic, Pipeline, Policy,
    PressureLevel, PushOutcome, Queue, Report, SpawnError, Spawner, StopCause,
};
use common::clock::{ManualClock, ManualSpawner};
use common::delay::{accept, expired_log, gated, logged, recorder, until_logged};
use common::gate::gate;
use common::Sp;
use futures_util::future::poll_immediate;

const MS: Duration = Duration::from_millis(1);
const NANO: Duration = Duration::from_nanos(1);

fn assert_law(report: &Report) {
    assert!(report.is_conserved(), "{report}");
    assert_eq!(report.cause, StopCause::Shutdown, "{report}");
}

// The maximum age.

async fn ttl_expires_strictly_after_max_age(sp: Sp) {
    let (spawner, clock) = ManualSpawner::new(sp);
    let log = expired_log();
    let (pipeline, gate) = gated(spawner, 8, |b| {
        b.max_age(100 * MS).on_expired(recorder(&log))
    });
    accept(&pipeline, 0).await;
    assert_eq!(gate.next().await, 0); // taken at once, age 0
    accept(&pipeline, 1).await; // stamped t = 0
    clock.advance(50 * MS);
    accept(&pipeline, 2).await; // stamped t = 50 ms
    clock.advance(50 * MS); // t = 100 ms: item 1 is exactly max_age old
    assert_eq!(pipeline.stats().oldest_age, Some(100 * MS));
    gate.release();
    assert_eq!(
        gate.next().await,
        1,
        "an item exactly max_age old is served"
    );
    clock.advance(50 * MS + NANO); // item 2 is max_age + 1 ns old
    gate.release();
    until_logged(&log, 1).await;
    assert_eq!(
        logged(&log),
        [(
            2,
            Expired::MaxAge {
                age: 100 * MS + NANO
            }
        )]
    );
    gate.assert_none().await;
    let stats = pipeline.stats();
    assert_eq!((stats.expired, stats.depth), (1, 0));
    assert_eq!(stats.oldest_age, Some(Duration::ZERO), "empty");
    // Fresh items are served.
    accept(&pipeline, 3).await;
    assert_eq!(gate.next().await, 3);
    gate.open();
    let report = pipeline.shutdown().await;
    assert_law(&report);
    assert_eq!((report.processed, report.expired), (3, 1), "{report}");
    let delays = pipeline.stats().queue_delay.expect("stamped");
    assert_eq!(delays.count(), 3);
    // 0, 100 ms, 0: the slowest is in the bucket [65.536, 131.072) ms, bounded by the
    // longest delay recorded.
    assert_eq!(delays.quantile(1.0), Some(100 * MS));
    assert_eq!(delays.quantile(0.9), Some(100 * MS)); // rank 3 of 3
    assert_eq!(delays.quantile(0.6), Some(Duration::from_micros(1))); // rank 2: 0 µs
    assert_eq!(delays.quantile(0.5), Some(Duration::from_micros(1)));
}

async fn ttl_sheds_a_stale_backlog_in_one_take(sp: Sp) {
    // A backlog that went stale while the worker was busy is shed in one take, each item
    // with its own age, and the first fresh one behind it is served.
    let (spawner, clock) = ManualSpawner::new(sp);
    let log = expired_log();
    let (pipeline, gate) = gated(spawner, 16, |b| {
        b.max_age(10 * MS).on_expired(recorder(&log))
    });
    accept(&pipeline, 0).await;
    assert_eq!(gate.next().await, 0);
    for id in 1..=5 {
        accept(&pipeline, id).await;
        clock.advance(MS);
    }
    // Stamps 0..=4 ms; now 5 ms. Move on to 14.5 ms: items 1..=4 (ages 14.5..11.5) are
    // stale, item 5 (age 10.5 ms) too; push a fresh one.
    clock.advance(Duration::from_micros(9_500));
    accept(&pipeline, 6).await;
    gate.release();
    assert_eq!(gate.next().await, 6);
    let ids: Vec<u32> = logged(&log).iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5]);
    assert_eq!(
        logged(&log)[0].1,
        Expired::MaxAge {
            age: Duration::from_micros(14_500)
        }
    );
    gate.open();
    let report = pipeline.shutdown().await;
    assert_law(&report);
    assert_eq!((report.processed, report.expired), (2, 5), "{report}");
}

async fn ttl_stamps_follow_evictions(sp: Sp) {
    // Under `DropOldest` an eviction removes the oldest item and its stamp together: the
    // ages the exit sees are those of the items that stayed.
    let (spawner, clock) = ManualSpawner::new(sp);
    let log = expired_log();
    let (gate, held) = gate();
    let pipeline = Pipeline::builder(2, Policy::DropOldest)
        .max_age(100 * MS)
        .on_expired(recorder(&log))
        .spawn(spawner, move |id: u32| {
            let held = held.clone();
            async move { held.hold(id).await }
        })
        .unwrap();
    accept(&pipeline, 0).await;
    assert_eq!(gate.next().await, 0);
    accept(&pipeline, 1).await; // t = 0
    clock.advance(60 * MS);
    accept(&pipeline, 2).await; // t = 60
    clock.advance(20 * MS);
    assert_eq!(pipeline.try_push(3), PushOutcome::Evicted(1)); // t = 80; item 1 goes
    clock.advance(90 * MS); // t = 170: item 2 is 110 ms old, item 3 90 ms
    gate.release();
    assert_eq!(gate.next().await, 3);
    assert_eq!(logged(&log), [(2, Expired::MaxAge { age: 110 * MS })]);
    gate.open();
    let report = pipeline.shutdown().await;
    assert_law(&report);
    assert_eq!(
        (report.processed, report.dropped, report.expired),
        (2, 1, 1),
        "{report}"
    );
}

async fn ttl_in_batches_drops_stale_items_from_the_batch(sp: Sp) {
    let (spawner, clock) = ManualSpawner::new(sp);
    let log = expired_log();
    let (gate, held) = gate::<Vec<u32>>();
    let pipeline = Pipeline::builder(16, Policy::Block)
        .max_age(10 * MS)
        .on_expired(recorder(&log))
        .spawn_batched(
            spawner,
            Batch::new(4, Duration::ZERO),
            move |batch: Vec<u32>| {
                let held = held.clone();
                async move { held.hold(batch).await }
            },
        )
        .unwrap();
    accept(&pipeline, 0).await;
    assert_eq!(gate.next().await, [0]);
    for id in 1..=3 {
        accept(&pipeline, id).await; // t = 0
    }
    clock.advance(11 * MS);
    for id in 4..=8 {
        accept(&pipeline, id).await; // t = 11 ms
    }
    gate.release();
    // 1..=3 are 11 ms old: shed; the batch is the next four fresh ones.
    assert_eq!(gate.next().await, [4, 5, 6, 7]);
    let ids: Vec<u32> = logged(&log).iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, [1, 2, 3]);
    gate.open();
    let report = pipeline.shutdown().await;
    assert_law(&report);
    assert_eq!((report.processed, report.expired), (6, 3), "{report}");
}

async fn ttl_applies_while_draining(sp: Sp) {
    // Shutdown drains: the items a worker takes during the drain are still checked.
    let (spawner, clock) = ManualSpawner::new(sp);
    let log = expired_log();
    let (pipeline, gate) = gated(spawner, 8, |b| {
        b.max_age(10 * MS).on_expired(recorder(&log))
    });
    accept(&pipeline, 0).await;
    assert_eq!(gate.next().await, 0);
    accept(&pipeline, 1).await; // t = 0
    clock.advance(20 * MS);
    accept(&pipeline, 2).await; // t = 20 ms
    let mut stop = pin!(pipeline.shutdown());
    // One poll: intake stops; the drain goes on while the worker is held.
    assert!(poll_immediate(&mut stop).await.is_none());
    assert!(pipeline.is_closed());
    gate.release();
    // Item 1 is 20 ms old: shed; item 2 is served.
    assert_eq!(gate.next().await, 2);
    gate.release();
    let report = stop.await;
    assert_law(&report);
    assert_eq!(logged(&log), [(1, Expired::MaxAge { age: 20 * MS })]);
    assert_eq!(
        (report.processed, report.expired, report.abandoned),
        (2, 1, 0),
        "{report}"
    );
}

async fn stale_items_left_at_the_deadline_are_handed_back_not_expired(sp: Sp) {
    // A zero deadline: the worker token is cancelled at once, and what is queued is handed
    // back, whatever its age.
    let (spawner, clock) = ManualSpawner::new(sp.clone());
    let log = expired_log();
    let (gate, held) = gate();
    let builder = Pipeline::builder(8, Policy::Block)
        .max_age(MS)
        .on_expired(recorder(&log))
        .deadline(Duration::ZERO)
        .grace(Duration::from_secs(3600));
    let deadline_passed = builder.worker_token(); // a child: cancelled with the workers'
    let pipeline = Arc::new(
        builder
            .spawn(spawner, move |id: u32| {
                let held = held.clone();
                async move { held.hold(id).await }
            })
            .unwrap(),
    );
    accept(&pipeline, 0).await;
    assert_eq!(gate.next().await, 0);
    for id in 1..=3 {
        accept(&pipeline, id).await;
    }
    clock.advance(10 * MS);
    let report = common::spawn(&sp, {
        let pipeline = pipeline.clone();
        async move { pipeline.shutdown().await }
    });
    deadline_passed.cancelled().await;
    gate.open(); // the worker finishes item 0 and takes no other
    let report = report.await.expect("shutdown finishes");
    assert_law(&report);
    assert_eq!(
        (report.processed, report.expired, report.handed_back),
        (1, 0, 3),
        "{report}"
    );
    assert_eq!(pipeline.take_leftovers(), [1, 2, 3]);
    assert!(logged(&log).is_empty());
}

async fn the_shed_hook_sees_every_loss_at_the_door_and_at_the_exit(sp: Sp) {
    let (spawner, clock) = ManualSpawner::new(sp);
    let log = expired_log();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (gate, held) = gate();
    let pipeline = Pipeline::builder(2, Policy::DropNewest)
        .max_age(10 * MS)
        .on_shed({
            let seen = seen.clone();
            move |id: &u32| seen.lock().unwrap().push(*id)
        })
        .on_expired(recorder(&log))
        .spawn(spawner, move |id: u32| {
            let held = held.clone();
            async move { held.hold(id).await }
        })
        .unwrap();
    accept(&pipeline, 0).await;
    assert_eq!(gate.next().await, 0);
    accept(&pipeline, 1).await;
    accept(&pipeline, 2).await;
    assert_eq!(pipeline.try_push(3), PushOutcome::Shed(3)); // at the door
    clock.advance(11 * MS);
    gate.release();
    // 1 and 2 are stale: shown to the shed hook, then handed to on_expired.
    until_logged(&log, 2).await;
    accept(&pipeline, 4).await;
    assert_eq!(gate.next().await, 4);
    assert_eq!(*seen.lock().unwrap(), [3, 1, 2]);
    let expired: Vec<u32> = logged(&log).iter().map(|(id, _)| *id).collect();
    assert_eq!(expired, [1, 2]);
    gate.open();
    let report = pipeline.shutdown().await;
    assert_law(&report);
    assert_eq!(
        seen.lock().unwrap().len() as u64,
        report.dropped + report.expired,
        "{report}"
    );
}

async fn the_law_holds_with_expired_when_a_panic_stops_the_pipeline(sp: Sp) {
    // Items expired, one processed, one panicking under `OnPanic::StopPipeline`, the rest
    // handed back: every term of the law in one run.
    let (spawner, clock) = ManualSpawner::new(sp);
    let log = expired_log();
    let (gate, held) = gate();
    let pipeline = Pipeline::builder(8, Policy::DropNewest)
        .max_age(10 * MS)
        .on_expired(recorder(&log))
        .on_panic(OnPanic::StopPipeline)
        .spawn(spawner, move |id: u32| {
            let held = held.clone();
            async move {
                held.hold(id).await;
                assert_ne!(id, 4, "the item that stops the pipeline");
            }
        })
        .unwrap();
    accept(&pipeline, 0).await;
    assert_eq!(gate.next().await, 0);
    for id in 1..=3 {
        accept(&pipeline, id).await; // t = 0: these expire
    }
    clock.advance(11 * MS);
    for id in 4..=6 {
        accept(&pipeline, id).await; // t = 11 ms: fresh
    }
    for id in 7..=20 {
        let _ = pipeline.try_push(id); // 7 and 8 fill the queue; the rest are shed
    }
    gate.release(); // 0 processed; 1..=3 expire; 4 is taken
    assert_eq!(gate.next().await, 4);
    gate.release(); // 4 panics: the pipeline stops, 5..=8 stay queued
    while !pipeline.is_closed() {
        common::yield_now().await; // the panic stop closes the queue (the watchdog bounds it)
    }
    let report = pipeline.shutdown().await;
    assert!(report.is_conserved(), "{report}");
    assert_eq!(report.cause, StopCause::Panic, "{report}");
    assert_eq!(
        (
            report.processed,
            report.expired,
            report.panicked,
            report.dropped,
            report.handed_back
        ),
        (1, 3, 1, 12, 4),
        "{report}"
    );
    assert_eq!(pipeline.take_leftovers(), [5, 6, 7, 8]);
}

async fn a_panicking_expired_hook_does_not_stop_the_worker(sp: Sp) {
    let (spawner, clock) = ManualSpawner::new(sp);
    let calls = Arc::new(AtomicUsize::new(0));
    let (pipeline, gate) = gated(spawner, 8, |b| {
        let calls = calls.clone();
        b.max_age(MS).on_expired(move |_, _| {
            calls.fetch_add(1, Ordering::SeqCst);
            panic!("a hook that panics");
        })
    });
    accept(&pipeline, 0).await;
    assert_eq!(gate.next().await, 0);
    accept(&pipeline, 1).await;
    accept(&pipeline, 2).await;
    clock.advance(2 * MS);
    accept(&pipeline, 3).await;
    gate.release();
    assert_eq!(gate.next().await, 3, "the worker went on past both panics");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    gate.open();
    let report = pipeline.shutdown().await;
    assert_law(&report);
    assert_eq!(
        (report.processed, report.expired, report.panicked),
        (2, 2, 0)
    );
}

// CoDel.

async fn codel_enters_drops_and_leaves_on_a_scripted_trace(sp: Sp) {
    let (spawner, clock) = ManualSpawner::new(sp);
    let log = expired_log();
    let (pipeline, gate) = gated(spawner, 16, |b| {
        b.codel(Codel::new(5 * MS, 100 * MS))
            .on_expired(recorder(&log))
    });
    accept(&pipeline, 0).await;
    assert_eq!(gate.next().await, 0);
    for id in 1..=6 {
        accept(&pipeline, id).await; // t = 0
    }
    clock.advance(10 * MS);
    // Head age 10 ms ≥ target: armed (first above target until 110 ms), served.
    gate.release();
    assert_eq!(gate.next().await, 1);
    assert!(!pipeline.stats().overloaded);
    clock.advance(100 * MS); // t = 110 ms
                             // A whole interval above target: enter dropping, shed the head (2), serve the next.
    gate.release();
    assert_eq!(gate.next().await, 3);
    assert_eq!(logged(&log), [(2, Expired::Codel { age: 110 * MS })]);
    assert!(pipeline.stats().overloaded);
    // The next drop is due at 110 + 100/sqrt(1) = 210 ms: not yet.
    gate.release();
    assert_eq!(gate.next().await, 4);
    clock.advance(100 * MS); // t = 210 ms: due; shed 5, serve 6
    accept(&pipeline, 7).await; // fresh, stamped 210 ms
    gate.release();
    assert_eq!(gate.next().await, 6);
    assert_eq!(logged(&log)[1..], [(5, Expired::Codel { age: 210 * MS })]);
    assert!(pipeline.stats().overloaded);
    // The head (7) is below target: leave the dropping state, serve it.
    gate.release();
    assert_eq!(gate.next().await, 7);
    assert!(!pipeline.stats().overloaded);
    gate.open();
    let report = pipeline.shutdown().await;
    assert_law(&report);
    assert_eq!((report.processed, report.expired), (6, 2), "{report}");
}

async fn codel_lifo_serves_the_newest_while_dropping(sp: Sp) {
    let (spawner, clock) = ManualSpawner::new(sp);
    let log = expired_log();
    let (pipeline, gate) = gated(spawner, 16, |b| {
        b.codel(Codel::new(5 * MS, 100 * MS).lifo(true))
            .on_expired(recorder(&log))
    });
    accept(&pipeline, 0).await;
    assert_eq!(gate.next().await, 0);
    for id in 1..=5 {
        accept(&pipeline, id).await; // t = 0
    }
    clock.advance(10 * MS);
    gate.release();
    assert_eq!(gate.next().await, 1, "FIFO while not dropping");
    clock.advance(100 * MS); // t = 110 ms
    gate.release();
    // Enter dropping: the head (2) is shed, and the newest (5) is served.
    assert_eq!(gate.next().await, 5);
    assert_eq!(logged(&log), [(2, Expired::Codel { age: 110 * MS })]);
    gate.release();
    assert_eq!(gate.next().await, 4, "still dropping: newest first");
    accept(&pipeline, 6).await; // fresh, at the back
    gate.release();
    assert_eq!(gate.next().await, 6);
    gate.release();
    assert_eq!(gate.next().await, 3, "the last one left");
    gate.open();
    let report = pipeline.shutdown().await;
    assert_law(&report);
    assert_eq!((report.processed, report.expired), (6, 1), "{report}");
}

// Watermarks.

async fn watermarks_fire_once_per_crossing(sp: Sp) {
    let (spawner, _clock) = ManualSpawner::new(sp);
    let (pipeline, gate) = gated(spawner, 10, |b| b.watermarks(6, 3));
    let mut pressure = pipeline.pressure().expect("configured");
    assert_eq!(pressure.level(), PressureLevel::Normal);
    accept(&pipeline, 0).await;
    assert_eq!(gate.next().await, 0); // the worker holds 0; the queue is empty
    for id in 1..=5 {
        accept(&pipeline, id).await;
    }
    assert_eq!((pipeline.len(), pressure.crossings()), (5, 0));
    accept(&pipeline, 6).await; // length 6: the high mark
    assert_eq!(pressure.crossings(), 1);
    assert_eq!(pressure.changed().await, Some(PressureLevel::High));
    // Around the high mark, and down to just above the low mark: no crossing.
    gate.release();
    assert_eq!(gate.next().await, 1); // length 5
    accept(&pipeline, 7).await; // 6 again: already high
    gate.release();
    assert_eq!(gate.next().await, 2); // 5
    gate.release();
    assert_eq!(gate.next().await, 3); // 4
    assert_eq!((pipeline.len(), pressure.crossings()), (4, 1));
    gate.release();
    assert_eq!(gate.next().await, 4); // 3: the low mark
    assert_eq!(pressure.crossings(), 2);
    assert_eq!(pressure.changed().await, Some(PressureLevel::Normal));
    // Around the low mark: no crossing.
    accept(&pipeline, 8).await; // 4
    gate.release();
    assert_eq!(gate.next().await, 5); // 3
    accept(&pipeline, 9).await; // 4
    assert_eq!((pipeline.len(), pressure.crossings()), (4, 2));
    // A watcher made now reports only the crossings after it.
    let mut late = pipeline.pressure().unwrap();
    for id in 10..=11 {
        accept(&pipeline, id).await; // 5, 6: high
    }
    assert_eq!(late.changed().await, Some(PressureLevel::High));
    // Intake stops with the queue at 6; it drains to 0 after that, and no crossing counts.
    let mut stop = pin!(pipeline.shutdown());
    assert!(poll_immediate(&mut stop).await.is_none());
    assert!(pipeline.is_closed());
    gate.open();
    let report = stop.await;
    assert_law(&report);
    assert_eq!(late.changed().await, None);
    assert_eq!(
        (pressure.crossings(), pressure.level()),
        (3, PressureLevel::High)
    );
}

/// A stress loop for the signal's check → listen → check: producers and workers race the
/// length up and down across both marks while a watcher awaits each change; a lost wake-up
/// would leave it waiting (the watchdog fails the test), and it must end with the last
/// level, after the close.
async fn the_pressure_watcher_never_misses_the_last_crossing(sp: Sp) {
    let mut all_crossings = 0;
    for round in 0..common::iterations(20) {
        let pipeline = Pipeline::builder(32, Policy::Block)
            .workers(2)
            .watermarks(24, 8)
            .spawn(sp.clone(), |_: u32| async {
                // Slow enough for the queue to fill now and then.
                for _ in 0..4 {
                    common::yield_now().await;
                }
            })
            .unwrap();
        let mut pressure = pipeline.pressure().unwrap();
        let watcher = common::spawn(&sp, async move {
            let mut last = None;
            let mut reports = 0u64;
            while let Some(level) = pressure.changed().await {
                last = Some(level);
                reports += 1;
            }
            (last, reports, pressure.crossings())
        });
        for id in 0..2_000 {
            let _ = pipeline.push(id).await;
            if id % 97 == 0 {
                common::idle().await; // let the workers drain below the low mark
            }
        }
        let report = pipeline.shutdown().await;
        assert!(report.is_conserved(), "{report}");
        let (last, reports, crossings) = watcher.await.expect("the watcher ends");
        assert!(reports <= crossings, "round {round}");
        all_crossings += crossings;
        if crossings > 0 {
            let level = if crossings % 2 == 1 {
                PressureLevel::High
            } else {
                PressureLevel::Normal
            };
            assert_eq!(last, Some(level), "round {round}: {crossings} crossings");
        }
    }
    assert!(all_crossings > 0, "the loop crossed the marks");
}

async fn the_queue_on_its_own_has_watermarks(sp: Sp) {
    let _ = sp;
    let mut queue = Queue::new(8, Policy::DropOldest).unwrap();
    for i in 0..7 {
        let _ = queue.try_push(i);
    }
    // Set while the queue is past the high mark: it starts high.
    let mut first = queue.watermarks(6, 2).unwrap();
    assert_eq!((first.level(), first.crossings()), (PressureLevel::High, 1));
    assert_eq!(queue.watermarks(2, 2).unwrap_err(), ConfigError::Watermarks);
    assert_eq!(queue.watermarks(9, 2).unwrap_err(), ConfigError::Watermarks);
    // New marks end the old ones: their watchers are released.
    let mut second = queue.watermarks(8, 4).unwrap();
    assert_eq!(first.changed().await, None);
    assert_eq!(second.level(), PressureLevel::Normal);
    let mut third = queue.pressure().expect("set");
    let _ = queue.try_push(7); // 8: high
    assert_eq!(second.changed().await, Some(PressureLevel::High));
    assert_eq!(third.changed().await, Some(PressureLevel::High));
    for _ in 0..4 {
        let _ = queue.pop().await; // 4: normal
    }
    assert_eq!(second.changed().await, Some(PressureLevel::Normal));
    queue.close();
    assert_eq!(second.changed().await, None);
    assert_eq!(third.changed().await, Some(PressureLevel::Normal));
    assert_eq!(third.changed().await, None);
    // Marks set on a closed queue end their watchers at once.
    let mut late = queue.watermarks(8, 4).unwrap();
    assert_eq!(late.changed().await, None);
}

// Configuration, and what a pipeline without time features does.

async fn bad_settings_are_refused(sp: Sp) {
    let build = |b: backpressure_pipeline::PipelineBuilder<u32>| {
        b.spawn(sp.clone(), |_: u32| async {}).map(drop)
    };
    let err = |config| Err(BuildError::Config(config));
    assert_eq!(
        build(Pipeline::builder(8, Policy::Block).max_age(Duration::ZERO)),
        err(ConfigError::ZeroMaxAge)
    );
    assert_eq!(
        build(Pipeline::builder(8, Policy::Block).codel(Codel::new(Duration::ZERO, MS))),
        err(ConfigError::Codel)
    );
    assert_eq!(
        build(Pipeline::builder(8, Policy::Block).codel(Codel::new(MS, MS))),
        err(ConfigError::Codel)
    );
    for (high, low) in [(4, 4), (3, 4), (9, 1), (0, 0)] {
        assert_eq!(
            build(Pipeline::builder(8, Policy::Block).watermarks(high, low)),
            err(ConfigError::Watermarks),
            "high {high}, low {low}"
        );
    }
    assert_eq!(
        build(Pipeline::builder(8, Policy::Block).watermarks(8, 0)),
        Ok(())
    );
}

/// A spawner that counts the reads of its clock.
#[derive(Debug)]
struct CountingClock {
    inner: Sp,
    reads: Arc<AtomicUsize>,
}

impl Spawner for CountingClock {
    fn spawn(&self, task: BoxFuture) -> Result<(), SpawnError> {
        self.inner.spawn(task)
    }

    fn sleep(&self, duration: Duration) -> BoxFuture {
        self.inner.sleep(duration)
    }

    fn now(&self) -> Instant {
        self.reads.fetch_add(1, Ordering::SeqCst);
        Instant::now()
    }
}

async fn without_time_features_no_clock_is_read(sp: Sp) {
    let reads = Arc::new(AtomicUsize::new(0));
    let spawner = CountingClock {
        inner: sp.clone(),
        reads: reads.clone(),
    };
    let pipeline = Pipeline::builder(8, Policy::DropOldest)
        .workers(2)
        .spawn(spawner, |_: u32| async {})
        .unwrap();
    for id in 0..100 {
        let _ = pipeline.push(id).await;
    }
    let stats = pipeline.stats();
    assert_eq!((stats.oldest_age, stats.queue_delay), (None, None));
    assert!(!stats.overloaded);
    let report = pipeline.shutdown().await;
    assert_law(&report);
    assert_eq!(report.expired, 0);
    assert_eq!(reads.load(Ordering::SeqCst), 0, "no stamp, no read");

    // With one, each push and each take reads it.
    let spawner = CountingClock {
        inner: sp,
        reads: reads.clone(),
    };
    let pipeline = Pipeline::builder(8, Policy::Block)
        .measure_queue_delay()
        .spawn(spawner, |_: u32| async {})
        .unwrap();
    for id in 0..10 {
        let _ = pipeline.push(id).await;
    }
    let report = pipeline.shutdown().await;
    assert_law(&report);
    assert!(reads.load(Ordering::SeqCst) >= 20);
    assert_eq!(pipeline.stats().queue_delay.unwrap().count(), 10);
}

async fn the_manual_clock_is_the_pipelines_clock(sp: Sp) {
    // `oldest_age` follows the spawner's clock, not the wall clock.
    let (spawner, clock) = ManualSpawner::new(sp);
    let (pipeline, gate) = gated(spawner, 8, |b| b.measure_queue_delay());
    accept(&pipeline, 0).await;
    assert_eq!(gate.next().await, 0);
    accept(&pipeline, 1).await;
    clock.advance(Duration::from_secs(30));
    assert_eq!(pipeline.stats().oldest_age, Some(Duration::from_secs(30)));
    let _ = ManualClock::now(&clock);
    gate.open();
    let report = pipeline.shutdown().await;
    assert_law(&report);
    let delays = pipeline.stats().queue_delay.unwrap();
    assert_eq!(delays.count(), 2);
    // 30 s = 30 000 000 µs: in [2^24, 2^25) µs, bounded by the longest, 30 s; the other
    // (0 µs) in the first bucket.
    assert_eq!(delays.quantile(1.0), Some(Duration::from_secs(30)));
    assert_eq!(delays.quantile(0.5), Some(Duration::from_micros(1)));
}

on_every_runtime!(
    ttl_expires_strictly_after_max_age,
    ttl_sheds_a_stale_backlog_in_one_take,
    ttl_stamps_follow_evictions,
    ttl_in_batches_drops_stale_items_from_the_batch,
    ttl_applies_while_draining,
    stale_items_left_at_the_deadline_are_handed_back_not_expired,
    the_shed_hook_sees_every_loss_at_the_door_and_at_the_exit,
    the_law_holds_with_expired_when_a_panic_stops_the_pipeline,
    a_panicking_expired_hook_does_not_stop_the_worker,
    codel_enters_drops_and_leaves_on_a_scripted_trace,
    codel_lifo_serves_the_newest_while_dropping,
    watermarks_fire_once_per_crossing,
    the_pressure_watcher_never_misses_the_last_crossing,
    the_queue_on_its_own_has_watermarks,
    bad_settings_are_refused,
    without_time_features_no_clock_is_read,
    the_manual_clock_is_the_pipelines_clock,
);
