//! Orders through a durable JetStream pull consumer into a keyed pipeline, with a redelivery
//! and a dead-letter stream, checked at the end.
//!
//! - The stream `EXAMPLE_ORDERS` (subjects `example.orders.>`) is purged, so that reruns start
//!   clean, and N orders are published over 16 subjects, at most 1000 acks in flight.
//! - A [`JetStreamSource`] feeds a `Block` pipeline of 8 workers with a lane per subject:
//!   orders of one subject run in the order they were fetched.
//! - The work is idempotent: it inserts the message's stream sequence into a set (an upsert).
//!   One order in 1000 fails its first delivery; it is nak'ed and redelivered. A message
//!   failing its last attempt would go to `example.dead`, kept by the stream `EXAMPLE_DEAD`.
//! - Once every sequence is in the set, the source stops, and the example checks that the
//!   report is conserved and that N distinct orders were processed (exit code 1 otherwise).
//!
//! Run it against a local server (`-js` enables JetStream, `-sd` is where it stores streams):
//!
//! ```text
//! nats-server -js -sd /tmp/nats
//! cargo run -p backpressure-pipeline-nats --example jetstream            # 10000 orders
//! NATS_URL=127.0.0.1:4222 cargo run -p backpressure-pipeline-nats --example jetstream -- 100000
//! ```

use std::collections::HashSet;
use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use backpressure_pipeline::{Pipeline, Policy, Retry, TokioSpawner};
use backpressure_pipeline_nats::{JetStreamSource, Message, Shed};
use tokio::sync::Notify;

type BoxError = Box<dyn Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "127.0.0.1:4222".into());
    let n: u64 = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 10_000,
    };
    let client = async_nats::connect(&url).await?;
    let js = jetstream::new(client);

    let orders = stream_for(&js, "EXAMPLE_ORDERS", "example.orders.>").await?;
    let dead = stream_for(&js, "EXAMPLE_DEAD", "example.dead").await?;
    // A durable consumer: its acks outlive this process. `max_ack_pending` bounds what all the
    // processes sharing it hold unacked; keep it above each one's capacity + workers + 1.
    let consumer = orders
        .get_or_create_consumer(
            "example-workers",
            pull::Config {
                durable_name: Some("example-workers".into()),
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 1024,
                ..Default::default()
            },
        )
        .await?;

    let started = Instant::now();
    let mut acks = Vec::with_capacity(1000);
    for i in 0..n {
        let subject = format!("example.orders.{}", i % 16);
        acks.push(js.publish(subject, format!("order {i}").into()).await?);
        if acks.len() == 1000 || i + 1 == n {
            // Stored once acked: the broker holds every order before the workers start.
            for ack in acks.drain(..) {
                ack.await?;
            }
        }
    }
    println!("published {n} orders in {:?}", started.elapsed());

    // The "database": stream sequences done. Inserting one twice changes nothing.
    let done: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let all_done = Arc::new(Notify::new());
    let work = {
        let (done, all_done) = (done.clone(), all_done.clone());
        move |msg: Message| {
            let (done, all_done) = (done.clone(), all_done.clone());
            async move {
                let info = msg.info().map_err(|e| e.to_string())?;
                let (seq, delivered) = (info.stream_sequence, info.delivered);
                if seq % 1000 == 0 && delivered == 1 {
                    return Err(format!("order at sequence {seq}: database busy"));
                }
                let mut done = done.lock().unwrap();
                done.insert(seq);
                if done.len() as u64 == n {
                    // `notify_one` keeps a permit if the stop future is not waiting yet.
                    all_done.notify_one();
                }
                Ok(())
            }
        }
    };
    if n == 0 {
        // Nothing to wait for: stop at once.
        all_done.notify_one();
    }
    let stop = async move { all_done.notified().await };

    let source = JetStreamSource::new(js.clone(), consumer)
        .retry(Retry::attempts(3).backoff(Duration::from_millis(100), Duration::from_secs(1)))
        .dead_letter("example.dead")
        .on_shed(Shed::Term)
        .fetch_wait(Duration::from_millis(250));
    let builder = Pipeline::builder(256, Policy::Block)
        .workers(8)
        .deadline(Duration::from_secs(5))
        .key_by(|m: &Message| m.subject.to_string());
    let started = Instant::now();
    let report = source
        .run(builder, TokioSpawner::current()?, stop, work)
        .await?;
    let elapsed = started.elapsed();
    // `run` returned once the broker had read the last ack and nak (`report.confirmed`).

    let distinct = done.lock().unwrap().len() as u64;
    let dead_letters = dead.clone().info().await?.state.messages;
    println!("{report}");
    println!("pipeline: {}", report.pipeline);
    println!(
        "processed {distinct} distinct orders of {n} in {elapsed:?} ({:.0} orders/s); \
         {dead_letters} dead letters stored",
        distinct as f64 / elapsed.as_secs_f64()
    );

    let mut failed = false;
    if !report.is_conserved() {
        eprintln!("check failed: the report is not conserved");
        failed = true;
    }
    if !report.confirmed {
        eprintln!("check failed: the broker did not confirm the last acks");
        failed = true;
    }
    if distinct != n {
        eprintln!("check failed: {distinct} distinct orders processed, {n} expected");
        failed = true;
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}

/// Gets or creates the stream `name` on `subjects`, and purges it so that a rerun starts
/// clean.
async fn stream_for(
    js: &jetstream::Context,
    name: &str,
    subjects: &str,
) -> Result<stream::Stream, BoxError> {
    let stream = js
        .get_or_create_stream(stream::Config {
            name: name.into(),
            subjects: vec![subjects.into()],
            ..Default::default()
        })
        .await?;
    stream.purge().await?;
    Ok(stream)
}
