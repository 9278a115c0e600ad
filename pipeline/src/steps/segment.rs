//! `mrdino segment`: Talk2DINO's text-prompted masks of every frame of a dataset, as a labels-shaped run.
//!
//! Per frame (decoded with the dataset's reference processing, or `--resize`, so the masks share the grid of
//! `mrdino labels`): Talk2DINO's preprocessing (square 448×448 resize), DINOv2-B/14-reg patch tokens, the
//! cosine of every patch to every prompt's class embedding (7 templates averaged in CLIP space, ψ,
//! L2-normalised), sigmoid, optional background cleaning (`--background-clean`, λ = 0.2, from the last block's
//! CLS attention), bilinear upsampling with `align_corners=True` to the frame's grid, a constant background
//! channel `--threshold` in front, argmax ([`mrdino_model::talk2dino`]).
//!
//! Output: the `frames` and `instances` tables of a labels run (`OUT/{frames,instances}/params=<hash>/`, same
//! bookkeeping, kind `labels`), so `report`, `eval`, `name`, `status` and `finalize` read it as they read
//! labels. An instance is the region one prompt wins in one frame: `instance_id` = prompt index + 1 (stable
//! across frames), `origin` = `prompt`, `component_id` = prompt index, `hdbscan_label` null, `mean_flow_px`
//! NaN (no flow), and an extra `prompt` column. Frames rows: `labelled` true, `quasi_static` false, no corner
//! flow, `fg_fraction` = share of non-background pixels. A frame that cannot be decoded is recorded in the
//! unit's marker and manifest as a frame failure. Units, shards, resume and stops (exit code 4) as `labels`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mrdino_datasets::{list_sequences, DatasetKind, Frame, Processing, Sequence, SourceOptions};
use mrdino_model::talk2dino::{label_map, preprocess, soft_masks, INPUT_PX, LAMBDA_BG, TEMPLATES};
use mrdino_outputs::bookkeeping::{FrameFailure, Shard};
use mrdino_outputs::layout::{Layout, LABELS_DATA_DIRS};
use mrdino_outputs::names::prompted_instances_batch;
use mrdino_outputs::tables::{frames_batch, write_parquet, InstanceOrigin, SCHEMA_VERSION};
use mrdino_outputs::{CocoRle, FrameRow, InstanceRow};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::Tensor;

use crate::engine::job::{build_plan, OpenJob, CODE_VERSION};
use crate::engine::progress;
use crate::engine::stop::{StopHandle, Stopped};
use crate::engine::units::{Driver, UnitDone};
use crate::steps::labels::Totals;
use crate::steps::name::{frame_tensor, parse_classes, Talk2Dino, Talk2DinoArgs, WeightsIdentity};
use mrdino_outputs::bookkeeping::PlannedUnit;
use mrdino_outputs::layout::LabelCounts;

/// Talk2DINO demo's background threshold on the sigmoid masks (values lie in [0.27, 0.73]).
pub const DEFAULT_THRESHOLD: f64 = 0.55;

/// Flags of `mrdino segment`.
#[derive(Debug, clap::Args)]
pub struct SegmentArgs {
    /// Text prompt (repeatable; a value may also be "car,person" or a file with one prompt per line).
    #[arg(long, required = true)]
    pub prompt: Vec<String>,
    /// Dataset layout: frames, video, kitti, tri-pd, movi-e.
    #[arg(long, value_parser = crate::cli::values::dataset)]
    pub dataset: DatasetKind,
    /// Dataset root.
    #[arg(long)]
    pub root: PathBuf,
    /// Output directory (frames and instances tables, as a labels run).
    #[arg(long)]
    pub out: PathBuf,
    /// Cameras to read (KITTI: image_02,image_03; TRI-PD: camera_01,camera_05,camera_06).
    #[arg(long, value_delimiter = ',')]
    pub cameras: Option<Vec<String>>,
    /// Resize every frame to WxH first (default: the dataset's reference geometry, as `labels`).
    #[arg(long, value_parser = crate::cli::values::size)]
    pub resize: Option<(usize, usize)>,
    #[command(flatten)]
    pub model: Talk2DinoArgs,
    /// Talk2DINO's background cleaning with the last block's CLS attention (λ = 0.2).
    #[arg(long)]
    pub background_clean: bool,
    /// Background threshold on the sigmoid masks: a pixel whose best prompt scores below it is background.
    #[arg(long, default_value_t = DEFAULT_THRESHOLD)]
    pub threshold: f64,
    /// Frames per backbone forward.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Process only shard I of N (stable hash of the sequence id); defaults to Slurm's array variables.
    #[arg(long, value_parser = crate::cli::values::shard)]
    pub shard: Option<Shard>,
    /// Stop cleanly (exit code 4) before this many seconds have passed; rerun to resume.
    #[arg(long, value_parser = crate::cli::values::time_budget, allow_hyphen_values = true)]
    pub time_budget: Option<Duration>,
    /// No per-unit messages.
    #[arg(long)]
    pub quiet: bool,
}

/// Flow of a segment run: none (recorded so that readers of a labels run's parameters see it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoFlow {
    pub backend: String,
}

/// The resolved parameters of a segment run; their hash names the partition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SegmentParams {
    pub job: String,
    pub dataset: DatasetKind,
    pub cameras: Vec<String>,
    pub processing: Processing,
    pub prompts: Vec<String>,
    pub templates: Vec<String>,
    pub weights: WeightsIdentity,
    pub input_px: i64,
    pub background_clean: bool,
    pub lambda: f64,
    pub threshold: f64,
    pub flow: NoFlow,
}

impl SegmentParams {
    pub fn hash(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        Sha256::digest(json.as_bytes())
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// A frame's rows from its label map (H·W class indices, 0 = background).
fn frame_rows(sequence: &Sequence, frame: &Frame, labels: &[i64], prompts: &[String]) -> (FrameRow, Vec<InstanceRow>) {
    let (h, w) = (frame.image.height, frame.image.width);
    let mut pixels: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
    for (p, &label) in labels.iter().enumerate() {
        if label > 0 {
            pixels.entry(label as usize).or_default().push(p as u32);
        }
    }
    let foreground: usize = pixels.values().map(Vec::len).sum();
    let dataset = sequence.dataset.name().to_string();
    let instances: Vec<InstanceRow> = pixels
        .into_iter()
        .filter(|(label, _)| *label <= prompts.len())
        .map(|(label, px)| {
            let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
            for &p in &px {
                let (y, x) = (p as usize / w, p as usize % w);
                (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            }
            InstanceRow {
                dataset: dataset.clone(),
                sequence_id: sequence.id.clone(),
                frame_index: frame.index as u32,
                frame_name: frame.name.clone(),
                instance_id: label as u32,
                mask: CocoRle::from_pixels(&px, h as u32, w as u32),
                bbox_xywh: [x0 as f32, y0 as f32, (x1 - x0 + 1) as f32, (y1 - y0 + 1) as f32],
                area_px: px.len() as u32,
                origin: InstanceOrigin::Prompt,
                component_id: label as u32 - 1,
                hdbscan_label: None,
                mean_flow_px: f32::NAN,
            }
        })
        .collect();
    let g = frame.geometry;
    let row = FrameRow {
        dataset,
        sequence_id: sequence.id.clone(),
        frame_index: frame.index as u32,
        frame_name: frame.name.clone(),
        source_path: sequence.source_path(frame.index),
        height: g.height as u32,
        width: g.width as u32,
        orig_height: g.orig_height as u32,
        orig_width: g.orig_width as u32,
        resized_height: g.resized_height as u32,
        resized_width: g.resized_width as u32,
        crop_top: g.crop_top as u32,
        crop_left: g.crop_left as u32,
        quasi_static: false,
        corner_flow_px: None,
        fg_fraction: Some(foreground as f32 / (h * w).max(1) as f32),
        labelled: true,
        excluded_reason: None,
        segment: None,
        num_instances: instances.len() as u32,
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

struct Segmenter<'a> {
    model: &'a Talk2Dino,
    classes: &'a Tensor,
    params: &'a SegmentParams,
}

impl Segmenter<'_> {
    fn flush(&self, sequence: &Sequence, pending: &mut Vec<Frame>, out: &mut UnitOutput) -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let images: Vec<Tensor> = pending.iter().map(|f| preprocess(&frame_tensor(f), INPUT_PX)).collect();
        let soft = soft_masks(
            &self.model.vit,
            &Tensor::cat(&images, 0),
            self.classes,
            self.params.background_clean,
        )?;
        for (b, frame) in pending.drain(..).enumerate() {
            let size = (frame.image.height as i64, frame.image.width as i64);
            let labels = label_map(&soft.narrow(0, b as i64, 1), size, self.params.threshold);
            let labels = Vec::<i64>::try_from(&labels.to_device(tch::Device::Cpu).contiguous().view([-1]))?;
            let (row, instances) = frame_rows(sequence, &frame, &labels, &self.params.prompts);
            out.frames.push(row);
            out.instances.extend(instances);
        }
        Ok(())
    }

    fn unit(&self, sequence: &Sequence, batch: usize, stop: &dyn Fn() -> bool) -> Result<UnitOutput> {
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
            if pending.len() >= batch {
                if stop() {
                    bail!(Stopped);
                }
                self.flush(sequence, &mut pending, &mut out)?;
            }
        }
        if stop() {
            bail!(Stopped);
        }
        self.flush(sequence, &mut pending, &mut out)?;
        Ok(out)
    }
}

/// `mrdino segment`.
pub fn run(args: &SegmentArgs, stop: &StopHandle) -> Result<ExitCode> {
    let started = Instant::now();
    let shard = match args.shard {
        Some(s) => Some(s),
        None => crate::cli::groups::shard_from_env()?,
    };
    if args.batch == 0 {
        bail!("--batch must be positive");
    }
    if !args.threshold.is_finite() {
        bail!("--threshold must be a finite number");
    }
    let prompts = parse_classes(&args.prompt)?;
    let cameras = args.cameras.clone().unwrap_or_else(|| args.dataset.default_cameras());
    let processing = args
        .resize
        .map(|(width, height)| Processing::Resize { width, height })
        .unwrap_or_else(|| args.dataset.reference_processing());
    let sequences = list_sequences(&SourceOptions {
        kind: args.dataset,
        root: args.root.clone(),
        cameras: Some(cameras.clone()),
        processing: Some(processing),
    })
    .with_context(|| {
        format!(
            "cannot list dataset `{}` at {}",
            args.dataset.name(),
            args.root.display()
        )
    })?;
    let model = Talk2Dino::load(&args.model)?;
    let classes = model.class_embeddings(&prompts)?;
    let params = SegmentParams {
        job: "segment".into(),
        dataset: args.dataset,
        cameras,
        processing,
        prompts: prompts.clone(),
        templates: TEMPLATES.iter().map(|s| s.to_string()).collect(),
        weights: model.weights(&args.model.backbone),
        input_px: INPUT_PX,
        background_clean: args.background_clean,
        lambda: LAMBDA_BG,
        threshold: args.threshold,
        flow: NoFlow { backend: "none".into() },
    };
    let params = crate::settings::identity::continue_earlier_partition(
        &args.out,
        LABELS_DATA_DIRS,
        params,
        &model.identities(),
        SegmentParams::hash,
    )?;
    let hash = params.hash();
    let layout = Layout::new(&args.out, &hash);
    let ledger = layout.ledger();
    let plan = build_plan(ledger.kind(), &hash, args.dataset.name(), &sequences);
    let job = OpenJob::open(ledger, &[layout.frames_dir(), layout.instances_dir()], &params, plan, shard)?;
    let metadata = vec![
        ("mrdino.schema_version".to_string(), SCHEMA_VERSION.to_string()),
        ("mrdino.code_version".to_string(), CODE_VERSION.to_string()),
        ("mrdino.params_hash".to_string(), hash.clone()),
        ("mrdino.params".to_string(), serde_json::to_string(&params)?),
        ("mrdino.prompts".to_string(), serde_json::to_string(&params.prompts)?),
        (
            "mrdino.templates".to_string(),
            serde_json::to_string(&params.templates)?,
        ),
        (
            "mrdino.backbone_sha256".to_string(),
            params.weights.backbone_sha256.clone(),
        ),
        ("mrdino.text_sha256".to_string(), params.weights.text_sha256.clone()),
        ("mrdino.psi_sha256".to_string(), params.weights.psi_sha256.clone()),
    ];
    let segmenter = Segmenter {
        model: &model,
        classes: &classes,
        params: &params,
    };
    let stop = stop.with_budget(args.time_budget);
    let units = job.units(&sequences);
    let bar = progress::units(units.len() as u64, "sequences", args.quiet);
    let describe = |c: &LabelCounts| format!("{} frames, {} prompt regions", c.frame_rows, c.instances);
    let driver = Driver {
        ledger: &job.ledger,
        stop: &stop,
        bar: &bar,
        quiet: args.quiet,
        describe: Some(&describe),
        on_skip: None,
    };
    let stop_requested = || stop.requested();
    let run = driver.run_each(units, |sequence: &Sequence, planned: &PlannedUnit| {
            let output = segmenter.unit(sequence, args.batch, &stop_requested)?;
            let [frames_path, instances_path] = layout.unit_outputs(&planned.id);
            let prompt_of: Vec<&str> = output
                .instances
                .iter()
                .map(|i| prompts[i.component_id as usize].as_str())
                .collect();
            write_parquet(&frames_path, &frames_batch(&output.frames)?, &metadata)?;
            write_parquet(
                &instances_path,
                &prompted_instances_batch(&output.instances, &prompt_of)?,
                &metadata,
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
    });
    let totals = Totals {
        units: run.tally,
        frames: run.done_counts().map(|c| c.frame_rows).sum(),
        quasi_static_frames: 0,
        labelled_frames: run.done_counts().map(|c| c.labelled_frames).sum(),
        instances: run.done_counts().map(|c| c.instances).sum(),
        frame_failures: run.frame_failures,
        seconds: started.elapsed().as_secs_f64(),
    };
    let exit = job.finish(run, &totals, 0)?;
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
        layout.instances_dir().display()
    );
    Ok(exit)
}
