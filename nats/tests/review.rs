//! An adversarial review of the source against a real JetStream server (see `common`).
//! Every stream is named `REV...`. A test marked `// Was a fault, fixed:` failed on the
//! source as first written; each is fixed in `src/lib.rs` and pinned here.

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, Message};
use backpressure_pipeline::TokioSpawner;
use backpressure_pipeline::{OnPanic, Pipeline, PipelineBuilder, Policy, Retry, StopCause};
use backpressure_pipeline_nats::{
    Error, JetStreamSource, Report, Shed, DEAD_LETTER_ERROR, DEAD_LETTER_SEQUENCE,
    DEAD_LETTER_SUBJECT,
};
use common::{consumer, id, publish, stream, until, Server};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(10);

/// Runs `source` on a task until `stop` is notified.
fn spawn_run<F, Fut>(
    source: JetStreamSource,
    builder: PipelineBuilder<Message>,
    stop: Arc<Notify>,
    work: F,
) -> JoinHandle<Result<Report, Error>>
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    tokio::spawn(async move {
        source
            .run(
                builder,
                TokioSpawner::current().unwrap(),
                async move { stop.notified().await },
                work,
            )
            .await
    })
}

async fn info(c: &PullConsumer) -> jetstream::consumer::Info {
    let mut c = c.clone();
    c.info().await.unwrap().clone()
}

async fn wait_ack_pending(c: &PullConsumer, n: usize, what: &str) {
    until(WAIT, what, || {
        let c = c.clone();
        async move { info(&c).await.num_ack_pending == n }
    })
    .await;
}

async fn wait_all_settled(c: &PullConsumer) {
    until(WAIT, "nothing pending", || {
        let c = c.clone();
        async move {
            let i = info(&c).await;
            i.num_ack_pending == 0 && i.num_pending == 0
        }
    })
    .await;
}

/// Fetches what the stream still holds for the consumer (`max` at most, with a short pull:
/// the nak'ed ones come back at once, the lost ones only after `ack_wait`): how many came,
/// and how many of those on their second delivery.
async fn fetch_rest(c: &PullConsumer, max: usize) -> (usize, usize) {
    use futures_util::StreamExt;
    let mut batch = c
        .batch()
        .max_messages(max)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    let (mut n, mut again) = (0, 0);
    while let Some(msg) = batch.next().await {
        let msg = msg.unwrap();
        n += 1;
        if msg.info().unwrap().delivered == 2 {
            again += 1;
        }
    }
    (n, again)
}

/// Polls `cond` for `within`; whether it came to hold (does not fail).
async fn holds_within<F, Fut>(within: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return true;
        }
        if start.elapsed() > within {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A stop while the fetcher's push waits on a full `Block` queue (and the worker is stuck,
/// deadline zero): the push returns the message, which is nak'ed with the queued ones; the
/// worker's message is lost in flight (left to `ack_wait`); nothing is acked; `run` ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rev_stop_while_push_waits_on_a_full_block_queue() {
    let server = Server::start().await;
    let js = server.jetstream().await;
    let s = stream(&js, "REVBLOCK").await;
    publish(&js, 10, |_| "REVBLOCK.x".into()).await;
    let c = consumer(&s, "revblock", Duration::from_secs(30)).await;
    let stop = Arc::new(Notify::new());
    let source = JetStreamSource::new(js.clone(), c.clone()).fetch_wait(Duration::from_millis(50));
    let builder = Pipeline::builder(2, Policy::Block)
        .workers(1)
        .deadline(Duration::ZERO)
        .grace(Duration::ZERO);
    let run = spawn_run(source, builder, stop.clone(), |_| {
        std::future::pending::<Result<(), String>>()
    });
    // 2 queued + 1 in the worker + 1 in the waiting push.
    wait_ack_pending(&c, 4, "4 delivered").await;
    let stopped = Instant::now();
    stop.notify_one();
    let report = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("run ends after stop")
        .unwrap()
        .unwrap();
    assert!(
        stopped.elapsed() < Duration::from_secs(3),
        "{:?}",
        stopped.elapsed()
    );
    assert!(report.is_conserved(), "{report:?}");
    assert_eq!(
        (report.fetched, report.acked, report.left),
        (4, 0, 4),
        "{report}"
    );
    assert_eq!(report.pipeline.handed_back, 2, "{report:?}");
    assert_eq!(report.pipeline.lost_in_flight, 1, "{report:?}");
    // The 3 nak'ed ones come back at once; the lost one waits for ack_wait (30 s).
    // 6 never delivered + 3 nak'ed.
    assert_eq!(fetch_rest(&c, 10).await, (9, 3));
}

/// A stop while a pull request waits at the broker (an empty stream): `run` ends within
/// about `fetch_wait`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rev_stop_while_a_pull_request_waits() {
    let server = Server::start().await;
    let js = server.jetstream().await;
    let s = stream(&js, "REVIDLE").await;
    let c = consumer(&s, "revidle", Duration::from_secs(30)).await;
    let stop = Arc::new(Notify::new());
    let source = JetStreamSource::new(js.clone(), c.clone()).fetch_wait(Duration::from_millis(300));
    let builder = Pipeline::builder(4, Policy::Block).workers(1);
    let run = spawn_run(source, builder, stop.clone(), |_| async { Ok(()) });
    until(WAIT, "a pull request waiting", || {
        let c = c.clone();
        async move { info(&c).await.num_waiting >= 1 }
    })
    .await;
    let stopped = Instant::now();
    stop.notify_one();
    let report = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("run ends after stop")
        .unwrap()
        .unwrap();
    assert!(
        stopped.elapsed() < Duration::from_millis(300 + 1_000),
        "{:?}",
        stopped.elapsed()
    );
    assert!(report.is_conserved(), "{report:?}");
    assert_eq!(report.fetched, 0, "{report}");
}

/// Under `DropOldest`, each evicted message is settled as `Shed` says (acked here), the rest
/// acked after their work: nothing is redelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rev_drop_oldest_evictions_are_settled() {
    let server = Server::start().await;
    let js = server.jetstream().await;
    let s = stream(&js, "REVOLD").await;
    publish(&js, 10, |_| "REVOLD.x".into()).await;
    let c = consumer(&s, "revold", Duration::from_secs(30)).await;
    let gate = Arc::new(Semaphore::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(Notify::new());
    let source = JetStreamSource::new(js.clone(), c.clone())
        .on_shed(Shed::Ack)
        .fetch_wait(Duration::from_millis(50));
    let builder = Pipeline::builder(2, Policy::DropOldest).workers(1);
    let run = spawn_run(source, builder, stop.clone(), {
        let (gate, seen) = (gate.clone(), seen.clone());
        move |msg| {
            let (gate, seen) = (gate.clone(), seen.clone());
            async move {
                gate.acquire().await.unwrap().forget();
                seen.lock().unwrap().push(id(&msg));
                Ok(())
            }
        }
    });
    until(WAIT, "all 10 delivered, 3 held", || {
        let c = c.clone();
        async move {
            let i = info(&c).await;
            i.delivered.stream_sequence == 10 && i.num_ack_pending == 3
        }
    })
    .await;
    gate.add_permits(100);
    wait_all_settled(&c).await;
    stop.notify_one();
    let report = run.await.unwrap().unwrap();
    assert!(report.is_conserved(), "{report:?}");
    assert_eq!(
        (
            report.fetched,
            report.acked,
            report.shed_acked,
            report.shed_termed
        ),
        (10, 3, 7, 0),
        "{report}"
    );
    assert_eq!(report.pipeline.dropped, 7, "{report:?}");
    // The first (in the worker) and the two newest.
    assert_eq!(*seen.lock().unwrap(), vec![0, 8, 9]);
    assert_eq!(info(&c).await.num_redelivered, 0);
}

// Was a fault, fixed: expired messages went into an unbounded channel whose settler is first polled after shutdown (lib.rs:246, 279-283, 314-316, `run`): unsettled (and unbounded) for the whole run
/// Messages past `max_age` are shed at the queue's exit and terminated (`Shed::Term`) as
/// they are shed, not only when the run ends: otherwise they pass `ack_wait` and are
/// redelivered, and the channel holding them grows without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rev_max_age_expired_messages_are_settled_while_running() {
    let server = Server::start().await;
    let js = server.jetstream().await;
    let s = stream(&js, "REVAGE").await;
    publish(&js, 5, |_| "REVAGE.x".into()).await;
    let c = consumer(&s, "revage", Duration::from_secs(30)).await;
    let gate = Arc::new(Semaphore::new(0));
    let stop = Arc::new(Notify::new());
    let source = JetStreamSource::new(js.clone(), c.clone())
        .on_shed(Shed::Term)
        .fetch_wait(Duration::from_millis(50));
    let max_age = Duration::from_millis(30);
    let builder = Pipeline::builder(4, Policy::Block)
        .workers(1)
        .max_age(max_age);
    let run = spawn_run(source, builder, stop.clone(), {
        let gate = gate.clone();
        move |_| {
            let gate = gate.clone();
            async move {
                gate.acquire().await.unwrap().forget();
                Ok(())
            }
        }
    });
    // 1 in the worker, 4 queued.
    wait_ack_pending(&c, 5, "5 delivered").await;
    // Let the queued ones age past `max_age` (a TTL: time itself is the condition).
    tokio::time::sleep(max_age * 5).await;
    gate.add_permits(100);
    // The worker acks its message, then pops the 4 queued ones: all expired.
    let settled_while_running = holds_within(Duration::from_secs(5), || {
        let c = c.clone();
        async move { info(&c).await.num_ack_pending == 0 }
    })
    .await;
    let pending_before_stop = info(&c).await.num_ack_pending;
    stop.notify_one();
    let report = run.await.unwrap().unwrap();
    assert!(report.is_conserved(), "{report:?}");
    assert_eq!(
        (report.fetched, report.acked, report.shed_termed),
        (5, 1, 4),
        "{report}"
    );
    assert_eq!(report.pipeline.expired, 4, "{report:?}");
    assert!(
        settled_while_running,
        "the expired messages were still unsettled 5 s after they expired \
         ({pending_before_stop} pending an ack), settled only at shutdown"
    );
}

/// Coalescing by subject: a waiting message replaced by a newer one of its key is acked
/// (superseded); the workers see the first and the latest only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rev_coalesced_messages_are_acked_as_superseded() {
    let server = Server::start().await;
    let js = server.jetstream().await;
    let s = stream(&js, "REVCOAL").await;
    publish(&js, 10, |_| "REVCOAL.k".into()).await;
    let c = consumer(&s, "revcoal", Duration::from_secs(30)).await;
    let gate = Arc::new(Semaphore::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(Notify::new());
    let source = JetStreamSource::new(js.clone(), c.clone()).fetch_wait(Duration::from_millis(50));
    let builder = Pipeline::builder(4, Policy::Block)
        .workers(2)
        .key_by(|m: &Message| m.subject.to_string())
        .coalesce();
    let run = spawn_run(source, builder, stop.clone(), {
        let (gate, seen) = (gate.clone(), seen.clone());
        move |msg| {
            let (gate, seen) = (gate.clone(), seen.clone());
            async move {
                seen.lock().unwrap().push(id(&msg));
                gate.acquire().await.unwrap().forget();
                Ok(())
            }
        }
    });
    // 1 running, 1 waiting; the 8 others superseded and acked.
    until(WAIT, "all 10 delivered, 2 held", || {
        let c = c.clone();
        async move {
            let i = info(&c).await;
            i.delivered.stream_sequence == 10 && i.num_ack_pending == 2
        }
    })
    .await;
    gate.add_permits(100);
    wait_all_settled(&c).await;
    stop.notify_one();
    let report = run.await.unwrap().unwrap();
    assert!(report.is_conserved(), "{report:?}");
    assert_eq!(
        (report.fetched, report.acked, report.superseded),
        (10, 2, 8),
        "{report}"
    );
    assert_eq!(report.pipeline.superseded, 8, "{report:?}");
    // The first taken (whichever the worker popped before a newer one replaced it), then
    // the latest.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0] < 9 && seen[1] == 9, "{seen:?}");
    assert_eq!(info(&c).await.num_redelivered, 0);
}

/// A work future that panics: its message is not acked (counted in `left`, redelivered after
/// `ack_wait`); the others are acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rev_a_panicking_work_is_not_acked() {
    let server = Server::start().await;
    let js = server.jetstream().await;
    let s = stream(&js, "REVPANIC").await;
    publish(&js, 5, |_| "REVPANIC.x".into()).await;
    let c = consumer(&s, "revpanic", Duration::from_secs(30)).await;
    let stop = Arc::new(Notify::new());
    let done = Arc::new(AtomicU64::new(0));
    let source = JetStreamSource::new(js.clone(), c.clone()).fetch_wait(Duration::from_millis(50));
    let builder = Pipeline::builder(4, Policy::Block).workers(1);
    let run = spawn_run(source, builder, stop.clone(), {
        let done = done.clone();
        move |msg| {
            let done = done.clone();
            async move {
                done.fetch_add(1, Ordering::SeqCst);
                assert_ne!(id(&msg), 2, "a panic in the work");
                Ok(())
            }
        }
    });
    until(WAIT, "5 worked on, 4 acked", || {
        let (c, done) = (c.clone(), done.clone());
        async move {
            let i = info(&c).await;
            done.load(Ordering::SeqCst) == 5 && i.num_ack_pending == 1 && i.num_pending == 0
        }
    })
    .await;
    stop.notify_one();
    let report = run.await.unwrap().unwrap();
    assert!(report.is_conserved(), "{report:?}");
    assert_eq!(
        (report.fetched, report.acked, report.left),
        (5, 4, 1),
        "{report}"
    );
    assert_eq!(report.pipeline.panicked, 1, "{report:?}");
    // Still pending: never acked, nor nak'ed.
    assert_eq!(info(&c).await.num_ack_pending, 1);
}

/// `OnPanic::StopPipeline`: the pipeline stops by itself, and `run` ends without its `stop`
/// (which never completes here); everything fetched is settled or left, the queued and
/// refused ones nak'ed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rev_a_pipeline_stopped_by_a_panic_ends_run() {
    let server = Server::start().await;
    let js = server.jetstream().await;
    let s = stream(&js, "REVSTOPP").await;
    publish(&js, 20, |_| "REVSTOPP.x".into()).await;
    let c = consumer(&s, "revstopp", Duration::from_secs(30)).await;
    let gate = Arc::new(Semaphore::new(0));
    let source = JetStreamSource::new(js.clone(), c.clone()).fetch_wait(Duration::from_millis(50));
    let builder = Pipeline::builder(8, Policy::Block)
        .workers(1)
        .on_panic(OnPanic::StopPipeline);
    let run = tokio::spawn({
        let gate = gate.clone();
        async move {
            source
                .run(
                    builder,
                    TokioSpawner::current().unwrap(),
                    std::future::pending::<()>(),
                    move |_msg: Message| {
                        let gate = gate.clone();
                        async move {
                            gate.acquire().await.unwrap().forget();
                            panic!("the first message panics");
                            #[allow(unreachable_code)]
                            Ok::<(), String>(())
                        }
                    },
                )
                .await
        }
    });
    wait_ack_pending(&c, 10, "8 queued + 1 worker + 1 in hand").await;
    gate.add_permits(1);
    let report = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("run ends when the pipeline stops by itself")
        .unwrap()
        .unwrap();
    assert!(report.is_conserved(), "{report:?}");
    assert_eq!(report.pipeline.cause, StopCause::Panic, "{report:?}");
    assert_eq!(
        (report.fetched, report.acked, report.left),
        (10, 0, 10),
        "{report}"
    );
    assert_eq!(report.pipeline.panicked, 1, "{report:?}");
    // The 9 nak'ed ones come back at once; the panicked one waits for ack_wait.
    // 10 never delivered + 9 nak'ed.
    assert_eq!(fetch_rest(&c, 20).await, (19, 9));
}

/// `Retry::attempts(1)`: the first failure is final: dead-lettered then terminated, never
/// nak'ed; the dead letter carries the headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rev_a_single_attempt_terminates_and_dead_letters_at_once() {
    let server = Server::start().await;
    let js = server.jetstream().await;
    let s = stream(&js, "REVONE").await;
    let dead = stream(&js, "REVONEDEAD").await;
    publish(&js, 4, |i| format!("REVONE.k{i}")).await;
    let c = consumer(&s, "revone", Duration::from_secs(30)).await;
    let calls = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(Notify::new());
    let source = JetStreamSource::new(js.clone(), c.clone())
        .retry(Retry::attempts(1))
        .dead_letter("REVONEDEAD.x")
        .fetch_wait(Duration::from_millis(50));
    let builder = Pipeline::builder(4, Policy::Block).workers(2);
    let run = spawn_run(source, builder, stop.clone(), {
        let calls = calls.clone();
        move |msg| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { Err(format!("fails {}", id(&msg))) }
        }
    });
    until(WAIT, "4 dead letters", || {
        let dead = dead.clone();
        async move { dead.clone().info().await.unwrap().state.messages == 4 }
    })
    .await;
    wait_all_settled(&c).await;
    stop.notify_one();
    let report = run.await.unwrap().unwrap();
    assert!(report.is_conserved(), "{report:?}");
    assert_eq!(
        (
            report.fetched,
            report.nacked,
            report.termed,
            report.dead_lettered
        ),
        (4, 0, 4, 4),
        "{report}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(info(&c).await.num_redelivered, 0);
    let letter = dead.get_raw_message(1).await.unwrap();
    let h = letter.headers;
    let seq: u64 = h
        .get(DEAD_LETTER_SEQUENCE)
        .unwrap()
        .as_str()
        .parse()
        .unwrap();
    let subject = h.get(DEAD_LETTER_SUBJECT).unwrap().as_str().to_owned();
    assert_eq!(subject, format!("REVONE.k{}", seq - 1));
    assert_eq!(
        h.get(DEAD_LETTER_ERROR).unwrap().as_str(),
        format!("fails {}", seq - 1)
    );
}

/// The `delivered` count reaches the work (1, 2, 3), each failure is nak'ed with
/// `Retry::delay(delivered)`, and the last one terminates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rev_naks_carry_the_delay_of_the_delivery_count() {
    let server = Server::start().await;
    let js = server.jetstream().await;
    let s = stream(&js, "REVDELAY").await;
    publish(&js, 1, |_| "REVDELAY.x".into()).await;
    let c = consumer(&s, "revdelay", Duration::from_secs(30)).await;
    let deliveries = Arc::new(Mutex::new(Vec::<(u64, Instant)>::new()));
    let stop = Arc::new(Notify::new());
    let retry = Retry::attempts(3)
        .backoff(Duration::from_millis(300), Duration::from_secs(5))
        .jitter(false);
    assert_eq!(retry.delay(1), Duration::from_millis(300));
    assert_eq!(retry.delay(2), Duration::from_millis(600));
    let source = JetStreamSource::new(js.clone(), c.clone())
        .retry(retry)
        .fetch_wait(Duration::from_millis(50));
    let builder = Pipeline::builder(4, Policy::Block).workers(1);
    let run = spawn_run(source, builder, stop.clone(), {
        let deliveries = deliveries.clone();
        move |msg| {
            let delivered = msg.info().unwrap().delivered as u64;
            deliveries.lock().unwrap().push((delivered, Instant::now()));
            async { Err("always".to_owned()) }
        }
    });
    wait_all_settled(&c).await;
    until(WAIT, "3 deliveries", || {
        let d = deliveries.clone();
        async move { d.lock().unwrap().len() == 3 }
    })
    .await;
    stop.notify_one();
    let report = run.await.unwrap().unwrap();
    assert!(report.is_conserved(), "{report:?}");
    assert_eq!(
        (
            report.fetched,
            report.nacked,
            report.termed,
            report.dead_lettered
        ),
        (3, 2, 1, 0),
        "{report}"
    );
    let d = deliveries.lock().unwrap();
    assert_eq!(d.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    let gap1 = d[1].1 - d[0].1;
    let gap2 = d[2].1 - d[1].1;
    assert!(gap1 >= Duration::from_millis(280), "{gap1:?}");
    assert!(gap2 >= Duration::from_millis(580), "{gap2:?}");
    assert!(gap2 < Duration::from_secs(3), "{gap2:?}");
}

// Was a fault, fixed: the dead letter copied every header of the original, JetStream publish controls too (lib.rs:590, `publish_dead_letter`): `Nats-Expected-Stream` fails the publish, so the message is nak'ed forever
/// A message published with JetStream's publish-control headers (here
/// `Nats-Expected-Stream`, as a careful publisher sets) fails its last attempt: it is
/// dead-lettered and terminated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rev_dead_letter_of_a_message_with_publish_control_headers() {
    let server = Server::start().await;
    let js = server.jetstream().await;
    let s = stream(&js, "REVDLH").await;
    let dead = stream(&js, "REVDLHDEAD").await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Expected-Stream", "REVDLH");
    headers.insert("Nats-Msg-Id", "rev-dlh-1");
    headers.insert("Trace-Id", "t-1");
    js.publish_with_headers("REVDLH.x", headers, "00000000".into())
        .await
        .unwrap()
        .await
        .expect("stored");
    let c = consumer(&s, "revdlh", Duration::from_secs(30)).await;
    let calls = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(Notify::new());
    let source = JetStreamSource::new(js.clone(), c.clone())
        .retry(Retry::attempts(1).backoff(Duration::from_millis(10), Duration::from_millis(10)))
        .dead_letter("REVDLHDEAD.x")
        .fetch_wait(Duration::from_millis(50));
    let builder = Pipeline::builder(4, Policy::Block).workers(1);
    let run = spawn_run(source, builder, stop.clone(), {
        let calls = calls.clone();
        move |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err("always".to_owned()) }
        }
    });
    let dead_lettered = holds_within(Duration::from_secs(5), || {
        let dead = dead.clone();
        async move { dead.clone().info().await.unwrap().state.messages == 1 }
    })
    .await;
    stop.notify_one();
    let report = run.await.unwrap().unwrap();
    assert!(report.is_conserved(), "{report:?}");
    assert!(
        dead_lettered,
        "no dead letter after 5 s; {} attempts; {report}",
        calls.load(Ordering::SeqCst)
    );
    assert_eq!(
        (
            report.fetched,
            report.termed,
            report.dead_lettered,
            report.nacked
        ),
        (1, 1, 1, 0),
        "{report}"
    );
    // The user's headers are kept; the publish controls are the dead letter's own.
    let letter = dead.get_raw_message(1).await.unwrap();
    let h = letter.headers;
    assert_eq!(h.get("Trace-Id").map(|v| v.as_str()), Some("t-1"));
    // Names parsed from the wire are async-nats's standard ones, found by these constants.
    assert_eq!(h.get(async_nats::header::NATS_EXPECTED_STREAM), None);
    assert_eq!(
        h.get(async_nats::header::NATS_MESSAGE_ID)
            .map(|v| v.as_str()),
        Some("dead:REVDLH:1")
    );
}

/// `Retry::attempts(0)` is refused before anything is fetched, as the pipeline refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rev_zero_attempts_are_refused() {
    let server = Server::start().await;
    let js = server.jetstream().await;
    let s = stream(&js, "REVZERO").await;
    publish(&js, 2, |_| "REVZERO.x".into()).await;
    let c = consumer(&s, "revzero", Duration::from_secs(30)).await;
    let source = JetStreamSource::new(js.clone(), c.clone()).retry(Retry::attempts(0));
    let err = source
        .run(
            Pipeline::builder(4, Policy::Block),
            TokioSpawner::current().unwrap(),
            std::future::pending::<()>(),
            |_msg: Message| async { Ok::<(), String>(()) },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Build(backpressure_pipeline::BuildError::Config(
                backpressure_pipeline::ConfigError::ZeroAttempts
            ))
        ),
        "{err:?}"
    );
    let i = info(&c).await;
    assert_eq!((i.num_pending, i.num_ack_pending), (2, 0));
}

// Was a fault, fixed: `run` awaited the settler, which ended only when the `on_expired` sender goes; an unresponsive worker holds the pipeline's shared state, hook included (lib.rs:254-258, 315-316), so `run` hangs while it is blocked
/// A worker blocked in synchronous code: shutdown names it unresponsive after
/// deadline + grace + `unresponsive_after`, and `run` returns then ("no hang on stop"),
/// its message left to `ack_wait`.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn rev_an_unresponsive_worker_does_not_hang_run() {
    let server = Server::start().await;
    let js = server.jetstream().await;
    let s = stream(&js, "REVHANG").await;
    publish(&js, 1, |_| "REVHANG.x".into()).await;
    let c = consumer(&s, "revhang", Duration::from_secs(30)).await;
    let (release, blocked) = std::sync::mpsc::channel::<()>();
    let blocked = Arc::new(Mutex::new(blocked));
    let started = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(Notify::new());
    let source = JetStreamSource::new(js.clone(), c.clone()).fetch_wait(Duration::from_millis(50));
    let builder = Pipeline::builder(4, Policy::Block)
        .workers(1)
        .deadline(Duration::ZERO)
        .grace(Duration::ZERO)
        .unresponsive_after(Duration::from_millis(200));
    let stop2 = stop.clone();
    // The workers run on a runtime of their own: a thread blocked in synchronous code
    // starves whatever sits in its run queue, and the test's tasks (and the client's
    // connection task) must not be among them.
    let workers_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let spawner = TokioSpawner::new(workers_rt.handle().clone()).unwrap();
    let mut run =
        tokio::spawn(
            source.run(builder, spawner, async move { stop2.notified().await }, {
                let (blocked, started) = (blocked.clone(), started.clone());
                move |_| {
                    let (blocked, started) = (blocked.clone(), started.clone());
                    async move {
                        started.store(true, Ordering::SeqCst);
                        // Synchronous code that blocks its thread (bounded: 20 s).
                        let _ = blocked
                            .lock()
                            .unwrap()
                            .recv_timeout(Duration::from_secs(20));
                        Ok::<(), String>(())
                    }
                }
            }),
        );
    until(WAIT, "the worker blocked", || {
        let started = started.clone();
        async move { started.load(Ordering::SeqCst) }
    })
    .await;
    let stopped = Instant::now();
    stop.notify_one();
    let in_time = tokio::time::timeout(Duration::from_secs(3), &mut run).await;
    let elapsed = stopped.elapsed();
    // Release the blocked worker either way, so that nothing outlives the test.
    let _ = release.send(());
    let report = match in_time {
        Ok(report) => report.unwrap().unwrap(),
        Err(_) => {
            let report = run.await.unwrap().unwrap();
            workers_rt.shutdown_background();
            panic!("run did not end within 3 s of stop (ended after the worker was released, {:?}): {report}; {report:?}", stopped.elapsed());
        }
    };
    workers_rt.shutdown_background();
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    assert!(report.is_conserved(), "{report:?}");
    assert_eq!(report.pipeline.workers_unresponsive, 1, "{report:?}");
    assert_eq!(
        (report.fetched, report.acked, report.left),
        (1, 0, 1),
        "{report}"
    );
}

// Was a fault, fixed: with the server gone no 408 comes: the batch ends only at async-nats's `expires + 5 s` (lib.rs:637-655), then the `confirmed` info request waits its timeout (lib.rs:325): ~15 s, not `fetch_wait` (lib.rs:189-191)
/// The server goes away mid-run (killed): `run` still ends when `stop` completes, and
/// within `fetch_wait` (plus slack), as `fetch_wait`'s docs say it bounds the stop's wait
/// for the fetch under way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rev_a_stop_with_the_server_gone_ends_within_fetch_wait() {
    let server = Server::start().await;
    if std::env::var("NATS_URL").is_ok() {
        return; // needs a server of its own to kill
    }
    let client = async_nats::connect(&server.url).await.unwrap();
    let js = jetstream::new(client.clone());
    let s = stream(&js, "REVGONE").await;
    publish(&js, 3, |_| "REVGONE.x".into()).await;
    let c = consumer(&s, "revgone", Duration::from_secs(30)).await;
    let stop = Arc::new(Notify::new());
    let fetch_wait = Duration::from_millis(200);
    let source = JetStreamSource::new(js.clone(), c.clone()).fetch_wait(fetch_wait);
    let builder = Pipeline::builder(4, Policy::Block)
        .workers(1)
        .deadline(Duration::from_millis(500));
    let run = spawn_run(source, builder, stop.clone(), |_| async { Ok(()) });
    wait_all_settled(&c).await;
    until(WAIT, "a pull request waiting", || {
        let c = c.clone();
        async move { info(&c).await.num_waiting >= 1 }
    })
    .await;
    drop(server); // SIGKILL
    until(WAIT, "the client to see the server gone", || {
        let client = client.clone();
        async move { client.connection_state() != async_nats::connection::State::Connected }
    })
    .await;
    let stopped = Instant::now();
    stop.notify_one();
    let report = tokio::time::timeout(Duration::from_secs(40), run)
        .await
        .expect("run ends after stop, server or not")
        .unwrap()
        .unwrap();
    let elapsed = stopped.elapsed();
    assert!(report.is_conserved(), "{report:?}");
    assert_eq!((report.fetched, report.acked), (3, 3), "{report}");
    assert!(
        elapsed < fetch_wait + Duration::from_millis(1_500),
        "run took {elapsed:?} after stop (fetch_wait {fetch_wait:?})"
    );
}

/// The `run` future is `Send` (it can be `tokio::spawn`ed) with an error type that is
/// `Send` but not `Sync`, as `E: Send` promises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rev_run_is_send_with_a_non_sync_error() {
    struct NotSync(std::cell::Cell<u32>);
    impl std::fmt::Display for NotSync {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "not sync {}", self.0.get())
        }
    }
    fn assert_send<T: Send>(t: T) -> T {
        t
    }
    let server = Server::start().await;
    let js = server.jetstream().await;
    let s = stream(&js, "REVSEND").await;
    publish(&js, 2, |_| "REVSEND.x".into()).await;
    let c = consumer(&s, "revsend", Duration::from_secs(30)).await;
    let stop = Arc::new(Notify::new());
    let source = JetStreamSource::new(js.clone(), c.clone())
        .retry(Retry::attempts(1))
        .fetch_wait(Duration::from_millis(50));
    let fut = assert_send(source.run(
        Pipeline::builder(4, Policy::Block),
        TokioSpawner::current().unwrap(),
        {
            let stop = stop.clone();
            async move { stop.notified().await }
        },
        |_msg: Message| async { Err::<(), _>(NotSync(std::cell::Cell::new(7))) },
    ));
    let run = tokio::spawn(fut);
    wait_all_settled(&c).await;
    stop.notify_one();
    let report = run.await.unwrap().unwrap();
    assert!(report.is_conserved(), "{report:?}");
    assert_eq!((report.fetched, report.termed), (2, 2), "{report}");
}

// Was a fault, fixed (second review): with the broker gone, the client's command queue
// (2048) filled and the next nak waited for a reconnection that never came: `run` hung
// (this test timed out at 40 s). Now a pull request the broker does not end, or a settle
// the client cannot take within 1 s, marks the broker out of reach, and the remaining
// settles are counted as settle errors, unsent.
/// The server goes away while the pipeline holds more messages than the client can queue:
/// `run` still ends soon after `stop`, and every message has one fate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rev_a_stop_with_the_server_gone_and_many_leftovers_ends() {
    const N: u64 = 3_000;
    let server = Server::start().await;
    if std::env::var("NATS_URL").is_ok() {
        return; // needs a server of its own to kill
    }
    let client = async_nats::connect(&server.url).await.unwrap();
    let js = jetstream::new(client.clone());
    let s = stream(&js, "REVGONEBIG").await;
    publish(&js, N, |_| "REVGONEBIG.x".into()).await;
    let c = consumer(&s, "revgonebig", Duration::from_secs(30)).await;
    let stop = Arc::new(Notify::new());
    let fetch_wait = Duration::from_millis(200);
    let source = JetStreamSource::new(js.clone(), c.clone()).fetch_wait(fetch_wait);
    // One worker that never finishes: the rest wait in the queue, to be handed back.
    let builder = Pipeline::builder(4_096, Policy::Block)
        .workers(1)
        .deadline(Duration::ZERO)
        .grace(Duration::ZERO);
    let run = spawn_run(source, builder, stop.clone(), |_| async {
        std::future::pending::<()>().await;
        Ok(())
    });
    wait_ack_pending(&c, N as usize, "every message delivered").await;
    drop(server); // SIGKILL
    until(WAIT, "the client to see the server gone", || {
        let client = client.clone();
        async move { client.connection_state() != async_nats::connection::State::Connected }
    })
    .await;
    let stopped = Instant::now();
    stop.notify_one();
    let report = tokio::time::timeout(Duration::from_secs(40), run)
        .await
        .expect("run ends after stop, however many messages it holds")
        .unwrap()
        .unwrap();
    let elapsed = stopped.elapsed();
    assert!(report.is_conserved(), "{report:?}");
    assert_eq!(report.fetched, N, "{report}");
    assert_eq!(report.left + report.settle_errors, N, "{report}");
    assert!(report.settle_errors > 0, "{report}");
    assert!(!report.confirmed, "{report}");
    // fetch_wait + the pull's margin (1 s) + one settle's wait (1 s), and slack.
    assert!(
        elapsed < fetch_wait + Duration::from_secs(4),
        "run took {elapsed:?} after stop"
    );
}
