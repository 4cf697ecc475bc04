//! The source against a real JetStream server (see `common`): back-pressure reaches the
//! broker, failures are nak'ed then dead-lettered, shed messages are settled as chosen,
//! shutdown naks what it hands back, and keyed lanes keep each subject's order.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::Message;
use backpressure_pipeline::{Pipeline, Policy, Retry, TokioSpawner};
use backpressure_pipeline_nats::{JetStreamSource, Shed, DEAD_LETTER_ERROR};
use common::{consumer, id, publish, stream, until, Server};
use futures_util::StreamExt;
use tokio::sync::{Notify, Semaphore};

const WAIT: Duration = Duration::from_secs(60);

/// A stalled pipeline holds exactly `capacity + workers + 1` messages (queue, workers, one
/// push waiting): the rest stay in the broker, however long it stalls. At shutdown the
/// queued ones and the one in hand are nak'ed, the stuck workers' ones left to `ack_wait`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_pipeline_leaves_the_messages_in_the_broker() {
    let server = Server::start().await;
    let js = server.jetstream().await;
    let s = stream(&js, "STALL").await;
    publish(&js, 5_000, |_| "STALL.x".into()).await;
    let consumer = consumer(&s, "stall", Duration::from_secs(30)).await;
    let stop = Arc::new(Notify::new());
    let run = tokio::spawn({
        let stop = stop.clone();
        let source = JetStreamSource::new(js.clone(), consumer.clone())
            .fetch_wait(Duration::from_millis(50));
        async move {
            let builder = Pipeline::builder(64, Policy::Block)
                .workers(2)
                .deadline(Duration::ZERO)
                .grace(Duration::ZERO);
            source
                .run(
                    builder,
                    TokioSpawner::current().unwrap(),
                    stop.notified(),
                    |_| std::future::pending::<Result<(), String>>(),
                )
                .await
        }
    });
    let mut info_consumer = consumer.clone();
    until(WAIT, "64 + 2 + 1 messages delivered", || {
        let mut c = info_consumer.clone();
        async move { c.info().await.unwrap().num_ack_pending == 67 }
    })
    .await;
    // Twenty more pull cycles: nothing more leaves the broker.
    tokio::time::sleep(Duration::from_millis(20 * 50)).await;
    let info = info_consumer.info().await.unwrap().clone();
    assert_eq!(info.num_ack_pending, 67, "{info:?}");
    assert_eq!(info.num_pending, 5_000 - 67, "{info:?}");
    assert_eq!(info.delivered.stream_sequence, 67, "{info:?}");
    stop.notify_one();
    let report = run.await.unwrap().unwrap();
    assert!(report.is_conserved(), "{report:?}");
    assert_eq!(
        (report.fetch_errors, report.confirmed),
        (0, true),
        "{report}"
    );
    assert_eq!(report.fetched, 67, "{report}");
    // 64 handed back + 1 refused by the closed pipeline, nak'ed; 2 lost in aborted workers.
    assert_eq!(report.left, 67, "{report}");
    assert_eq!(report.acked, 0, "{report}");
    assert_eq!(report.pipeline.lost_in_flight, 2, "{report:?}");
    // The nak'ed 65 are delivered again at once (well within `ack_wait`, 30 s), before
    // the rest of the stream; the 2 lost wait for `ack_wait`.
    let mut again = info_consumer
        .batch()
        .max_messages(65)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    let mut redelivered = 0;
    while let Some(msg) = again.next().await {
        let msg = msg.unwrap();
        assert_eq!(msg.info().unwrap().delivered, 2, "{:?}", msg.info());
        redelivered += 1;
    }
    assert_eq!(redelivered, 65);
}

/// A failing message is nak'ed until its last delivery, then dead-lettered and terminated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_nakd_then_dead_lettered() {
    let server = Server::start().await;
    let js = server.jetstream().await;
    let s = stream(&js, "FAIL").await;
    let dead = stream(&js, "FAILDEAD").await;
    // Even ids always fail; odd ids succeed.
    publish(&js, 100, |_| "FAIL.x".into()).await;
    let consumer = consumer(&s, "fail", Duration::from_secs(30)).await;
    let calls = Arc::new(Mutex::new(HashMap::<u64, u32>::new()));
    let stop = Arc::new(Notify::new());
    let run = tokio::spawn({
        let stop = stop.clone();
        let calls = calls.clone();
        let source = JetStreamSource::new(js.clone(), consumer)
            .retry(Retry::attempts(3).backoff(Duration::from_millis(1), Duration::from_millis(1)))
            .dead_letter("FAILDEAD.orders")
            .fetch_wait(Duration::from_millis(50));
        async move {
            let builder = Pipeline::builder(16, Policy::Block).workers(4);
            source
                .run(
                    builder,
                    TokioSpawner::current().unwrap(),
                    stop.notified(),
                    move |msg: Message| {
                        let calls = calls.clone();
                        async move {
                            let id = id(&msg);
                            *calls.lock().unwrap().entry(id).or_default() += 1;
                            match id % 2 {
                                0 => Err(format!("id {id} is even\nsecond line")),
                                _ => Ok(()),
                            }
                        }
                    },
                )
                .await
        }
    });
    let dead_info = dead.clone();
    until(WAIT, "50 dead letters", || {
        let mut d = dead_info.clone();
        async move { d.info().await.unwrap().state.messages == 50 }
    })
    .await;
    stop.notify_one();
    let report = run.await.unwrap().unwrap();
    assert!(report.is_conserved(), "{report:?}");
    assert_eq!(
        (report.fetch_errors, report.confirmed),
        (0, true),
        "{report}"
    );
    assert_eq!(
        (report.fetched, report.acked, report.nacked, report.termed),
        (200, 50, 100, 50),
        "{report}"
    );
    assert_eq!(report.dead_lettered, 50, "{report}");
    assert_eq!(report.redelivered, 100, "{report}");
    assert_eq!(report.pipeline.failed, 150, "{report:?}");
    {
        let calls = calls.lock().unwrap();
        assert_eq!(calls.len(), 100);
        assert!(
            calls
                .iter()
                .all(|(id, n)| *n == if id % 2 == 0 { 3 } else { 1 }),
            "{calls:?}"
        );
    }
    // The dead letter carries the error on one line, and the original payload.
    let letter = dead.get_raw_message(1).await.unwrap();
    let headers = letter.headers;
    let error = headers.get(DEAD_LETTER_ERROR).unwrap().as_str();
    assert!(error.ends_with("is even second line"), "{error}");
    assert_eq!(id_of(&letter.payload) % 2, 0);
}

fn id_of(payload: &[u8]) -> u64 {
    std::str::from_utf8(payload).unwrap().parse().unwrap()
}

/// Under `DropNewest`, what the full queue sheds is terminated (or acked), never left: the
/// broker does not redeliver it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shed_messages_are_terminated_or_acked() {
    for (name, shed) in [("SHEDTERM", Shed::Term), ("SHEDACK", Shed::Ack)] {
        let server = Server::start().await;
        let js = server.jetstream().await;
        let s = stream(&js, name).await;
        publish(&js, 200, |_| format!("{name}.x")).await;
        let consumer = consumer(&s, "shed", Duration::from_secs(30)).await;
        // One worker, held until 200 messages were fetched: the queue of 4 sheds the rest.
        let gate = Arc::new(Semaphore::new(0));
        let stop = Arc::new(Notify::new());
        let run = tokio::spawn({
            let stop = stop.clone();
            let gate = gate.clone();
            let source = JetStreamSource::new(js.clone(), consumer.clone())
                .on_shed(shed)
                .fetch_wait(Duration::from_millis(50));
            async move {
                let builder = Pipeline::builder(4, Policy::DropNewest).workers(1);
                source
                    .run(
                        builder,
                        TokioSpawner::current().unwrap(),
                        stop.notified(),
                        {
                            move |_msg: Message| {
                                let gate = gate.clone();
                                async move {
                                    gate.acquire().await.unwrap().forget();
                                    Ok::<(), String>(())
                                }
                            }
                        },
                    )
                    .await
            }
        });
        let mut c = consumer.clone();
        until(WAIT, "every message delivered once", || {
            let mut c = c.clone();
            async move { c.info().await.unwrap().delivered.stream_sequence == 200 }
        })
        .await;
        gate.add_permits(1_000);
        let c2 = consumer.clone();
        until(WAIT, "nothing pending", || {
            let mut c = c2.clone();
            async move {
                let info = c.info().await.unwrap();
                info.num_ack_pending == 0 && info.num_pending == 0
            }
        })
        .await;
        stop.notify_one();
        let report = run.await.unwrap().unwrap();
        assert!(report.is_conserved(), "{report:?}");
        assert_eq!(
            (report.fetch_errors, report.confirmed),
            (0, true),
            "{report}"
        );
        assert_eq!(
            (report.fetch_errors, report.confirmed),
            (0, true),
            "{report}"
        );
        assert_eq!(report.fetched, 200, "{report}");
        let shed_count = match shed {
            Shed::Term => (report.shed_termed, report.shed_acked),
            Shed::Ack => (report.shed_acked, report.shed_termed),
        };
        assert_eq!(shed_count, (report.pipeline.dropped, 0), "{report}");
        assert!(report.pipeline.dropped > 0, "{report:?}");
        assert_eq!(report.acked + report.pipeline.dropped, 200, "{report}");
        // Nothing comes back: every message was settled once.
        assert_eq!(c.info().await.unwrap().num_redelivered, 0);
    }
}

/// Keyed by subject, each subject's messages start in stream order within the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_by_subject_keeps_each_subjects_order() {
    let server = Server::start().await;
    let js = server.jetstream().await;
    let s = stream(&js, "KEYED").await;
    publish(&js, 2_000, |i| format!("KEYED.k{}", i % 7)).await;
    let consumer = consumer(&s, "keyed", Duration::from_secs(30)).await;
    let seen = Arc::new(Mutex::new(HashMap::<String, Vec<u64>>::new()));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(Notify::new());
    let run = tokio::spawn({
        let (stop, seen, done) = (stop.clone(), seen.clone(), done.clone());
        let source =
            JetStreamSource::new(js.clone(), consumer).fetch_wait(Duration::from_millis(50));
        async move {
            let builder = Pipeline::builder(32, Policy::Block)
                .workers(8)
                .key_by(|m: &Message| m.subject.to_string());
            source
                .run(
                    builder,
                    TokioSpawner::current().unwrap(),
                    stop.notified(),
                    move |msg: Message| {
                        let (seen, done) = (seen.clone(), done.clone());
                        async move {
                            let key = msg.subject.to_string();
                            seen.lock().unwrap().entry(key).or_default().push(id(&msg));
                            tokio::task::yield_now().await;
                            done.fetch_add(1, Ordering::Relaxed);
                            Ok::<(), String>(())
                        }
                    },
                )
                .await
        }
    });
    until(WAIT, "2000 processed", || {
        let done = done.clone();
        async move { done.load(Ordering::Relaxed) == 2_000 }
    })
    .await;
    stop.notify_one();
    let report = run.await.unwrap().unwrap();
    assert!(report.is_conserved(), "{report:?}");
    assert_eq!(
        (report.fetch_errors, report.confirmed),
        (0, true),
        "{report}"
    );
    assert_eq!((report.fetched, report.acked), (2_000, 2_000), "{report}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 7);
    for (key, ids) in seen.iter() {
        assert_eq!(
            ids.len(),
            2_000 / 7 + usize::from(key.as_str() < "KEYED.k5")
        );
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{key}: {ids:?}");
    }
}

/// A dead-letter subject that no stream captures is refused before anything is fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_subject_without_a_stream_is_refused() {
    let server = Server::start().await;
    let js = server.jetstream().await;
    let s = stream(&js, "NODEAD").await;
    publish(&js, 3, |_| "NODEAD.x".into()).await;
    let mut consumer = consumer(&s, "nodead", Duration::from_secs(30)).await;
    let err = JetStreamSource::new(js.clone(), consumer.clone())
        .dead_letter("nowhere.dead")
        .run(
            Pipeline::builder(4, Policy::Block),
            TokioSpawner::current().unwrap(),
            std::future::pending::<()>(),
            |_: Message| async { Ok::<(), String>(()) },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, backpressure_pipeline_nats::Error::DeadLetter { subject, .. } if subject == "nowhere.dead"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "no stream captures the dead-letter subject \"nowhere.dead\""
    );
    assert_eq!(consumer.info().await.unwrap().delivered.stream_sequence, 0);
}
