//! The rows (a variant and its samples, one per run), their medians and ratios, and the two
//! printed tables.

use crate::coalesce::{Measured, Setup};
use crate::overhead::Keying;
use crate::runtime::Runtime;

/// A coalescing-part variant and its runs.
pub(crate) struct CoalesceRow {
    pub(crate) runtime: Runtime,
    pub(crate) setup: Setup,
    pub(crate) samples: Vec<Measured>,
}

impl CoalesceRow {
    pub(crate) fn new(runtime: Runtime, setup: Setup) -> CoalesceRow {
        CoalesceRow {
            runtime,
            setup,
            samples: Vec::new(),
        }
    }

    /// The median and min–max over the runs of `f`.
    fn stat(&self, f: impl Fn(&Measured) -> f64) -> (f64, f64, f64) {
        let values: Vec<f64> = self.samples.iter().map(f).collect();
        let (lo, hi) = min_max(&values);
        (median(&values), lo, hi)
    }
}

/// An overhead-part variant and its items/s, one per run.
pub(crate) struct OverheadRow {
    pub(crate) runtime: Runtime,
    pub(crate) workers: usize,
    pub(crate) keying: Keying,
    pub(crate) samples: Vec<f64>,
}

impl OverheadRow {
    pub(crate) fn new(runtime: Runtime, workers: usize, keying: Keying) -> OverheadRow {
        OverheadRow {
            runtime,
            workers,
            keying,
            samples: Vec::new(),
        }
    }
}

/// The median; the mean of the middle two for an even count, NaN for none.
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// "median (min–max)" with `digits` decimals, or the median alone when all runs agree.
fn spread(stat: (f64, f64, f64), digits: usize) -> String {
    spread_with(stat, digits, "")
}

/// As [`spread`], with `unit` after the median ("0.45× (0.40–0.50)").
fn spread_with((med, lo, hi): (f64, f64, f64), digits: usize, unit: &str) -> String {
    if lo == hi {
        format!("{med:.digits$}{unit}")
    } else {
        format!("{med:.digits$}{unit} ({lo:.digits$}–{hi:.digits$})")
    }
}

pub(crate) fn print_coalesce(title: &str, rows: &[CoalesceRow], full_updates: u64) {
    println!("\n{title}");
    let line = |c: [&str; 8]| {
        println!(
            "{:<9} {:<12} {:>8} {:>22} {:>11} {:>13} {:>19} {:>18}",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
        );
    };
    line([
        "runtime",
        "variant",
        "updates",
        "work done (processed)",
        "superseded",
        "updates/work",
        "wall s",
        "work/s",
    ]);
    for row in rows {
        let updates = row.setup.updates as f64;
        line([
            &row.runtime.to_string(),
            if row.setup.coalesce {
                "coalesce"
            } else {
                "no coalesce"
            },
            &row.setup.updates.to_string(),
            &spread(row.stat(|m| m.processed as f64), 0),
            &format!("{:.0}", row.stat(|m| m.superseded as f64).0),
            &format!("{:.0}×", row.stat(|m| updates / m.processed as f64).0),
            &spread(row.stat(|m| m.wall.as_secs_f64()), 2),
            &spread(row.stat(|m| m.processed as f64 / m.wall.as_secs_f64()), 0),
        ]);
    }
    // Per runtime: the rate measured without coalescing, applied to all the updates.
    for plain in rows.iter().filter(|r| !r.setup.coalesce) {
        let Some(coalesced) = rows
            .iter()
            .find(|r| r.setup.coalesce && r.runtime == plain.runtime)
        else {
            continue;
        };
        let rate = plain.stat(|m| m.processed as f64 / m.wall.as_secs_f64()).0;
        let extrapolated = full_updates as f64 / rate;
        let wall = coalesced.stat(|m| m.wall.as_secs_f64()).0;
        let nominal = plain.setup.workers as f64 / plain.setup.service.as_secs_f64();
        println!(
            "{}: without coalescing, {full_updates} updates ≈ {extrapolated:.0} s of work at the \
             measured {rate:.0} work/s (nominal {nominal:.0}) — EXTRAPOLATED from {} updates, \
             not run; coalesced: {wall:.2} s wall, {:.0}× less",
            plain.runtime,
            plain.setup.updates,
            extrapolated / wall
        );
    }
}

pub(crate) fn print_overhead(title: &str, rows: &[OverheadRow], target: f64) {
    println!("\n{title}");
    let line = |c: [&str; 5]| {
        println!(
            "{:<22} {:<30} {:>22} {:>24} {}",
            c[0], c[1], c[2], c[3], c[4]
        );
    };
    line(["shape", "variant", "items/s (M)", "ratio to unkeyed", ""]);
    let mut last_shape = String::new();
    for row in rows {
        let shape = format!("{}, {} workers", row.runtime, row.workers);
        if shape != last_shape && !last_shape.is_empty() {
            println!();
        }
        let base = rows
            .iter()
            .find(|r| {
                r.runtime == row.runtime && r.workers == row.workers && r.keying == Keying::Unkeyed
            })
            .filter(|r| r.keying != row.keying);
        let (ratio, verdict) = match base {
            None => ("base".to_string(), String::new()),
            Some(base) => {
                let ratios: Vec<f64> = row
                    .samples
                    .iter()
                    .zip(&base.samples)
                    .map(|(ours, base)| ours / base)
                    .collect();
                let (lo, hi) = min_max(&ratios);
                let med = median(&ratios);
                let verdict = if row.keying == Keying::Distinct {
                    if med >= target {
                        format!("≥ {target:.2}: met")
                    } else {
                        format!("≥ {target:.2}: NOT met")
                    }
                } else {
                    "(information)".to_string()
                };
                (spread_with((med, lo, hi), 2, "×"), verdict)
            }
        };
        let millions: Vec<f64> = row.samples.iter().map(|s| s / 1e6).collect();
        let (lo, hi) = min_max(&millions);
        line([
            if shape == last_shape { "" } else { &shape },
            &row.keying.to_string(),
            &spread((median(&millions), lo, hi), 2),
            &ratio,
            &verdict,
        ]);
        last_shape = shape;
    }
}
