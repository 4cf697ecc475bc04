//! The waiter lines' edges, found by a review of the change that brought them: a completed
//! push polled again touches no reservation; wakers leave the buffer lock before they are
//! dropped (a waker's drop is the runtime's code and may re-enter the queue); and the
//! reservations of producers and sinks across close, `pop_many` and random sequences.

mod common;

use common::CountingWaker;

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::Duration;

use backpressure_pipeline::{Policy, PushOutcome, Queue};
use futures_util::{FutureExt, Sink};

fn poll_once<F: Future + Unpin>(future: &mut F, waker: &Waker) -> Poll<F::Output> {
    Pin::new(future).poll(&mut Context::from_waker(waker))
}

/// Hang guard only: a deadlock never resolves, so the bound's length does not matter.
const HANG: Duration = Duration::from_secs(10);

fn within_hang_guard(what: &str, f: impl FnOnce() + Send + 'static) {
    let (done, result) = mpsc::channel();
    thread::spawn(move || {
        f();
        let _ = done.send(());
    });
    match result.recv_timeout(HANG) {
        Ok(()) => {}
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: the thread panicked"),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: deadlocked (still blocked after {HANG:?})")
        }
    }
}

// ---- Faults the review found (each failed before its fix) ----

// A `Push` under `Block` polled again after it completed used to reserve a free slot and
// only then panic, under the buffer lock, with the slot still reserved: the queue's
// capacity shrank by one for good. It now panics before touching the queue.
#[test]
fn a_block_push_polled_after_completion_leaks_no_reserved_slot() {
    let queue = Queue::<u32>::new(1, Policy::Block).unwrap();
    let mut push = queue.push(1);
    assert_eq!(
        poll_once(&mut push, Waker::noop()),
        Poll::Ready(PushOutcome::Accepted)
    );
    assert_eq!(queue.pop().now_or_never(), Some(Some(1)));
    // Misuse: polled after completion. A panic is allowed here; corrupting the queue is not.
    let _ = catch_unwind(AssertUnwindSafe(|| poll_once(&mut push, Waker::noop())));
    drop(push);
    // The queue is empty, open, with nobody waiting: a push must fit.
    assert_eq!(
        queue.try_push(2),
        PushOutcome::Accepted,
        "the slot reserved by the completed push's second poll was leaked"
    );
}

// The same, on a full queue: the completed push used to join the producers' line as a
// phantom and take the slot the next pop freed, ahead of a real producer.
#[test]
fn a_completed_block_push_polled_again_steals_no_slot_from_a_real_producer() {
    let queue = Queue::<u32>::new(1, Policy::Block).unwrap();
    let mut done = queue.push(1);
    assert_eq!(
        poll_once(&mut done, Waker::noop()),
        Poll::Ready(PushOutcome::Accepted)
    );
    // Misuse: polled again while the queue is full. It should not enter the line.
    let again = catch_unwind(AssertUnwindSafe(|| poll_once(&mut done, Waker::noop())));
    let (wakes, waker) = CountingWaker::new();
    let mut real = queue.push(2);
    assert!(poll_once(&mut real, &waker).is_pending());
    assert_eq!(queue.pop().now_or_never(), Some(Some(1)));
    assert!(
        again.is_err() || wakes.count() == 1,
        "the freed slot went to the completed push (second poll gave {:?}), not to the real \
         producer waiting behind it (woken {} times)",
        again.as_ref().map(|p| p.is_pending()),
        wakes.count()
    );
    drop(done);
}

/// A waker whose last clone, when dropped, uses the queue (as any waker whose drop runs
/// executor or user code may: dropping a task, a `Push`, an item).
struct ReentrantWaker {
    queue: Arc<Queue<u32>>,
    dropped: Mutex<Option<mpsc::Sender<()>>>,
}

impl Wake for ReentrantWaker {
    fn wake(self: Arc<Self>) {}
}

impl Drop for ReentrantWaker {
    fn drop(&mut self) {
        // Takes the buffer lock. Deadlocks if the queue drops this waker under that lock.
        let _ = self.queue.stats();
        if let Some(tx) = self.dropped.lock().unwrap().take() {
            let _ = tx.send(());
        }
    }
}

fn reentrant_waker(queue: &Arc<Queue<u32>>) -> Waker {
    Waker::from(Arc::new(ReentrantWaker {
        queue: queue.clone(),
        dropped: Mutex::new(None),
    }))
}

// Wakers used to be dropped under the buffer lock (a waiter leaving its line, a waker
// replaced by a newer one). A waker's drop is the runtime's code; here it re-enters the
// queue, which deadlocked the thread on the std mutex. They are now dropped, and cloned,
// with the lock released.
#[test]
fn a_popper_dropped_while_waiting_drops_its_waker_after_unlocking() {
    within_hang_guard("drop a parked Pop", || {
        let queue = Arc::new(Queue::<u32>::new(1, Policy::Block).unwrap());
        let mut pop = queue.pop();
        {
            let waker = reentrant_waker(&queue);
            assert!(poll_once(&mut pop, &waker).is_pending());
        } // the queue now holds the waker's only clone
        drop(pop); // leaves the line: the waker comes out of it, and is dropped unlocked
    });
}

#[test]
fn a_parked_producer_repolled_with_a_new_waker_drops_the_old_one_after_unlocking() {
    within_hang_guard("re-poll a parked Push with another waker", || {
        let queue = Arc::new(Queue::<u32>::new(1, Policy::Block).unwrap());
        assert_eq!(queue.try_push(0), PushOutcome::Accepted);
        let mut push = queue.push(1);
        {
            let waker = reentrant_waker(&queue);
            assert!(poll_once(&mut push, &waker).is_pending());
        }
        // The new waker displaces the old one, which is dropped unlocked.
        assert!(poll_once(&mut push, Waker::noop()).is_pending());
        drop(push);
    });
}

#[test]
fn a_parked_popper_that_takes_an_item_drops_its_waker_after_unlocking() {
    within_hang_guard("a parked Pop re-polled with an item there", || {
        let queue = Arc::new(Queue::<u32>::new(1, Policy::Block).unwrap());
        let mut first = queue.pop();
        assert!(poll_once(&mut first, Waker::noop()).is_pending());
        let mut ours = queue.pop();
        {
            let waker = reentrant_waker(&queue);
            assert!(poll_once(&mut ours, &waker).is_pending());
        }
        // The push notifies `first`; `ours` stays Waiting, its waker in the line.
        assert_eq!(queue.try_push(7), PushOutcome::Accepted);
        // Polled again, it takes the item and leaves the line; its waker is dropped unlocked.
        assert_eq!(poll_once(&mut ours, Waker::noop()), Poll::Ready(Some(7)));
        drop(first);
    });
}

// ---- Edges the review checked, pinned ----

// A producer woken for a reserved slot, then close: polled, it gets its item back; the
// items already queued drain; nothing waits forever.
#[test]
fn pin_woken_producer_then_close_then_polled_or_dropped() {
    for drop_it in [false, true] {
        let queue = Queue::<u32>::new(1, Policy::Block).unwrap();
        assert_eq!(queue.try_push(0), PushOutcome::Accepted);
        let (wa, a_waker) = CountingWaker::new();
        let (wb, b_waker) = CountingWaker::new();
        let mut a = queue.push(1);
        let mut b = queue.push(2);
        assert!(poll_once(&mut a, &a_waker).is_pending());
        assert!(poll_once(&mut b, &b_waker).is_pending());
        assert_eq!(queue.pop().now_or_never(), Some(Some(0))); // reserves for `a`
        assert_eq!((wa.count(), wb.count()), (1, 0));
        assert!(queue.close());
        assert_eq!(wb.count(), 1);
        if drop_it {
            drop(a);
        } else {
            assert_eq!(
                poll_once(&mut a, &a_waker),
                Poll::Ready(PushOutcome::Closed(1))
            );
        }
        assert_eq!(
            poll_once(&mut b, &b_waker),
            Poll::Ready(PushOutcome::Closed(2))
        );
        assert_eq!(queue.pop().now_or_never(), Some(None));
    }
}

// A sink holding a reservation, close, then the sink dropped: no panic, no underflow.
#[test]
fn pin_release_reserved_after_close() {
    let queue = Arc::new(Queue::<u32>::new(2, Policy::Block).unwrap());
    let mut sink = queue.clone().into_sink();
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(
        Pin::new(&mut sink).poll_ready(&mut cx),
        Poll::Ready(Ok(()))
    ));
    assert!(queue.close());
    drop(sink);
    assert_eq!(queue.try_push(1), PushOutcome::Closed(1));
}

// pop_many of 3 with 2 parked producers: each gets one slot, one slot stays free.
#[test]
fn pin_pop_many_grants_one_slot_per_parked_producer_and_leaves_the_rest_free() {
    let queue = Queue::<u32>::new(3, Policy::Block).unwrap();
    for i in 0..3 {
        assert_eq!(queue.try_push(i), PushOutcome::Accepted);
    }
    let (wa, a_waker) = CountingWaker::new();
    let (wb, b_waker) = CountingWaker::new();
    let mut a = queue.push(10);
    let mut b = queue.push(11);
    assert!(poll_once(&mut a, &a_waker).is_pending());
    assert!(poll_once(&mut b, &b_waker).is_pending());
    assert_eq!(queue.pop_many(3).now_or_never(), Some(vec![0, 1, 2]));
    assert_eq!((wa.count(), wb.count()), (1, 1));
    assert_eq!(queue.try_push(12), PushOutcome::Accepted);
    assert_eq!(queue.try_push(13), PushOutcome::Full(13));
    drop(a); // hands its slot on: nobody waits, so it is free
    assert_eq!(queue.try_push(13), PushOutcome::Accepted);
    assert_eq!(
        poll_once(&mut b, &b_waker),
        Poll::Ready(PushOutcome::Accepted)
    );
    assert_eq!(queue.len(), 3);
}

// A random single-threaded model of the Block queue: pushes, sinks, pops and pop_manys,
// polled when woken (plus spurious polls), dropped at random, with try_push and a final
// close. After each step the woken futures are polled until quiet; then no producer may be
// parked while room is free and no popper parked while items are queued; every item comes
// out once (popped, or handed back as Closed/Full).
#[test]
fn pin_random_model_of_block_reservations_and_lines() {
    use futures_util::SinkExt as _;
    type Obj<'q> = (Arc<CountingWaker>, Waker, usize, Actor<'q>);
    enum Actor<'q> {
        Push(backpressure_pipeline::Push<'q, u32>, u32),
        Pop(backpressure_pipeline::Pop<'q, u32>),
        Many(backpressure_pipeline::PopMany<'q, u32>),
        Sink(backpressure_pipeline::PushSink<u32>, bool),
    }
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for round in 0..1000 {
        let cap = 1 + rnd(3) as usize;
        let queue = Arc::new(Queue::<u32>::new(cap, Policy::Block).unwrap());
        let q: &Queue<u32> = &queue;
        let mut next = 0u32;
        let mut out: Vec<u32> = Vec::new();
        let mut back: Vec<u32> = Vec::new();
        let mut accepted: Vec<u32> = Vec::new();
        let mut actors: Vec<Obj<'_>> = Vec::new();
        let closed_at = 20 + rnd(40);
        for step in 0..80u64 {
            if step == closed_at {
                q.close();
            }
            match rnd(8) {
                0 | 1 => {
                    let (c, w) = CountingWaker::new();
                    next += 1;
                    actors.push((c, w, usize::MAX, Actor::Push(q.push(next), next)));
                }
                2 => {
                    let (c, w) = CountingWaker::new();
                    let a = if rnd(2) == 0 {
                        Actor::Pop(q.pop())
                    } else {
                        Actor::Many(q.pop_many(1 + rnd(3) as usize))
                    };
                    actors.push((c, w, usize::MAX, a));
                }
                3 => {
                    let (c, w) = CountingWaker::new();
                    actors.push((
                        c,
                        w,
                        usize::MAX,
                        Actor::Sink(queue.clone().into_sink(), false),
                    ));
                }
                4 if !actors.is_empty() => {
                    let i = rnd(actors.len() as u64) as usize;
                    let (_, _, _, a) = actors.swap_remove(i);
                    if let Actor::Push(_, item) = &a {
                        back.push(*item); // dropped: never enqueued
                    }
                }
                5 => {
                    next += 1;
                    match q.try_push(next) {
                        PushOutcome::Accepted => accepted.push(next),
                        PushOutcome::Full(i) | PushOutcome::Closed(i) => back.push(i),
                        other => panic!("{other:?}"),
                    }
                }
                6 if !actors.is_empty() => {
                    let i = rnd(actors.len() as u64) as usize;
                    actors[i].2 = usize::MAX; // spurious poll
                }
                _ => {}
            }
            // Poll every actor that was woken (or is new / spuriously marked) until quiet.
            loop {
                let mut progressed = false;
                let mut i = 0;
                while i < actors.len() {
                    let (c, w, seen, a) = &mut actors[i];
                    if *seen == c.count() {
                        i += 1;
                        continue;
                    }
                    *seen = c.count();
                    progressed = true;
                    let mut cx = Context::from_waker(w);
                    let done = match a {
                        Actor::Push(p, item) => match Pin::new(p).poll(&mut cx) {
                            Poll::Ready(PushOutcome::Accepted) => {
                                accepted.push(*item);
                                true
                            }
                            Poll::Ready(PushOutcome::Closed(i)) => {
                                back.push(i);
                                true
                            }
                            Poll::Ready(o) => panic!("{o:?}"),
                            Poll::Pending => false,
                        },
                        Actor::Pop(p) => match Pin::new(p).poll(&mut cx) {
                            Poll::Ready(Some(i)) => {
                                out.push(i);
                                true
                            }
                            Poll::Ready(None) => true,
                            Poll::Pending => false,
                        },
                        Actor::Many(p) => match Pin::new(p).poll(&mut cx) {
                            Poll::Ready(v) => {
                                out.extend(v);
                                true
                            }
                            Poll::Pending => false,
                        },
                        Actor::Sink(s, has) => {
                            if *has {
                                next += 1;
                                match Pin::new(&mut *s).start_send(next) {
                                    Ok(()) => accepted.push(next),
                                    Err(e) => back.push(e.into_inner().unwrap()),
                                }
                                *has = false;
                                let _ = s.poll_flush_unpin(&mut cx);
                            }
                            match Pin::new(&mut *s).poll_ready(&mut cx) {
                                Poll::Ready(Ok(())) => {
                                    *has = true;
                                    *seen = usize::MAX; // send on the next pass
                                    false
                                }
                                Poll::Ready(Err(_)) => true,
                                Poll::Pending => false,
                            }
                        }
                    };
                    if done {
                        actors.swap_remove(i);
                    } else {
                        i += 1;
                    }
                }
                if !progressed {
                    break;
                }
            }
            // Liveness at quiet: the sinks holding a slot are the only reservations left.
            let held = actors
                .iter()
                .filter(|a| matches!(a.3, Actor::Sink(_, true)))
                .count();
            let parked_push = actors.iter().any(|a| matches!(a.3, Actor::Push(..)));
            let parked_sink = actors.iter().any(|a| matches!(a.3, Actor::Sink(_, false)));
            let parked_pop = actors
                .iter()
                .any(|a| matches!(a.3, Actor::Pop(_) | Actor::Many(_)));
            if !q.is_closed() {
                assert!(
                    !(parked_push || parked_sink) || q.len() + held >= cap,
                    "round {round} step {step}: a producer parked with room free (len {}, held {held}, cap {cap})",
                    q.len()
                );
            }
            assert!(
                !parked_pop || q.is_empty(),
                "round {round} step {step}: a popper parked with {} items queued",
                q.len()
            );
            // A sink that holds a slot sends on its next pass (marked above).
        }
        drop(actors);
        q.close();
        while let Some(Some(i)) = q.pop().now_or_never() {
            out.push(i);
        }
        let mut a = accepted.clone();
        a.sort_unstable();
        let mut o = out.clone();
        o.sort_unstable();
        assert_eq!(a, o, "round {round}: accepted vs popped");
        assert_eq!(accepted.len() + back.len(), next as usize, "round {round}");
    }
}
