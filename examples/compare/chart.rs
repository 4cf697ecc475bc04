//! The chart, drawn by hand (no plotting crate): S1 throughput against consumer count, and
//! peak RSS against burst size.

use std::fmt::Write as _;

use crate::report::Summary;
use crate::shapes::MEM_BURSTS;
use crate::suite::{CHANNEL, COPY, OURS};
use crate::svg::{nice_ceiling, trim, xml};

/// Two panels drawn by hand: S1 throughput against consumer count, peak RSS against burst.
pub(crate) fn svg(summaries: &[Summary], header: &str) -> String {
    let find = |shape: &str, variant: &str| {
        summaries
            .iter()
            .find(|s| s.shape == shape && s.variant == variant)
            .map(|s| s.median)
    };
    let mut out = String::new();
    let (w, h) = (960.0, 480.0);
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    // The header is "command — machine": one line each.
    for (i, line) in header.split(" — ").enumerate() {
        let _ = writeln!(
            out,
            r##"<text x="10" y="{}" font-size="11" fill="#555">{}</text>"##,
            16 + 14 * i,
            xml(line)
        );
    }
    let colours = ["#d62728", "#ff7f0e", "#1f77b4", "#2ca02c"];

    // Panel 1: S1 throughput against consumers, capacity 1024 (solid) and 16 (dashed).
    let consumers = [1, 4, 16];
    let mut series = Vec::new();
    for (ci, variant) in [OURS, COPY, CHANNEL].iter().enumerate() {
        for (capacity, dash) in [(1024, ""), (16, "5,4")] {
            let points: Vec<Option<f64>> = consumers
                .iter()
                .map(|c| find(&format!("S1 Block cap {capacity}, 1→{c}"), variant).map(|v| v / 1e6))
                .collect();
            series.push((
                format!("{variant}, cap {capacity}"),
                colours[ci],
                dash,
                points,
            ));
        }
    }
    let labels: Vec<String> = consumers.iter().map(|c| c.to_string()).collect();
    panel(
        &mut out,
        60.0,
        66.0,
        "S1 back-pressure hand-off: M items/s vs consumer tasks",
        "consumer tasks (1 producer)",
        &labels,
        &series,
    );

    // Panel 2: peak RSS against burst size.
    let mut series = Vec::new();
    for (ci, variant) in ["Pipeline DropOldest 1024", "unbounded async-channel"]
        .iter()
        .enumerate()
    {
        let points: Vec<Option<f64>> = MEM_BURSTS
            .iter()
            .map(|n| {
                find(
                    &format!("MEM burst {}M, slow workers", n / 1_000_000),
                    variant,
                )
            })
            .collect();
        series.push((variant.to_string(), colours[[0, 2][ci]], "", points));
    }
    let labels: Vec<String> = MEM_BURSTS
        .iter()
        .map(|n| format!("{}M", n / 1_000_000))
        .collect();
    panel(
        &mut out,
        540.0,
        66.0,
        "Peak RSS (MiB) vs burst size, slow workers",
        "items in the burst (u64)",
        &labels,
        &series,
    );
    out.push_str("</svg>\n");
    out
}

type Series<'a> = (String, &'a str, &'a str, Vec<Option<f64>>);

fn panel(
    out: &mut String,
    x0: f64,
    y0: f64,
    title: &str,
    xlabel: &str,
    labels: &[String],
    series: &[Series<'_>],
) {
    let (pw, ph) = (380.0, 250.0);
    let max = series
        .iter()
        .flat_map(|s| s.3.iter().flatten())
        .fold(0.0_f64, |m, &v| m.max(v));
    let top = nice_ceiling(max.max(1e-9));
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-weight="bold">{}</text>"#,
        x0,
        y0 - 10.0,
        xml(title)
    );
    let _ = writeln!(
        out,
        r##"<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##
    );
    for k in 0..=4 {
        let v = top * k as f64 / 4.0;
        let y = y0 + ph - ph * k as f64 / 4.0;
        let _ = writeln!(
            out,
            r##"<line x1="{x0}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            x0 + pw,
            x0 - 5.0,
            y + 4.0,
            trim(v)
        );
    }
    let xs: Vec<f64> = (0..labels.len())
        .map(|i| x0 + pw * (i as f64 + 0.5) / labels.len() as f64)
        .collect();
    for (x, label) in xs.iter().zip(labels) {
        let _ = writeln!(
            out,
            r#"<text x="{x}" y="{}" text-anchor="middle">{}</text>"#,
            y0 + ph + 16.0,
            xml(label)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        x0 + pw / 2.0,
        y0 + ph + 34.0,
        xml(xlabel)
    );
    for (si, (name, colour, dash, points)) in series.iter().enumerate() {
        let coords: Vec<(f64, f64)> = xs
            .iter()
            .zip(points)
            .filter_map(|(&x, p)| p.map(|v| (x, y0 + ph - ph * v / top)))
            .collect();
        let path: Vec<String> = coords
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>"#,
            path.join(" ")
        );
        for ((x, y), v) in coords.iter().zip(points.iter().flatten()) {
            let _ = writeln!(
                out,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{colour}"/><text x="{:.1}" y="{:.1}" font-size="10" fill="{colour}">{}</text>"#,
                x + 4.0,
                y - 4.0,
                trim(*v)
            );
        }
        let ly = y0 + ph + 52.0 + 14.0 * si as f64;
        let _ = writeln!(
            out,
            r#"<line x1="{x0}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{}" y="{}">{}</text>"#,
            x0 + 24.0,
            x0 + 30.0,
            ly + 4.0,
            xml(name)
        );
    }
}
