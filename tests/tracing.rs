//! With the `tracing` feature, shedding is logged once when it starts and once when it
//! stops, never once per item.

#![cfg(all(feature = "tracing", feature = "smol"))]

use std::fmt::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backpressure_pipeline::{CancellationToken, Pipeline, Policy, SmolSpawner};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Collects every event as one line of text.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl Subscriber for Lines {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut text = Text(format!("{} ", event.metadata().level()));
        event.record(&mut text);
        self.0.lock().unwrap().push(text.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[test]
fn shedding_is_logged_once_per_spell_not_per_item() {
    let lines = Lines::default();
    tracing::subscriber::with_default(lines.clone(), || {
        smol::block_on(async {
            let gate = CancellationToken::new();
            let (taken_tx, taken_rx) = async_channel::bounded(1);
            let pipeline = Pipeline::builder(1, Policy::DropNewest)
                .deadline(Duration::MAX)
                .spawn(SmolSpawner::new(), {
                    let gate = gate.clone();
                    move |_: u32| {
                        let (gate, taken_tx) = (gate.clone(), taken_tx.clone());
                        async move {
                            let _ = taken_tx.try_send(());
                            gate.cancelled().await;
                        }
                    }
                })
                .unwrap();
            assert!(pipeline.push(0).await.is_accepted());
            taken_rx.recv().await.unwrap();
            assert!(pipeline.try_push(1).is_accepted()); // fills the queue
            for id in 2..1002 {
                assert!(pipeline.try_push(id).is_dropped());
            }
            gate.cancel();
            let report = pipeline.shutdown().await;
            assert_eq!(report.dropped, 1000);
        })
    });
    let lines = lines.0.lock().unwrap();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].starts_with("WARN") && lines[0].contains("shedding started"),
        "{lines:#?}"
    );
    assert!(
        lines[1].contains("shedding stopped") && lines[1].contains("shed=1000"),
        "{lines:#?}"
    );
}
