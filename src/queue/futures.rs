//! The queue's named futures: [`Push`], [`Pop`] and [`PopMany`].
//!
//! Each holds at most a ticket in one of the queue's lines; dropping one gives its ticket
//! back, passing on a wake-up it received and did not use.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::{KeyHash, Lanes, Queue, Served, Taken, Ticket};
use crate::policy::{Policy, PushOutcome};

/// Pushes into a full queue, with no pop in between, after which a producer yields once
/// (see [`Queue::push`]).
const OVERLOAD_BUDGET: u32 = 256;

std::thread_local! {
    /// This thread's pushes into a full queue: which queue, how many since the last look at
    /// its pop count, and that count.
    static OVERLOAD: Cell<(usize, u32, u64)> = const { Cell::new((0, 0, 0)) };
}

/// Counts a push into a full queue; true when this thread's last [`OVERLOAD_BUDGET`] such
/// pushes saw no pop in between: the workers are not running, and may be waiting for this
/// very thread. The pop count (a line the poppers write) is read once per budget, not per
/// push.
pub(super) fn yield_due<T>(queue: &Queue<T>) -> bool {
    let id = queue as *const Queue<T> as usize;
    OVERLOAD.with(|cell| {
        let (seen_id, count, seen_pops) = cell.get();
        if seen_id != id {
            cell.set((id, 1, queue.pops()));
            return false;
        }
        if count + 1 < OVERLOAD_BUDGET {
            cell.set((id, count + 1, seen_pops));
            return false;
        }
        let pops = queue.pops();
        cell.set((id, 0, pops));
        pops == seen_pops
    })
}

/// The future returned by [`Queue::push`].
///
/// # Cancel safety
///
/// Cancel safe: see [`Queue::push`].
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct Push<'a, T> {
    queue: &'a Queue<T>,
    item: Option<T>,
    /// The item's key, computed once (keyed pipelines only).
    key: Option<KeyHash>,
    /// A place in the producers' line (under `Block`).
    ticket: Option<Ticket>,
    /// Whether this push has yielded already (under the shedding policies).
    yielded: bool,
}

impl<'a, T> Push<'a, T> {
    pub(super) fn new(queue: &'a Queue<T>, item: T) -> Self {
        Push {
            queue,
            key: queue.key_of(&item),
            item: Some(item),
            ticket: None,
            yielded: false,
        }
    }
}

// The item is moved, never pinned: a `Push` may move whatever `T` is.
impl<T> Unpin for Push<'_, T> {}

impl<T> Future for Push<'_, T> {
    type Output = PushOutcome<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<PushOutcome<T>> {
        let this = self.get_mut();
        if this.queue.policy == Policy::Block {
            return this
                .queue
                .poll_push_block(cx, &mut this.ticket, &mut this.item, this.key);
        }
        // Under overload with the workers making no progress, let them run (before pushing,
        // so that a push dropped during its yield enqueued nothing).
        if !this.yielded && this.queue.overload_yield_due() {
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let item = this.item.take().expect("a push polled after it completed");
        Poll::Ready(this.queue.try_push_keyed(item, this.key))
    }
}

impl<T> Drop for Push<'_, T> {
    fn drop(&mut self) {
        if self.ticket.is_some() {
            self.queue.leave_producers(&mut self.ticket);
        }
    }
}

impl<T> fmt::Debug for Push<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Push")
            .field("queue", self.queue)
            .field("done", &self.item.is_none())
            .field("waiting", &self.ticket.is_some())
            .finish()
    }
}

/// The future returned by [`Queue::pop`].
///
/// # Cancel safety
///
/// Cancel safe: see [`Queue::pop`].
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct Pop<'a, T> {
    queue: &'a Queue<T>,
    /// A place in the poppers' line.
    ticket: Option<Ticket>,
}

impl<'a, T> Pop<'a, T> {
    pub(super) fn new(queue: &'a Queue<T>) -> Self {
        Pop {
            queue,
            ticket: None,
        }
    }
}

impl<T> Future for Pop<'_, T> {
    type Output = Option<T>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let this = self.get_mut();
        this.queue.poll_pop(cx, &mut this.ticket)
    }
}

impl<T> Drop for Pop<'_, T> {
    fn drop(&mut self) {
        if self.ticket.is_some() {
            self.queue.leave_poppers(&mut self.ticket);
        }
    }
}

impl<T> fmt::Debug for Pop<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pop")
            .field("queue", self.queue)
            .field("waiting", &self.ticket.is_some())
            .finish()
    }
}

/// The future returned by [`Queue::pop_many`].
///
/// # Cancel safety
///
/// Cancel safe: see [`Queue::pop_many`].
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct PopMany<'a, T> {
    queue: &'a Queue<T>,
    limit: usize,
    /// A place in the poppers' line.
    ticket: Option<Ticket>,
}

impl<'a, T> PopMany<'a, T> {
    pub(super) fn new(queue: &'a Queue<T>, limit: usize) -> Self {
        PopMany {
            queue,
            limit,
            ticket: None,
        }
    }
}

impl<T> Future for PopMany<'_, T> {
    type Output = Vec<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Vec<T>> {
        let this = self.get_mut();
        if this.limit == 0 {
            return Poll::Ready(Vec::new());
        }
        this.queue
            .poll_take(cx, &mut this.ticket, this.limit, None, |inner, n, _| {
                inner.take_front(n).collect()
            })
            .map(Option::unwrap_or_default)
    }
}

impl<T> Drop for PopMany<'_, T> {
    fn drop(&mut self) {
        if self.ticket.is_some() {
            self.queue.leave_poppers(&mut self.ticket);
        }
    }
}

impl<T> fmt::Debug for PopMany<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PopMany")
            .field("queue", self.queue)
            .field("limit", &self.limit)
            .field("waiting", &self.ticket.is_some())
            .finish()
    }
}

/// A worker's take from a timed or keyed queue: up to `limit` items to serve, the items
/// shed at the exit on the way (`timed.rs`), and the lanes of the served items
/// (`keyed.rs`); `None` once the queue is closed and empty. May serve none (all were shed):
/// the caller hands the shed ones on and takes again.
///
/// Cancel safe, as [`PopMany`]: the items are taken in the poll that returns them.
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub(crate) struct TakeTimed<'a, T, S> {
    queue: &'a Queue<T>,
    limit: usize,
    lanes: Option<Lanes<'a>>,
    ticket: Option<Ticket>,
    served: std::marker::PhantomData<fn() -> S>,
}

impl<'a, T, S> TakeTimed<'a, T, S> {
    /// Up to `limit` items served into `S` (`Option<T>` for one, `Vec<T>` for a batch).
    pub(crate) fn new(queue: &'a Queue<T>, limit: usize) -> Self {
        TakeTimed {
            queue,
            limit: limit.max(1),
            lanes: None,
            ticket: None,
            served: std::marker::PhantomData,
        }
    }

    /// From a keyed queue: releases the lanes in `held` (the worker's previous unit, its
    /// work done) in the take's first critical section, then adds the lanes of the items
    /// served. With `filling` (a batch being filled, whose own lanes stay held), `None`
    /// also when nothing can be served and no new item can come (closed, or full with
    /// nothing to evict), since the items left may belong to keys the batch holds.
    pub(crate) fn keyed(mut self, held: &'a mut Vec<u32>, filling: bool) -> Self {
        self.lanes = Some(Lanes { held, filling });
        self
    }
}

impl<T, S: Served<T>> Future for TakeTimed<'_, T, S> {
    type Output = Option<Taken<T, S>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Taken<T, S>>> {
        let this = self.get_mut();
        // Read before the lock: the clock is user code.
        let now = this.queue.stamp();
        let limit = this.limit;
        if let Some(lanes) = this.lanes.as_mut() {
            // A batch being filled releases nothing; the first take of a unit releases the
            // previous unit's lanes (and only in its first poll: they are cleared).
            let lanes = Lanes {
                held: &mut *lanes.held,
                filling: lanes.filling,
            };
            return this.queue.poll_take(
                cx,
                &mut this.ticket,
                limit,
                Some(lanes),
                |inner, _, lanes| {
                    inner.take_keyed(limit, now, lanes.expect("a keyed take's lanes"))
                },
            );
        }
        let now = now.expect("a timed take from a timed queue");
        this.queue
            .poll_take(cx, &mut this.ticket, limit, None, |inner, _, _| {
                inner.take_timed(limit, now)
            })
    }
}

impl<T, S> Drop for TakeTimed<'_, T, S> {
    fn drop(&mut self) {
        if self.ticket.is_some() {
            self.queue.leave_poppers(&mut self.ticket);
        }
    }
}
