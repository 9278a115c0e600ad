//! `mrdino export`: a labels or prediction run as the JSON other tools train and browse with — COCO instances
//! (one image per labelled frame, one annotation per instance, RLE masks at the original frame's resolution
//! through the provenance columns, `score` and `track_id` as extra fields) or YouTube-VIS (one video per
//! sequence, one annotation per track with one mask or null per frame). The conventions are
//! `mrdino_outputs::export`'s; the run is read as every reader reads it (done units only).

use crate::engine::paths::{check_out_dir, job_inputs};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use mrdino_outputs::export::{export_file, ExportFormat, ExportOptions};
use mrdino_outputs::runs::RunKind;

use crate::cli::export::{ExportArgs, Format};
use crate::engine::runs::read_label_tables;

/// `mrdino export`.
pub fn run(args: &ExportArgs) -> Result<ExitCode> {
    let source = args.labels.as_deref().or(args.predictions.as_deref());
    let runs = source.map(|run| job_inputs(run, mrdino_outputs::layout::LABELS_DATA_DIRS)).unwrap_or_default();
    let mut inputs: Vec<(&str, Option<&std::path::Path>)> = vec![("--root", args.root.as_deref())];
    inputs.extend(runs.iter().map(|p| ("the source run", Some(p.as_path()))));
    check_out_dir(&args.out, &inputs)?;
    let (source, wanted) = match (&args.labels, &args.predictions) {
        (Some(path), None) => (path, RunKind::Labels),
        (None, Some(path)) => (path, RunKind::Predictions),
        _ => bail!("give exactly one of --labels RUN and --predictions PRED"),
    };
    let tables = read_label_tables(source, args.params.as_deref())?;
    if tables.kind != wanted {
        let flag = if tables.kind == RunKind::Labels { "--labels" } else { "--predictions" };
        bail!("{} holds a {} run: use {flag}", source.display(), tables.kind);
    }
    let format = match args.format {
        Format::Coco => ExportFormat::Coco,
        Format::YoutubeVis => ExportFormat::YoutubeVis,
    };
    let options = ExportOptions {
        dataset_root: args.root.clone(),
        ..ExportOptions::default()
    };
    let summary = export_file(&tables, format, &options, &args.out)
        .with_context(|| format!("cannot export {} as {format}", source.display()))?;
    eprintln!(
        "export: {} {}, {} frames, {} annotations ({} masks); left out: {} unlabelled frames, {} instances empty at \
         the original resolution, {} unfinished units → {}",
        summary.images_or_videos,
        if format == ExportFormat::Coco { "images" } else { "videos" },
        summary.frames,
        summary.annotations,
        summary.masks,
        summary.unlabelled_frames,
        summary.empty_at_original,
        summary.incomplete_units,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
