//! The idea in one run: what each policy keeps, then an overload burst into a small buffer
//! with slow workers, checking the conservation law and that every worker was joined.
//!
//! `cargo run --example demo`

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backpressure_pipeline::{Pipeline, Policy, PushOutcome, Queue, Report, SmolSpawner};

const BURST: u64 = 4000;
const BUFFER: usize = 16;
const WORKERS: usize = 4;
const WORK: Duration = Duration::from_millis(1);

fn main() -> ExitCode {
    smol::block_on(async {
        illustrate().await;
        stress().await
    })
}

/// Buffer 4, push ids 0..8, then drain: what each policy keeps.
async fn illustrate() {
    println!("== policy illustration: buffer=4, push ids 0..8, then drain ==");
    for (policy, note) in [
        (
            Policy::DropNewest,
            "newest arrivals shed; backlog order preserved",
        ),
        (Policy::DropOldest, "oldest shed; always the freshest state"),
    ] {
        let queue = Queue::new(4, policy).expect("4 is a valid capacity");
        for id in 0..8 {
            // The shed or evicted id comes back; here we only look at what stays.
            let _ = queue.push(id).await;
        }
        queue.close();
        let mut kept = Vec::new();
        while let Some(id) = queue.pop().await {
            kept.push(id);
        }
        println!("  {:<10} keeps {kept:?}  ({note})", format!("{policy:?}"));
    }
    // Block never sheds: with nobody draining, the fifth push would wait, so try_push says Full.
    let queue = Queue::new(4, Policy::Block).expect("4 is a valid capacity");
    let full: Vec<u32> = (0..8)
        .filter_map(|id| match queue.try_push(id) {
            PushOutcome::Full(id) => Some(id),
            _ => None,
        })
        .collect();
    println!("  Block      holds {} and try_push reports Full for {full:?}  (push would wait: back-pressure)", queue.len());
    println!();
}

/// A 4000-item burst into buffer 16 with 4 slow workers, once per policy.
async fn stress() -> ExitCode {
    println!("== overload stress: {BURST}-item burst, buffer={BUFFER}, {WORKERS} slow workers ({WORK:?} per item) ==");
    println!(
        "{:<12}{:>9}{:>11}{:>9}{:>11}{:>10}{:>8}{:>9}",
        "policy", "produced", "processed", "dropped", "abandoned", "panicked", "joined", "aborted"
    );
    let mut ok = true;
    for policy in [Policy::DropNewest, Policy::DropOldest, Policy::Block] {
        let (report, seen) = burst(policy).await;
        println!(
            "{:<12}{:>9}{:>11}{:>9}{:>11}{:>10}{:>8}{:>9}",
            format!("{policy:?}"),
            report.produced,
            report.processed,
            report.dropped,
            report.abandoned,
            report.panicked,
            report.workers_joined,
            report.workers_aborted
        );
        // The report is checked against what the producer and the workers saw themselves.
        let agrees = report.produced == seen.pushed
            && report.dropped == seen.dropped
            && report.processed == seen.processed;
        if !report.is_conserved() || !report.all_joined() || !agrees {
            eprintln!("  FAILED for {policy:?}: {report}; the producer and workers saw {seen:?}");
            ok = false;
        }
    }
    if ok {
        println!(
            "conservation held for every policy; every worker joined; no tasks leaked. demo OK."
        );
        ExitCode::SUCCESS
    } else {
        eprintln!("demo FAILED");
        ExitCode::FAILURE
    }
}

/// Counts taken by the producer and the workers, independent of the report.
#[derive(Debug, Default)]
struct Seen {
    pushed: u64,
    dropped: u64,
    processed: u64,
}

async fn burst(policy: Policy) -> (Report, Seen) {
    let processed = Arc::new(AtomicU64::new(0));
    let pipeline = Pipeline::builder(BUFFER, policy)
        .workers(WORKERS)
        .deadline(Duration::from_secs(10))
        .spawn(SmolSpawner::new(), {
            let processed = processed.clone();
            move |_id: u64| {
                let processed = processed.clone();
                async move {
                    smol::Timer::after(WORK).await;
                    processed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .expect("the configuration is valid");
    let mut seen = Seen::default();
    for id in 0..BURST {
        match pipeline.push(id).await {
            PushOutcome::Accepted => seen.pushed += 1,
            PushOutcome::Shed(_) | PushOutcome::Evicted(_) => {
                seen.pushed += 1;
                seen.dropped += 1;
            }
            // (Superseded only comes from a coalescing pipeline; this one is not keyed.)
            PushOutcome::Full(_) | PushOutcome::Closed(_) | PushOutcome::Superseded(_) => {}
        }
    }
    let report = pipeline.shutdown().await;
    seen.processed = processed.load(Ordering::Relaxed);
    (report, seen)
}
