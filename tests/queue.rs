//! The queue on its own: each policy when full, waiting pushers and poppers woken at the
//! right moments, close, cancel safety at every poll point, configuration errors, and a small
//! multi-thread stress that accounts for every item exactly once. Deterministic tests poll
//! futures by hand with a counting waker.

mod common;

use common::CountingWaker;

use std::future::Future;
use std::pin::{pin, Pin};

use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::thread;

use backpressure_pipeline::{ConfigError, Policy, PushOutcome, Queue};

const POLICIES: [Policy; 3] = [Policy::DropNewest, Policy::DropOldest, Policy::Block];

fn poll_once<F: Future>(future: Pin<&mut F>, waker: &Waker) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(waker))
}

fn queue<T>(capacity: usize, policy: Policy) -> Queue<T> {
    Queue::new(capacity, policy).expect("a valid capacity")
}

/// Pops every item left in a closed queue, in order.
fn drain<T>(queue: &Queue<T>) -> Vec<T> {
    assert!(
        queue.is_closed(),
        "drain only a closed queue, or it waits forever"
    );
    smol::block_on(async {
        let mut items = Vec::new();
        while let Some(item) = queue.pop().await {
            items.push(item);
        }
        items
    })
}

/// Pops one item from a queue known to hold one, without waiting.
fn pop_now<T>(queue: &Queue<T>) -> T {
    match poll_once(pin!(queue.pop()), Waker::noop()) {
        Poll::Ready(Some(item)) => item,
        Poll::Ready(None) => panic!("the queue is closed and empty"),
        Poll::Pending => panic!("the queue has no item ready"),
    }
}

// ---- Each policy when full ----

#[test]
fn drop_newest_sheds_the_incoming_item_and_keeps_order() {
    let queue = queue(3, Policy::DropNewest);
    for i in 0..3 {
        assert_eq!(queue.try_push(i), PushOutcome::Accepted);
    }
    let shed = queue.try_push(3);
    assert_eq!(shed, PushOutcome::Shed(3));
    assert!(!shed.is_accepted());
    assert!(shed.is_dropped());
    assert_eq!(shed.into_inner(), Some(3));
    // The async form does the same without waiting.
    assert_eq!(smol::block_on(queue.push(4)), PushOutcome::Shed(4));
    assert_eq!(queue.len(), 3);
    queue.close();
    assert_eq!(drain(&queue), [0, 1, 2]);
}

#[test]
fn drop_oldest_evicts_the_oldest_item() {
    let queue = queue(3, Policy::DropOldest);
    for i in 0..3 {
        assert_eq!(queue.try_push(i), PushOutcome::Accepted);
    }
    let evicted = queue.try_push(3);
    assert_eq!(evicted, PushOutcome::Evicted(0));
    assert!(evicted.is_accepted());
    assert!(evicted.is_dropped());
    assert_eq!(evicted.into_inner(), Some(0));
    assert_eq!(smol::block_on(queue.push(4)), PushOutcome::Evicted(1));
    assert_eq!(queue.len(), 3);
    queue.close();
    assert_eq!(drain(&queue), [2, 3, 4]);
}

#[test]
fn block_try_push_reports_full_and_leaves_the_queue_alone() {
    let queue = queue(3, Policy::Block);
    for i in 0..3 {
        assert_eq!(queue.try_push(i), PushOutcome::Accepted);
    }
    let full = queue.try_push(3);
    assert_eq!(full, PushOutcome::Full(3));
    assert!(!full.is_accepted());
    assert!(!full.is_dropped());
    assert_eq!(full.into_inner(), Some(3));
    assert_eq!(queue.len(), 3);
    queue.close();
    assert_eq!(drain(&queue), [0, 1, 2]);
}

#[test]
fn accepted_and_closed_outcomes() {
    let accepted = PushOutcome::<u8>::Accepted;
    assert!(accepted.is_accepted());
    assert!(!accepted.is_dropped());
    assert_eq!(accepted.into_inner(), None);

    let closed = PushOutcome::Closed(7);
    assert!(!closed.is_accepted());
    assert!(!closed.is_dropped());
    assert_eq!(closed.into_inner(), Some(7));
}

#[test]
fn push_outcome_debug_leaves_the_item_out() {
    /// Not `Debug`: proves the impl does not need `T: Debug`.
    struct Opaque;
    let cases = [
        (PushOutcome::Accepted, "Accepted"),
        (PushOutcome::Evicted(Opaque), "Evicted(..)"),
        (PushOutcome::Shed(Opaque), "Shed(..)"),
        (PushOutcome::Full(Opaque), "Full(..)"),
        (PushOutcome::Closed(Opaque), "Closed(..)"),
    ];
    for (outcome, expected) in cases {
        assert_eq!(format!("{outcome:?}"), expected);
    }
}

// ---- Block: waiting pushers ----

#[test]
fn block_push_waits_for_room_and_a_pop_wakes_it() {
    let queue = queue(1, Policy::Block);
    assert_eq!(queue.try_push(1), PushOutcome::Accepted);
    let (counter, waker) = CountingWaker::new();
    let mut push = pin!(queue.push(2));
    assert!(poll_once(push.as_mut(), &waker).is_pending());
    assert!(poll_once(push.as_mut(), &waker).is_pending());
    assert_eq!(counter.count(), 0);
    assert_eq!(queue.len(), 1);

    assert_eq!(pop_now(&queue), 1);
    assert!(counter.count() >= 1, "a pop must wake the waiting pusher");
    assert_eq!(
        poll_once(push.as_mut(), &waker),
        Poll::Ready(PushOutcome::Accepted)
    );
    assert_eq!(pop_now(&queue), 2);
}

#[test]
fn dropping_a_pending_block_push_changes_nothing() {
    let queue = queue(1, Policy::Block);
    assert_eq!(queue.try_push(1), PushOutcome::Accepted);
    {
        let mut push = pin!(queue.push(2));
        assert!(poll_once(push.as_mut(), Waker::noop()).is_pending());
    }
    assert_eq!(queue.len(), 1);
    queue.close();
    assert_eq!(drain(&queue), [1]);
}

#[test]
fn a_block_push_dropped_before_its_wake_up_leaves_the_next_pop_to_another_pusher() {
    let queue = queue(1, Policy::Block);
    assert_eq!(queue.try_push(1), PushOutcome::Accepted);
    let (_, first_waker) = CountingWaker::new();
    let (second, second_waker) = CountingWaker::new();
    let mut first = Box::pin(queue.push(2));
    let mut second_push = pin!(queue.push(3));
    assert!(poll_once(first.as_mut(), &first_waker).is_pending());
    assert!(poll_once(second_push.as_mut(), &second_waker).is_pending());

    drop(first);
    assert_eq!(queue.len(), 1);
    assert_eq!(pop_now(&queue), 1);
    assert!(second.count() >= 1);
    assert_eq!(
        poll_once(second_push.as_mut(), &second_waker),
        Poll::Ready(PushOutcome::Accepted)
    );
    queue.close();
    assert_eq!(drain(&queue), [3]);
}

#[test]
fn a_woken_block_push_that_is_dropped_passes_its_wake_up_on() {
    let queue = queue(1, Policy::Block);
    assert_eq!(queue.try_push(1), PushOutcome::Accepted);
    let (first, first_waker) = CountingWaker::new();
    let (second, second_waker) = CountingWaker::new();
    let mut first_push = Box::pin(queue.push(2));
    let mut second_push = pin!(queue.push(3));
    assert!(poll_once(first_push.as_mut(), &first_waker).is_pending());
    assert!(poll_once(second_push.as_mut(), &second_waker).is_pending());

    // The pop wakes the first pusher (fair order), which is cancelled before it runs.
    assert_eq!(pop_now(&queue), 1);
    assert!(first.count() >= 1);
    drop(first_push);
    assert!(
        second.count() >= 1,
        "the dropped pusher must pass its wake-up on"
    );
    assert!(queue.is_empty());
    assert_eq!(
        poll_once(second_push.as_mut(), &second_waker),
        Poll::Ready(PushOutcome::Accepted)
    );
    queue.close();
    assert_eq!(drain(&queue), [3]);
}

#[test]
fn two_pops_wake_two_waiting_pushers() {
    let queue = queue(2, Policy::Block);
    assert_eq!(queue.try_push(1), PushOutcome::Accepted);
    assert_eq!(queue.try_push(2), PushOutcome::Accepted);
    let (first, first_waker) = CountingWaker::new();
    let (second, second_waker) = CountingWaker::new();
    let mut first_push = pin!(queue.push(3));
    let mut second_push = pin!(queue.push(4));
    assert!(poll_once(first_push.as_mut(), &first_waker).is_pending());
    assert!(poll_once(second_push.as_mut(), &second_waker).is_pending());

    // Two slots free up before either pusher runs: both must be woken.
    assert_eq!(pop_now(&queue), 1);
    assert_eq!(pop_now(&queue), 2);
    assert!(first.count() >= 1);
    assert!(
        second.count() >= 1,
        "room for two, but only one pusher was woken"
    );
    assert_eq!(
        poll_once(second_push.as_mut(), &second_waker),
        Poll::Ready(PushOutcome::Accepted)
    );
    assert_eq!(
        poll_once(first_push.as_mut(), &first_waker),
        Poll::Ready(PushOutcome::Accepted)
    );
    queue.close();
    assert_eq!(drain(&queue), [4, 3]);
}

#[test]
fn close_wakes_waiting_block_pushers_with_their_items() {
    let queue = queue(1, Policy::Block);
    assert_eq!(queue.try_push(0), PushOutcome::Accepted);
    let wakers: Vec<_> = (0..3).map(|_| CountingWaker::new()).collect();
    let mut pushes: Vec<_> = (1..=3).map(|i| Box::pin(queue.push(i))).collect();
    for (push, (_, waker)) in pushes.iter_mut().zip(&wakers) {
        assert!(poll_once(push.as_mut(), waker).is_pending());
    }

    assert!(queue.close());
    for (i, (push, (counter, waker))) in pushes.iter_mut().zip(&wakers).enumerate() {
        assert!(counter.count() >= 1);
        assert_eq!(
            poll_once(push.as_mut(), waker),
            Poll::Ready(PushOutcome::Closed(i + 1))
        );
    }
    assert_eq!(drain(&queue), [0]);
}

// ---- Poppers ----

#[test]
fn pop_on_an_empty_queue_waits_and_a_push_wakes_it() {
    for policy in POLICIES {
        let queue = queue(2, policy);
        let (counter, waker) = CountingWaker::new();
        let mut pop = pin!(queue.pop());
        assert!(poll_once(pop.as_mut(), &waker).is_pending());
        assert!(poll_once(pop.as_mut(), &waker).is_pending());
        assert_eq!(counter.count(), 0);

        assert_eq!(queue.try_push(5), PushOutcome::Accepted);
        assert!(
            counter.count() >= 1,
            "{policy:?}: a push must wake the popper"
        );
        assert_eq!(poll_once(pop.as_mut(), &waker), Poll::Ready(Some(5)));
        assert!(queue.is_empty());
    }
}

#[test]
fn two_pushes_wake_two_waiting_poppers_in_turn() {
    for policy in POLICIES {
        let queue = queue(2, policy);
        let (first, first_waker) = CountingWaker::new();
        let (second, second_waker) = CountingWaker::new();
        let mut first_pop = pin!(queue.pop());
        let mut second_pop = pin!(queue.pop());
        assert!(poll_once(first_pop.as_mut(), &first_waker).is_pending());
        assert!(poll_once(second_pop.as_mut(), &second_waker).is_pending());

        // Two items arrive before either popper runs. The semaphore wakes the first popper;
        // the first, taking its item, must wake the second for the item left, or the second
        // would sleep beside it until the next push.
        assert_eq!(queue.try_push(1), PushOutcome::Accepted);
        assert_eq!(queue.try_push(2), PushOutcome::Accepted);
        assert!(first.count() >= 1);
        assert_eq!(
            poll_once(first_pop.as_mut(), &first_waker),
            Poll::Ready(Some(1))
        );
        assert!(
            second.count() >= 1,
            "{policy:?}: an item is left, but the second popper was not woken"
        );
        assert_eq!(
            poll_once(second_pop.as_mut(), &second_waker),
            Poll::Ready(Some(2))
        );
    }
}

#[test]
fn a_burst_of_pushes_wakes_every_waiting_popper_in_turn() {
    const POPPERS: usize = 5;
    let queue = queue(POPPERS, Policy::DropNewest);
    let wakers: Vec<_> = (0..POPPERS).map(|_| CountingWaker::new()).collect();
    let mut pops: Vec<_> = (0..POPPERS).map(|_| Box::pin(queue.pop())).collect();
    for (pop, (_, waker)) in pops.iter_mut().zip(&wakers) {
        assert!(poll_once(pop.as_mut(), waker).is_pending());
    }
    for i in 0..POPPERS {
        assert_eq!(queue.try_push(i), PushOutcome::Accepted);
    }
    // Run each popper once it is woken, as an executor would; all of them get an item.
    let mut got = Vec::new();
    for (pop, (counter, waker)) in pops.iter_mut().zip(&wakers) {
        assert!(counter.count() >= 1, "popper {} was never woken", got.len());
        match poll_once(pop.as_mut(), waker) {
            Poll::Ready(Some(item)) => got.push(item),
            other => panic!("a woken popper got {other:?}"),
        }
    }
    assert_eq!(got, [0, 1, 2, 3, 4]);
}

#[test]
fn close_wakes_every_waiting_popper_with_none() {
    for policy in POLICIES {
        let queue = queue::<u8>(4, policy);
        let wakers: Vec<_> = (0..3).map(|_| CountingWaker::new()).collect();
        let mut pops: Vec<_> = (0..3).map(|_| Box::pin(queue.pop())).collect();
        for (pop, (_, waker)) in pops.iter_mut().zip(&wakers) {
            assert!(poll_once(pop.as_mut(), waker).is_pending());
        }

        assert!(queue.close());
        for (pop, (counter, waker)) in pops.iter_mut().zip(&wakers) {
            assert!(
                counter.count() >= 1,
                "{policy:?}: close must wake every popper"
            );
            assert_eq!(poll_once(pop.as_mut(), waker), Poll::Ready(None));
        }
    }
}

#[test]
fn items_queued_before_close_are_popped_in_order_before_none() {
    for policy in POLICIES {
        let queue = queue(4, policy);
        for i in 0..3 {
            assert_eq!(queue.try_push(i), PushOutcome::Accepted);
        }
        assert!(queue.close());
        assert_eq!(queue.len(), 3);
        assert_eq!(pop_now(&queue), 0);
        assert_eq!(pop_now(&queue), 1);
        assert_eq!(pop_now(&queue), 2);
        for _ in 0..3 {
            // None, at once, and again: empty after close is final.
            assert_eq!(
                poll_once(pin!(queue.pop()), Waker::noop()),
                Poll::Ready(None)
            );
        }
    }
}

#[test]
fn push_after_close_returns_closed() {
    for policy in POLICIES {
        let queue = queue(2, policy);
        assert!(queue.close());
        assert_eq!(queue.try_push(1), PushOutcome::Closed(1));
        assert_eq!(smol::block_on(queue.push(2)), PushOutcome::Closed(2));
        assert!(queue.is_empty());
    }
}

#[test]
fn push_to_a_full_closed_queue_returns_closed_not_shed() {
    for policy in POLICIES {
        let queue = queue(2, policy);
        assert_eq!(queue.try_push(1), PushOutcome::Accepted);
        assert_eq!(queue.try_push(2), PushOutcome::Accepted);
        assert!(queue.close());
        assert_eq!(queue.try_push(3), PushOutcome::Closed(3), "{policy:?}");
        assert_eq!(smol::block_on(queue.push(4)), PushOutcome::Closed(4));
        assert_eq!(drain(&queue), [1, 2]);
    }
}

#[test]
fn close_returns_true_once() {
    let queue = queue::<u8>(1, Policy::Block);
    assert!(!queue.is_closed());
    assert!(queue.close());
    assert!(queue.is_closed());
    assert!(!queue.close());
    assert!(queue.is_closed());
}

#[test]
fn a_pop_dropped_at_any_poll_point_leaves_the_item_in_the_queue() {
    for policy in POLICIES {
        for polls in 0..4 {
            let queue = queue(2, policy);
            let (counter, waker) = CountingWaker::new();
            {
                let mut pop = pin!(queue.pop());
                for _ in 0..polls {
                    assert!(poll_once(pop.as_mut(), &waker).is_pending());
                }
                // The item arrives, and the popper is cancelled before it runs again.
                assert_eq!(queue.try_push(9), PushOutcome::Accepted);
                assert_eq!(counter.count(), usize::from(polls > 0));
            }
            assert_eq!(queue.len(), 1, "{policy:?}, {polls} polls");
            assert_eq!(pop_now(&queue), 9);
            assert!(queue.is_empty());
        }
    }
}

#[test]
fn a_woken_pop_that_is_dropped_passes_its_wake_up_on() {
    for policy in POLICIES {
        let queue = queue(2, policy);
        let (first, first_waker) = CountingWaker::new();
        let (second, second_waker) = CountingWaker::new();
        let mut first_pop = Box::pin(queue.pop());
        let mut second_pop = pin!(queue.pop());
        assert!(poll_once(first_pop.as_mut(), &first_waker).is_pending());
        assert!(poll_once(second_pop.as_mut(), &second_waker).is_pending());

        assert_eq!(queue.try_push(9), PushOutcome::Accepted);
        assert!(first.count() >= 1);
        drop(first_pop);
        assert!(second.count() >= 1, "{policy:?}: the wake-up was lost");
        assert_eq!(queue.len(), 1);
        assert_eq!(
            poll_once(second_pop.as_mut(), &second_waker),
            Poll::Ready(Some(9))
        );
    }
}

// ---- Capacity and configuration ----

#[test]
fn capacity_one_under_each_policy() {
    let queue1 = queue(1, Policy::DropNewest);
    assert_eq!(queue1.try_push(1), PushOutcome::Accepted);
    assert_eq!(queue1.try_push(2), PushOutcome::Shed(2));
    assert_eq!(pop_now(&queue1), 1);
    assert_eq!(queue1.try_push(3), PushOutcome::Accepted);
    assert_eq!(pop_now(&queue1), 3);

    let queue2 = queue(1, Policy::DropOldest);
    assert_eq!(queue2.try_push(1), PushOutcome::Accepted);
    assert_eq!(queue2.try_push(2), PushOutcome::Evicted(1));
    assert_eq!(queue2.try_push(3), PushOutcome::Evicted(2));
    assert_eq!(queue2.len(), 1);
    assert_eq!(pop_now(&queue2), 3);

    let queue3 = queue(1, Policy::Block);
    assert_eq!(queue3.try_push(1), PushOutcome::Accepted);
    assert_eq!(queue3.try_push(2), PushOutcome::Full(2));
    {
        let mut push = pin!(queue3.push(3));
        assert!(poll_once(push.as_mut(), Waker::noop()).is_pending());
        assert_eq!(pop_now(&queue3), 1);
        assert_eq!(
            poll_once(push.as_mut(), Waker::noop()),
            Poll::Ready(PushOutcome::Accepted)
        );
    }
    assert_eq!(pop_now(&queue3), 3);

    for queue in [queue1, queue2, queue3] {
        assert!(queue.is_empty());
        assert_eq!(queue.capacity(), 1);
    }
}

#[test]
fn zero_capacity_is_rejected() {
    for policy in POLICIES {
        assert_eq!(
            Queue::<u8>::new(0, policy).unwrap_err(),
            ConfigError::ZeroCapacity
        );
    }
}

#[test]
fn capacity_above_the_maximum_is_rejected() {
    for capacity in [Queue::<u8>::MAX_CAPACITY + 1, usize::MAX] {
        assert_eq!(
            Queue::<u8>::new(capacity, Policy::Block).unwrap_err(),
            ConfigError::CapacityTooLarge
        );
    }
}

#[test]
fn the_maximum_capacity_is_accepted_and_allocates_nothing_up_front() {
    /// Big enough that preallocating even a few items would show.
    type Big = [u8; 4096];
    let (queue, allocated) = alloc_counter::counting(|| {
        Queue::<Big>::new(Queue::<Big>::MAX_CAPACITY, Policy::DropOldest)
            .expect("the maximum capacity is valid")
    });
    assert_eq!(queue.capacity(), Queue::<Big>::MAX_CAPACITY);
    assert!(
        allocated < std::mem::size_of::<Big>(),
        "Queue::new allocated {allocated} bytes up front"
    );
    // And it works: memory comes as items arrive.
    assert_eq!(queue.try_push([1; 4096]), PushOutcome::Accepted);
    assert_eq!(pop_now(&queue)[0], 1);
}

#[test]
fn accessors_and_debug() {
    let queue = queue(4, Policy::DropOldest);
    assert_eq!(queue.capacity(), 4);
    assert_eq!(queue.policy(), Policy::DropOldest);
    assert_eq!(queue.len(), 0);
    assert!(queue.is_empty());
    assert_eq!(
        format!("{queue:?}"),
        "Queue { capacity: 4, policy: DropOldest, len: 0, closed: false, .. }"
    );

    assert_eq!(queue.try_push("a"), PushOutcome::Accepted);
    assert_eq!(queue.try_push("b"), PushOutcome::Accepted);
    assert_eq!(queue.len(), 2);
    assert!(!queue.is_empty());
    queue.close();
    assert_eq!(
        format!("{queue:?}"),
        "Queue { capacity: 4, policy: DropOldest, len: 2, closed: true, .. }"
    );
    assert_eq!(pop_now(&queue), "a");
    assert_eq!(queue.len(), 1);

    // Debug leaves the items out, so it needs no `T: Debug`.
    struct Opaque;
    let opaque = Queue::<Opaque>::new(1, Policy::Block).expect("valid");
    assert!(format!("{opaque:?}").starts_with("Queue { capacity: 1, policy: Block"));
}

// ---- Stress ----

/// What one producer saw.
#[derive(Default)]
struct Produced {
    accepted: usize,
    shed: Vec<u32>,
    evicted: Vec<u32>,
}

/// Pushes from several threads, pops from several more, closes, and checks that every item
/// was popped, shed or evicted exactly once.
fn stress(policy: Policy) {
    const PRODUCERS: u32 = 4;
    const PER_PRODUCER: u32 = 10_000;
    const POPPERS: usize = 2;
    const TOTAL: usize = (PRODUCERS * PER_PRODUCER) as usize;

    let queue = Arc::new(queue::<u32>(8, policy));
    let start = Arc::new(Barrier::new(PRODUCERS as usize + POPPERS));

    let poppers: Vec<_> = (0..POPPERS)
        .map(|_| {
            let queue = queue.clone();
            let start = start.clone();
            thread::spawn(move || {
                start.wait();
                smol::block_on(async {
                    let mut popped = Vec::new();
                    while let Some(item) = queue.pop().await {
                        popped.push(item);
                    }
                    popped
                })
            })
        })
        .collect();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let queue = queue.clone();
            let start = start.clone();
            thread::spawn(move || {
                start.wait();
                smol::block_on(async {
                    let mut seen = Produced::default();
                    for i in 0..PER_PRODUCER {
                        let item = p * PER_PRODUCER + i;
                        // Mix the two entry points.
                        let outcome = if i % 2 == 0 {
                            queue.push(item).await
                        } else {
                            queue.try_push(item)
                        };
                        match outcome {
                            PushOutcome::Accepted => seen.accepted += 1,
                            PushOutcome::Evicted(old) => {
                                seen.accepted += 1;
                                seen.evicted.push(old);
                            }
                            PushOutcome::Shed(item) => seen.shed.push(item),
                            // A full Block queue: wait for room the async way.
                            PushOutcome::Full(item) => {
                                assert_eq!(queue.push(item).await, PushOutcome::Accepted);
                                seen.accepted += 1;
                            }
                            PushOutcome::Closed(_) => panic!("closed while producing"),
                            PushOutcome::Superseded(_) => {
                                unreachable!("only a coalescing pipeline supersedes")
                            }
                        }
                    }
                    seen
                })
            })
        })
        .collect();

    let mut accepted = 0;
    let mut seen = vec![0u8; TOTAL];
    let mut count = |item: u32| seen[item as usize] += 1;
    let (mut shed, mut evicted) = (0, 0);
    for producer in producers {
        let produced = producer.join().expect("a producer panicked");
        accepted += produced.accepted;
        shed += produced.shed.len();
        evicted += produced.evicted.len();
        produced.shed.into_iter().for_each(&mut count);
        produced.evicted.into_iter().for_each(&mut count);
    }
    assert!(queue.close());
    let mut popped = 0;
    for popper in poppers {
        let items = popper.join().expect("a popper panicked");
        popped += items.len();
        items.into_iter().for_each(&mut count);
    }
    // The poppers ran until close and empty: nothing is left.
    let left = queue.len();
    assert_eq!(left, 0);

    assert_eq!(accepted + shed, TOTAL, "{policy:?}");
    assert_eq!(popped + shed + evicted + left, TOTAL, "{policy:?}");
    assert!(
        seen.iter().all(|&n| n == 1),
        "{policy:?}: an item was lost or duplicated"
    );
    match policy {
        Policy::Block => assert_eq!((shed, evicted), (0, 0)),
        Policy::DropNewest => assert_eq!(evicted, 0),
        Policy::DropOldest => assert_eq!(shed, 0),
    }
}

#[test]
fn stress_drop_newest_accounts_for_every_item() {
    stress(Policy::DropNewest);
}

#[test]
fn stress_drop_oldest_accounts_for_every_item() {
    stress(Policy::DropOldest);
}

#[test]
fn stress_block_accounts_for_every_item_and_sheds_none() {
    stress(Policy::Block);
}

/// A global allocator that counts the bytes each thread allocates, to show what
/// `Queue::new` allocates. Tests run on their own threads, so counts do not mix.
mod alloc_counter {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    struct Counting;

    thread_local! {
        static ALLOCATED: Cell<usize> = const { Cell::new(0) };
    }

    // SAFETY: every call is passed to `System` unchanged; the count is a const-initialised
    // thread-local `Cell` with no destructor, so touching it never allocates or re-enters.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = ALLOCATED.try_with(|n| n.set(n.get() + layout.size()));
            // SAFETY: the caller's contract is `System::alloc`'s.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: the caller's contract is `System::dealloc`'s.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    /// Runs `f` and returns its result and the bytes this thread allocated meanwhile.
    pub(super) fn counting<R>(f: impl FnOnce() -> R) -> (R, usize) {
        let before = ALLOCATED.with(Cell::get);
        let result = f();
        (result, ALLOCATED.with(Cell::get) - before)
    }
}
