//! The queue as a `futures` [`Stream`] (the consumer side) and [`Sink`] (the producer side).

use std::error::Error;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures_core::{FusedStream, Stream};
use futures_sink::Sink;

use crate::policy::{Policy, PushOutcome};
use crate::queue::{Queue, Ticket};

/// The hook a [`PushSink`] hands shed and evicted items to. Behind a mutex only so that the
/// sink is `Sync` without asking the hook to be: it is reached through `&mut self`
/// (`get_mut`), never locked.
type ShedHook<T> = Mutex<Box<dyn FnMut(T) + Send>>;

/// The consumer side of a [`Queue`] as a [`Stream`]; made by [`Queue::into_stream`].
///
/// Yields items oldest first and ends when the queue is closed and empty; after that it is
/// terminated ([`FusedStream`]) and yields `None` again without looking at the queue.
/// [`Queue::pop_many`] is the fast path for consumers that can take batches.
///
/// A stream that is polled, returns `Pending`, and is then kept without being polled holds
/// at most one wake-up, as [`Queue::pop`] does: the other consumers are still woken for the
/// other items.
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
    /// A place in the poppers' line.
    ticket: Option<Ticket>,
    done: bool,
}

impl<T> Queue<T> {
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
            ticket: None,
            done: false,
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
    /// sink.send(1).await.expect("the queue is open");
    /// assert_eq!(queue.pop().await, Some(1));
    /// # Ok::<(), backpressure_pipeline::ConfigError>(())
    /// # }).unwrap();
    /// ```
    pub fn into_sink(self: Arc<Self>) -> PushSink<T> {
        PushSink {
            queue: self,
            ticket: None,
            reserved: false,
            on_shed: None,
        }
    }
}

impl<T> Stream for PopStream<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let item = std::task::ready!(this.queue.poll_pop(cx, &mut this.ticket));
        this.done = item.is_none();
        Poll::Ready(item)
    }
}

impl<T> FusedStream for PopStream<T> {
    fn is_terminated(&self) -> bool {
        self.done
    }
}

impl<T> Drop for PopStream<T> {
    fn drop(&mut self) {
        if self.ticket.is_some() {
            self.queue.leave_poppers(&mut self.ticket);
        }
    }
}

impl<T> fmt::Debug for PopStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PopStream")
            .field("queue", &self.queue)
            .field("waiting", &self.ticket.is_some())
            .field("done", &self.done)
            .finish()
    }
}

/// The producer side of a [`Queue`] as a [`Sink`]; made by [`Queue::into_sink`].
///
/// An item the sink accepts (`start_send` returned `Ok`) is in the queue, or was handed to
/// the shed hook: nothing the sink accepted is lost when the sink is dropped, because it
/// holds nothing (as futures' mpsc `Sender` and tokio-util's `PollSender`, it enqueues in
/// `start_send`; `poll_flush` has nothing to do).
///
/// # Back-pressure (`Policy::Block`)
///
/// `poll_ready` waits for room and reserves a slot for the next `start_send`, in line with
/// the producers waiting in [`Queue::push`]. A reserved slot that is never used is given
/// back when the sink is dropped or closed.
///
/// # Shedding (`Policy::DropNewest`, `Policy::DropOldest`)
///
/// `poll_ready` is ready at once (except that, like [`Queue::push`], it yields to the
/// runtime once after 256 sends into a full queue with no pop in between, so that workers
/// sharing the thread are not starved), and a send never fails because the queue is full:
/// the shed item (the incoming one under `DropNewest`, the evicted oldest under
/// `DropOldest`) goes to the hook set with [`on_shed`](PushSink::on_shed), and without a
/// hook it is dropped; either way the queue counts it ([`Queue::stats`]). So
/// `stream.forward(sink)` keeps going through overload, and the loss stays visible.
///
/// # Closing
///
/// `poll_close` (which `SinkExt::close` and the end of `StreamExt::forward` call) closes
/// the **queue**, for every producer and sink that shares it: its consumers then drain what
/// is left and end. Drop the sink instead of closing it to leave the queue open.
///
/// # Errors
///
/// Once the queue is closed, `poll_ready` fails with a [`SendError`] holding no item, and
/// `start_send` with one holding the item.
///
/// # Examples
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use futures_util::{stream, StreamExt};
/// use backpressure_pipeline::{Policy, Queue};
///
/// # smol::block_on(async {
/// let queue = Arc::new(Queue::new(2, Policy::DropNewest)?);
/// let shed = Arc::new(Mutex::new(Vec::new()));
/// let sink = queue.clone().into_sink().on_shed({
///     let shed = shed.clone();
///     move |item| shed.lock().unwrap().push(item)
/// });
/// stream::iter(0..5).map(Ok).forward(sink).await.expect("the queue is open");
/// assert_eq!(*shed.lock().unwrap(), [2, 3, 4]);
/// assert_eq!(queue.stats().shed, 3);
/// # Ok::<(), backpressure_pipeline::ConfigError>(())
/// # }).unwrap();
/// ```
#[must_use = "sinks do nothing unless polled"]
pub struct PushSink<T> {
    queue: Arc<Queue<T>>,
    /// A place in the producers' line (under `Block`).
    ticket: Option<Ticket>,
    /// Whether a slot is reserved for the next `start_send` (under `Block`).
    reserved: bool,
    on_shed: Option<ShedHook<T>>,
}

impl<T> PushSink<T> {
    /// Hands each item shed or evicted by a send to `hook` (by value: keep it, log it, send
    /// it elsewhere). Without a hook such items are dropped, and counted by the queue.
    ///
    /// The hook runs in the sending task, after the queue's lock is released. If it panics,
    /// the panic surfaces from that `start_send`; the queue has counted the item already.
    /// It is the sink's own hook, separate from
    /// [`PipelineBuilder::on_shed`](crate::PipelineBuilder::on_shed) (which sees items by
    /// reference), and need not be `Sync`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use futures_util::SinkExt;
    /// use backpressure_pipeline::{Policy, Queue};
    ///
    /// # smol::block_on(async {
    /// let queue = Arc::new(Queue::new(1, Policy::DropOldest)?);
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let mut sink = queue.clone().into_sink().on_shed(move |old| tx.send(old).unwrap());
    /// sink.send("first").await.unwrap();
    /// sink.send("second").await.unwrap();
    /// assert_eq!(rx.try_recv(), Ok("first")); // evicted
    /// # Ok::<(), backpressure_pipeline::ConfigError>(())
    /// # }).unwrap();
    /// ```
    pub fn on_shed(mut self, hook: impl FnMut(T) + Send + 'static) -> Self {
        self.on_shed = Some(Mutex::new(Box::new(hook)));
        self
    }

    /// Gives back a reserved slot and a place in line, if any.
    fn release(&mut self) {
        if self.ticket.is_some() {
            self.queue.leave_producers(&mut self.ticket);
        }
        if std::mem::take(&mut self.reserved) {
            self.queue.release_reserved();
        }
    }
}

impl<T> Sink<T> for PushSink<T> {
    type Error = SendError<T>;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError<T>>> {
        let this = self.get_mut();
        if this.queue.policy() != Policy::Block {
            if this.queue.is_closed() {
                return Poll::Ready(Err(SendError::closed(None)));
            }
            // Under overload with the workers making no progress, let them run, as
            // `Queue::push` does (before the item is taken, so nothing is held meanwhile).
            if this.queue.overload_yield_due() {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            return Poll::Ready(Ok(()));
        }
        if this.queue.is_closed() {
            // A slot reserved before the close is of no use now: give it back.
            this.release();
            return Poll::Ready(Err(SendError::closed(None)));
        }
        if this.reserved {
            return Poll::Ready(Ok(()));
        }
        match std::task::ready!(this.queue.poll_reserve(cx, &mut this.ticket)) {
            Ok(()) => {
                this.reserved = true;
                Poll::Ready(Ok(()))
            }
            Err(()) => Poll::Ready(Err(SendError::closed(None))),
        }
    }

    fn start_send(self: Pin<&mut Self>, item: T) -> Result<(), SendError<T>> {
        let this = self.get_mut();
        let outcome = if std::mem::take(&mut this.reserved) {
            this.queue.push_reserved(item)
        } else {
            // Under `Block` this is a `start_send` without `poll_ready` (against the `Sink`
            // contract): push if there is room, and hand the item back if not.
            this.queue.try_push(item)
        };
        match outcome {
            PushOutcome::Accepted => Ok(()),
            // A queue of your own never supersedes (only a coalescing pipeline's does).
            PushOutcome::Shed(item)
            | PushOutcome::Evicted(item)
            | PushOutcome::Superseded(item) => {
                if let Some(hook) = &mut this.on_shed {
                    (hook.get_mut().unwrap_or_else(PoisonError::into_inner))(item);
                }
                Ok(())
            }
            PushOutcome::Full(item) => Err(SendError::full(item)),
            PushOutcome::Closed(item) => Err(SendError::closed(Some(item))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), SendError<T>>> {
        // Nothing is held: `start_send` enqueued the item.
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), SendError<T>>> {
        let this = self.get_mut();
        this.release();
        this.queue.close();
        Poll::Ready(Ok(()))
    }
}

impl<T> Drop for PushSink<T> {
    fn drop(&mut self) {
        self.release();
    }
}

impl<T> fmt::Debug for PushSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushSink")
            .field("queue", &self.queue)
            .field("reserved", &self.reserved)
            .field("on_shed", &self.on_shed.is_some())
            .finish()
    }
}

/// A [`PushSink`] could not send: the queue is closed (or, under `Block`, was full for a
/// `start_send` not preceded by `poll_ready`). Holds the item when there was one.
///
/// The `futures` error of the sink, as async-channel's `SendError` and tokio-util's
/// `PollSendError`; it implements [`std::error::Error`], so `sink.send(x).await?` works in a
/// function returning `anyhow::Result` or `Box<dyn Error>`. `Debug` leaves the item out.
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
/// queue.close();
/// let err = queue.clone().into_sink().send(1).await.unwrap_err();
/// assert!(err.is_closed());
/// assert_eq!(err.to_string(), "sending into a closed queue");
/// let _: &dyn std::error::Error = &err;
/// # Ok::<(), backpressure_pipeline::ConfigError>(())
/// # }).unwrap();
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct SendError<T> {
    item: Option<T>,
    full: bool,
}

impl<T> SendError<T> {
    fn closed(item: Option<T>) -> Self {
        SendError { item, full: false }
    }

    fn full(item: T) -> Self {
        SendError {
            item: Some(item),
            full: true,
        }
    }

    /// Whether the queue was closed (otherwise it was full).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use futures_util::SinkExt;
    /// use backpressure_pipeline::{Policy, Queue};
    ///
    /// # smol::block_on(async {
    /// let queue = Arc::new(Queue::new(1, Policy::Block)?);
    /// queue.close();
    /// assert!(queue.into_sink().send(1).await.unwrap_err().is_closed());
    /// # Ok::<(), backpressure_pipeline::ConfigError>(())
    /// # }).unwrap();
    /// ```
    pub fn is_closed(&self) -> bool {
        !self.full
    }

    /// The item that was not sent, if the failure came with one (`start_send`, not
    /// `poll_ready`).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::pin::Pin;
    /// use std::sync::Arc;
    /// use futures_util::Sink;
    /// use backpressure_pipeline::{Policy, Queue};
    ///
    /// let queue = Arc::new(Queue::new(1, Policy::DropNewest)?);
    /// let mut sink = queue.clone().into_sink();
    /// queue.close();
    /// let err = Pin::new(&mut sink).start_send("late").unwrap_err();
    /// assert_eq!(err.into_inner(), Some("late"));
    /// # Ok::<(), backpressure_pipeline::ConfigError>(())
    /// ```
    pub fn into_inner(self) -> Option<T> {
        self.item
    }
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.full { "Full" } else { "Closed" };
        match self.item {
            Some(_) => write!(f, "SendError::{kind}(..)"),
            None => write!(f, "SendError::{kind}"),
        }
    }
}

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.full {
            f.write_str("the queue is full (start_send without poll_ready)")
        } else {
            f.write_str("sending into a closed queue")
        }
    }
}

impl<T> Error for SendError<T> {}
