//! The SVG chart, drawn by hand (no plotting crate): recovery time as grouped bars, and
//! goodput over time after the resume as lines.

use std::fmt::Write as _;

use super::metrics::{Numbers, Rules};
use super::scenario::Mode;
use crate::svg::{nice_ceiling, trim, xml};

/// One mode's colour, the same in both panels.
const COLOURS: [&str; 4] = ["#d62728", "#ff7f0e", "#1f77b4", "#2ca02c"];
/// Dash patterns by capacity, smallest first.
const DASHES: [&str; 3] = ["5,4", "", "2,3"];

const PANEL_W: f64 = 400.0;
/// The goodput panel shows the first 30 windows (300 ms at 10 ms): recovery happens there,
/// and the table's "goodput after recovery" covers the rest.
const CHART_WINDOWS: usize = 30;
const PANEL_H: f64 = 260.0;

/// `header` lines are separated by " — "; `rows` are (mode, capacity, numbers).
pub(crate) fn svg(
    rows: &[(Mode, usize, Numbers)],
    capacities: &[usize],
    rules: &Rules,
    header: &str,
) -> String {
    let (w, h) = (1000.0, 500.0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    for (i, line) in header.split(" — ").enumerate() {
        let _ = writeln!(
            out,
            r##"<text x="10" y="{}" font-size="11" fill="#555">{}</text>"##,
            16 + 14 * i,
            xml(line)
        );
    }
    recovery_panel(&mut out, 70.0, 100.0, rows, capacities, rules);
    goodput_panel(&mut out, 560.0, 100.0, rows, capacities, rules);
    out.push_str("</svg>\n");
    out
}

/// Grouped bars: one group per mode, one bar per capacity; a run that never recovered is a
/// pale bar to the top, labelled "none".
fn recovery_panel(
    out: &mut String,
    x0: f64,
    y0: f64,
    rows: &[(Mode, usize, Numbers)],
    capacities: &[usize],
    rules: &Rules,
) {
    let ms = |n: &Numbers| n.recovery.map(|d| d.as_secs_f64() * 1e3);
    let max = rows.iter().filter_map(|r| ms(&r.2)).fold(0.0_f64, f64::max);
    // Headroom above the tallest bar for its label.
    let top = nice_ceiling(1.15 * max.max(rules.window.as_secs_f64() * 1e3));
    frame(
        out,
        x0,
        y0,
        "Resume to recovered goodput (ms, lower is better)",
        top,
    );
    let group_w = PANEL_W / Mode::ALL.len() as f64;
    let bar_w = (group_w * 0.7) / capacities.len() as f64;
    for (mi, mode) in Mode::ALL.iter().enumerate() {
        let gx = x0 + group_w * mi as f64 + group_w * 0.15;
        for (ci, cap) in capacities.iter().enumerate() {
            let Some((_, _, numbers)) = rows.iter().find(|r| r.0 == *mode && r.1 == *cap) else {
                continue;
            };
            let x = gx + bar_w * ci as f64;
            let colour = COLOURS[mi];
            let opacity = if ci == 0 { 0.55 } else { 1.0 };
            match ms(numbers) {
                Some(v) => {
                    let bh = PANEL_H * v / top;
                    let _ = writeln!(
                        out,
                        r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="{colour}" fill-opacity="{opacity}"/><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{}</text>"#,
                        y0 + PANEL_H - bh,
                        bar_w - 2.0,
                        x + bar_w / 2.0 - 1.0,
                        y0 + PANEL_H - bh - 3.0,
                        trim(v)
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        r#"<rect x="{x:.1}" y="{y0:.1}" width="{:.1}" height="{PANEL_H:.1}" fill="{colour}" fill-opacity="0.12" stroke="{colour}" stroke-dasharray="3,3"/><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">none</text>"#,
                        bar_w - 2.0,
                        x + bar_w / 2.0 - 1.0,
                        y0 + 14.0
                    );
                }
            }
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle">{cap}</text>"#,
                x + bar_w / 2.0 - 1.0,
                y0 + PANEL_H + 12.0
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{mode}</text>"#,
            x0 + group_w * (mi as f64 + 0.5),
            y0 + PANEL_H + 28.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{x0}" y="{:.1}" font-size="11">bars: queue capacity (pale: {}); "none": no window recovered in {} ms</text>"#,
        y0 + PANEL_H + 48.0,
        capacities.first().copied().unwrap_or(0),
        rules.windows as u128 * rules.window.as_millis()
    );
}

/// Goodput per window after the resume, as % of capacity: a line per mode and capacity.
fn goodput_panel(
    out: &mut String,
    x0: f64,
    y0: f64,
    rows: &[(Mode, usize, Numbers)],
    capacities: &[usize],
    rules: &Rules,
) {
    let windows = rules.windows.min(CHART_WINDOWS);
    let max = rows
        .iter()
        .flat_map(|r| r.2.series.iter().take(windows))
        .fold(1.0_f64, |m, &v| m.max(v))
        * 100.0;
    // 100% and a little over (a window can beat the measured capacity by a few %).
    let top = (max / 20.0).ceil() * 20.0;
    frame(
        out,
        x0,
        y0,
        &format!(
            "Goodput after the resume, first {} ms (% of capacity)",
            windows as u128 * rules.window.as_millis()
        ),
        top,
    );
    let span = windows as f64;
    // The recovery threshold.
    let ty = y0 + PANEL_H - PANEL_H * rules.recovered_at * 100.0 / top;
    let _ = writeln!(
        out,
        r##"<line x1="{x0}" y1="{ty:.1}" x2="{}" y2="{ty:.1}" stroke="#888" stroke-dasharray="1,3"/><text x="{}" y="{:.1}" font-size="9" fill="#888">{}%</text>"##,
        x0 + PANEL_W,
        x0 + PANEL_W + 3.0,
        ty + 3.0,
        rules.recovered_at * 100.0
    );
    let total_ms = span * rules.window.as_secs_f64() * 1e3;
    for k in 0..=5 {
        let x = x0 + PANEL_W * k as f64 / 5.0;
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            y0 + PANEL_H + 14.0,
            trim(total_ms * k as f64 / 5.0)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">ms after the resume ({} ms windows; within {} ms of push)</text>"#,
        x0 + PANEL_W / 2.0,
        y0 + PANEL_H + 30.0,
        rules.window.as_millis(),
        rules.deadline.as_millis()
    );
    let mut legend = 0;
    for (mi, mode) in Mode::ALL.iter().enumerate() {
        for (ci, cap) in capacities.iter().enumerate() {
            let Some((_, _, numbers)) = rows.iter().find(|r| r.0 == *mode && r.1 == *cap) else {
                continue;
            };
            let colour = COLOURS[mi];
            let dash = DASHES[ci.min(DASHES.len() - 1)];
            let points: Vec<String> = numbers
                .series
                .iter()
                .take(windows)
                .enumerate()
                .map(|(k, g)| {
                    format!(
                        "{:.1},{:.1}",
                        x0 + PANEL_W * (k as f64 + 0.5) / span,
                        y0 + PANEL_H - PANEL_H * (g * 100.0).min(top) / top
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.5" stroke-dasharray="{dash}"/>"#,
                points.join(" ")
            );
            let lx = x0 + 200.0 * (legend % 2) as f64;
            let ly = y0 + PANEL_H + 50.0 + 14.0 * (legend / 2) as f64;
            let _ = writeln!(
                out,
                r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{}" y="{}">{mode}, capacity {cap}{}</text>"#,
                lx + 24.0,
                lx + 30.0,
                ly + 4.0,
                // Lines along the axis hide each other: say so in the legend.
                if numbers.series.iter().take(windows).all(|&g| g == 0.0) {
                    " (at 0)"
                } else {
                    ""
                }
            );
            legend += 1;
        }
    }
}

/// The panel's title, border, and horizontal grid with its labels from 0 to `top`.
fn frame(out: &mut String, x0: f64, y0: f64, title: &str, top: f64) {
    let _ = writeln!(
        out,
        r#"<text x="{x0}" y="{}" font-weight="bold">{}</text>"#,
        y0 - 10.0,
        xml(title)
    );
    let _ = writeln!(
        out,
        r##"<rect x="{x0}" y="{y0}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#999"/>"##
    );
    for k in 0..=4 {
        let v = top * k as f64 / 4.0;
        let y = y0 + PANEL_H - PANEL_H * k as f64 / 4.0;
        let _ = writeln!(
            out,
            r##"<line x1="{x0}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            x0 + PANEL_W,
            x0 - 5.0,
            y + 4.0,
            trim(v)
        );
    }
}
