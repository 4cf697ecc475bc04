//! Pressure watermarks: an awaitable signal for when the queue fills past a high mark, and
//! for when it has drained back to a low mark.

use std::fmt;
use std::sync::Arc;

use crate::queue::PressureCell;
use crate::sync::Ordering;

/// The queue's pressure level, between two watermarks.
///
/// `High` from the moment the queue's length reaches the high mark, until it falls to the
/// low mark; `Normal` from then until it reaches the high mark again. The gap between the
/// marks is the hysteresis: a length that wobbles around one mark never flips the level.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::PressureLevel;
///
/// assert!(PressureLevel::High.is_high());
/// assert!(!PressureLevel::Normal.is_high());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PressureLevel {
    /// Below the high mark since the length last fell to the low mark (or since the start).
    Normal,
    /// At or above the high mark, and not yet back down to the low mark.
    High,
}

impl PressureLevel {
    /// Whether the level is `High`.
    pub fn is_high(self) -> bool {
        self == PressureLevel::High
    }

    /// The level after `crossings` crossings from `Normal`.
    fn after(crossings: u64) -> PressureLevel {
        if crossings % 2 == 1 {
            PressureLevel::High
        } else {
            PressureLevel::Normal
        }
    }
}

/// A watcher of a pipeline's pressure level, from
/// [`Pipeline::pressure`](crate::Pipeline::pressure) (with
/// [`watermarks`](crate::PipelineBuilder::watermarks) configured).
///
/// Each handle remembers the last crossing it reported, so [`changed`](Pressure::changed)
/// resolves when a crossing has happened since, and never twice for one. A watcher that is
/// slow to look gets the crossings it missed merged into one report of the latest level, as
/// a `tokio::sync::watch` receiver sees the latest value (so it may report the same level
/// twice in a row, after a crossing there and back); the crossing count
/// ([`crossings`](Pressure::crossings)) says how many there were. Clone it to watch from
/// several tasks; each clone remembers on its own.
///
/// Typical uses: pause an upstream reader (a socket, a broker subscription) while the level
/// is high, scale out, or raise an alert.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{Pipeline, Policy, PressureLevel, SmolSpawner};
///
/// # smol::block_on(async {
/// let (gate, opened) = async_channel::bounded::<()>(1);
/// let pipeline = Pipeline::builder(8, Policy::Block)
///     .watermarks(6, 2)
///     .spawn(SmolSpawner::new(), move |_: u32| {
///         let opened = opened.clone();
///         async move {
///             let _ = opened.recv().await; // the worker waits until the gate opens
///         }
///     })?;
/// let mut pressure = pipeline.pressure().expect("watermarks are configured");
/// for i in 0..7 {
///     let _ = pipeline.push(i).await;
/// }
/// // 6 or 7 queued (one may be in the worker's hands): the high mark was reached.
/// assert_eq!(pressure.changed().await, Some(PressureLevel::High));
/// gate.close(); // the worker drains the queue
/// assert_eq!(pressure.changed().await, Some(PressureLevel::Normal));
/// assert_eq!(pressure.crossings(), 2);
/// # pipeline.shutdown().await;
/// # Ok::<(), backpressure_pipeline::BuildError>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct Pressure {
    cell: Arc<PressureCell>,
    /// The crossings this handle has reported.
    seen: u64,
}

impl Pressure {
    pub(crate) fn new(cell: Arc<PressureCell>) -> Pressure {
        // Acquire: as in `changed`.
        let seen = cell.crossings.load(Ordering::Acquire);
        Pressure { cell, seen }
    }

    /// The level now.
    pub fn level(&self) -> PressureLevel {
        PressureLevel::after(self.cell.crossings.load(Ordering::Acquire))
    }

    /// How many times the level has changed since the watermarks were set (the first change
    /// is to `High`).
    pub fn crossings(&self) -> u64 {
        self.cell.crossings.load(Ordering::Acquire)
    }

    /// Waits for the next crossing this handle has not reported, and returns the level then
    /// (the latest level, if more than one crossing happened). `None` once the queue is
    /// closed (a pipeline's shutdown or stop, or [`Queue::close`](crate::Queue::close)), or
    /// its marks replaced by new ones ([`Queue::watermarks`](crate::Queue::watermarks)), with
    /// no crossing left to report: no crossing comes after that.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the handle marks a crossing as reported only in the poll that returns
    /// it, so a `changed` dropped before it completes loses nothing.
    pub async fn changed(&mut self) -> Option<PressureLevel> {
        // Check, listen, check again (the crate's rule): a crossing between the first check
        // and the listen is seen by the second. Terminates: each turn either returns or
        // waits for a notification, which comes with a crossing or the close.
        loop {
            if let Some(level) = self.unseen() {
                return level;
            }
            let listener = self.cell.event.listen();
            if let Some(level) = self.unseen() {
                return level;
            }
            listener.await;
        }
    }

    /// `Some(Some(level))` for an unreported crossing, `Some(None)` once closed, `None` to
    /// wait.
    fn unseen(&mut self) -> Option<Option<PressureLevel>> {
        // The flag first: the close is stored after every crossing (under the queue's lock),
        // so a count read after seeing it is final.
        // Acquire: pairs with the Release stores of the count and the flag.
        let closed = self.cell.closed.load(Ordering::Acquire);
        let crossings = self.cell.crossings.load(Ordering::Acquire);
        if crossings != self.seen {
            self.seen = crossings;
            return Some(Some(PressureLevel::after(crossings)));
        }
        closed.then_some(None)
    }
}

impl fmt::Debug for Pressure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pressure")
            .field("level", &self.level())
            .field("crossings", &self.crossings())
            .field("seen", &self.seen)
            .finish()
    }
}
