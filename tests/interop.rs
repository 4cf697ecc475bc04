//! The queue on its own, as a `futures` Stream and Sink, and in batches; on every runtime.

mod common;

use std::sync::Arc;

use backpressure_pipeline::{Policy, Queue};
use common::Sp;
use futures_util::{SinkExt, StreamExt};

async fn stream_and_sink_compose(sp: Sp) {
    // A producer task sends 1000 items through the Sink into a queue of 8 (Block: the
    // sink's readiness is the back-pressure); the consumer reads them through the Stream.
    let queue = Arc::new(Queue::new(8, Policy::Block).unwrap());
    let producer = common::spawn(&sp, {
        let mut sink = queue.clone().into_sink();
        async move {
            let mut items = futures_util::stream::iter((0..1000u32).map(Ok));
            sink.send_all(&mut items)
                .await
                .expect("Block accepts every item");
            sink.close().await.expect("nothing pending");
        }
    });
    let received: Vec<u32> = queue.clone().into_stream().collect().await;
    producer.await.unwrap();
    assert_eq!(received, (0..1000).collect::<Vec<_>>());
    assert!(queue.is_closed());
}

async fn sink_hands_back_shed_items(sp: Sp) {
    let _ = sp;
    let queue = Arc::new(Queue::new(2, Policy::DropOldest).unwrap());
    let (evicted, handed_back) = std::sync::mpsc::channel();
    let mut sink = queue
        .clone()
        .into_sink()
        .on_shed(move |item| evicted.send(item).unwrap());
    sink.send(1).await.unwrap();
    sink.send(2).await.unwrap();
    // Accepted, with the oldest evicted and handed to the hook: the send goes on.
    sink.send(3).await.unwrap();
    assert_eq!(handed_back.try_recv(), Ok(1));
    queue.close();
    let err = sink.send(4).await.unwrap_err();
    assert!(err.is_closed());
    let left: Vec<u32> = queue.clone().into_stream().collect().await;
    assert_eq!(left, [2, 3]);
}

async fn pop_many_takes_batches(sp: Sp) {
    // Consumers taking batches of up to 16 see every item exactly once, in order per batch.
    let queue = Arc::new(Queue::new(32, Policy::Block).unwrap());
    let consumers: Vec<_> = (0..3)
        .map(|_| {
            let queue = queue.clone();
            common::spawn(&sp, async move {
                let mut seen = Vec::new();
                loop {
                    let batch = queue.pop_many(16).await;
                    if batch.is_empty() {
                        return seen;
                    }
                    assert!(batch.len() <= 16);
                    assert!(batch.windows(2).all(|w| w[0] < w[1]), "a batch is in order");
                    seen.extend(batch);
                }
            })
        })
        .collect();
    for i in 0..5000u32 {
        assert!(queue.push(i).await.is_accepted());
    }
    queue.close();
    let mut all = Vec::new();
    for consumer in consumers {
        all.extend(consumer.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (0..5000).collect::<Vec<_>>());
    assert!(queue.pop_many(0).await.is_empty());
}

on_every_runtime!(
    stream_and_sink_compose,
    sink_hands_back_shed_items,
    pop_many_takes_batches
);
