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
//! flow or an imported flow may differ from it. A flow file whose size differs from the frame's is refused,
//! naming the file and both sizes, as `labels` refuses it. When the source frames cannot be found the page is
//! written without samples and says why.
//!
//! The report directory may not be, lie inside or contain any input (the run's tables and bookkeeping, the flow
//! directory, the names run, the source dataset): that is refused before anything is written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use mrdino_datasets::{DatasetKind, Frame, Sequence};
use mrdino_model::predict::canvas_image;
use mrdino_outputs::flowviz::{flow_to_image, wheel_legend, write_rgb_png};
use mrdino_outputs::layout::{unit_key, LABELS_DATA_DIRS};
use mrdino_outputs::names::NAMES_DATA_DIRS;
use mrdino_outputs::overlay::{write_overlay, OverlayInstance};
use mrdino_outputs::report::{render_html, PrecisionRecall, ReportInput, SampleFigure};
use mrdino_outputs::runs::{sample_frames, RunKind, RunTables as LabelTables};
use mrdino_outputs::{write_atomic, FrameRow, InstanceRow};
use mrdino_stages::flow::files::{find_flow_file, read_flow_file};
use mrdino_stages::flow::{DisFlow, DisPreset, FlowEstimator, FlowField};
use serde::Deserialize;

use crate::cli::report::ReportArgs;
use crate::engine::paths::{check_outputs, job_inputs};
use crate::engine::progress::print_stdout;
use crate::engine::runs::{read_label_tables, source_sequences};
use crate::settings::infer::InferParams;

/// Side of the colour-wheel legend image, in pixels.
const LEGEND_PX: usize = 128;

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
                let field = read_flow_file(&path)?;
                if (field.height, field.width) != (frame.image.height, frame.image.width) {
                    bail!(
                        "{}: flow is {}x{} but frames are processed at {}x{} (frame {} of {sequence_id}); is \
                         --flow-dir the flow the labels imported?",
                        path.display(),
                        field.width,
                        field.height,
                        frame.image.width,
                        frame.image.height,
                        frame.name
                    );
                }
                Ok(field)
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

/// The source frames the samples need, decoded once per sequence: each sampled frame and, when the flow is
/// recomputed, its next frame.
fn decode_samples<'r>(
    chosen: &[&'r FrameRow],
    sequences: &[Sequence],
    with_next: bool,
) -> Result<BTreeMap<&'r str, BTreeMap<usize, Frame>>> {
    let mut wanted: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
    for frame in chosen {
        let indices = wanted.entry(frame.sequence_id.as_str()).or_default();
        indices.insert(frame.frame_index as usize);
        if with_next {
            indices.insert(frame.frame_index as usize + 1);
        }
    }
    let mut decoded = BTreeMap::new();
    for (sequence_id, indices) in &wanted {
        let sequence = sequences
            .iter()
            .find(|s| s.id == *sequence_id)
            .with_context(|| format!("sequence {sequence_id} is no longer in the source dataset"))?;
        let frames = sequence
            .decode_frames(indices)
            .with_context(|| format!("cannot re-read frames of {sequence_id} for the report"))?;
        decoded.insert(*sequence_id, frames);
    }
    Ok(decoded)
}

/// What drawing the samples needs besides each frame.
struct Drawing<'a> {
    out: &'a Path,
    flow: &'a mut FlowImages,
    names: &'a NameMap,
    predictions: Option<InferParams>,
}

impl Drawing<'_> {
    /// Writes the overlay (and, for labels, the flow image) of one sampled frame; `frames` are its sequence's
    /// decoded frames.
    fn figure(
        &mut self,
        row: &FrameRow,
        frames: &BTreeMap<usize, Frame>,
        rows: &[&InstanceRow],
    ) -> Result<SampleFigure> {
        let index = row.frame_index as usize;
        let frame = frames
            .get(&index)
            .with_context(|| format!("frame {} of {} could not be re-read", row.frame_name, row.sequence_id))?;
        let canvas;
        let image = match &self.predictions {
            Some(p) => {
                canvas = canvas_image(frame, &p.window_grid()?, p.tri_pd_view())?;
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
        let items: Vec<OverlayInstance<'_>> = rows
            .iter()
            .map(|r| OverlayInstance {
                name: self
                    .names
                    .get(&(r.sequence_id.clone(), r.frame_index, r.instance_id))
                    .map(|n| n.name.as_str()),
                ..OverlayInstance::of_row(r)
            })
            .collect();
        let stem = format!("{}-{}", unit_key(&row.sequence_id), row.frame_name);
        let overlay_href = format!("overlays/{stem}.png");
        write_overlay(&self.out.join(&overlay_href), &image.data, height, width, &items)?;
        let (flow_href, max_flow_px) = if self.predictions.is_some() {
            (None, None)
        } else {
            let field = self.flow.flow(&row.sequence_id, frame, frames.get(&(index + 1)))?;
            let picture = flow_to_image(field.height, field.width, &field.uv);
            let flow_href = format!("flow/{stem}.png");
            write_rgb_png(&self.out.join(&flow_href), &picture.rgb, picture.height, picture.width)?;
            (Some(flow_href), Some(picture.max_magnitude_px))
        };
        Ok(SampleFigure {
            sequence_id: row.sequence_id.clone(),
            frame_name: row.frame_name.clone(),
            instances: rows.len(),
            overlay_href,
            flow_href,
            max_flow_px,
        })
    }
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
    let decoded = decode_samples(&chosen, sequences, predictions.is_none() && flow.needs_next_frame())?;
    let mut drawing = Drawing {
        out: &args.out,
        flow,
        names,
        predictions,
    };
    let mut figures = Vec::new();
    for row in chosen {
        let frames = decoded
            .get(row.sequence_id.as_str())
            .with_context(|| format!("sequence {} was not decoded", row.sequence_id))?;
        let rows = instances
            .get(&(row.sequence_id.as_str(), row.frame_index))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        figures.push(drawing.figure(row, frames, rows)?);
    }
    Ok(figures)
}

/// Refuses a report directory that is, lies inside or contains an input: the run's tables and bookkeeping, the
/// flow directory, the names run, the source dataset.
fn check_paths(args: &ReportArgs, tables: &LabelTables) -> Result<()> {
    let run = job_inputs(&args.labels, LABELS_DATA_DIRS);
    let mut inputs: Vec<(&str, &Path)> = run.iter().map(|p| ("--labels", p.as_path())).collect();
    let names = args
        .names
        .as_deref()
        .map(|dir| job_inputs(dir, NAMES_DATA_DIRS))
        .unwrap_or_default();
    inputs.extend(names.iter().map(|p| ("--names", p.as_path())));
    if let Some(file) = &args.eval {
        inputs.push(("--eval", file));
    }
    if let Some(dir) = &args.flow_dir {
        inputs.push(("--flow-dir", dir));
    }
    if !tables.dataset_root.as_os_str().is_empty() {
        inputs.push(("the source dataset", &tables.dataset_root));
    }
    check_outputs(&inputs, &[("--out", &args.out)])
}

/// The names of the run's instances (`--names`), with the names partition's hash.
fn read_names(args: &ReportArgs, tables: &LabelTables) -> Result<(Option<String>, NameMap)> {
    let Some(dir) = &args.names else {
        return Ok((None, NameMap::new()));
    };
    let (hash, names) = mrdino_outputs::names::read_names_run(dir, None, &tables.layout.params_hash)
        .with_context(|| format!("cannot read the names in {}", dir.display()))?;
    Ok((Some(hash), names))
}

/// The sampled figures (none when the source frames cannot be read, with a note why) and the page's notes.
fn samples_and_notes(
    args: &ReportArgs,
    tables: &LabelTables,
    flow: &mut FlowImages,
    names: &NameMap,
) -> Result<(Vec<SampleFigure>, Vec<String>)> {
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
        match source_sequences(tables, None, None, None) {
            Ok(sequences) => write_samples(args, tables, &sequences, flow, names)?,
            Err(e) => {
                notes.push(format!("No sampled frames: {e:#}."));
                Vec::new()
            }
        }
    };
    if samples.is_empty() && args.samples > 0 && notes.is_empty() {
        notes.push("No labelled frame to show.".into());
    }
    Ok((samples, notes))
}

/// The instances per name, most frequent first.
fn name_counts(tables: &LabelTables, names: &NameMap) -> Vec<(String, usize)> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for inst in &tables.instances {
        if let Some(n) = names.get(&(inst.sequence_id.clone(), inst.frame_index, inst.instance_id)) {
            *counts.entry(n.name.as_str()).or_default() += 1;
        }
    }
    let mut counts: Vec<(String, usize)> = counts.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counts
}

/// The facts table at the top of the page.
fn facts(
    args: &ReportArgs,
    tables: &LabelTables,
    params: Option<&ParamsFile>,
    names: (Option<&String>, &[(String, usize)]),
) -> Vec<(String, String)> {
    let mut facts = vec![
        ("labels".to_string(), args.labels.display().to_string()),
        (
            "parameters".to_string(),
            format!("params={}", tables.layout.params_hash),
        ),
    ];
    if let Some(p) = params {
        facts.push(("dataset".into(), p.params.dataset.name().to_string()));
        facts.push(("labels flow".into(), p.params.flow.describe()));
        facts.push(("labels made by".into(), format!("mrdino {}", p.code_version)));
    }
    let sequences = tables
        .frames
        .iter()
        .map(|f| f.sequence_id.as_str())
        .collect::<BTreeSet<_>>()
        .len();
    let labelled = tables.frames.iter().filter(|f| f.labelled).count();
    facts.push((
        "totals".into(),
        format!(
            "sequences {sequences}, frames {}, labelled {labelled}, instances {}",
            tables.frames.len(),
            tables.instances.len()
        ),
    ));
    if let (Some(dir), Some(hash)) = (&args.names, names.0) {
        let named: usize = names.1.iter().map(|(_, n)| n).sum();
        facts.push((
            "names".into(),
            format!(
                "{} (params={hash}): {named} of {} instances named",
                dir.display(),
                tables.instances.len()
            ),
        ));
    }
    facts.push((
        "report made by".into(),
        format!("mrdino {}", crate::engine::job::CODE_VERSION),
    ));
    facts
}

/// Writes the colour-wheel legend when there are flow images to explain.
fn write_legend(out: &Path, samples: &[SampleFigure]) -> Result<Option<String>> {
    if samples.is_empty() {
        return Ok(None);
    }
    let legend = wheel_legend(LEGEND_PX);
    write_rgb_png(&out.join("flow-wheel.png"), &legend.rgb, legend.height, legend.width)?;
    Ok(Some("flow-wheel.png".to_string()))
}

/// The precision–recall curve of an `mrdino eval` JSON (`--eval`) of the reported partition; a file of another
/// partition, or without a ranking (instances without scores), is refused naming it.
fn read_precision_recall(file: Option<&Path>, params_hash: &str) -> Result<Option<PrecisionRecall>> {
    let Some(file) = file else {
        return Ok(None);
    };
    let bytes = std::fs::read(file).with_context(|| format!("cannot read --eval {}", file.display()))?;
    let result: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("--eval {}: not the JSON of `mrdino eval`", file.display()))?;
    let evaluated = result["params_hash"].as_str().unwrap_or_default();
    if evaluated != params_hash {
        bail!(
            "--eval {} scores params={evaluated}, but the report is of params={params_hash}",
            file.display()
        );
    }
    let ranked = &result["ranked"];
    let number = |v: &serde_json::Value| v.as_f64();
    let points: Option<Vec<(f64, f64)>> = ranked["curve"]
        .as_array()
        .map(|curve| curve.iter().filter_map(|p| Some((number(&p["recall"])?, number(&p["precision"])?))).collect());
    let (Some(points), Some(ap50), Some(precision), Some(recall)) = (
        points,
        number(&ranked["ap50"]),
        number(&ranked["precision_at_full"]),
        number(&ranked["recall_at_full"]),
    ) else {
        bail!(
            "--eval {}: no ranking by score (a run without scores, or eval of an earlier version)",
            file.display()
        );
    };
    Ok(Some(PrecisionRecall {
        points,
        ap50,
        precision_at_full: precision,
        recall_at_full: recall,
    }))
}

/// `mrdino report`. A report that fails (e.g. on flow of another size, found while drawing the samples) leaves
/// no directory behind that it created.
pub fn run(args: &ReportArgs) -> Result<()> {
    let existed = args.out.exists();
    let result = write_report(args);
    if result.is_err() && !existed {
        let _ = std::fs::remove_dir_all(&args.out);
    }
    result
}

fn write_report(args: &ReportArgs) -> Result<()> {
    let tables = read_label_tables(&args.labels, args.params.as_deref())?;
    check_paths(args, &tables)?;
    let (names_params, names) = read_names(args, &tables)?;
    let params: Option<ParamsFile> = std::fs::read(tables.layout.ledger().params_file())
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let labels_flow = params.as_ref().map(|p| &p.params.flow);
    let (mut flow, mut flow_note) = FlowImages::choose(args.flow_dir.as_deref(), labels_flow)?;
    if tables.kind == RunKind::Predictions {
        flow_note = "Predictions of a slot model (`mrdino infer`): masks drawn on the model's canvas; no flow.".into();
    }
    let (samples, notes) = samples_and_notes(args, &tables, &mut flow, &names)?;
    let legend_href = write_legend(&args.out, &samples)?;
    let name_counts = name_counts(&tables, &names);
    let facts = facts(args, &tables, params.as_ref(), (names_params.as_ref(), &name_counts));
    let precision_recall = read_precision_recall(args.eval.as_deref(), &tables.layout.params_hash)?;
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
        precision_recall,
    };
    let index = args.out.join("index.html");
    write_atomic(&index, render_html(&input).as_bytes())?;
    print_stdout(&format!(
        "report: {} ({} sampled frames)\n",
        index.display(),
        input.samples.len()
    ))?;
    Ok(())
}
