//! The backbone-robustness report of `mrdino analyze`: every figure as JSON and a static HTML page.
//!
//! The page is self-contained (inline SVG, example images as relative links): per representation (CLS token,
//! mean-pooled patches) a heat map of CKA / debiased CKA / SVCCA / PWCCA between every pair of variants within
//! each backbone and between every pair of backbones for each variant, k-NN purity bars with their bootstrap
//! intervals, a 2-D projection of the pooled representations coloured by variant, and example variant images.
//! Values are shown with three decimals; hovering a cell shows its bootstrap interval.
//!
//! A statistic that cannot be computed on the frames analysed (a side without variance, a value that is not a
//! finite number, no usable bootstrap resample) is [`Statistic::NotComputable`] with its reason: `null`-free
//! JSON (`{"not_computable": "<reason>"}`), a grey "n/a" cell or bar on the page, and the reasons listed under
//! "Not computable". No NaN is ever written.

use serde::{Deserialize, Serialize};

use crate::report::escape;

/// A statistic with its percentile bootstrap interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub value: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// Bootstrap resamples on which the statistic is undefined, left out of the interval (absent when none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undefined_resamples: Option<usize>,
}

/// A statistic: its value with an interval, or why it cannot be computed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Statistic {
    Computed(Interval),
    NotComputable { not_computable: String },
}

impl Statistic {
    /// The interval, when computed.
    pub fn computed(&self) -> Option<&Interval> {
        match self {
            Self::Computed(interval) => Some(interval),
            Self::NotComputable { .. } => None,
        }
    }
}

/// The four similarity statistics of one pair of representations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairStats {
    /// The backbone (within-backbone pairs) or the variant (between-backbone pairs) both sides share.
    pub shared: String,
    pub representation: String,
    pub a: String,
    pub b: String,
    pub cka: Statistic,
    pub cka_debiased: Statistic,
    pub svcca: Statistic,
    pub pwcca: Statistic,
}

/// k-NN purity of one backbone's representation, per variant and overall.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PurityStats {
    pub backbone: String,
    pub representation: String,
    pub k: usize,
    pub per_variant: Vec<(String, Statistic)>,
    pub overall: Statistic,
}

/// A 2-D projection of one backbone's pooled representations; `variant` indexes `AnalysisReport::variants`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Projection {
    pub backbone: String,
    pub representation: String,
    pub method: String,
    pub points: Vec<(f64, f64, usize)>,
}

/// Example images of one frame, one per variant (paths relative to the report directory).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub frame: String,
    pub images: Vec<(String, String)>,
}

/// Everything `mrdino analyze` measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnalysisReport {
    pub source: String,
    pub frames: usize,
    pub backbones: Vec<String>,
    pub variants: Vec<String>,
    pub representations: Vec<String>,
    /// How the variants were made (fill rule, centre radius) and the bootstrap settings, as given.
    pub settings: serde_json::Value,
    pub within_backbone: Vec<PairStats>,
    pub between_backbones: Vec<PairStats>,
    pub purity: Vec<PurityStats>,
    pub projections: Vec<Projection>,
    pub examples: Vec<Example>,
}

const PALETTE: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// Colour of a value in [0, 1] on a white → dark-blue ramp.
fn ramp(value: f64) -> String {
    let t = if value.is_finite() { value.clamp(0.0, 1.0) } else { 0.0 };
    let lerp = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    format!(
        "#{:02x}{:02x}{:02x}",
        lerp(247.0, 8.0),
        lerp(251.0, 48.0),
        lerp(255.0, 107.0)
    )
}

/// Bootstrap interval text of a cell or bar title: `[low, high]`, with the left-out resamples when any.
fn interval_text(v: &Interval) -> String {
    match v.undefined_resamples {
        Some(n) if n > 0 => format!("[{:.3}, {:.3}] ({n} resamples undefined, left out)", v.ci_low, v.ci_high),
        _ => format!("[{:.3}, {:.3}]", v.ci_low, v.ci_high),
    }
}

/// A labelled square matrix of values as an SVG heat map.
fn svg_heatmap(title: &str, labels: &[String], cell: impl Fn(usize, usize) -> Option<Statistic>) -> String {
    let n = labels.len();
    let (size, left, top) = (46.0, 110.0, 40.0);
    let width = left + size * n as f64 + 10.0;
    let height = top + size * n as f64 + 90.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" role=\"img\" \
         aria-label=\"{t}\"><text x=\"4\" y=\"18\" font-size=\"13\" font-weight=\"bold\">{t}</text>",
        t = escape(title)
    );
    for (i, label) in labels.iter().enumerate() {
        let y = top + size * (i as f64 + 0.5) + 4.0;
        svg += &format!(
            "<text x=\"{}\" y=\"{y}\" font-size=\"11\" text-anchor=\"end\">{}</text>",
            left - 6.0,
            escape(label)
        );
        let x = left + size * (i as f64 + 0.5);
        let yb = top + size * n as f64 + 12.0;
        svg += &format!(
            "<text x=\"{x}\" y=\"{yb}\" font-size=\"11\" text-anchor=\"end\" transform=\"rotate(-45 {x} {yb})\">{}</text>",
            escape(label)
        );
        for j in 0..n {
            let (cx, cy) = (left + size * j as f64, top + size * i as f64);
            match cell(i, j) {
                Some(Statistic::Computed(v)) => {
                    let fg = if v.value > 0.6 { "#fff" } else { "#000" };
                    svg += &format!(
                        "<rect x=\"{cx}\" y=\"{cy}\" width=\"{size}\" height=\"{size}\" fill=\"{}\" stroke=\"#fff\">\
                         <title>{} / {}: {:.3} {}</title></rect>\
                         <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\" fill=\"{fg}\">{:.3}</text>",
                        ramp(v.value),
                        escape(&labels[i]),
                        escape(&labels[j]),
                        v.value,
                        interval_text(&v),
                        cx + size / 2.0,
                        cy + size / 2.0 + 4.0,
                        v.value
                    );
                }
                Some(Statistic::NotComputable { not_computable }) => {
                    svg += &format!(
                        "<rect x=\"{cx}\" y=\"{cy}\" width=\"{size}\" height=\"{size}\" fill=\"#ddd\" stroke=\"#fff\">\
                         <title>{} / {}: not computable: {}</title></rect>\
                         <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\" fill=\"#555\">n/a</text>",
                        escape(&labels[i]),
                        escape(&labels[j]),
                        escape(&not_computable),
                        cx + size / 2.0,
                        cy + size / 2.0 + 4.0
                    );
                }
                None => svg += &format!(
                    "<rect x=\"{cx}\" y=\"{cy}\" width=\"{size}\" height=\"{size}\" fill=\"#eee\" stroke=\"#fff\"/>"
                ),
            }
        }
    }
    svg + "</svg>"
}

/// Horizontal bars with interval whiskers, values in [0, 1]; a statistic that cannot be computed is a grey "n/a".
fn svg_bars(title: &str, bars: &[(String, Statistic)]) -> String {
    let (left, bar_h, plot_w) = (110.0, 22.0, 300.0);
    let height = 40.0 + bar_h * bars.len() as f64 + 30.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" role=\"img\" aria-label=\"{t}\">\
         <text x=\"4\" y=\"18\" font-size=\"13\" font-weight=\"bold\">{t}</text>",
        left + plot_w + 60.0,
        t = escape(title)
    );
    for (i, (label, statistic)) in bars.iter().enumerate() {
        let y = 32.0 + bar_h * i as f64;
        svg += &format!(
            "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{}</text>",
            left - 6.0,
            y + bar_h * 0.65,
            escape(label)
        );
        svg += &match statistic {
            Statistic::Computed(v) => svg_bar(v, (left, y, bar_h, plot_w), PALETTE[i % PALETTE.len()]),
            Statistic::NotComputable { not_computable } => format!(
                "<text x=\"{left}\" y=\"{}\" font-size=\"11\" fill=\"#555\">n/a<title>not computable: {}</title></text>",
                y + bar_h * 0.65,
                escape(not_computable)
            ),
        };
    }
    let axis_y = 32.0 + bar_h * bars.len() as f64 + 4.0;
    svg += &format!(
        "<line x1=\"{left}\" x2=\"{}\" y1=\"{axis_y}\" y2=\"{axis_y}\" stroke=\"#444\"/>\
         <text x=\"{left}\" y=\"{}\" font-size=\"10\">0</text><text x=\"{}\" y=\"{}\" font-size=\"10\">1</text>",
        left + plot_w,
        axis_y + 14.0,
        left + plot_w - 4.0,
        axis_y + 14.0
    );
    svg + "</svg>"
}

/// One bar with its whisker and value; `(left, y, bar height, plot width)` place it.
fn svg_bar(v: &Interval, (left, y, bar_h, plot_w): (f64, f64, f64, f64), colour: &str) -> String {
    let w = plot_w * v.value.clamp(0.0, 1.0);
    format!(
        "<rect x=\"{left}\" y=\"{y}\" width=\"{w}\" height=\"{}\" fill=\"{colour}\"><title>{:.3} {}</title></rect>\
         <line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#000\"/>\
         <text x=\"{}\" y=\"{}\" font-size=\"11\">{:.3}</text>",
        bar_h - 6.0,
        v.value,
        interval_text(v),
        left + plot_w * v.ci_low.clamp(0.0, 1.0),
        left + plot_w * v.ci_high.clamp(0.0, 1.0),
        y + (bar_h - 6.0) / 2.0,
        y + (bar_h - 6.0) / 2.0,
        left + plot_w + 8.0,
        y + bar_h * 0.65,
        v.value
    )
}

/// Scatter plot of a projection, coloured by variant, with a legend.
fn svg_scatter(title: &str, projection: &Projection, variants: &[String]) -> String {
    let (w, h, pad) = (360.0, 300.0, 20.0);
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y, _) in &projection.points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    let sx = if x1 > x0 { (w - 2.0 * pad) / (x1 - x0) } else { 1.0 };
    let sy = if y1 > y0 { (h - 2.0 * pad) / (y1 - y0) } else { 1.0 };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" role=\"img\" aria-label=\"{t}\">\
         <text x=\"4\" y=\"16\" font-size=\"13\" font-weight=\"bold\">{t}</text>\
         <rect x=\"0\" y=\"24\" width=\"{w}\" height=\"{h}\" fill=\"none\" stroke=\"#ccc\"/>",
        w + 120.0,
        h + 30.0,
        t = escape(title)
    );
    for &(x, y, v) in &projection.points {
        let cx = pad + (x - x0) * sx;
        let cy = 24.0 + h - pad - (y - y0) * sy;
        svg += &format!(
            "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"3\" fill=\"{}\" fill-opacity=\"0.75\"/>",
            PALETTE[v % PALETTE.len()]
        );
    }
    for (i, name) in variants.iter().enumerate() {
        let y = 40.0 + 18.0 * i as f64;
        svg += &format!(
            "<circle cx=\"{}\" cy=\"{y}\" r=\"5\" fill=\"{}\"/><text x=\"{}\" y=\"{}\" font-size=\"11\">{}</text>",
            w + 14.0,
            PALETTE[i % PALETTE.len()],
            w + 24.0,
            y + 4.0,
            escape(name)
        );
    }
    svg + "</svg>"
}

type Pick = fn(&PairStats) -> &Statistic;

const STATISTICS: [(&str, Pick); 4] = [
    ("CKA", |p| &p.cka),
    ("debiased CKA", |p| &p.cka_debiased),
    ("SVCCA", |p| &p.svcca),
    ("PWCCA", |p| &p.pwcca),
];

/// Heat maps of one group of pairs (the pairs sharing `shared` and `representation`).
fn heatmaps(html: &mut String, pairs: &[PairStats], shared: &str, representation: &str, labels: &[String]) {
    let find = |a: &str, b: &str| {
        pairs.iter().find(|p| {
            p.shared == shared
                && p.representation == representation
                && ((p.a == a && p.b == b) || (p.a == b && p.b == a))
        })
    };
    let any = pairs.iter().any(|p| p.shared == shared && p.representation == representation);
    if !any {
        return;
    }
    html.push_str("<div class=\"row\">");
    for (name, pick) in STATISTICS {
        let svg = svg_heatmap(&format!("{name} — {shared}, {representation}"), labels, |i, j| {
            if i == j {
                Some(Statistic::Computed(Interval {
                    value: 1.0,
                    ci_low: 1.0,
                    ci_high: 1.0,
                    undefined_resamples: None,
                }))
            } else {
                find(&labels[i], &labels[j]).map(|p| pick(p).clone())
            }
        });
        html.push_str(&svg);
    }
    html.push_str("</div>");
}

/// Every statistic of the report that cannot be computed, with what it compares and why.
pub fn not_computable(report: &AnalysisReport) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (kind, pairs) in [("within", &report.within_backbone), ("between", &report.between_backbones)] {
        for p in pairs {
            for (name, pick) in STATISTICS {
                if let Statistic::NotComputable { not_computable } = pick(p) {
                    let what = if kind == "within" {
                        format!("{name} of {} ({}): {} vs {}", p.shared, p.representation, p.a, p.b)
                    } else {
                        format!("{name} of {} vs {} ({}, {})", p.a, p.b, p.shared, p.representation)
                    };
                    out.push((what, not_computable.clone()));
                }
            }
        }
    }
    for p in &report.purity {
        let all = p.per_variant.iter().map(|(v, s)| (v.as_str(), s));
        for (variant, statistic) in all.chain([("overall", &p.overall)]) {
            if let Statistic::NotComputable { not_computable } = statistic {
                let what = format!("k-NN purity of {} ({}), {variant}", p.backbone, p.representation);
                out.push((what, not_computable.clone()));
            }
        }
    }
    out
}

/// The "Not computable" list of the page (nothing when every statistic was computed).
fn not_computable_section(html: &mut String, report: &AnalysisReport) {
    let missing = not_computable(report);
    if missing.is_empty() {
        return;
    }
    *html += &format!(
        "<h2>Not computable</h2><p>{} statistics cannot be computed on these frames and are shown as n/a:</p><ul>",
        missing.len()
    );
    for (what, why) in &missing {
        *html += &format!("<li>{}: {}</li>", escape(what), escape(why));
    }
    html.push_str("</ul>");
}

/// The HTML page of an analysis.
pub fn render_analysis_html(report: &AnalysisReport) -> String {
    let mut html = String::from(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>mrdino analyze</title><style>\
         body{font-family:sans-serif;margin:24px;color:#222} .row{display:flex;flex-wrap:wrap;gap:16px} \
         table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:3px 8px;font-size:12px} \
         img{max-width:220px;border:1px solid #ccc} figure{margin:0} figcaption{font-size:11px}</style></head><body>",
    );
    html += &format!(
        "<h1>Representation robustness</h1><p>{} frames from <code>{}</code>; backbones: {}; variants: {}.</p>\
         <p>CKA, debiased CKA, SVCCA and PWCCA compare two representations of the same frames (1 = identical up to \
         the statistic's invariances). Purity is the share of a point's k nearest neighbours that are the same \
         variant: high purity means the backbone separates the variants. Intervals are bootstrap 95 % over frames.</p>\
         <details><summary>settings</summary><pre>{}</pre></details>",
        report.frames,
        escape(&report.source),
        escape(&report.backbones.join(", ")),
        escape(&report.variants.join(", ")),
        escape(&serde_json::to_string_pretty(&report.settings).unwrap_or_default())
    );
    html.push_str("<h2>Between variants, within each backbone</h2>");
    for backbone in &report.backbones {
        for representation in &report.representations {
            heatmaps(
                &mut html,
                &report.within_backbone,
                backbone,
                representation,
                &report.variants,
            );
        }
    }
    if report.backbones.len() > 1 {
        html.push_str("<h2>Between backbones, for each variant</h2>");
        for variant in &report.variants {
            for representation in &report.representations {
                heatmaps(
                    &mut html,
                    &report.between_backbones,
                    variant,
                    representation,
                    &report.backbones,
                );
            }
        }
    }
    html.push_str("<h2>k-NN purity of the variants</h2><div class=\"row\">");
    for p in &report.purity {
        let mut bars = p.per_variant.clone();
        bars.push(("overall".to_string(), p.overall.clone()));
        html.push_str(&svg_bars(
            &format!("{} — {} (k = {})", p.backbone, p.representation, p.k),
            &bars,
        ));
    }
    html.push_str("</div><h2>Projections</h2><div class=\"row\">");
    for p in &report.projections {
        let title = format!("{} — {} ({})", p.backbone, p.representation, p.method);
        html.push_str(&svg_scatter(&title, p, &report.variants));
    }
    html.push_str("</div>");
    not_computable_section(&mut html, report);
    html.push_str("<h2>Example variants</h2>");
    for example in &report.examples {
        html += &format!("<h3>{}</h3><div class=\"row\">", escape(&example.frame));
        for (variant, path) in &example.images {
            html += &format!(
                "<figure><img src=\"{}\" alt=\"{v}\"><figcaption>{v}</figcaption></figure>",
                crate::report::escape_href(path),
                v = escape(variant)
            );
        }
        html.push_str("</div>");
    }
    html.push_str("</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(v: f64) -> Statistic {
        Statistic::Computed(Interval {
            value: v,
            ci_low: v - 0.05,
            ci_high: v + 0.05,
            undefined_resamples: None,
        })
    }

    #[test]
    fn page_has_every_pair_and_figure() {
        let variants: Vec<String> = ["full", "foreground"].iter().map(|s| s.to_string()).collect();
        let pair = |shared: &str, a: &str, b: &str| PairStats {
            shared: shared.into(),
            representation: "cls".into(),
            a: a.into(),
            b: b.into(),
            cka: iv(0.75),
            cka_debiased: iv(0.625),
            svcca: iv(0.5),
            pwcca: iv(0.375),
        };
        let report = AnalysisReport {
            source: "labels <run>".into(),
            frames: 3,
            backbones: vec!["a".into(), "b".into()],
            variants: variants.clone(),
            representations: vec!["cls".into()],
            settings: serde_json::json!({"fill": "mean"}),
            within_backbone: vec![pair("a", "full", "foreground"), pair("b", "full", "foreground")],
            between_backbones: vec![pair("full", "a", "b"), pair("foreground", "a", "b")],
            purity: vec![PurityStats {
                backbone: "a".into(),
                representation: "cls".into(),
                k: 5,
                per_variant: vec![("full".into(), iv(0.875)), ("foreground".into(), iv(0.75))],
                overall: iv(0.8125),
            }],
            projections: vec![Projection {
                backbone: "a".into(),
                representation: "cls".into(),
                method: "pca".into(),
                points: vec![(0.0, 1.0, 0), (1.0, 0.0, 1)],
            }],
            examples: vec![Example {
                frame: "s/0".into(),
                images: vec![("full".into(), "examples/0_full.png".into())],
            }],
        };
        let html = render_analysis_html(&report);
        assert!(html.contains(": 0.750 ["), "a cell value with its interval");
        assert!(html.contains("&lt;run&gt;"));
        assert_eq!(html.matches("<svg").count(), 4 * 2 + 4 * 2 + 1 + 1);
        assert!(html.contains("examples/0_full.png"));
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<AnalysisReport>(&json).unwrap(), report);
        assert!(!html.contains("Not computable"));
    }

    #[test]
    fn statistics_that_cannot_be_computed_are_named_with_their_reason_never_nan() {
        let gone = || Statistic::NotComputable {
            not_computable: "the border representations are the same for every frame".into(),
        };
        let report = AnalysisReport {
            source: "run".into(),
            frames: 4,
            backbones: vec!["a".into()],
            variants: vec!["full".into(), "border".into()],
            representations: vec!["mean".into()],
            settings: serde_json::json!({}),
            within_backbone: vec![PairStats {
                shared: "a".into(),
                representation: "mean".into(),
                a: "full".into(),
                b: "border".into(),
                cka: gone(),
                cka_debiased: gone(),
                svcca: gone(),
                pwcca: iv(0.5),
            }],
            between_backbones: Vec::new(),
            purity: vec![PurityStats {
                backbone: "a".into(),
                representation: "mean".into(),
                k: 3,
                per_variant: vec![("full".into(), iv(1.0)), ("border".into(), gone())],
                overall: gone(),
            }],
            projections: Vec::new(),
            examples: Vec::new(),
        };
        let json = serde_json::to_string(&report).unwrap();
        assert!(!json.contains("null") && !json.contains("NaN"), "{json}");
        assert_eq!(json.matches("\"not_computable\"").count(), 5, "{json}");
        assert_eq!(serde_json::from_str::<AnalysisReport>(&json).unwrap(), report);
        let html = render_analysis_html(&report);
        assert!(!html.contains("NaN"));
        assert!(html.contains("<h2>Not computable</h2><p>5 statistics"), "{html}");
        assert!(html.contains("CKA of a (mean): full vs border: the border representations"), "{html}");
        assert!(html.contains("k-NN purity of a (mean), overall"), "{html}");
        assert_eq!(html.matches(">n/a<").count(), 2 * 3 + 2, "three heat-map pairs of cells, two bars");
        assert_eq!(not_computable(&report).len(), 5);
    }
}
