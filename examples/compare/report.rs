//! Rows and tables: a row's samples, their median and spread, its ratio against a base, the
//! printed table, and the combination of several runs.

/// A row's unit: its column name (with the better direction) and how its numbers print.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Unit {
    ItemsPerSec,
    NsPerOp,
    MiB,
    Ms,
    Us,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::ItemsPerSec => "items/s ↑",
            Unit::NsPerOp => "ns/pair ↓",
            Unit::MiB => "peak MiB ↓",
            Unit::Ms => "ms ↓",
            Unit::Us => "µs ↓",
        }
    }

    fn fmt(self, v: f64) -> String {
        match self {
            Unit::ItemsPerSec if v >= 1e6 => format!("{:.2}M", v / 1e6),
            Unit::ItemsPerSec => format!("{:.0}k", v / 1e3),
            Unit::NsPerOp => format!("{v:.1}"),
            Unit::MiB => format!("{v:.1}"),
            Unit::Ms => format!("{v:.2}"),
            Unit::Us => format!("{v:.0}"),
        }
    }
}

/// One measured row: a shape, a variant, its samples, and what its ratio is against.
#[derive(Clone)]
pub(crate) struct Row {
    pub(crate) shape: String,
    pub(crate) variant: String,
    pub(crate) unit: Unit,
    pub(crate) samples: Vec<f64>,
    /// The variant of the same shape the ratio is against, or a fixed value with its name.
    pub(crate) base: Base,
}

/// What a row's ratio is against.
#[derive(Clone)]
pub(crate) enum Base {
    None,
    Variant(&'static str),
    Fixed(&'static str, f64),
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

/// The smallest and largest value.
fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// A row as printed: median, spread, ratio (ours / base, in the row's unit).
#[derive(Clone)]
pub(crate) struct Summary {
    pub(crate) shape: String,
    pub(crate) variant: String,
    pub(crate) unit: Unit,
    pub(crate) median: f64,
    pub(crate) spread: (f64, f64),
    pub(crate) ratio: Option<(f64, String)>,
}

/// Each row's median, spread and ratio against its base (a row of the same shape).
pub(crate) fn summarize(rows: &[Row]) -> Vec<Summary> {
    rows.iter()
        .map(|row| {
            let med = median(&row.samples);
            let ratio = match &row.base {
                Base::None => None,
                Base::Variant(name) => rows
                    .iter()
                    .find(|r| r.shape == row.shape && r.variant == *name)
                    .filter(|r| r.variant != row.variant)
                    .map(|r| (med / median(&r.samples), name.to_string())),
                Base::Fixed(name, value) => Some((med / value, name.to_string())),
            };
            Summary {
                shape: row.shape.clone(),
                variant: row.variant.clone(),
                unit: row.unit,
                median: med,
                spread: min_max(&row.samples),
                ratio,
            }
        })
        .collect()
}

/// Prints `summaries` as an aligned table under `title`, a blank line between shapes.
pub(crate) fn print_table(title: &str, summaries: &[Summary], spread_label: &str) {
    println!("\n{title}");
    // As wide as the longest variant label, so the columns stay aligned.
    let vw = summaries
        .iter()
        .map(|s| s.variant.chars().count())
        .max()
        .unwrap_or(0)
        .max(26);
    println!(
        "{:<34} {:<vw$} {:<11} {:>9} {:>19}  ratio (this / base)",
        "shape", "variant", "unit", "median", spread_label
    );
    let mut last_shape = "";
    for s in summaries {
        if s.shape != last_shape && !last_shape.is_empty() {
            println!();
        }
        last_shape = &s.shape;
        let spread = format!("{}–{}", s.unit.fmt(s.spread.0), s.unit.fmt(s.spread.1));
        let ratio = match &s.ratio {
            Some((r, base)) => format!("{r:.2}× {base}"),
            None => String::new(),
        };
        println!(
            "{:<34} {:<vw$} {:<11} {:>9} {:>19}  {}",
            s.shape,
            s.variant,
            s.unit.name(),
            s.unit.fmt(s.median),
            spread,
            ratio
        );
    }
}

/// The median over runs of each row's median, min–max of the run medians, median of ratios.
pub(crate) fn combine(runs: &[Vec<Summary>]) -> Vec<Summary> {
    runs[0]
        .iter()
        .enumerate()
        .map(|(i, first)| {
            let medians: Vec<f64> = runs.iter().map(|run| run[i].median).collect();
            let ratios: Vec<f64> = runs
                .iter()
                .filter_map(|run| run[i].ratio.as_ref().map(|r| r.0))
                .collect();
            Summary {
                shape: first.shape.clone(),
                variant: first.variant.clone(),
                unit: first.unit,
                median: median(&medians),
                spread: min_max(&medians),
                ratio: first
                    .ratio
                    .as_ref()
                    .map(|(_, base)| (median(&ratios), base.clone())),
            }
        })
        .collect()
}
