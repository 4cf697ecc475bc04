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

/// A row as printed: median, spread, ratio (ours / base, in the row's unit), and the ratio
/// against the fastest peer of its shape in the same run.
#[derive(Clone)]
pub(crate) struct Summary {
    pub(crate) shape: String,
    pub(crate) variant: String,
    pub(crate) unit: Unit,
    pub(crate) median: f64,
    pub(crate) spread: (f64, f64),
    pub(crate) ratio: Option<(f64, String)>,
    pub(crate) vs_fastest: Option<(f64, String)>,
}

/// The rows that are other libraries (or the hand-written pool on one), by name: what
/// "the fastest peer" of a shape is chosen from.
const PEERS: [&str; 8] = [
    "async-channel",
    "flume",
    "kanal",
    "crossfire",
    "tokio mpsc",
    "hand-written pool",
    "unbounded async-channel",
    "pool close+join",
];

fn is_peer(variant: &str) -> bool {
    PEERS.iter().any(|peer| variant.starts_with(peer))
}

impl Unit {
    /// Whether a larger number is better.
    fn higher_is_better(self) -> bool {
        matches!(self, Unit::ItemsPerSec)
    }
}

/// The fastest peer of `shape` in `rows` (by median), with its median.
fn fastest_peer<'a>(rows: &'a [Row], shape: &str) -> Option<(&'a str, f64)> {
    rows.iter()
        .filter(|r| r.shape == shape && is_peer(&r.variant))
        .map(|r| (r.variant.as_str(), median(&r.samples), r.unit))
        .reduce(|best, r| {
            let better = if r.2.higher_is_better() {
                r.1 > best.1
            } else {
                r.1 < best.1
            };
            if better {
                r
            } else {
                best
            }
        })
        .map(|(name, med, _)| (name, med))
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
            // Only the rows that are not peers: a peer against itself says nothing.
            let vs_fastest = fastest_peer(rows, &row.shape)
                .filter(|_| !is_peer(&row.variant))
                .map(|(name, best)| (med / best, name.to_string()));
            Summary {
                shape: row.shape.clone(),
                variant: row.variant.clone(),
                unit: row.unit,
                median: med,
                spread: min_max(&row.samples),
                ratio,
                vs_fastest,
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
        "{:<34} {:<vw$} {:<11} {:>9} {:>19}  ratio (this / base); against the fastest peer",
        "shape", "variant", "unit", "median", spread_label
    );
    let mut last_shape = "";
    for s in summaries {
        if s.shape != last_shape && !last_shape.is_empty() {
            println!();
        }
        last_shape = &s.shape;
        let spread = format!("{}–{}", s.unit.fmt(s.spread.0), s.unit.fmt(s.spread.1));
        let mut ratio = match &s.ratio {
            Some((r, base)) => format!("{r:.2}× {base}"),
            None => String::new(),
        };
        if let Some((r, peer)) = &s.vs_fastest {
            ratio.push_str(&format!("; {r:.2}× fastest peer ({peer})"));
        }
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
            // The fastest peer may differ from run to run: the median of the ratios, named
            // by the peer that was fastest most often.
            let against: Vec<&(f64, String)> = runs
                .iter()
                .filter_map(|run| run[i].vs_fastest.as_ref())
                .collect();
            let vs_fastest = (!against.is_empty()).then(|| {
                let values: Vec<f64> = against.iter().map(|(r, _)| *r).collect();
                let mut names: Vec<&str> = against.iter().map(|(_, n)| n.as_str()).collect();
                names.sort_unstable();
                let most = names
                    .chunk_by(|a, b| a == b)
                    .max_by_key(|group| group.len())
                    .map_or("", |group| group[0]);
                (median(&values), most.to_string())
            });
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
                vs_fastest,
            }
        })
        .collect()
}
