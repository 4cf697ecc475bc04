//! S4, single thread, uncontended, in ns per pair: S4a, one push without waiting plus one
//! pop polled once with a no-op waker; S4b, the waiting push (`push().await`, `send().await`)
//! polled once, plus the pop. The queue never fills, so every poll is ready.

use std::collections::VecDeque;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use backpressure_pipeline::Policy;

use crate::bench_queue::BenchQueue;
use crate::peer_channel::PeerChannel;

const PAIRS: u64 = 2_000_000;

/// Polls `fut` once with a no-op waker; it must be ready (an item is there, or room).
fn poll_ready<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => {
            panic!("an uncontended pop with an item present (or push with room) must be ready")
        }
    }
}

fn time_pairs(mut pair: impl FnMut(u64)) -> f64 {
    let start = Instant::now();
    for i in 0..PAIRS {
        pair(i);
    }
    start.elapsed().as_nanos() as f64 / PAIRS as f64
}

pub(crate) fn s4_queue<Q: BenchQueue>() -> f64 {
    let queue = Q::make(1024, Policy::Block);
    time_pairs(|i| {
        let _ = black_box(queue.try_push(i));
        black_box(poll_ready(queue.pop()));
    })
}

/// A peer's pair: `try_send`, then `recv` polled once (all four are MPMC channels).
/// S4b: `push().await` polled once, then `pop`.
pub(crate) fn s4b_queue<Q: BenchQueue>() -> f64 {
    let queue = Q::make(1024, Policy::Block);
    time_pairs(|i| {
        let _ = black_box(poll_ready(queue.push(i)));
        black_box(poll_ready(queue.pop()));
    })
}

/// S4b for a peer: `send().await` polled once, then `recv`.
pub(crate) fn s4b_channel<P: PeerChannel>() -> f64 {
    let (tx, rx) = P::bounded(1024);
    time_pairs(|i| {
        black_box(poll_ready(P::send(&tx, i)));
        black_box(poll_ready(P::recv(&rx)));
    })
}

/// S4b for tokio mpsc: `send().await` polled once, then `recv`.
pub(crate) fn s4b_tokio() -> f64 {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(1024);
    time_pairs(|i| {
        let _ = black_box(poll_ready(tx.send(i)));
        black_box(poll_ready(rx.recv()));
    })
}

pub(crate) fn s4_channel<P: PeerChannel>() -> f64 {
    let (tx, rx) = P::bounded(1024);
    time_pairs(|i| {
        black_box(P::try_send(&tx, i));
        black_box(poll_ready(P::recv(&rx)));
    })
}

pub(crate) fn s4_tokio() -> f64 {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(1024);
    time_pairs(|i| {
        let _ = black_box(tx.try_send(i));
        black_box(poll_ready(rx.recv()));
    })
}

pub(crate) fn s4_vecdeque() -> f64 {
    let mut deque = VecDeque::with_capacity(1024);
    time_pairs(|i| {
        deque.push_back(black_box(i));
        black_box(deque.pop_front());
    })
}
