//! Second review of the queue-delay work (Extras, Served, on_shed at the exit, Queue
//! watermarks, the shed count in one word). Each test pins a behaviour checked in review; the
//! doc of each says what could go wrong. Manual clock, gated workers, no sleeps.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backpressure_pipeline::{Pipeline, Policy, PressureLevel, PushOutcome, Queue};
use common::clock::ManualSpawner;
use common::gate::gate;
use common::Sp;

const MS: Duration = Duration::from_millis(1);

/// Marks set on a closed queue must be closed too: before 25e8de5 the new cell never had its
/// `closed` flag set, and `changed()` on its handle waited forever (a lost wake-up the
/// watchdog reports as a hang). Also checked: a queue closed past the high mark reports no
/// crossing after close.
async fn watermarks_set_on_a_closed_queue_end_their_watchers(sp: Sp) {
    let _ = sp;
    let mut queue = Queue::new(4, Policy::Block).unwrap();
    for i in 0..3 {
        assert_eq!(queue.try_push(i), PushOutcome::Accepted);
    }
    assert!(queue.close());
    let mut pressure = queue.watermarks(2, 1).unwrap();
    assert_eq!(pressure.level(), PressureLevel::High, "past the high mark");
    assert_eq!(pressure.changed().await, None);
    // Draining a closed queue makes no crossing.
    while queue.pop().await.is_some() {}
    assert_eq!(pressure.crossings(), 1);
    assert_eq!(queue.pressure().unwrap().changed().await, None);
}

/// The shed count in one word: sheds before close are counted (lock-free and under the
/// lock), pushes refused as `Closed` after it (their `fetch_add` lands on the word) never
/// show, in `stats()` or in the report, and the law holds.
async fn refused_sheds_after_close_never_show(sp: Sp) {
    let (gate, held) = gate();
    let pipeline = Pipeline::builder(2, Policy::DropNewest)
        .spawn(sp, move |id: u32| {
            let held = held.clone();
            async move { held.hold(id).await }
        })
        .unwrap();
    assert_eq!(pipeline.push(0).await, PushOutcome::Accepted);
    assert_eq!(gate.next().await, 0);
    assert!(pipeline.try_push(1).is_accepted());
    assert!(pipeline.try_push(2).is_accepted());
    for id in 3..8 {
        assert_eq!(pipeline.try_push(id), PushOutcome::Shed(id));
    }
    let producer = pipeline.producer();
    let mut stop = std::pin::pin!(pipeline.shutdown());
    assert!(futures_util::poll!(&mut stop).is_pending());
    // Closed and still full: the lock-free path adds to the word and is refused.
    for id in 8..20 {
        assert_eq!(producer.try_push(id), PushOutcome::Closed(id));
    }
    assert_eq!(producer.stats().dropped, 5);
    assert_eq!(producer.stats().produced, 8);
    gate.open();
    let report = stop.await;
    assert!(report.is_conserved(), "{report}");
    assert_eq!((report.produced, report.dropped), (8, 5), "{report}");
    for id in 20..30 {
        assert_eq!(producer.try_push(id), PushOutcome::Closed(id));
    }
    assert_eq!(pipeline.stats().dropped, 5);
}

/// At the exit, `on_shed` sees each item before `on_expired` gets it, a panic in `on_shed`
/// is caught (the worker goes on, `on_expired` still gets the item), and the number of
/// `on_shed` calls is `dropped + expired`.
async fn a_panicking_shed_hook_at_the_exit_loses_nothing(sp: Sp) {
    let (spawner, clock) = ManualSpawner::new(sp);
    let events = Arc::new(Mutex::new(Vec::new()));
    let shed_calls = Arc::new(AtomicUsize::new(0));
    let (gate, held) = gate();
    let pipeline = Pipeline::builder(4, Policy::DropNewest)
        .max_age(10 * MS)
        .on_shed({
            let (events, calls) = (events.clone(), shed_calls.clone());
            move |id: &u32| {
                calls.fetch_add(1, Ordering::SeqCst);
                events.lock().unwrap().push(("shed", *id));
                if *id == 1 {
                    panic!("a shed hook that panics");
                }
            }
        })
        .on_expired({
            let events = events.clone();
            move |id: u32, _| events.lock().unwrap().push(("expired", id))
        })
        .spawn(spawner, move |id: u32| {
            let held = held.clone();
            async move { held.hold(id).await }
        })
        .unwrap();
    assert!(pipeline.push(0).await.is_accepted());
    assert_eq!(gate.next().await, 0);
    for id in 1..=4 {
        assert!(pipeline.push(id).await.is_accepted());
    }
    assert_eq!(pipeline.try_push(5), PushOutcome::Shed(5));
    clock.advance(11 * MS);
    assert_eq!(pipeline.try_push(9), PushOutcome::Shed(9)); // still full: 1..=4 queued
    gate.release();
    // 1..=4 are stale: shed at the exit; the queue is then empty.
    while events
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k == "expired")
        .count()
        < 4
    {
        common::yield_now().await;
    }
    assert!(pipeline.push(6).await.is_accepted());
    assert_eq!(
        gate.next().await,
        6,
        "the worker went on past the hook's panic"
    );
    let ev = events.lock().unwrap().clone();
    let exit: Vec<_> = ev.iter().filter(|(_, id)| (1..=4).contains(id)).collect();
    assert_eq!(
        exit,
        [
            &("shed", 1),
            &("shed", 2),
            &("shed", 3),
            &("shed", 4),
            &("expired", 1),
            &("expired", 2),
            &("expired", 3),
            &("expired", 4)
        ]
    );
    gate.open();
    let report = pipeline.shutdown().await;
    assert!(report.is_conserved(), "{report}");
    assert_eq!((report.expired, report.dropped), (4, 2), "{report}");
    assert_eq!(
        shed_calls.load(Ordering::SeqCst) as u64,
        report.dropped + report.expired
    );
}

/// `Producer::pressure` and `Pipeline::pressure` share the queue's cell: a crossing reaches
/// both, and a shutdown ends both.
async fn producer_pressure_follows_the_queue_and_ends_at_shutdown(sp: Sp) {
    let (gate, held) = gate();
    let pipeline = Pipeline::builder(4, Policy::Block)
        .watermarks(3, 1)
        .spawn(sp, move |id: u32| {
            let held = held.clone();
            async move { held.hold(id).await }
        })
        .unwrap();
    let producer = pipeline.producer();
    let mut mine = producer.pressure().expect("configured");
    let mut theirs = pipeline.pressure().expect("configured");
    assert!(producer.push(0).await.is_accepted());
    assert_eq!(gate.next().await, 0);
    for id in 1..=3 {
        assert!(producer.push(id).await.is_accepted());
    }
    assert_eq!(mine.changed().await, Some(PressureLevel::High));
    assert_eq!(theirs.changed().await, Some(PressureLevel::High));
    let mut stop = std::pin::pin!(pipeline.shutdown());
    assert!(futures_util::poll!(&mut stop).is_pending());
    gate.open();
    let report = stop.await;
    assert!(report.is_conserved(), "{report}");
    // Drained to 0 during the shutdown, after close: no crossing after the close.
    assert_eq!(mine.changed().await, None);
    assert_eq!(theirs.changed().await, None);
    assert_eq!(producer.pressure().unwrap().level(), PressureLevel::High);
}

on_every_runtime!(
    watermarks_set_on_a_closed_queue_end_their_watchers,
    refused_sheds_after_close_never_show,
    a_panicking_shed_hook_at_the_exit_loses_nothing,
    producer_pressure_follows_the_queue_and_ends_at_shutdown,
);
