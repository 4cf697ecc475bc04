//! Cancel safety at every poll point. Each async operation is driven by hand, as an executor
//! would drive it (polled first at once, then only when its counting waker was woken, plus
//! spurious polls), and dropped after k polls for every k up to the one that completes it,
//! either right after a poll or after a wake-up it never got to act on. After each drop the
//! script goes on, and at the end: no item lost or duplicated, the queue's counters agree,
//! the other waiters still got their wake-ups, and drop counters and an allocation counter
//! show nothing leaked. The pipeline's `push` and `shutdown` run on every runtime.

mod common;

use common::CountingWaker;

use std::cell::RefCell;
use std::future::Future;
use std::pin::{pin, Pin};

use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use backpressure_pipeline::{
    BoxFuture, CancellationToken, Pipeline, Policy, PushOutcome, Queue, Report, SpawnError, Spawner,
};
use common::{Live, Sp, Tracked};
use futures_util::poll;

// ---- Hand-polling ----

/// Where the task under test is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cut {
    /// How many times it has been polled.
    polls: usize,
    /// `false`: at once after that poll. `true`: when it is next about to be polled (it was
    /// woken, or a spurious poll came), so it is dropped holding whatever woke it.
    at_next_poll: bool,
}

impl Cut {
    /// Every cut of a task that completes at poll `n`.
    fn all_before(n: usize) -> Vec<Cut> {
        let right_after = (0..n).map(|polls| Cut {
            polls,
            at_next_poll: false,
        });
        let at_next = (1..n).map(|polls| Cut {
            polls,
            at_next_poll: true,
        });
        right_after.chain(at_next).collect()
    }
}

/// A future polled as an executor would.
struct Task<'a, O> {
    future: Option<Pin<Box<dyn Future<Output = O> + 'a>>>,
    counter: Arc<CountingWaker>,
    waker: Waker,
    /// Wake-ups counted at the last poll.
    seen: usize,
    polls: usize,
    /// Dropped before it completed.
    cut: bool,
}

impl<'a, O> Task<'a, O> {
    fn new(future: impl Future<Output = O> + 'a) -> Task<'a, O> {
        let counter = Arc::new(CountingWaker::default());
        Task {
            future: Some(Box::pin(future)),
            waker: Waker::from(counter.clone()),
            counter,
            seen: 0,
            polls: 0,
            cut: false,
        }
    }

    fn is_pending(&self) -> bool {
        self.future.is_some()
    }

    /// Never polled, or woken since its last poll.
    fn is_woken(&self) -> bool {
        self.polls == 0 || self.counter.count() > self.seen
    }

    fn poll(&mut self) -> Option<O> {
        let future = self.future.as_mut()?;
        self.seen = self.counter.count();
        self.polls += 1;
        match future.as_mut().poll(&mut Context::from_waker(&self.waker)) {
            Poll::Ready(out) => {
                self.future = None;
                Some(out)
            }
            Poll::Pending => None,
        }
    }

    fn drop_future(&mut self) {
        if self.future.take().is_some() {
            self.cut = true;
        }
    }
}

/// Tasks driven together; task 0 is the one under test, dropped at `cut`.
struct Tasks<'a, O> {
    tasks: Vec<Task<'a, O>>,
    cut: Option<Cut>,
    /// Live values just before and just after task 0 was dropped.
    live_at_cut: Option<(usize, usize)>,
}

impl<'a, O> Tasks<'a, O> {
    fn new(tasks: Vec<Task<'a, O>>, cut: Option<Cut>) -> Tasks<'a, O> {
        Tasks {
            tasks,
            cut,
            live_at_cut: None,
        }
    }

    fn cut_task_0(&mut self, live: &Live) {
        let before = live.count();
        self.tasks[0].drop_future();
        self.live_at_cut = Some((before, live.count()));
    }

    /// Polls task `i` (a spurious poll if it was not woken), dropping task 0 instead when its
    /// cut is due. Returns its output if it completed.
    fn poll(&mut self, i: usize, live: &Live) -> Option<O> {
        if !self.tasks[i].is_pending() {
            return None;
        }
        let cut = self.cut.filter(|_| i == 0);
        if let Some(cut) = cut {
            let polls = self.tasks[0].polls;
            if polls == cut.polls && (cut.at_next_poll || polls == 0) {
                self.cut_task_0(live);
                return None;
            }
        }
        let out = self.tasks[i].poll();
        if let Some(cut) = cut {
            if out.is_none() && !cut.at_next_poll && self.tasks[0].polls == cut.polls {
                self.cut_task_0(live);
            }
        }
        out
    }

    /// Runs every woken task until none is woken, handing each output to `done`.
    fn run(&mut self, live: &Live, mut done: impl FnMut(usize, O)) {
        loop {
            let mut ran = false;
            for i in 0..self.tasks.len() {
                if self.tasks[i].is_pending() && self.tasks[i].is_woken() {
                    ran = true;
                    if let Some(out) = self.poll(i, live) {
                        done(i, out);
                    }
                }
            }
            if !ran {
                return;
            }
        }
    }

    /// Polls every pending task once, woken or not (executors may poll spuriously).
    ///
    /// Called after [`run`](Tasks::run), when no task is woken: a task that completes here
    /// could have completed before, but nothing woke it, so this is a lost wake-up.
    fn spurious(&mut self, live: &Live) {
        for i in 0..self.tasks.len() {
            let completed = self.poll(i, live).is_some();
            let cut = self.cut;
            assert!(
                !completed,
                "{cut:?}: task {i} completed on a spurious poll, so a wake-up was lost"
            );
        }
    }
}

// ---- Leak checks ----

/// Counts the bytes this thread has allocated and not freed, to show that the futures and
/// tokens under test free what they allocate. Tests run on their own threads, so counts do
/// not mix.
mod alloc_counter {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    struct Counting;

    thread_local! {
        static NET: Cell<isize> = const { Cell::new(0) };
    }

    fn add(bytes: isize) {
        let _ = NET.try_with(|n| n.set(n.get() + bytes));
    }

    // SAFETY: every call is passed to `System` unchanged; the count is a const-initialised
    // thread-local `Cell` with no destructor, so touching it never allocates or re-enters.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            add(layout.size() as isize);
            // SAFETY: the caller's contract is `System::alloc`'s.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            add(-(layout.size() as isize));
            // SAFETY: the caller's contract is `System::dealloc`'s.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            add(new_size as isize - layout.size() as isize);
            // SAFETY: the caller's contract is `System::realloc`'s.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    /// Runs `f` on this thread and returns its result and the bytes it left allocated.
    pub(super) fn net<R>(f: impl FnOnce() -> R) -> (R, isize) {
        let before = NET.with(Cell::get);
        let result = f();
        (result, NET.with(Cell::get) - before)
    }
}

/// Runs a single-threaded scenario and fails if it left any memory allocated.
fn assert_frees_everything(what: &str, scenario: impl FnOnce()) {
    let ((), leaked) = alloc_counter::net(scenario);
    assert_eq!(leaked, 0, "{what}: {leaked} bytes left allocated");
}

// ---- The queue ----

/// An item that counts as live until dropped.
#[derive(Debug)]
struct Item {
    id: u32,
    _live: Tracked,
}

/// What became of every item in a queue script.
#[derive(Debug, Default)]
struct Log {
    next: u32,
    /// Ids in the order they entered the queue.
    entered: Vec<u32>,
    /// Ids in the order they left it, by any pop.
    left: Vec<u32>,
    /// Ids handed back (`Full`, `Closed`).
    returned: Vec<u32>,
}

impl Log {
    fn item(&mut self, live: &Live) -> Item {
        self.next += 1;
        Item {
            id: self.next,
            _live: live.track(),
        }
    }

    fn try_push(&mut self, queue: &Queue<Item>, live: &Live) {
        let item = self.item(live);
        let id = item.id;
        match queue.try_push(item) {
            PushOutcome::Accepted => self.entered.push(id),
            PushOutcome::Full(item) | PushOutcome::Closed(item) => self.returned.push(item.id),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Another consumer pops one item if there is one (a cut run may have fewer).
    fn pop(&mut self, queue: &Queue<Item>) {
        let mut pop = pin!(queue.pop());
        match pop.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Some(item)) => self.left.push(item.id),
            Poll::Ready(None) => assert!(queue.is_closed()),
            Poll::Pending => assert!(queue.is_empty()),
        }
    }

    fn drain(&mut self, queue: &Queue<Item>) {
        assert!(queue.is_closed());
        while !queue.is_empty() {
            self.pop(queue);
        }
    }
}

/// Something another party does between polls.
#[derive(Debug, Clone, Copy)]
enum Event {
    /// Poll every pending task once, woken or not.
    Spurious,
    /// Another consumer pops one item.
    Pop,
    /// Another consumer pops one item, and another producer takes the freed room at once.
    PopThenSteal,
    /// Another producer pushes `n` items.
    Push(usize),
    /// Another producer pushes one item, and another consumer takes it at once.
    PushThenSteal,
    Close,
}

/// A queue script: fill the queue, start the tasks, then run the events, letting every
/// woken task run after each, and close.
struct Script {
    policy: Policy,
    capacity: usize,
    prefill: usize,
    events: &'static [Event],
}

/// What a task's output says about the items.
trait Output: Sized + std::fmt::Debug {
    /// Whether the future holds an item until it completes (a push does; a pop does not).
    const HOLDS_ITEM: bool;
    /// Records the output of a task that pushed `id` (or popped, for pops).
    fn record(self, id: u32, log: &mut Log);
    /// Whether the task got what it waited for before close.
    fn is_success(&self) -> bool;
}

impl Output for PushOutcome<Item> {
    const HOLDS_ITEM: bool = true;

    fn record(self, id: u32, log: &mut Log) {
        match self {
            PushOutcome::Accepted => log.entered.push(id),
            PushOutcome::Closed(item) | PushOutcome::Full(item) => {
                assert_eq!(item.id, id);
                log.returned.push(id);
            }
            other => panic!("a Block push gave {other:?}"),
        }
    }

    fn is_success(&self) -> bool {
        matches!(self, PushOutcome::Accepted)
    }
}

impl Output for Option<Item> {
    const HOLDS_ITEM: bool = false;

    fn record(self, _: u32, log: &mut Log) {
        log.left.extend(self.map(|item| item.id));
    }

    fn is_success(&self) -> bool {
        self.is_some()
    }
}

impl Output for Vec<Item> {
    const HOLDS_ITEM: bool = false;

    fn record(self, _: u32, log: &mut Log) {
        log.left.extend(self.into_iter().map(|item| item.id));
    }

    fn is_success(&self) -> bool {
        !self.is_empty()
    }
}

/// The result of one run of a script.
struct Ran {
    /// Polls task 0 took to complete (uncut runs).
    polls_of_0: usize,
    /// Which tasks succeeded before close.
    success: Vec<bool>,
    cut: bool,
}

impl Script {
    /// Runs the script with tasks made by `start` (given the queue and, for pushes, the item
    /// and its id), task 0 dropped at `cut`, and checks the accounting.
    fn run<O: Output>(
        &self,
        count: usize,
        cut: Option<Cut>,
        start: impl for<'q> Fn(&'q Queue<Item>, Item) -> Pin<Box<dyn Future<Output = O> + 'q>>,
    ) -> Ran {
        let live = Live::new();
        let queue = Queue::new(self.capacity, self.policy).expect("a valid capacity");
        let log = RefCell::new(Log::default());
        for _ in 0..self.prefill {
            log.borrow_mut().try_push(&queue, &live);
        }
        // Each task gets an item: a push pushes it; a pop just drops it (it keeps ids
        // unique and lets task 0's drop be seen in the live count either way).
        let mut ids = Vec::new();
        let made: Vec<_> = (0..count)
            .map(|_| {
                let item = log.borrow_mut().item(&live);
                ids.push(item.id);
                Task::new(start(&queue, item))
            })
            .collect();
        let mut outputs: Vec<Option<bool>> = vec![None; count];
        let mut tasks = Tasks::new(made, cut);
        let done = |i: usize, out: O, outputs: &mut Vec<Option<bool>>| {
            outputs[i] = Some(out.is_success());
            out.record(ids[i], &mut log.borrow_mut());
        };
        tasks.run(&live, |i, out| done(i, out, &mut outputs));
        for &event in self.events {
            match event {
                Event::Spurious => tasks.spurious(&live),
                Event::Pop => log.borrow_mut().pop(&queue),
                Event::PopThenSteal => {
                    log.borrow_mut().pop(&queue);
                    log.borrow_mut().try_push(&queue, &live);
                }
                Event::Push(n) => {
                    for _ in 0..n {
                        log.borrow_mut().try_push(&queue, &live);
                    }
                }
                Event::PushThenSteal => {
                    log.borrow_mut().try_push(&queue, &live);
                    log.borrow_mut().pop(&queue);
                }
                Event::Close => {
                    // Every task but a cut one must have had what it waited for by now.
                    for (i, out) in outputs.iter().enumerate() {
                        if !(i == 0 && tasks.tasks[0].cut) {
                            assert_eq!(
                                *out,
                                Some(true),
                                "{cut:?}: task {i} was not done before close"
                            );
                        }
                    }
                    assert!(queue.close());
                }
            }
            tasks.run(&live, |i, out| done(i, out, &mut outputs));
        }
        // Close ends every wait; drain what is left.
        queue.close();
        tasks.run(&live, |i, out| done(i, out, &mut outputs));
        assert!(tasks.tasks.iter().all(|t| !t.is_pending()));
        let mut log = log.into_inner();
        log.drain(&queue);

        // A dropped push drops its item with it, at once; a dropped pop holds none.
        let cut0 = tasks.tasks[0].cut;
        if let (true, Some((before, after))) = (cut0, tasks.live_at_cut) {
            assert_eq!(before - after, usize::from(O::HOLDS_ITEM), "{cut:?}");
            assert!(!log.entered.contains(&ids[0]) && !log.returned.contains(&ids[0]));
        }
        // FIFO: items leave in the order they entered, each exactly once.
        assert_eq!(
            log.left, log.entered,
            "{cut:?}: an item was lost, duplicated or reordered"
        );
        let stats = queue.stats();
        assert_eq!(stats.accepted, log.entered.len() as u64, "{cut:?}");
        assert_eq!((stats.shed, stats.evicted, stats.len), (0, 0, 0), "{cut:?}");
        assert!(stats.peak_len <= self.capacity);
        let polls_of_0 = tasks.tasks[0].polls;
        let success = outputs.iter().map(|o| *o == Some(true)).collect();
        drop(tasks);
        drop(queue);
        drop(log);
        assert_eq!(live.count(), 0, "{cut:?}: an item outlived the queue");
        Ran {
            polls_of_0,
            success,
            cut: cut0,
        }
    }

    /// Runs the script uncut, then cut at every point up to the poll that completes task 0.
    fn at_every_cut<O: Output>(
        &self,
        name: &str,
        count: usize,
        start: impl for<'q> Fn(&'q Queue<Item>, Item) -> Pin<Box<dyn Future<Output = O> + 'q>>,
    ) {
        let whole = self.run(count, None, &start);
        assert!(
            whole.success.iter().all(|&s| s),
            "{name}: uncut, every task succeeds"
        );
        let n = whole.polls_of_0;
        assert!(
            n >= 3,
            "{name}: the script should make task 0 wait ({n} polls)"
        );
        for cut in Cut::all_before(n) {
            let what = format!("{name}, {cut:?} of {n} polls");
            assert_frees_everything(&what, || {
                let ran = self.run(count, Some(cut), &start);
                assert!(ran.cut, "{what}: task 0 was not dropped");
                assert!(
                    ran.success[1..].iter().all(|&s| s),
                    "{what}: another task missed a wake-up"
                );
            });
        }
    }
}

/// Gives a closure the higher-ranked signature a script's `start` needs.
fn task_maker<O, F>(f: F) -> F
where
    F: for<'q> Fn(&'q Queue<Item>, Item) -> Pin<Box<dyn Future<Output = O> + 'q>>,
{
    f
}

fn push_task(
    queue: &Queue<Item>,
    item: Item,
) -> Pin<Box<dyn Future<Output = PushOutcome<Item>> + '_>> {
    Box::pin(queue.push(item))
}

fn pop_task(queue: &Queue<Item>, item: Item) -> Pin<Box<dyn Future<Output = Option<Item>> + '_>> {
    drop(item);
    Box::pin(queue.pop())
}

#[test]
fn a_block_push_dropped_at_any_poll_point_loses_nothing() {
    for capacity in 1..=3 {
        let script = Script {
            policy: Policy::Block,
            capacity,
            prefill: capacity,
            // Task 0 waits first, is woken for room another producer steals, waits again
            // behind task 1, and gets the second room after task 1 took the first.
            events: &[
                Event::Spurious,
                Event::PopThenSteal,
                Event::Pop,
                Event::Spurious,
                Event::Pop,
                Event::Pop,
                Event::Close,
            ],
        };
        script.at_every_cut(&format!("push, capacity {capacity}"), 2, push_task);
        // Three pushers: a dropped one must not strand the other two.
        script.at_every_cut(&format!("push x3, capacity {capacity}"), 3, push_task);
    }
}

#[test]
fn a_pop_dropped_at_any_poll_point_loses_nothing() {
    for policy in [Policy::DropNewest, Policy::DropOldest, Policy::Block] {
        let script = Script {
            policy,
            capacity: 3,
            prefill: 0,
            events: &[
                Event::Spurious,
                Event::PushThenSteal,
                Event::Push(1),
                Event::Spurious,
                Event::Push(1),
                Event::Push(1),
                Event::Close,
            ],
        };
        script.at_every_cut(&format!("pop, {policy:?}"), 2, pop_task);
        script.at_every_cut(&format!("pop x3, {policy:?}"), 3, pop_task);
    }
}

#[test]
fn a_pop_many_dropped_at_any_poll_point_loses_nothing() {
    for policy in [Policy::DropNewest, Policy::DropOldest, Policy::Block] {
        for limit in [1, 2, 5] {
            let script = Script {
                policy,
                capacity: 8,
                prefill: 0,
                events: &[
                    Event::Spurious,
                    Event::PushThenSteal,
                    Event::Push(2),
                    Event::Spurious,
                    Event::Push(1),
                    Event::Push(3),
                    Event::Close,
                ],
            };
            script.at_every_cut(
                &format!("pop_many({limit}), {policy:?}"),
                2,
                task_maker(move |queue, item| {
                    drop(item);
                    Box::pin(queue.pop_many(limit))
                }),
            );
        }
    }
}

#[test]
fn a_popper_dropped_after_close_woke_it_leaves_the_others_their_end() {
    // Close wakes every waiting popper with `None`; dropping one of them before it runs
    // must not keep the end from the others.
    for policy in [Policy::DropNewest, Policy::DropOldest, Policy::Block] {
        let live = Live::new();
        let queue = Queue::new(2, policy).expect("valid");
        let mut tasks = Tasks::new(
            vec![Task::new(queue.pop()), Task::new(queue.pop())],
            Some(Cut {
                polls: 1,
                at_next_poll: true,
            }),
        );
        tasks.run(&live, |_, _| panic!("nothing to pop yet"));
        assert!(queue.close());
        let mut got = Vec::new();
        tasks.run(&live, |i, out: Option<u32>| got.push((i, out)));
        assert!(tasks.tasks[0].cut);
        assert_eq!(got, [(1, None)], "{policy:?}");
        assert_eq!(queue.try_push(1), PushOutcome::Closed(1));
    }
}

#[test]
fn shedding_pushes_complete_on_their_first_poll_and_change_nothing_if_dropped_unpolled() {
    for policy in [Policy::DropNewest, Policy::DropOldest] {
        let live = Live::new();
        let queue = Queue::new(1, policy).expect("valid");
        assert!(queue.try_push(live.track()).is_accepted());
        {
            let _never_polled = queue.push(live.track());
        }
        assert_eq!((queue.len(), live.count()), (1, 1), "{policy:?}");
        let mut task = Task::new(queue.push(live.track()));
        let out = task.poll().expect("a shedding push never waits");
        assert!(out.is_dropped(), "{policy:?}");
        drop(out);
        assert_eq!((queue.len(), live.count()), (1, 1), "{policy:?}");
    }
}

// ---- Cancellation tokens ----

/// Which future a token waiter uses.
#[derive(Debug, Clone, Copy)]
enum Wait {
    Borrowed,
    Owned,
}

fn wait_on(token: &CancellationToken, how: Wait) -> Pin<Box<dyn Future<Output = ()> + '_>> {
    match how {
        Wait::Borrowed => Box::pin(token.cancelled()),
        Wait::Owned => Box::pin(token.clone().cancelled_owned()),
    }
}

/// Four waiters (two on a child, one on the root, one on a grandchild); an unrelated sibling
/// is cancelled first, then the root. Waiter 0 is dropped at `cut`. Returns its polls.
fn token_script(first: Wait, others: Wait, cut: Option<Cut>) -> usize {
    let live = Live::new();
    let root = CancellationToken::new();
    let child = root.child_token();
    let sibling = root.child_token();
    let grandchild = child.child_token();
    let mut tasks = Tasks::new(
        vec![
            Task::new(wait_on(&child, first)),
            Task::new(wait_on(&child, others)),
            Task::new(wait_on(&root, others)),
            Task::new(wait_on(&grandchild, others)),
        ],
        cut,
    );
    let mut done = [false; 4];
    tasks.run(&live, |i, ()| done[i] = true);
    assert_eq!(done, [false; 4], "nothing is cancelled yet");
    tasks.spurious(&live);

    assert!(sibling.cancel());
    for (i, task) in tasks.tasks.iter().enumerate() {
        assert!(
            !task.is_pending() || !task.is_woken(),
            "{cut:?}: cancelling a sibling woke waiter {i}"
        );
    }
    tasks.spurious(&live);

    assert!(root.cancel());
    tasks.run(&live, |i, ()| done[i] = true);
    let cut0 = tasks.tasks[0].cut;
    assert_eq!(done[0], !cut0, "{cut:?}");
    assert!(
        done[1..].iter().all(|&d| d),
        "{cut:?}: a waiter missed the cancel"
    );
    // The tree is consistent afterwards: cancelled everywhere below the root, and new
    // waiters and children see it at once.
    assert!(child.is_cancelled() && grandchild.is_cancelled());
    assert!(!root.cancel() && !child.cancel());
    let mut late = Task::new(child.cancelled());
    assert_eq!(late.poll(), Some(()));
    assert!(child.child_token().is_cancelled());
    tasks.tasks[0].polls
}

#[test]
fn token_waiters_dropped_at_any_poll_point_leave_the_tree_consistent_and_free_everything() {
    for first in [Wait::Borrowed, Wait::Owned] {
        for others in [Wait::Borrowed, Wait::Owned] {
            let n = token_script(first, others, None);
            assert_eq!(n, 4, "pending, spurious, spurious, ready");
            for cut in Cut::all_before(n) {
                let what = format!("{first:?} among {others:?}, {cut:?}");
                assert_frees_everything(&what, || {
                    token_script(first, others, Some(cut));
                });
            }
        }
    }
}

#[test]
fn a_token_waiter_dropped_after_its_wake_up_does_not_take_it_from_others() {
    // All waiters on one node; the cancel wakes every one, and dropping the first before it
    // runs must not matter to the rest.
    for how in [Wait::Borrowed, Wait::Owned] {
        assert_frees_everything(&format!("{how:?}"), || {
            let live = Live::new();
            let token = CancellationToken::new();
            let mut tasks = Tasks::new(
                (0..3).map(|_| Task::new(wait_on(&token, how))).collect(),
                Some(Cut {
                    polls: 1,
                    at_next_poll: true,
                }),
            );
            tasks.run(&live, |_, ()| panic!("not cancelled yet"));
            assert!(token.cancel());
            let mut done = Vec::new();
            tasks.run(&live, |i, ()| done.push(i));
            assert!(tasks.tasks[0].cut);
            assert_eq!(done, [1, 2]);
        });
    }
}

#[test]
fn an_owned_waiter_that_outlives_every_other_handle_is_still_cancelled_with_its_parent() {
    for cut in [None]
        .into_iter()
        .chain(Cut::all_before(2).into_iter().map(Some))
    {
        assert_frees_everything(&format!("{cut:?}"), || {
            let live = Live::new();
            let root = CancellationToken::new();
            let child = root.child_token();
            // The waiter holds the child's only handle once `child` is dropped.
            let mut tasks = Tasks::new(vec![Task::new(child.clone().cancelled_owned())], cut);
            drop(child);
            tasks.run(&live, |_, ()| panic!("not cancelled yet"));
            assert!(root.cancel());
            let mut done = false;
            tasks.run(&live, |_, ()| done = true);
            assert_eq!(done, cut.is_none(), "{cut:?}");
            assert_eq!(tasks.tasks[0].cut, cut.is_some());
        });
    }
}

// ---- The pipeline, on every runtime ----

/// A spawner that reports when each spawned task has finished, so a test can wait for a
/// worker to be gone without a sleep.
#[derive(Debug)]
struct Observed {
    inner: Sp,
    ended: async_channel::Sender<()>,
}

impl Observed {
    fn new(inner: Sp) -> (Observed, async_channel::Receiver<()>) {
        let (ended, ended_rx) = async_channel::unbounded();
        (Observed { inner, ended }, ended_rx)
    }
}

impl Spawner for Observed {
    fn spawn(&self, task: BoxFuture) -> Result<(), SpawnError> {
        let ended = self.ended.clone();
        self.inner.spawn(Box::pin(async move {
            task.await;
            let _ = ended.try_send(());
        }))
    }

    fn sleep(&self, duration: Duration) -> BoxFuture {
        self.inner.sleep(duration)
    }
}

/// A worker that reports each item it takes, then holds it until let go: one `go` message
/// per item, or all at once when `go` is closed. With `forever`, it holds its first item
/// and never finishes it.
struct Gate {
    taken: async_channel::Receiver<u32>,
    go: async_channel::Sender<()>,
}

fn gated_worker(
    live: &Live,
    forever: bool,
) -> (
    Gate,
    impl Fn(Item) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync + 'static,
) {
    let (taken_tx, taken) = async_channel::unbounded();
    let (go, go_rx) = async_channel::unbounded::<()>();
    let closure_guard = live.track();
    let work = move |item: Item| {
        let _ = &closure_guard;
        let (taken_tx, go_rx) = (taken_tx.clone(), go_rx.clone());
        Box::pin(async move {
            taken_tx.send(item.id).await.expect("the test listens");
            if forever {
                std::future::pending::<()>().await;
            }
            let _ = go_rx.recv().await;
            drop(item);
        }) as Pin<Box<dyn Future<Output = ()> + Send>>
    };
    (Gate { taken, go }, work)
}

fn item(live: &Live, id: u32) -> Item {
    Item {
        id,
        _live: live.track(),
    }
}

/// Where the pending `Pipeline::push` is dropped.
#[derive(Debug, Clone, Copy)]
enum PushCut {
    /// Never polled.
    Unpolled,
    /// After this many polls, all pending on a full queue.
    AfterPolls(usize),
    /// Woken by room it never used.
    Woken,
    /// Not dropped: it completes.
    Never,
}

async fn pipeline_push_cut(sp: Sp, cut: PushCut) {
    let live = Live::new();
    let (gate, work) = gated_worker(&live, false);
    let pipeline = Pipeline::builder(1, Policy::Block)
        .deadline(Duration::MAX)
        .spawn(sp, work)
        .expect("a valid pipeline");
    // The worker holds item 0; item 1 fills the queue.
    assert!(pipeline.push(item(&live, 0)).await.is_accepted());
    assert_eq!(gate.taken.recv().await, Ok(0));
    assert!(pipeline.push(item(&live, 1)).await.is_accepted());
    assert_eq!(pipeline.len(), 1);

    // Push 2 waits first, push 3 behind it.
    let mut first = Box::pin(pipeline.push(item(&live, 2)));
    let mut second = Box::pin(pipeline.push(item(&live, 3)));
    let polls = match cut {
        PushCut::Unpolled => 0,
        PushCut::AfterPolls(n) => n,
        PushCut::Woken | PushCut::Never => 1,
    };
    for i in 0..polls {
        assert!(poll!(first.as_mut()).is_pending(), "{cut:?}: poll {i}");
        if i == 0 {
            assert!(poll!(second.as_mut()).is_pending());
        }
    }
    let let_go_one = || async {
        gate.go.send(()).await.expect("the worker listens");
    };
    let mut produced = 3;
    match cut {
        PushCut::Unpolled | PushCut::AfterPolls(_) => {
            let before = live.count();
            drop(first);
            assert_eq!(
                live.count(),
                before - 1,
                "{cut:?}: the item goes with the push"
            );
            let_go_one().await;
            assert_eq!(gate.taken.recv().await, Ok(1));
        }
        PushCut::Woken => {
            // The worker takes item 1: room, and the first pusher is woken; it is dropped
            // before it runs, so its wake-up must go on to the second.
            let_go_one().await;
            assert_eq!(gate.taken.recv().await, Ok(1));
            let before = live.count();
            drop(first);
            assert_eq!(
                live.count(),
                before - 1,
                "{cut:?}: the item goes with the push"
            );
        }
        PushCut::Never => {
            let_go_one().await;
            assert_eq!(gate.taken.recv().await, Ok(1));
            let outcome = first.await;
            assert!(matches!(outcome, PushOutcome::Accepted), "{outcome:?}");
            produced += 1;
            let_go_one().await;
            assert_eq!(gate.taken.recv().await, Ok(2));
        }
    }
    // The watchdog fails the test if the second pusher's wake-up was lost.
    let outcome = second.await;
    assert!(
        matches!(outcome, PushOutcome::Accepted),
        "{cut:?}: {outcome:?}"
    );

    gate.go.close();
    let report = pipeline.shutdown().await;
    assert_eq!(
        (
            report.produced,
            report.processed,
            report.dropped,
            report.abandoned
        ),
        (produced, produced, 0, 0),
        "{cut:?}: {report}"
    );
    assert!(report.is_conserved() && report.all_joined(), "{report}");
    assert_eq!(report.workers_aborted, 0);
    assert_eq!(
        live.count(),
        0,
        "{cut:?}: an item or the worker outlived shutdown"
    );
    drop(pipeline);
}

async fn pipeline_push_dropped_at_any_poll_point_loses_nothing(sp: Sp) {
    for cut in [
        PushCut::Unpolled,
        PushCut::AfterPolls(1),
        PushCut::AfterPolls(2),
        PushCut::Woken,
        PushCut::Never,
    ] {
        pipeline_push_cut(sp.clone(), cut).await;
    }
}

/// How a shutdown script ends the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// Deadline `MAX`: the worker drains everything, one item per `go`.
    Drain,
    /// Deadline `MAX`, but the parent token stopped the pipeline before `shutdown`.
    External,
    /// Deadline zero, grace `MAX`: the worker finishes its item once let go, then stops.
    Grace,
    /// Deadline and grace zero: the worker, holding its item forever, is aborted.
    Abort,
}

/// The counts of a report, without `deadline_exceeded` (see
/// `a_resumed_shutdown_reports_the_deadline_the_first_call_exceeded`).
fn counts(report: &Report) -> impl PartialEq + std::fmt::Debug {
    (
        (
            report.produced,
            report.processed,
            report.dropped,
            report.abandoned,
            report.panicked,
        ),
        (
            report.workers_spawned,
            report.workers_joined,
            report.workers_aborted,
            report.workers_unresponsive,
            report.cause,
        ),
    )
}

const QUEUED: u32 = 3;

/// Starts a one-worker pipeline on `path` holding item 0 in the worker and items 1..=QUEUED
/// in the queue.
async fn gated_pipeline(
    sp: Sp,
    path: Path,
    live: &Live,
) -> (Pipeline<Item>, Gate, async_channel::Receiver<()>) {
    let (spawner, ended) = Observed::new(sp);
    let (gate, work) = gated_worker(live, path == Path::Abort);
    let app = CancellationToken::new();
    let builder = Pipeline::builder(4, Policy::Block).parent(&app);
    let builder = match path {
        Path::Drain | Path::External => builder.deadline(Duration::MAX),
        Path::Grace => builder.deadline(Duration::ZERO).grace(Duration::MAX),
        Path::Abort => builder
            .deadline(Duration::ZERO)
            .grace(Duration::ZERO)
            .unresponsive_after(Duration::MAX),
    };
    let pipeline = builder.spawn(spawner, work).expect("a valid pipeline");
    for id in 0..=QUEUED {
        assert!(pipeline.push(item(live, id)).await.is_accepted());
        if id == 0 {
            assert_eq!(gate.taken.recv().await, Ok(0));
        }
    }
    if path == Path::External {
        assert!(app.cancel());
    }
    (pipeline, gate, ended)
}

/// Polls `shutdown` up to `polls` times, letting the worker go one item further between
/// polls (on the drain paths), and returns the report if it completed.
async fn poll_shutdown(
    pipeline: &Pipeline<Item>,
    gate: &Gate,
    ended: &async_channel::Receiver<()>,
    path: Path,
    polls: usize,
) -> Option<Report> {
    let mut shutdown = Box::pin(pipeline.shutdown());
    for i in 0..polls {
        if i > 0 && matches!(path, Path::Drain | Path::External) {
            gate.go.send(()).await.expect("the worker listens");
            if (i as u32) <= QUEUED {
                assert_eq!(gate.taken.recv().await, Ok(i as u32));
            } else {
                // The last item let go: the worker finds the queue closed and empty.
                ended.recv().await.expect("the worker ends");
            }
        }
        if let std::task::Poll::Ready(report) = poll!(shutdown.as_mut()) {
            return Some(report);
        }
        assert!(
            pipeline.is_closed(),
            "{path:?}: the first poll closed the queue"
        );
    }
    None
}

/// The uninterrupted run's report.
async fn reference(sp: Sp, path: Path) -> Report {
    let live = Live::new();
    let (pipeline, gate, ended) = gated_pipeline(sp, path, &live).await;
    let report = match path {
        Path::Drain | Path::External => {
            poll_shutdown(&pipeline, &gate, &ended, path, QUEUED as usize + 2)
                .await
                .expect("done once the worker ended")
        }
        Path::Grace => {
            let mut shutdown = Box::pin(pipeline.shutdown());
            assert!(poll!(shutdown.as_mut()).is_pending(), "in the grace");
            gate.go.close();
            shutdown.await
        }
        Path::Abort => pipeline.shutdown().await,
    };
    assert!(
        report.is_conserved() && report.all_joined(),
        "{path:?}: {report}"
    );
    // What is left comes back to the caller, and nothing else outlives shutdown.
    let leftovers = pipeline.take_leftovers();
    assert_eq!(
        leftovers.len() as u64,
        report.handed_back,
        "{path:?}: {report}"
    );
    drop(leftovers);
    assert_eq!(
        live.count(),
        0,
        "{path:?}: an item or the worker outlived shutdown"
    );
    drop(pipeline);
    report
}

async fn shutdown_cut(sp: Sp, path: Path, polls: usize, expected: &Report) {
    let live = Live::new();
    let (pipeline, gate, ended) = gated_pipeline(sp, path, &live).await;
    let what = format!("{path:?}, dropped after {polls} polls");
    if let Some(report) = poll_shutdown(&pipeline, &gate, &ended, path, polls).await {
        // Ran to the end without a cut.
        assert_eq!(&report, expected, "{what}");
    } else if polls > 0 {
        // Intake stays stopped though the shutdown was dropped.
        let back = pipeline.push(item(&live, 99)).await;
        assert!(matches!(back, PushOutcome::Closed(_)), "{what}: {back:?}");
    }
    // Let the worker go and call again.
    gate.go.close();
    let again = pipeline.shutdown().await;
    assert_eq!(counts(&again), counts(expected), "{what}: {again}");
    assert!(
        again.is_conserved() && again.all_joined(),
        "{what}: {again}"
    );
    let third = pipeline.shutdown().await;
    assert_eq!(third, again, "{what}: a third call reports differently");
    let leftovers = pipeline.take_leftovers();
    assert_eq!(leftovers.len() as u64, again.handed_back, "{what}: {again}");
    drop(leftovers);
    assert_eq!(
        live.count(),
        0,
        "{what}: an item or the worker outlived shutdown"
    );
    drop(pipeline);
}

async fn pipeline_shutdown_dropped_at_any_poll_point_resumes_with_the_same_counts(sp: Sp) {
    for path in [Path::Drain, Path::External, Path::Grace, Path::Abort] {
        let expected = reference(sp.clone(), path).await;
        match path {
            Path::Drain | Path::External => {
                assert_eq!(
                    (expected.produced, expected.processed, expected.abandoned),
                    (4, 4, 0),
                    "{path:?}: {expected}"
                );
                assert!(!expected.deadline_exceeded);
            }
            Path::Grace => {
                assert_eq!(
                    (expected.processed, expected.abandoned),
                    (1, 3),
                    "{expected}"
                );
                assert!(expected.deadline_exceeded);
            }
            Path::Abort => {
                assert_eq!(
                    (expected.processed, expected.abandoned),
                    (0, 4),
                    "{expected}"
                );
                assert_eq!(expected.workers_aborted, 1);
                assert!(expected.deadline_exceeded);
            }
        }
        let most = match path {
            Path::Drain | Path::External => QUEUED as usize + 2,
            Path::Grace | Path::Abort => 2,
        };
        // No prior call (0 polls) is the reference run itself on the grace path, where
        // letting the worker go before shutdown starts would let it drain the queue.
        let least = usize::from(path == Path::Grace);
        for polls in least..=most {
            shutdown_cut(sp.clone(), path, polls, &expected).await;
        }
    }
}

on_every_runtime!(
    pipeline_push_dropped_at_any_poll_point_loses_nothing,
    pipeline_shutdown_dropped_at_any_poll_point_resumes_with_the_same_counts,
);

/// A shutdown dropped after it passed the deadline and cancelled the worker token, then
/// resumed once the worker has stopped, finds every worker joined at its first look and
/// reports `deadline_exceeded: false`, though the first call exceeded the deadline and three
/// items are abandoned "because the deadline passed". An uninterrupted shutdown reports
/// `true`. (The abort path has the same flaw, but there the first poll may itself complete,
/// so only the grace path reproduces it every time.)
#[cfg(feature = "smol")]
#[test]

fn a_resumed_shutdown_reports_the_deadline_the_first_call_exceeded() {
    common::run(common::Runtime::Smol, |sp| async move {
        let expected = reference(sp.clone(), Path::Grace).await;
        assert!(expected.deadline_exceeded);
        let live = Live::new();
        let (pipeline, gate, ended) = gated_pipeline(sp, Path::Grace, &live).await;
        // One poll: past the (zero) deadline, the worker token is cancelled and the call
        // waits in the grace; then it is dropped.
        let first = poll_shutdown(&pipeline, &gate, &ended, Path::Grace, 1).await;
        assert!(first.is_none(), "the gated worker is still running");
        // The worker finishes its item, sees the token and stops.
        gate.go.close();
        ended.recv().await.expect("the worker ends");
        let resumed = pipeline.shutdown().await;
        assert_eq!(resumed, expected, "{resumed}");
    });
}
