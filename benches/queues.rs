//! Side-by-side micro-benchmarks (divan): the crate's `Queue` and async-channel.
//!
//! `cargo bench --bench queues`. The full comparison (more shapes, flume, tokio mpsc, memory,
//! shutdown, ratios) is `cargo run --release --example compare`; see BENCHMARKS.md.
//!
//! - `s1_handoff`: `Policy::Block`, 1 producer → 4 consumer tasks, capacity 1024, on an
//!   `async_executor::Executor` run on 2 threads; one iteration moves `S1_ITEMS` items.
//! - `s3_drop_newest`: `Policy::DropNewest` into capacity 16 with 4 consumers at ~1 µs per
//!   item; the producer's push rate (`push().await` vs async-channel's `try_send`).
//! - `s4_pair`: one thread, uncontended: push without waiting + pop polled once.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::thread;

use async_executor::Executor;
use backpressure_pipeline::{Policy, Queue};
use divan::counter::ItemsCount;
use divan::Bencher;

fn main() {
    divan::main();
}

const S1_ITEMS: u64 = 20_000;
const S3_ITEMS: u64 = 200_000;

fn ex() -> &'static Arc<Executor<'static>> {
    static EX: OnceLock<Arc<Executor<'static>>> = OnceLock::new();
    EX.get_or_init(|| {
        let ex = Arc::new(Executor::new());
        for _ in 0..2 {
            let ex = ex.clone();
            thread::spawn(move || smol::block_on(ex.run(std::future::pending::<()>())));
        }
        ex
    })
}

fn run<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> T {
    smol::block_on(ex().spawn(fut))
}

/// About 1 µs of busy work on the machine this was written on (no calibration here: the
/// same work for both sides is what matters).
fn work() {
    let mut x = black_box(0x9E37_79B9_7F4A_7C15_u64);
    for _ in 0..black_box(700) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    black_box(x);
}

#[divan::bench_group(sample_count = 30)]
mod s1_handoff {
    use super::*;

    #[divan::bench]
    fn queue(bencher: Bencher<'_, '_>) {
        bencher.counter(ItemsCount::new(S1_ITEMS)).bench_local(|| {
            let queue = Arc::new(Queue::new(1024, Policy::Block).unwrap());
            run(async move {
                let tasks: Vec<_> = (0..4)
                    .map(|_| {
                        let queue = queue.clone();
                        ex().spawn(async move {
                            while let Some(item) = queue.pop().await {
                                black_box(item);
                            }
                        })
                    })
                    .collect();
                for i in 0..S1_ITEMS {
                    let _ = queue.push(i).await;
                }
                queue.close();
                for task in tasks {
                    task.await;
                }
            })
        });
    }

    #[divan::bench]
    fn async_channel(bencher: Bencher<'_, '_>) {
        bencher.counter(ItemsCount::new(S1_ITEMS)).bench_local(|| {
            let (tx, rx) = async_channel::bounded::<u64>(1024);
            run(async move {
                let tasks: Vec<_> = (0..4)
                    .map(|_| {
                        let rx = rx.clone();
                        ex().spawn(async move {
                            while let Ok(item) = rx.recv().await {
                                black_box(item);
                            }
                        })
                    })
                    .collect();
                drop(rx);
                for i in 0..S1_ITEMS {
                    tx.send(i).await.unwrap();
                }
                drop(tx);
                for task in tasks {
                    task.await;
                }
            })
        });
    }
}

#[divan::bench_group(sample_count = 30)]
mod s3_drop_newest {
    use super::*;

    #[divan::bench]
    fn queue(bencher: Bencher<'_, '_>) {
        bencher.counter(ItemsCount::new(S3_ITEMS)).bench_local(|| {
            let queue = Arc::new(Queue::new(16, Policy::DropNewest).unwrap());
            run(async move {
                let tasks: Vec<_> = (0..4)
                    .map(|_| {
                        let queue = queue.clone();
                        ex().spawn(async move {
                            while let Some(item) = queue.pop().await {
                                work();
                                black_box(item);
                            }
                        })
                    })
                    .collect();
                for i in 0..S3_ITEMS {
                    black_box(queue.push(i).await.into_inner());
                }
                queue.close();
                for task in tasks {
                    task.await;
                }
            })
        });
    }

    #[divan::bench]
    fn async_channel(bencher: Bencher<'_, '_>) {
        bencher.counter(ItemsCount::new(S3_ITEMS)).bench_local(|| {
            let (tx, rx) = async_channel::bounded::<u64>(16);
            run(async move {
                let tasks: Vec<_> = (0..4)
                    .map(|_| {
                        let rx = rx.clone();
                        ex().spawn(async move {
                            while let Ok(item) = rx.recv().await {
                                work();
                                black_box(item);
                            }
                        })
                    })
                    .collect();
                drop(rx);
                for i in 0..S3_ITEMS {
                    black_box(tx.try_send(i).err().map(|err| err.into_inner()));
                }
                drop(tx);
                for task in tasks {
                    task.await;
                }
            })
        });
    }
}

/// Polls `fut` once with a no-op waker; it must be ready.
fn poll_ready<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("an item is present, the pop must be ready"),
    }
}

mod s4_pair {
    use super::*;

    #[divan::bench]
    fn queue(bencher: Bencher<'_, '_>) {
        let queue = Queue::new(1024, Policy::Block).unwrap();
        bencher.bench_local(|| {
            let _ = black_box(queue.try_push(black_box(1u64)));
            black_box(poll_ready(queue.pop()))
        });
    }

    #[divan::bench]
    fn async_channel(bencher: Bencher<'_, '_>) {
        let (tx, rx) = async_channel::bounded::<u64>(1024);
        bencher.bench_local(|| {
            let _ = black_box(tx.try_send(black_box(1)));
            black_box(poll_ready(rx.recv()))
        });
    }
}
