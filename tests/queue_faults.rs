//! The queue faults of issue 9, one test per input, each asserting the right value.
//!
//! Each test says which item of the issue it pins, and what the queue before the rewrite
//! (commit 219b89b: an items semaphore, a `room` event, `async fn` push and pop) did with the
//! same input, so that a reader can see the test is able to fail. Deterministic tests poll
//! futures by hand with a counting waker; the stress tests hand off with barriers and
//! channels, never a sleep, and a channel's `recv_timeout` serves only as a hang guard.
//!
//! The stress sizes keep the file well under a few seconds in debug; `FAULT_ITERS=n`
//! multiplies them.

mod common;

use common::{CountingWaker, Sp};

use std::cell::Cell;
use std::error::Error;
use std::fmt::Debug;
use std::future::Future;
use std::marker::PhantomPinned;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::Duration;

use backpressure_pipeline::{
    BuildError, CancellationToken, ConfigError, DropGuard, OnPanic, Pipeline, PipelineBuilder,
    Policy, Pop, PopMany, PopStream, Producer, Push, PushOutcome, PushSink, Queue, QueueStats,
    Report, SendError, SpawnError, Stats, StopCause, WaitForCancellation, WaitForCancellationOwned,
};
use futures_util::stream::{self, FusedStream};
use futures_util::{FutureExt, Sink, SinkExt, StreamExt};

const POLICIES: [Policy; 3] = [Policy::DropNewest, Policy::DropOldest, Policy::Block];

/// How long a stress iteration may wait for its result before it is declared hung. A hang
/// guard only: every result arrives in microseconds or never.
const HANG: Duration = Duration::from_secs(10);

fn new_queue<T>(capacity: usize, policy: Policy) -> Queue<T> {
    Queue::new(capacity, policy).expect("a valid capacity")
}

fn poll_once<F: Future + Unpin>(future: &mut F, waker: &Waker) -> Poll<F::Output> {
    Pin::new(future).poll(&mut Context::from_waker(waker))
}

/// Runs `f` on its own thread and returns its result; fails the test if it takes longer
/// than [`HANG`] (an unbounded loop shows up as a failure, not as a stuck suite).
fn within_hang_guard<R: Send + 'static>(what: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (done, result) = mpsc::channel();
    let worker = thread::spawn(move || {
        let _ = done.send(f());
    });
    match result.recv_timeout(HANG) {
        Ok(value) => {
            worker.join().expect("the guarded thread");
            value
        }
        Err(RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the guarded thread ended without a result"),
        },
        Err(RecvTimeoutError::Timeout) => panic!("{what}: still running after {HANG:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Waiting consumers of every kind, polled by hand.
// ---------------------------------------------------------------------------------------

/// The three ways to wait for items: `pop`, `pop_many` and the stream.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Pop,
    /// `pop_many` with this limit.
    PopMany(usize),
    Stream,
}

const KINDS: [Kind; 3] = [Kind::Pop, Kind::PopMany(1), Kind::Stream];

/// A waiting consumer polled by hand: what one poll yields, as a `Vec` (empty for "closed
/// and empty"). Dropping it drops the future or stream inside.
type Waiter<'q> = Box<dyn FnMut(&Waker) -> Poll<Vec<u32>> + 'q>;

fn waiter(queue: &Arc<Queue<u32>>, kind: Kind) -> Waiter<'_> {
    match kind {
        Kind::Pop => {
            let mut pop = queue.pop();
            Box::new(move |waker| poll_once(&mut pop, waker).map(|item| item.into_iter().collect()))
        }
        Kind::PopMany(limit) => {
            let mut pop = queue.pop_many(limit);
            Box::new(move |waker| poll_once(&mut pop, waker))
        }
        Kind::Stream => {
            let mut stream = queue.clone().into_stream();
            Box::new(move |waker| {
                stream
                    .poll_next_unpin(&mut Context::from_waker(waker))
                    .map(|item| item.into_iter().collect())
            })
        }
    }
}

// ---------------------------------------------------------------------------------------
// Issue item 2: a woken but idle waiter must not absorb the wake-ups of others.
// ---------------------------------------------------------------------------------------

// Pins issue item 2 (woken-but-idle waiter). The old queue woke poppers through the items
// semaphore's `notify(1)`, which is not additional: push 1 notified A, push 2's notify found
// A still notified and did nothing, so B slept with an item in the queue (B's count stayed
// 0 here, and its poll returned `Pending`). The old chain wake ran only when A got around to
// popping, which an idle `select!` branch never does.
#[test]
fn an_idle_woken_waiter_does_not_absorb_the_next_wake_up() {
    for a_kind in KINDS {
        for b_kind in KINDS {
            let case = format!("A = {a_kind:?}, B = {b_kind:?}");
            let queue = Arc::new(new_queue::<u32>(4, Policy::Block));
            let (a_wakes, a_waker) = CountingWaker::new();
            let (b_wakes, b_waker) = CountingWaker::new();
            let mut a = waiter(&queue, a_kind);
            let mut b = waiter(&queue, b_kind);
            assert!(a(&a_waker).is_pending(), "{case}");
            assert!(b(&b_waker).is_pending(), "{case}");

            assert_eq!(queue.try_push(1), PushOutcome::Accepted);
            assert_eq!(
                (a_wakes.count(), b_wakes.count()),
                (1, 0),
                "{case}: push 1 wakes the first in line"
            );
            // A is woken but left alone (kept alive, never polled): push 2 must reach B.
            assert_eq!(queue.try_push(2), PushOutcome::Accepted);
            assert_eq!(
                (a_wakes.count(), b_wakes.count()),
                (1, 1),
                "{case}: push 2 wakes B although A has not run"
            );
            assert_eq!(b(&b_waker), Poll::Ready(vec![1]), "{case}");
            assert_eq!(queue.len(), 1, "{case}");

            // A's own wake-up is still good: it takes the item left for it.
            assert_eq!(a(&a_waker), Poll::Ready(vec![2]), "{case}");
            assert!(queue.is_empty(), "{case}");
        }
    }
}

// Pins issue item 2, with a batch taker as B. The old queue left B asleep here too (same
// non-additional notify). Also pins that a woken popper that finds nothing (B took both
// items) waits again and is woken for the next item: its used-up wake-up is not a stale
// "notified" state that swallows the next one.
#[test]
fn a_batch_taker_woken_beside_an_idle_waiter_takes_both_and_the_idle_one_waits_again() {
    for a_kind in KINDS {
        let case = format!("A = {a_kind:?}");
        let queue = Arc::new(new_queue::<u32>(4, Policy::Block));
        let (a_wakes, a_waker) = CountingWaker::new();
        let (b_wakes, b_waker) = CountingWaker::new();
        let mut a = waiter(&queue, a_kind);
        let mut b = waiter(&queue, Kind::PopMany(8));
        assert!(a(&a_waker).is_pending(), "{case}");
        assert!(b(&b_waker).is_pending(), "{case}");
        assert_eq!(queue.try_push(1), PushOutcome::Accepted);
        assert_eq!(queue.try_push(2), PushOutcome::Accepted);
        assert_eq!((a_wakes.count(), b_wakes.count()), (1, 1), "{case}");
        assert_eq!(b(&b_waker), Poll::Ready(vec![1, 2]), "{case}");
        assert!(queue.is_empty(), "{case}");

        // A was woken for item 1, which B took: it finds nothing and waits again.
        assert!(a(&a_waker).is_pending(), "{case}");
        assert_eq!(queue.try_push(3), PushOutcome::Accepted);
        assert_eq!(a_wakes.count(), 2, "{case}: A is woken for the next item");
        assert_eq!(a(&a_waker), Poll::Ready(vec![3]), "{case}");
    }
}

// Pins issue item 2 (cancel side): a popper woken for an item and dropped without being
// polled again passes its wake-up on. The old queue passed this one (event-listener hands a
// dropped listener's notification on); the rewrite replaced that with its own ticket
// hand-off (`leave_poppers`), which this guards.
#[test]
fn a_woken_waiter_dropped_unpolled_passes_its_wake_up_on() {
    for a_kind in KINDS {
        for b_kind in KINDS {
            let case = format!("A = {a_kind:?}, B = {b_kind:?}");
            let queue = Arc::new(new_queue::<u32>(4, Policy::Block));
            let (a_wakes, a_waker) = CountingWaker::new();
            let (b_wakes, b_waker) = CountingWaker::new();
            let mut a = waiter(&queue, a_kind);
            let mut b = waiter(&queue, b_kind);
            assert!(a(&a_waker).is_pending(), "{case}");
            assert!(b(&b_waker).is_pending(), "{case}");
            assert_eq!(queue.try_push(1), PushOutcome::Accepted);
            assert_eq!((a_wakes.count(), b_wakes.count()), (1, 0), "{case}");

            drop(a);
            assert_eq!(b_wakes.count(), 1, "{case}: A's wake-up goes to B");
            assert_eq!(b(&b_waker), Poll::Ready(vec![1]), "{case}");
            assert!(queue.is_empty(), "{case}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Issue item 2 (fairness): waiting producers are served first come, first served.
// ---------------------------------------------------------------------------------------

// Pins issue item 2 (FIFO producers). The old queue's pop only notified the `room` event;
// the freed slot was free to anyone, so in round 1 the newcomer's `try_push` was `Accepted`
// (and its `push(..).now_or_never()` completed), and the parked producer, once it ran,
// found the queue full again and went back to waiting: overtaken every round.
#[test]
fn a_parked_producer_gets_the_freed_slot_before_any_newcomer_100_of_100_rounds() {
    let queue = new_queue::<u32>(1, Policy::Block);
    assert_eq!(queue.try_push(0), PushOutcome::Accepted);
    let (mut wakes, mut waker) = CountingWaker::new();
    let mut parked = queue.push(1);
    assert!(poll_once(&mut parked, &waker).is_pending());

    let mut served_in_order = 0;
    for round in 1..=100u32 {
        // The queue holds `round - 1`; `parked` (pushing `round`) is first in line.
        assert_eq!(queue.pop().now_or_never(), Some(Some(round - 1)));
        assert_eq!(
            wakes.count(),
            1,
            "round {round}: the pop wakes the parked producer"
        );
        // The freed slot is reserved for it: newcomers see the queue full.
        assert_eq!(
            queue.try_push(9999),
            PushOutcome::Full(9999),
            "round {round}: a newcomer's try_push takes the reserved slot"
        );
        assert!(
            queue.push(9999).now_or_never().is_none(),
            "round {round}: a newcomer's push takes the reserved slot"
        );
        // This round's newcomer, kept: it lines up behind `parked`.
        let (next_wakes, next_waker) = CountingWaker::new();
        let mut next = queue.push(round + 1);
        assert!(
            poll_once(&mut next, &next_waker).is_pending(),
            "round {round}"
        );

        assert_eq!(
            poll_once(&mut parked, &waker),
            Poll::Ready(PushOutcome::Accepted),
            "round {round}: the parked producer gets its slot"
        );
        assert_eq!(queue.len(), 1, "round {round}");
        assert_eq!(
            next_wakes.count(),
            0,
            "round {round}: no slot for the newcomer yet"
        );
        served_in_order += 1;
        (parked, wakes, waker) = (next, next_wakes, next_waker);
    }
    assert_eq!(served_in_order, 100);

    // The last newcomer is served the same way, and every item came out in order.
    assert_eq!(queue.pop().now_or_never(), Some(Some(100)));
    assert_eq!(wakes.count(), 1);
    assert_eq!(
        poll_once(&mut parked, &waker),
        Poll::Ready(PushOutcome::Accepted)
    );
    assert_eq!(queue.pop().now_or_never(), Some(Some(101)));
    assert!(queue.is_empty());
}

// Pins issue item 2 (FIFO producers, batches): `pop_many` freeing n slots reserves one for
// each of the first n producers in line and none for the rest. The old queue notified n
// listeners but reserved nothing: `try_push` after the batch was `Accepted`.
#[test]
fn a_batch_pop_reserves_one_slot_per_parked_producer_in_line_order() {
    let queue = new_queue::<u32>(3, Policy::Block);
    for item in 0..3 {
        assert_eq!(queue.try_push(item), PushOutcome::Accepted);
    }
    let mut parked: Vec<_> = (3..6)
        .map(|item| {
            let (wakes, waker) = CountingWaker::new();
            let mut push = queue.push(item);
            assert!(poll_once(&mut push, &waker).is_pending());
            (push, wakes, waker)
        })
        .collect();
    assert_eq!(queue.pop_many(2).now_or_never(), Some(vec![0, 1]));
    let counts: Vec<usize> = parked.iter().map(|(_, wakes, _)| wakes.count()).collect();
    assert_eq!(counts, [1, 1, 0], "the first two in line are woken");
    assert_eq!(queue.try_push(9999), PushOutcome::Full(9999));
    for (push, _, waker) in &mut parked[..2] {
        assert_eq!(poll_once(push, waker), Poll::Ready(PushOutcome::Accepted));
    }
    let (push, wakes, waker) = &mut parked[2];
    assert!(poll_once(push, waker).is_pending());
    assert_eq!(
        queue.pop_many(usize::MAX).now_or_never(),
        Some(vec![2, 3, 4])
    );
    assert_eq!(wakes.count(), 1);
    assert_eq!(poll_once(push, waker), Poll::Ready(PushOutcome::Accepted));
    assert_eq!(queue.pop_many(usize::MAX).now_or_never(), Some(vec![5]));
}

// Pins issue item 2 (cancel side of the reservation): a producer woken for a slot and then
// dropped hands the slot to the next in line, who is woken. The old queue had no
// reservation: after the pop a newcomer's `try_push` was `Accepted`, which this test
// refuses (event-listener did pass the dropped listener's notification on).
#[test]
fn a_woken_producer_dropped_passes_its_slot_to_the_next_in_line() {
    let queue = new_queue::<u32>(1, Policy::Block);
    assert_eq!(queue.try_push(0), PushOutcome::Accepted);
    let (first_wakes, first_waker) = CountingWaker::new();
    let (second_wakes, second_waker) = CountingWaker::new();
    let mut first = queue.push(1);
    let mut second = queue.push(2);
    assert!(poll_once(&mut first, &first_waker).is_pending());
    assert!(poll_once(&mut second, &second_waker).is_pending());

    assert_eq!(queue.pop().now_or_never(), Some(Some(0)));
    assert_eq!((first_wakes.count(), second_wakes.count()), (1, 0));
    assert_eq!(queue.try_push(9999), PushOutcome::Full(9999));

    drop(first);
    assert_eq!(second_wakes.count(), 1, "the slot goes to the next in line");
    assert_eq!(
        queue.try_push(9999),
        PushOutcome::Full(9999),
        "and stays reserved for it"
    );
    assert_eq!(
        poll_once(&mut second, &second_waker),
        Poll::Ready(PushOutcome::Accepted)
    );
    assert_eq!(queue.pop().now_or_never(), Some(Some(2)));
}

// Pins issue item 2 (cancel side, nobody waiting): a producer woken for a slot and dropped
// with no producer behind it frees the slot. The old queue passed this (no reservation to
// leak); it guards the rewrite's `reserved` count against a leaked slot.
#[test]
fn a_woken_producer_dropped_with_none_behind_it_frees_the_slot() {
    let queue = new_queue::<u32>(1, Policy::Block);
    assert_eq!(queue.try_push(0), PushOutcome::Accepted);
    let (wakes, waker) = CountingWaker::new();
    let mut push = queue.push(1);
    assert!(poll_once(&mut push, &waker).is_pending());
    assert_eq!(queue.pop().now_or_never(), Some(Some(0)));
    assert_eq!(wakes.count(), 1);
    assert_eq!(queue.try_push(9999), PushOutcome::Full(9999));
    drop(push);
    assert_eq!(queue.try_push(7), PushOutcome::Accepted);
    assert_eq!(queue.len(), 1);
}

// Pins issue item 2 (the sink stands in the same line): a `Block` sink parked in
// `poll_ready` and woken for a slot, then dropped, hands the slot on; a sink that reserved
// a slot and is dropped without sending frees it. The old sink's `poll_ready` did not wait
// for room at all (with no push held it was `Ready(Ok)` at once, and its push ran at the
// flush), so the first assertion failed; this also guards the rewrite's `release`.
#[test]
fn a_sink_dropped_with_a_reserved_slot_hands_it_on() {
    let queue = Arc::new(new_queue::<u32>(1, Policy::Block));
    assert_eq!(queue.try_push(0), PushOutcome::Accepted);
    let (sink_wakes, sink_waker) = CountingWaker::new();
    let mut sink = queue.clone().into_sink();
    assert!(Pin::new(&mut sink)
        .poll_ready(&mut Context::from_waker(&sink_waker))
        .is_pending());
    let (push_wakes, push_waker) = CountingWaker::new();
    let mut push = queue.push(1);
    assert!(poll_once(&mut push, &push_waker).is_pending());

    assert_eq!(queue.pop().now_or_never(), Some(Some(0)));
    assert_eq!((sink_wakes.count(), push_wakes.count()), (1, 0));
    drop(sink);
    assert_eq!(
        push_wakes.count(),
        1,
        "the sink's slot goes to the push behind it"
    );
    assert_eq!(
        poll_once(&mut push, &push_waker),
        Poll::Ready(PushOutcome::Accepted)
    );
    assert_eq!(queue.pop().now_or_never(), Some(Some(1)));

    // Ready (a slot reserved), then dropped without a send: the slot is free again.
    let mut sink = queue.clone().into_sink();
    assert!(matches!(
        Pin::new(&mut sink).poll_ready(&mut Context::from_waker(Waker::noop())),
        Poll::Ready(Ok(()))
    ));
    assert_eq!(queue.try_push(9999), PushOutcome::Full(9999));
    drop(sink);
    assert_eq!(queue.try_push(2), PushOutcome::Accepted);
}

// ---------------------------------------------------------------------------------------
// Issue item 1: close releases every parked waiter.
// ---------------------------------------------------------------------------------------

// Pins issue item 1 (deterministic form). The old queue passed the sequential case (close
// notified the `room` event after setting the flag); its fault was the race below. Here a
// parked producer, one woken for a reserved slot and two still in line are all released by
// one close, and the items queued before it stay poppable.
#[test]
fn close_releases_every_parked_producer_with_its_item() {
    let queue = new_queue::<u32>(1, Policy::Block);
    assert_eq!(queue.try_push(0), PushOutcome::Accepted);
    let (wakes, waker) = CountingWaker::new();
    let mut push = queue.push(1);
    assert!(poll_once(&mut push, &waker).is_pending());
    assert!(queue.close());
    assert_eq!(wakes.count(), 1, "close wakes the parked producer");
    assert_eq!(
        poll_once(&mut push, &waker),
        Poll::Ready(PushOutcome::Closed(1))
    );
    assert_eq!(queue.pop().now_or_never(), Some(Some(0)));
    assert_eq!(queue.pop().now_or_never(), Some(None));

    // Close landing before the push's first poll: refused at once, nothing parked.
    let queue = new_queue::<u32>(1, Policy::Block);
    assert_eq!(queue.try_push(0), PushOutcome::Accepted);
    let mut push = queue.push(1);
    assert!(queue.close());
    assert_eq!(
        poll_once(&mut push, Waker::noop()),
        Poll::Ready(PushOutcome::Closed(1))
    );

    // Three parked; a pop reserves a slot for the first; close releases all three.
    let queue = new_queue::<u32>(1, Policy::Block);
    assert_eq!(queue.try_push(0), PushOutcome::Accepted);
    let mut parked: Vec<_> = (1..4)
        .map(|item| {
            let (wakes, waker) = CountingWaker::new();
            let mut push = queue.push(item);
            assert!(poll_once(&mut push, &waker).is_pending());
            (item, push, wakes, waker)
        })
        .collect();
    assert_eq!(queue.pop().now_or_never(), Some(Some(0)));
    assert!(queue.close());
    for (item, push, wakes, waker) in &mut parked {
        assert_eq!(wakes.count(), 1, "producer {item} is woken once");
        assert_eq!(
            poll_once(push, waker),
            Poll::Ready(PushOutcome::Closed(*item))
        );
    }
    assert_eq!(queue.pop().now_or_never(), Some(None));
}

// Pins issue item 1 (the popper side, deterministic). The old queue passed it (close
// flooded the items semaphore); it guards the rewrite's `notify_all` of the poppers' line,
// for every kind of waiting consumer, and the stream's termination after close.
#[test]
fn close_releases_every_parked_popper_with_nothing() {
    for kind in [Kind::Pop, Kind::PopMany(usize::MAX), Kind::Stream] {
        let queue = Arc::new(new_queue::<u32>(1, Policy::Block));
        let (wakes, waker) = CountingWaker::new();
        let mut parked = waiter(&queue, kind);
        assert!(parked(&waker).is_pending(), "{kind:?}");
        assert!(queue.close());
        assert_eq!(wakes.count(), 1, "{kind:?}: close wakes the parked popper");
        assert_eq!(parked(&waker), Poll::Ready(vec![]), "{kind:?}");
    }
}

/// A future's output, and whether its first poll was `Pending` (it parked before the close
/// landed): which side of the race an iteration fell on.
struct FirstPoll<F> {
    future: F,
    parked: Option<bool>,
}

impl<F: Future + Unpin> Future for FirstPoll<F> {
    type Output = (F::Output, bool);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let poll = Pin::new(&mut self.future).poll(cx);
        let parked = *self.parked.get_or_insert(poll.is_pending());
        poll.map(|output| (output, parked))
    }
}

fn first_poll<F: Future + Unpin>(future: F) -> FirstPoll<F> {
    FirstPoll {
        future,
        parked: None,
    }
}

/// Races `wait` on a fresh queue (filled with one item if `fill`) against `close`, the two
/// released together by a barrier, `iterations` times. Each `wait` gives its output, which
/// must be `expected`, and whether it parked first ([`FirstPoll`]). Two long-lived threads do the racing; the test thread hands them each iteration's queue.
fn race_with_close<R>(
    iterations: usize,
    fill: bool,
    wait: fn(&Queue<u32>) -> (R, bool),
    expected: R,
) where
    R: PartialEq + Debug + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(2));
    let (to_waiter, for_waiter) = mpsc::channel::<Arc<Queue<u32>>>();
    let (to_closer, for_closer) = mpsc::channel::<Arc<Queue<u32>>>();
    let (results, outcome) = mpsc::channel::<(R, bool)>();
    let waiter = thread::spawn({
        let barrier = barrier.clone();
        move || {
            for queue in for_waiter {
                barrier.wait();
                if results.send(wait(&queue)).is_err() {
                    return;
                }
            }
        }
    });
    let closer = thread::spawn(move || {
        for queue in for_closer {
            barrier.wait();
            assert!(queue.close(), "only this thread closes");
        }
    });
    let mut parked = 0;
    for iteration in 0..iterations {
        let queue = Arc::new(new_queue::<u32>(1, Policy::Block));
        if fill {
            assert_eq!(queue.try_push(0), PushOutcome::Accepted);
        }
        to_waiter.send(queue.clone()).expect("the waiter thread");
        to_closer.send(queue).expect("the closer thread");
        match outcome.recv_timeout(HANG) {
            Ok((got, was_parked)) => {
                assert_eq!(got, expected, "iteration {iteration}");
                parked += usize::from(was_parked);
            }
            Err(RecvTimeoutError::Timeout) => {
                panic!("iteration {iteration}: still waiting {HANG:?} after close (hung)")
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("iteration {iteration}: the waiter thread died")
            }
        }
    }
    drop((to_waiter, to_closer));
    waiter.join().expect("the waiter thread");
    closer.join().expect("the closer thread");
    // Information only (how often each side of the race was hit; `--nocapture` shows it):
    // the split depends on the machine, so it is not asserted.
    eprintln!("{parked} of {iterations} waits parked before the close landed");
}

// Pins issue item 1 (stress form). The old `push` read the closed flag under the buffer
// lock and then listened on `room`, but `close` set the flag and notified `room` without
// that lock: a close landing between the check and the listen notified nobody, and the
// push slept forever (a hang here, reported at the first such iteration). Every landing
// point must give `Closed(1)`: the queue is full and never popped, so nothing else can.
#[test]
fn a_block_push_racing_close_returns_closed_every_time() {
    race_with_close(
        common::iterations(10_000),
        true,
        |queue| ::smol::block_on(first_poll(queue.push(1))),
        PushOutcome::Closed(1),
    );
}

// Pins issue item 1 for the popper side of the same race: a pop on an empty queue racing
// close returns `None` every time. The old queue passed it (the close flood of permits is
// seen by any later acquire); it guards the rewrite's poppers' line.
#[test]
fn a_pop_racing_close_returns_none_every_time() {
    race_with_close(
        common::iterations(10_000),
        false,
        |queue| ::smol::block_on(first_poll(queue.pop())),
        None,
    );
}

// ---------------------------------------------------------------------------------------
// Issue item 5: stats snapshots are consistent and never go backwards.
// ---------------------------------------------------------------------------------------

/// Checks one snapshot against the previous one and against the invariants of one instant.
fn check_snapshot(previous: &QueueStats, now: &QueueStats, capacity: usize, sample: usize) {
    let at = format!("sample {sample}: {previous:?} then {now:?}");
    assert!(
        now.accepted >= previous.accepted,
        "accepted went back, {at}"
    );
    assert!(now.shed >= previous.shed, "shed went back, {at}");
    assert!(now.evicted >= previous.evicted, "evicted went back, {at}");
    assert!(now.popped >= previous.popped, "popped went back, {at}");
    assert!(
        now.peak_len >= previous.peak_len,
        "peak_len went back, {at}"
    );
    assert!(
        now.time_full >= previous.time_full,
        "time_full went back, {at}"
    );
    assert_eq!(
        now.accepted,
        now.popped + now.evicted + now.len as u64,
        "torn snapshot, {at}"
    );
    assert!(now.len <= capacity, "len above capacity, {at}");
    assert!(now.peak_len <= capacity, "peak_len above capacity, {at}");
}

/// One thread pushes (`try_push`) in a loop, one pops, and this one samples `stats()`.
fn snapshots_stay_consistent(policy: Policy) {
    const CAPACITY: usize = 1;
    let queue = Arc::new(new_queue::<u64>(CAPACITY, policy));
    let stop = Arc::new(AtomicBool::new(false));
    let pusher = thread::spawn({
        let (queue, stop) = (queue.clone(), stop.clone());
        move || {
            // (accepted, shed, evicted) as the pusher saw them.
            let mut tally = (0u64, 0u64, 0u64);
            let mut item = 0u64;
            // Relaxed: a stop request; the join below orders everything else.
            while !stop.load(Ordering::Relaxed) {
                match queue.try_push(item) {
                    PushOutcome::Accepted => tally.0 += 1,
                    PushOutcome::Shed(_) => tally.1 += 1,
                    PushOutcome::Evicted(_) => {
                        tally.0 += 1;
                        tally.2 += 1;
                    }
                    PushOutcome::Full(_) => {}
                    PushOutcome::Closed(_) => unreachable!("nobody closes the queue"),
                    PushOutcome::Superseded(_) => {
                        unreachable!("only a coalescing pipeline supersedes")
                    }
                }
                item += 1;
            }
            tally
        }
    });
    let popper = thread::spawn({
        let (queue, stop) = (queue.clone(), stop.clone());
        move || {
            let mut popped = 0u64;
            // Relaxed: as above.
            while !stop.load(Ordering::Relaxed) {
                if let Some(Some(_)) = queue.pop().now_or_never() {
                    popped += 1;
                }
            }
            popped
        }
    });

    let mut previous = queue.stats();
    for sample in 0..common::iterations(200_000) {
        let now = queue.stats();
        check_snapshot(&previous, &now, CAPACITY, sample);
        previous = now;
    }
    // Relaxed: see the loops.
    stop.store(true, Ordering::Relaxed);
    let (accepted, shed, evicted) = pusher.join().expect("the pusher");
    let popped = popper.join().expect("the popper");

    let last = queue.stats();
    check_snapshot(&previous, &last, CAPACITY, usize::MAX);
    assert_eq!(
        (last.accepted, last.shed, last.evicted, last.popped),
        (accepted, shed, evicted, popped),
        "{policy:?}: the counters agree with what the threads saw"
    );
    assert!(last.accepted > 0 && last.popped > 0, "{policy:?}: {last:?}");
}

// Pins issue item 5 (torn snapshots) under `DropNewest`. The old `stats()` loaded each
// counter on its own, without the lock, while pushes and pops changed them: a sample could
// see an accept without the matching length, so `accepted == popped + evicted + len` broke
// within a few thousand samples (and the meter's gauges were updated after the lock).
#[test]
fn stats_snapshots_are_consistent_under_drop_newest() {
    snapshots_stay_consistent(Policy::DropNewest);
}

// Pins issue item 5 under `DropOldest` (evictions change two counters at once; the old
// queue bumped them one after the other, so a sample between them was torn too).
#[test]
fn stats_snapshots_are_consistent_under_drop_oldest() {
    snapshots_stay_consistent(Policy::DropOldest);
}

// Pins issue item 5 under `Block` (the old queue tore here as under `DropNewest`).
#[test]
fn stats_snapshots_are_consistent_under_block() {
    snapshots_stay_consistent(Policy::Block);
}

// ---------------------------------------------------------------------------------------
// Issue item 6: the Sink and Stream contracts.
// ---------------------------------------------------------------------------------------

// Pins issue item 6a. The old sink's `start_send` stored a boxed `push` that ran only in
// `poll_flush`; `feed` never flushes, so dropping the sink dropped the item: the pop found
// an empty (closed) queue and returned `None`.
#[test]
fn a_fed_item_is_in_the_queue_after_the_sink_is_dropped() {
    for policy in POLICIES {
        let queue = Arc::new(new_queue::<u32>(4, policy));
        let mut sink = queue.clone().into_sink();
        assert!(
            matches!(sink.feed(7).now_or_never(), Some(Ok(()))),
            "{policy:?}: feed is ready at once with room"
        );
        drop(sink);
        assert_eq!(queue.len(), 1, "{policy:?}");
        queue.close();
        assert_eq!(queue.pop().now_or_never(), Some(Some(7)), "{policy:?}");
    }
}

// Pins issue item 6b. The old sink's `poll_ready` with nothing pending was `Ready(Ok)` on a
// closed queue (the refusal came only at the flush, as a `PushOutcome`), and its error type
// had no `is_closed`: the test did not even compile against it.
#[test]
fn poll_ready_refuses_on_a_closed_queue() {
    for policy in POLICIES {
        let queue = Arc::new(new_queue::<u32>(4, policy));
        let mut sink = queue.clone().into_sink();
        queue.close();
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(&mut sink).poll_ready(&mut cx) {
            Poll::Ready(Err(err)) => {
                assert!(err.is_closed(), "{policy:?}");
                assert_eq!(err.into_inner(), None, "{policy:?}");
            }
            other => panic!("{policy:?}: poll_ready on a closed queue gave {other:?}"),
        }
        // A `start_send` anyway hands the item back.
        let err = Pin::new(&mut sink).start_send(5).unwrap_err();
        assert!(err.is_closed(), "{policy:?}");
        assert_eq!(err.into_inner(), Some(5), "{policy:?}");
    }
}

// Pins issue item 6b, for a `Block` sink that reserved a slot before the close: the docs
// say "once the queue is closed, `poll_ready` fails", and the sink cannot honour its
// reservation after close (the `start_send` would be refused), so `poll_ready` must refuse
// as well. The old sink was `Ready(Ok)` here too (no pending push).
#[test]
fn poll_ready_refuses_after_close_even_with_a_slot_reserved() {
    let queue = Arc::new(new_queue::<u32>(4, Policy::Block));
    let mut sink = queue.clone().into_sink();
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(
        Pin::new(&mut sink).poll_ready(&mut cx),
        Poll::Ready(Ok(()))
    ));
    queue.close();
    match Pin::new(&mut sink).poll_ready(&mut cx) {
        Poll::Ready(Err(err)) => {
            assert!(err.is_closed());
            assert_eq!(err.into_inner(), None);
        }
        other => panic!("poll_ready after close, with a slot reserved before it, gave {other:?}"),
    }
}

// Pins issue item 6c (shedding policies). The old sink's error was `PushOutcome<T>` and a
// shed or evicted item was that error: `forward` stopped at the first shed with
// `Err(Shed(4))` / `Err(Evicted(0))` and the rest of the stream was never sent.
#[test]
fn forward_through_shedding_keeps_going_and_conserves_every_item() {
    for policy in [Policy::DropOldest, Policy::DropNewest] {
        let queue = Arc::new(new_queue::<u32>(4, policy));
        let shed = Arc::new(Mutex::new(Vec::new()));
        let sink = queue.clone().into_sink().on_shed({
            let shed = shed.clone();
            move |item| shed.lock().unwrap().push(item)
        });
        let forwarded = ::smol::block_on(stream::iter(0..1000u32).map(Ok).forward(sink));
        assert!(forwarded.is_ok(), "{policy:?}: {forwarded:?}");
        assert!(queue.is_closed(), "{policy:?}: forward closes the sink");

        let mut left = Vec::new();
        while let Some(Some(item)) = queue.pop().now_or_never() {
            left.push(item);
        }
        let shed = std::mem::take(&mut *shed.lock().unwrap());
        assert_eq!(shed.len() + left.len(), 1000, "{policy:?}: conservation");
        let mut all: Vec<u32> = shed.iter().chain(&left).copied().collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..1000).collect::<Vec<_>>(),
            "{policy:?}: each item once"
        );

        let stats = queue.stats();
        match policy {
            Policy::DropOldest => {
                assert_eq!(left, [996, 997, 998, 999]);
                assert_eq!((stats.evicted, stats.shed), (shed.len() as u64, 0));
            }
            _ => {
                assert_eq!(left, [0, 1, 2, 3]);
                assert_eq!((stats.shed, stats.evicted), (shed.len() as u64, 0));
            }
        }
    }
}

// Pins issue item 6c (`Block`, with a consumer task, on every runtime). The old sink passed
// this one (a `Block` push never sheds); it guards the rewrite's reservations across tasks.
async fn forward_under_block_delivers_every_item_in_order(sp: Sp) {
    let queue = Arc::new(new_queue::<u32>(4, Policy::Block));
    let consumer = common::spawn(&sp, queue.clone().into_stream().collect::<Vec<u32>>());
    let sink = queue.clone().into_sink();
    stream::iter(0..1000u32)
        .map(Ok)
        .forward(sink)
        .await
        .expect("the queue is open until forward closes it");
    assert!(queue.is_closed());
    let received = consumer.await.expect("the consumer finished");
    assert_eq!(received, (0..1000).collect::<Vec<_>>());
    let stats = queue.stats();
    assert_eq!((stats.accepted, stats.popped), (1000, 1000));
    assert_eq!((stats.shed, stats.evicted), (0, 0));
}

on_every_runtime!(forward_under_block_delivers_every_item_in_order);

fn send_sync<T: Send + Sync>() {}
fn send<T: Send>() {}
fn unpin<T: Unpin>() {}
fn error_send_sync_static<E: Error + Send + Sync + 'static>() {}

// Pins issue item 6d: the auto traits of every public type, checked at compile time. The old
// queue's `push`/`pop` were `async fn`s (no nameable type, `!Unpin`), and its sink and
// stream held `Pin<Box<dyn Future + Send>>` without `Sync`: `PushSink<u32>` and
// `PopStream<u32>` were not `Sync`, where async-channel's `Sender`/`Receiver` are.
#[test]
fn every_public_type_has_the_auto_traits_of_its_peers() {
    send_sync::<Queue<u32>>();
    send_sync::<Push<'static, u32>>();
    send_sync::<Pop<'static, u32>>();
    send_sync::<PopMany<'static, u32>>();
    send_sync::<PopStream<u32>>();
    send_sync::<PushSink<u32>>();
    send_sync::<SendError<u32>>();
    send_sync::<PushOutcome<u32>>();
    send_sync::<Policy>();
    send_sync::<ConfigError>();
    send_sync::<QueueStats>();
    send_sync::<Stats>();
    send_sync::<Pipeline<u32>>();
    send_sync::<Producer<u32>>();
    send_sync::<PipelineBuilder<u32>>();
    send_sync::<Report>();
    send_sync::<StopCause>();
    send_sync::<OnPanic>();
    send_sync::<BuildError>();
    send_sync::<SpawnError>();
    send_sync::<CancellationToken>();
    send_sync::<DropGuard>();
    send_sync::<WaitForCancellation<'static>>();
    send_sync::<WaitForCancellationOwned>();
    #[cfg(feature = "smol")]
    {
        send_sync::<backpressure_pipeline::SmolSpawner>();
        send_sync::<backpressure_pipeline::ExecutorSpawner>();
    }
    #[cfg(feature = "tokio")]
    send_sync::<backpressure_pipeline::TokioSpawner>();
    #[cfg(feature = "async-std")]
    send_sync::<backpressure_pipeline::AsyncStdSpawner>();

    // An item that is `Send` but not `Sync` (a `Cell`): the queue, its consumers and the
    // sink are still shared across threads, as async-channel's `Sender` and `Receiver` are;
    // a `Push` holds the item, so it is `Send` only, as async-channel's `Send` future.
    send_sync::<async_channel::Sender<Cell<u32>>>();
    send_sync::<async_channel::Receiver<Cell<u32>>>();
    send_sync::<Queue<Cell<u32>>>();
    send_sync::<Pop<'static, Cell<u32>>>();
    send_sync::<PopMany<'static, Cell<u32>>>();
    send_sync::<PopStream<Cell<u32>>>();
    send_sync::<PushSink<Cell<u32>>>();
    send::<Push<'static, Cell<u32>>>();

    // The named futures, the stream and the sink are `Unpin` whatever the item.
    unpin::<Push<'static, PhantomPinned>>();
    unpin::<Pop<'static, PhantomPinned>>();
    unpin::<PopMany<'static, PhantomPinned>>();
    unpin::<PopStream<PhantomPinned>>();
    unpin::<PushSink<PhantomPinned>>();
    unpin::<WaitForCancellation<'static>>();
    unpin::<WaitForCancellationOwned>();

    error_send_sync_static::<SendError<u32>>();
}

// Pins issue item 6e. The old `PopStream` did not implement `FusedStream` (the test did not
// compile against it), and polled after its end it created a fresh pop.
#[test]
fn the_stream_is_fused() {
    let queue = Arc::new(new_queue::<u32>(2, Policy::Block));
    assert_eq!(queue.try_push(1), PushOutcome::Accepted);
    assert!(queue.close());
    let mut stream = queue.clone().into_stream();
    let mut cx = Context::from_waker(Waker::noop());
    assert!(!stream.is_terminated());
    assert_eq!(stream.poll_next_unpin(&mut cx), Poll::Ready(Some(1)));
    assert!(!stream.is_terminated(), "items were left: not the end yet");
    assert_eq!(stream.poll_next_unpin(&mut cx), Poll::Ready(None));
    assert!(stream.is_terminated());
    assert_eq!(stream.poll_next_unpin(&mut cx), Poll::Ready(None));
    assert!(stream.is_terminated());

    // A stream parked on an open, empty queue ends when the queue closes.
    let queue = Arc::new(new_queue::<u32>(2, Policy::Block));
    let mut stream = queue.clone().into_stream();
    let (wakes, waker) = CountingWaker::new();
    let mut cx = Context::from_waker(&waker);
    assert!(stream.poll_next_unpin(&mut cx).is_pending());
    assert!(!stream.is_terminated());
    assert!(queue.close());
    assert_eq!(wakes.count(), 1);
    assert_eq!(stream.poll_next_unpin(&mut cx), Poll::Ready(None));
    assert!(stream.is_terminated());
}

/// `sink.send(1).await?` on a closed queue, in a function returning a boxed error.
fn send_into_closed_queue() -> Result<(), Box<dyn Error + Send + Sync>> {
    let queue = Arc::new(new_queue::<u32>(4, Policy::Block));
    queue.close();
    let mut sink = queue.into_sink();
    ::smol::block_on(async move {
        sink.send(1).await?;
        Ok(())
    })
}

// Pins issue item 6f. The old sink's error was `PushOutcome<T>`, which does not implement
// `std::error::Error`: `sink.send(1).await?` into a `Box<dyn Error>` did not compile.
#[test]
fn send_error_works_with_the_question_mark_into_a_boxed_error() {
    let err = send_into_closed_queue().expect_err("the queue is closed");
    assert_eq!(err.to_string(), "sending into a closed queue");
    let err = err
        .downcast::<SendError<u32>>()
        .expect("the boxed error is the sink's SendError");
    assert!(err.is_closed());
    // `send` asks `poll_ready` first, which refuses: the item never reached `start_send`.
    assert_eq!(err.into_inner(), None);
}

// ---------------------------------------------------------------------------------------
// Issue item 7: a batch is bounded by the data, not by the caller's limit.
// ---------------------------------------------------------------------------------------

// Pins issue item 7. After close the old queue's items semaphore held a flood of
// `usize::MAX >> 1` permits, and `pop_many(usize::MAX)` took them one by one
// (`while reserved < limit { try_acquire }`): some 2^63 iterations under the buffer lock,
// a hang in practice (this guard reports it after 10 s).
#[test]
fn pop_many_of_usize_max_after_close_takes_what_is_there_at_once() {
    let batch = within_hang_guard("pop_many(usize::MAX) on a closed queue", || {
        let queue = new_queue::<u32>(4, Policy::Block);
        for item in 0..3 {
            assert_eq!(queue.try_push(item), PushOutcome::Accepted);
        }
        assert!(queue.close());
        let batch = queue.pop_many(usize::MAX).now_or_never();
        // Closed and empty now: the next batch is empty, at once.
        assert_eq!(queue.pop_many(usize::MAX).now_or_never(), Some(vec![]));
        batch
    });
    assert_eq!(batch, Some(vec![0, 1, 2]));
}

// Pins issue item 7 on an open queue, and `pop_many(0)`. The old queue passed these (on an
// open queue `try_acquire` failed after the third permit; a limit of 0 returned at once);
// they guard the rewrite's `clamp(1, len)` and its limit-0 shortcut, which must not wait
// even on an empty queue, nor take anything from a full one.
#[test]
fn pop_many_on_an_open_queue_takes_what_is_there_and_zero_takes_nothing() {
    let queue = new_queue::<u32>(4, Policy::Block);
    assert_eq!(
        queue.pop_many(0).now_or_never(),
        Some(vec![]),
        "empty queue"
    );
    for item in 0..3 {
        assert_eq!(queue.try_push(item), PushOutcome::Accepted);
    }
    assert_eq!(queue.pop_many(0).now_or_never(), Some(vec![]), "with items");
    assert_eq!(queue.len(), 3);
    assert_eq!(
        queue.pop_many(usize::MAX).now_or_never(),
        Some(vec![0, 1, 2])
    );
    assert!(queue.is_empty());
    assert!(
        queue.pop_many(usize::MAX).now_or_never().is_none(),
        "open and empty: waits"
    );
}
