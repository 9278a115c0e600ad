//! `mrdino segment`: Talk2DINO's text-prompted masks of every frame of a dataset, as a labels-shaped run.
//!
//! Per frame (decoded with the dataset's reference processing, or `--resize`, so the masks share the grid of
//! `mrdino labels`): `mrdino_model::talk2dino::segment` on the uint8 frame along `--view` — `square` (default,
//! Talk2DINO's demo path: the float frame resized to 448×448, or to the input size of the release a ψ file
//! records) or `sliding` (its benchmark path: keep-ratio resize, 448 px crops at stride 224, averaged) — with the
//! backbone's patch tokens, the cosine of every patch to every prompt's class embedding (7 templates averaged in
//! CLIP space, ψ, L2-normalised), sigmoid, optional background cleaning (`--background-clean`, λ = 0.2, from the
//! last block's CLS attention), upsampling to the frame, optional PAMR (`--pamr`, as Talk2DINO's demo runs it),
//! a constant background channel `--threshold` in front, argmax.
//!
//! Output: the `frames` and `instances` tables of a labels run (`OUT/{frames,instances}/params=<hash>/`, same
//! bookkeeping, kind `labels`), so `report`, `eval`, `name`, `status` and `finalize` read it as they read
//! labels. An instance is the region one prompt wins in one frame: `instance_id` = prompt index + 1 (stable
//! across frames), `origin` = `prompt`, `component_id` = prompt index, `hdbscan_label` null, `mean_flow_px`
//! NaN (no flow), and an extra `prompt` column. Frames rows: `labelled` true, `quasi_static` false, no corner
//! flow, `fg_fraction` = share of non-background pixels. A frame that cannot be decoded is recorded in the
//! unit's marker and manifest as a frame failure. Units, shards, resume and stops (exit code 4) as `labels`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use mrdino_datasets::{list_sequences, Frame, Sequence, SourceOptions};
use mrdino_model::talk2dino::{frame_tensor, segment_frames, FrameRegions, SegmentOptions, Talk2Dino};
use mrdino_outputs::bookkeeping::{FrameFailure, PlannedUnit};
use mrdino_outputs::layout::{LabelCounts, Layout, LABELS_DATA_DIRS};
use mrdino_outputs::names::prompted_instances_batch;
use mrdino_outputs::tables::{frames_batch, write_parquet, FrameId, InstanceOrigin, SCHEMA_VERSION};
use mrdino_stages::frame_rows::frame_row;
use mrdino_outputs::{CocoRle, FrameRow, InstanceRow};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::cli::segment::SegmentArgs;
use crate::engine::job::{build_plan, OpenJob, UnitTally, CODE_VERSION};
use crate::engine::progress;
use crate::engine::stop::{StopHandle, Stopped};
use crate::engine::units::{Driver, UnitDone};
use crate::settings::identity::continue_earlier_partition;
use crate::settings::segment::{SegmentParams, SegmentRequest};

/// The totals of a segment run's manifest (the keys of a labels run's).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SegmentTotals {
    #[serde(flatten)]
    pub units: UnitTally,
    pub frames: usize,
    pub quasi_static_frames: usize,
    pub labelled_frames: usize,
    pub instances: usize,
    pub frame_failures: usize,
    pub seconds: f64,
}

/// A frame's rows from its regions.
fn frame_rows(sequence: &Sequence, frame: &Frame, regions: FrameRegions) -> (FrameRow, Vec<InstanceRow>) {
    let dataset = sequence.dataset.name().to_string();
    let (h, w) = (regions.height as u32, regions.width as u32);
    let instances: Vec<InstanceRow> = regions
        .regions
        .into_iter()
        .map(|region| InstanceRow {
            dataset: dataset.clone(),
            sequence_id: sequence.id.clone(),
            frame_index: frame.index as u32,
            frame_name: frame.name.clone(),
            instance_id: region.class as u32 + 1,
            mask: CocoRle::from_pixels(&region.pixels, h, w),
            bbox_xywh: region.bbox_xywh,
            area_px: region.pixels.len() as u32,
            origin: InstanceOrigin::Prompt,
            component_id: region.class as u32,
            hdbscan_label: None,
            mean_flow_px: f32::NAN,
        })
        .collect();
    let g = frame.geometry;
    let id = FrameId {
        dataset,
        sequence_id: sequence.id.clone(),
        frame_index: frame.index as u32,
        frame_name: frame.name.clone(),
        source_path: sequence.source_path(frame.index),
    };
    let row = FrameRow {
        fg_fraction: Some(regions.foreground_px as f32 / (regions.height * regions.width).max(1) as f32),
        num_instances: instances.len() as u32,
        ..frame_row(id, &g)
    };
    (row, instances)
}

/// What one unit produced.
#[derive(Default)]
struct UnitOutput {
    frames: Vec<FrameRow>,
    instances: Vec<InstanceRow>,
    failures: Vec<FrameFailure>,
}

/// What every unit of a segment run shares.
struct Segmenter<'a> {
    model: &'a Talk2Dino,
    classes: &'a Tensor,
    options: SegmentOptions,
    batch: usize,
    stop: &'a StopHandle,
}

impl Segmenter<'_> {
    /// Segments the pending frames and empties the batch.
    fn flush(&self, sequence: &Sequence, pending: &mut Vec<Frame>, out: &mut UnitOutput) -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        if self.stop.requested() {
            bail!(Stopped);
        }
        let frames = pending.iter().map(frame_tensor).collect::<Result<Vec<_>, _>>()?;
        let regions = segment_frames(&self.model.vit, &frames, self.classes, &self.options)?;
        for (frame, regions) in pending.drain(..).zip(regions) {
            let (row, instances) = frame_rows(sequence, &frame, regions);
            out.frames.push(row);
            out.instances.extend(instances);
        }
        Ok(())
    }

    /// Every frame of a sequence, `batch` frames per forward; undecodable frames are frame failures.
    fn unit(&self, sequence: &Sequence) -> Result<UnitOutput> {
        let mut out = UnitOutput::default();
        let mut pending: Vec<Frame> = Vec::new();
        for (index, item) in sequence.frames()? {
            match item {
                Ok(frame) => pending.push(frame),
                Err(e) => out.failures.push(FrameFailure {
                    frame_index: index,
                    path: sequence.source_path(index),
                    reason: e.to_string(),
                }),
            }
            if pending.len() >= self.batch {
                self.flush(sequence, &mut pending, &mut out)?;
            }
        }
        if self.stop.requested() {
            bail!(Stopped);
        }
        self.flush(sequence, &mut pending, &mut out)?;
        Ok(out)
    }

    /// One unit: its frames segmented, then its two tables.
    fn write_unit(
        &self,
        sequence: &Sequence,
        files: [PathBuf; 2],
        params: &SegmentParams,
        metadata: &[(String, String)],
    ) -> Result<UnitDone<LabelCounts>> {
        let output = self.unit(sequence)?;
        let [frames_path, instances_path] = files;
        let prompt_of: Vec<&str> = output
            .instances
            .iter()
            .map(|i| params.prompts.get(i.component_id as usize).map_or("", String::as_str))
            .collect();
        write_parquet(&frames_path, &frames_batch(&output.frames)?, metadata)?;
        write_parquet(
            &instances_path,
            &prompted_instances_batch(&output.instances, &prompt_of)?,
            metadata,
        )?;
        Ok(UnitDone {
            counts: LabelCounts {
                frames_decoded: output.frames.len(),
                frame_rows: output.frames.len(),
                quasi_static_frames: 0,
                labelled_frames: output.frames.len(),
                instances: output.instances.len(),
            },
            files: vec![frames_path, instances_path],
            failures: output.failures,
        })
    }
}

/// The key/value metadata of every table of the run.
fn file_metadata(params: &SegmentParams, hash: &str) -> Result<Vec<(String, String)>> {
    let weights = &params.weights;
    Ok(vec![
        ("mrdino.schema_version".to_string(), SCHEMA_VERSION.to_string()),
        ("mrdino.code_version".to_string(), CODE_VERSION.to_string()),
        ("mrdino.params_hash".to_string(), hash.to_string()),
        ("mrdino.params".to_string(), serde_json::to_string(params)?),
        ("mrdino.prompts".to_string(), serde_json::to_string(&params.prompts)?),
        (
            "mrdino.templates".to_string(),
            serde_json::to_string(&params.templates)?,
        ),
        ("mrdino.backbone_sha256".to_string(), weights.backbone_sha256.clone()),
        ("mrdino.text_sha256".to_string(), weights.text_sha256.clone()),
        ("mrdino.psi_sha256".to_string(), weights.psi_sha256.clone()),
    ])
}

/// `mrdino segment`.
pub fn run(args: &SegmentArgs, stop: &StopHandle) -> Result<ExitCode> {
    crate::engine::paths::check_out_dir(
        &args.out,
        &[
            ("--root", Some(&args.input.root)),
            ("--backbone-weights", Some(&args.model.backbone_weights)),
            ("--text-weights", Some(&args.model.text_weights)),
            ("--psi-weights", Some(&args.model.psi_weights)),
        ],
    )?;
    let started = Instant::now();
    let request = SegmentRequest::resolve(args)?;
    let shard = args.job.shard()?;
    let device = args.device.device()?;
    let root = &args.input.root;
    let sequences = list_sequences(&SourceOptions {
        kind: request.dataset,
        root: root.clone(),
        cameras: Some(request.cameras.clone()),
        processing: Some(request.processing),
    })
    .with_context(|| format!("cannot list dataset `{}` at {}", request.dataset.name(), root.display()))?;
    let model = Talk2Dino::load(&args.model.files(), device)?;
    let classes = model.class_embeddings(&request.prompts)?;
    let params = SegmentParams::new(&request, &model)?;
    let params = continue_earlier_partition(
        &args.out,
        LABELS_DATA_DIRS,
        params,
        &model.identities(),
        SegmentParams::hash,
    )?;
    let hash = params.hash();
    let layout = Layout::new(&args.out, &hash);
    let ledger = layout.ledger();
    let plan = build_plan(ledger.kind(), &hash, request.dataset.name(), &sequences);
    let job = OpenJob::open(
        ledger,
        &[layout.frames_dir(), layout.instances_dir()],
        &params,
        plan,
        shard,
    )?;
    let metadata = file_metadata(&params, &hash)?;
    let stop = stop.with_budget(args.job.run.time_budget);
    let segmenter = Segmenter {
        model: &model,
        classes: &classes,
        options: params.options(),
        batch: args.batch,
        stop: &stop,
    };
    let units = job.units(&sequences);
    let quiet = args.job.run.quiet;
    let bar = progress::units(units.len() as u64, "sequences", quiet);
    let describe = |c: &LabelCounts| format!("{} frames, {} prompt regions", c.frame_rows, c.instances);
    let driver = Driver {
        ledger: &job.ledger,
        stop: &stop,
        bar: &bar,
        quiet,
        describe: Some(&describe),
        on_skip: None,
    };
    let run = driver.run_each(units, |sequence: &Sequence, planned: &PlannedUnit| {
        segmenter.write_unit(sequence, layout.unit_outputs(&planned.id), &params, &metadata)
    });
    let totals = SegmentTotals {
        units: run.tally,
        frames: run.done_counts().map(|c| c.frame_rows).sum(),
        quasi_static_frames: 0,
        labelled_frames: run.done_counts().map(|c| c.labelled_frames).sum(),
        instances: run.done_counts().map(|c| c.instances).sum(),
        frame_failures: run.frame_failures,
        seconds: started.elapsed().as_secs_f64(),
    };
    let exit = job.finish(run, &totals, args.job.max_failures)?;
    print_summary(&totals, &layout.instances_dir());
    Ok(exit)
}

fn print_summary(totals: &SegmentTotals, dir: &Path) {
    eprintln!(
        "segment: {} units done ({} frames, {} prompt regions), {} already done, {} failed, {} interrupted, {} frame \
         failures in {:.1} s → {}",
        totals.units.done,
        totals.frames,
        totals.instances,
        totals.units.skipped,
        totals.units.failed,
        totals.units.interrupted,
        totals.frame_failures,
        totals.seconds,
        dir.display()
    );
}
