//! The `metrics` feature: what `Pipeline::record_metrics` publishes, read back from the
//! `metrics-util` debugging recorder, against the pipeline's own report.

#![cfg(feature = "metrics")]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use backpressure_pipeline::{Pipeline, Policy, PushOutcome};
use common::clock::ManualSpawner;
use common::gate::gate;
use common::Sp;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

/// Records once into a fresh recorder and returns `(name, label) -> value`.
fn recorded(pipeline: &Pipeline<u32>) -> HashMap<(String, String), f64> {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || pipeline.record_metrics());
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let label = key
                .key()
                .labels()
                .map(|label| format!("{}={}", label.key(), label.value()))
                .collect::<Vec<_>>()
                .join(",");
            let value = match value {
                DebugValue::Counter(count) => count as f64,
                DebugValue::Gauge(gauge) => gauge.into_inner(),
                DebugValue::Histogram(_) => panic!("no histogram is exported"),
            };
            ((key.key().name().to_owned(), label), value)
        })
        .collect()
}

async fn record_metrics_publishes_the_counters_under_the_pipelines_name(sp: Sp) {
    let (spawner, clock) = ManualSpawner::new(sp);
    let (gate, held) = gate();
    let pipeline = Pipeline::builder(4, Policy::DropNewest)
        .name("ingest")
        .max_age(Duration::from_millis(10))
        .watermarks(3, 1)
        .spawn(spawner, move |id: u32| {
            let held = held.clone();
            async move { held.hold(id).await }
        })
        .unwrap();
    assert_eq!(pipeline.push(0).await, PushOutcome::Accepted);
    assert_eq!(gate.next().await, 0);
    for id in 1..=6 {
        let _ = pipeline.push(id).await; // 1..=4 queued, 5 and 6 shed
    }
    clock.advance(Duration::from_millis(20));
    let live = recorded(&pipeline);
    let get = |name: &str| live[&(name.to_owned(), "pipeline=ingest".to_owned())];
    assert_eq!(get("backpressure_pipeline_produced_total"), 7.0);
    assert_eq!(get("backpressure_pipeline_dropped_total"), 2.0);
    assert_eq!(get("backpressure_pipeline_depth"), 4.0);
    assert_eq!(get("backpressure_pipeline_oldest_age_seconds"), 0.02);
    assert_eq!(get("backpressure_pipeline_pressure_high"), 1.0);
    assert_eq!(get("backpressure_pipeline_overloaded"), 0.0);
    gate.open(); // 1..=4 are 20 ms old: expired
    let report = pipeline.shutdown().await;
    assert!(report.is_conserved(), "{report}");
    let last = recorded(&pipeline);
    let get = |name: &str| last[&(name.to_owned(), "pipeline=ingest".to_owned())];
    assert_eq!(
        get("backpressure_pipeline_processed_total"),
        report.processed as f64
    );
    assert_eq!(
        get("backpressure_pipeline_expired_total"),
        report.expired as f64
    );
    assert_eq!(report.expired, 4, "{report}");
    assert_eq!(get("backpressure_pipeline_depth"), 0.0);
}

on_every_runtime!(record_metrics_publishes_the_counters_under_the_pipelines_name);
