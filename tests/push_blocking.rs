//! `Queue::push_blocking`: a plain thread's back-pressured push.
//!
//! A test cannot see from outside that a thread is parked in `push_blocking` (the queue does
//! not expose its line of producers), so each race is written to pass whichever side lands
//! first and is run many times to hit both: the pop (or the close) may come before the push
//! parks, or after. What is checked in every order is that the push cannot complete while
//! the queue is full, and what it returns once released. Hand-offs use barriers and
//! channels, never a sleep; a channel's `recv_timeout` serves only as a hang guard.
//!
//! Sizes keep the file under a second in debug; `FAULT_ITERS=n` multiplies them.

mod common;

use common::{Live, Tracked};

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use backpressure_pipeline::{Policy, PushOutcome, Queue};

/// How long a release may take before the test is declared hung. A hang guard only: every
/// release comes in microseconds or never.
const HANG: Duration = Duration::from_secs(10);

/// An item that counts as live until dropped.
#[derive(Debug)]
struct Item {
    id: u32,
    _live: Tracked,
}

fn item(live: &Live, id: u32) -> Item {
    Item {
        id,
        _live: live.track(),
    }
}

/// The outcome with the item replaced by its id, to compare and print.
fn ids(outcome: PushOutcome<Item>) -> PushOutcome<u32> {
    match outcome {
        PushOutcome::Accepted => PushOutcome::Accepted,
        PushOutcome::Evicted(item) => PushOutcome::Evicted(item.id),
        PushOutcome::Superseded(item) => PushOutcome::Superseded(item.id),
        PushOutcome::Shed(item) => PushOutcome::Shed(item.id),
        PushOutcome::Full(item) => PushOutcome::Full(item.id),
        PushOutcome::Closed(item) => PushOutcome::Closed(item.id),
    }
}

fn pop_id(queue: &Queue<Item>) -> Option<u32> {
    smol::block_on(queue.pop()).map(|item| item.id)
}

/// The next value from `rx`, or a failure if it takes longer than [`HANG`].
fn recv_within_hang_guard<R>(rx: &Receiver<R>, what: &str) -> R {
    match rx.recv_timeout(HANG) {
        Ok(value) => value,
        Err(RecvTimeoutError::Timeout) => panic!("{what}: still blocked after {HANG:?} (hung)"),
        Err(RecvTimeoutError::Disconnected) => panic!("{what}: the pushing thread died"),
    }
}

/// Starts a thread that waits at `barrier`, then pushes `id` with `push_blocking`, and sends
/// what it returned (as an id).
fn blocked_pusher(
    queue: &Arc<Queue<Item>>,
    barrier: &Arc<Barrier>,
    live: &Live,
    id: u32,
) -> (thread::JoinHandle<()>, Receiver<PushOutcome<u32>>) {
    let (tx, rx) = mpsc::channel();
    let (queue, barrier, item) = (Arc::clone(queue), Arc::clone(barrier), item(live, id));
    let pusher = thread::spawn(move || {
        barrier.wait();
        let _ = tx.send(ids(queue.push_blocking(item)));
    });
    (pusher, rx)
}

// (a) A thread blocked on a full `Block` queue is released by a pop, and its item is queued
// behind the ones that were there. Before the pop nothing can release it, in either order.
#[test]
fn a_pop_releases_a_blocked_thread_and_its_item_follows_in_order() {
    for iteration in 0..common::iterations(200) {
        let live = Live::new();
        let queue = Arc::new(Queue::new(2, Policy::Block).expect("a valid capacity"));
        for id in 0..2 {
            assert_eq!(
                ids(queue.push_blocking(item(&live, id))),
                PushOutcome::Accepted
            );
        }
        let barrier = Arc::new(Barrier::new(2));
        let (pusher, outcome) = blocked_pusher(&queue, &barrier, &live, 2);
        barrier.wait();

        // Full and never popped yet: the push cannot have returned.
        assert_eq!(
            outcome.try_recv(),
            Err(TryRecvError::Empty),
            "iteration {iteration}: returned before any room was made"
        );
        assert_eq!(pop_id(&queue), Some(0), "iteration {iteration}");
        let released = recv_within_hang_guard(&outcome, "after a pop");
        assert_eq!(released, PushOutcome::Accepted, "iteration {iteration}");
        pusher.join().expect("the pushing thread");

        assert_eq!(pop_id(&queue), Some(1), "iteration {iteration}");
        assert_eq!(pop_id(&queue), Some(2), "iteration {iteration}");
        let stats = queue.stats();
        assert_eq!((stats.accepted, stats.popped, stats.len), (3, 3, 0));
        drop(queue);
        assert_eq!(live.count(), 0, "iteration {iteration}: an item leaked");
    }
}

// (b) Close releases a thread blocked in `push_blocking` with its item, and the items queued
// before stay poppable. Whether close lands before the push parks or after, the result is
// `Closed(item)`.
#[test]
fn close_releases_a_blocked_thread_with_its_item() {
    for iteration in 0..common::iterations(200) {
        let live = Live::new();
        let queue = Arc::new(Queue::new(1, Policy::Block).expect("a valid capacity"));
        assert_eq!(
            ids(queue.push_blocking(item(&live, 0))),
            PushOutcome::Accepted
        );
        let barrier = Arc::new(Barrier::new(2));
        let (pusher, outcome) = blocked_pusher(&queue, &barrier, &live, 1);
        barrier.wait();

        assert_eq!(
            outcome.try_recv(),
            Err(TryRecvError::Empty),
            "iteration {iteration}: returned before the close"
        );
        assert!(queue.close());
        let released = recv_within_hang_guard(&outcome, "after close");
        assert_eq!(released, PushOutcome::Closed(1), "iteration {iteration}");
        pusher.join().expect("the pushing thread");

        // The handed-back item was dropped by the thread; the queued one is still there.
        assert_eq!(live.count(), 1, "iteration {iteration}");
        assert_eq!(pop_id(&queue), Some(0), "iteration {iteration}");
        assert_eq!(pop_id(&queue), None, "iteration {iteration}");
        assert_eq!(live.count(), 0, "iteration {iteration}: an item leaked");
    }
}

// After close every policy hands the item back at once, full queue or not.
#[test]
fn after_close_every_policy_returns_closed() {
    let live = Live::new();
    for policy in [Policy::DropNewest, Policy::DropOldest, Policy::Block] {
        for fill in [0, 1] {
            let queue = Queue::new(1, policy).expect("a valid capacity");
            for id in 0..fill {
                assert_eq!(ids(queue.try_push(item(&live, id))), PushOutcome::Accepted);
            }
            assert!(queue.close());
            assert_eq!(
                ids(queue.push_blocking(item(&live, 7))),
                PushOutcome::Closed(7),
                "{policy:?}, {fill} queued"
            );
            assert_eq!(queue.stats().accepted, fill.into(), "{policy:?}");
        }
    }
    assert_eq!(live.count(), 0, "an item leaked");
}

/// What one script did: each push's outcome, the items left, and the counters after it.
#[derive(Debug, PartialEq)]
struct ScriptRun {
    outcomes: Vec<PushOutcome<u32>>,
    left: Vec<u32>,
    /// `(accepted, shed, evicted, popped)`.
    counters: (u64, u64, u64, u64),
}

/// Runs one script on a capacity-3 queue, pushing with `push`.
fn run_script(policy: Policy, push: fn(&Queue<Item>, Item) -> PushOutcome<Item>) -> ScriptRun {
    let live = Live::new();
    let queue = Queue::new(3, policy).expect("a valid capacity");
    let mut outcomes = Vec::new();
    // Fill, overfill, make room, overfill again.
    for id in 0..5 {
        outcomes.push(ids(push(&queue, item(&live, id))));
    }
    assert!(pop_id(&queue).is_some());
    for id in 5..9 {
        outcomes.push(ids(push(&queue, item(&live, id))));
    }
    // Every handed-back item was dropped with its outcome; only the queued ones are live.
    assert_eq!(live.count(), queue.len(), "{policy:?}: an item leaked");
    let stats = queue.stats();
    queue.close();
    let left = std::iter::from_fn(|| pop_id(&queue)).collect();
    assert_eq!(live.count(), 0, "{policy:?}: an item leaked");
    ScriptRun {
        outcomes,
        left,
        counters: (stats.accepted, stats.shed, stats.evicted, stats.popped),
    }
}

// (c) Under the shedding policies it never waits, and does exactly what `try_push` does:
// `Accepted` while there is room, then `Shed` (DropNewest) or `Evicted` (DropOldest), with
// the same counters and the same items left. Only this thread pops, so a push that waited
// would hang the test.
#[test]
fn under_shedding_policies_it_is_try_push() {
    use PushOutcome::{Accepted, Evicted, Shed};
    // Pushes 0..5 into a capacity-3 queue, pops one (0 under DropNewest, 2 under
    // DropOldest), pushes 5..9.
    let drop_newest = ScriptRun {
        outcomes: vec![
            Accepted,
            Accepted,
            Accepted,
            Shed(3),
            Shed(4),
            Accepted,
            Shed(6),
            Shed(7),
            Shed(8),
        ],
        left: vec![1, 2, 5],
        counters: (4, 5, 0, 1),
    };
    // Each push into a full queue evicts the oldest queued item.
    let drop_oldest = ScriptRun {
        outcomes: vec![
            Accepted,
            Accepted,
            Accepted,
            Evicted(0),
            Evicted(1),
            Accepted,
            Evicted(3),
            Evicted(4),
            Evicted(5),
        ],
        left: vec![6, 7, 8],
        counters: (9, 0, 5, 1),
    };
    for (policy, expected) in [
        (Policy::DropNewest, drop_newest),
        (Policy::DropOldest, drop_oldest),
    ] {
        let blocking = run_script(policy, Queue::push_blocking);
        let trying = run_script(policy, Queue::try_push);
        assert_eq!(
            blocking, trying,
            "{policy:?}: push_blocking is not try_push"
        );
        assert_eq!(blocking, expected, "{policy:?}");
    }
}

// (d) Stress: 4 threads × 10_000 items through a capacity-4 `Block` queue, one popper. Every
// item arrives exactly once, each thread's in the order it pushed them, and nothing is shed.
#[test]
fn four_blocking_threads_through_a_small_queue_lose_nothing_and_keep_order() {
    const THREADS: usize = 4;
    let per_thread = common::iterations(10_000) as u32;
    // Items are (producer, sequence number).
    let queue = Arc::new(Queue::<(usize, u32)>::new(4, Policy::Block).expect("a valid capacity"));
    let start = Arc::new(Barrier::new(THREADS + 1));

    let (done, finished) = mpsc::channel();
    let popper = thread::spawn({
        let queue = Arc::clone(&queue);
        move || {
            let mut seen = vec![Vec::new(); THREADS];
            smol::block_on(async {
                while let Some((thread, seq)) = queue.pop().await {
                    seen[thread].push(seq);
                }
            });
            let _ = done.send(seen);
        }
    });
    let producers: Vec<_> = (0..THREADS)
        .map(|thread| {
            let (queue, start) = (Arc::clone(&queue), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                for seq in 0..per_thread {
                    let outcome = queue.push_blocking((thread, seq));
                    assert_eq!(
                        outcome,
                        PushOutcome::Accepted,
                        "thread {thread}, item {seq}"
                    );
                }
            })
        })
        .collect();
    start.wait();
    for producer in producers {
        producer.join().expect("a producer thread");
    }
    assert!(queue.close());
    let seen = recv_within_hang_guard(&finished, "draining");
    popper.join().expect("the popper thread");

    let in_order: Vec<u32> = (0..per_thread).collect();
    for (thread, seqs) in seen.iter().enumerate() {
        assert_eq!(seqs.len(), in_order.len(), "thread {thread}: items lost");
        assert!(*seqs == in_order, "thread {thread}: items out of order");
    }
    let stats = queue.stats();
    let total = (THREADS as u64) * u64::from(per_thread);
    assert_eq!(
        (
            stats.accepted,
            stats.popped,
            stats.shed,
            stats.evicted,
            stats.len
        ),
        (total, total, 0, 0, 0)
    );
    assert!(stats.peak_len <= 4);
}

#[cfg(feature = "tokio")]
mod tokio_runtime {
    //! With the `tokio` feature: tokio's own check refuses a blocking push on a thread that
    //! runs a runtime, and only there.

    use super::*;

    use std::any::Any;
    use std::panic::{self, AssertUnwindSafe};

    /// The start of tokio's message when a thread running a runtime would block.
    const TOKIO_REFUSAL: &str = "Cannot start a runtime from within a runtime";

    fn message(payload: &(dyn Any + Send)) -> &str {
        payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(not a string)")
    }

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("build a tokio runtime")
    }

    // (e) On a full queue inside `Runtime::block_on` (a current-thread runtime: had it
    // blocked, no consumer could ever run), and on a queue with room too: it panics, and the
    // item is dropped with the panic.
    #[test]
    fn inside_block_on_it_panics_full_or_not() {
        let rt = current_thread();
        for fill in [1, 0] {
            let live = Live::new();
            let queue = Queue::new(1, Policy::Block).expect("a valid capacity");
            for id in 0..fill as u32 {
                assert_eq!(ids(queue.try_push(item(&live, id))), PushOutcome::Accepted);
            }
            let pushed = panic::catch_unwind(AssertUnwindSafe(|| {
                rt.block_on(async { queue.push_blocking(item(&live, 9)) })
            }));
            let payload = pushed.expect_err("push_blocking inside block_on must panic");
            assert!(
                message(&*payload).starts_with(TOKIO_REFUSAL),
                "{fill} queued: unexpected message {:?}",
                message(&*payload)
            );
            assert_eq!(queue.len(), fill, "the refused item is not queued");
            assert_eq!(live.count(), fill, "{fill} queued: the refused item leaked");
        }
    }

    // In a task on a multi-thread runtime's worker, the same refusal ends the task.
    #[test]
    fn in_a_task_on_a_worker_it_panics() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("build a tokio runtime");
        let queue = Arc::new(Queue::<u32>::new(1, Policy::Block).expect("a valid capacity"));
        let task = rt.spawn({
            let queue = Arc::clone(&queue);
            async move { queue.push_blocking(1) }
        });
        let error = rt.block_on(task).expect_err("the task must panic");
        let payload = error.into_panic();
        assert!(
            message(&*payload).starts_with(TOKIO_REFUSAL),
            "unexpected message {:?}",
            message(&*payload)
        );
        assert!(queue.is_empty());
    }

    // A `spawn_blocking` thread carries the runtime's context (`Handle::try_current` is `Ok`
    // there) but does not run the runtime: blocking is right there, as tokio's own
    // `blocking_send` allows. Here it blocks on a full queue until a task on the
    // current-thread runtime pops, so the runtime keeps running beside it.
    #[test]
    fn a_spawn_blocking_thread_may_block_and_is_released_by_a_task() {
        let rt = current_thread();
        let live = Live::new();
        let queue = Arc::new(Queue::new(1, Policy::Block).expect("a valid capacity"));
        assert_eq!(ids(queue.try_push(item(&live, 0))), PushOutcome::Accepted);
        let (popped, outcome) = rt.block_on({
            let (queue, item) = (Arc::clone(&queue), item(&live, 1));
            async move {
                let pusher = tokio::task::spawn_blocking({
                    let queue = Arc::clone(&queue);
                    move || ids(queue.push_blocking(item))
                });
                let first = queue.pop().await.map(|item| item.id);
                let outcome = pusher.await.expect("the blocking push does not panic");
                let second = queue.pop().await.map(|item| item.id);
                ([first, second], outcome)
            }
        });
        assert_eq!(outcome, PushOutcome::Accepted);
        assert_eq!(popped, [Some(0), Some(1)]);
        assert_eq!(live.count(), 0, "an item leaked");
    }

    // A plain thread inside `Handle::enter` has the context too, and runs no runtime.
    #[test]
    fn a_plain_thread_inside_handle_enter_may_block() {
        let rt = current_thread();
        let queue = Arc::new(Queue::new(1, Policy::Block).expect("a valid capacity"));
        assert_eq!(queue.try_push(0), PushOutcome::Accepted);
        let barrier = Arc::new(Barrier::new(2));
        let (tx, outcome) = mpsc::channel();
        let pusher = thread::spawn({
            let (queue, barrier, handle) = (
                Arc::clone(&queue),
                Arc::clone(&barrier),
                rt.handle().clone(),
            );
            move || {
                let _context = handle.enter();
                barrier.wait();
                let _ = tx.send(queue.push_blocking(1));
            }
        });
        barrier.wait();
        assert_eq!(outcome.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(smol::block_on(queue.pop()), Some(0));
        assert_eq!(
            recv_within_hang_guard(&outcome, "after a pop"),
            PushOutcome::Accepted
        );
        pusher.join().expect("the pushing thread");
        assert_eq!(smol::block_on(queue.pop()), Some(1));
    }
}
