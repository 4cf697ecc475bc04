//! loom models of the cancellation tree's races: cancel against child creation, against a
//! child's drop (which re-parents its children), and against a waiter.

#![cfg(loom)]

use backpressure_pipeline::CancellationToken;
use loom::future::block_on;
use loom::thread;

/// A child created while its parent is being cancelled ends up cancelled either way.
#[test]
fn cancel_races_child_creation() {
    loom::model(|| {
        let parent = CancellationToken::new();
        let canceller = thread::spawn({
            let parent = parent.clone();
            move || parent.cancel()
        });
        let child = parent.child_token();
        assert!(canceller.join().unwrap());
        assert!(child.is_cancelled());
    });
}

/// Dropping a middle node while the root is cancelled: its child is cancelled either way
/// (re-parented before the cancel, or reached by it).
#[test]
fn cancel_races_a_middle_drop() {
    loom::model(|| {
        let root = CancellationToken::new();
        let middle = root.child_token();
        let leaf = middle.child_token();
        let dropper = thread::spawn(move || drop(middle));
        assert!(root.cancel());
        dropper.join().unwrap();
        assert!(leaf.is_cancelled());
    });
}

/// A root and its child dropped at once leave the grandchild a live, cancellable root.
#[test]
fn two_drops_race() {
    loom::model(|| {
        let root = CancellationToken::new();
        let child = root.child_token();
        let grandchild = child.child_token();
        let dropper = thread::spawn(move || drop(root));
        drop(child);
        dropper.join().unwrap();
        assert!(!grandchild.is_cancelled());
        assert!(grandchild.cancel());
    });
}

/// A waiter never misses the cancel: flag, listen, flag again, wait.
#[test]
fn cancel_wakes_a_waiter() {
    loom::model(|| {
        let token = CancellationToken::new();
        let waiter = thread::spawn({
            let token = token.child_token();
            move || block_on(token.cancelled())
        });
        token.cancel();
        waiter.join().unwrap();
    });
}

/// The hook a pipeline sets on its stop token (it closes the queue) runs exactly once,
/// whether it is set before the cancel, during it, or after it.
#[test]
fn a_hook_runs_once_whenever_it_is_set() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    loom::model(|| {
        let root = CancellationToken::new();
        let child = root.child_token();
        let runs = Arc::new(AtomicUsize::new(0));
        let canceller = thread::spawn({
            let root = root.clone();
            move || root.cancel()
        });
        child.loom_on_cancel(Box::new({
            let runs = runs.clone();
            move || {
                runs.fetch_add(1, Ordering::SeqCst);
            }
        }));
        assert!(canceller.join().unwrap());
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    });
}
