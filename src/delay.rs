//! Shedding by queue delay at the exit: a maximum age (TTL) and CoDel, the reasons an item
//! is shed there, and the queue-delay histogram.
//!
//! An item's queue delay (its *sojourn time*, in CoDel's words) runs from the moment the
//! queue took it to the moment a worker would take it, on the [`Spawner`](crate::Spawner)'s
//! clock. Items are stamped only when a pipeline is built with a time-based feature
//! ([`max_age`](crate::PipelineBuilder::max_age), [`codel`](crate::PipelineBuilder::codel) or
//! [`measure_queue_delay`](crate::PipelineBuilder::measure_queue_delay)); without one the
//! queue reads no clock.

use std::fmt;
use std::time::{Duration, Instant};

/// CoDel ("controlled delay") at the queue's exit: sheds the oldest items while the queue
/// delay has stayed above `target` for a whole `interval`, faster and faster until it falls
/// below again.
///
/// The control law is the standard one, from K. Nichols and V. Jacobson, "Controlling Queue
/// Delay", ACM Queue 10(5), 2012, as specified in RFC 8289 (section 5 and its pseudocode):
///
/// - The queue delay is measured on the item at the head of the queue when a worker takes
///   work. While it is below `target` (or the queue empties), all is well.
/// - When it has stayed at or above `target` for `interval`, CoDel enters its *dropping*
///   state and sheds the head item; the next one is served.
/// - While dropping, it sheds the head item whenever the next drop time has come, the times
///   spaced `interval / sqrt(count)` apart (`count` drops so far in this spell), so the rate
///   grows until the delay falls.
/// - It leaves the dropping state as soon as the head item's delay is below `target`, or the
///   queue is empty. Re-entering soon after (within 16 intervals) resumes near the previous
///   rate, as the RFC's pseudocode does.
///
/// One difference from a packet queue: RFC 8289 also stops dropping while the queue holds
/// less than one packet's worth of bytes; items have no size here, so that check is left out.
///
/// With [`lifo`](Codel::lifo) the queue serves the *newest* item first while CoDel is in its
/// dropping state (Facebook's "adaptive LIFO", from B. Maurer, "Fail at Scale", ACM Queue
/// 13(8), 2015): under a standing backlog, fresh items are served while they are still worth
/// serving, and the stale ones at the head are shed by the control law. The delay CoDel
/// measures stays that of the head (the oldest) item, so LIFO does not hide the backlog from
/// it. Outside the dropping state the order is FIFO.
///
/// An item CoDel sheds is handed to [`on_expired`](crate::PipelineBuilder::on_expired) with
/// [`Expired::Codel`] and counted in `expired`.
///
/// # When CoDel alone is not enough
///
/// The control law is gentle by design: it sheds `sqrt(count) / interval` items per second,
/// about 125 in the first two seconds with the defaults. That is enough for a producer that
/// slows down when its items are shed (TCP does; so does a client that backs off on a
/// "too late" answer), which is the case CoDel was made for. A producer that keeps pushing
/// at twice what the workers can do refills each shed slot at once, and the backlog stays:
/// `examples/stall.rs` measures it (BENCHMARKS.md, "Recovery after a stall"): plain CoDel
/// recovers no sooner than FIFO there, while CoDel with [`lifo`](Codel::lifo) serves fresh
/// items at once and recovers within 20 ms at any capacity. For such producers use
/// `lifo(true)`, and add a [`max_age`](crate::PipelineBuilder::max_age) to clear the stale
/// items LIFO leaves behind, or use `max_age` alone.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use backpressure_pipeline::Codel;
///
/// // The RFC's defaults for the Internet: 5 ms target, 100 ms interval.
/// let codel = Codel::default();
/// assert_eq!(codel.target(), Duration::from_millis(5));
/// assert_eq!(codel.interval(), Duration::from_millis(100));
///
/// let codel = Codel::new(Duration::from_millis(20), Duration::from_millis(500)).lifo(true);
/// assert!(codel.is_lifo());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Codel {
    target: Duration,
    interval: Duration,
    lifo: bool,
}

impl Codel {
    /// CoDel with a queue-delay `target` and an `interval`, FIFO throughout.
    ///
    /// Both must be non-zero and `target` below `interval` (RFC 8289 suggests a target of
    /// 5–10 % of the interval, and an interval of about the worst normal time to serve a
    /// burst); the pipeline's builder checks this:
    /// [`ConfigError::Codel`](crate::ConfigError::Codel).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use backpressure_pipeline::Codel;
    ///
    /// let codel = Codel::new(Duration::from_millis(10), Duration::from_millis(200));
    /// assert!(!codel.is_lifo());
    /// ```
    pub const fn new(target: Duration, interval: Duration) -> Codel {
        Codel {
            target,
            interval,
            lifo: false,
        }
    }

    /// Serve the newest item first while CoDel is dropping (adaptive LIFO), or not.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::Codel;
    ///
    /// assert!(Codel::default().lifo(true).is_lifo());
    /// ```
    pub const fn lifo(mut self, lifo: bool) -> Codel {
        self.lifo = lifo;
        self
    }

    /// The queue-delay target.
    pub const fn target(&self) -> Duration {
        self.target
    }

    /// The interval over which the delay must stay above target before CoDel sheds.
    pub const fn interval(&self) -> Duration {
        self.interval
    }

    /// Whether the newest item is served first while dropping.
    pub const fn is_lifo(&self) -> bool {
        self.lifo
    }

    /// Whether the settings are usable: both non-zero, target below interval.
    pub(crate) fn is_valid(&self) -> bool {
        !self.target.is_zero() && self.target < self.interval
    }
}

impl Default for Codel {
    /// A 5 ms target and a 100 ms interval (RFC 8289's defaults), FIFO.
    fn default() -> Codel {
        Codel::new(Duration::from_millis(5), Duration::from_millis(100))
    }
}

/// Why an item was shed at the queue's exit, with its queue delay then: handed to
/// [`on_expired`](crate::PipelineBuilder::on_expired) with the item.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use backpressure_pipeline::Expired;
///
/// let why = Expired::MaxAge { age: Duration::from_millis(120) };
/// assert_eq!(why.age(), Duration::from_millis(120));
/// assert_eq!(why.to_string(), "older than the maximum age (waited 120ms)");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Expired {
    /// Older than [`max_age`](crate::PipelineBuilder::max_age) when a worker would have
    /// taken it.
    MaxAge {
        /// How long it had been in the queue.
        age: Duration,
    },
    /// Shed by [`Codel`]'s control law.
    Codel {
        /// How long it had been in the queue.
        age: Duration,
    },
}

impl Expired {
    /// How long the item had been in the queue.
    pub fn age(&self) -> Duration {
        match *self {
            Expired::MaxAge { age } | Expired::Codel { age } => age,
        }
    }
}

impl fmt::Display for Expired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expired::MaxAge { age } => {
                write!(f, "older than the maximum age (waited {age:?})")
            }
            Expired::Codel { age } => write!(f, "shed by CoDel (waited {age:?})"),
        }
    }
}

/// The number of buckets in a [`DelayHistogram`].
const BUCKETS: usize = 32;

/// Queue delays of the items served so far, in buckets by powers of two of a microsecond.
///
/// Bucket 0 holds delays under 1 µs; bucket `i` (1 ≤ i < 31) holds delays in
/// [2^(i−1), 2^i) µs; the last holds everything from 2^30 µs (about 18 minutes) on. So a
/// quantile is known to within a factor of two, in 256 bytes, with one add per item. Only
/// items handed to the work are counted; those shed at the exit are counted in `expired`.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{Pipeline, Policy, SmolSpawner};
///
/// # smol::block_on(async {
/// let pipeline = Pipeline::builder(8, Policy::Block)
///     .measure_queue_delay()
///     .spawn(SmolSpawner::new(), |_: u32| async {})?;
/// for i in 0..100 {
///     let _ = pipeline.push(i).await;
/// }
/// let report = pipeline.shutdown().await;
/// let delays = pipeline.stats().queue_delay.expect("measured");
/// assert_eq!(delays.count(), report.processed);
/// assert!(delays.quantile(0.99).is_some());
/// # Ok::<(), backpressure_pipeline::BuildError>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DelayHistogram {
    counts: [u64; BUCKETS],
    /// The longest delay recorded: the last bucket's upper edge, and a bound for all.
    max: Duration,
}

impl DelayHistogram {
    pub(crate) const fn new() -> DelayHistogram {
        DelayHistogram {
            counts: [0; BUCKETS],
            max: Duration::ZERO,
        }
    }

    pub(crate) fn record(&mut self, delay: Duration) {
        let micros = delay.as_micros();
        // 0 for < 1 µs; otherwise 1 + floor(log2(µs)), capped at the last bucket.
        let bucket = if micros == 0 {
            0
        } else {
            (1 + micros.ilog2() as usize).min(BUCKETS - 1)
        };
        self.counts[bucket] += 1;
        self.max = self.max.max(delay);
    }

    /// How many delays were recorded (items served).
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// An upper bound for the `q`-quantile of the delays (`q` in 0.0..=1.0, clamped): the
    /// upper edge of the bucket that holds it, or the longest delay recorded if that is
    /// less, so the true value is at most this and more than half of it. `None` when nothing
    /// was recorded. (The last bucket, from 2^30 µs on, has no edge of its own: its
    /// quantiles are the longest delay.)
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::DelayHistogram;
    ///
    /// assert_eq!(DelayHistogram::default().quantile(0.5), None);
    /// ```
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        // The rank of the quantile, 1-based: at least the first item.
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (bucket, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(upper_edge(bucket).min(self.max));
            }
        }
        unreachable!("the rank is at most the total")
    }

    /// The delays recorded since `earlier`, an earlier snapshot of the same histogram: the
    /// queue delay over a window of time (say, since the last scrape), where the histogram
    /// itself counts since the start. Saturates at zero if `earlier` is not earlier. The
    /// longest delay it bounds its quantiles with is still the one since the start.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::DelayHistogram;
    ///
    /// let start = DelayHistogram::default();
    /// assert_eq!(start.since(&start).count(), 0);
    /// ```
    pub fn since(&self, earlier: &DelayHistogram) -> DelayHistogram {
        let mut window = *self;
        for (count, before) in window.counts.iter_mut().zip(earlier.counts) {
            *count = count.saturating_sub(before);
        }
        window
    }

    /// The longest delay recorded, if any.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::DelayHistogram;
    ///
    /// assert_eq!(DelayHistogram::default().max(), None);
    /// ```
    pub fn max(&self) -> Option<Duration> {
        (self.count() > 0).then_some(self.max)
    }

    /// The buckets with at least one delay, as `(upper edge, count)`, shortest first. The
    /// last bucket's upper edge is `Duration::MAX`.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::DelayHistogram;
    ///
    /// assert_eq!(DelayHistogram::default().buckets().count(), 0);
    /// ```
    pub fn buckets(&self) -> impl Iterator<Item = (Duration, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &count)| count > 0)
            .map(|(bucket, &count)| (upper_edge(bucket), count))
    }
}

/// The upper edge (exclusive) of `bucket`: 2^bucket µs, and no edge for the last one.
fn upper_edge(bucket: usize) -> Duration {
    if bucket >= BUCKETS - 1 {
        Duration::MAX
    } else {
        Duration::from_micros(1 << bucket)
    }
}

impl Default for DelayHistogram {
    /// An empty histogram.
    fn default() -> DelayHistogram {
        DelayHistogram::new()
    }
}

impl fmt::Debug for DelayHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DelayHistogram")
            .field("count", &self.count())
            .field("p50", &self.quantile(0.5))
            .field("p99", &self.quantile(0.99))
            .field("max", &self.max())
            .finish()
    }
}

/// What CoDel decides for the item at the head of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Serve,
    Drop,
}

/// CoDel's state (RFC 8289, section 5.5's pseudocode), one step per head item.
///
/// The RFC's `dequeue` takes an item, may drop it and take the next, and so on, then serves
/// one. Here each head item gets one [`verdict`](CodelState::verdict); `Drop` means "shed it
/// and ask again for the next head", `Serve` ends the RFC's `dequeue`. `advance` carries the
/// one step the RFC takes *after* fetching the next item (`drop_next = control_law(..)`), and
/// `entered` the rule that the item after the entry drop is served.
#[derive(Debug, Clone)]
pub(crate) struct CodelState {
    target: Duration,
    interval: Duration,
    /// When the delay will have been above target for an interval; `None` while below.
    first_above: Option<Instant>,
    dropping: bool,
    drop_next: Option<Instant>,
    count: u32,
    last_count: u32,
    /// The previous verdict in this dequeue was a drop while dropping: move `drop_next` on.
    advance: bool,
    /// The previous verdict in this dequeue entered the dropping state with a drop.
    entered: bool,
}

impl CodelState {
    pub(crate) fn new(codel: &Codel) -> CodelState {
        CodelState {
            target: codel.target,
            interval: codel.interval,
            first_above: None,
            dropping: false,
            drop_next: None,
            count: 0,
            last_count: 0,
            advance: false,
            entered: false,
        }
    }

    /// Whether CoDel is in its dropping state (the queue is overloaded).
    pub(crate) fn is_dropping(&self) -> bool {
        self.dropping
    }

    /// The RFC's `dodequeue` test: whether the head item's `delay` allows a drop.
    fn ok_to_drop(&mut self, now: Instant, delay: Duration) -> bool {
        if delay < self.target {
            self.first_above = None;
            return false;
        }
        match self.first_above {
            None => {
                self.first_above = now.checked_add(self.interval);
                false
            }
            Some(first_above) => now >= first_above,
        }
    }

    /// `t + interval / sqrt(count)`.
    fn control_law(&self, t: Instant, count: u32) -> Option<Instant> {
        let step = self.interval.div_f64(f64::from(count.max(1)).sqrt());
        t.checked_add(step)
    }

    /// The verdict for the head item, whose queue delay is `delay` at `now`.
    pub(crate) fn verdict(&mut self, now: Instant, delay: Duration) -> Verdict {
        let ok = self.ok_to_drop(now, delay);
        if std::mem::take(&mut self.entered) {
            // The item after the entry drop is served (its test above still moved
            // `first_above`, as the RFC's `dodequeue` does).
            return Verdict::Serve;
        }
        if self.dropping {
            if !ok {
                self.dropping = false;
                self.advance = false;
                return Verdict::Serve;
            }
            if std::mem::take(&mut self.advance) {
                self.drop_next = self
                    .drop_next
                    .and_then(|next| self.control_law(next, self.count));
            }
            // `None`: the next drop is too far to represent; never.
            if self.drop_next.is_some_and(|next| now >= next) {
                self.count = self.count.saturating_add(1);
                self.advance = true;
                return Verdict::Drop;
            }
            return Verdict::Serve;
        }
        if !ok {
            return Verdict::Serve;
        }
        // Enter the dropping state, shedding this item.
        self.dropping = true;
        let delta = self.count.saturating_sub(self.last_count);
        let recent = self.drop_next.is_none_or(|next| {
            now.saturating_duration_since(next) < self.interval.saturating_mul(16)
        });
        self.count = if delta > 1 && recent { delta } else { 1 };
        self.drop_next = self.control_law(now, self.count);
        self.last_count = self.count;
        self.entered = true;
        Verdict::Drop
    }

    /// A worker found the queue empty: the delay is below target by definition.
    pub(crate) fn on_empty(&mut self) {
        self.first_above = None;
        self.dropping = false;
        self.advance = false;
        self.entered = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn histogram_buckets_and_quantiles() {
        let mut h = DelayHistogram::new();
        h.record(Duration::from_nanos(500)); // bucket 0: < 1 µs
        h.record(Duration::from_micros(1)); // [1, 2) µs
        h.record(Duration::from_micros(3)); // [2, 4) µs
        h.record(Duration::from_micros(1000)); // [512, 1024) µs
        assert_eq!(h.count(), 4);
        assert_eq!(h.quantile(0.0), Some(Duration::from_micros(1)));
        assert_eq!(h.quantile(0.5), Some(Duration::from_micros(2)));
        assert_eq!(h.quantile(0.75), Some(Duration::from_micros(4)));
        // The top bucket is [512, 1024) µs, bounded by the longest delay, 1000 µs.
        assert_eq!(h.quantile(1.0), Some(Duration::from_micros(1000)));
        let before = h;
        h.record(Duration::from_secs(1200)); // 20 minutes: the last bucket
        assert_eq!(h.quantile(1.0), Some(Duration::from_secs(1200)));
        assert_eq!(h.max(), Some(Duration::from_secs(1200)));
        let window = h.since(&before);
        assert_eq!(window.count(), 1);
        assert_eq!(window.quantile(0.0), Some(Duration::from_secs(1200)));
        assert_eq!(before.since(&h).count(), 0, "saturates");
    }

    /// A scripted trace, checked step by step against RFC 8289's pseudocode by hand.
    #[test]
    fn codel_enters_drops_faster_and_leaves() {
        let t0 = Instant::now();
        let at = |n: u64| t0 + ms(n);
        let mut codel = CodelState::new(&Codel::new(ms(5), ms(100)));
        // Below target: served, nothing armed.
        assert_eq!(codel.verdict(at(0), ms(4)), Verdict::Serve);
        // At target: armed to drop at 10 + 100 = 110, still served.
        assert_eq!(codel.verdict(at(10), ms(5)), Verdict::Serve);
        assert_eq!(codel.verdict(at(109), ms(50)), Verdict::Serve);
        assert!(!codel.is_dropping());
        // A full interval above target: enter dropping, shed this head, serve the next.
        assert_eq!(codel.verdict(at(110), ms(50)), Verdict::Drop);
        assert!(codel.is_dropping());
        assert_eq!(codel.verdict(at(110), ms(49)), Verdict::Serve);
        // Next drop at 110 + 100/sqrt(1) = 210.
        assert_eq!(codel.verdict(at(209), ms(60)), Verdict::Serve);
        assert_eq!(codel.verdict(at(210), ms(60)), Verdict::Drop);
        // count 2: the next at 210 + 100/sqrt(2) ≈ 280.71.
        assert_eq!(codel.verdict(at(210), ms(60)), Verdict::Serve);
        assert_eq!(codel.verdict(at(280), ms(60)), Verdict::Serve);
        assert_eq!(codel.verdict(at(281), ms(60)), Verdict::Drop);
        // count 3: 280.71 + 100/sqrt(3) ≈ 338.45.
        assert_eq!(codel.verdict(at(281), ms(60)), Verdict::Serve);
        assert_eq!(codel.verdict(at(338), ms(60)), Verdict::Serve);
        assert_eq!(codel.verdict(at(339), ms(60)), Verdict::Drop);
        // Two heads due at once: both shed in one dequeue (339 ≥ 338.45 and the next is
        // 338.45 + 50 = 388.45 > 339, so the second is served).
        assert_eq!(codel.verdict(at(339), ms(60)), Verdict::Serve);
        // Below target: leave at once.
        assert_eq!(codel.verdict(at(400), ms(4)), Verdict::Serve);
        assert!(!codel.is_dropping());
        // Back above soon after: re-armed, and re-entering resumes near the last rate
        // (count - last_count = 4 - 1 = 3 > 1, within 16 intervals of drop_next).
        assert_eq!(codel.verdict(at(410), ms(6)), Verdict::Serve);
        assert_eq!(codel.verdict(at(510), ms(6)), Verdict::Drop);
        assert!(codel.is_dropping());
        assert_eq!(codel.count, 3);
        // An empty queue leaves the dropping state and disarms.
        codel.on_empty();
        assert!(!codel.is_dropping());
        assert_eq!(codel.verdict(at(520), ms(6)), Verdict::Serve);
        assert!(!codel.is_dropping());
    }

    #[test]
    fn codel_sheds_a_burst_of_due_heads_in_one_dequeue() {
        let t0 = Instant::now();
        let mut codel = CodelState::new(&Codel::new(ms(5), ms(100)));
        assert_eq!(codel.verdict(t0, ms(10)), Verdict::Serve);
        assert_eq!(codel.verdict(t0 + ms(100), ms(10)), Verdict::Drop); // enter
        assert_eq!(codel.verdict(t0 + ms(100), ms(10)), Verdict::Serve);
        // Long after: drop_next (200) is due; after each drop it moves on by 100/sqrt(n):
        // 200, 270.7, 328.5, 378.5, 423.2, ... all before 450: a run of drops in one go.
        let now = t0 + ms(450);
        let mut drops = 0;
        while codel.verdict(now, ms(10)) == Verdict::Drop {
            drops += 1;
        }
        assert_eq!(drops, 5);
    }
}
