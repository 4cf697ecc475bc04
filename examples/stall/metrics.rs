//! From a run's stamps to its numbers: goodput per window, recovery, queue-delay quantiles.

use std::time::Duration;

use super::scenario::Trace;

/// What the definitions in the crate doc need beyond the stamps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    /// An item counts towards goodput if it finished within this long of its push.
    pub(crate) deadline: Duration,
    pub(crate) window: Duration,
    /// Windows after the resume, from the resume to the producer's stop.
    pub(crate) windows: usize,
    /// The workers' measured capacity, items per second.
    pub(crate) capacity_rate: f64,
    /// The share of `capacity_rate` a window's goodput must reach to count as recovered.
    pub(crate) recovered_at: f64,
}

/// One run's numbers.
#[derive(Debug, Clone)]
pub(crate) struct Numbers {
    /// From the resume to the end of the first recovered window; `None` if none was.
    pub(crate) recovery: Option<Duration>,
    /// p99 of `started - pushed` over the items whose work started after the resume.
    pub(crate) p99_after_resume: Option<Duration>,
    /// The same over the items whose work started after the recovered window began.
    pub(crate) p99_after_recovery: Option<Duration>,
    /// Mean goodput from the recovered window to the end, as a share of capacity.
    pub(crate) goodput_after_recovery: Option<f64>,
    /// Goodput of each window after the resume, as a share of capacity.
    pub(crate) series: Vec<f64>,
    pub(crate) expired: u64,
    pub(crate) shed: u64,
    /// Items left in the queue (or a worker's hands) at the end: `Report::abandoned`.
    pub(crate) left: u64,
    pub(crate) oldest_at_end: Option<Duration>,
    pub(crate) library_p99: Option<Duration>,
}

pub(crate) fn measure(trace: &Trace, rules: &Rules) -> Numbers {
    let per_window = rules.capacity_rate * rules.window.as_secs_f64();
    let mut good = vec![0_u64; rules.windows];
    for item in &trace.served {
        let Some(since) = item.finished.checked_duration_since(trace.resume) else {
            continue;
        };
        let k = (since.as_nanos() / rules.window.as_nanos()) as usize;
        if k < rules.windows && item.finished - item.pushed <= rules.deadline {
            good[k] += 1;
        }
    }
    let series: Vec<f64> = good.iter().map(|&g| g as f64 / per_window).collect();
    let first = series.iter().position(|&g| g >= rules.recovered_at);
    let recovery = first.map(|k| rules.window * (k as u32 + 1));
    let goodput_after_recovery =
        first.map(|k| series[k..].iter().sum::<f64>() / (rules.windows - k) as f64);

    let delays_from = |from: Duration| {
        let at = trace.resume + from;
        let mut delays: Vec<Duration> = trace
            .served
            .iter()
            .filter(|s| s.started >= at)
            .map(|s| s.started - s.pushed)
            .collect();
        quantile(&mut delays, 0.99)
    };
    Numbers {
        recovery,
        p99_after_resume: delays_from(Duration::ZERO),
        p99_after_recovery: first.and_then(|k| delays_from(rules.window * k as u32)),
        goodput_after_recovery,
        series,
        expired: trace.report.expired,
        shed: trace.report.dropped,
        left: trace.report.abandoned,
        oldest_at_end: trace.oldest_at_end,
        library_p99: trace.library_p99,
    }
}

/// The smallest value with at least `q` of the values at or below it.
fn quantile(values: &mut [Duration], q: f64) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

/// The median; with `none_is_max`, `None` counts as larger than every value (a recovery
/// that never came), else the `None`s are left out (a number about a recovery that never
/// came).
pub(crate) fn median_of(values: &[Option<f64>], none_is_max: bool) -> Option<f64> {
    let mut v: Vec<f64> = values
        .iter()
        .filter_map(|v| {
            if none_is_max {
                Some(v.unwrap_or(f64::INFINITY))
            } else {
                *v
            }
        })
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let m = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    m.is_finite().then_some(m)
}

/// Each run's numbers folded into one: the median of every column and of every window. A
/// missing recovery counts as the longest; the numbers "after recovery" are the median over
/// the runs that recovered.
pub(crate) fn combine(runs: &[Numbers]) -> Numbers {
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
    let back = |v: Option<f64>| v.map(|ms| Duration::from_secs_f64(ms / 1e3));
    let column = |f: &dyn Fn(&Numbers) -> Option<f64>| {
        median_of(&runs.iter().map(f).collect::<Vec<_>>(), false)
    };
    let windows = runs.iter().map(|r| r.series.len()).min().unwrap_or(0);
    Numbers {
        recovery: back(median_of(
            &runs.iter().map(|r| ms(r.recovery)).collect::<Vec<_>>(),
            true,
        )),
        p99_after_resume: back(column(&|r| ms(r.p99_after_resume))),
        p99_after_recovery: back(column(&|r| ms(r.p99_after_recovery))),
        goodput_after_recovery: column(&|r| r.goodput_after_recovery),
        series: (0..windows)
            .map(|k| column(&|r| Some(r.series[k])).unwrap_or(0.0))
            .collect(),
        expired: column(&|r| Some(r.expired as f64)).unwrap_or(0.0) as u64,
        shed: column(&|r| Some(r.shed as f64)).unwrap_or(0.0) as u64,
        left: column(&|r| Some(r.left as f64)).unwrap_or(0.0) as u64,
        oldest_at_end: back(column(&|r| ms(r.oldest_at_end))),
        library_p99: back(column(&|r| ms(r.library_p99))),
    }
}
