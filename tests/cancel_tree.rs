//! The cancellation-token tree on its own: cancel flows down and never up, waiters are woken,
//! dropped nodes hand their children on, and trees of any depth or width cancel and drop
//! without recursion. Deterministic: futures are polled by hand with a counting waker.

mod common;

use common::CountingWaker;

use std::future::Future;
use std::pin::pin;

use std::sync::{mpsc, Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::thread;

use backpressure_pipeline::CancellationToken;

fn poll_once<F: Future>(future: std::pin::Pin<&mut F>, waker: &Waker) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(waker))
}

/// Depth and width of the big trees: enough that recursion would overflow a small stack.
const BIG: usize = 100_000;

/// Runs `f` on a thread with a 256 KiB stack, so a recursive walk of a deep tree overflows.
fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    thread::Builder::new()
        .name("small-stack".into())
        .stack_size(256 * 1024)
        .spawn(f)
        .expect("spawn a small-stack thread")
        .join()
        .expect("the small-stack thread panicked");
}

/// A chain of `depth` tokens, each a child of the one before; index 0 is the root.
fn chain(depth: usize) -> Vec<CancellationToken> {
    let mut chain = vec![CancellationToken::new()];
    for _ in 1..depth {
        let child = chain.last().expect("non-empty").child_token();
        chain.push(child);
    }
    chain
}

#[test]
fn cancel_reaches_every_descendant_and_nothing_else() {
    //        root
    //       /    \
    //      a      b
    //     / \      \
    //   a1   a2     b1
    //   |
    //   a1x
    let root = CancellationToken::new();
    let a = root.child_token();
    let b = root.child_token();
    let a1 = a.child_token();
    let a2 = a.child_token();
    let a1x = a1.child_token();
    let b1 = b.child_token();

    // A leaf: only itself.
    assert!(a2.cancel());
    assert!(a2.is_cancelled());
    for token in [&root, &a, &b, &a1, &a1x, &b1] {
        assert!(!token.is_cancelled());
    }

    // A subtree: every descendant, never the ancestor or the sibling's branch.
    assert!(a.cancel());
    for token in [&a, &a1, &a2, &a1x] {
        assert!(token.is_cancelled());
    }
    for token in [&root, &b, &b1] {
        assert!(!token.is_cancelled());
    }

    // The root: everything left.
    assert!(root.cancel());
    for token in [&root, &a, &b, &a1, &a2, &a1x, &b1] {
        assert!(token.is_cancelled());
    }
}

#[test]
fn cancelling_a_child_leaves_its_parent_and_siblings_alone() {
    let root = CancellationToken::new();
    let children: Vec<_> = (0..4).map(|_| root.child_token()).collect();
    assert!(children[2].cancel());
    assert!(!root.is_cancelled());
    for (i, child) in children.iter().enumerate() {
        assert_eq!(child.is_cancelled(), i == 2);
    }
    // The parent still works after one child left it.
    let late = root.child_token();
    assert!(root.cancel());
    assert!(late.is_cancelled());
    assert!(children.iter().all(CancellationToken::is_cancelled));
}

#[test]
fn child_of_a_cancelled_parent_is_born_cancelled() {
    let root = CancellationToken::new();
    let a = root.child_token();
    root.cancel();

    let born = a.child_token();
    assert!(born.is_cancelled());
    // It was cancelled at birth, so no later call cancels it.
    assert!(!born.cancel());
    // And so are its own children.
    assert!(born.child_token().is_cancelled());
    assert!(root.child_token().is_cancelled());
}

#[test]
fn cancel_returns_true_only_for_the_call_that_cancelled() {
    let token = CancellationToken::new();
    let clone = token.clone();
    let child = token.child_token();
    assert!(!token.is_cancelled());
    assert!(!clone.is_cancelled());

    assert!(clone.cancel());
    assert!(token.is_cancelled());
    assert!(clone.is_cancelled());
    assert!(!token.cancel());
    assert!(!clone.cancel());
    // Cancelled by its parent's call, not its own.
    assert!(child.is_cancelled());
    assert!(!child.cancel());
}

#[test]
fn racing_cancels_report_exactly_one_winner() {
    const THREADS: usize = 8;
    for _ in 0..50 {
        let token = CancellationToken::new();
        let start = Arc::new(Barrier::new(THREADS));
        let winners: usize = (0..THREADS)
            .map(|_| {
                let token = token.clone();
                let start = start.clone();
                thread::spawn(move || {
                    start.wait();
                    usize::from(token.cancel())
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().expect("a cancelling thread panicked"))
            .sum();
        assert_eq!(winners, 1);
        assert!(token.is_cancelled());
    }
}

#[test]
fn cancelled_is_pending_until_cancel_wakes_it() {
    let token = CancellationToken::new();
    let (counter, waker) = CountingWaker::new();
    let mut waiting = pin!(token.cancelled());

    assert!(poll_once(waiting.as_mut(), &waker).is_pending());
    // Polling again registers no extra wake-up and stays pending.
    assert!(poll_once(waiting.as_mut(), &waker).is_pending());
    assert_eq!(counter.count(), 0);

    assert!(token.cancel());
    assert!(counter.count() >= 1, "cancel must wake the waiter");
    assert!(poll_once(waiting.as_mut(), &waker).is_ready());
}

#[test]
fn cancelled_owned_is_pending_until_cancel_wakes_it() {
    let token = CancellationToken::new();
    let (counter, waker) = CountingWaker::new();
    let mut waiting = pin!(token.clone().cancelled_owned());

    assert!(poll_once(waiting.as_mut(), &waker).is_pending());
    assert_eq!(counter.count(), 0);

    assert!(token.cancel());
    assert!(counter.count() >= 1, "cancel must wake the waiter");
    assert!(poll_once(waiting.as_mut(), &waker).is_ready());
}

#[test]
fn cancelled_is_ready_at_once_on_a_cancelled_token() {
    let token = CancellationToken::new();
    token.cancel();
    let waker = Waker::noop();
    assert!(poll_once(pin!(token.cancelled()), waker).is_ready());
    assert!(poll_once(pin!(token.clone().cancelled_owned()), waker).is_ready());
    // A token born cancelled, too.
    let born = token.child_token();
    assert!(poll_once(pin!(born.cancelled()), waker).is_ready());
}

#[test]
fn cancelling_the_root_wakes_a_waiter_on_a_grandchild() {
    let root = CancellationToken::new();
    let child = root.child_token();
    let grandchild = child.child_token();

    let (borrowed_counter, borrowed_waker) = CountingWaker::new();
    let (owned_counter, owned_waker) = CountingWaker::new();
    let mut borrowed = pin!(grandchild.cancelled());
    let mut owned = pin!(grandchild.clone().cancelled_owned());
    assert!(poll_once(borrowed.as_mut(), &borrowed_waker).is_pending());
    assert!(poll_once(owned.as_mut(), &owned_waker).is_pending());

    assert!(root.cancel());
    assert!(borrowed_counter.count() >= 1);
    assert!(owned_counter.count() >= 1);
    assert!(poll_once(borrowed.as_mut(), &borrowed_waker).is_ready());
    assert!(poll_once(owned.as_mut(), &owned_waker).is_ready());
}

#[test]
fn cancelling_a_child_does_not_wake_a_waiter_on_its_parent() {
    let root = CancellationToken::new();
    let child = root.child_token();
    let (counter, waker) = CountingWaker::new();
    let mut waiting = pin!(root.cancelled());
    assert!(poll_once(waiting.as_mut(), &waker).is_pending());

    assert!(child.cancel());
    assert_eq!(counter.count(), 0);
    assert!(poll_once(waiting.as_mut(), &waker).is_pending());
}

#[test]
fn dropping_a_middle_node_hands_its_children_to_its_parent() {
    // root -> a -> b; drop a; cancelling root still reaches b.
    let root = CancellationToken::new();
    let a = root.child_token();
    let b = a.child_token();
    drop(a);
    assert!(!b.is_cancelled());
    assert!(root.cancel());
    assert!(b.is_cancelled());
}

#[test]
fn a_node_stays_linked_while_any_clone_lives() {
    let root = CancellationToken::new();
    let a = root.child_token();
    let a_clone = a.clone();
    let b = a.child_token();
    drop(a);
    assert!(root.cancel());
    assert!(a_clone.is_cancelled());
    assert!(b.is_cancelled());
}

#[test]
fn dropping_a_root_makes_its_children_roots() {
    // root -> a -> b; drop root; a is a root now, and still the parent of b.
    let root = CancellationToken::new();
    let a = root.child_token();
    let b = a.child_token();
    drop(root);
    assert!(!a.is_cancelled());
    assert!(!b.is_cancelled());
    assert!(a.cancel());
    assert!(b.is_cancelled());
}

#[test]
fn dropping_middle_nodes_of_a_subtree_keeps_every_grandchild_reachable() {
    // root -> {a -> {a1, a2}, b -> {b1}}; drop a and b; root still reaches a1, a2 and b1.
    let root = CancellationToken::new();
    let a = root.child_token();
    let b = root.child_token();
    let a1 = a.child_token();
    let a2 = a.child_token();
    let b1 = b.child_token();
    drop(b);
    drop(a);
    assert!(root.cancel());
    assert!(a1.is_cancelled() && a2.is_cancelled() && b1.is_cancelled());
}

#[test]
fn drop_guard_cancels_on_drop() {
    let token = CancellationToken::new();
    let child = token.child_token();
    let guard = token.clone().drop_guard();
    assert!(!token.is_cancelled());
    drop(guard);
    assert!(token.is_cancelled());
    assert!(child.is_cancelled());
}

#[test]
fn disarmed_drop_guard_returns_the_token_uncancelled() {
    let token = CancellationToken::new();
    let guard = token.clone().drop_guard();
    let back = guard.disarm();
    assert!(!back.is_cancelled());
    assert!(!token.is_cancelled());
    drop(back);
    assert!(!token.is_cancelled());
    // The returned token is the same node.
    let back = token.clone().drop_guard().disarm();
    assert!(back.cancel());
    assert!(token.is_cancelled());
}

#[test]
fn deep_chain_cancels_from_the_root_then_drops() {
    on_small_stack(|| {
        let chain = chain(BIG);
        let leaf = chain.last().expect("non-empty");
        let (counter, waker) = CountingWaker::new();
        let mut waiting = pin!(leaf.cancelled());
        assert!(poll_once(waiting.as_mut(), &waker).is_pending());

        assert!(chain[0].cancel());
        assert!(leaf.is_cancelled());
        assert!(chain.iter().all(CancellationToken::is_cancelled));
        assert!(counter.count() >= 1);
        assert!(poll_once(waiting.as_mut(), &waker).is_ready());
        drop(chain);
    });
}

#[test]
fn deep_chain_drops_root_first_without_cancel() {
    on_small_stack(|| {
        let chain = chain(BIG);
        // A Vec drops its elements front to back: root first.
        drop(chain);
    });
}

#[test]
fn deep_chain_drops_leaf_first_without_cancel() {
    on_small_stack(|| {
        let mut chain = chain(BIG);
        while let Some(token) = chain.pop() {
            drop(token);
        }
    });
}

#[test]
fn deep_chain_with_its_middle_dropped_still_cancels_the_leaf() {
    on_small_stack(|| {
        let mut chain = chain(BIG).into_iter();
        let root = chain.next().expect("a root");
        let leaf = chain.next_back().expect("a leaf");
        // Each drop hands the next node up to the root.
        drop(chain);
        assert!(!leaf.is_cancelled());
        assert!(root.cancel());
        assert!(leaf.is_cancelled());
    });
}

#[test]
fn wide_fan_cancels_every_child_then_drops() {
    on_small_stack(|| {
        let root = CancellationToken::new();
        let children: Vec<_> = (0..BIG).map(|_| root.child_token()).collect();
        assert!(root.cancel());
        assert!(children.iter().all(CancellationToken::is_cancelled));
        drop(children);
        drop(root);
    });
}

#[test]
fn wide_fan_drops_without_cancel_root_first() {
    on_small_stack(|| {
        let root = CancellationToken::new();
        let children: Vec<_> = (0..BIG).map(|_| root.child_token()).collect();
        drop(root);
        assert!(!children.iter().any(CancellationToken::is_cancelled));
        drop(children);
    });
}

#[test]
fn children_come_and_go_while_the_parent_is_cancelled() {
    const WORKERS: usize = 4;
    const ROUNDS: usize = 2_000;
    let parent = CancellationToken::new();
    // Worker 0 says when it is half way, so the cancel lands in the middle of the churn.
    let (half_way, wait_half_way) = mpsc::channel();
    let start = Arc::new(Barrier::new(WORKERS + 1));

    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let parent = parent.clone();
            let start = start.clone();
            let half_way = (w == 0).then(|| half_way.clone());
            thread::spawn(move || {
                start.wait();
                let mut kept = Vec::new();
                for round in 0..ROUNDS {
                    let child = parent.child_token();
                    let grandchild = child.child_token();
                    match round % 4 {
                        // Drop both: the parent must not keep them.
                        0 => {}
                        // Keep the child only.
                        1 => kept.push(child),
                        // Keep the grandchild only: its parent is dropped, so it moves up.
                        2 => kept.push(grandchild),
                        // Keep both, then drop an older kept one.
                        _ => {
                            kept.push(child);
                            kept.push(grandchild);
                            if kept.len() > 8 {
                                kept.swap_remove(round % kept.len());
                            }
                        }
                    }
                    if round == ROUNDS / 2 {
                        if let Some(half_way) = &half_way {
                            half_way.send(()).expect("the canceller is waiting");
                        }
                    }
                }
                kept
            })
        })
        .collect();
    drop(half_way);

    start.wait();
    wait_half_way.recv().expect("worker 0 reaches half way");
    assert!(parent.cancel());

    let mut survivors = 0;
    for worker in workers {
        for token in worker.join().expect("a worker panicked") {
            assert!(
                token.is_cancelled(),
                "a surviving descendant missed the cancel"
            );
            survivors += 1;
        }
    }
    assert!(survivors > 0);
    assert!(parent.child_token().is_cancelled());
}
