//! Bad configuration gets a clear error at the boundary; edge values work, on every runtime.

mod common;

use std::time::Duration;

use backpressure_pipeline::{BuildError, ConfigError, Pipeline, PipelineBuilder, Policy, Queue};
use common::Sp;

async fn bad_configuration_is_a_clear_error(sp: Sp) {
    let build = |capacity, workers| {
        Pipeline::builder(capacity, Policy::Block)
            .workers(workers)
            .spawn(sp.clone(), |_: u8| async {})
            .map(drop)
    };
    assert_eq!(
        build(0, 1),
        Err(BuildError::Config(ConfigError::ZeroCapacity))
    );
    assert_eq!(
        build(1, 0),
        Err(BuildError::Config(ConfigError::ZeroWorkers))
    );
    assert_eq!(
        build(Queue::<u8>::MAX_CAPACITY + 1, 1),
        Err(BuildError::Config(ConfigError::CapacityTooLarge))
    );
    assert_eq!(
        build(1, PipelineBuilder::<u8>::MAX_WORKERS + 1),
        Err(BuildError::Config(ConfigError::TooManyWorkers))
    );
    assert_eq!(
        build(0, 1).unwrap_err().to_string(),
        "invalid configuration: capacity must be at least 1"
    );
    assert_eq!(
        build(1, 0).unwrap_err().to_string(),
        "invalid configuration: a pipeline needs at least one worker"
    );
    let source = std::error::Error::source(&build(0, 1).unwrap_err()).map(|e| e.to_string());
    assert_eq!(source.as_deref(), Some("capacity must be at least 1"));
}

async fn edge_configurations_work(sp: Sp) {
    // Capacity 1, a huge capacity (allocated lazily), many workers, a huge deadline.
    for (capacity, workers) in [(1, 1), (Queue::<u8>::MAX_CAPACITY, 2), (4, 1000)] {
        let pipeline = Pipeline::builder(capacity, Policy::Block)
            .workers(workers)
            .deadline(Duration::MAX)
            .grace(Duration::MAX)
            .spawn(sp.clone(), |_: u32| async {})
            .unwrap();
        for id in 0..50 {
            assert!(pipeline.push(id).await.is_accepted());
        }
        let report = pipeline.shutdown().await;
        assert_eq!((report.produced, report.processed), (50, 50), "{report}");
        assert_eq!(report.workers_joined, workers, "{report}");
        assert!(report.is_conserved() && report.all_joined(), "{report}");
    }
}

on_every_runtime!(bad_configuration_is_a_clear_error, edge_configurations_work);
