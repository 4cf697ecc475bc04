//! Three worker processes on one durable consumer over 100 000 messages; one is killed with
//! `SIGKILL` mid-run. Every message is processed at least once, none is lost, and the
//! duplicates stay within what the killed process held (its queue, its workers, one in
//! hand).
//!
//! The worker processes are this test binary again, running the ignored test
//! `worker_process` with its settings in the environment. Each writes the id of every
//! message it processed to a file of its own, one `write` per id, before the ack: what a
//! process did survives its death.

mod common;

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::Message;
use backpressure_pipeline::{Pipeline, Policy, TokioSpawner};
use backpressure_pipeline_nats::JetStreamSource;
use common::{consumer, id, publish, stream, until, Server};

const MESSAGES: u64 = 100_000;
const PROCESSES: usize = 3;
const CAPACITY: usize = 256;
const WORKERS: usize = 4;
/// What one process may hold unacked: its queue, its workers' messages, one in hand.
const IN_FLIGHT: u64 = (CAPACITY + WORKERS + 1) as u64;
const STREAM: &str = "KILL";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_loses_nothing() {
    let server = Server::start().await;
    let js = server.jetstream().await;
    let s = stream(&js, STREAM).await;
    let started = Instant::now();
    publish(&js, MESSAGES, |i| format!("{STREAM}.k{}", i % 64)).await;
    let published = started.elapsed();
    // Redelivery of the killed process's messages after 5 s.
    let mut c = consumer(&s, "workers", Duration::from_secs(5)).await;
    let dir = std::env::temp_dir().join(format!("bp-nats-kill-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut children: Vec<Child> = (0..PROCESSES)
        .map(|i| {
            Command::new(&exe)
                .args(["--ignored", "--exact", "worker_process", "--nocapture"])
                .env("BP_NATS_WORKER_URL", &server.url)
                .env("BP_NATS_WORKER_OUT", dir.join(format!("{i}.ids")))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // Kill process 0 once it has processed 5 000 messages (a twentieth of the run).
    let victim = dir.join("0.ids");
    until(
        Duration::from_secs(120),
        "process 0 to process 5 000",
        || {
            let victim = victim.clone();
            async move { lines(&victim) >= 5_000 }
        },
    )
    .await;
    let victim_rss = peak_rss_kb(children[0].id());
    children[0].kill().unwrap(); // SIGKILL
    children[0].wait().unwrap();
    let killed_at = lines(&victim);
    // The survivors finish the stream, with the victim's unacked messages redelivered.
    until(Duration::from_secs(300), "every message acked", || {
        let mut c = c.clone();
        async move {
            let info = c.info().await.unwrap();
            info.num_pending == 0 && info.num_ack_pending == 0
        }
    })
    .await;
    let elapsed = started.elapsed();
    // Stop the survivors (their stdin closes) and read their reports.
    let mut survivor_rss = Vec::new();
    for child in &mut children[1..] {
        drop(child.stdin.take());
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert!(child.wait().unwrap().success(), "{out}");
        let report = out
            .lines()
            .find_map(|l| l.strip_prefix("WORKER "))
            .unwrap_or_else(|| panic!("no report in {out}"));
        assert!(report.contains("conserved true"), "{report}");
        survivor_rss.push(report.to_owned());
    }
    let mut seen = HashSet::new();
    let mut processed = 0u64;
    for i in 0..PROCESSES {
        for line in BufReader::new(File::open(dir.join(format!("{i}.ids"))).unwrap()).lines() {
            processed += 1;
            seen.insert(line.unwrap().parse::<u64>().unwrap());
        }
    }
    let distinct = seen.len() as u64;
    let duplicates = processed - distinct;
    let lost = (0..MESSAGES).filter(|i| !seen.contains(i)).count();
    println!(
        "RESULT messages {MESSAGES}, processes {PROCESSES}, killed after {killed_at}: \
         processed {processed}, distinct {distinct}, duplicates {duplicates} (bound \
         {IN_FLIGHT}), lost {lost}; peak RSS of the killed process {victim_rss} kB; \
         survivors: {survivor_rss:?}; published in {published:?}, all acked after \
         {elapsed:?}"
    );
    assert_eq!(lost, 0);
    assert_eq!(distinct, MESSAGES);
    assert!(duplicates <= IN_FLIGHT, "{duplicates} duplicates");
    let info = c.info().await.unwrap();
    assert_eq!(info.num_ack_pending, 0);
    let _ = fs::remove_dir_all(&dir);
}

/// One worker process (run by `a_killed_process_loses_nothing`; returns at once when run
/// on its own). Stops when its stdin closes; prints `WORKER ...` with its report and its
/// peak RSS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a worker process of a_killed_process_loses_nothing"]
async fn worker_process() {
    let (Ok(url), Ok(out)) = (
        std::env::var("BP_NATS_WORKER_URL"),
        std::env::var("BP_NATS_WORKER_OUT"),
    ) else {
        return;
    };
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let consumer = js
        .get_stream(STREAM)
        .await
        .unwrap()
        .get_consumer("workers")
        .await
        .unwrap();
    let file = Arc::new(Mutex::new(
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out)
            .unwrap(),
    ));
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let _ = closed_tx.send(());
    });
    let builder = Pipeline::builder(CAPACITY, Policy::Block)
        .workers(WORKERS)
        .deadline(Duration::from_secs(10))
        .key_by(|m: &Message| m.subject.to_string());
    let report = JetStreamSource::new(js.clone(), consumer)
        .fetch_wait(Duration::from_millis(100))
        .run(
            builder,
            TokioSpawner::current().unwrap(),
            closed_rx,
            move |msg: Message| {
                let file = file.clone();
                async move {
                    // One write per id: it survives a SIGKILL that comes after it.
                    let line = format!("{}\n", id(&msg));
                    file.lock()
                        .unwrap()
                        .write_all(line.as_bytes())
                        .map_err(|e| e.to_string())
                }
            },
        )
        .await
        .unwrap();
    println!(
        "WORKER {report}; conserved {}; peak RSS {} kB",
        report.is_conserved(),
        peak_rss_kb(std::process::id())
    );
}

/// Lines in `path` (0 if it does not exist yet).
fn lines(path: &Path) -> u64 {
    fs::read(path)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64)
        .unwrap_or(0)
}

/// `VmHWM` of process `pid`, in kB (Linux), or 0.
fn peak_rss_kb(pid: u32) -> u64 {
    let status = PathBuf::from(format!("/proc/{pid}/status"));
    fs::read_to_string(status)
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
