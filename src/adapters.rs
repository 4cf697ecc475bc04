//! The queue as a `futures` [`Stream`] (the consumer side) and [`Sink`] (the producer side).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_sink::Sink;

use crate::policy::PushOutcome;
use crate::queue::Queue;

type BoxedPop<T> = Pin<Box<dyn Future<Output = Option<T>> + Send>>;
type BoxedPush<T> = Pin<Box<dyn Future<Output = PushOutcome<T>> + Send>>;

/// The consumer side of a [`Queue`] as a [`Stream`]; made by [`Queue::into_stream`].
///
/// Yields items oldest first and ends when the queue is closed and empty. Each item costs
/// one small allocation (the pending pop); [`Queue::pop_many`] is the fast path for
/// consumers that can take batches.
///
/// A stream that is polled, returns `Pending`, and is then left unpolled while kept alive
/// holds its place in line: drop it, or keep polling it.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use futures_util::StreamExt;
/// use backpressure_pipeline::{Policy, Queue};
///
/// # smol::block_on(async {
/// let queue = Arc::new(Queue::new(8, Policy::Block)?);
/// for i in 0..3 {
///     let _ = queue.push(i).await;
/// }
/// queue.close();
/// let items: Vec<i32> = queue.clone().into_stream().collect().await;
/// assert_eq!(items, [0, 1, 2]);
/// # Ok::<(), backpressure_pipeline::ConfigError>(())
/// # }).unwrap();
/// ```
#[must_use = "streams do nothing unless polled"]
pub struct PopStream<T> {
    queue: Arc<Queue<T>>,
    pending: Option<BoxedPop<T>>,
}

impl<T: Send + 'static> Queue<T> {
    /// The consumer side of the queue as a [`Stream`]; see [`PopStream`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use futures_util::StreamExt;
    /// use backpressure_pipeline::{Policy, Queue};
    ///
    /// # smol::block_on(async {
    /// let queue = Arc::new(Queue::new(4, Policy::DropOldest)?);
    /// let _ = queue.try_push("a");
    /// let mut stream = queue.clone().into_stream();
    /// assert_eq!(stream.next().await, Some("a"));
    /// # Ok::<(), backpressure_pipeline::ConfigError>(())
    /// # }).unwrap();
    /// ```
    pub fn into_stream(self: Arc<Self>) -> PopStream<T> {
        PopStream {
            queue: self,
            pending: None,
        }
    }

    /// The producer side of the queue as a [`Sink`]; see [`PushSink`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use futures_util::SinkExt;
    /// use backpressure_pipeline::{Policy, Queue};
    ///
    /// # smol::block_on(async {
    /// let queue = Arc::new(Queue::new(4, Policy::Block)?);
    /// let mut sink = queue.clone().into_sink();
    /// sink.send(1).await.expect("Block accepts every item");
    /// assert_eq!(queue.pop().await, Some(1));
    /// # Ok::<(), backpressure_pipeline::ConfigError>(())
    /// # }).unwrap();
    /// ```
    pub fn into_sink(self: Arc<Self>) -> PushSink<T> {
        PushSink {
            queue: self,
            pending: None,
        }
    }
}

impl<T: Send + 'static> Stream for PopStream<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let this = &mut *self;
        let pop = this.pending.get_or_insert_with(|| {
            let queue = this.queue.clone();
            Box::pin(async move { queue.pop().await })
        });
        let item = std::task::ready!(pop.as_mut().poll(cx));
        this.pending = None;
        Poll::Ready(item)
    }
}

impl<T> fmt::Debug for PopStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PopStream")
            .field("queue", &self.queue)
            .field("waiting", &self.pending.is_some())
            .finish()
    }
}

/// The producer side of a [`Queue`] as a [`Sink`]; made by [`Queue::into_sink`].
///
/// Under [`Policy::Block`](crate::Policy::Block) it is back-pressure for `SinkExt::send` and
/// `send_all`: readiness waits for room. Under the shedding policies nothing is lost in
/// silence either: an item shed or evicted ends the send with an error that carries the
/// [`PushOutcome`], item included. Closing the sink closes the queue.
///
/// One item at a time is held inside the sink until the queue takes it; each costs one small
/// allocation (the pending push).
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use futures_util::SinkExt;
/// use backpressure_pipeline::{Policy, PushOutcome, Queue};
///
/// # smol::block_on(async {
/// let queue = Arc::new(Queue::new(1, Policy::DropNewest)?);
/// let mut sink = queue.clone().into_sink();
/// sink.send("kept").await.expect("there is room");
/// assert_eq!(sink.send("shed").await, Err(PushOutcome::Shed("shed")));
/// sink.close().await.expect("nothing pending");
/// assert!(queue.is_closed());
/// # Ok::<(), backpressure_pipeline::ConfigError>(())
/// # }).unwrap();
/// ```
#[must_use = "sinks do nothing unless polled"]
pub struct PushSink<T> {
    queue: Arc<Queue<T>>,
    pending: Option<BoxedPush<T>>,
}

impl<T: Send + 'static> PushSink<T> {
    /// Drives the held push, if any, to its outcome.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PushOutcome<T>>> {
        let Some(push) = &mut self.pending else {
            return Poll::Ready(Ok(()));
        };
        let outcome = std::task::ready!(push.as_mut().poll(cx));
        self.pending = None;
        Poll::Ready(match outcome {
            PushOutcome::Accepted => Ok(()),
            other => Err(other),
        })
    }
}

impl<T: Send + 'static> Sink<T> for PushSink<T> {
    /// Any outcome but [`PushOutcome::Accepted`], with the item it hands back.
    type Error = PushOutcome<T>;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().poll_pending(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: T) -> Result<(), Self::Error> {
        let this = self.get_mut();
        let queue = this.queue.clone();
        // `poll_ready` returned `Ready` first, so nothing is pending: this replaces nothing.
        debug_assert!(this.pending.is_none());
        this.pending = Some(Box::pin(async move { queue.push(item).await }));
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().poll_pending(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        let flushed = std::task::ready!(this.poll_pending(cx));
        this.queue.close();
        Poll::Ready(flushed)
    }
}

impl<T> fmt::Debug for PushSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushSink")
            .field("queue", &self.queue)
            .field("holding", &self.pending.is_some())
            .finish()
    }
}
