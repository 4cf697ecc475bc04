//! MEM: peak RSS (`VmHWM`) of a burst into a pipeline (DropOldest, capacity 1024, slow
//! workers) vs an unbounded async-channel, each measured in a child process (this binary
//! run again with `--child-mem KIND N`).

use std::hint::black_box;
use std::process::Command;
use std::time::Duration;

use backpressure_pipeline::{Pipeline, Policy};

use crate::runtime::{proc_status_kib, run, runtime, spawn, spawner, WORK_ITERS};

pub(crate) const MEM_BURSTS: [u64; 3] = [1_000_000, 3_000_000, 10_000_000];
const MEM_CAPACITY: usize = 1024;
const SLOW_WORK: Duration = Duration::from_millis(1);

/// In a child process: push a burst of `n` items with slow workers, print peak RSS in KiB.
pub(crate) fn child_mem(kind: &str, n: u64) {
    let before = proc_status_kib("VmRSS:");
    match kind {
        "pipeline" => {
            let report = run(async move {
                let pipeline = Pipeline::builder(MEM_CAPACITY, Policy::DropOldest)
                    .workers(4)
                    .deadline(Duration::ZERO)
                    .grace(Duration::ZERO)
                    .spawn(spawner(), |item: u64| async move {
                        async_io::Timer::after(SLOW_WORK).await;
                        black_box(item);
                    })
                    .expect("valid pipeline");
                for i in 0..n {
                    black_box(pipeline.push(i).await.into_inner());
                }
                pipeline.shutdown().await
            });
            assert!(report.is_conserved());
            assert_eq!(report.produced, n);
        }
        "channel" => {
            run(async move {
                let (tx, rx) = async_channel::unbounded::<u64>();
                for _ in 0..4 {
                    let rx = rx.clone();
                    spawn(async move {
                        while let Ok(item) = rx.recv().await {
                            async_io::Timer::after(SLOW_WORK).await;
                            black_box(item);
                        }
                    })
                    .detach();
                }
                for i in 0..n {
                    tx.try_send(i).expect("unbounded and open");
                }
                // The backlog is all there now; the process exits without draining it.
                black_box(tx.len());
            });
        }
        other => panic!("unknown memory child {other:?}"),
    }
    println!("{} {}", proc_status_kib("VmHWM:"), before);
    std::process::exit(0);
}

/// Re-executes this binary as a memory child; returns peak RSS in MiB.
pub(crate) fn mem_in_child(kind: &str, n: u64) -> f64 {
    let exe = std::env::current_exe().expect("own path");
    let mut command = Command::new(exe);
    command.args(["--child-mem", kind, &n.to_string()]);
    command.args(["--runtime", runtime().name()]);
    if let Some(iters) = WORK_ITERS.get() {
        command.args(["--work-iters", &iters.to_string()]);
    }
    let output = command.output().expect("run the memory child");
    assert!(output.status.success(), "memory child failed: {output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let hwm_kib: f64 = stdout
        .split_whitespace()
        .next()
        .and_then(|kib| kib.parse().ok())
        .expect("the child prints VmHWM");
    hwm_kib / 1024.0
}
