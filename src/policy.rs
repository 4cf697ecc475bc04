//! What a full queue does, and what a push tells its caller.

use core::fmt;

/// What a full queue does with a new item. There is no default: choose one.
///
/// | policy | when the queue is full | the push returns | use it for |
/// |---|---|---|---|
/// | [`DropNewest`] | the incoming item is shed | [`PushOutcome::Shed`] | event/command streams: keep order, see the loss |
/// | [`DropOldest`] | the oldest buffered item is evicted | [`PushOutcome::Evicted`] | position/state streams: keep the freshest sample |
/// | [`Block`] | the producer waits for room | [`PushOutcome::Accepted`] (later) | work that must not be lost: true back-pressure |
///
/// # The same words elsewhere
///
/// The names mean different things in different libraries. Ours describe what is discarded:
/// `DropNewest` sheds the *incoming* item, `DropOldest` evicts the *oldest buffered* one.
///
/// | ours | Kotlin `BufferOverflow` | .NET `BoundedChannelFullMode` | Akka `OverflowStrategy` | Reactor `BufferOverflowStrategy` | async-channel | tokio `mpsc` |
/// |---|---|---|---|---|---|---|
/// | `DropNewest` | `DROP_LATEST` | `DropWrite` | `dropNew` | `DROP_LATEST` | `try_send` → `Full` | `try_send` → `Full` |
/// | `DropOldest` | `DROP_OLDEST` | `DropOldest` | `dropHead` | `DROP_OLDEST` | `force_send` | — (needs a real ring) |
/// | `Block` | `SUSPEND` | `Wait` | `backpressure` | (request-driven) | `send().await` | `send().await` |
/// | — | — | `DropNewest` (evicts the newest *buffered* item) | `dropTail` (same) | — | — | — |
///
/// Beware the last row: .NET's `DropNewest` and Akka's `dropTail` evict the newest item
/// *already in the buffer* and keep the incoming one; nothing here does that, and our
/// `DropNewest` is not theirs.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{Policy, PushOutcome, Queue};
///
/// let queue = Queue::new(1, Policy::DropOldest)?;
/// assert!(queue.try_push("old").is_accepted());
/// assert_eq!(queue.try_push("new"), PushOutcome::Evicted("old"));
/// # Ok::<(), backpressure_pipeline::ConfigError>(())
/// ```
///
/// [`DropNewest`]: Policy::DropNewest
/// [`DropOldest`]: Policy::DropOldest
/// [`Block`]: Policy::Block
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Shed the incoming item and hand it back; the backlog keeps its order.
    DropNewest,
    /// Evict the oldest buffered item and hand it back; the incoming item is kept.
    DropOldest,
    /// Make the producer wait for room; nothing is ever shed.
    Block,
}

/// What became of a pushed item.
///
/// In every case but [`Accepted`] an item comes back to the caller: the incoming one when it was
/// not taken ([`Shed`], [`Full`], [`Closed`]), or the evicted oldest one when the incoming one
/// was taken in its place ([`Evicted`]), or its key's pending item that it replaced
/// ([`Superseded`](PushOutcome::Superseded)). Nothing is ever reported as accepted when an item was
/// lost. `Debug` leaves the item out.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{Policy, PushOutcome, Queue};
///
/// let queue = Queue::new(1, Policy::DropNewest)?;
/// assert_eq!(queue.try_push(1), PushOutcome::Accepted);
/// let outcome = queue.try_push(2);
/// assert!(!outcome.is_accepted());
/// assert_eq!(outcome.into_inner(), Some(2));
/// # Ok::<(), backpressure_pipeline::ConfigError>(())
/// ```
///
/// [`Accepted`]: PushOutcome::Accepted
/// [`Evicted`]: PushOutcome::Evicted
/// [`Shed`]: PushOutcome::Shed
/// [`Full`]: PushOutcome::Full
/// [`Closed`]: PushOutcome::Closed
#[must_use = "a push may hand an item back; ignoring it loses that item in silence"]
#[derive(Clone, PartialEq, Eq)]
pub enum PushOutcome<T> {
    /// The item was enqueued and nothing was shed.
    Accepted,
    /// The item was enqueued; the oldest buffered item was evicted to make room
    /// ([`Policy::DropOldest`]) and is returned here.
    Evicted(T),
    /// The item was enqueued in the place of the pending item of its key, which is returned
    /// here: a keyed pipeline that coalesces
    /// ([`PipelineBuilder::coalesce`](crate::PipelineBuilder::coalesce)) keeps only the
    /// latest item of a key waiting. Not a loss to overload: counted as `superseded`, not
    /// `dropped`, and not shown to the shed hook.
    Superseded(T),
    /// The queue was full and the incoming item was shed ([`Policy::DropNewest`]).
    Shed(T),
    /// The queue was full and `try_push` does not wait ([`Policy::Block`]).
    Full(T),
    /// The queue is closed; the incoming item was not taken.
    Closed(T),
}

impl<T> PushOutcome<T> {
    /// Whether the incoming item is now in the queue ([`Accepted`], [`Evicted`] or
    /// [`Superseded`](PushOutcome::Superseded)).
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::PushOutcome;
    ///
    /// assert!(PushOutcome::Evicted("old").is_accepted()); // the incoming one went in
    /// assert!(!PushOutcome::Shed("new").is_accepted());
    /// ```
    ///
    /// [`Accepted`]: PushOutcome::Accepted
    /// [`Evicted`]: PushOutcome::Evicted
    pub fn is_accepted(&self) -> bool {
        matches!(
            self,
            PushOutcome::Accepted | PushOutcome::Evicted(_) | PushOutcome::Superseded(_)
        )
    }

    /// Whether the policy discarded an item ([`Shed`] or [`Evicted`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::PushOutcome;
    ///
    /// assert!(PushOutcome::Shed(1).is_dropped());
    /// assert!(!PushOutcome::Closed(1).is_dropped()); // handed back, not discarded
    /// ```
    ///
    /// [`Shed`]: PushOutcome::Shed
    /// [`Evicted`]: PushOutcome::Evicted
    pub fn is_dropped(&self) -> bool {
        matches!(self, PushOutcome::Shed(_) | PushOutcome::Evicted(_))
    }

    /// The item handed back, if any: the evicted one for [`Evicted`], the incoming one
    /// otherwise.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::PushOutcome;
    ///
    /// assert_eq!(PushOutcome::Evicted("old").into_inner(), Some("old"));
    /// assert_eq!(PushOutcome::<&str>::Accepted.into_inner(), None);
    /// ```
    ///
    /// [`Evicted`]: PushOutcome::Evicted
    pub fn into_inner(self) -> Option<T> {
        match self {
            PushOutcome::Accepted => None,
            PushOutcome::Evicted(item)
            | PushOutcome::Superseded(item)
            | PushOutcome::Shed(item)
            | PushOutcome::Full(item)
            | PushOutcome::Closed(item) => Some(item),
        }
    }
}

impl<T> fmt::Debug for PushOutcome<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PushOutcome::Accepted => "Accepted",
            PushOutcome::Evicted(_) => "Evicted(..)",
            PushOutcome::Superseded(_) => "Superseded(..)",
            PushOutcome::Shed(_) => "Shed(..)",
            PushOutcome::Full(_) => "Full(..)",
            PushOutcome::Closed(_) => "Closed(..)",
        })
    }
}

/// A configuration value out of range, reported where it is given.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{ConfigError, Policy, Queue};
///
/// let err = Queue::<u32>::new(0, Policy::Block).unwrap_err();
/// assert_eq!(err, ConfigError::ZeroCapacity);
/// assert_eq!(err.to_string(), "capacity must be at least 1");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A queue needs room for at least one item.
    ZeroCapacity,
    /// The capacity is above [`Queue::MAX_CAPACITY`](crate::Queue::MAX_CAPACITY).
    CapacityTooLarge,
    /// A pipeline needs at least one worker.
    ZeroWorkers,
    /// The worker count is above [`MAX_WORKERS`](crate::PipelineBuilder::MAX_WORKERS).
    TooManyWorkers,
    /// A [`Retry`](crate::Retry) policy allows no attempt at all.
    ZeroAttempts,
    /// A [`Batch`](crate::Batch) of at most zero items.
    ZeroBatch,
    /// A dead-letter hook that does not fit the worker mode:
    /// [`dead_letter`](crate::PipelineBuilder::dead_letter) is for one item at a time,
    /// [`dead_letter_batch`](crate::PipelineBuilder::dead_letter_batch) for batches.
    DeadLetterMode,
    /// A zero [`max_age`](crate::PipelineBuilder::max_age): every item would expire.
    ZeroMaxAge,
    /// [`Codel`](crate::Codel) settings out of range: a zero target, or a target not below
    /// the interval.
    Codel,
    /// Watermarks out of range: the low mark must be below the high mark, and the high mark
    /// between 1 and the capacity.
    Watermarks,
    /// [`per_key`](crate::PipelineBuilder::per_key) was 0.
    ZeroPerKey,
    /// [`per_key`](crate::PipelineBuilder::per_key) or
    /// [`coalesce`](crate::PipelineBuilder::coalesce) without
    /// [`key_by`](crate::PipelineBuilder::key_by).
    NoKey,
    /// [`coalesce`](crate::PipelineBuilder::coalesce) with a
    /// [`per_key`](crate::PipelineBuilder::per_key) above 1: coalescing runs one item of a
    /// key at a time.
    CoalescePerKey,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConfigError::ZeroCapacity => "capacity must be at least 1",
            ConfigError::CapacityTooLarge => "capacity is too large",
            ConfigError::ZeroWorkers => "a pipeline needs at least one worker",
            ConfigError::TooManyWorkers => "too many workers",
            ConfigError::ZeroAttempts => "a retry policy needs at least one attempt",
            ConfigError::ZeroBatch => "a batch needs room for at least one item",
            ConfigError::DeadLetterMode => {
                "the dead-letter hook does not fit the worker mode: `dead_letter` takes one \
                 item, `dead_letter_batch` a batch"
            }
            ConfigError::ZeroMaxAge => "the maximum age must be above zero",
            ConfigError::Codel => "CoDel needs a non-zero target below its interval",
            ConfigError::Watermarks => "watermarks need low < high <= capacity",
            ConfigError::ZeroPerKey => "per_key must be at least 1",
            ConfigError::NoKey => "per_key and coalesce need a key: call key_by",
            ConfigError::CoalescePerKey => {
                "coalescing runs one item of a key at a time: per_key must be 1"
            }
        })
    }
}

impl std::error::Error for ConfigError {}
