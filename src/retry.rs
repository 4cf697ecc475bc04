//! How often, and how patiently, a failed attempt is tried again.

use std::time::Duration;

/// Bounded attempts with exponential backoff and jitter: for items whose work failed
/// ([`PipelineBuilder::retry`](crate::PipelineBuilder::retry)) and for worker state that
/// could not be built or must be rebuilt
/// ([`PipelineBuilder::start_retry`](crate::PipelineBuilder::start_retry)).
///
/// After the `n`-th failed attempt (`n ≥ 1`) the wait before the next one is
/// `min(max, initial × 2ⁿ⁻¹)`; with jitter (the default) it is drawn uniformly from the upper
/// half of that, `[d/2, d]` ("equal jitter", from AWS's *Exponential Backoff and Jitter*,
/// 2015), so that workers failing together do not retry together. The waits run on the
/// pipeline's [`Spawner`](crate::Spawner) timer.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use backpressure_pipeline::Retry;
///
/// let retry = Retry::attempts(4)
///     .backoff(Duration::from_millis(10), Duration::from_millis(50))
///     .jitter(false);
/// assert_eq!(retry.max_attempts(), 4);
/// // The waits after the 1st, 2nd, 3rd failure: 10 ms, 20 ms, 40 ms, then capped at 50 ms.
/// assert_eq!(retry.delay(1), Duration::from_millis(10));
/// assert_eq!(retry.delay(3), Duration::from_millis(40));
/// assert_eq!(retry.delay(4), Duration::from_millis(50));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Retry {
    attempts: u32,
    initial: Duration,
    max: Duration,
    jitter: bool,
}

impl Retry {
    /// No second attempt: a failure is final.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::Retry;
    ///
    /// assert_eq!(Retry::never().max_attempts(), 1);
    /// ```
    pub const fn never() -> Retry {
        Retry::attempts(1)
    }

    /// At most `attempts` attempts in all (the first one included), with a backoff of
    /// 100 ms doubling up to 10 s, with jitter. Zero is refused when the pipeline is built
    /// ([`ConfigError::ZeroAttempts`](crate::ConfigError::ZeroAttempts)).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use backpressure_pipeline::Retry;
    ///
    /// let retry = Retry::attempts(3).jitter(false);
    /// assert_eq!(retry.delay(1), Duration::from_millis(100));
    /// assert_eq!(retry.delay(2), Duration::from_millis(200));
    /// ```
    pub const fn attempts(attempts: u32) -> Retry {
        Retry {
            attempts,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            jitter: true,
        }
    }

    /// Sets the first wait (`initial`) and the longest one (`max`); a `max` below `initial`
    /// caps every wait at `max`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use backpressure_pipeline::Retry;
    ///
    /// let retry = Retry::attempts(5).backoff(Duration::ZERO, Duration::ZERO);
    /// assert_eq!(retry.delay(4), Duration::ZERO);
    /// ```
    pub const fn backoff(mut self, initial: Duration, max: Duration) -> Retry {
        self.initial = initial;
        self.max = max;
        self
    }

    /// Turns jitter on (the default) or off.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::Retry;
    ///
    /// assert_ne!(Retry::attempts(2), Retry::attempts(2).jitter(false));
    /// ```
    pub const fn jitter(mut self, jitter: bool) -> Retry {
        self.jitter = jitter;
        self
    }

    /// The most attempts, the first one included.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::Retry;
    ///
    /// assert_eq!(Retry::attempts(3).max_attempts(), 3);
    /// ```
    pub const fn max_attempts(&self) -> u32 {
        self.attempts
    }

    /// The wait after the `failed`-th failed attempt, before jitter:
    /// `min(max, initial × 2^(failed − 1))` (`failed` 0 is taken as 1).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use backpressure_pipeline::Retry;
    ///
    /// let retry = Retry::attempts(100).backoff(Duration::from_secs(1), Duration::from_secs(60));
    /// assert_eq!(retry.delay(2), Duration::from_secs(2));
    /// assert_eq!(retry.delay(99), Duration::from_secs(60));
    /// ```
    pub fn delay(&self, failed: u32) -> Duration {
        // In nanoseconds, as u128: `initial × 2^k` saturates instead of wrapping, for any k.
        let doublings = failed.saturating_sub(1);
        let initial = self.initial.as_nanos();
        let nanos = if initial == 0 {
            0
        } else if doublings >= initial.leading_zeros() {
            u128::MAX
        } else {
            initial << doublings
        };
        let max = self.max.as_nanos();
        if nanos >= max {
            return self.max;
        }
        // Below `max`, so it fits a `Duration`.
        Duration::new(
            (nanos / 1_000_000_000) as u64,
            (nanos % 1_000_000_000) as u32,
        )
    }

    /// The wait to use after the `failed`-th failed attempt: [`delay`](Retry::delay), with
    /// jitter if it is on.
    pub(crate) fn wait(&self, failed: u32) -> Duration {
        let delay = self.delay(failed);
        if !self.jitter || delay.is_zero() {
            return delay;
        }
        // Equal jitter: half fixed, half drawn, at nanosecond resolution (a wait longer
        // than u64 nanoseconds, 584 years, keeps its fixed half only).
        let half = delay / 2;
        let spread = u64::try_from(half.as_nanos()).unwrap_or(0);
        half + Duration::from_nanos(fastrand::u64(0..=spread))
    }
}

impl Default for Retry {
    /// [`Retry::never`].
    fn default() -> Retry {
        Retry::never()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_the_upper_half() {
        let retry = Retry::attempts(9).backoff(Duration::from_millis(8), Duration::from_secs(1));
        for failed in 1..9 {
            let delay = retry.delay(failed);
            for _ in 0..100 {
                let wait = retry.wait(failed);
                assert!(
                    wait >= delay / 2 && wait <= delay,
                    "{wait:?} outside {delay:?}"
                );
            }
        }
    }

    #[test]
    fn doubling_goes_on_past_32() {
        let retry = Retry::attempts(100).backoff(Duration::from_nanos(1), Duration::MAX);
        assert_eq!(retry.delay(33), Duration::from_nanos(1 << 32));
        assert_eq!(retry.delay(35), Duration::from_nanos(1 << 34));
        assert_eq!(retry.delay(64), Duration::from_nanos(1 << 63));
        assert_eq!(retry.delay(65).as_nanos(), 1u128 << 64);
        assert_eq!(retry.delay(200), Duration::MAX);
    }

    #[test]
    fn huge_counts_saturate() {
        let retry = Retry::attempts(u32::MAX).backoff(Duration::MAX, Duration::MAX);
        assert_eq!(retry.delay(u32::MAX), Duration::MAX);
        assert!(retry.wait(u32::MAX) >= Duration::MAX / 2);
    }
}
