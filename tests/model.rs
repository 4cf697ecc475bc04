//! Model-based tests. Random sequences of operations run against the queue and against a
//! plain reference model (a `VecDeque` with the same capacity and policy, a closed flag and
//! two cancellation flags) must agree on every push outcome, every popped value, every
//! length, every "would wait", every wake-up of a parked future and, at the end, every
//! counter. Then concurrent runs, on threads and through the pipeline, where order is free
//! but every item must be accounted for exactly once.
//!
//! `PROPTEST_CASES` overrides the number of cases (64 for the sequential model by default).

mod common;

use common::CountingWaker;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::{pin, Pin};

use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::thread;

use backpressure_pipeline::{CancellationToken, Policy, PushOutcome, Queue};
use futures_util::future::{self, Either, FutureExt};
use proptest::prelude::*;

/// `cases` unless `PROPTEST_CASES` says otherwise; no regression files written.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---- The reference model ----

/// Which token an operation is about: the root, or its child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Root,
    Child,
}

/// An operation that may wait.
#[derive(Debug, Clone, Copy)]
enum Call {
    /// `Queue::push` (waits only under `Block` on a full open queue).
    Push,
    /// `Queue::pop` (waits on an empty open queue).
    Pop,
    /// `Queue::pop_many(k)`.
    PopMany(usize),
    /// `cancelled()` (borrowed) or `cancelled_owned()` on a token.
    Cancelled(Which, bool),
}

/// What a finished [`Call`] produced, in one type so that any call can be parked.
#[derive(Debug, PartialEq, Eq)]
enum Out {
    Push(PushOutcome<u32>),
    Pop(Option<u32>),
    Many(Vec<u32>),
    Cancelled,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    /// `try_push` of the next value.
    TryPush,
    /// `try_push` of the next `n` values.
    Burst(usize),
    /// Poll a call once with a no-op waker and drop it.
    Now(Call),
    /// Poll a call once with a counting waker and keep it if it waits (one at a time).
    Park(Call),
    /// Poll the parked call again.
    PollParked,
    /// Drop the parked call.
    DropParked,
    /// `select(pop, child.cancelled())`, as a pipeline worker waits.
    PopUnlessCancelled,
    Cancel(Which),
    Close,
}

/// The queue as a plain `VecDeque`, and the two tokens as two flags.
#[derive(Debug)]
struct Model {
    capacity: usize,
    policy: Policy,
    buf: VecDeque<u32>,
    closed: bool,
    accepted: u64,
    shed: u64,
    evicted: u64,
    peak: usize,
    root_cancelled: bool,
    child_cancelled: bool,
    /// The parked `Block` push, if any: `Some(true)` once a pop has reserved a freed slot
    /// for it (waiting producers are served first, never overtaken by a newcomer).
    producer: Option<bool>,
}

impl Model {
    fn new(capacity: usize, policy: Policy) -> Model {
        Model {
            capacity,
            policy,
            buf: VecDeque::new(),
            closed: false,
            accepted: 0,
            shed: 0,
            evicted: 0,
            peak: 0,
            root_cancelled: false,
            child_cancelled: false,
            producer: None,
        }
    }

    /// Slots promised to the parked producer.
    fn reserved(&self) -> usize {
        usize::from(self.producer == Some(true))
    }

    fn enqueue(&mut self, v: u32) {
        self.buf.push_back(v);
        self.accepted += 1;
        self.peak = self.peak.max(self.buf.len());
    }

    /// Items left the buffer: the first freed slot goes to the parked producer, if it waits.
    fn freed(&mut self, n: usize) {
        if n > 0 && self.producer == Some(false) {
            self.producer = Some(true);
        }
    }

    /// The parked push polled again.
    fn repoll_push(&mut self, v: u32) -> Option<PushOutcome<u32>> {
        if self.closed {
            self.producer = None;
            return Some(PushOutcome::Closed(v));
        }
        if self.producer == Some(true) {
            self.producer = None;
            self.enqueue(v);
            return Some(PushOutcome::Accepted);
        }
        None
    }

    /// The parked push dropped: a reserved slot is free again.
    fn drop_producer(&mut self) {
        self.producer = None;
    }

    /// A push; `None` when it would wait (only the async push under `Block`, full and open).
    /// The model changes only when the push completes.
    fn push(&mut self, v: u32, may_wait: bool) -> Option<PushOutcome<u32>> {
        if self.closed {
            return Some(PushOutcome::Closed(v));
        }
        if self.buf.len() + self.reserved() < self.capacity {
            self.enqueue(v);
            return Some(PushOutcome::Accepted);
        }
        match self.policy {
            Policy::DropNewest => {
                self.shed += 1;
                Some(PushOutcome::Shed(v))
            }
            Policy::DropOldest => {
                let oldest = self.buf.pop_front().expect("full means not empty");
                self.buf.push_back(v);
                self.accepted += 1;
                self.evicted += 1;
                Some(PushOutcome::Evicted(oldest))
            }
            Policy::Block if may_wait => None,
            Policy::Block => Some(PushOutcome::Full(v)),
        }
    }

    /// A pop; `None` when it would wait.
    fn pop(&mut self) -> Option<Option<u32>> {
        match self.buf.pop_front() {
            Some(v) => {
                self.freed(1);
                Some(Some(v))
            }
            None if self.closed => Some(None),
            None => None,
        }
    }

    fn pop_many(&mut self, limit: usize) -> Option<Vec<u32>> {
        if limit == 0 {
            return Some(Vec::new());
        }
        if self.buf.is_empty() && !self.closed {
            return None;
        }
        let n = limit.min(self.buf.len());
        self.freed(n);
        Some(self.buf.drain(..n).collect())
    }

    /// `close()`: true if this call closed the queue.
    fn close(&mut self) -> bool {
        !std::mem::replace(&mut self.closed, true)
    }

    fn is_cancelled(&self, which: Which) -> bool {
        match which {
            Which::Root => self.root_cancelled,
            Which::Child => self.root_cancelled || self.child_cancelled,
        }
    }

    /// `cancel()`: true if this call cancelled the token.
    fn cancel(&mut self, which: Which) -> bool {
        let was = self.is_cancelled(which);
        match which {
            Which::Root => self.root_cancelled = true,
            Which::Child => self.child_cancelled = true,
        }
        !was
    }

    /// What `call` gives if polled now; `None` if it would wait.
    fn call(&mut self, call: Call, v: u32) -> Option<Out> {
        match call {
            Call::Push => self.push(v, true).map(Out::Push),
            Call::Pop => self.pop().map(Out::Pop),
            Call::PopMany(k) => self.pop_many(k).map(Out::Many),
            Call::Cancelled(which, _) => self.is_cancelled(which).then_some(Out::Cancelled),
        }
    }
}

// ---- The system under test ----

type BoxFut<'a> = Pin<Box<dyn Future<Output = Out> + 'a>>;

struct System {
    queue: Queue<u32>,
    root: CancellationToken,
    child: CancellationToken,
}

impl System {
    fn token(&self, which: Which) -> &CancellationToken {
        match which {
            Which::Root => &self.root,
            Which::Child => &self.child,
        }
    }

    fn start(&self, call: Call, v: u32) -> BoxFut<'_> {
        match call {
            Call::Push => Box::pin(self.queue.push(v).map(Out::Push)),
            Call::Pop => Box::pin(self.queue.pop().map(Out::Pop)),
            Call::PopMany(k) => Box::pin(self.queue.pop_many(k).map(Out::Many)),
            Call::Cancelled(which, false) => {
                Box::pin(self.token(which).cancelled().map(|()| Out::Cancelled))
            }
            Call::Cancelled(which, true) => Box::pin(
                self.token(which)
                    .clone()
                    .cancelled_owned()
                    .map(|()| Out::Cancelled),
            ),
        }
    }
}

/// A call that waited, kept to be polled again later.
struct Parked<'a> {
    call: Call,
    value: u32,
    future: BoxFut<'a>,
    counter: Arc<CountingWaker>,
    waker: Waker,
    /// Wake-ups counted at the last poll.
    seen: usize,
}

fn poll(future: &mut BoxFut<'_>, waker: &Waker) -> Poll<Out> {
    future.as_mut().poll(&mut Context::from_waker(waker))
}

/// Polls `future`, and once more if it is a push under a shedding policy that yielded: a
/// producer that keeps pushing into a full queue with no pop in between yields once (it
/// wakes itself) before it pushes, so that workers on its thread can run (`Queue::push`).
fn poll_past_a_yield(
    future: &mut BoxFut<'_>,
    waker: &Waker,
    counter: &CountingWaker,
    call: Call,
    policy: Policy,
) -> Poll<Out> {
    let got = poll(future, waker);
    let yielded = got.is_pending() && counter.count() > 0;
    if yielded && matches!(call, Call::Push) && policy != Policy::Block {
        return poll(future, waker);
    }
    got
}

fn expect_poll(got: Poll<Out>, expected: Option<Out>, what: &dyn std::fmt::Debug) {
    match expected {
        Some(out) => assert_eq!(got, Poll::Ready(out), "{what:?}"),
        None => assert!(got.is_pending(), "{what:?} should wait, got {got:?}"),
    }
}

/// Runs `ops` on a fresh queue and on the model, and checks they agree after every step.
fn check_against_model(capacity: usize, policy: Policy, ops: &[Op]) {
    let root = CancellationToken::new();
    let sys = System {
        queue: Queue::new(capacity, policy).expect("a valid capacity"),
        child: root.child_token(),
        root,
    };
    let mut model = Model::new(capacity, policy);
    let mut next = 0u32;
    let mut value = || {
        next += 1;
        next
    };
    let mut parked: Option<Parked<'_>> = None;

    for (step, &op) in ops.iter().enumerate() {
        let at = (step, op);
        match op {
            Op::TryPush => {
                let v = value();
                assert_eq!(Some(sys.queue.try_push(v)), model.push(v, false), "{at:?}");
            }
            Op::Burst(n) => {
                for _ in 0..n {
                    let v = value();
                    assert_eq!(Some(sys.queue.try_push(v)), model.push(v, false), "{at:?}");
                }
            }
            Op::Now(call) => {
                let v = value();
                let mut future = sys.start(call, v);
                let (counter, waker) = CountingWaker::new();
                let got = poll_past_a_yield(&mut future, &waker, &counter, call, policy);
                expect_poll(got, model.call(call, v), &at);
            }
            Op::Park(call) => {
                let v = value();
                let mut future = sys.start(call, v);
                let (counter, waker) = CountingWaker::new();
                let got = poll_past_a_yield(&mut future, &waker, &counter, call, policy);
                let expected = model.call(call, v);
                let waits = expected.is_none();
                expect_poll(got, expected, &at);
                // One parked call at a time; a second one that waits is simply dropped.
                if waits && parked.is_none() {
                    if let Call::Push = call {
                        model.producer = Some(false);
                    }
                    let seen = counter.count();
                    parked = Some(Parked {
                        call,
                        value: v,
                        future,
                        counter,
                        waker,
                        seen,
                    });
                }
            }
            Op::PollParked => {
                if let Some(p) = &mut parked {
                    let expected = match p.call {
                        Call::Push => model.repoll_push(p.value).map(Out::Push),
                        call => model.call(call, p.value),
                    };
                    if expected.is_some() {
                        // It can complete now, so whatever made that possible must have
                        // woken it: a lost wake-up would leave it asleep forever.
                        assert!(
                            p.counter.count() > p.seen,
                            "{at:?}: parked {:?} can complete but was never woken",
                            p.call
                        );
                    }
                    let done = expected.is_some();
                    p.seen = p.counter.count();
                    expect_poll(poll(&mut p.future, &p.waker), expected, &at);
                    if done {
                        parked = None;
                    }
                }
            }
            Op::DropParked => {
                if let Some(Parked {
                    call: Call::Push, ..
                }) = parked
                {
                    model.drop_producer();
                }
                parked = None;
            }
            Op::PopUnlessCancelled => {
                let got = future::select(pin!(sys.queue.pop()), pin!(sys.child.cancelled()))
                    .now_or_never()
                    .map(|either| match either {
                        Either::Left((item, _)) => Some(item),
                        Either::Right(((), _)) => None,
                    });
                // `select` polls the pop first: an item (or the end) beats the token.
                let expected = match model.pop() {
                    Some(item) => Some(Some(item)),
                    None if model.is_cancelled(Which::Child) => Some(None),
                    None => None,
                };
                assert_eq!(got, expected, "{at:?}");
            }
            Op::Cancel(which) => {
                assert_eq!(sys.token(which).cancel(), model.cancel(which), "{at:?}");
            }
            Op::Close => assert_eq!(sys.queue.close(), model.close(), "{at:?}"),
        }

        assert_eq!(sys.queue.len(), model.buf.len(), "{at:?}: len");
        assert_eq!(sys.queue.is_empty(), model.buf.is_empty(), "{at:?}");
        assert_eq!(sys.queue.is_closed(), model.closed, "{at:?}");
        assert_eq!(sys.root.is_cancelled(), model.is_cancelled(Which::Root));
        assert_eq!(sys.child.is_cancelled(), model.is_cancelled(Which::Child));
        let stats = sys.queue.stats();
        assert_eq!(
            (stats.accepted, stats.shed, stats.evicted),
            (model.accepted, model.shed, model.evicted),
            "{at:?}: counters"
        );
    }

    let stats = sys.queue.stats();
    assert_eq!(stats.accepted, model.accepted);
    assert_eq!(stats.shed, model.shed);
    assert_eq!(stats.evicted, model.evicted);
    assert_eq!(stats.len, model.buf.len());
    assert_eq!(stats.peak_len, model.peak);
    assert!(stats.peak_len <= capacity);

    // What is left comes out in the model's order, then the end.
    drop(parked);
    sys.queue.close();
    model.close();
    let mut rest = Vec::new();
    loop {
        match sys.queue.pop().now_or_never() {
            Some(Some(v)) => rest.push(v),
            Some(None) => break,
            None => panic!("a closed queue never waits"),
        }
    }
    assert_eq!(rest, Vec::from(std::mem::take(&mut model.buf)));
    // Every value accepted is popped, evicted or left: the model has checked each one.
}

fn capacity() -> impl Strategy<Value = usize> {
    prop_oneof![1usize..=4, 1usize..=16, 1usize..=64]
}

fn which() -> impl Strategy<Value = Which> {
    prop_oneof![Just(Which::Root), Just(Which::Child)]
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        4 => Just(Call::Push),
        3 => Just(Call::Pop),
        2 => prop_oneof![0usize..=3, 0usize..=70].prop_map(Call::PopMany),
        1 => (which(), any::<bool>()).prop_map(|(w, owned)| Call::Cancelled(w, owned)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    // Pushes outweigh pops so that large capacities fill up; close and cancel are rare so
    // that most of a run happens while the queue is open.
    prop_oneof![
        30 => Just(Op::TryPush),
        2 => (1usize..=64).prop_map(Op::Burst),
        40 => call().prop_map(Op::Now),
        10 => call().prop_map(Op::Park),
        8 => Just(Op::PollParked),
        2 => Just(Op::DropParked),
        3 => Just(Op::PopUnlessCancelled),
        1 => which().prop_map(Op::Cancel),
        1 => Just(Op::Close),
    ]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 0..300)
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn drop_newest_agrees_with_the_model(capacity in capacity(), ops in ops()) {
        check_against_model(capacity, Policy::DropNewest, &ops);
    }

    #[test]
    fn drop_oldest_agrees_with_the_model(capacity in capacity(), ops in ops()) {
        check_against_model(capacity, Policy::DropOldest, &ops);
    }

    #[test]
    fn block_agrees_with_the_model(capacity in capacity(), ops in ops()) {
        check_against_model(capacity, Policy::Block, &ops);
    }
}

/// Hand-written cases the random ones may take long to find: every policy at capacity 1
/// and 64, filled past full, drained, closed.
#[test]
fn fill_past_full_then_drain_at_the_capacity_bounds() {
    for policy in [Policy::DropNewest, Policy::DropOldest, Policy::Block] {
        for capacity in [1, 2, 63, 64] {
            let ops = [
                Op::Burst(capacity + 3),
                Op::Park(Call::Push),
                Op::Now(Call::PopMany(capacity / 2 + 1)),
                Op::PollParked,
                Op::Burst(2),
                Op::Now(Call::PopMany(usize::MAX)),
                Op::Park(Call::Pop),
                Op::TryPush,
                Op::PollParked,
                Op::Park(Call::PopMany(3)),
                Op::Close,
                Op::PollParked,
                Op::Now(Call::Pop),
                Op::Now(Call::PopMany(5)),
                Op::TryPush,
                Op::Now(Call::Push),
            ];
            check_against_model(capacity, policy, &ops);
        }
    }
}

// ---- Concurrent runs: order is free, accounting is not ----

/// One multi-producer, multi-consumer run on threads.
#[derive(Debug, Clone)]
struct Run {
    policy: Policy,
    capacity: usize,
    producers: u32,
    consumers: usize,
    per_producer: u32,
    /// Consumers take up to this many at once (1: `pop`, more: `pop_many`).
    batch: usize,
    /// Producer 0 closes the queue after this many of its pushes.
    close_after: Option<u32>,
}

fn run() -> impl Strategy<Value = Run> {
    (
        prop_oneof![
            Just(Policy::DropNewest),
            Just(Policy::DropOldest),
            Just(Policy::Block)
        ],
        capacity(),
        1u32..=4,
        1usize..=3,
        0u32..400,
        1usize..=4,
        proptest::option::weighted(0.3, 0u32..400),
    )
        .prop_map(
            |(policy, capacity, producers, consumers, per_producer, batch, close_after)| Run {
                policy,
                capacity,
                producers,
                consumers,
                per_producer,
                batch,
                close_after,
            },
        )
}

/// What one producer saw.
#[derive(Debug, Default)]
struct Seen {
    /// Values that entered the queue (`Accepted` or `Evicted`).
    accepted: Vec<u32>,
    /// Incoming values shed (`DropNewest`).
    shed: Vec<u32>,
    /// Buffered values evicted (`DropOldest`).
    evicted: Vec<u32>,
    /// Values refused because the queue was closed.
    closed: Vec<u32>,
}

const PER_PRODUCER_MAX: u32 = 1_000;

fn producer_of(v: u32) -> u32 {
    v / PER_PRODUCER_MAX
}

fn check_concurrent(run: &Run) {
    let queue = Arc::new(Queue::new(run.capacity, run.policy).expect("a valid capacity"));
    let start = Arc::new(Barrier::new(run.producers as usize + run.consumers));

    let consumers: Vec<_> = (0..run.consumers)
        .map(|_| {
            let (queue, start, batch) = (queue.clone(), start.clone(), run.batch);
            thread::spawn(move || {
                start.wait();
                smol::block_on(async {
                    let mut popped = Vec::new();
                    loop {
                        let got = if batch == 1 {
                            queue.pop().await.into_iter().collect()
                        } else {
                            queue.pop_many(batch).await
                        };
                        assert!(got.len() <= batch);
                        if got.is_empty() {
                            return popped;
                        }
                        popped.extend(got);
                    }
                })
            })
        })
        .collect();

    let producers: Vec<_> = (0..run.producers)
        .map(|p| {
            let (queue, start, run) = (queue.clone(), start.clone(), run.clone());
            thread::spawn(move || {
                start.wait();
                smol::block_on(async {
                    let mut seen = Seen::default();
                    for i in 0..run.per_producer {
                        let v = p * PER_PRODUCER_MAX + i;
                        // Mix the two entry points.
                        let mut outcome = if i % 2 == 0 {
                            queue.push(v).await
                        } else {
                            queue.try_push(v)
                        };
                        if let PushOutcome::Full(v) = outcome {
                            // A full Block queue: wait for room the async way.
                            outcome = queue.push(v).await;
                        }
                        match outcome {
                            PushOutcome::Accepted => seen.accepted.push(v),
                            PushOutcome::Evicted(old) => {
                                seen.accepted.push(v);
                                seen.evicted.push(old);
                            }
                            PushOutcome::Shed(back) => {
                                assert_eq!(back, v);
                                seen.shed.push(v);
                            }
                            PushOutcome::Closed(back) => {
                                assert_eq!(back, v);
                                seen.closed.push(v);
                            }
                            PushOutcome::Full(_) => unreachable!("push never reports Full"),
                            PushOutcome::Superseded(_) => {
                                unreachable!("only a coalescing pipeline supersedes")
                            }
                        }
                        // Once closed, a producer never gets an item in again.
                        if !seen.closed.is_empty() {
                            assert_eq!(seen.closed.last(), Some(&v), "accepted after close");
                        }
                        if p == 0 && run.close_after == Some(i) {
                            queue.close();
                        }
                    }
                    seen
                })
            })
        })
        .collect();

    let mut seen = Seen::default();
    for producer in producers {
        let s = producer.join().expect("a producer panicked");
        seen.accepted.extend(s.accepted);
        seen.shed.extend(s.shed);
        seen.evicted.extend(s.evicted);
        seen.closed.extend(s.closed);
    }
    queue.close();
    let mut popped = Vec::new();
    for consumer in consumers {
        let got = consumer.join().expect("a consumer panicked");
        // A consumer sees each producer's values in the order they were pushed: the queue
        // is FIFO and a consumer takes one batch after another.
        let mut last = vec![None; run.producers as usize];
        for &v in &got {
            let p = producer_of(v) as usize;
            assert!(last[p] < Some(v), "{run:?}: {v} after {:?}", last[p]);
            last[p] = Some(v);
        }
        popped.extend(got);
    }
    // The consumers ran until closed and empty.
    let left = queue.len();
    assert_eq!(left, 0, "{run:?}");

    let total = (run.producers * run.per_producer) as usize;
    let pushed_not_closed = total - seen.closed.len();
    // The conservation law.
    assert_eq!(
        popped.len() + seen.shed.len() + seen.evicted.len() + left,
        pushed_not_closed,
        "{run:?}"
    );
    // The multiset: every value exactly once, in exactly one place.
    let mut all: Vec<u32> = popped
        .iter()
        .chain(&seen.shed)
        .chain(&seen.evicted)
        .chain(&seen.closed)
        .copied()
        .collect();
    all.sort_unstable();
    let mut expected: Vec<u32> = (0..run.producers)
        .flat_map(|p| (0..run.per_producer).map(move |i| p * PER_PRODUCER_MAX + i))
        .collect();
    expected.sort_unstable();
    assert_eq!(all, expected, "{run:?}: a value was lost or duplicated");
    // What entered the queue left it by a pop or an eviction.
    let mut entered = seen.accepted.clone();
    let mut left_by: Vec<u32> = popped.iter().chain(&seen.evicted).copied().collect();
    entered.sort_unstable();
    left_by.sort_unstable();
    assert_eq!(entered, left_by, "{run:?}");

    let stats = queue.stats();
    assert_eq!(stats.accepted, seen.accepted.len() as u64, "{run:?}");
    assert_eq!(stats.shed, seen.shed.len() as u64, "{run:?}");
    assert_eq!(stats.evicted, seen.evicted.len() as u64, "{run:?}");
    assert_eq!(stats.len, 0);
    assert!(stats.peak_len <= run.capacity, "{run:?}");
    match run.policy {
        Policy::Block => assert!(seen.shed.is_empty() && seen.evicted.is_empty()),
        Policy::DropNewest => assert!(seen.evicted.is_empty()),
        Policy::DropOldest => assert!(seen.shed.is_empty()),
    }
    if run.close_after.is_none_or(|n| n >= run.per_producer) {
        assert!(seen.closed.is_empty(), "{run:?}: closed before the end");
    }
}

proptest! {
    #![proptest_config(config(32))]

    #[test]
    fn concurrent_producers_and_consumers_account_for_every_value(run in run()) {
        check_concurrent(&run);
    }
}

/// The pipeline on one runtime (smol's global executor, so only with the `smol` feature).
#[cfg(feature = "smol")]
mod pipeline_runs {
    use super::*;
    use backpressure_pipeline::{Pipeline, SmolSpawner, StopCause};
    use std::sync::Mutex;
    use std::time::Duration;

    /// One run of a pipeline on smol with several producer tasks.
    #[derive(Debug, Clone)]
    struct PipelineRun {
        policy: Policy,
        capacity: usize,
        workers: usize,
        producers: u32,
        per_producer: u32,
        /// Producer 0 cancels the pipeline's parent token after this many of its pushes.
        stop_after: Option<u32>,
    }

    fn pipeline_run() -> impl Strategy<Value = PipelineRun> {
        (
            prop_oneof![
                Just(Policy::DropNewest),
                Just(Policy::DropOldest),
                Just(Policy::Block)
            ],
            capacity(),
            1usize..=4,
            1u32..=3,
            0u32..300,
            proptest::option::weighted(0.3, 0u32..300),
        )
            .prop_map(
                |(policy, capacity, workers, producers, per_producer, stop_after)| PipelineRun {
                    policy,
                    capacity,
                    workers,
                    producers,
                    per_producer,
                    stop_after,
                },
            )
    }

    fn check_pipeline(run: &PipelineRun) {
        smol::block_on(async {
            let app = CancellationToken::new();
            let processed = Arc::new(Mutex::new(Vec::new()));
            let hooked = Arc::new(Mutex::new(Vec::new()));
            let pipeline = Arc::new(
                Pipeline::builder(run.capacity, run.policy)
                    .workers(run.workers)
                    .deadline(Duration::MAX)
                    .parent(&app)
                    .on_shed({
                        let hooked = hooked.clone();
                        move |v: &u32| hooked.lock().unwrap().push(*v)
                    })
                    .spawn(SmolSpawner::new(), {
                        let processed = processed.clone();
                        move |v: u32| {
                            let processed = processed.clone();
                            async move {
                                if v % 3 == 0 {
                                    smol::future::yield_now().await;
                                }
                                processed.lock().unwrap().push(v);
                            }
                        }
                    })
                    .expect("a valid pipeline"),
            );
            let producers: Vec<_> = (0..run.producers)
                .map(|p| {
                    let (producer, app, run) = (pipeline.producer(), app.clone(), run.clone());
                    smol::spawn(async move {
                        let mut seen = Seen::default();
                        for i in 0..run.per_producer {
                            let v = p * PER_PRODUCER_MAX + i;
                            match producer.push(v).await {
                                PushOutcome::Accepted => seen.accepted.push(v),
                                PushOutcome::Evicted(old) => {
                                    seen.accepted.push(v);
                                    seen.evicted.push(old);
                                }
                                PushOutcome::Shed(back) => seen.shed.push(back),
                                PushOutcome::Closed(back) => seen.closed.push(back),
                                PushOutcome::Full(_) => unreachable!("push never reports Full"),
                                PushOutcome::Superseded(_) => {
                                    unreachable!("only a coalescing pipeline supersedes")
                                }
                            }
                            if p == 0 && run.stop_after == Some(i) {
                                app.cancel();
                            }
                            if i % 16 == 0 {
                                smol::future::yield_now().await;
                            }
                        }
                        seen
                    })
                })
                .collect();
            let mut seen = Seen::default();
            for producer in producers {
                let s = producer.await;
                seen.accepted.extend(s.accepted);
                seen.shed.extend(s.shed);
                seen.evicted.extend(s.evicted);
                seen.closed.extend(s.closed);
            }
            let report = pipeline.shutdown().await;
            assert!(report.is_conserved(), "{run:?}: {report}");
            assert!(report.all_joined(), "{run:?}: {report}");
            assert_eq!(
                (report.abandoned, report.panicked),
                (0, 0),
                "{run:?}: {report}"
            );
            assert!(!report.deadline_exceeded);
            let total = u64::from(run.producers * run.per_producer);
            assert_eq!(report.produced, total - seen.closed.len() as u64, "{run:?}");
            assert_eq!(
                report.dropped,
                (seen.shed.len() + seen.evicted.len()) as u64,
                "{run:?}"
            );
            let expected_cause = if app.is_cancelled() {
                StopCause::External
            } else {
                StopCause::Shutdown
            };
            assert_eq!(report.cause, expected_cause, "{run:?}");

            let processed = std::mem::take(&mut *processed.lock().unwrap());
            assert_eq!(report.processed, processed.len() as u64, "{run:?}");
            // The hook saw exactly what the producers got back as shed or evicted.
            let mut hooked = std::mem::take(&mut *hooked.lock().unwrap());
            let mut dropped: Vec<u32> = seen.shed.iter().chain(&seen.evicted).copied().collect();
            hooked.sort_unstable();
            dropped.sort_unstable();
            assert_eq!(hooked, dropped, "{run:?}");
            // Every value exactly once: processed, dropped by the policy, or refused as closed.
            let mut all: Vec<u32> = processed
                .iter()
                .chain(&dropped)
                .chain(&seen.closed)
                .copied()
                .collect();
            all.sort_unstable();
            let mut expected: Vec<u32> = (0..run.producers)
                .flat_map(|p| (0..run.per_producer).map(move |i| p * PER_PRODUCER_MAX + i))
                .collect();
            expected.sort_unstable();
            assert_eq!(all, expected, "{run:?}: a value was lost or duplicated");
        });
    }

    proptest! {
        #![proptest_config(config(24))]

        #[test]
        fn pipeline_runs_account_for_every_value(run in pipeline_run()) {
            check_pipeline(&run);
        }
    }
}
