//! loom models of the queue's races: close against pop and against a parked producer, the
//! push → pop and pop → push wake-up hand-offs, a woken popper that idles or is dropped, and
//! a freed slot promised to a parked producer. loom explores every interleaving of the
//! buffer lock and the atomics in this crate (bounded by `LOOM_MAX_PREEMPTIONS`), and
//! reports a deadlock if a popper or producer could sleep forever.

#![cfg(loom)]

use std::sync::Arc;

use backpressure_pipeline::{Policy, PressureLevel, PushOutcome, Queue};
use loom::future::block_on;
use loom::thread;

/// An item pushed before close is popped before `None`, whatever the interleaving.
#[test]
fn close_after_push_never_hides_the_item() {
    loom::model(|| {
        let queue = Arc::new(Queue::new(2, Policy::Block).unwrap());
        let producer = thread::spawn({
            let queue = queue.clone();
            move || {
                assert_eq!(queue.try_push(1), PushOutcome::Accepted);
                assert!(queue.close());
            }
        });
        assert_eq!(block_on(queue.pop()), Some(1));
        assert_eq!(block_on(queue.pop()), None);
        producer.join().unwrap();
    });
}

/// Close wakes a popper waiting on an empty queue; a push racing with close is either
/// popped or refused, never stranded.
#[test]
fn close_races_push_and_pop() {
    loom::model(|| {
        let queue = Arc::new(Queue::new(1, Policy::DropNewest).unwrap());
        let pusher = thread::spawn({
            let queue = queue.clone();
            move || queue.try_push(7)
        });
        let closer = thread::spawn({
            let queue = queue.clone();
            move || queue.close()
        });
        let popped = block_on(queue.pop());
        let pushed = pusher.join().unwrap();
        assert!(closer.join().unwrap());
        match pushed {
            PushOutcome::Accepted => {
                // Accepted before close: popped now, or still there for the next pop.
                let next = block_on(queue.pop());
                assert_eq!(popped.or(next), Some(7));
            }
            PushOutcome::Closed(7) => assert_eq!(popped, None),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(block_on(queue.pop()), None);
    });
}

/// A shed racing with close is counted before close or refused as `Closed` after it: the
/// count read right after close agrees with what the producer was told.
#[test]
fn shed_races_close() {
    loom::model(|| {
        let queue = Arc::new(Queue::new(1, Policy::DropNewest).unwrap());
        assert_eq!(queue.try_push(1), PushOutcome::Accepted);
        let producer = thread::spawn({
            let queue = queue.clone();
            move || queue.try_push(2)
        });
        assert!(queue.close());
        let shed_at_close = queue.stats().shed;
        match producer.join().unwrap() {
            PushOutcome::Shed(2) => assert_eq!(shed_at_close, 1),
            PushOutcome::Closed(2) => assert_eq!(shed_at_close, 0),
            other => panic!("unexpected {other:?}"),
        }
        // A shed refused after close (its increment landed after the flag) never shows.
        assert_eq!(queue.stats().shed, shed_at_close);
        assert_eq!(queue.try_push(3), PushOutcome::Closed(3));
        assert_eq!(queue.stats().shed, shed_at_close);
        assert_eq!(block_on(queue.pop()), Some(1));
    });
}

/// A popper asleep on an empty queue is woken by a push: no item stranded.
#[test]
fn push_wakes_a_sleeping_popper() {
    loom::model(|| {
        let queue = Arc::new(Queue::new(1, Policy::Block).unwrap());
        let popper = thread::spawn({
            let queue = queue.clone();
            move || block_on(queue.pop())
        });
        assert_eq!(queue.try_push(5), PushOutcome::Accepted);
        assert_eq!(popper.join().unwrap(), Some(5));
    });
}

/// Two poppers, two pushes: both poppers get an item (each push wakes one more popper).
#[test]
fn two_pushes_reach_two_poppers() {
    loom::model(|| {
        let queue = Arc::new(Queue::new(2, Policy::Block).unwrap());
        let poppers: Vec<_> = (0..2)
            .map(|_| {
                let queue = queue.clone();
                thread::spawn(move || block_on(queue.pop()))
            })
            .collect();
        assert_eq!(queue.try_push(1), PushOutcome::Accepted);
        assert_eq!(queue.try_push(2), PushOutcome::Accepted);
        let mut got: Vec<_> = poppers.into_iter().map(|p| p.join().unwrap()).collect();
        got.sort();
        assert_eq!(got, [Some(1), Some(2)]);
    });
}

/// A producer waiting for room under `Block` is woken by the pop that makes room.
#[test]
fn pop_wakes_a_waiting_producer() {
    loom::model(|| {
        let queue = Arc::new(Queue::new(1, Policy::Block).unwrap());
        assert_eq!(queue.try_push(1), PushOutcome::Accepted);
        let producer = thread::spawn({
            let queue = queue.clone();
            move || block_on(queue.push(2))
        });
        assert_eq!(block_on(queue.pop()), Some(1));
        assert_eq!(producer.join().unwrap(), PushOutcome::Accepted);
        assert_eq!(block_on(queue.pop()), Some(2));
    });
}

/// Close against a producer parked on a full `Block` queue: the push returns `Closed`,
/// whatever the interleaving (a check, then a listen, with no re-check lost this wake-up
/// about once in 30 000 runs of the semaphore queue).
#[test]
fn close_releases_a_parked_producer() {
    loom::model(|| {
        let queue = Arc::new(Queue::new(1, Policy::Block).unwrap());
        assert_eq!(queue.try_push(0), PushOutcome::Accepted);
        let producer = thread::spawn({
            let queue = queue.clone();
            move || block_on(queue.push(1))
        });
        assert!(queue.close());
        assert_eq!(producer.join().unwrap(), PushOutcome::Closed(1));
        assert_eq!(block_on(queue.pop()), Some(0));
    });
}

/// A popper woken but never polled again (an idle `select!` branch) holds one wake-up, not
/// both: the second push still wakes the other popper.
#[test]
fn an_idle_woken_popper_swallows_no_other_wake_up() {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Waker};

    loom::model(|| {
        let queue = Arc::new(Queue::new(4, Policy::Block).unwrap());
        // A waits in line, and will never be polled again while the model runs.
        let mut idle = pin!(queue.pop());
        assert!(idle
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_pending());
        let popper = thread::spawn({
            let queue = queue.clone();
            move || block_on(queue.pop())
        });
        assert_eq!(queue.try_push(1), PushOutcome::Accepted);
        assert_eq!(queue.try_push(2), PushOutcome::Accepted);
        assert!(popper.join().unwrap().is_some());
        assert_eq!(queue.len(), 1);
    });
}

/// A popper woken for an item and then dropped passes the wake-up on to the next one.
#[test]
fn a_dropped_woken_popper_passes_its_wake_up_on() {
    use std::future::Future;
    use std::task::{Context, Waker};

    loom::model(|| {
        let queue = Arc::new(Queue::new(2, Policy::Block).unwrap());
        let mut first = Box::pin(queue.pop());
        assert!(first
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_pending());
        let second = thread::spawn({
            let queue = queue.clone();
            move || block_on(queue.pop())
        });
        let pusher = thread::spawn({
            let queue = queue.clone();
            move || queue.try_push(7)
        });
        assert_eq!(pusher.join().unwrap(), PushOutcome::Accepted);
        drop(first);
        assert_eq!(second.join().unwrap(), Some(7));
    });
}

/// A parked producer gets the slot a pop frees, before a newcomer's `try_push`.
#[test]
fn a_freed_slot_goes_to_the_parked_producer() {
    loom::model(|| {
        let queue = Arc::new(Queue::new(1, Policy::Block).unwrap());
        assert_eq!(queue.try_push(0), PushOutcome::Accepted);
        let producer = thread::spawn({
            let queue = queue.clone();
            move || block_on(queue.push(1))
        });
        let newcomer = thread::spawn({
            let queue = queue.clone();
            move || queue.try_push(2)
        });
        assert_eq!(block_on(queue.pop()), Some(0));
        // Whatever the order, nothing is lost: the newcomer got in before the producer
        // parked (and the producer gets the slot its item frees), or was refused while the
        // freed slot was the producer's.
        match newcomer.join().unwrap() {
            PushOutcome::Accepted => {
                assert_eq!(block_on(queue.pop()), Some(2));
                assert_eq!(producer.join().unwrap(), PushOutcome::Accepted);
            }
            PushOutcome::Full(2) => {
                assert_eq!(producer.join().unwrap(), PushOutcome::Accepted);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(block_on(queue.pop()), Some(1));
    });
}

/// Two producers race for one slot: one may find room before the lock and none under it, and
/// must then join the line with a waker cloned after the lock is released; both get in.
#[test]
fn two_producers_race_for_one_slot() {
    loom::model(|| {
        let queue = Arc::new(Queue::new(1, Policy::Block).unwrap());
        let producers: Vec<_> = (1..=2)
            .map(|i| {
                let queue = queue.clone();
                thread::spawn(move || block_on(queue.push(i)))
            })
            .collect();
        let mut got = vec![block_on(queue.pop()), block_on(queue.pop())];
        for producer in producers {
            assert_eq!(producer.join().unwrap(), PushOutcome::Accepted);
        }
        got.sort();
        assert_eq!(got, [Some(1), Some(2)]);
    });
}

/// A sink's reserved slot, given back when the sink is dropped, goes to the producer waiting
/// for room.
#[test]
fn a_dropped_sink_hands_its_slot_to_a_waiting_producer() {
    use futures_sink::Sink;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    loom::model(|| {
        let queue = Arc::new(Queue::new(1, Policy::Block).unwrap());
        let mut sink = queue.clone().into_sink();
        let ready = Pin::new(&mut sink).poll_ready(&mut Context::from_waker(Waker::noop()));
        assert!(
            matches!(ready, Poll::Ready(Ok(()))),
            "a free slot, reserved"
        );
        let producer = thread::spawn({
            let queue = queue.clone();
            move || block_on(queue.push(7))
        });
        drop(sink);
        assert_eq!(producer.join().unwrap(), PushOutcome::Accepted);
        assert_eq!(block_on(queue.pop()), Some(7));
    });
}

/// The pressure signal's check → listen → check: a crossing made on another thread while the
/// watcher checks, listens or sleeps is seen, each once, and the watcher never sleeps
/// through the last one.
#[test]
fn pressure_watcher_sees_each_crossing() {
    loom::model(|| {
        let mut queue = Queue::new(2, Policy::DropNewest).unwrap();
        let mut pressure = queue.watermarks(2, 0).unwrap();
        let queue = Arc::new(queue);
        let filler = thread::spawn({
            let queue = queue.clone();
            move || {
                assert_eq!(queue.try_push(1), PushOutcome::Accepted);
                assert_eq!(queue.try_push(2), PushOutcome::Accepted); // 2: high
            }
        });
        assert_eq!(block_on(pressure.changed()), Some(PressureLevel::High));
        filler.join().unwrap();
        let drainer = thread::spawn({
            let queue = queue.clone();
            move || {
                assert_eq!(block_on(queue.pop()), Some(1));
                assert_eq!(block_on(queue.pop()), Some(2)); // 0: normal
            }
        });
        assert_eq!(block_on(pressure.changed()), Some(PressureLevel::Normal));
        drainer.join().unwrap();
        assert_eq!(pressure.crossings(), 2);
    });
}

/// Close ends a watcher waiting for a crossing that will not come.
#[test]
fn close_ends_a_pressure_watcher() {
    loom::model(|| {
        let mut queue = Queue::<u8>::new(2, Policy::Block).unwrap();
        let mut pressure = queue.watermarks(2, 0).unwrap();
        let queue = Arc::new(queue);
        let closer = thread::spawn({
            let queue = queue.clone();
            move || assert!(queue.close())
        });
        assert_eq!(block_on(pressure.changed()), None);
        closer.join().unwrap();
    });
}
