//! Review models of the shed count in one word (a `fetch_add` refused by the closed flag) and
//! of the pressure cell woken as a waker after unlocking.

#![cfg(loom)]

use std::sync::Arc;

use backpressure_pipeline::{Policy, PressureLevel, PushOutcome, Queue};
use loom::future::block_on;
use loom::thread;

/// Two lock-free sheds race with close and with a snapshot: every snapshot is at most the
/// final count, and the final count is exactly the sheds that returned `Shed`.
#[test]
fn two_sheds_race_close_and_a_snapshot() {
    loom::model(|| {
        let queue = Arc::new(Queue::new(1, Policy::DropNewest).unwrap());
        assert_eq!(queue.try_push(0), PushOutcome::Accepted);
        let shedders: Vec<_> = (1..=2)
            .map(|id| {
                let queue = queue.clone();
                thread::spawn(move || queue.try_push(id))
            })
            .collect();
        let closer = thread::spawn({
            let queue = queue.clone();
            move || assert!(queue.close())
        });
        let during = queue.stats().shed;
        let shed = shedders
            .into_iter()
            .map(|t| match t.join().unwrap() {
                PushOutcome::Shed(_) => 1,
                PushOutcome::Closed(_) => 0,
                other => panic!("unexpected {other:?}"),
            })
            .sum::<u64>();
        closer.join().unwrap();
        let after = queue.stats();
        assert_eq!(after.shed, shed);
        assert!(during <= after.shed);
        assert_eq!(after.accepted + after.shed, 1 + shed);
    });
}

/// A crossing made before close is reported before the `None` that close brings; a push
/// refused by close makes none.
#[test]
fn a_crossing_racing_close_is_reported_before_none() {
    loom::model(|| {
        let mut queue = Queue::new(2, Policy::Block).unwrap();
        let mut pressure = queue.watermarks(1, 0).unwrap();
        let queue = Arc::new(queue);
        let pusher = thread::spawn({
            let queue = queue.clone();
            move || queue.try_push(1)
        });
        let closer = thread::spawn({
            let queue = queue.clone();
            move || assert!(queue.close())
        });
        let mut seen = Vec::new();
        while let Some(level) = block_on(pressure.changed()) {
            seen.push(level);
        }
        match pusher.join().unwrap() {
            PushOutcome::Accepted => assert_eq!(seen, [PressureLevel::High]),
            PushOutcome::Closed(1) => assert!(seen.is_empty()),
            other => panic!("unexpected {other:?}"),
        }
        closer.join().unwrap();
    });
}
