//! Helpers for the tests of shedding by queue delay: a log of the items handed to
//! `on_expired`, and a one-worker pipeline whose worker waits at a gate (`gate.rs`) with
//! each item it takes.

use std::sync::{Arc, Mutex};

use backpressure_pipeline::{Expired, Pipeline, PipelineBuilder, Policy, PushOutcome};

use super::clock::ManualSpawner;
use super::gate::{gate, Gate};

/// The items handed to `on_expired`, with why, in order.
pub type ExpiredLog = Arc<Mutex<Vec<(u32, Expired)>>>;

pub fn expired_log() -> ExpiredLog {
    Arc::default()
}

/// An `on_expired` hook that appends to `log`.
pub fn recorder(log: &ExpiredLog) -> impl Fn(u32, Expired) + Send + Sync + 'static {
    let log = log.clone();
    move |id, why| log.lock().unwrap().push((id, why))
}

pub fn logged(log: &ExpiredLog) -> Vec<(u32, Expired)> {
    log.lock().unwrap().clone()
}

/// Waits until `log` holds `n` entries (the watchdog bounds the wait).
pub async fn until_logged(log: &ExpiredLog, n: usize) {
    while log.lock().unwrap().len() < n {
        super::yield_now().await;
    }
}

/// Pushes, expecting `Accepted`.
pub async fn accept(pipeline: &Pipeline<u32>, id: u32) {
    assert_eq!(pipeline.push(id).await, PushOutcome::Accepted, "item {id}");
}

/// A gated worker's pipeline: one worker, `Block`, on `spawner`, as `configure` sets it.
pub fn gated(
    spawner: ManualSpawner,
    capacity: usize,
    configure: impl FnOnce(PipelineBuilder<u32>) -> PipelineBuilder<u32>,
) -> (Pipeline<u32>, Gate<u32>) {
    let (gate, held) = gate();
    let builder = configure(Pipeline::builder(capacity, Policy::Block));
    let pipeline = builder
        .spawn(spawner, move |id: u32| {
            let held = held.clone();
            async move { held.hold(id).await }
        })
        .expect("a valid configuration");
    (pipeline, gate)
}
