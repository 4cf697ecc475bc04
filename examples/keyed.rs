//! Keyed lanes (`key_by`, `coalesce`): what coalescing saves when only a key's latest value
//! counts, and what keying costs when the work costs nothing.
//!
//! ```text
//! cargo run --release --all-features --example keyed                # 5 runs, ~1 minute
//! cargo run --release --all-features --example keyed -- --runs 3
//! ```
//!
//! Both parts run on two runtimes, one after the other in the same process, each on 2
//! threads: an `async_executor::Executor` (`ExecutorSpawner`) and a tokio multi-thread
//! runtime (`TokioSpawner`). One producer task pushes with `push().await`; every pipeline
//! is `Policy::Block`, capacity 1024, and is shut down with a drain long enough to finish.
//!
//! # 1. Coalescing
//!
//! 1,000,000 updates (`--updates`) over 1,000 keys (`--keys`), each key drawn at random
//! with a fixed seed (`--seed`), into a pipeline with `key_by(key).coalesce()` and 4
//! workers whose write is a 1 ms sleep on the runtime's timer (`--service-us`). Printed:
//! the updates, the units of work done (`Report::processed`), `Report::superseded`, their
//! ratio, the wall time from build to joined shutdown, and the work rate.
//!
//! On tokio the work rate is about half the nominal 4,000/s: tokio's timer has a 1 ms tick
//! and rounds a sleep up to the next one, so a 1 ms sleep takes about 2 ms (async-io's
//! timer overshoots by a few %). The updates/work ratio does not depend on it.
//!
//! The contrast is the same pipeline without `coalesce()` (keyed, so each key's writes stay
//! in order) for 4,000 updates only (`--plain-updates`): 1,000,000 would take minutes. Its
//! measured work rate gives the "without coalescing" time for all the updates, printed as
//! an extrapolation, not a measurement.
//!
//! Checked in every run: `Report::is_conserved()`; `processed + superseded == updates`;
//! `superseded` equals the pushes that returned `PushOutcome::Superseded`; each key's last
//! pushed value is the last value a worker wrote for it; and each key's writes came in push
//! order (values only grow).
//!
//! # 2. Keyed overhead
//!
//! 1,000,000 items (`--items`), work = add the item's id to a shared counter, 2 and 4
//! workers (`--workers`): unkeyed, keyed with every item its own key (`key_by(id)`, the
//! issue's target: ≥ 0.8× unkeyed), and keyed over 1,000 keys pushed round-robin
//! (`--repeat-keys`; for information: there a key's next item often waits for its previous
//! one). Items/s is over the whole run (build, pushes, drain, join). Checked in every run:
//! the law, `processed == items`, and the counter equals the sum of the ids (each id once).
//!
//! With `--runs N` (default 5) everything runs N times, the variants interleaved within each
//! run (in part 2 a shape's three variants back to back, their order rotated from run to
//! run), so a noisy neighbour hits them alike. The tables give the median over the runs (and
//! the min–max of the runs); a ratio is the median of the per-run ratios of variants
//! measured side by side.
//!
//! Options: `--runs N`, `--updates N`, `--plain-updates N`, `--keys N`, `--service-us N`,
//! `--seed N`, `--items N`, `--workers 2,4`, `--repeat-keys N`, `--only coalesce|overhead`.

// A crate root looks for its modules beside it, not in a directory named after it.
#[path = "keyed/coalesce.rs"]
mod coalesce;
#[path = "keyed/overhead.rs"]
mod overhead;
#[path = "keyed/runtime.rs"]
mod runtime;
#[path = "common/runtimes.rs"]
mod runtimes;
#[path = "keyed/table.rs"]
mod table;

use std::thread;
use std::time::{Duration, Instant};

use overhead::Keying;
use runtime::{Runtime, THREADS};
use table::{CoalesceRow, OverheadRow};

const CAPACITY: usize = 1024;
const COALESCE_WORKERS: usize = 4;
/// The issue's bar for keyed with all-distinct keys, as a share of unkeyed.
const TARGET: f64 = 0.8;

/// The command line, with its defaults.
#[derive(Debug, Clone)]
struct Args {
    runs: usize,
    updates: u64,
    plain_updates: u64,
    keys: u32,
    service: Duration,
    seed: u64,
    items: u64,
    workers: Vec<usize>,
    repeat_keys: u64,
    only: Option<String>,
}

impl Args {
    fn parse(args: &[String]) -> Args {
        let value = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let number = |flag: &str, default: u64| {
            value(flag).map_or(default, |v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{flag} takes a whole number"))
            })
        };
        let only = value("--only");
        assert!(
            only.as_deref()
                .is_none_or(|o| o == "coalesce" || o == "overhead"),
            "--only coalesce|overhead"
        );
        Args {
            runs: number("--runs", 5).max(1) as usize,
            updates: number("--updates", 1_000_000),
            plain_updates: number("--plain-updates", 4_000),
            keys: u32::try_from(number("--keys", 1_000).max(1)).expect("--keys fits in u32"),
            service: Duration::from_micros(number("--service-us", 1_000)),
            seed: number("--seed", 42),
            items: number("--items", 1_000_000),
            workers: value("--workers")
                .unwrap_or_else(|| "2,4".into())
                .split(',')
                .map(|v| v.parse().expect("--workers N,N"))
                .collect(),
            repeat_keys: number("--repeat-keys", 1_000).max(1),
            only,
        }
    }

    fn wants(&self, part: &str) -> bool {
        self.only.as_deref().is_none_or(|o| o == part)
    }

    fn coalesce_setup(&self, coalesce: bool) -> coalesce::Setup {
        coalesce::Setup {
            updates: if coalesce {
                self.updates
            } else {
                self.plain_updates
            },
            keys: self.keys,
            capacity: CAPACITY,
            workers: COALESCE_WORKERS,
            service: self.service,
            seed: self.seed,
            coalesce,
        }
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let args = Args::parse(&argv);
    let command = format!(
        "cargo run --release --all-features --example keyed{}",
        if argv.len() > 1 {
            format!(" -- {}", argv[1..].join(" "))
        } else {
            String::new()
        }
    );
    let nproc = thread::available_parallelism().map_or(0, |n| n.get());
    println!("command: {command}");
    println!(
        "machine: nproc {nproc}, {}; runtimes: async_executor::Executor on {THREADS} threads, \
         tokio multi-thread with {THREADS} workers; {} run(s), variants interleaved in each",
        cpu_model(),
        args.runs
    );

    let mut coalesce_rows: Vec<CoalesceRow> = Vec::new();
    let mut overhead_rows: Vec<OverheadRow> = Vec::new();
    if args.wants("coalesce") {
        for rt in Runtime::ALL {
            for coalesce in [true, false] {
                coalesce_rows.push(CoalesceRow::new(rt, args.coalesce_setup(coalesce)));
            }
        }
    }
    let keyings = [
        Keying::Unkeyed,
        Keying::Distinct,
        Keying::Repeating(args.repeat_keys),
    ];
    if args.wants("overhead") {
        for rt in Runtime::ALL {
            for &workers in &args.workers {
                for keying in keyings {
                    overhead_rows.push(OverheadRow::new(rt, workers, keying));
                }
            }
        }
    }

    let started = Instant::now();
    for r in 0..args.runs {
        let run_started = Instant::now();
        for row in &mut coalesce_rows {
            row.samples.push(coalesce::run(row.runtime, row.setup));
        }
        // A shape's variants side by side, their order rotated from run to run so that
        // none always goes first (right after another shape's drain).
        for shape in overhead_rows.chunks_mut(keyings.len()) {
            for j in 0..shape.len() {
                let row = &mut shape[(j + r) % keyings.len()];
                row.samples.push(overhead::run(
                    row.runtime,
                    row.keying,
                    row.workers,
                    CAPACITY,
                    args.items,
                ));
            }
        }
        println!(
            "run {} of {}: {:.1} s, every check held",
            r + 1,
            args.runs,
            run_started.elapsed().as_secs_f64()
        );
    }

    if !coalesce_rows.is_empty() {
        table::print_coalesce(
            &format!(
                "== 1. coalescing: updates over {} keys (random, seed {}), Block cap {CAPACITY}, \
                 {COALESCE_WORKERS} workers × {} µs timer sleep; median over {} run(s) (min–max) ==",
                args.keys,
                args.seed,
                args.service.as_micros(),
                args.runs
            ),
            &coalesce_rows,
            args.updates,
        );
    }
    if !overhead_rows.is_empty() {
        table::print_overhead(
            &format!(
                "== 2. keyed overhead: {} items, Block cap {CAPACITY}, 1 producer push().await, \
                 work = add id to a counter; median over {} run(s) (min–max); \
                 ratio = median of per-run ratios to unkeyed, target ≥ {TARGET:.2} for distinct keys ==",
                args.items, args.runs
            ),
            &overhead_rows,
            TARGET,
        );
    }
    println!(
        "\nchecks OK in every run: is_conserved(); coalescing: processed + superseded == updates, \
         superseded == Superseded outcomes, each key's last value written, in push order; \
         overhead: processed == items, sum of ids (each once)"
    );
    println!("total time {:.1} s", started.elapsed().as_secs_f64());
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
