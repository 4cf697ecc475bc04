//! A FIFO line of tasks waiting on the queue, kept under the buffer lock.
//!
//! # Invariants
//!
//! 1. A ticket names a slot and its generation. A slot is `Waiting` while its task is in line,
//!    `Notified` from the moment it is taken out of line to be woken until its task comes
//!    back for it (polled again, or dropped), and `Free` otherwise. Every slot freed bumps its
//!    generation, so a stale ticket never matches a reused slot.
//! 2. `line` holds the `Waiting` slots in arrival order, and may also hold stale entries
//!    (slots that left the line by cancellation); [`WaitList::notify_one`] skips those, and
//!    [`WaitList::leave`] compacts the line when they outnumber the live ones, so its length
//!    stays within twice the waiting count plus a constant.
//! 3. `notify_one` takes the *first waiting* task out of line: a notification is never given
//!    to a task that already holds one. Wake-ups are additional, not coalesced: n calls wake
//!    n distinct tasks (or every task in line, if fewer), whatever those tasks do next.
//!
//! Nothing here wakes a task: `notify_one` and `notify_all` hand back the wakers, and the
//! caller wakes them after releasing the buffer lock.

use std::collections::VecDeque;
use std::task::Waker;

/// A place in a [`WaitList`], held by the waiting future.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    slot: usize,
    generation: u64,
}

#[derive(Debug)]
enum State {
    Free,
    Waiting(Waker),
    Notified,
}

#[derive(Debug)]
struct Slot {
    generation: u64,
    state: State,
}

/// The waiters of one kind (poppers, or producers waiting for room).
#[derive(Debug, Default)]
pub(crate) struct WaitList {
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Arrival order (invariant 2).
    line: VecDeque<Ticket>,
    /// Slots in `Waiting`.
    waiting: usize,
}

/// What a ticket's holder finds when it comes back.
#[derive(Debug)]
pub(crate) enum Left {
    /// It was still in line; it has left it now. Its waker is handed back, to be dropped
    /// after the buffer lock is released (a waker is user code).
    Waiting(Waker),
    /// It had been taken out of line to be woken: the notification was its.
    Notified,
}

/// [`WaitList::wait`] needs a clone of the waker, which the caller makes with the buffer
/// lock released (cloning a waker is user code), before calling again.
#[derive(Debug)]
pub(crate) struct NeedsWaker;

impl WaitList {
    /// Whether a task is in line and not yet notified.
    pub(crate) fn has_waiting(&self) -> bool {
        self.waiting > 0
    }

    /// Whether `ticket` was taken out of line to be woken and not yet given back.
    pub(crate) fn is_notified(&self, ticket: Option<Ticket>) -> bool {
        ticket.is_some_and(|held| {
            self.slots.get(held.slot).is_some_and(|s| {
                s.generation == held.generation && matches!(s.state, State::Notified)
            })
        })
    }

    /// Puts the caller in line, or, if its ticket is still in line, refreshes its waker in
    /// place (keeping its turn). A ticket that was notified must have been given back with
    /// [`leave`](WaitList::leave) first.
    ///
    /// The waker stored is `spare`, a clone the caller made outside the lock; without one,
    /// and unless the waker in line already wakes the same task, this asks for it
    /// ([`NeedsWaker`]). Returns the waker it displaced, to be dropped after unlocking.
    pub(crate) fn wait(
        &mut self,
        ticket: &mut Option<Ticket>,
        waker: &Waker,
        spare: &mut Option<Waker>,
    ) -> Result<Option<Waker>, NeedsWaker> {
        if let Some(held) = *ticket {
            if let Some(State::Waiting(old)) = self.state_mut(held) {
                if old.will_wake(waker) {
                    return Ok(None);
                }
                let new = spare.take().ok_or(NeedsWaker)?;
                return Ok(Some(std::mem::replace(old, new)));
            }
        }
        let new = spare.take().ok_or(NeedsWaker)?;
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    state: State::Free,
                });
                self.slots.len() - 1
            }
        };
        let entry = &mut self.slots[slot];
        entry.state = State::Waiting(new);
        let held = Ticket {
            slot,
            generation: entry.generation,
        };
        self.line.push_back(held);
        self.waiting += 1;
        *ticket = Some(held);
        Ok(None)
    }

    /// Gives a ticket back: leaves the line if still in it, and says whether the ticket had
    /// been notified. `None` (no ticket) leaves nothing.
    #[inline]
    pub(crate) fn leave(&mut self, ticket: &mut Option<Ticket>) -> Option<Left> {
        // Most calls hold no ticket (a pop or push served at once): no call for those.
        let held = ticket.take()?;
        self.leave_held(held)
    }

    fn leave_held(&mut self, held: Ticket) -> Option<Left> {
        let entry = self.slots.get_mut(held.slot)?;
        if entry.generation != held.generation {
            return None;
        }
        let left = match std::mem::replace(&mut entry.state, State::Free) {
            State::Waiting(waker) => {
                self.waiting -= 1;
                Left::Waiting(waker)
            }
            State::Notified => Left::Notified,
            State::Free => return None,
        };
        entry.generation += 1;
        self.free.push(held.slot);
        // A cancelled waiter is most often the newest: drop its entry at once. Otherwise
        // compact when stale entries outnumber live ones (invariant 2).
        if self.line.back() == Some(&held) {
            self.line.pop_back();
        } else if self.line.len() > 2 * self.waiting + 16 {
            let slots = &self.slots;
            self.line.retain(|t| {
                let s = &slots[t.slot];
                s.generation == t.generation && matches!(s.state, State::Waiting(_))
            });
        }
        Some(left)
    }

    /// Takes the first waiting task out of line and returns its waker (invariant 3).
    pub(crate) fn notify_one(&mut self) -> Option<Waker> {
        // Terminates: each turn removes one entry from the line.
        while let Some(held) = self.line.pop_front() {
            let entry = &mut self.slots[held.slot];
            if entry.generation != held.generation {
                continue;
            }
            if let State::Waiting(_) = entry.state {
                self.waiting -= 1;
                match std::mem::replace(&mut entry.state, State::Notified) {
                    State::Waiting(waker) => return Some(waker),
                    _ => unreachable!("matched as waiting just above"),
                }
            }
        }
        None
    }

    /// Takes every waiting task out of line (for close) and returns their wakers.
    pub(crate) fn notify_all(&mut self) -> Vec<Waker> {
        let mut wakers = Vec::with_capacity(self.waiting);
        while let Some(waker) = self.notify_one() {
            wakers.push(waker);
        }
        wakers
    }

    fn state_mut(&mut self, held: Ticket) -> Option<&mut State> {
        let entry = self.slots.get_mut(held.slot)?;
        (entry.generation == held.generation).then_some(&mut entry.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    /// Waits with a fresh clone of the no-op waker, as a caller does after `NeedsWaker`.
    fn wait(list: &mut WaitList, ticket: &mut Option<Ticket>) {
        let mut spare = Some(Waker::noop().clone());
        list.wait(ticket, Waker::noop(), &mut spare).unwrap();
    }

    fn left_waiting(left: Option<Left>) -> bool {
        matches!(left, Some(Left::Waiting(_)))
    }

    fn left_notified(left: Option<Left>) -> bool {
        matches!(left, Some(Left::Notified))
    }

    #[test]
    fn wake_ups_are_additional() {
        let mut list = WaitList::default();
        let (mut a, mut b) = (None, None);
        wait(&mut list, &mut a);
        wait(&mut list, &mut b);
        // `a` is notified and never comes back; the next notification goes to `b`.
        assert!(list.notify_one().is_some());
        assert!(list.has_waiting());
        assert!(list.notify_one().is_some());
        assert!(!list.has_waiting());
        assert!(list.notify_one().is_none());
        assert!(left_notified(list.leave(&mut a)));
        assert!(left_notified(list.leave(&mut b)));
    }

    #[test]
    fn fifo_and_refresh_keeps_the_turn() {
        let mut list = WaitList::default();
        let (mut a, mut b) = (None, None);
        wait(&mut list, &mut a);
        wait(&mut list, &mut b);
        let first = a;
        // Polled again while waiting with another task's waker: it replaces the one in line
        // (the old one comes back, to be dropped unlocked), and the turn is kept.
        struct Task;
        impl std::task::Wake for Task {
            fn wake(self: std::sync::Arc<Self>) {}
        }
        let task = Waker::from(std::sync::Arc::new(Task));
        let mut spare = Some(task.clone());
        assert!(matches!(list.wait(&mut a, &task, &mut spare), Ok(Some(_))));
        // Again with the same task's waker: nothing to clone, nothing displaced.
        assert!(matches!(list.wait(&mut a, &task, &mut None), Ok(None)));
        assert_eq!(a, first);
        list.notify_one();
        assert!(left_notified(list.leave(&mut a)));
        assert!(left_waiting(list.leave(&mut b)));
        assert!(list.notify_one().is_none());
    }

    #[test]
    fn a_new_place_in_line_asks_for_a_waker() {
        let mut list = WaitList::default();
        let mut a = None;
        assert!(list.wait(&mut a, Waker::noop(), &mut None).is_err());
        assert!(a.is_none() && !list.has_waiting());
    }

    #[test]
    fn cancelled_waiters_do_not_grow_the_line() {
        let mut list = WaitList::default();
        let mut keep = None;
        wait(&mut list, &mut keep);
        let mut others: Vec<Option<Ticket>> = vec![None; 8];
        for _ in 0..10_000 {
            for t in &mut others {
                wait(&mut list, t);
            }
            // Leave oldest first, so no entry is at the back when it leaves.
            for t in &mut others {
                assert!(left_waiting(list.leave(t)));
            }
            assert!(list.line.len() <= 2 * list.waiting + 16 + others.len());
        }
        assert!(list.slots.len() <= 1 + others.len());
        assert!(list.notify_one().is_some());
        assert!(left_notified(list.leave(&mut keep)));
    }

    #[test]
    fn stale_tickets_match_nothing() {
        let mut list = WaitList::default();
        let mut a = None;
        wait(&mut list, &mut a);
        let stale = a;
        list.leave(&mut a);
        let mut b = None;
        wait(&mut list, &mut b); // reuses the slot
        let mut stale = stale;
        assert!(list.leave(&mut stale).is_none());
        assert!(list.has_waiting());
    }
}
