//! A small tokio service that writes two streams into SQLite through two pipelines, stops on
//! a token, saves what it could not finish, and checks its own books against the database.
//!
//! - A **sensor** on a plain `std::thread` pushes samples with `push_blocking` into a
//!   `Policy::DropOldest` pipeline: the workers are slower than the sensor, and only the
//!   freshest samples matter, so the oldest buffered sample is evicted to make room.
//! - A **command stream** (an async task) pushes commands into a `Policy::DropNewest`
//!   pipeline: a burst that does not fit is shed (counted by `on_shed`), the backlog keeps its
//!   order. Writes are fallible: every 7th command fails its first attempt with a simulated
//!   "database is busy" and is retried with backoff; every 97th always fails and, after the
//!   last attempt, goes to the dead-letter hook, which records it in `dead_letters`.
//! - The samples are written in batches (`spawn_batched_with_state`): up to 32 per
//!   transaction, or what came within 5 ms of the first.
//! - Each worker owns its own `rusqlite::Connection`, opened by `spawn_with_state` (a
//!   `Connection` is `Send` but not `Sync`: one per worker, never shared). The database is in
//!   a temporary directory, in WAL mode with a busy timeout so that the connections can all
//!   write.
//! - One `tokio_util` `CancellationToken` stops the application; both pipelines watch it
//!   through `.parent(..)`. Ctrl-C cancels it, or a timer that ends this demonstration run;
//!   the producers see `Closed`, both pipelines shut down, and the items handed back by
//!   `take_leftovers` are saved in `leftovers` for the next run.
//! - At the end every count in the reports is checked against the rows in the database; the
//!   process exits with a failure if any check does not hold.
//!
//! Run it with:
//!
//! ```text
//! cargo run --example tokio_app --features tokio
//! ```

use std::error::Error;
use std::path::Path;
use std::pin::pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use backpressure_pipeline::{
    Batch, Outcome, Pipeline, Policy, Producer, PushOutcome, Report, Retry, TokioSpawner,
    WorkFuture,
};
use futures_util::future;
use rusqlite::{Connection, ErrorCode};
use tokio::time::{interval, sleep};
use tokio_util::sync::CancellationToken;

/// How long the service runs before the timer stops it.
const RUN_FOR: Duration = Duration::from_millis(800);
/// What a batch of samples costs a worker besides its transaction (stands for real
/// processing: a call to another service per batch, a filter per sample). It makes the
/// workers slower than the sensor on purpose, batches and all.
const BATCH_COST: Duration = Duration::from_millis(2);
const SAMPLE_COST: Duration = Duration::from_micros(300);
/// What a command costs a worker besides its INSERT.
const COMMAND_COST: Duration = Duration::from_millis(1);
/// Every command whose id is a multiple of this fails its first attempt (a transient fault).
const FLAKY_EVERY: i64 = 7;
/// Every command whose id is a multiple of this fails every attempt (a poison command).
const POISON_EVERY: i64 = 97;

/// A reading from the sensor.
struct Sample {
    seq: i64,
    value: f64,
}

/// An operator's command. `attempts` travels with the command, so a retried command knows
/// which attempt it is on.
struct Command {
    id: i64,
    kind: &'static str,
    value: i64,
    attempts: u32,
}

/// A worker's state: its own connection, and its index for the rows it writes.
struct Db {
    worker: usize,
    conn: Connection,
}

/// What the sensor thread did: samples the pipeline took, and how many older samples they
/// evicted.
struct SensorTally {
    sent: u64,
    evicted: u64,
}

fn main() -> ExitCode {
    // `#[tokio::main]` builds the same runtime; the timer must be on for the pipelines'
    // deadlines and retry backoff (`TokioSpawner::current` checks), and the IO driver for
    // the Ctrl-C signal.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_time()
        .enable_io()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("tokio_app: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run()) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(failed) => {
            eprintln!("tokio_app: FAILED: {failed} check(s) did not hold (see above)");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("tokio_app: FAILED: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the service, then checks it; returns the number of failed checks.
async fn run() -> Result<usize, Box<dyn Error>> {
    // Removed with everything in it when `dir` is dropped, at the end of this function.
    let dir = tempfile::tempdir()?;
    let path: Arc<Path> = dir.path().join("service.db").into();
    create_schema(&path)?;
    println!("database: {}", path.display());

    // Cancelled when the service must stop; both pipelines watch it.
    let app = CancellationToken::new();
    let spawner = TokioSpawner::current()?;

    let samples = Pipeline::builder(64, Policy::DropOldest)
        .workers(2)
        // A zero deadline: at the stop the workers finish the sample in hand and take no
        // other; what is still queued is handed back, to be saved, not processed late.
        .deadline(Duration::ZERO)
        // Time to finish the sample in hand (a few ms) before being aborted mid-write.
        .grace(Duration::from_millis(500))
        .parent(app.clone().cancelled_owned())
        // In batches: up to 32 samples per transaction, or what came within 5 ms of the
        // first one.
        .spawn_batched_with_state(
            spawner.clone(),
            Batch::new(32, Duration::from_millis(5)),
            {
                let path = path.clone();
                move |worker| open_worker("samples", path.clone(), worker)
            },
            write_samples,
        )?;

    let shed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    // One connection for the dead letters, shared by the commands' workers: the hook runs in
    // whichever worker gave up, and a `Connection` is not `Sync`, hence the mutex. Writing
    // each one at once (not at the end) keeps it if the process dies later.
    let dead_letters = Mutex::new(open(&path)?);
    let commands = Pipeline::builder(16, Policy::DropNewest)
        .workers(2)
        // Commands matter: drain the backlog (a few ms of work) before stopping.
        .deadline(Duration::from_millis(500))
        .grace(Duration::from_millis(500))
        .parent(app.clone().cancelled_owned())
        // 3 attempts in all, waiting about 1 ms then 2 ms; short, so a retried command does
        // not hold its worker for long (the worker waits with it).
        .retry(Retry::attempts(3).backoff(Duration::from_millis(1), Duration::from_millis(20)))
        .on_shed({
            let shed = shed.clone();
            // One place for every producer. Relaxed: a counter, read after shutdown has
            // joined every worker and the producer task.
            move |_: &Command| {
                shed.fetch_add(1, Ordering::Relaxed);
            }
        })
        .on_error({
            let errors = errors.clone();
            // Every failed attempt, retried or final. Relaxed: as above.
            move |_: &rusqlite::Error| {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        })
        .dead_letter(move |command: Command, error: rusqlite::Error| {
            let conn = dead_letters.lock().unwrap_or_else(PoisonError::into_inner);
            let saved = conn.execute(
                "INSERT INTO dead_letters (id, error) VALUES (?1, ?2)",
                (command.id, error.to_string()),
            );
            if let Err(err) = saved {
                // The final check (rows == failed) reports it too.
                eprintln!("dead letter #{} not saved: {err}", command.id);
            }
        })
        .spawn_with_state(
            spawner,
            {
                let path = path.clone();
                move |worker| open_worker("commands", path.clone(), worker)
            },
            execute,
        )?;

    // The producers. Each holds a `Producer` handle and stops when its push comes back
    // `Closed`: once the token is cancelled, nothing more is taken.
    let sensor = thread::Builder::new().name("sensor".into()).spawn({
        let samples = samples.producer();
        move || sensor(&samples)
    })?;
    let operator = tokio::spawn(command_stream(commands.producer()));

    // What stops the service: Ctrl-C (tokio's `signal` feature), or the timer that ends
    // this demonstration run, whichever comes first.
    tokio::spawn({
        let app = app.clone();
        async move {
            let ctrl_c = pin!(tokio::signal::ctrl_c());
            match future::select(ctrl_c, pin!(sleep(RUN_FOR))).await {
                future::Either::Left(_) => println!("Ctrl-C: stopping the service"),
                future::Either::Right(_) => {
                    println!("timer: stopping the service after {RUN_FOR:?}")
                }
            }
            app.cancel();
        }
    });

    // Whoever cancelled the token, stop both pipelines now. The sensor keeps the samples'
    // queue full up to this point, so the zero deadline leaves samples to hand back.
    app.cancelled().await;
    let (samples_report, commands_report) =
        future::join(samples.shutdown(), commands.shutdown()).await;

    // The producers have seen `Closed` by now. Joining a thread blocks: do it off the
    // runtime's threads.
    let sensor = tokio::task::spawn_blocking(move || sensor.join())
        .await?
        .map_err(|_| "the sensor thread panicked")?;
    let issued = operator.await?;
    println!(
        "sensor: {} samples sent, {} evicted by newer ones",
        sensor.sent, sensor.evicted
    );
    println!(
        "command stream: {issued} commands issued, {} shed",
        shed.load(Ordering::Relaxed)
    );

    // Save what the pipelines handed back, for the next run to replay.
    let mut db = open(&path)?;
    let samples_left = samples.take_leftovers();
    let commands_left = commands.take_leftovers();
    save_leftovers(&mut db, "sample", samples_left.iter().map(|s| s.seq))?;
    save_leftovers(&mut db, "command", commands_left.iter().map(|c| c.id))?;
    println!(
        "leftovers saved: {} samples{}, {} commands",
        samples_left.len(),
        match (samples_left.first(), samples_left.last()) {
            (Some(first), Some(last)) => format!(" (#{}..=#{})", first.seq, last.seq),
            _ => String::new(),
        },
        commands_left.len()
    );

    print_details(&db)?;
    println!("samples report:  {samples_report}");
    println!("commands report: {commands_report}");

    let mut checks = Checks::default();
    check_samples(&mut checks, &db, &samples_report, &sensor)?;
    let hooks = HookCounts {
        issued,
        shed: shed.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
    };
    check_commands(&mut checks, &db, &commands_report, &hooks)?;
    if checks.failed == 0 {
        println!("all {} checks passed", checks.passed);
    }
    Ok(checks.failed)
}

/// Creates the database and its tables, once, before any worker opens it.
fn create_schema(path: &Path) -> Result<(), Box<dyn Error>> {
    let conn = open(path)?;
    // WAL lets readers and one writer work at once, and it is a property of the file:
    // set here, every later connection uses it.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if mode != "wal" {
        return Err(format!("the database cannot use WAL (journal mode {mode})").into());
    }
    conn.execute_batch(
        "CREATE TABLE samples (
             seq    INTEGER PRIMARY KEY,
             value  REAL    NOT NULL,
             worker INTEGER NOT NULL
         );
         CREATE TABLE commands (
             id       INTEGER PRIMARY KEY,
             kind     TEXT    NOT NULL,
             value    INTEGER NOT NULL,
             worker   INTEGER NOT NULL,
             attempts INTEGER NOT NULL
         );
         CREATE TABLE leftovers (kind TEXT NOT NULL, id INTEGER NOT NULL);
         CREATE TABLE dead_letters (id INTEGER NOT NULL, error TEXT NOT NULL);",
    )?;
    Ok(())
}

/// Opens a connection set up for several writers.
fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // SQLite has one writer at a time: wait for the lock instead of failing at once with
    // "database is busy". Long enough that it never fails in this run.
    conn.busy_timeout(Duration::from_secs(5))?;
    // With WAL, NORMAL is safe against a crash of the process and syncs at checkpoints only.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

/// A worker's state: its own connection. Called once per worker, before its first item
/// (and again, with backoff, if it fails).
async fn open_worker(pipeline: &str, path: Arc<Path>, worker: usize) -> rusqlite::Result<Db> {
    let conn = open(&path)?;
    println!("{pipeline} worker {worker}: own connection open");
    Ok(Db { worker, conn })
}

/// The samples' work: process a batch, then write it in one transaction on the worker's
/// own connection. A failed write is final (`Err`, counted per sample): stale samples are
/// not worth a retry, and the rolled-back transaction leaves none of the batch's rows.
///
/// The writes are synchronous calls on the runtime's thread: fine for a short transaction.
/// Longer blocking work belongs in `tokio::task::spawn_blocking` (or `block_in_place`).
fn write_samples(db: &mut Db, batch: Vec<Sample>) -> WorkFuture<'_, rusqlite::Result<()>> {
    Box::pin(async move {
        sleep(BATCH_COST + SAMPLE_COST * batch.len() as u32).await;
        let tx = db.conn.transaction()?;
        {
            // Cached: each worker prepares the statement once on its own connection.
            let mut insert =
                tx.prepare_cached("INSERT INTO samples (seq, value, worker) VALUES (?1, ?2, ?3)")?;
            for sample in &batch {
                insert.execute((sample.seq, sample.value, db.worker))?;
            }
        }
        tx.commit()?;
        BATCHES.fetch_add(1, Ordering::Relaxed);
        Ok(())
    })
}

/// Sample batches committed, to print beside the rows.
static BATCHES: AtomicU64 = AtomicU64::new(0);

/// The commands' work: one INSERT, retried while the error is transient (the database was
/// busy), dead-lettered at once otherwise.
fn execute(db: &mut Db, mut command: Command) -> WorkFuture<'_, Outcome<Command, rusqlite::Error>> {
    Box::pin(async move {
        command.attempts += 1;
        sleep(COMMAND_COST).await;
        match store_command(db, &command) {
            Ok(()) => Outcome::Done,
            // The command comes back to be tried again after a backoff, while the retry
            // policy allows; after the last attempt it goes to the dead-letter hook.
            Err(err) if is_transient(&err) => Outcome::Retry(command, err),
            Err(err) => Outcome::Reject(command, err),
        }
    })
}

fn store_command(db: &Db, command: &Command) -> rusqlite::Result<()> {
    // Faults injected deterministically, so the run can be checked: a poison command meets
    // a lock that is never released; a flaky one meets a busy database once.
    if command.id % POISON_EVERY == 0 {
        return Err(busy("simulated: row locked by a stuck transaction"));
    }
    if command.id % FLAKY_EVERY == 0 && command.attempts == 1 {
        return Err(busy("simulated: database is busy"));
    }
    db.conn
        .prepare_cached(
            "INSERT INTO commands (id, kind, value, worker, attempts)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute((
            command.id,
            command.kind,
            command.value,
            db.worker,
            command.attempts,
        ))?;
    Ok(())
}

/// Errors worth another attempt: the database was busy or locked. Anything else (a
/// constraint, a full disk, a bug) fails the same way next time.
fn is_transient(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// The error SQLite returns when the database is busy, with our message.
fn busy(message: &str) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
        Some(message.to_string()),
    )
}

/// The sensor: bursts of samples, faster than the workers can write them, until the
/// pipeline closes. Under `DropOldest` `push_blocking` never blocks (the oldest sample makes
/// room); under `Block` the same loop would wait for room.
fn sensor(samples: &Producer<Sample>) -> SensorTally {
    let mut tally = SensorTally {
        sent: 0,
        evicted: 0,
    };
    for seq in 0.. {
        let value = (seq as f64 / 50.0).sin();
        match samples.push_blocking(Sample { seq, value }) {
            // The service is stopping.
            PushOutcome::Closed(_) => break,
            outcome => {
                tally.sent += 1;
                // An evicted sample is stale by now: let it go, count it.
                if outcome.is_dropped() {
                    tally.evicted += 1;
                }
            }
        }
        if seq % 8 == 7 {
            thread::sleep(Duration::from_millis(1));
        }
    }
    tally
}

/// The command stream (a socket or a message queue in a real service): a burst of 6
/// commands every 2 ms, more than the workers can take. Returns how many were issued.
async fn command_stream(commands: Producer<Command>) -> u64 {
    const KINDS: [&str; 3] = ["set_speed", "set_heading", "calibrate"];
    let mut tick = interval(Duration::from_millis(2));
    let mut id = 1;
    let mut issued = 0;
    loop {
        tick.tick().await;
        for _ in 0..6 {
            let command = Command {
                id,
                kind: KINDS[id as usize % KINDS.len()],
                value: id * 10 % 360,
                attempts: 0,
            };
            id += 1;
            match commands.push(command).await {
                // The service is stopping.
                PushOutcome::Closed(_) => return issued,
                // Accepted, or shed and handed back (counted by `on_shed`): either way the
                // pipeline has seen it.
                _ => issued += 1,
            }
        }
    }
}

/// Saves the ids of the items handed back, in one transaction.
fn save_leftovers(
    db: &mut Connection,
    kind: &str,
    ids: impl IntoIterator<Item = i64>,
) -> rusqlite::Result<()> {
    let tx = db.transaction()?;
    {
        let mut insert = tx.prepare("INSERT INTO leftovers (kind, id) VALUES (?1, ?2)")?;
        for id in ids {
            insert.execute((kind, id))?;
        }
    }
    tx.commit()
}

/// What the rows show: each worker wrote through its own connection; the dead letters.
fn print_details(db: &Connection) -> rusqlite::Result<()> {
    for table in ["samples", "commands"] {
        let mut per_worker = db.prepare(&format!(
            "SELECT worker, COUNT(*) FROM {table} GROUP BY worker"
        ))?;
        let rows = per_worker
            .query_map([], |row| {
                Ok(format!(
                    "worker {} {}",
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        println!("{table} rows: {}", rows.join(", "));
    }
    let mut dead = db.prepare("SELECT id FROM dead_letters ORDER BY id")?;
    let ids = dead
        .query_map([], |row| Ok(format!("#{}", row.get::<_, i64>(0)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    println!(
        "dead letters: {}",
        if ids.is_empty() {
            "none".into()
        } else {
            ids.join(", ")
        }
    );
    Ok(())
}

/// What the commands' producer and hooks counted.
struct HookCounts {
    issued: u64,
    shed: u64,
    errors: u64,
}

fn check_samples(
    checks: &mut Checks,
    db: &Connection,
    report: &Report,
    sensor: &SensorTally,
) -> rusqlite::Result<()> {
    let rows = count(db, "SELECT COUNT(*) FROM samples")?;
    let left = count(db, "SELECT COUNT(*) FROM leftovers WHERE kind = 'sample'")?;
    checks.check("samples: the report is conserved", report.is_conserved());
    checks.equal(
        "samples: produced",
        report.produced,
        "sent by the sensor",
        sensor.sent,
    );
    checks.equal(
        "samples: dropped",
        report.dropped,
        "evicted as seen by the sensor",
        sensor.evicted,
    );
    checks.equal("samples: rows", rows, "processed", report.processed);
    // Each transaction wrote a batch of 1..=32 samples.
    let batches = BATCHES.load(Ordering::Relaxed);
    checks.check(
        &format!("samples: {rows} rows in {batches} batches of at most 32"),
        batches > 0 && rows <= 32 * batches && rows >= batches,
    );
    checks.equal(
        "samples: leftover rows",
        left,
        "handed back",
        report.handed_back,
    );
    // The sensor outpaces the workers, so the queue is full at the stop, and with a zero
    // deadline the workers take no more of it: there is always something to save.
    checks.check(
        &format!("samples: handed back {} > 0", report.handed_back),
        report.handed_back > 0,
    );
    checks.none("samples: lost in flight", report.lost_in_flight);
    checks.check("samples: every worker joined", report.all_joined());
    Ok(())
}

fn check_commands(
    checks: &mut Checks,
    db: &Connection,
    report: &Report,
    hooks: &HookCounts,
) -> rusqlite::Result<()> {
    let rows = count(db, "SELECT COUNT(*) FROM commands")?;
    let dead = count(db, "SELECT COUNT(*) FROM dead_letters")?;
    let left = count(db, "SELECT COUNT(*) FROM leftovers WHERE kind = 'command'")?;
    checks.check("commands: the report is conserved", report.is_conserved());
    checks.equal(
        "commands: produced",
        report.produced,
        "issued",
        hooks.issued,
    );
    checks.equal(
        "commands: dropped",
        report.dropped,
        "counted by on_shed",
        hooks.shed,
    );
    checks.equal("commands: rows", rows, "processed", report.processed);
    checks.equal("commands: dead-letter rows", dead, "failed", report.failed);
    checks.equal(
        "commands: leftover rows",
        left,
        "handed back",
        report.handed_back,
    );
    checks.equal(
        "commands: errors seen by on_error",
        hooks.errors,
        "retried + failed",
        report.retried + report.failed,
    );
    // Only the poison commands fail for good: the transient faults were all retried away.
    let not_poison = count(
        db,
        &format!("SELECT COUNT(*) FROM dead_letters WHERE id % {POISON_EVERY} != 0"),
    )?;
    checks.none("commands: dead letters not poison", not_poison);
    // Each flaky command was written on its second attempt, every other on its first.
    let wrong_attempt = count(
        db,
        &format!(
            "SELECT COUNT(*) FROM commands
             WHERE attempts != CASE WHEN id % {FLAKY_EVERY} = 0 THEN 2 ELSE 1 END"
        ),
    )?;
    checks.none(
        "commands: rows written on an unexpected attempt",
        wrong_attempt,
    );
    checks.none("commands: lost in flight", report.lost_in_flight);
    checks.check("commands: every worker joined", report.all_joined());
    Ok(())
}

fn count(db: &Connection, sql: &str) -> rusqlite::Result<u64> {
    db.query_row(sql, [], |row| row.get(0))
}

/// Prints each check as it is made and counts the failures.
#[derive(Default)]
struct Checks {
    passed: usize,
    failed: usize,
}

impl Checks {
    fn check(&mut self, what: &str, ok: bool) {
        if ok {
            self.passed += 1;
            println!("  ok    {what}");
        } else {
            self.failed += 1;
            println!("  FAIL  {what}");
        }
    }

    /// Checks that nothing was counted: "lost in flight: 0".
    fn none(&mut self, what: &str, count: u64) {
        self.check(&format!("{what}: {count}"), count == 0);
    }

    /// Checks `left == right` and shows both: "rows 427 == processed 427".
    fn equal(&mut self, left_name: &str, left: u64, right_name: &str, right: u64) {
        let sign = if left == right { "==" } else { "!=" };
        self.check(
            &format!("{left_name} {left} {sign} {right_name} {right}"),
            left == right,
        );
    }
}
