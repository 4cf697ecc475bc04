//! Recovery after a stall (issue 12): how fast each way of treating old items gets the
//! workers back to useful work once a stall ends.
//!
//! ```text
//! cargo run --release --example stall                                # one run, ~20 s
//! cargo run --release --example stall -- --runs 3 --svg docs/stall.svg
//! ```
//!
//! # The scenario
//!
//! One producer pushes at twice what the workers can do, for the whole run (`--load 2`), with
//! `Policy::DropNewest`, so it never waits and a full queue sheds at the door (counted). 8
//! workers each take one item at a time and sleep 1 ms on `async-io`'s timer for it (the
//! machine has 2 cores: a timer is fair to the producer where a busy-spin would not be). The
//! run: 200 ms warm-up (the queue fills, CoDel settles), then the workers stop at a gate for
//! 500 ms (each holding the item it had taken), then resume; the producer goes on for 1.5 s
//! after the resume. Everything runs on one `async_executor::Executor` on 2 threads, on the
//! real clock.
//!
//! Four modes, each at capacity 256 and 4096 (`--caps`):
//! - FIFO: `measure_queue_delay()` only, so the delay is visible and nothing is shed at the
//!   exit.
//! - TTL: `max_age(90 ms)`: the deadline less 10 ms, so that an item taken just under the
//!   age limit still finishes (1 ms of work plus the timer's lateness) within its deadline.
//! - CoDel: `codel(Codel::new(5 ms, 100 ms))`, RFC 8289's defaults, kept because they fit this
//!   service time: a healthy queue here waits well under 1 ms (8 workers, 1 ms each), so a
//!   5 ms target (5 service times, 40 items) is "good queue" with room to spare, and the
//!   100 ms interval is the deadline, the time a client waits. `--codel 5,100` to change.
//! - CoDel+LIFO: the same, with `.lifo(true)`: the newest item first while CoDel is
//!   dropping.
//!
//! # The definitions
//!
//! - Capacity: the workers' measured throughput, items/s: before the runs, the same
//!   workers are kept busy (a full queue, no stall) and their completions counted over
//!   600 ms. The producer's rate is `--load` times this. (Timer sleeps overshoot: it comes
//!   out a few % under the nominal 8000/s, and a window after the resume can reach a little
//!   over 100%.)
//! - Goodput: items whose work finished within the deadline (`--deadline-ms`, 100 ms)
//!   of their push, counted per 10 ms window (`--window-ms`) after the resume, windows
//!   aligned on the resume.
//! - Recovery time: from the resume to the end of the first window whose goodput is at
//!   least 90% of capacity ("none" if no window in the 1.5 s reaches it). The resolution is
//!   one window, and the floor is 20 ms, not 10: in the first window nothing finishes for
//!   1 ms and then the workers finish the stale item each held through the stall, so it
//!   tops out near 80% of capacity.
//! - Queue delay: from the producer's stamp just before `try_push` to the start of the
//!   work (after the gate), from the example's own per-item stamps, which are exact where
//!   the pipeline's `Stats::queue_delay` histogram has log2 buckets (its whole-run p99 is
//!   printed beside, as a check). "p99 after resume" covers the items whose work started
//!   after the resume, the drain of the stale backlog included; "p99 after recovery" those
//!   that started after the recovered window began.
//! - Goodput after recovery: the mean goodput from the recovered window to the end, as a
//!   share of capacity (so a single lucky window shows up as a low number here).
//! - Expired: `Report::expired` (`max_age` or CoDel shed at the exit); shed: the door's
//!   `Report::dropped`; left at end: `Report::abandoned`, what was still queued (or in a
//!   worker's hands) when the producer stopped; oldest at end: `Stats::oldest_age` then.
//!
//! Every run asserts the conservation law on its report, `produced == processed + failed +
//! dropped + expired + abandoned + panicked`, and that the shed, expired and processed
//! counts match the producer's, the `on_expired` hook's and the workers' own counts; the
//! output says "law OK" once they all hold. The backlog left at the end is abandoned
//! (`deadline(0)`): it is not part of the measurement.
//!
//! With `--runs N` the whole set runs N times (modes interleaved within each run, so a noisy
//! neighbour hits them alike) and a final table gives the median over the runs of each
//! column ("none" counts as the longest recovery; the columns "after recovery" are the
//! median over the runs that recovered). `--svg PATH` writes a self-contained chart of the
//! final table: recovery time as grouped bars, and goodput over time after the resume.
//!
//! # What it showed (2 cores, AMD EPYC, `--runs 3`)
//!
//! - FIFO recovers in 50 ms at capacity 256 (its 256 stale items take 33 ms to serve, and
//!   the standing queue that follows, 33 ms, is inside the deadline) and never at 4096: a
//!   sustained 2× load keeps the queue full, so every item served has waited ~530 ms.
//! - Plain CoDel behaves as FIFO here. The door keeps the queue full, so each item CoDel
//!   drops at the head is replaced by an arrival, and the RFC control law (a drop every
//!   `interval / sqrt(count)`) shed 125 items in the whole run against an excess of
//!   ~7,700 items/s. CoDel shortens a queue whose producer slows down when items are
//!   dropped (TCP does); this producer does not. `--codel 2,20` sheds ~3,000 and still
//!   does not recover at 4096.
//! - TTL and CoDel+LIFO recover at the 20 ms floor at both capacities. TTL's queue
//!   delay stands at `max_age` (p99 90 ms at 4096); CoDel+LIFO serves the newest items (p99
//!   12–19 ms) but leaves the stale ones at the head: at the end the queue still holds
//!   items from the warm-up, 2.1 s old, never served, taking up the capacity.
//!
//! Options: `--runs N`, `--svg PATH`, `--caps 256,4096`, `--load 2`, `--deadline-ms 100`,
//! `--max-age-ms 90`, `--codel 5,100` (target, interval in ms), `--stall-ms 500`,
//! `--warmup-ms 200`, `--after-ms 1500`, `--window-ms 10`, `--workers 8`, `--service-us 1000`.

// A crate root looks for its modules beside it, not in a directory named after it.
#[path = "stall/chart.rs"]
mod chart;
#[path = "stall/metrics.rs"]
mod metrics;
#[path = "stall/scenario.rs"]
mod scenario;
#[path = "common/svg.rs"]
mod svg;

use std::thread;
use std::time::{Duration, Instant};

use metrics::{Numbers, Rules};
use scenario::{Mode, Setup, Trace, EXECUTOR_THREADS};

/// The share of capacity a window's goodput must reach to count as recovered.
const RECOVERED_AT: f64 = 0.9;

/// The command line, with its defaults.
#[derive(Debug, Clone)]
struct Args {
    runs: usize,
    svg: Option<String>,
    capacities: Vec<usize>,
    load: f64,
    deadline: Duration,
    max_age: Duration,
    codel: (Duration, Duration),
    stall: Duration,
    warmup: Duration,
    after: Duration,
    window: Duration,
    workers: usize,
    service: Duration,
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
        let ms = |flag: &str, default: u64| Duration::from_millis(number(flag, default));
        let codel: Vec<u64> = value("--codel")
            .unwrap_or_else(|| "5,100".into())
            .split(',')
            .map(|v| v.parse().expect("--codel TARGET_MS,INTERVAL_MS"))
            .collect();
        assert_eq!(codel.len(), 2, "--codel TARGET_MS,INTERVAL_MS");
        Args {
            runs: number("--runs", 1).max(1) as usize,
            svg: value("--svg"),
            capacities: value("--caps")
                .unwrap_or_else(|| "256,4096".into())
                .split(',')
                .map(|v| v.parse().expect("--caps N,N"))
                .collect(),
            load: value("--load").map_or(2.0, |v| v.parse().expect("--load X")),
            deadline: ms("--deadline-ms", 100),
            max_age: ms("--max-age-ms", 90),
            codel: (
                Duration::from_millis(codel[0]),
                Duration::from_millis(codel[1]),
            ),
            stall: ms("--stall-ms", 500),
            warmup: ms("--warmup-ms", 200),
            after: ms("--after-ms", 1500),
            window: ms("--window-ms", 10),
            workers: number("--workers", 8) as usize,
            service: Duration::from_micros(number("--service-us", 1000)),
        }
    }

    fn setup(&self, mode: Mode, capacity: usize, rate: f64) -> Setup {
        Setup {
            mode,
            capacity,
            workers: self.workers,
            service: self.service,
            rate,
            warmup: self.warmup,
            stall: self.stall,
            after: self.after,
            max_age: self.max_age,
            codel: self.codel,
        }
    }
}

/// The workers' throughput, items/s, while they never run out of work: a full queue (FIFO,
/// 4096), fed at 3× their nominal rate, no stall; completions counted from 200 ms to 800 ms.
fn measure_capacity(args: &Args) -> f64 {
    let nominal = args.workers as f64 / args.service.as_secs_f64();
    let trace = scenario::run(Setup {
        rate: 3.0 * nominal,
        warmup: Duration::ZERO,
        stall: Duration::ZERO,
        after: Duration::from_millis(850),
        ..args.setup(Mode::Fifo, 4096, nominal)
    });
    check_law(&trace, Mode::Fifo);
    let (from, to) = (Duration::from_millis(200), Duration::from_millis(800));
    let done = trace
        .served
        .iter()
        .filter(|s| s.finished >= trace.resume + from && s.finished < trace.resume + to)
        .count();
    done as f64 / (to - from).as_secs_f64()
}

/// The conservation law, and the report's counts against the example's own.
fn check_law(trace: &Trace, mode: Mode) {
    let r = &trace.report;
    assert_eq!(
        r.produced,
        r.processed + r.failed + r.dropped + r.expired + r.abandoned + r.panicked,
        "conservation law broken: {r:?}"
    );
    assert!(r.is_conserved(), "is_conserved() disagrees: {r:?}");
    assert!(r.all_joined(), "a worker was not joined: {r:?}");
    assert_eq!(
        r.dropped, trace.shed_seen,
        "shed at the door vs the producer's count"
    );
    assert_eq!(r.expired, trace.expired_seen, "expired vs on_expired calls");
    assert_eq!(
        r.processed,
        trace.served.len() as u64,
        "processed vs the workers' log"
    );
    if mode == Mode::Fifo {
        assert_eq!(
            r.expired, 0,
            "FIFO with measure_queue_delay() expired an item"
        );
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "none".into(),
        |d| format!("{:.1}", d.as_secs_f64() * 1e3),
    )
}

fn print_table(title: &str, rows: &[(Mode, usize, Numbers)]) {
    println!("\n{title}");
    let line = |cells: [&str; 11]| {
        println!(
            "{:<11} {:>5} {:>9} {:>13} {:>13} {:>9} {:>8} {:>7} {:>6} {:>9} {:>9}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5],
            cells[6],
            cells[7],
            cells[8],
            cells[9],
            cells[10]
        );
    };
    line([
        "",
        "",
        "recovery",
        "p99 delay ms",
        "p99 delay ms",
        "goodput",
        "",
        "",
        "left",
        "oldest",
        "lib. p99",
    ]);
    line([
        "mode",
        "cap",
        "ms",
        "after resume",
        "after recov.",
        "after r.",
        "expired",
        "shed",
        "at end",
        "at end ms",
        "whole ms",
    ]);
    for (mode, capacity, n) in rows {
        let goodput = n
            .goodput_after_recovery
            .map_or_else(|| "—".into(), |g| format!("{:.0}%", g * 100.0));
        line([
            &mode.to_string(),
            &capacity.to_string(),
            &ms(n.recovery),
            &ms(n.p99_after_resume),
            &ms(n.p99_after_recovery),
            &goodput,
            &n.expired.to_string(),
            &n.shed.to_string(),
            &n.left.to_string(),
            &ms(n.oldest_at_end),
            &ms(n.library_p99),
        ]);
    }
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

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let args = Args::parse(&argv);
    let command = format!(
        "cargo run --release --example stall{}",
        if argv.len() > 1 {
            format!(" -- {}", argv[1..].join(" "))
        } else {
            String::new()
        }
    );
    let started = Instant::now();
    let capacity_rate = measure_capacity(&args);
    let rate = args.load * capacity_rate;
    let nproc = thread::available_parallelism().map_or(0, |n| n.get());
    let header = format!(
        "machine: nproc {nproc}, {}; async_executor::Executor on {EXECUTOR_THREADS} threads — \
         {} workers × {} µs timer sleep: capacity {:.0} items/s measured ({:.0} nominal); \
         producer {:.1}× = {rate:.0} items/s, DropNewest — \
         warm-up {} ms, stall {} ms, {} ms after; deadline {} ms, max_age {} ms, CoDel {}/{} ms",
        cpu_model(),
        args.workers,
        args.service.as_micros(),
        capacity_rate,
        args.workers as f64 / args.service.as_secs_f64(),
        args.load,
        args.warmup.as_millis(),
        args.stall.as_millis(),
        args.after.as_millis(),
        args.deadline.as_millis(),
        args.max_age.as_millis(),
        args.codel.0.as_millis(),
        args.codel.1.as_millis(),
    );
    println!("command: {command}");
    for line in header.split(" — ") {
        println!("{line}");
    }
    println!(
        "recovery: end of the first {} ms window after the resume with goodput ≥ {:.0}% of capacity; \
         goodput: finished within {} ms of push",
        args.window.as_millis(),
        RECOVERED_AT * 100.0,
        args.deadline.as_millis()
    );
    let rules = Rules {
        deadline: args.deadline,
        window: args.window,
        windows: (args.after.as_nanos() / args.window.as_nanos()) as usize,
        capacity_rate,
        recovered_at: RECOVERED_AT,
    };

    let mut all: Vec<Vec<(Mode, usize, Numbers)>> = Vec::new();
    let mut checked = 0;
    for r in 0..args.runs {
        let mut rows = Vec::new();
        for &capacity in &args.capacities {
            for mode in Mode::ALL {
                let trace = scenario::run(args.setup(mode, capacity, rate));
                check_law(&trace, mode);
                checked += 1;
                rows.push((mode, capacity, metrics::measure(&trace, &rules)));
            }
        }
        print_table(&format!("== run {} of {} ==", r + 1, args.runs), &rows);
        all.push(rows);
    }
    let last = all.last().expect("at least one run").clone();
    let final_rows: Vec<(Mode, usize, Numbers)> = if args.runs > 1 {
        let combined: Vec<_> = last
            .iter()
            .enumerate()
            .map(|(i, (mode, capacity, _))| {
                let runs: Vec<Numbers> = all.iter().map(|rows| rows[i].2.clone()).collect();
                (*mode, *capacity, metrics::combine(&runs))
            })
            .collect();
        print_table(
            &format!("== final: median over {} runs ==", args.runs),
            &combined,
        );
        combined
    } else {
        last
    };
    println!(
        "\nlaw OK: produced == processed + failed + dropped + expired + abandoned + panicked, \
         and dropped / expired / processed match the producer, on_expired and the workers' log, \
         in all {checked} runs (and the capacity run)"
    );
    println!("total time {:.1} s", started.elapsed().as_secs_f64());
    if let Some(path) = args.svg {
        if let Some(dir) = std::path::Path::new(&path).parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let chart = chart::svg(
            &final_rows,
            &args.capacities,
            &rules,
            &format!("{command} — {header}"),
        );
        std::fs::write(&path, chart).expect("write the SVG");
        println!("wrote {path}");
    }
}
