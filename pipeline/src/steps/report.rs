//! `mrdino report`: a static HTML page about a labels run, with overlays and flow images of sampled frames.
//!
//! The page itself (statistics, SVG plots, layout) is rendered by `mrdino_outputs::report`; this module
//! gathers its inputs. It reads the complete units of one parameter partition, samples labelled frames evenly
//! (frames with instances first, as `labels --overlays` does), re-reads those frames from the source dataset
//! (dataset and root from the plan file, processing and cameras from the parameter file, so the pixels match
//! the label grid) and writes for each an overlay PNG and the flow of that frame as a colour-wheel PNG.
//!
//! The flow shown is the flow the labels saw when that is on disk: with `--flow-dir` (the directory given to
//! `labels --flow import`) the files are read. Otherwise it is recomputed from the source frames with OpenCV
//! DIS (the labels' DIS preset when they used DIS, else `medium`), and the page says so, since a network
//! flow or an imported flow may differ from it. When the source frames cannot be found the page is written
//! without samples and says why.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use mrdino_datasets::{DatasetKind, Frame, Sequence};
use mrdino_outputs::flowviz::{flow_to_image, wheel_legend, write_rgb_png};
use mrdino_outputs::layout::unit_key;
use mrdino_outputs::overlay::{write_overlay, OverlayInstance};
use mrdino_outputs::report::{render_html, ReportInput, SampleFigure};
use mrdino_outputs::{write_atomic, InstanceRow};
use mrdino_stages::flow::files::{find_flow_file, read_flow_file};
use mrdino_stages::flow::{DisFlow, DisPreset, FlowEstimator, FlowField};
use serde::Deserialize;

use crate::engine::runs::{read_label_tables, source_sequences};
use crate::settings::infer::InferParams;
use mrdino_model::predict::canvas_image;
use mrdino_outputs::runs::{sample_frames, RunKind, RunTables as LabelTables};

/// Side of the colour-wheel legend image, in pixels.
const LEGEND_PX: usize = 128;

/// Flags of `mrdino report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Output directory of `mrdino labels`.
    #[arg(long, value_name = "OUT")]
    pub labels: PathBuf,
    /// Parameter hash to report on (default: the only one, or the latest run when OUT holds several).
    #[arg(long, value_name = "HASH")]
    pub params: Option<String>,
    /// Directory the report is written to (index.html, overlays/, flow/).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Number of labelled frames to show with overlay and flow.
    #[arg(long, value_name = "N", default_value_t = 6)]
    pub samples: usize,
    /// Flow files the labels imported (`labels --flow import --flow-dir DIR`); without it the flow of the
    /// sampled frames is recomputed with OpenCV DIS.
    #[arg(long, value_name = "DIR")]
    pub flow_dir: Option<PathBuf>,
    /// Output directory of `mrdino name` for this run: names on the overlays and a per-name count table (the
    /// latest names partition made from the reported labels partition).
    #[arg(long, value_name = "OUT")]
    pub names: Option<PathBuf>,
}

/// Names of instances keyed by (sequence_id, frame_index, instance_id).
type NameMap = BTreeMap<(String, u32, u32), mrdino_outputs::names::NameRow>;

/// The parts of `OUT/_params/<hash>.json` the report needs.
#[derive(Deserialize)]
struct ParamsFile {
    #[serde(default)]
    code_version: String,
    params: StoredParams,
}

#[derive(Deserialize)]
struct StoredParams {
    dataset: DatasetKind,
    flow: StoredFlow,
}

#[derive(Deserialize)]
struct StoredFlow {
    backend: String,
    preset: Option<String>,
}

impl StoredFlow {
    fn describe(&self) -> String {
        match &self.preset {
            Some(p) => format!("{} ({p})", self.backend),
            None => self.backend.clone(),
        }
    }
}

/// How the flow images are obtained.
enum FlowImages {
    Files(PathBuf),
    Dis(DisFlow),
}

impl FlowImages {
    fn choose(flow_dir: Option<&Path>, labels_flow: Option<&StoredFlow>) -> Result<(Self, String)> {
        if let Some(dir) = flow_dir {
            if !dir.is_dir() {
                bail!("flow directory {} does not exist", dir.display());
            }
            let note = format!(
                "Flow images: read from {} (the flow files the labels {}).",
                dir.display(),
                if labels_flow.is_some_and(|f| f.backend == "import") {
                    "imported"
                } else {
                    "were given as --flow-dir"
                }
            );
            return Ok((FlowImages::Files(dir.to_path_buf()), note));
        }
        let preset_name = labels_flow
            .filter(|f| f.backend == "dis")
            .and_then(|f| f.preset.clone())
            .unwrap_or_else(|| "medium".to_string());
        let preset = DisPreset::parse(&preset_name).unwrap_or(DisPreset::Medium);
        let dis = DisFlow::new(preset)?;
        let recomputed = format!("recomputed from the source frames with OpenCV DIS ({})", preset.name());
        let note = match labels_flow.map(|f| f.backend.as_str()) {
            Some("dis") => format!("Flow images: {recomputed}, the backend the labels were made with."),
            Some("import") => format!(
                "Flow images: {recomputed}. The labels imported their flow, but no --flow-dir was given, so the flow \
                 shown may differ from the flow the labels were made with."
            ),
            Some(other) => format!(
                "Flow images: {recomputed}. The labels were made with {other} flow, which may differ from this one."
            ),
            None => format!("Flow images: {recomputed}."),
        };
        Ok((FlowImages::Dis(dis), note))
    }

    fn flow(&mut self, sequence_id: &str, frame: &Frame, next: Option<&Frame>) -> Result<FlowField> {
        match self {
            FlowImages::Files(dir) => {
                let path = find_flow_file(dir, sequence_id, &frame.name).with_context(|| {
                    format!(
                        "no flow file for frame {} of {sequence_id} in {}",
                        frame.name,
                        dir.display()
                    )
                })?;
                Ok(read_flow_file(&path)?)
            }
            FlowImages::Dis(dis) => {
                let next = next.with_context(|| format!("frame {} of {sequence_id} has no next frame", frame.name))?;
                let mut fields = dis.estimate(&[(&frame.image, &next.image)])?;
                fields.pop().context("DIS returned no flow")
            }
        }
    }

    fn needs_next_frame(&self) -> bool {
        matches!(self, FlowImages::Dis(_))
    }
}

/// The parameters of a prediction run (`mrdino infer`); `None` for a labels run.
fn prediction_params(tables: &LabelTables) -> Result<Option<InferParams>> {
    if tables.kind != RunKind::Predictions {
        return Ok(None);
    }
    let params =
        serde_json::from_value(tables.params.clone()).context("the prediction run's parameter file is unreadable")?;
    Ok(Some(params))
}

/// Writes the overlay and flow images of the sampled frames; returns their figures in sample order. For a
/// prediction run the masks are drawn on the model's canvas and no flow is shown.
fn write_samples(
    args: &ReportArgs,
    tables: &LabelTables,
    sequences: &[Sequence],
    flow: &mut FlowImages,
    names: &NameMap,
) -> Result<Vec<SampleFigure>> {
    let chosen = sample_frames(&tables.frames, args.samples);
    let predictions = prediction_params(tables)?;
    let mut instances: BTreeMap<(&str, u32), Vec<&InstanceRow>> = BTreeMap::new();
    for inst in &tables.instances {
        instances
            .entry((inst.sequence_id.as_str(), inst.frame_index))
            .or_default()
            .push(inst);
    }
    let mut wanted: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
    for frame in &chosen {
        let indices = wanted.entry(frame.sequence_id.as_str()).or_default();
        indices.insert(frame.frame_index as usize);
        if predictions.is_none() && flow.needs_next_frame() {
            indices.insert(frame.frame_index as usize + 1);
        }
    }
    let mut decoded: BTreeMap<&str, BTreeMap<usize, Frame>> = BTreeMap::new();
    for (sequence_id, indices) in &wanted {
        let sequence = sequences
            .iter()
            .find(|s| s.id == *sequence_id)
            .with_context(|| format!("sequence {sequence_id} is no longer in the source dataset"))?;
        let frames = sequence
            .decode_frames(indices)
            .with_context(|| format!("cannot re-read frames of {sequence_id} for the report"))?;
        decoded.insert(sequence_id, frames);
    }
    let mut figures = Vec::new();
    for row in chosen {
        let frames = &decoded[row.sequence_id.as_str()];
        let index = row.frame_index as usize;
        let frame = frames
            .get(&index)
            .with_context(|| format!("frame {} of {} could not be re-read", row.frame_name, row.sequence_id))?;
        let canvas;
        let image = match &predictions {
            Some(p) => {
                canvas = canvas_image(frame, &p.preset.window_grid(), p.tri_pd_view())?;
                &canvas
            }
            None => &frame.image,
        };
        let (height, width) = (image.height, image.width);
        if (height, width) != (row.height as usize, row.width as usize) {
            bail!(
                "frame {} of {} is now {}x{} but was labelled at {}x{}; the source changed",
                row.frame_name,
                row.sequence_id,
                width,
                height,
                row.width,
                row.height
            );
        }
        let rows = instances
            .get(&(row.sequence_id.as_str(), row.frame_index))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let items: Vec<OverlayInstance<'_>> = rows
            .iter()
            .map(|r| OverlayInstance {
                name: names
                    .get(&(r.sequence_id.clone(), r.frame_index, r.instance_id))
                    .map(|n| n.name.as_str()),
                ..OverlayInstance::of_row(r)
            })
            .collect();
        let stem = format!("{}-{}", unit_key(&row.sequence_id), row.frame_name);
        let overlay_href = format!("overlays/{stem}.png");
        write_overlay(&args.out.join(&overlay_href), &image.data, height, width, &items)?;
        let (flow_href, max_flow_px) = if predictions.is_some() {
            (None, None)
        } else {
            let field = flow.flow(&row.sequence_id, frame, frames.get(&(index + 1)))?;
            let picture = flow_to_image(field.height, field.width, &field.uv);
            let flow_href = format!("flow/{stem}.png");
            write_rgb_png(&args.out.join(&flow_href), &picture.rgb, picture.height, picture.width)?;
            (Some(flow_href), Some(picture.max_magnitude_px))
        };
        figures.push(SampleFigure {
            sequence_id: row.sequence_id.clone(),
            frame_name: row.frame_name.clone(),
            instances: rows.len(),
            overlay_href,
            flow_href,
            max_flow_px,
        });
    }
    Ok(figures)
}

pub fn run(args: &ReportArgs) -> Result<()> {
    let tables = read_label_tables(&args.labels, args.params.as_deref())?;
    let (names_params, names) = match &args.names {
        Some(dir) => {
            let (hash, names) = mrdino_outputs::names::read_names_run(dir, None, &tables.layout.params_hash)
                .with_context(|| format!("cannot read the names in {}", dir.display()))?;
            (Some(hash), names)
        }
        None => (None, NameMap::new()),
    };
    let params: Option<ParamsFile> = std::fs::read(tables.layout.ledger().params_file())
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let labels_flow = params.as_ref().map(|p| &p.params.flow);
    let (mut flow, mut flow_note) = FlowImages::choose(args.flow_dir.as_deref(), labels_flow)?;
    if tables.kind == RunKind::Predictions {
        flow_note = "Predictions of a slot model (`mrdino infer`): masks drawn on the model's canvas; no flow.".into();
    }
    let mut notes: Vec<String> = tables
        .incomplete_units
        .iter()
        .map(|f| {
            format!(
                "{} is not done (unfinished unit or changed inputs) and is left out.",
                f.display()
            )
        })
        .collect();
    let samples = if args.samples == 0 {
        Vec::new()
    } else {
        match source_sequences(&tables, None, None, None) {
            Ok(sequences) => write_samples(args, &tables, &sequences, &mut flow, &names)?,
            Err(e) => {
                notes.push(format!("No sampled frames: {e:#}."));
                Vec::new()
            }
        }
    };
    if samples.is_empty() && args.samples > 0 && notes.is_empty() {
        notes.push("No labelled frame to show.".into());
    }
    let legend_href = if samples.is_empty() {
        None
    } else {
        let legend = wheel_legend(LEGEND_PX);
        write_rgb_png(
            &args.out.join("flow-wheel.png"),
            &legend.rgb,
            legend.height,
            legend.width,
        )?;
        Some("flow-wheel.png".to_string())
    };
    let labelled = tables.frames.iter().filter(|f| f.labelled).count();
    let mut facts = vec![
        ("labels".to_string(), args.labels.display().to_string()),
        (
            "parameters".to_string(),
            format!("params={}", tables.layout.params_hash),
        ),
    ];
    if let Some(p) = &params {
        facts.push(("dataset".into(), p.params.dataset.name().to_string()));
        facts.push(("labels flow".into(), p.params.flow.describe()));
        facts.push(("labels made by".into(), format!("mrdino {}", p.code_version)));
    }
    facts.push((
        "totals".into(),
        format!(
            "sequences {}, frames {}, labelled {}, instances {}",
            tables
                .frames
                .iter()
                .map(|f| f.sequence_id.as_str())
                .collect::<BTreeSet<_>>()
                .len(),
            tables.frames.len(),
            labelled,
            tables.instances.len()
        ),
    ));
    let mut name_counts: BTreeMap<&str, usize> = BTreeMap::new();
    for inst in &tables.instances {
        if let Some(n) = names.get(&(inst.sequence_id.clone(), inst.frame_index, inst.instance_id)) {
            *name_counts.entry(n.name.as_str()).or_default() += 1;
        }
    }
    let mut name_counts: Vec<(String, usize)> = name_counts.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    name_counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if let (Some(dir), Some(hash)) = (&args.names, &names_params) {
        let named: usize = name_counts.iter().map(|(_, n)| n).sum();
        facts.push((
            "names".into(),
            format!(
                "{} (params={hash}): {named} of {} instances named",
                dir.display(),
                tables.instances.len()
            ),
        ));
    }
    facts.push(("report made by".into(), format!("mrdino {}", crate::engine::job::CODE_VERSION)));
    let input = ReportInput {
        title: "mrdino pseudo-label report".into(),
        facts,
        frames: tables.frames,
        instances: tables.instances,
        samples,
        flow_note,
        legend_href,
        notes,
        name_counts,
    };
    let index = args.out.join("index.html");
    write_atomic(&index, render_html(&input).as_bytes())?;
    println!("report: {} ({} sampled frames)", index.display(), input.samples.len());
    Ok(())
}
