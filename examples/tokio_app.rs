//! A tokio application with two pipelines on `TokioSpawner`: a position stream on `DropOldest`
//! (a fast sensor, a slow consumer that only needs the freshest sample) and a command stream
//! on `DropNewest` (shed commands raise one alarm and are counted). One application token
//! stops both.
//!
//! `cargo run --example tokio_app --features tokio`

use std::error::Error;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backpressure_pipeline::{CancellationToken, Pipeline, Policy, PushOutcome, TokioSpawner};
use futures_util::future;
use tokio::time::sleep;

const POSITIONS: u64 = 3000;
const COMMANDS: u64 = 1000;
/// The "work" a worker does per item, and the producers' tick.
const TICK: Duration = Duration::from_millis(1);

struct Position {
    seq: u64,
    x: f64,
    y: f64,
}

struct Command {
    id: u64,
}

fn main() -> Result<ExitCode, Box<dyn Error>> {
    // `#[tokio::main]` does the same; either way the timer must be on, for the pipelines'
    // shutdown deadline (`TokioSpawner::current` checks).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()?;
    rt.block_on(run())
}

async fn run() -> Result<ExitCode, Box<dyn Error>> {
    // Cancelled when the application stops (a Ctrl-C handler would cancel it): it stops
    // intake on both pipelines, and the producers see `Closed`.
    let app = CancellationToken::new();
    let spawner = TokioSpawner::current()?;
    let latest = Arc::new(Mutex::new(None::<Position>));
    let positions = Pipeline::builder(8, Policy::DropOldest)
        .workers(1)
        .deadline(Duration::from_millis(500))
        .parent(&app)
        .spawn(spawner.clone(), {
            let latest = latest.clone();
            move |p: Position| steer(latest.clone(), p)
        })?;
    let commands = Pipeline::builder(32, Policy::DropNewest)
        .workers(2)
        .deadline(Duration::from_millis(500))
        .parent(&app)
        .spawn(spawner, execute)?;

    // Both producers run at once, on the runtime's worker threads.
    let (positions, commands) = (Arc::new(positions), Arc::new(commands));
    let sensor = tokio::spawn(sensor(positions.clone()));
    let operator = tokio::spawn(operator(commands.clone()));
    let (sent, (issued, shed)) = (sensor.await?, operator.await?);

    let (positions, commands) = future::join(positions.shutdown(), commands.shutdown()).await;
    if let Some(p) = latest.lock().unwrap().as_ref() {
        println!(
            "sensor: {sent} positions sent; freshest handled #{} at ({:.2}, {:.2})",
            p.seq, p.x, p.y
        );
    }
    println!("operator: {issued} commands issued, {shed} shed");
    println!("positions report: {positions}");
    println!("commands report:  {commands}");
    let ok = [positions, commands]
        .iter()
        .all(|r| r.is_conserved() && r.all_joined());
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The slow consumer: steers towards a position, then keeps it if it is the freshest yet.
async fn steer(latest: Arc<Mutex<Option<Position>>>, p: Position) {
    sleep(TICK).await; // the work
    let mut latest = latest.lock().unwrap();
    if latest.as_ref().is_none_or(|l| l.seq < p.seq) {
        *latest = Some(p);
    }
}

/// Executes a command (the work).
async fn execute(_: Command) {
    sleep(TICK).await;
}

/// A fast sensor: a burst of 30 samples per tick. Under `DropOldest` a push never waits; an
/// evicted sample is stale by now, so it is let go.
async fn sensor(positions: Arc<Pipeline<Position>>) -> u64 {
    for seq in 0..POSITIONS {
        if seq % 30 == 0 {
            sleep(TICK).await;
        }
        let angle = seq as f64 / 100.0;
        let (x, y) = (angle.cos(), angle.sin());
        let sample = Position { seq, x, y };
        if let PushOutcome::Closed(_) = positions.push(sample).await {
            return seq; // the application is stopping
        }
    }
    POSITIONS
}

/// Commands, 5 per tick: a shed command comes back; raise the alarm once, then only count.
async fn operator(commands: Arc<Pipeline<Command>>) -> (u64, u64) {
    let mut shed = 0;
    for id in 0..COMMANDS {
        if id % 5 == 0 {
            sleep(TICK).await;
        }
        match commands.push(Command { id }).await {
            PushOutcome::Shed(command) => {
                if shed == 0 {
                    eprintln!("ALARM: shedding commands (first #{})", command.id);
                }
                shed += 1;
            }
            PushOutcome::Closed(_) => return (id, shed), // the application is stopping
            _ => {}
        }
    }
    (COMMANDS, shed)
}
