//! Export through the `metrics` facade (feature `metrics`): a pipeline's counters and gauges
//! under documented names, for whatever recorder the application installed (Prometheus,
//! StatsD, ...). The crate has no exporter of its own.

use metrics::{counter, describe_counter, describe_gauge, gauge, Unit};

use crate::pressure::PressureLevel;
use crate::stats::Stats;

/// Every name this module records, with its unit and meaning (also in the docs of
/// [`Pipeline::record_metrics`](crate::Pipeline::record_metrics)).
const COUNTERS: [(&str, &str); 9] = [
    (
        "backpressure_pipeline_produced_total",
        "items pushed while open",
    ),
    (
        "backpressure_pipeline_processed_total",
        "items whose work succeeded",
    ),
    (
        "backpressure_pipeline_failed_total",
        "items whose work failed for good",
    ),
    (
        "backpressure_pipeline_dropped_total",
        "items shed or evicted by the policy",
    ),
    (
        "backpressure_pipeline_expired_total",
        "items shed at the exit for their queue delay",
    ),
    (
        "backpressure_pipeline_superseded_total",
        "waiting items replaced by a newer one of their key",
    ),
    (
        "backpressure_pipeline_panicked_total",
        "items whose work panicked",
    ),
    (
        "backpressure_pipeline_retried_total",
        "failed attempts tried again",
    ),
    (
        "backpressure_pipeline_restarts_total",
        "worker states rebuilt after a panic",
    ),
];

/// Describes the metrics to the current recorder, on every call: a recorder installed after
/// an earlier call gets them too (descriptions are idempotent in the facade).
fn describe() {
    {
        for (name, help) in COUNTERS {
            describe_counter!(name, Unit::Count, help);
        }
        describe_gauge!(
            "backpressure_pipeline_depth",
            Unit::Count,
            "items waiting in the queue"
        );
        describe_gauge!(
            "backpressure_pipeline_time_full_seconds",
            Unit::Seconds,
            "total time the queue has been full"
        );
        describe_gauge!(
            "backpressure_pipeline_oldest_age_seconds",
            Unit::Seconds,
            "queue delay of the oldest waiting item (stamped pipelines only)"
        );
        describe_gauge!(
            "backpressure_pipeline_queue_delay_p99_seconds",
            Unit::Seconds,
            "upper bound of the 99th percentile queue delay of served items, since the start"
        );
        describe_gauge!(
            "backpressure_pipeline_overloaded",
            Unit::Count,
            "1 while CoDel is in its dropping state, else 0"
        );
        describe_gauge!(
            "backpressure_pipeline_pressure_high",
            Unit::Count,
            "1 while the pressure level is high (watermarks), else 0"
        );
    }
}

/// Records `stats` (and the pressure level, if watched) under the label `pipeline = name`.
pub(crate) fn record(name: &str, stats: &Stats, pressure: Option<PressureLevel>) {
    describe();
    let values = [
        stats.produced,
        stats.processed,
        stats.failed,
        stats.dropped,
        stats.expired,
        stats.superseded,
        stats.panicked,
        stats.retried,
        stats.restarts,
    ];
    let labels = [("pipeline", name.to_owned())];
    for ((metric, _), value) in COUNTERS.iter().zip(values) {
        counter!(*metric, &labels).absolute(value);
    }
    gauge!("backpressure_pipeline_depth", &labels).set(stats.depth as f64);
    gauge!("backpressure_pipeline_time_full_seconds", &labels).set(stats.time_full.as_secs_f64());
    if let Some(age) = stats.oldest_age {
        gauge!("backpressure_pipeline_oldest_age_seconds", &labels).set(age.as_secs_f64());
    }
    if let Some(p99) = stats.queue_delay.and_then(|delays| delays.quantile(0.99)) {
        gauge!("backpressure_pipeline_queue_delay_p99_seconds", &labels).set(p99.as_secs_f64());
    }
    gauge!("backpressure_pipeline_overloaded", &labels).set(f64::from(u8::from(stats.overloaded)));
    if let Some(level) = pressure {
        gauge!("backpressure_pipeline_pressure_high", &labels)
            .set(f64::from(u8::from(level.is_high())));
    }
}
