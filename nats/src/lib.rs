//! A NATS JetStream source for [`backpressure_pipeline`]: a durable pull consumer feeds a
//! [`Pipeline`], and the pipeline's back-pressure reaches the broker.
//!
//! When one machine is not enough, several processes pull from one durable consumer. Each
//! runs a [`JetStreamSource`], which
//!
//! - **fetches only what the queue has room for**: one pull request asks for
//!   `capacity - len` messages (at least one), so a process holds at most `capacity` queued
//!   messages, one waiting to be pushed and one per worker in hand; the rest stay in the
//!   broker, and a stalled process's memory stays flat;
//! - **acks a message after its work succeeds**, naks it with a delay when the work fails
//!   (the delay of [`Retry::delay`] for its delivery count), and on the last attempt
//!   ([`Retry::max_attempts`], counted by the broker's delivery count) terminates it and
//!   publishes it to a dead-letter subject, if one is set;
//! - under the shedding policies (and for messages past `max_age` or shed by CoDel) **acks or
//!   terminates** each shed message, as [`Shed`] says: loss made explicit, never silent;
//! - **on shutdown** stops fetching, drains within the pipeline's deadline, acks what
//!   finished and naks (without delay) what is handed back, so that it is redelivered at
//!   once; a message is never acked unprocessed.
//!
//! The guarantee is **at-least-once**: a process that dies between its work and its ack (a
//! `SIGKILL`, a lost connection) leaves the message to be redelivered after the consumer's
//! `ack_wait`, to this or another process. Work must therefore be idempotent: doing it twice
//! leaves the same result as once (an upsert by message id, not an insert). Duplicates are
//! bounded by what a process held when it died: its queue, its workers' messages and one in
//! hand.
//!
//! With keyed lanes ([`PipelineBuilder::key_by`], say by subject), messages of one key run in
//! the order they were fetched within a process. Across processes, and for a message nak'ed
//! and redelivered later, the broker's order is not kept: for strict per-key order, run one
//! process per key range (a consumer per filter subject) and let failures retry in place.
//!
//! # Names
//!
//! The NATS terms map to the pipeline's: a message *terminated* (`AckKind::Term`) is never
//! redelivered; *nak* asks for a redelivery after a delay; what this crate calls *left* is a
//! message neither acked nor terminated here, which the broker redelivers.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use async_nats::jetstream::{self, consumer::pull};
//! use backpressure_pipeline::{Pipeline, Policy, Retry, TokioSpawner};
//! use backpressure_pipeline_nats::{JetStreamSource, Shed};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let client = async_nats::connect("127.0.0.1:4222").await?;
//! let js = jetstream::new(client);
//! let stream = js
//!     .get_or_create_stream(jetstream::stream::Config {
//!         name: "ORDERS".into(),
//!         subjects: vec!["orders.>".into()],
//!         ..Default::default()
//!     })
//!     .await?;
//! let consumer = stream
//!     .get_or_create_consumer(
//!         "workers",
//!         pull::Config {
//!             durable_name: Some("workers".into()),
//!             ack_wait: Duration::from_secs(30),
//!             max_ack_pending: 1024,
//!             ..Default::default()
//!         },
//!     )
//!     .await?;
//! let source = JetStreamSource::new(js.clone(), consumer)
//!     .retry(Retry::attempts(5).backoff(Duration::from_secs(1), Duration::from_secs(60)))
//!     .dead_letter("dead.orders")
//!     .on_shed(Shed::Term);
//! let builder = Pipeline::builder(256, Policy::Block)
//!     .workers(8)
//!     .deadline(Duration::from_secs(10));
//! let report = source
//!     .run(builder, TokioSpawner::current()?, tokio::signal::ctrl_c(), |msg| async move {
//!         // Idempotent work on msg.payload; an Err naks or dead-letters it.
//!         let _ = msg.payload.len();
//!         Ok::<(), std::io::Error>(())
//!     })
//!     .await?;
//! println!("{report}");
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, AckKind};
use backpressure_pipeline::{
    BuildError, ConfigError, Outcome, Pipeline, PipelineBuilder, PushOutcome, Retry, TokioSpawner,
};
use futures_util::StreamExt;

pub use async_nats::jetstream::Message;

/// What happens to a message the pipeline sheds (a full queue under `DropNewest` or
/// `DropOldest`, an item past `max_age`, CoDel).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Shed {
    /// Acknowledge it: it is gone for good, counted in [`Report::shed_acked`]. For data whose
    /// newer copies make the old ones worthless (samples, positions).
    Ack,
    /// Terminate it (`AckKind::Term`): never redelivered, and the broker's advisory
    /// (`$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED`) records it. The default.
    #[default]
    Term,
}

/// The header a dead-lettered message carries: the error its last attempt failed with.
pub const DEAD_LETTER_ERROR: &str = "Pipeline-Error";
/// The header a dead-lettered message carries: the subject it was published on.
pub const DEAD_LETTER_SUBJECT: &str = "Pipeline-Subject";
/// The header a dead-lettered message carries: its sequence number in its stream.
pub const DEAD_LETTER_SEQUENCE: &str = "Pipeline-Stream-Sequence";

/// How long `run`, once stopped, waits for the broker to confirm the last acks.
const CONFIRM_WAIT: Duration = Duration::from_secs(2);
/// How long past its `expires` a pull request is waited for (its end is the broker's
/// reply, which a broker gone never sends).
const PULL_MARGIN: Duration = Duration::from_secs(1);
/// How long one ack, nak or term may wait for the client to take it.
const SETTLE_WAIT: Duration = Duration::from_secs(1);

/// A source that pulls from a JetStream pull consumer into a pipeline. See the
/// [crate docs](crate) for what it guarantees.
#[derive(Debug)]
pub struct JetStreamSource {
    jetstream: jetstream::Context,
    consumer: PullConsumer,
    retry: Retry,
    dead_letter: Option<String>,
    on_shed: Shed,
    fetch_wait: Duration,
}

impl JetStreamSource {
    /// A source pulling from `consumer` (a durable pull consumer with `AckPolicy::Explicit`,
    /// the default of `pull::Config`), publishing dead letters through `jetstream`.
    ///
    /// Defaults: [`Retry::attempts(3)`](Retry::attempts) with its default backoff, no
    /// dead-letter subject, [`Shed::Term`], a fetch wait of 500 ms.
    pub fn new(jetstream: jetstream::Context, consumer: PullConsumer) -> JetStreamSource {
        JetStreamSource {
            jetstream,
            consumer,
            retry: Retry::attempts(3),
            dead_letter: None,
            on_shed: Shed::Term,
            fetch_wait: Duration::from_millis(500),
        }
    }

    /// How a failed message is redelivered: nak'ed with [`Retry::delay`] of its delivery count
    /// (the broker's `delivered`, 1 on the first delivery) until delivery
    /// [`Retry::max_attempts`], whose failure terminates it (and dead-letters it, see
    /// [`dead_letter`](Self::dead_letter)).
    ///
    /// The pipeline's own [`PipelineBuilder::retry`] does not apply to the messages: `run`
    /// replaces it with [`Retry::never`], and a failure is handed to the broker, so that
    /// another process may take the retry. `Retry::attempts(0)` is refused by `run`, as the
    /// pipeline refuses it ([`ConfigError::ZeroAttempts`]).
    ///
    /// Keep the consumer's `max_deliver` above `max_attempts` (or unlimited, the default):
    /// the broker stops delivering at `max_deliver` without a dead letter.
    pub fn retry(mut self, retry: Retry) -> JetStreamSource {
        self.retry = retry;
        self
    }

    /// Publishes each message that fails its last attempt to `subject` (through JetStream,
    /// so a stream capturing `subject` keeps it), with its headers and three more:
    /// [`DEAD_LETTER_ERROR`] (the error's `Display`), [`DEAD_LETTER_SUBJECT`],
    /// [`DEAD_LETTER_SEQUENCE`]. The original's headers in the server's reserved `Nats-`
    /// namespace (JetStream's publish controls: `Nats-Expected-*`, `Nats-Msg-Id`,
    /// `Nats-Rollup`, `Nats-TTL`, ...) are not copied; the dead letter's `Nats-Msg-Id` is
    /// `dead:<stream>:<sequence>`, so one published twice (its terminate lost) is stored
    /// once within the dead-letter stream's duplicate window. The message is terminated
    /// once the dead letter is stored; if publishing fails, it is nak'ed instead (counted
    /// in [`Report::nacked`]) and redelivered.
    pub fn dead_letter(mut self, subject: impl Into<String>) -> JetStreamSource {
        self.dead_letter = Some(subject.into());
        self
    }

    /// What happens to a message the pipeline sheds: [`Shed::Ack`] or [`Shed::Term`] (the
    /// default).
    pub fn on_shed(mut self, shed: Shed) -> JetStreamSource {
        self.on_shed = shed;
        self
    }

    /// How long one pull request waits at the broker for messages (the request's
    /// `expires`). Default 500 ms; at least 10 ms.
    ///
    /// It also bounds how long a stop waits for the fetch under way: `fetch_wait`, plus 1 s
    /// for a broker that does not end the request (out of reach). A broker found out of
    /// reach (that request, or an ack the client could not take within 1 s) is sent no
    /// more acks or naks: they count as [`Report::settle_errors`]. After the pipeline's
    /// shutdown, `run` waits at most 2 s more for the broker to confirm the last acks
    /// ([`Report::confirmed`]); none when the broker was found out of reach.
    pub fn fetch_wait(mut self, wait: Duration) -> JetStreamSource {
        self.fetch_wait = wait.max(Duration::from_millis(10));
        self
    }

    /// Spawns the pipeline `builder` describes, with `work` for each message, on `spawner`;
    /// fetches into it until `stop` completes (or the pipeline stops by itself, say
    /// [`StopCause::NoWorkers`](backpressure_pipeline::StopCause::NoWorkers)); then shuts it
    /// down and settles every message it fetched.
    ///
    /// `work` gets a clone of each message (cheap: the payload is shared) and returns
    /// `Ok(())` (the message is acked) or `Err(e)` (nak'ed with a delay, or terminated and
    /// dead-lettered on its last attempt; see [`retry`](Self::retry)). `e`'s `Display` is
    /// the dead letter's [`DEAD_LETTER_ERROR`] header.
    ///
    /// The builder's `on_expired` hook and its `retry` are replaced: messages shed at the
    /// queue's exit are settled as [`on_shed`](Self::on_shed) says, while the pipeline runs;
    /// failures are retried by the broker (see [`retry`](Self::retry)).
    ///
    /// # Errors
    ///
    /// - [`Error::Build`] if the pipeline cannot be built (a bad configuration, including
    ///   `Retry::attempts(0)`, or a runtime that refuses tasks);
    /// - [`Error::DeadLetter`] if a [`dead_letter`](Self::dead_letter) subject is set and no
    ///   stream captures it, or the broker cannot be asked (checked before anything is
    ///   fetched).
    ///
    /// Broker errors while running (a fetch that fails, a lost connection) are logged with
    /// `tracing` and the fetch is tried again after a pause; they end nothing.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping the future drops the pipeline (its workers stop, see
    /// [`Pipeline`]'s `Drop`) and settles nothing more; what it held is redelivered after
    /// the consumer's `ack_wait`. Complete `stop` instead.
    pub async fn run<F, Fut, E>(
        self,
        builder: PipelineBuilder<Message>,
        spawner: TokioSpawner,
        stop: impl Future,
        work: F,
    ) -> Result<Report, Error>
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        if self.retry.max_attempts() == 0 {
            return Err(Error::Build(BuildError::Config(ConfigError::ZeroAttempts)));
        }
        if let Some(subject) = &self.dead_letter {
            // A subject no stream captures would fail every dead letter: each message past
            // its last attempt would be nak'ed again and again.
            if let Err(e) = self.jetstream.stream_by_subject(subject.as_str()).await {
                return Err(Error::DeadLetter {
                    subject: subject.clone(),
                    source: Box::new(e),
                });
            }
        }
        let counts = Arc::new(Counts::default());
        let (expired_tx, mut expired_rx) = tokio::sync::mpsc::unbounded_channel::<Message>();
        let settle = Settle {
            jetstream: self.jetstream.clone(),
            retry: self.retry,
            dead_letter: self.dead_letter.clone().map(Arc::from),
            counts: counts.clone(),
        };
        let work = Arc::new(work);
        let hook_counts = counts.clone();
        let pipeline = builder
            .on_expired(move |msg: Message, _| {
                // Settled by `settler` below, as they come. Once it has stopped (no worker
                // takes an item after the shutdown), a message would be left to `ack_wait`.
                if expired_tx.send(msg).is_err() {
                    add(&hook_counts.left);
                }
            })
            // The messages' retries are the broker's (nak with a delay), not the pipeline's.
            .retry(Retry::never())
            .spawn(spawner, move |msg: Message| {
                let work = work.clone();
                let settle = settle.clone();
                settle.counts.work_started();
                async move {
                    match work(msg.clone()).await {
                        Ok(()) => {
                            settle.ack(&msg).await;
                            Outcome::<Message, E>::Done
                        }
                        Err(e) => {
                            // A `String`, not `&E`: `E` need not be `Sync`.
                            settle.failed(&msg, e.to_string()).await;
                            Outcome::Failed(e)
                        }
                    }
                }
            })
            .map_err(Error::Build)?;
        let on_shed = self.on_shed;
        let shed_counts = counts.clone();
        // Settles what the pipeline sheds at its exit, while it runs; once `main` is done, the
        // rest of what was sent (not waiting for the sender, which a worker left
        // unresponsive may keep alive).
        let main_done = tokio::sync::Notify::new();
        let settler = async {
            loop {
                tokio::select! {
                    biased;
                    msg = expired_rx.recv() => match msg {
                        Some(msg) => shed(&msg, on_shed, &shed_counts).await,
                        None => return,
                    },
                    () = main_done.notified() => break,
                }
            }
            expired_rx.close();
            while let Ok(msg) = expired_rx.try_recv() {
                shed(&msg, on_shed, &shed_counts).await;
            }
        };
        let fetcher = Fetcher {
            consumer: &self.consumer,
            pipeline: &pipeline,
            counts: &counts,
            on_shed,
            fetch_wait: self.fetch_wait,
            stopping: AtomicBool::new(false),
            stopped: tokio::sync::Notify::new(),
        };
        let main = async {
            let fetch = fetcher.run();
            tokio::pin!(fetch);
            let stop = std::pin::pin!(stop);
            let fetch_done = tokio::select! {
                _ = stop => false,
                () = &mut fetch => true,
            };
            fetcher.stopping.store(true, Ordering::Relaxed);
            fetcher.stopped.notify_one();
            // Shutdown closes the intake at once: a push under way returns the message,
            // which the fetcher naks; the fetch under way ends within `fetch_wait`.
            let report = if fetch_done {
                pipeline.shutdown().await
            } else {
                tokio::join!(fetch, pipeline.shutdown()).1
            };
            // Handed back: nak'ed without delay, to be redelivered at once.
            for msg in pipeline.take_leftovers() {
                left(&msg, &counts).await;
            }
            main_done.notify_one();
            report
        };
        let (report, ()) = tokio::join!(main, settler);
        let silent = counts.unreachable.load(Ordering::Relaxed);
        drop(pipeline);
        // Messages lost in an aborted worker's hands, a panic or a worker left unresponsive
        // were never settled: the broker redelivers them after `ack_wait`.
        counts.seal();
        // Acks are sent without waiting for the broker: one request on the same connection
        // after them returns once the broker has read them (a connection's messages are
        // processed in order), so a process that exits after `run` loses none. Bounded: a
        // broker gone does not hold up the return.
        let confirm = tokio::time::timeout(CONFIRM_WAIT, async {
            self.consumer.clone().info().await.map(|_| ())
        });
        let confirmed = if silent {
            // The broker did not end the last pull request: it is out of reach, and a
            // request now would only wait out `CONFIRM_WAIT`.
            tracing::warn!("the broker is out of reach; the last acks are unconfirmed");
            false
        } else {
            match confirm.await {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "could not confirm that the broker has every ack");
                    false
                }
                Err(_) => {
                    tracing::warn!("the broker did not confirm the last acks in time");
                    false
                }
            }
        };
        Ok(Report::new(report, &counts, confirmed))
    }
}

/// Why [`JetStreamSource::run`] could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The pipeline could not be built.
    Build(BuildError),
    /// No stream captures the dead-letter subject (or the broker could not say which does):
    /// dead letters would fail, and each message past its last attempt would be nak'ed
    /// for good.
    DeadLetter {
        /// The subject given to [`JetStreamSource::dead_letter`].
        subject: String,
        /// The broker's answer.
        source: Box<dyn StdError + Send + Sync>,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Build(e) => write!(f, "the pipeline could not be built: {e}"),
            Error::DeadLetter { subject, .. } => {
                write!(f, "no stream captures the dead-letter subject {subject:?}")
            }
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Error::Build(e) => Some(e),
            Error::DeadLetter { source, .. } => Some(&**source),
        }
    }
}

/// What a [`JetStreamSource::run`] did with the messages it fetched, and the pipeline's own
/// report.
///
/// Every message fetched has one fate (see [`is_conserved`](Self::is_conserved)):
/// `fetched == acked + nacked + termed + shed_acked + shed_termed + superseded + left +
/// settle_errors`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Report {
    /// The pipeline's report (its `produced` counts the messages pushed into it).
    pub pipeline: backpressure_pipeline::Report,
    /// Messages received from the broker.
    pub fetched: u64,
    /// Work succeeded and the ack was sent.
    pub acked: u64,
    /// Work failed before its last attempt (or its dead letter could not be published): nak'ed
    /// with a delay, to be redelivered.
    pub nacked: u64,
    /// Work failed on its last attempt: terminated (after its dead letter, if a subject is
    /// set).
    pub termed: u64,
    /// Of `termed`, those published to the dead-letter subject.
    pub dead_lettered: u64,
    /// Shed by the pipeline and acked ([`Shed::Ack`]).
    pub shed_acked: u64,
    /// Shed by the pipeline and terminated ([`Shed::Term`]).
    pub shed_termed: u64,
    /// Replaced in the queue by a newer message of their key (coalescing) and acked: the newer
    /// one carries the key's latest value.
    pub superseded: u64,
    /// Neither acked nor terminated: handed back at shutdown or refused by the closing
    /// pipeline (nak'ed without delay), or lost in an aborted worker or a panic (the broker
    /// redelivers them after `ack_wait`).
    pub left: u64,
    /// Acks, naks or terms the client refused (a connection closed), did not take within
    /// 1 s, or that were not sent because the broker was found out of reach (see
    /// [`JetStreamSource::fetch_wait`]). A settle the client took is only queued for the
    /// broker: whether the broker read them is
    /// [`confirmed`](Self::confirmed). Either way, a settle that never arrives leaves its
    /// message to be redelivered after `ack_wait`, so its work may be done twice.
    pub settle_errors: u64,
    /// Of `fetched`, messages delivered before (the broker's delivery count above 1): a
    /// nak'ed message coming back, or one whose ack did not arrive within `ack_wait`.
    pub redelivered: u64,
    /// Pull requests that failed (a lost connection, a deleted consumer), each tried again
    /// after a pause; logged with `tracing`.
    pub fetch_errors: u64,
    /// Whether the broker confirmed, after the last ack, that it has read every ack, nak and
    /// term sent (a request on the same connection answered). `false` if it could not be
    /// reached then: the last settles may not have arrived, and those messages are
    /// redelivered after `ack_wait`.
    pub confirmed: bool,
}

impl Report {
    fn new(pipeline: backpressure_pipeline::Report, counts: &Counts, confirmed: bool) -> Report {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Report {
            pipeline,
            fetched: get(&counts.fetched),
            acked: get(&counts.acked),
            nacked: get(&counts.nacked),
            termed: get(&counts.termed),
            dead_lettered: get(&counts.dead_lettered),
            shed_acked: get(&counts.shed_acked),
            shed_termed: get(&counts.shed_termed),
            superseded: get(&counts.superseded),
            left: get(&counts.left),
            settle_errors: get(&counts.settle_errors),
            redelivered: get(&counts.redelivered),
            fetch_errors: get(&counts.fetch_errors),
            confirmed,
        }
    }

    /// Whether every message fetched has exactly one fate, and the pipeline's own law holds.
    pub fn is_conserved(&self) -> bool {
        self.pipeline.is_conserved()
            && self.fetched
                == self.acked
                    + self.nacked
                    + self.termed
                    + self.shed_acked
                    + self.shed_termed
                    + self.superseded
                    + self.left
                    + self.settle_errors
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fetched {}: acked {}, nak'ed {}, terminated {} ({} dead-lettered), shed acked {}, \
             shed terminated {}, superseded {}, left for redelivery {}, settle errors {}; \
             redelivered {}, fetch errors {}{}",
            self.fetched,
            self.acked,
            self.nacked,
            self.termed,
            self.dead_lettered,
            self.shed_acked,
            self.shed_termed,
            self.superseded,
            self.left,
            self.settle_errors,
            self.redelivered,
            self.fetch_errors,
            if self.confirmed {
                ""
            } else {
                "; the last settles unconfirmed"
            }
        )
    }
}

#[derive(Debug, Default)]
struct Counts {
    fetched: AtomicU64,
    acked: AtomicU64,
    nacked: AtomicU64,
    termed: AtomicU64,
    dead_lettered: AtomicU64,
    shed_acked: AtomicU64,
    shed_termed: AtomicU64,
    superseded: AtomicU64,
    left: AtomicU64,
    settle_errors: AtomicU64,
    redelivered: AtomicU64,
    fetch_errors: AtomicU64,
    /// Messages a worker's work began with and has not settled (nor counted) yet. Its
    /// updates are Relaxed: `sealed`'s mutex orders them with the seal that reads it.
    in_work: AtomicU64,
    /// Whether the broker was found out of reach: a pull request it did not end, or a settle
    /// the client could not take in time. Cleared when a pull request brings a message or
    /// ends. While set, settles are counted as errors without being sent. Relaxed: a hint,
    /// ordering nothing.
    unreachable: AtomicBool,
    /// Set when the report is taken: a worker that settles later (one left unresponsive)
    /// still sends its ack, but its message is already counted in `left`.
    sealed: Mutex<bool>,
}

impl Counts {
    fn work_started(&self) {
        let sealed = self.sealed.lock().unwrap_or_else(PoisonError::into_inner);
        if !*sealed {
            add(&self.in_work);
        }
    }

    /// A worker's message settled: counted in `counter` (and `also`), unless sealed.
    fn work_done(&self, counter: &AtomicU64, also: Option<&AtomicU64>) {
        let sealed = self.sealed.lock().unwrap_or_else(PoisonError::into_inner);
        if !*sealed {
            add(counter);
            if let Some(also) = also {
                add(also);
            }
            self.in_work.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Seals the counts: what workers still hold (a panic, an abort, an unresponsive
    /// worker) was never settled, and the broker redelivers it after `ack_wait`.
    fn seal(&self) {
        let mut sealed = self.sealed.lock().unwrap_or_else(PoisonError::into_inner);
        *sealed = true;
        self.left
            .fetch_add(self.in_work.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

fn add(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Sends `kind` for `msg`; false (logged) if the client could not take it within
/// [`SETTLE_WAIT`], or the broker is out of reach ([`Counts::unreachable`]): then nothing is
/// sent, and the broker redelivers the message after `ack_wait`.
async fn settle(msg: &Message, kind: AckKind, counts: &Counts) -> bool {
    if counts.unreachable.load(Ordering::Relaxed) {
        return false;
    }
    // The client queues the settle for its connection task; with the broker gone, once that
    // queue is full the send waits for a reconnection that may never come. Cancel safe: a
    // send that timed out did not queue it.
    match tokio::time::timeout(SETTLE_WAIT, msg.ack_with(kind)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not settle a message; the broker redelivers it");
            false
        }
        Err(_) => {
            counts.unreachable.store(true, Ordering::Relaxed);
            tracing::warn!("the client took no settle in time: the broker is out of reach");
            false
        }
    }
}

/// Sends `kind` for `msg`; counts it in `counter`, or as a settle error.
async fn send(msg: &Message, kind: AckKind, counter: &AtomicU64, counts: &Counts) -> bool {
    let sent = settle(msg, kind, counts).await;
    add(if sent { counter } else { &counts.settle_errors });
    sent
}

async fn shed(msg: &Message, on_shed: Shed, counts: &Counts) {
    match on_shed {
        Shed::Ack => send(msg, AckKind::Ack, &counts.shed_acked, counts).await,
        Shed::Term => send(msg, AckKind::Term, &counts.shed_termed, counts).await,
    };
}

async fn left(msg: &Message, counts: &Counts) {
    send(msg, AckKind::Nak(None), &counts.left, counts).await;
}

/// What a worker needs to settle the message it ran.
#[derive(Clone)]
struct Settle {
    jetstream: jetstream::Context,
    retry: Retry,
    dead_letter: Option<Arc<str>>,
    counts: Arc<Counts>,
}

impl Settle {
    /// Sends `kind` for a worker's message and counts it (see [`Counts::work_done`]).
    async fn send(&self, msg: &Message, kind: AckKind, counter: &AtomicU64) -> bool {
        self.send_also(msg, kind, counter, None).await
    }

    async fn send_also(
        &self,
        msg: &Message,
        kind: AckKind,
        counter: &AtomicU64,
        also: Option<&AtomicU64>,
    ) -> bool {
        let sent = settle(msg, kind, &self.counts).await;
        match sent {
            true => self.counts.work_done(counter, also),
            false => self.counts.work_done(&self.counts.settle_errors, None),
        }
        sent
    }

    async fn ack(&self, msg: &Message) {
        self.send(msg, AckKind::Ack, &self.counts.acked).await;
    }

    async fn failed(&self, msg: &Message, error: String) {
        let delivered = msg
            .info()
            .map(|info| u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX))
            .unwrap_or(1);
        if delivered < self.retry.max_attempts() {
            let delay = self.retry.delay(delivered);
            self.send(msg, AckKind::Nak(Some(delay)), &self.counts.nacked)
                .await;
            return;
        }
        if let Some(subject) = &self.dead_letter {
            if let Err(e) = self.publish_dead_letter(subject, msg, &error).await {
                tracing::warn!(error = %e, "could not publish a dead letter; nak'ed instead");
                let delay = self.retry.delay(delivered);
                self.send(msg, AckKind::Nak(Some(delay)), &self.counts.nacked)
                    .await;
                return;
            }
            let dead = Some(&self.counts.dead_lettered);
            self.send_also(msg, AckKind::Term, &self.counts.termed, dead)
                .await;
            return;
        }
        self.send(msg, AckKind::Term, &self.counts.termed).await;
    }

    async fn publish_dead_letter(
        &self,
        subject: &str,
        msg: &Message,
        error: &str,
    ) -> Result<(), async_nats::Error> {
        // As a settle (see `settle`): a broker found out of reach is not waited for, and the
        // publish's send, which waits for room in the client's queue, is bounded.
        if self.counts.unreachable.load(Ordering::Relaxed) {
            return Err("the broker is out of reach".into());
        }
        let mut headers = async_nats::HeaderMap::new();
        if let Some(original) = &msg.headers {
            for (name, values) in original.iter() {
                if is_publish_control(name.as_ref()) {
                    continue;
                }
                for value in values {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        // A header value is one line.
        headers.insert(DEAD_LETTER_ERROR, error.replace(['\r', '\n'], " ").as_str());
        headers.insert(DEAD_LETTER_SUBJECT, msg.subject.as_str());
        if let Ok(info) = msg.info() {
            headers.insert(
                DEAD_LETTER_SEQUENCE,
                info.stream_sequence.to_string().as_str(),
            );
            // A dead letter published twice (its term lost, the message redelivered and
            // failed again) is stored once, within the dead-letter stream's duplicate window.
            let id = format!("dead:{}:{}", info.stream, info.stream_sequence);
            headers.insert("Nats-Msg-Id", id.as_str());
        }
        let publish =
            self.jetstream
                .publish_with_headers(subject.to_owned(), headers, msg.payload.clone());
        let ack = match tokio::time::timeout(SETTLE_WAIT, publish).await {
            Ok(ack) => ack?,
            Err(_) => {
                self.counts.unreachable.store(true, Ordering::Relaxed);
                return Err(
                    "the client took no publish in time: the broker is out of reach".into(),
                );
            }
        };
        // The stream's acknowledgement is bounded by the context's own request timeout.
        ack.await?;
        Ok(())
    }
}

/// Whether a header is in the server's reserved `Nats-` namespace: JetStream's publish
/// controls (an expected stream or sequence, a message id, a rollup, a TTL, a batch, a
/// counter increment, a schedule, ...), which addressed the original publish and would fail
/// or distort the dead letter's.
fn is_publish_control(name: &str) -> bool {
    name.get(..5)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("nats-"))
}

impl fmt::Debug for Settle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settle")
            .field("retry", &self.retry)
            .field("dead_letter", &self.dead_letter)
            .finish_non_exhaustive()
    }
}

/// The fetch loop: pull requests sized to the queue's room, each message pushed.
struct Fetcher<'a> {
    consumer: &'a PullConsumer,
    pipeline: &'a Pipeline<Message>,
    counts: &'a Counts,
    on_shed: Shed,
    fetch_wait: Duration,
    stopping: AtomicBool,
    /// Notified once `stopping` is set: ends a pause between failed pull requests.
    stopped: tokio::sync::Notify,
}

impl Fetcher<'_> {
    /// Runs until `stopping` or the pipeline closes (a stop of its own, say no worker could
    /// start), after the batch under way.
    async fn run(&self) {
        let mut pause = Duration::from_millis(50);
        while !self.stopping.load(Ordering::Relaxed) && !self.pipeline.is_closed() {
            // Only this loop pushes, and workers only take: the room can only grow until
            // the pushes below, so a batch of `room` never waits for room. With none, one
            // message is fetched and its push waits: back-pressure, one message in hand.
            let room = self.pipeline.capacity() - self.pipeline.len().min(self.pipeline.capacity());
            let pull_end = Instant::now() + self.fetch_wait + PULL_MARGIN;
            // Sending the request waits for the client, which a broker gone can hold up.
            let batch = tokio::time::timeout_at(
                pull_end,
                self.consumer
                    .batch()
                    .max_messages(room.max(1))
                    .expires(self.fetch_wait)
                    .messages(),
            )
            .await;
            let mut batch = match batch {
                Ok(Ok(batch)) => batch,
                failed => {
                    add(&self.counts.fetch_errors);
                    match failed {
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "a pull request failed; trying again")
                        }
                        _ => {
                            self.counts.unreachable.store(true, Ordering::Relaxed);
                            tracing::warn!(
                                "a pull request could not be sent in time; trying again"
                            );
                        }
                    }
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = self.stopped.notified() => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            pause = Duration::from_millis(50);
            while let Some(msg) = self.next(&mut batch, pull_end).await {
                match self.pipeline.push(msg).await {
                    PushOutcome::Accepted => {}
                    PushOutcome::Shed(msg) | PushOutcome::Evicted(msg) => {
                        shed(&msg, self.on_shed, self.counts).await;
                    }
                    PushOutcome::Superseded(msg) => {
                        send(&msg, AckKind::Ack, &self.counts.superseded, self.counts).await;
                    }
                    PushOutcome::Closed(msg) => {
                        left(&msg, self.counts).await;
                        // Drain what the pull request still brings: nak'ed, not dropped.
                        while let Some(msg) = self.next(&mut batch, pull_end).await {
                            left(&msg, self.counts).await;
                        }
                        return;
                    }
                    // `push` waits for room: never full.
                    PushOutcome::Full(msg) => left(&msg, self.counts).await,
                }
            }
        }
    }

    /// The pull request's next message, counted; `None` when it ends, fails, or its
    /// broker has not ended it by `pull_end` (a broker gone never does; after a push that
    /// waited, a little longer).
    async fn next(
        &self,
        batch: &mut jetstream::consumer::pull::Batch,
        pull_end: Instant,
    ) -> Option<Message> {
        let until = pull_end.max(Instant::now() + Duration::from_millis(100));
        let next = tokio::time::timeout_at(until, batch.next()).await;
        // A broker that answers (a message, the request's end, an error) is reachable; one
        // that lets the request pass its end is not.
        self.counts
            .unreachable
            .store(next.is_err(), Ordering::Relaxed);
        let msg = match next {
            Ok(Some(Ok(msg))) => msg,
            Ok(None) => return None,
            Ok(Some(Err(e))) => {
                add(&self.counts.fetch_errors);
                tracing::warn!(error = %e, "a pull request ended with an error");
                return None;
            }
            Err(_) => {
                add(&self.counts.fetch_errors);
                tracing::warn!("a pull request was not ended by the broker in time");
                return None;
            }
        };
        add(&self.counts.fetched);
        if msg.info().is_ok_and(|info| info.delivered > 1) {
            add(&self.counts.redelivered);
        }
        Some(msg)
    }
}
