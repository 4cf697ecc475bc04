//! SD: the time `shutdown()` takes with a full backlog of fast work (vs a hand-written pool's
//! close and join), and with workers stuck in `pending()`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backpressure_pipeline::{Pipeline, Policy};

use crate::runtime::{run, spawn, spawner, work};

const SD_CAPACITY: usize = 1024;
pub(crate) const SD_DEADLINE: Duration = Duration::from_millis(50);
pub(crate) const SD_GRACE: Duration = Duration::from_millis(10);

/// Shutdown of a pipeline whose queue is full (1024) of ~1 µs work, 4 workers: ms from
/// `shutdown()` to the report. The workers are held at a gate until shutdown begins.
pub(crate) fn sd_backlog_pipeline() -> f64 {
    let elapsed = run(async {
        let gate = Arc::new(async_lock::OnceCell::<()>::new());
        let worker_gate = gate.clone();
        let pipeline = Pipeline::builder(SD_CAPACITY, Policy::Block)
            .workers(4)
            .deadline(Duration::from_secs(30))
            .spawn(spawner(), move |item: u64| {
                let gate = worker_gate.clone();
                async move {
                    gate.wait().await;
                    work();
                    black_box(item);
                }
            })
            .expect("valid pipeline");
        let mut i = 0;
        // Fill until Full: each worker holds one item at the gate, the queue holds 1024.
        while pipeline.try_push(i).is_accepted() {
            i += 1;
        }
        // The clock starts before the gate opens: opening it may deschedule this task
        // while the workers drain, and that time belongs to the measurement.
        let start = Instant::now();
        gate.set(()).await.expect("the gate opens once");
        let report = pipeline.shutdown().await;
        let elapsed = start.elapsed();
        assert_eq!(report.processed, i);
        assert!(!report.deadline_exceeded);
        elapsed
    });
    elapsed.as_secs_f64() * 1e3
}

/// The same backlog in 4 hand-written tasks over a bounded async-channel: close, join.
pub(crate) fn sd_backlog_pool() -> f64 {
    let elapsed = run(async {
        let gate = Arc::new(async_lock::OnceCell::<()>::new());
        let (tx, rx) = async_channel::bounded::<u64>(SD_CAPACITY);
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let (rx, gate) = (rx.clone(), gate.clone());
                spawn(async move {
                    let mut n = 0u64;
                    while let Ok(item) = rx.recv().await {
                        gate.wait().await;
                        work();
                        black_box(item);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut i = 0;
        while tx.try_send(i).is_ok() {
            i += 1;
        }
        // The clock starts before the gate opens: opening it may deschedule this task
        // while the workers drain, and that time belongs to the measurement.
        let start = Instant::now();
        gate.set(()).await.expect("the gate opens once");
        drop(tx);
        let mut n = 0;
        for task in tasks {
            n += task.await;
        }
        let elapsed = start.elapsed();
        assert_eq!(n, i);
        elapsed
    });
    elapsed.as_secs_f64() * 1e3
}

/// Shutdown with 4 workers stuck in `pending()` (deadline 50 ms, grace 10 ms): ms.
pub(crate) fn sd_stuck() -> f64 {
    let elapsed = run(async {
        let pipeline = Pipeline::builder(SD_CAPACITY, Policy::Block)
            .workers(4)
            .deadline(SD_DEADLINE)
            .grace(SD_GRACE)
            .spawn(spawner(), |_: u64| std::future::pending::<()>())
            .expect("valid pipeline");
        for i in 0..8 {
            assert!(pipeline.push(i).await.is_accepted());
        }
        // Let the workers take their items and get stuck.
        while pipeline.len() > 4 {
            async_io::Timer::after(Duration::from_millis(1)).await;
        }
        let start = Instant::now();
        let report = pipeline.shutdown().await;
        let elapsed = start.elapsed();
        assert!(report.is_conserved() && report.all_joined());
        assert_eq!(report.workers_aborted, 4);
        elapsed
    });
    elapsed.as_secs_f64() * 1e3
}
