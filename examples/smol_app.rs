//! A smol application that owns its executor (two threads plus the main thread) and forwards
//! readings through a pipeline to a TCP collector that drops connections on purpose, without
//! losing one.
//!
//! - The collector listens on 127.0.0.1 (a port the OS picks, in this process). For each line
//!   `"<id>\n"` it stores the id, then answers `"ok\n"`. It hangs up on every connection's
//!   40th line: on even connections before storing it, on odd ones after storing it but
//!   before the ack (the forwarder cannot tell the two apart, so the id is stored twice).
//! - Each of the 3 workers owns one connection as its state (`spawn_with_state`), opened on
//!   first use and again after a drop. A failed write or ack drops the connection and hands
//!   the reading back (`Outcome::Retry`) to be sent again, after a backoff, on a new one.
//! - `Policy::Block`: the collector is the slow end, and the producer waits for it.
//! - The application token stops intake when the producer is done; `shutdown` drains the rest.
//!
//! At the end it checks that delivery was at-least-once (every reading stored, every ack
//! backed by a stored line, duplicates only where a connection dropped before its ack) and
//! exits non-zero, saying why, if not.
//!
//! `cargo run --example smol_app`

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::error::Error;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use backpressure_pipeline::{
    CancellationToken, ExecutorSpawner, Outcome, Pipeline, Policy, PushOutcome, Report, Retry,
    Stats,
};
use smol::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use smol::net::{TcpListener, TcpStream};
use smol::{channel, Executor, Timer};

const READINGS: u64 = 3000;
const WORKERS: usize = 3;
const CAPACITY: usize = 64;
/// Attempts per reading, the first one included.
const ATTEMPTS: u32 = 5;
/// The collector hangs up on each connection's line number `LINES_PER_CONNECTION`.
const LINES_PER_CONNECTION: u32 = 40;
/// How long the collector takes to store a line: the slow end the producer waits for.
const STORE_TIME: Duration = Duration::from_millis(1);

fn main() -> Result<ExitCode, Box<dyn Error>> {
    let ex = Arc::new(Executor::new());
    // The executor threads run until `stop` is dropped (async-executor's own pattern): after
    // the pipeline's shutdown, which still needs them, not when intake stops.
    let (stop, stopped) = channel::unbounded::<()>();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (ex, stopped) = (ex.clone(), stopped.clone());
            thread::spawn(move || smol::block_on(ex.run(stopped.recv())))
        })
        .collect();

    // The main thread runs the executor too, until the application's work is done.
    let run = smol::block_on(ex.run(run(&ex)));
    drop(stop);
    for thread in threads {
        // `recv` fails once `stop` is dropped: that is the signal, not an error.
        let _ = thread.join().expect("an executor thread panicked");
    }

    let run = run?;
    run.print();
    let failures = run.check();
    for failure in &failures {
        eprintln!("FAILED: {failure}");
    }
    Ok(if failures.is_empty() {
        println!("ok: every reading stored at least once");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What one run did, seen from both ends of the connection.
struct Run {
    pushed: u64,
    elapsed: Duration,
    /// Taken when the producer was done: how long it was held back.
    stats: Stats,
    report: Report,
    leftovers: Vec<u64>,
    /// Ids whose ack a worker read.
    acked: HashSet<u64>,
    dead_letters: Vec<u64>,
    /// Errors seen by `on_error`: one per failed attempt.
    errors: u64,
    collected: Log,
}

async fn run(ex: &Arc<Executor<'static>>) -> Result<Run, Box<dyn Error>> {
    let (addr, collector) = Collector::start(ex).await?;
    // Cancelled when intake stops: here when the producer is done; in a service, by Ctrl-C
    // or a reload as well.
    let app = CancellationToken::new();
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let dead_letters = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicU64::new(0));

    let pipeline = Pipeline::builder(CAPACITY, Policy::Block)
        .workers(WORKERS)
        .parent(&app)
        // Each drop costs the reading in flight one retry, on a fresh connection. Five
        // attempts leave room for a retry that meets a drop too; the backoff (1 ms doubling,
        // up to 50 ms, with jitter) keeps the workers from reconnecting in lockstep.
        .retry(
            Retry::attempts(ATTEMPTS).backoff(Duration::from_millis(1), Duration::from_millis(50)),
        )
        .on_error({
            let errors = errors.clone();
            move |_: &io::Error| {
                // Relaxed: only counted; read after shutdown has joined every worker, which
                // orders their increments before the read.
                errors.fetch_add(1, Ordering::Relaxed);
            }
        })
        .dead_letter({
            let dead_letters = dead_letters.clone();
            move |id: u64, error: io::Error| {
                eprintln!("reading #{id} dead after {ATTEMPTS} attempts: {error}");
                dead_letters.lock().unwrap().push(id);
            }
        })
        .spawn_with_state(
            ExecutorSpawner::new(ex.clone()),
            // No connection yet: the work opens it, on first use and after each drop, so a
            // collector that is down costs a retry of the reading, not the worker.
            |_worker| async { Ok::<Option<Connection>, Infallible>(None) },
            {
                let acked = acked.clone();
                move |conn: &mut Option<Connection>, id: u64| {
                    Box::pin(forward(addr, conn, id, acked.clone()))
                }
            },
        )?;

    let started = Instant::now();
    let pushed = produce(&pipeline).await;
    let stats = pipeline.stats();
    // Intake stops (pushes from here on get `Closed`); the workers drain what is queued. The
    // token stopped the pipeline first, so the report names the cause `External`.
    app.cancel();
    let report = pipeline.shutdown().await;
    let elapsed = started.elapsed();

    // Every worker has ended, so every connection is closed and every store happened before
    // the ack or the hang-up a worker saw: the log is final.
    let collected = std::mem::take(&mut *collector.log.lock().unwrap());
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let dead_letters = std::mem::take(&mut *dead_letters.lock().unwrap());
    Ok(Run {
        pushed,
        elapsed,
        stats,
        leftovers: pipeline.take_leftovers(),
        report,
        acked,
        dead_letters,
        // Relaxed: see `on_error`.
        errors: errors.load(Ordering::Relaxed),
        collected,
    })
}

/// Pushes every reading; under `Block` a push waits while the queue is full, so the producer
/// goes at the collector's pace. Returns how many were accepted.
async fn produce(pipeline: &Pipeline<u64>) -> u64 {
    for id in 0..READINGS {
        if let PushOutcome::Closed(_) = pipeline.push(id).await {
            return id; // the application is stopping
        }
    }
    READINGS
}

/// A worker's state: its connection to the collector, with a buffered reader for the acks.
struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Connection {
    async fn open(addr: SocketAddr) -> io::Result<Connection> {
        let stream = TcpStream::connect(addr).await?;
        // One short line per round trip: send it now, not when Nagle's algorithm has waited
        // for more.
        stream.set_nodelay(true)?;
        Ok(Connection {
            reader: BufReader::new(stream.clone()),
            writer: stream,
        })
    }

    /// Sends one reading and waits for its ack.
    async fn send(&mut self, id: u64) -> io::Result<()> {
        self.writer.write_all(format!("{id}\n").as_bytes()).await?;
        let mut ack = String::new();
        match self.reader.read_line(&mut ack).await? {
            0 => Err(io::ErrorKind::UnexpectedEof.into()),
            _ if ack == "ok\n" => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected ack {ack:?}"),
            )),
        }
    }
}

/// The work: sends one reading on the worker's connection, opening one if it has none.
///
/// A reading counts as processed only once its ack is read. On any failure the connection
/// is dropped: after a failed write or read nobody knows what is still in flight on it (half
/// a line, a late ack that would be taken for the next line's). The reading is handed back
/// to be retried on a new one, so it may be stored twice: delivery is at-least-once.
async fn forward(
    addr: SocketAddr,
    conn: &mut Option<Connection>,
    id: u64,
    acked: Arc<Mutex<HashSet<u64>>>,
) -> Outcome<u64, io::Error> {
    let sent = match conn {
        Some(open) => open.send(id).await,
        None => match Connection::open(addr).await {
            Ok(open) => conn.insert(open).send(id).await,
            Err(error) => Err(error),
        },
    };
    match sent {
        Ok(()) => {
            acked.lock().unwrap().insert(id);
            Outcome::Done
        }
        Err(error) => {
            *conn = None;
            Outcome::Retry(id, error)
        }
    }
}

/// The collector, in-process: what it stored, and how often it hung up.
#[derive(Default)]
struct Collector {
    log: Mutex<Log>,
}

/// What the collector did: the ground truth the checks hold the report against.
#[derive(Default)]
struct Log {
    /// How many times each id was stored.
    stored: HashMap<u64, u32>,
    /// Connections dropped on purpose.
    hung_up: u64,
}

impl Collector {
    /// Listens on a port the OS picks on loopback and serves it on `ex`, one task per
    /// connection.
    async fn start(ex: &Arc<Executor<'static>>) -> io::Result<(SocketAddr, Arc<Collector>)> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let collector = Arc::new(Collector::default());
        // Detached: the accept loop ends with the executor, when the application exits.
        ex.spawn(collector.clone().accept(listener, Arc::downgrade(ex)))
            .detach();
        Ok((addr, collector))
    }

    /// Accepts connections, numbering them to choose how each one ends.
    async fn accept(self: Arc<Self>, listener: TcpListener, ex: Weak<Executor<'static>>) {
        for serial in 0u64.. {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // The forwarders' retries then run out, and the checks say so.
                    eprintln!("collector: accept failed: {error}");
                    return;
                }
            };
            // Weak: a task the executor owns must not keep the executor alive.
            let Some(ex) = ex.upgrade() else { return };
            ex.spawn(self.clone().serve(stream, serial)).detach();
        }
    }

    fn store(&self, id: u64) {
        *self.log.lock().unwrap().stored.entry(id).or_default() += 1;
    }

    fn hang_up(&self) {
        self.log.lock().unwrap().hung_up += 1;
    }

    /// Serves one connection: stores each line and acks it, and hangs up on its line
    /// `LINES_PER_CONNECTION`, before storing it (even `serial`) or after (odd).
    ///
    /// It hangs up while a worker waits for an ack, never on an idle connection: so every
    /// drop is seen by a worker as an error (errors ≥ drops), none goes unseen at the end.
    async fn serve(self: Arc<Self>, stream: TcpStream, serial: u64) {
        let mut reader = BufReader::new(stream.clone());
        let mut writer = stream;
        let mut line = String::new();
        for number in 1..=LINES_PER_CONNECTION {
            line.clear();
            // End of stream or an error: the worker hung up (it ended, or gave up on us).
            if !matches!(reader.read_line(&mut line).await, Ok(len) if len > 0) {
                return;
            }
            let Ok(id) = line.trim_end().parse::<u64>() else {
                eprintln!("collector: malformed line {line:?}");
                return;
            };
            let last = number == LINES_PER_CONNECTION;
            if last && serial % 2 == 0 {
                // Lost in transit: the worker sends it again, and it is stored once.
                self.hang_up();
                return;
            }
            Timer::after(STORE_TIME).await;
            self.store(id);
            if last {
                // Stored but never acked: the worker sends it again, and it is stored twice.
                self.hang_up();
                return;
            }
            if writer.write_all(b"ok\n").await.is_err() {
                return;
            }
        }
    }
}

impl Run {
    /// Readings the collector stored more than once.
    fn duplicates(&self) -> u64 {
        let stored = self.collected.stored.values();
        stored.map(|&times| u64::from(times) - 1).sum()
    }

    fn print(&self) {
        let Run { report, stats, .. } = self;
        println!(
            "forwarded {} readings in {:.2?}; the queue was full for {:.2?} (peak {}/{CAPACITY})",
            self.pushed, self.elapsed, stats.time_full, stats.peak_depth
        );
        println!(
            "collector: {} distinct ids stored, {} duplicates, {} connections dropped",
            self.collected.stored.len(),
            self.duplicates(),
            self.collected.hung_up
        );
        println!(
            "forwarder: {} acks, {} errors (reconnections), {} dead letters",
            self.acked.len(),
            self.errors,
            self.dead_letters.len()
        );
        println!("report: {report}");
        println!("leftovers: {:?}", self.leftovers);
    }

    /// Each check that failed, in words.
    fn check(&self) -> Vec<String> {
        let Run { report, .. } = self;
        let stored: HashSet<u64> = self.collected.stored.keys().copied().collect();
        let pushed: HashSet<u64> = (0..self.pushed).collect();
        let hung_up = self.collected.hung_up;
        let mut failures = Vec::new();
        let mut expect = |ok: bool, what: String| {
            if !ok {
                failures.push(what);
            }
        };
        expect(
            report.is_conserved(),
            format!("report not conserved: {report}"),
        );
        expect(report.all_joined(), "a worker was not joined".into());
        expect(
            self.leftovers.is_empty(),
            format!("{} leftovers", self.leftovers.len()),
        );
        expect(
            self.acked.is_subset(&stored),
            "an acked reading was never stored".into(),
        );
        expect(
            self.acked.len() as u64 == report.processed,
            format!("{} acks, {} processed", self.acked.len(), report.processed),
        );
        expect(
            stored == pushed,
            format!("{} ids stored of {} pushed", stored.len(), pushed.len()),
        );
        expect(
            self.duplicates() <= hung_up,
            format!("{} duplicates, {hung_up} drops", self.duplicates()),
        );
        expect(
            self.pushed == READINGS && report.processed == self.pushed,
            format!("{} pushed, {} processed", self.pushed, report.processed),
        );
        expect(
            report.failed == 0 && self.dead_letters.is_empty(),
            format!(
                "{} failed, {} dead letters",
                report.failed,
                self.dead_letters.len()
            ),
        );
        expect(
            hung_up > 0,
            "the collector never dropped a connection".into(),
        );
        expect(
            self.errors >= hung_up,
            format!("{} errors, {hung_up} drops", self.errors),
        );
        failures
    }
}
