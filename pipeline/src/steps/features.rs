//! `mrdino features`: frozen-backbone features of a dataset's views, as a unit job of the engine.
//!
//! A unit is a sequence, as for `labels`: its views go through the backbone in batches and the unit's shard
//! (`CACHE/shards/<unit>.safetensors`, f16 or bf16, see `mrdino_outputs::feature_cache`) is written, then its
//! done marker; a rerun skips done units, `--shard I/N` (or Slurm's array variables) picks a stable subset, and
//! SIGINT/SIGTERM/`--time-budget` stop between views with exit code 4 (the unfinished unit is redone).
//!
//! Views:
//! - `resize` (default): every frame resized to `--size WxH` (`mrdino_model::encode::resized_view`), one view per
//!   frame. Default size per dataset: MOVi-E 266×266 (DINOSAUR's MOVi-E input), otherwise 224×224; for a backbone
//!   whose patch does not tile the preset's window, the same token grid at its patch (patch 16: 304 and 256 px).
//! - `windows` (with `--labels RUN`): the refinement's training views of a pseudo-label run
//!   (`mrdino_model::refine_views`): each labelled frame at the label grid cut into its windows, at the backbone's
//!   patch (`Preset::window_layout`; patch 16: KITTI 432 px). The view key records the window's offset.
//!
//! The features are the patch tokens of `--layer` (default the last block) after the final norm, CLS and
//! registers dropped; the shard metadata names the backbone, its weights' identity, the layer, the view size, the
//! grid, the normalisation and the dtype, so training refuses a cache made with another backbone.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use mrdino_datasets::{list_sequences, Processing, Sequence, SourceOptions};
use mrdino_model::backbone::{BackboneRequest, LoadedBackbone};
use mrdino_model::encode::{resized_view, FeatureEncoder};
use mrdino_model::refine_views::{frame_views, Ids, LabelIndex};
use mrdino_model::tensors::from_tch;
use mrdino_outputs::bookkeeping::{partitions, Ledger};
use mrdino_outputs::feature_cache::{FeatureCacheWriter, ShardMeta, ViewKey, FEATURES_TENSOR};
use mrdino_outputs::runs::read_run;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::cli::features::{FeaturesArgs, ViewsKind};
use crate::engine::paths::{check_out_dir, job_inputs};
use crate::engine::job::{build_plan, OpenJob, UnitTally};
use crate::engine::progress;
use crate::engine::status::JobKind;
use crate::engine::stop::{StopHandle, Stopped};
use crate::engine::units::{Driver, UnitDone};
use crate::settings::features::FeaturesParams;
use crate::settings::identity::continue_earlier_partition;
use crate::settings::presets::Preset;

/// Job kind of the feature cache in the bookkeeping.
pub const FEATURES_KIND: &str = "features";
/// Data directories of a feature cache (for the choice of partition).
pub const FEATURES_DATA_DIRS: &[&str] = &["shards"];

/// The feature-cache job for `status` and `finalize`.
pub const JOB: JobKind = JobKind {
    kind: FEATURES_KIND,
    label: "features ",
    data_dirs: FEATURES_DATA_DIRS,
    totals: &[("views", "views", "views")],
    frame_failures: false,
};

/// What a unit's marker records.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FeatureCounts {
    pub frames: usize,
    pub views: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FeatureTotals {
    #[serde(flatten)]
    pub units: UnitTally,
    pub views: usize,
    pub seconds: f64,
}

/// What every unit of a cache shares.
struct Cache<'a> {
    params: &'a FeaturesParams,
    backbone: &'a LoadedBackbone,
    labels: Option<&'a LabelIndex>,
    layer: Option<usize>,
    batch: usize,
    writer: FeatureCacheWriter,
    stop: &'a StopHandle,
}

impl Cache<'_> {
    fn kind(&self) -> Kind {
        if self.params.dtype == "bf16" {
            Kind::BFloat16
        } else {
            Kind::Half
        }
    }

    /// The views of one sequence, streamed frame by frame into `sink`; returns the frames read.
    fn for_each_view(
        &self,
        sequence: &Sequence,
        mut sink: impl FnMut(ViewKey, Tensor) -> Result<()>,
    ) -> Result<usize> {
        let key = |frame_index: usize, window| ViewKey {
            sequence_id: sequence.id.clone(),
            frame_index: frame_index as u64,
            window,
        };
        let mut frames = 0;
        let Some(labels) = self.labels.filter(|_| self.params.views == ViewsKind::Windows) else {
            for (_, frame) in sequence.frames()? {
                let frame = frame?;
                frames += 1;
                let image = &frame.image;
                sink(
                    key(frame.index, None),
                    resized_view(&image.data, image.height, image.width, self.params.view_size)?,
                )?;
            }
            return Ok(frames);
        };
        let labelled: BTreeMap<usize, ()> = labels
            .tables()
            .frames
            .iter()
            .filter(|f| f.sequence_id == sequence.id && f.labelled && f.num_instances > 0)
            .map(|f| (f.frame_index as usize, ()))
            .collect();
        if labelled.is_empty() {
            return Ok(0);
        }
        for (index, frame) in sequence.frames()? {
            if !labelled.contains_key(&index) {
                continue;
            }
            let frame = frame?;
            frames += 1;
            let (_, ids) = labels.id_map(&sequence.id, index as u64)?;
            check_grid(sequence, &frame, &ids)?;
            for v in frame_views(labels.layout, Some(&frame.image.data), &ids)? {
                sink(key(index, Some(v.window)), v.image.context("a view without pixels")?)?;
            }
        }
        Ok(frames)
    }

    /// One unit: its views through the backbone, then its shard.
    fn unit(&self, sequence: &Sequence) -> Result<UnitDone<FeatureCounts>> {
        let mut encoder = FeatureEncoder::new(self.backbone, self.layer, self.kind(), self.batch);
        let frames = self.for_each_view(sequence, |key, image| {
            if self.stop.requested() {
                bail!(Stopped);
            }
            Ok(encoder.push(key, image)?)
        })?;
        let patch = self.backbone.backbone().patch_size();
        let (grid_h, grid_w) = (self.params.view_size.0 / patch, self.params.view_size.1 / patch);
        let (views, features) = encoder.finish(grid_h * grid_w)?;
        let p = self.params;
        let meta = ShardMeta {
            unit: sequence.id.clone(),
            backbone: p.backbone.clone(),
            backbone_sha256: p.backbone_sha256.clone(),
            layer: p.layer,
            image_height: p.view_size.0,
            image_width: p.view_size.1,
            grid_height: grid_h,
            grid_width: grid_w,
            normalisation: p.normalisation.clone(),
            dtype: p.dtype.clone(),
            views,
        };
        let n = meta.views.len();
        let shard_file = self.writer.write_shard(&meta, &from_tch(FEATURES_TENSOR, &features)?)?;
        Ok(UnitDone {
            counts: FeatureCounts { frames, views: n },
            files: vec![shard_file],
            failures: Vec::new(),
        })
    }
}

/// The labels' grid must be the grid the frame reads at.
fn check_grid(sequence: &Sequence, frame: &mrdino_datasets::Frame, ids: &Ids) -> Result<()> {
    if (ids.height, ids.width) != (frame.image.height, frame.image.width) {
        bail!(
            "{} frame {}: the labels' grid is {}x{} but the frame reads as {}x{} (other processing?)",
            sequence.id,
            frame.name,
            ids.width,
            ids.height,
            frame.image.width,
            frame.image.height
        );
    }
    Ok(())
}

/// Refuses a cache directory holding features of other parameters.
fn check_cache(args: &FeaturesArgs, hash: &str) -> Result<()> {
    let others: Vec<String> = partitions(&args.out, FEATURES_DATA_DIRS)
        .into_iter()
        .filter(|h| h != hash)
        .collect();
    if !others.is_empty() {
        bail!(
            "{} holds features made with other parameters (params={}); a cache holds one backbone, layer and view \
             geometry: choose another --out",
            args.out.display(),
            others.join(", params=")
        );
    }
    Ok(())
}

/// `mrdino features`.
pub fn run(args: &FeaturesArgs, stop: &StopHandle) -> Result<ExitCode> {
    let labels = args.labels.as_deref().map(|run| job_inputs(run, mrdino_outputs::layout::LABELS_DATA_DIRS)).unwrap_or_default();
    let mut inputs = vec![
        ("--root", Some(args.input.root.as_path())),
        ("--backbone-weights", args.backbone.backbone_weights.as_deref()),
    ];
    inputs.extend(labels.iter().map(|p| ("--labels", Some(p.as_path()))));
    check_out_dir(&args.out, &inputs)?;
    let started = Instant::now();
    let device = args.device.device()?;
    let request = BackboneRequest {
        name: args.backbone.backbone.as_deref(),
        weights: args.backbone.backbone_weights.as_deref(),
        model: None,
    };
    let backbone = LoadedBackbone::load(request, device)?;
    let labels = match &args.labels {
        Some(path) => Some(read_run(path, None)?),
        None => None,
    };
    let params = FeaturesParams::resolve(args, &backbone, labels.as_ref().map(|t| t.params_hash().to_string()))?;
    let identity = [backbone.backbone().identity()];
    let params = continue_earlier_partition(&args.out, FEATURES_DATA_DIRS, params, &identity, FeaturesParams::hash)?;
    let dataset = args.input.dataset;
    let processing = match params.views {
        // The windows are cut from the frames as the labels saw them.
        ViewsKind::Windows => dataset.reference_processing(),
        ViewsKind::Resize => Processing::Native,
    };
    let sequences = list_sequences(&SourceOptions {
        kind: dataset,
        root: args.input.root.clone(),
        cameras: Some(params.cameras.clone()),
        processing: Some(processing),
    })
    .with_context(|| format!("cannot list dataset `{}` at {}", dataset.name(), args.input.root.display()))?;
    let hash = params.hash();
    check_cache(args, &hash)?;
    let plan = build_plan(FEATURES_KIND, &hash, dataset.name(), &sequences);
    let ledger = Ledger::new(&args.out, FEATURES_KIND, &hash);
    let job = OpenJob::open(ledger, &[args.out.join("shards")], &params, plan, args.job.shard()?)?;
    let layout = Preset::for_dataset(dataset).window_layout(backbone.backbone().patch_size());
    let labels = labels.map(|t| LabelIndex::new(t, layout));
    let stop = stop.with_budget(args.job.run.time_budget);
    let cache = Cache {
        params: &params,
        backbone: &backbone,
        labels: labels.as_ref(),
        layer: args.layer,
        batch: args.batch,
        writer: FeatureCacheWriter::new(&args.out),
        stop: &stop,
    };
    let units = job.units(&sequences);
    let bar = progress::units(units.len() as u64, "sequences", args.job.run.quiet);
    let describe = |c: &FeatureCounts| format!("{} views", c.views);
    let driver = Driver {
        ledger: &job.ledger,
        stop: &stop,
        bar: &bar,
        quiet: args.job.run.quiet,
        describe: Some(&describe),
        on_skip: None,
    };
    let run = driver.run_each(units, |sequence, _| cache.unit(sequence));
    let totals = FeatureTotals {
        units: run.tally,
        views: run.done_counts().map(|c| c.views).sum(),
        seconds: started.elapsed().as_secs_f64(),
    };
    eprintln!(
        "features: {} units done ({} views), {} already done, {} failed, {} interrupted in {:.1} s → {}",
        totals.units.done,
        totals.views,
        totals.units.skipped,
        totals.units.failed,
        totals.units.interrupted,
        totals.seconds,
        args.out.display()
    );
    job.finish(run, &totals, args.job.max_failures)
}
