//! Side-by-side comparison of the crate's queue and pipeline with async-channel, flume, kanal,
//! crossfire, tokio mpsc and a plain `VecDeque`: throughput, pair cost, peak memory and
//! shutdown time.
//!
//! ```text
//! cargo run --release --example compare                       # one run, < 2 minutes
//! cargo run --release --example compare -- --runs 3 --svg docs/bench.svg
//! cargo run --release --example compare -- --only S1,S4 --reps 7
//! ```
//!
//! Every number is the median of `--reps` repetitions (default 5); the variants of a shape
//! are interleaved within each repetition, so a noisy neighbour hits them alike, and each
//! ratio compares medians taken in the same process run. With `--runs N` the whole suite runs
//! N times and a final table gives the median over the runs of each run's median and ratio.
//! Each row that is not a peer's also gives its ratio against the fastest peer of its shape
//! in the same run (the peers: async-channel, flume, kanal, crossfire, tokio mpsc and the
//! hand-written pools; in the final table, the median of those ratios, named by the peer that
//! was fastest in most runs).
//!
//! Options: `--runtime executor|tokio|both` (default `executor`; `both` runs the whole
//! suite on each, one after the other, with a final table for each), `--runs N`, `--reps N`,
//! `--only S1,S2,S3,S4,S5,S5T,S5B,S6,MEM,SD`, `--svg PATH`
//! (writes the chart from the final table), `--work-iters N` (fixes the ~1 µs busy work
//! instead of calibrating it; for profilers, which slow the calibration down too),
//! `--shape TEXT` and `--variant TEXT` (measure only the shapes / variants whose label
//! contains TEXT, to profile one case:
//! `--only S1 --shape "cap 1024, 1→4" --variant "Queue (parking"`).
//!
//! The shapes (on one `async_executor::Executor` run by 2 threads, or a tokio multi-thread
//! runtime with 2 workers; S4 runs on the calling thread, without either):
//! - S1 back-pressure hand-off: `Policy::Block`, `push().await` / `pop().await`, 1 producer →
//!   1, 4, 16 consumer tasks, capacity 16 and 1024, vs a bounded async-channel; flume, kanal
//!   and crossfire in the same shape, each also against async-channel.
//! - S2 overload, `DropOldest` into capacity 16, 4 consumers at ~1 µs/item: the producer's
//!   push rate, vs async-channel's `force_send`.
//! - S3 the same with `DropNewest`, vs async-channel's `try_send`; and "S3 peers", the
//!   `try_send` of flume, kanal and crossfire (4 consumers) vs tokio mpsc's (1 consumer).
//! - S4 single thread, uncontended: S4a, push without waiting + pop polled once with a no-op
//!   waker; S4b, `push().await` polled once + the pop; vs async-channel; flume, kanal,
//!   crossfire, tokio mpsc (and, in S4a, a `VecDeque`) beside it.
//! - S5 the whole `Pipeline` (Block, capacity 1024, 4 workers, ~1 µs/item, N items then
//!   shutdown) vs 4 hand-written tasks reading a bounded async-channel, joined at the end.
//! - S5T the same pipeline with a time-based feature (`measure_queue_delay`, `max_age`,
//!   `codel` with LIFO), set so that nothing is shed: the cost of the clock reads, the stamps
//!   and the delay histogram, vs the pipeline without one.
//! - S5B the same with batch workers (`spawn_batched`, batches of 1, 16 and 64, `max_wait`
//!   1 ms), vs the same hand-written pool; and S5L, an item's latency from its push to the
//!   start of its batch's work (p50, p99) at a steady 100k items/s, which the workers keep
//!   up with: the bound to check is `max_wait` + the batch's service time.
//! - S6 many to many: `Policy::Block`, capacity 1024, 4 producer tasks → 4 consumer tasks,
//!   1M items, vs async-channel, flume, kanal and crossfire; each variant asserts that every
//!   item arrived exactly once (count, sum and sum of squares of the ids).
//! - MEM peak RSS (`VmHWM`) of a burst into a pipeline (DropOldest, capacity 1024, slow
//!   workers) vs an unbounded async-channel; each measured in a child process.
//! - SD shutdown: a full backlog of fast work, and workers stuck in `pending()`.
//!
//! The peers are bounded async MPMC channels behind [`peer_channel::PeerChannel`]:
//! `async_channel::bounded`, `flume::bounded` (`send_async` / `recv_async`),
//! `kanal::bounded_async` and `crossfire::mpmc::bounded_async`, each at its default settings.
//!
//! "async-lock Mutex copy" rows measure [`async_lock_copy::AsyncLockQueue`], a copy of the
//! semaphore queue with `async_lock::Mutex` in place of its `std::sync::Mutex` (the design's
//! first choice, given up because a synchronous `try_push` blocking on it from a task
//! deadlocked a runtime thread), kept here for comparison only.
//!
//! "semaphore copy" rows measure [`semaphore_copy::SemaphoreQueue`], a copy of the crate's
//! queue as it was at commit 219b89b: an `async_lock::Semaphore` whose permits count the items,
//! over a `std::sync::Mutex<VecDeque<T>>` (the design's second choice, replaced by waiter lists
//! kept under the buffer lock because the semaphore's `notify` is not additional, so an idle
//! woken popper swallowed later wake-ups and needed `chain_wake`, and because it notified on
//! every push), kept here for comparison only.

// A crate root looks for its modules beside it, not in a directory named after it.
#[path = "compare/async_lock_copy.rs"]
mod async_lock_copy;
#[path = "compare/bench_queue.rs"]
mod bench_queue;
#[path = "compare/chart.rs"]
mod chart;
#[path = "compare/peer_channel.rs"]
mod peer_channel;
#[path = "compare/report.rs"]
mod report;
#[path = "compare/runtime.rs"]
mod runtime;
#[path = "common/runtimes.rs"]
mod runtimes;
#[path = "compare/semaphore_copy.rs"]
mod semaphore_copy;
#[path = "compare/shapes.rs"]
mod shapes;
#[path = "compare/suite.rs"]
mod suite;
#[path = "common/svg.rs"]
mod svg;

use std::thread;
use std::time::Instant;

use chart::svg;
use report::{combine, print_table, summarize};
use runtime::{calibrate, cpu_model, set_runtime, Runtime, WORK_ITERS};
use shapes::child_mem;
use suite::Suite;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if let Some(iters) = value("--work-iters") {
        WORK_ITERS
            .set(iters.parse().expect("--work-iters N"))
            .expect("set once");
    }
    if let Some(kind) = value("--child-mem") {
        let n = args
            .iter()
            .position(|a| a == "--child-mem")
            .and_then(|i| args.get(i + 2))
            .and_then(|n| n.parse().ok())
            .expect("--child-mem KIND N");
        if WORK_ITERS.get().is_none() {
            let _ = WORK_ITERS.set(1);
        }
        if let Some(rt) = value("--runtime").as_deref().and_then(Runtime::parse) {
            set_runtime(rt);
        }
        child_mem(&kind, n);
        return;
    }
    let runs: usize = value("--runs").map_or(1, |n| n.parse().expect("--runs N"));
    let reps: usize = value("--reps").map_or(5, |n| n.parse().expect("--reps N"));
    let only = value("--only").map(|s| s.split(',').map(str::to_string).collect());
    let svg_path = value("--svg");
    let runtimes = match value("--runtime").as_deref() {
        None | Some("executor") => vec![Runtime::Executor],
        Some("tokio") => vec![Runtime::Tokio],
        Some("both") => vec![Runtime::Executor, Runtime::Tokio],
        Some(other) => panic!("--runtime executor|tokio|both, not {other:?}"),
    };
    if WORK_ITERS.get().is_none() {
        let _ = WORK_ITERS.set(calibrate());
    }

    let nproc = thread::available_parallelism().map_or(0, |n| n.get());
    let command = format!(
        "cargo run --release --example compare{}",
        if args.len() > 1 {
            format!(" -- {}", args[1..].join(" "))
        } else {
            String::new()
        }
    );
    let machine = format!(
        "machine: nproc {nproc}, {}; ~1µs work = {} spin iterations",
        cpu_model(),
        WORK_ITERS.get().expect("set")
    );
    println!("command: {command}");
    println!("{machine}");
    println!("{runs} run(s) × {reps} repetitions per row; variants interleaved within each repetition; ratio = this / base, medians of the same run");
    println!("\"async-lock Mutex copy\" = the semaphore copy below with async_lock::Mutex in place of its std::sync::Mutex (the design's first choice), in this example only");
    println!("\"semaphore copy\" = the crate's Queue at 219b89b: an async_lock::Semaphore counting the items over a std::sync::Mutex (replaced by waiter lists under the buffer lock), in this example only");

    let started = Instant::now();
    let mut chart = None;
    for &rt in &runtimes {
        set_runtime(rt);
        let header = format!("{machine}; runtime: {}", rt.describe());
        println!("\n######## runtime: {} ########", rt.describe());
        let final_table = run_suite(runs, reps, &only, &value, rt);
        chart.get_or_insert((final_table, header));
    }
    println!("\ntotal time {:.1} s", started.elapsed().as_secs_f64());
    if let (Some(path), Some((final_table, header))) = (svg_path, chart) {
        if let Some(dir) = std::path::Path::new(&path).parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::write(&path, svg(&final_table, &format!("{command} — {header}")))
            .expect("write the SVG");
        println!("wrote {path}");
    }
}

/// `runs` runs of the suite on the current runtime, each printed; the final table.
fn run_suite(
    runs: usize,
    reps: usize,
    only: &Option<Vec<String>>,
    value: &dyn Fn(&str) -> Option<String>,
    rt: Runtime,
) -> Vec<report::Summary> {
    let mut all = Vec::new();
    for r in 0..runs {
        let mut suite = Suite {
            reps,
            only: only.clone(),
            shape_filter: value("--shape"),
            variant_filter: value("--variant"),
            rows: Vec::new(),
        };
        suite.run_all();
        let summaries = summarize(&suite.rows);
        print_table(
            &format!(
                "== {}: run {} of {runs} (median of {reps}) ==",
                rt.name(),
                r + 1
            ),
            &summaries,
            "min–max",
        );
        all.push(summaries);
    }
    if runs > 1 {
        let combined = combine(&all);
        print_table(
            &format!("== {}: final: median over {runs} runs of each run's median (spread: min–max of the run medians); ratio: median of the runs' ratios ==", rt.name()),
            &combined,
            "run medians",
        );
        combined
    } else {
        all.pop().expect("one run")
    }
}
