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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Left {
    /// It was still in line; it has left it now.
    Waiting,
    /// It had been taken out of line to be woken: the notification was its.
    Notified,
}

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
    pub(crate) fn wait(&mut self, ticket: &mut Option<Ticket>, waker: &Waker) {
        if let Some(held) = *ticket {
            if let Some(State::Waiting(old)) = self.state_mut(held) {
                if !old.will_wake(waker) {
                    old.clone_from(waker);
                }
                return;
            }
        }
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
        entry.state = State::Waiting(waker.clone());
        let held = Ticket {
            slot,
            generation: entry.generation,
        };
        self.line.push_back(held);
        self.waiting += 1;
        *ticket = Some(held);
    }

    /// Gives a ticket back: leaves the line if still in it, and says whether the ticket had
    /// been notified. `None` (no ticket) leaves nothing.
    pub(crate) fn leave(&mut self, ticket: &mut Option<Ticket>) -> Option<Left> {
        let held = ticket.take()?;
        let entry = self.slots.get_mut(held.slot)?;
        if entry.generation != held.generation {
            return None;
        }
        let left = match std::mem::replace(&mut entry.state, State::Free) {
            State::Waiting(_) => {
                self.waiting -= 1;
                Left::Waiting
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

    #[test]
    fn wake_ups_are_additional() {
        let mut list = WaitList::default();
        let (mut a, mut b) = (None, None);
        list.wait(&mut a, Waker::noop());
        list.wait(&mut b, Waker::noop());
        // `a` is notified and never comes back; the next notification goes to `b`.
        assert!(list.notify_one().is_some());
        assert!(list.has_waiting());
        assert!(list.notify_one().is_some());
        assert!(!list.has_waiting());
        assert!(list.notify_one().is_none());
        assert_eq!(list.leave(&mut a), Some(Left::Notified));
        assert_eq!(list.leave(&mut b), Some(Left::Notified));
    }

    #[test]
    fn fifo_and_refresh_keeps_the_turn() {
        let mut list = WaitList::default();
        let (mut a, mut b) = (None, None);
        list.wait(&mut a, Waker::noop());
        list.wait(&mut b, Waker::noop());
        let first = a;
        list.wait(&mut a, Waker::noop()); // polled again while waiting
        assert_eq!(a, first);
        list.notify_one();
        assert_eq!(list.leave(&mut a), Some(Left::Notified));
        assert_eq!(list.leave(&mut b), Some(Left::Waiting));
        assert!(list.notify_one().is_none());
    }

    #[test]
    fn cancelled_waiters_do_not_grow_the_line() {
        let mut list = WaitList::default();
        let mut keep = None;
        list.wait(&mut keep, Waker::noop());
        let mut others: Vec<Option<Ticket>> = vec![None; 8];
        for _ in 0..10_000 {
            for t in &mut others {
                list.wait(t, Waker::noop());
            }
            // Leave oldest first, so no entry is at the back when it leaves.
            for t in &mut others {
                assert_eq!(list.leave(t), Some(Left::Waiting));
            }
            assert!(list.line.len() <= 2 * list.waiting + 16 + others.len());
        }
        assert!(list.slots.len() <= 1 + others.len());
        assert!(list.notify_one().is_some());
        assert_eq!(list.leave(&mut keep), Some(Left::Notified));
    }

    #[test]
    fn stale_tickets_match_nothing() {
        let mut list = WaitList::default();
        let mut a = None;
        list.wait(&mut a, Waker::noop());
        let stale = a;
        list.leave(&mut a);
        let mut b = None;
        list.wait(&mut b, Waker::noop()); // reuses the slot
        let mut stale = stale;
        assert_eq!(list.leave(&mut stale), None);
        assert!(list.has_waiting());
    }
}
