//! The static HTML report of a labels run: per-sequence statistics, plots as inline SVG, sample overlays.
//!
//! A run over hundreds of sequences is judged by looking at it: which sequences lost most frames and why,
//! how many instances a labelled frame has, how large they are, where in a sequence the foreground appears,
//! and what a few labelled frames and their flow look like. The page must open anywhere (a laptop, a
//! cluster's file browser, an archived result), so it is one HTML file with its plots inlined as SVG and its
//! images as relative links beside it: no network, no script, no framework.
//!
//! This module turns the two tables' rows into statistics ([`SequenceStats`]) and renders the page
//! ([`render_html`]); choosing sample frames and drawing their images is the caller's job, which hands over
//! the relative paths in [`SampleFigure`]s. Every listing is sorted, so the same tables give the same page.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::tables::{FrameRow, InstanceRow};

/// Excluded reasons in the order the pipeline applies its tests; unknown reasons follow, sorted.
pub const REASON_ORDER: [&str; 6] = {
    let all = crate::tables::ExcludedReason::ALL;
    [
        all[0].name(),
        all[1].name(),
        all[2].name(),
        all[3].name(),
        all[4].name(),
        all[5].name(),
    ]
};

/// Colour of "labelled" and of each reason in [`REASON_ORDER`], then of further reasons in turn.
const CATEGORY_COLOURS: [&str; 10] = [
    "#2b8a3e", "#495057", "#e8590c", "#f59f00", "#1c7ed6", "#9c36b5", "#c92a2a", "#0ca678", "#5c7cfa", "#868e96",
];

/// At most this many per-sequence foreground charts are drawn (the table still lists every sequence).
pub const MAX_FG_CHARTS: usize = 24;

/// Statistics of one sequence, from its `frames` rows (frames with a flow, i.e. all but the last).
#[derive(Clone, Debug, PartialEq)]
pub struct SequenceStats {
    pub sequence_id: String,
    pub frames: usize,
    pub quasi_static_frames: usize,
    /// Maximal runs of consecutive quasi-static frames (of any length).
    pub quasi_static_runs: usize,
    /// Distinct segments (runs long enough for the quasi-static rule).
    pub segments: usize,
    pub labelled_frames: usize,
    pub instances: usize,
    /// Mean over labelled frames; `None` without labelled frames.
    pub instances_per_labelled_frame: Option<f64>,
    /// Mean foreground fraction over labelled frames.
    pub fg_fraction_labelled: Option<f64>,
    /// Frames per excluded reason, by the reason's table name.
    pub excluded: BTreeMap<String, usize>,
}

impl SequenceStats {
    /// Statistics of the rows of one sequence, in frame order.
    pub fn from_rows(sequence_id: &str, rows: &[&FrameRow]) -> Self {
        let labelled: Vec<&&FrameRow> = rows.iter().filter(|r| r.labelled).collect();
        let mut runs = 0;
        let mut previous: Option<(u32, bool)> = None;
        for row in rows {
            let continues = previous.is_some_and(|(index, qs)| qs && index + 1 == row.frame_index);
            if row.quasi_static && !continues {
                runs += 1;
            }
            previous = Some((row.frame_index, row.quasi_static));
        }
        let mut excluded = BTreeMap::new();
        for reason in rows.iter().filter_map(|r| r.excluded_reason) {
            *excluded.entry(reason.name().to_string()).or_insert(0) += 1;
        }
        let instances: usize = labelled.iter().map(|r| r.num_instances as usize).sum();
        let mean = |sum: f64, n: usize| (n > 0).then(|| sum / n as f64);
        let fg: Vec<f64> = labelled.iter().filter_map(|r| r.fg_fraction).map(f64::from).collect();
        Self {
            sequence_id: sequence_id.to_string(),
            frames: rows.len(),
            quasi_static_frames: rows.iter().filter(|r| r.quasi_static).count(),
            quasi_static_runs: runs,
            segments: rows.iter().filter_map(|r| r.segment).collect::<BTreeSet<_>>().len(),
            labelled_frames: labelled.len(),
            instances,
            instances_per_labelled_frame: mean(instances as f64, labelled.len()),
            fg_fraction_labelled: mean(fg.iter().sum(), fg.len()),
            excluded,
        }
    }
}

/// Rows grouped by sequence (sorted by id), each sequence's rows sorted by frame index.
pub fn group_by_sequence(frames: &[FrameRow]) -> BTreeMap<&str, Vec<&FrameRow>> {
    let mut groups: BTreeMap<&str, Vec<&FrameRow>> = BTreeMap::new();
    for row in frames {
        groups.entry(row.sequence_id.as_str()).or_default().push(row);
    }
    for rows in groups.values_mut() {
        rows.sort_by_key(|r| r.frame_index);
    }
    groups
}

/// One sampled frame shown on the page, its images given relative to the page.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleFigure {
    pub sequence_id: String,
    pub frame_name: String,
    pub instances: usize,
    pub overlay_href: String,
    pub flow_href: Option<String>,
    /// Largest flow magnitude of the shown flow (its colours are relative to it).
    pub max_flow_px: Option<f32>,
}

/// Everything the page shows.
#[derive(Clone, Debug, Default)]
pub struct ReportInput {
    pub title: String,
    /// (key, value) lines of the header: labels directory, parameter hash, dataset, flow backend …
    pub facts: Vec<(String, String)>,
    pub frames: Vec<FrameRow>,
    pub instances: Vec<InstanceRow>,
    pub samples: Vec<SampleFigure>,
    /// Where the flow images come from (imported files or recomputed), shown above the samples.
    pub flow_note: String,
    /// Relative path of the colour-wheel legend image, if written.
    pub legend_href: Option<String>,
    /// Remarks shown above the samples (e.g. why there are none).
    pub notes: Vec<String>,
    /// Instances per open-vocabulary name (`report --names`), most frequent first; empty = no names table.
    pub name_counts: Vec<(String, usize)>,
    /// The precision–recall curve of the instances ranked by score (`report --eval`), if any.
    pub precision_recall: Option<PrecisionRecall>,
}

/// A precision–recall curve from an `mrdino eval` result: points (recall, precision) from the highest score
/// down, the AP50 they integrate to, and the fixed set's precision and recall.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PrecisionRecall {
    pub points: Vec<(f64, f64)>,
    pub ap50: f64,
    pub precision_at_full: f64,
    pub recall_at_full: f64,
}

/// The precision–recall curve as an SVG figure (recall on x, precision on y, both in [0, 1]); the fixed set is a
/// dot at the curve's end.
pub fn svg_precision_recall(pr: &PrecisionRecall) -> String {
    let (left, right, top, bottom) = (46.0, 14.0, 22.0, 30.0);
    let (plot_w, plot_h) = (300.0, 220.0);
    let (width, height) = (left + plot_w + right, top + plot_h + bottom);
    let at = |r: f64, p: f64| (left + plot_w * r.clamp(0.0, 1.0), top + plot_h * (1.0 - p.clamp(0.0, 1.0)));
    let mut svg = svg_open(width, height, "Precision-recall curve of the instances ranked by score");
    let _ = write!(
        svg,
        r#"<text x="{left}" y="14" class="title">Ranked by score: AP50 {:.3}</text>"#,
        pr.ap50
    );
    let _ = write!(
        svg,
        r##"<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#adb5bd"/>"##
    );
    let path: Vec<String> = std::iter::once((0.0, pr.points.first().map_or(0.0, |p| p.1)))
        .chain(pr.points.iter().copied())
        .map(|(r, p)| {
            let (x, y) = at(r, p);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    let _ = write!(
        svg,
        r##"<polyline points="{}" fill="none" stroke="#1c7ed6" stroke-width="1.5"/>"##,
        path.join(" ")
    );
    let (x, y) = at(pr.recall_at_full, pr.precision_at_full);
    let _ = write!(
        svg,
        r##"<circle cx="{x:.1}" cy="{y:.1}" r="3.5" fill="#e8590c"><title>every instance: precision {:.3}, recall {:.3}</title></circle>"##,
        pr.precision_at_full, pr.recall_at_full
    );
    let _ = write!(
        svg,
        r#"<text x="{left}" y="{:.1}">0</text><text x="{:.1}" y="{:.1}" text-anchor="end">recall 1</text><text x="{:.1}" y="{:.1}" text-anchor="end">1</text><text x="{:.1}" y="{:.1}" text-anchor="end">0</text></svg>"#,
        top + plot_h + 14.0,
        left + plot_w,
        top + plot_h + 14.0,
        left - 4.0,
        top + 8.0,
        left - 4.0,
        top + plot_h
    );
    svg
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Escapes a relative path for an `src`/`href` attribute: characters that would end or change the URL are
/// percent-encoded, then the result is HTML-escaped.
pub fn escape_href(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    escape(&out)
}

fn category_colour(index: usize) -> &'static str {
    CATEGORY_COLOURS[index % CATEGORY_COLOURS.len()]
}

/// The categories of the stacked bars: "labelled", the known reasons present, then other reasons, sorted.
fn categories(stats: &[SequenceStats]) -> Vec<String> {
    let present: BTreeSet<&str> = stats
        .iter()
        .flat_map(|s| s.excluded.keys().map(String::as_str))
        .collect();
    let mut out = vec!["labelled".to_string()];
    out.extend(
        REASON_ORDER
            .iter()
            .filter(|r| present.contains(*r))
            .map(|r| r.to_string()),
    );
    out.extend(
        present
            .iter()
            .filter(|r| !REASON_ORDER.contains(r))
            .map(|r| r.to_string()),
    );
    out
}

fn fixed_colour(category: &str, all: &[String]) -> &'static str {
    let known = std::iter::once("labelled")
        .chain(REASON_ORDER)
        .position(|c| c == category);
    match known {
        Some(i) => category_colour(i),
        None => category_colour(REASON_ORDER.len() + 1 + all.iter().position(|c| c == category).unwrap_or(0)),
    }
}

/// Horizontal stacked bars: one bar per sequence, frames split into labelled and each excluded reason.
pub fn svg_reason_bars(stats: &[SequenceStats]) -> String {
    let categories = categories(stats);
    let label_w = 230.0;
    let bar_w = 560.0;
    let row_h = 18.0;
    let top = 34.0;
    let width = label_w + bar_w + 70.0;
    let height = top + row_h * stats.len() as f64 + 30.0;
    let max_frames = stats.iter().map(|s| s.frames).max().unwrap_or(0).max(1) as f64;
    let mut svg = svg_open(width, height, "Frames per sequence: labelled and excluded reasons");
    let mut x = label_w;
    for category in &categories {
        let colour = fixed_colour(category, &categories);
        let _ = write!(
            svg,
            r#"<rect x="{x:.1}" y="8" width="12" height="12" fill="{colour}"/><text x="{:.1}" y="18">{}</text>"#,
            x + 16.0,
            escape(category)
        );
        x += 24.0 + 7.0 * category.len() as f64;
    }
    for (i, s) in stats.iter().enumerate() {
        let y = top + row_h * i as f64;
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            label_w - 8.0,
            y + row_h * 0.7,
            escape(&truncate(&s.sequence_id, 34))
        );
        let mut x = label_w;
        for category in &categories {
            let n = if category == "labelled" {
                s.labelled_frames
            } else {
                s.excluded.get(category).copied().unwrap_or(0)
            };
            if n == 0 {
                continue;
            }
            let w = bar_w * n as f64 / max_frames;
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="{:.1}" width="{w:.1}" height="{:.1}" fill="{}"><title>{}: {} {n} of {} frames</title></rect>"#,
                y + 2.0,
                row_h - 4.0,
                fixed_colour(category, &categories),
                escape(&s.sequence_id),
                escape(category),
                s.frames
            );
            x += w;
        }
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            x + 6.0,
            y + row_h * 0.7,
            s.frames
        );
    }
    axis_ticks_x(
        &mut svg,
        label_w,
        bar_w,
        top + row_h * stats.len() as f64 + 4.0,
        max_frames,
        "frames",
    );
    svg.push_str("</svg>");
    svg
}

/// A vertical-bar histogram with one labelled bar per bin.
pub fn svg_histogram(title: &str, x_label: &str, bins: &[(String, usize)]) -> String {
    let (left, right, top, bottom) = (56.0, 16.0, 28.0, 84.0);
    let bar_slot = (520.0 / bins.len().max(1) as f64).clamp(14.0, 48.0);
    let plot_w = bar_slot * bins.len().max(1) as f64;
    let plot_h = 200.0;
    let width = left + plot_w + right;
    let height = top + plot_h + bottom;
    let max = bins.iter().map(|b| b.1).max().unwrap_or(0).max(1) as f64;
    let mut svg = svg_open(width, height, title);
    let _ = write!(svg, r#"<text x="{left}" y="16" class="title">{}</text>"#, escape(title));
    for (i, (label, n)) in bins.iter().enumerate() {
        let h = plot_h * *n as f64 / max;
        let x = left + bar_slot * i as f64;
        let _ = write!(
            svg,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="#1c7ed6"><title>{}: {n}</title></rect>"##,
            x + 1.0,
            top + plot_h - h,
            bar_slot - 2.0,
            escape(label)
        );
        let (cx, cy) = (x + bar_slot / 2.0, top + plot_h + 12.0);
        let _ = write!(
            svg,
            r#"<text x="{cx:.1}" y="{cy:.1}" text-anchor="end" transform="rotate(-40 {cx:.1} {cy:.1})">{}</text>"#,
            escape(label)
        );
    }
    axis_ticks_y(&mut svg, left, top, plot_h, max, 0);
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text></svg>"#,
        left + plot_w / 2.0,
        height - 4.0,
        escape(x_label)
    );
    svg
}

/// Bins of instances per labelled frame: one per count 0..=max, counts of 20 or more together.
pub fn instances_per_frame_bins(frames: &[FrameRow]) -> Vec<(String, usize)> {
    const CAP: usize = 20;
    let counts: Vec<usize> = frames
        .iter()
        .filter(|r| r.labelled)
        .map(|r| r.num_instances as usize)
        .collect();
    let max = counts.iter().copied().max().unwrap_or(0).min(CAP);
    (0..=max)
        .map(|k| {
            let n = counts
                .iter()
                .filter(|&&c| if k == CAP { c >= CAP } else { c == k })
                .count();
            (if k == CAP { format!("≥{CAP}") } else { k.to_string() }, n)
        })
        .collect()
}

/// Bins of instance areas in powers of two: [2^k, 2^(k+1)) px.
pub fn area_bins(instances: &[InstanceRow]) -> Vec<(String, usize)> {
    let exponent = |a: u32| 31 - a.max(1).leading_zeros();
    let Some(low) = instances.iter().map(|i| exponent(i.area_px)).min() else {
        return Vec::new();
    };
    let high = instances.iter().map(|i| exponent(i.area_px)).max().unwrap_or(low);
    (low..=high)
        .map(|k| {
            let n = instances.iter().filter(|i| exponent(i.area_px) == k).count();
            (format!("{}–{}", compact(1u64 << k), compact((1u64 << (k + 1)) - 1)), n)
        })
        .collect()
}

/// Foreground fraction over frame index for one sequence; labelled frames are dots, the line spans every
/// frame with a flow. `y_max` is shared by all charts so they compare.
pub fn svg_fg_chart(sequence_id: &str, rows: &[&FrameRow], y_max: f64) -> String {
    let (left, right, top, bottom) = (46.0, 10.0, 22.0, 26.0);
    let (plot_w, plot_h) = (360.0, 90.0);
    let width = left + plot_w + right;
    let height = top + plot_h + bottom;
    let last = rows.iter().map(|r| r.frame_index).max().unwrap_or(0).max(1) as f64;
    let y_max = y_max.max(1e-9);
    let point = |r: &FrameRow| {
        let x = left + plot_w * f64::from(r.frame_index) / last;
        let y = top + plot_h * (1.0 - (f64::from(r.fg_fraction.unwrap_or(0.0)) / y_max).min(1.0));
        (x, y)
    };
    let mut svg = svg_open(width, height, &format!("Foreground fraction of {sequence_id}"));
    let _ = write!(
        svg,
        r#"<text x="{left}" y="14" class="title">{}</text>"#,
        escape(&truncate(sequence_id, 44))
    );
    for r in rows.iter().filter(|r| r.quasi_static) {
        let x = left + plot_w * f64::from(r.frame_index) / last;
        let w = (plot_w / last).max(1.0);
        let _ = write!(
            svg,
            r##"<rect x="{:.1}" y="{top}" width="{w:.1}" height="{plot_h}" fill="#e7f5ff"/>"##,
            x - w / 2.0
        );
    }
    let path: Vec<String> = rows
        .iter()
        .filter(|r| r.fg_fraction.is_some())
        .map(|r| {
            let (x, y) = point(r);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    if !path.is_empty() {
        let _ = write!(
            svg,
            r##"<polyline points="{}" fill="none" stroke="#868e96" stroke-width="1"/>"##,
            path.join(" ")
        );
    }
    for r in rows.iter().filter(|r| r.labelled) {
        let (x, y) = point(r);
        let _ = write!(
            svg,
            r##"<circle cx="{x:.1}" cy="{y:.1}" r="2.5" fill="#2b8a3e"><title>frame {}: {:.3}% foreground, {} instances</title></circle>"##,
            escape(&r.frame_name),
            100.0 * f64::from(r.fg_fraction.unwrap_or(0.0)),
            r.num_instances
        );
    }
    let _ = write!(
        svg,
        r##"<line x1="{left}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#adb5bd"/><text x="{left}" y="{ty}">0</text><text x="{x1}" y="{ty}" text-anchor="end">{}</text>"##,
        last as u64,
        y0 = top + plot_h,
        x1 = left + plot_w,
        ty = top + plot_h + 14.0
    );
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{:.2}%</text><text x="{:.1}" y="{:.1}" text-anchor="end">0%</text></svg>"#,
        left - 4.0,
        top + 8.0,
        100.0 * y_max,
        left - 4.0,
        top + plot_h
    );
    svg
}

fn svg_open(width: f64, height: f64, label: &str) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" role="img" aria-label="{}">"#,
        escape(label)
    )
}

/// Round tick values: 1, 2 or 5 times a power of ten, about five over [0, max].
fn ticks(max: f64) -> Vec<f64> {
    let raw = max / 5.0;
    let power = 10f64.powf(raw.max(1e-12).log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|s| *s >= raw)
        .unwrap_or(power * 10.0);
    let step = step.max(1.0);
    (0..)
        .map(|i| i as f64 * step)
        .take_while(|v| *v <= max + 1e-9)
        .collect()
}

fn axis_ticks_x(svg: &mut String, left: f64, plot_w: f64, y: f64, max: f64, label: &str) {
    for v in ticks(max) {
        let x = left + plot_w * v / max;
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" y1="{y:.1}" x2="{x:.1}" y2="{:.1}" stroke="#adb5bd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            y + 4.0,
            y + 16.0,
            v as u64
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
        left + plot_w + 8.0,
        y + 16.0,
        escape(label)
    );
}

fn axis_ticks_y(svg: &mut String, left: f64, top: f64, plot_h: f64, max: f64, decimals: usize) {
    let _ = write!(
        svg,
        r##"<line x1="{left}" y1="{top}" x2="{left}" y2="{:.1}" stroke="#adb5bd"/>"##,
        top + plot_h
    );
    for v in ticks(max) {
        let y = top + plot_h * (1.0 - v / max);
        let _ = write!(
            svg,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{left}" y2="{y:.1}" stroke="#adb5bd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{v:.decimals$}</text>"##,
            left - 4.0,
            left - 6.0,
            y + 4.0
        );
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        text.to_string()
    } else {
        let tail: String = text
            .chars()
            .rev()
            .take(max_chars - 1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("…{tail}")
    }
}

/// Exact below 100 000, then 123_456 → "123.5k", 5_000_000 → "5M".
fn compact(n: u64) -> String {
    match n {
        0..=99_999 => n.to_string(),
        100_000..=999_999 => trim_decimal(n as f64 / 1e3, "k"),
        _ => trim_decimal(n as f64 / 1e6, "M"),
    }
}

fn trim_decimal(value: f64, suffix: &str) -> String {
    let text = format!("{value:.1}");
    format!("{}{suffix}", text.strip_suffix(".0").unwrap_or(&text))
}

fn percent(value: Option<f64>) -> String {
    value.map_or("–".into(), |v| format!("{:.2}%", 100.0 * v))
}

fn decimal(value: Option<f64>) -> String {
    value.map_or("–".into(), |v| format!("{v:.2}"))
}

const STYLE: &str = "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px 32px;color:#212529;max-width:1400px}\
h1{font-size:22px;margin:0 0 8px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dee2e6;padding-bottom:4px}\
table{border-collapse:collapse;font-variant-numeric:tabular-nums}td,th{padding:3px 10px;border-bottom:1px solid #e9ecef;text-align:right}\
th{background:#f1f3f5;font-weight:600}td:first-child,th:first-child{text-align:left}\
table.facts td{text-align:left;border:none;padding:1px 12px 1px 0}table.facts td:first-child{color:#868e96}\
svg{font:11px system-ui,sans-serif;fill:#343a40}svg .title{font-weight:600;font-size:12px}\
.plots{display:flex;flex-wrap:wrap;gap:20px;align-items:flex-start}.fg{display:flex;flex-wrap:wrap;gap:6px}\
figure{margin:0 0 18px}figcaption{color:#495057;margin-top:4px}\
.pair{display:grid;grid-template-columns:1fr 1fr;gap:8px;max-width:1300px}\
.pair img{width:100%;height:auto;border:1px solid #dee2e6}.note{color:#495057}\
.legend{display:flex;align-items:center;gap:10px;margin:6px 0 14px}.legend img{width:64px;height:64px}";

/// Renders the whole page.
pub fn render_html(input: &ReportInput) -> String {
    let groups = group_by_sequence(&input.frames);
    let stats: Vec<SequenceStats> = groups
        .iter()
        .map(|(id, rows)| SequenceStats::from_rows(id, rows))
        .collect();
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>\n<h1>{}</h1>\n",
        escape(&input.title),
        escape(&input.title)
    );
    html.push_str("<table class=\"facts\">");
    for (key, value) in &input.facts {
        let _ = write!(html, "<tr><td>{}</td><td>{}</td></tr>", escape(key), escape(value));
    }
    html.push_str("</table>\n");
    sequence_table(&mut html, &stats);
    name_table(&mut html, &input.name_counts);
    plots(&mut html, input, &stats, &groups);
    samples(&mut html, input);
    html.push_str("</body></html>\n");
    html
}

fn sequence_table(html: &mut String, stats: &[SequenceStats]) {
    let reasons = categories(stats).into_iter().skip(1).collect::<Vec<_>>();
    html.push_str("<h2>Per-sequence statistics</h2>\n<table id=\"sequences\"><thead><tr><th>sequence</th><th>frames</th><th>quasi-static</th><th>runs</th><th>segments</th><th>labelled</th><th>instances</th><th>inst./labelled frame</th><th>fg fraction (labelled)</th>");
    for reason in &reasons {
        let _ = write!(html, "<th>{}</th>", escape(reason));
    }
    html.push_str("</tr></thead><tbody>\n");
    for s in stats {
        let _ = writeln!(
            html,
            "<tr><td>{}</td>{}</tr>",
            escape(&s.sequence_id),
            row_cells(s, &reasons)
        );
    }
    if stats.len() > 1 {
        let total = totals(stats);
        let _ = writeln!(
            html,
            "<tr><th>all ({})</th>{}</tr>",
            stats.len(),
            row_cells(&total, &reasons)
        );
    }
    html.push_str("</tbody></table>\n");
}

fn name_table(html: &mut String, counts: &[(String, usize)]) {
    if counts.is_empty() {
        return;
    }
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    html.push_str("<h2>Open-vocabulary names</h2>\n<table id=\"names\"><thead><tr><th>name</th><th>instances</th><th>share</th></tr></thead><tbody>\n");
    for (name, n) in counts {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{n}</td><td>{:.1} %</td></tr>",
            escape(name),
            100.0 * *n as f64 / total.max(1) as f64
        );
    }
    html.push_str("</tbody></table>\n");
}

fn row_cells(s: &SequenceStats, reasons: &[String]) -> String {
    let mut cells = format!(
        "<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
        s.frames,
        s.quasi_static_frames,
        s.quasi_static_runs,
        s.segments,
        s.labelled_frames,
        s.instances,
        decimal(s.instances_per_labelled_frame),
        percent(s.fg_fraction_labelled)
    );
    for reason in reasons {
        let _ = write!(cells, "<td>{}</td>", s.excluded.get(reason).copied().unwrap_or(0));
    }
    cells
}

/// Sums over sequences; means weighted by labelled frames.
fn totals(stats: &[SequenceStats]) -> SequenceStats {
    let sum = |f: fn(&SequenceStats) -> usize| stats.iter().map(f).sum::<usize>();
    let labelled = sum(|s| s.labelled_frames);
    let instances = sum(|s| s.instances);
    let fg_weighted: f64 = stats
        .iter()
        .filter_map(|s| s.fg_fraction_labelled.map(|f| f * s.labelled_frames as f64))
        .sum();
    let mut excluded = BTreeMap::new();
    for (reason, n) in stats.iter().flat_map(|s| s.excluded.iter()) {
        *excluded.entry(reason.clone()).or_insert(0) += n;
    }
    SequenceStats {
        sequence_id: "all".into(),
        frames: sum(|s| s.frames),
        quasi_static_frames: sum(|s| s.quasi_static_frames),
        quasi_static_runs: sum(|s| s.quasi_static_runs),
        segments: sum(|s| s.segments),
        labelled_frames: labelled,
        instances,
        instances_per_labelled_frame: (labelled > 0).then(|| instances as f64 / labelled as f64),
        fg_fraction_labelled: (labelled > 0).then(|| fg_weighted / labelled as f64),
        excluded,
    }
}

fn plots(html: &mut String, input: &ReportInput, stats: &[SequenceStats], groups: &BTreeMap<&str, Vec<&FrameRow>>) {
    html.push_str("<h2>Where frames go</h2>\n<div class=\"plots\">");
    html.push_str(&svg_reason_bars(stats));
    html.push_str("</div>\n<h2>Instances</h2>\n<div class=\"plots\">");
    html.push_str(&svg_histogram(
        "Instances per labelled frame",
        "instances in the frame",
        &instances_per_frame_bins(&input.frames),
    ));
    html.push_str(&svg_histogram(
        "Instance areas",
        "area (px, power-of-two bins)",
        &area_bins(&input.instances),
    ));
    html.push_str("</div>\n");
    if let Some(pr) = &input.precision_recall {
        html.push_str(
            "<h2>Precision and recall by score</h2>\n<p class=\"note\">Instances ranked by their score and matched \
             to the ground truth at IoU &gt; 0.5 (<code>mrdino eval</code>); the orange dot is every instance kept \
             (the reference's fixed set).</p>\n<div class=\"plots\">",
        );
        html.push_str(&svg_precision_recall(pr));
        html.push_str("</div>\n");
    }
    html.push_str("<h2>Foreground fraction over frame index</h2>\n");
    html.push_str(
        "<p class=\"note\">Grey line: fraction of pixels above the foreground threshold, every frame with a flow; \
         green dots: labelled frames; blue bands: quasi-static frames. One vertical scale for all sequences.</p>\n<div class=\"fg\">",
    );
    let y_max = input.frames.iter().filter_map(|r| r.fg_fraction).fold(0.0f32, f32::max);
    for (id, rows) in groups.iter().take(MAX_FG_CHARTS) {
        html.push_str(&svg_fg_chart(id, rows, f64::from(y_max)));
    }
    html.push_str("</div>\n");
    if groups.len() > MAX_FG_CHARTS {
        let _ = writeln!(
            html,
            "<p class=\"note\">First {MAX_FG_CHARTS} of {} sequences shown.</p>",
            groups.len()
        );
    }
}

fn samples(html: &mut String, input: &ReportInput) {
    html.push_str("<h2>Sampled labelled frames</h2>\n");
    let _ = writeln!(
        html,
        "<p class=\"note\" id=\"flow-source\">{}</p>",
        escape(&input.flow_note)
    );
    for note in &input.notes {
        let _ = writeln!(html, "<p class=\"note\">{}</p>", escape(note));
    }
    if let Some(legend) = &input.legend_href {
        let _ = writeln!(
            html,
            "<div class=\"legend\"><img src=\"{}\" alt=\"flow colour wheel\"><span>Flow colours: hue = direction \
             (the disc's colour at an offset from its centre is the colour of a flow pointing that way), \
             saturation = speed relative to the frame's largest flow; white = no motion.</span></div>",
            escape_href(legend)
        );
    }
    for sample in &input.samples {
        let _ = write!(
            html,
            "<figure><div class=\"pair\"><img src=\"{}\" alt=\"instances of {} frame {}\">",
            escape_href(&sample.overlay_href),
            escape(&sample.sequence_id),
            escape(&sample.frame_name)
        );
        if let Some(flow) = &sample.flow_href {
            let _ = write!(
                html,
                "<img src=\"{}\" alt=\"flow of {} frame {}\">",
                escape_href(flow),
                escape(&sample.sequence_id),
                escape(&sample.frame_name)
            );
        }
        let max_flow = sample
            .max_flow_px
            .map_or(String::new(), |m| format!("; largest flow {m:.1} px"));
        let _ = writeln!(
            html,
            "</div><figcaption>{} · frame {} · {} instances{}</figcaption></figure>",
            escape(&sample.sequence_id),
            escape(&sample.frame_name),
            sample.instances,
            max_flow
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(
        seq: &str,
        index: u32,
        quasi_static: bool,
        reason: Option<&str>,
        segment: Option<u32>,
        n: u32,
    ) -> FrameRow {
        FrameRow {
            dataset: "frames".into(),
            sequence_id: seq.into(),
            frame_index: index,
            frame_name: format!("{index:06}"),
            source_path: String::new(),
            height: 4,
            width: 4,
            orig_height: 4,
            orig_width: 4,
            resized_height: 4,
            resized_width: 4,
            crop_top: 0,
            crop_left: 0,
            quasi_static,
            corner_flow_px: None,
            fg_fraction: Some(0.25),
            labelled: reason.is_none(),
            excluded_reason: reason.map(|r| crate::tables::ExcludedReason::parse(r).expect("known reason")),
            segment,
            num_instances: n,
        }
    }

    #[test]
    fn statistics_count_runs_segments_and_reasons() {
        let rows = [
            frame("a", 0, true, Some("short_run"), None, 0),
            frame("a", 1, false, Some("camera_motion"), None, 0),
            frame("a", 2, true, None, Some(0), 2),
            frame("a", 3, true, None, Some(0), 1),
            frame("a", 4, true, Some("fg_too_small"), Some(0), 0),
        ];
        let refs: Vec<&FrameRow> = rows.iter().collect();
        let s = SequenceStats::from_rows("a", &refs);
        assert_eq!(
            (s.frames, s.quasi_static_frames, s.quasi_static_runs, s.segments),
            (5, 4, 2, 1)
        );
        assert_eq!((s.labelled_frames, s.instances), (2, 3));
        assert_eq!(s.instances_per_labelled_frame, Some(1.5));
        assert_eq!(s.fg_fraction_labelled, Some(0.25));
        assert_eq!(s.excluded.get("camera_motion"), Some(&1));
        assert_eq!(
            categories(&[s]),
            vec!["labelled", "camera_motion", "short_run", "fg_too_small"]
        );
    }

    #[test]
    fn page_escapes_text_and_links() {
        let input = ReportInput {
            title: "a <b> & c".into(),
            frames: vec![frame("x/<y>", 0, true, None, Some(0), 1)],
            samples: vec![SampleFigure {
                sequence_id: "x/<y>".into(),
                frame_name: "000000".into(),
                instances: 1,
                overlay_href: "overlays/a b\".png".into(),
                flow_href: None,
                max_flow_px: None,
            }],
            ..ReportInput::default()
        };
        let html = render_html(&input);
        assert!(html.contains("a &lt;b&gt; &amp; c"));
        assert!(html.contains("x/&lt;y&gt;"));
        assert!(html.contains("src=\"overlays/a%20b%22.png\""));
        assert_eq!(html.matches("<svg").count(), html.matches("</svg>").count());
    }

    #[test]
    fn bins_and_ticks() {
        let rows = vec![
            frame("a", 0, true, None, Some(0), 2),
            frame("a", 1, true, None, Some(0), 0),
        ];
        assert_eq!(
            instances_per_frame_bins(&rows),
            vec![("0".into(), 1), ("1".into(), 0), ("2".into(), 1)]
        );
        assert_eq!(ticks(10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(ticks(3.0), vec![0.0, 1.0, 2.0, 3.0]);
        assert_eq!(compact(2047), "2047");
        assert_eq!(compact(131_072), "131.1k");
        assert_eq!(compact(4_000_000), "4M");
        assert_eq!(truncate("abcdef", 4), "…def");
    }
}
