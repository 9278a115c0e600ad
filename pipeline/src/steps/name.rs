//! `mrdino name`: open-vocabulary names for the instances of a labels run (or of a predictions run, which has
//! the same layout), with Talk2DINO (`mrdino_model::talk2dino`).
//!
//! For every frame with instances, the source frame is re-read at its original size (dataset and root from the
//! run's plan, cameras from its parameter file; `--root` / `--dataset` override them) and goes through
//! Talk2DINO's preprocessing (square resize to 448 px, or to the input size of the release a ψ file records) and
//! the backbone (patch tokens after the final norm). Each instance's mask is placed in the original frame through
//! the provenance columns of `frames` and downsampled to the patch grid by exact area
//! (`talk2dino::frame_instance_scores`); its embedding is the coverage-weighted mean of the L2-normalised patch
//! tokens, its score for a class the cosine to the class embedding (the 7 templates averaged in CLIP space, ψ,
//! L2-normalised). The best class is the `name`, the second the `runner_up`.
//!
//! Units are the done sequences of the source run, as for `labels`: a unit's `names` file, then its done
//! marker; a rerun skips done units (a unit is redone when its source tables changed: the input fingerprint is
//! the SHA-256 of the unit's two source files), `--shard I/N` (or Slurm's array variables) picks a stable
//! subset, and SIGINT/SIGTERM/`--time-budget` stop between frames with exit code 4. Several class lists may
//! share one `--out`: each parameter set (classes, weights, source) is its own `params=<hash>` partition.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use mrdino_datasets::{Frame, Processing, Sequence};
use mrdino_model::talk2dino::{frame_instance_scores, frame_tensor, top_two, Talk2Dino};
use mrdino_outputs::bookkeeping::{AnyPayload, Ledger, Plan, PlannedUnit};
use mrdino_outputs::names::{
    names_batch, NameRow, NamesLayout, CLASSES_KEY, NAMES_DATA_DIRS, NAMES_KIND, TEMPLATES_KEY,
};
use mrdino_outputs::runs::RunTables;
use mrdino_outputs::tables::{write_parquet, SCHEMA_VERSION};
use mrdino_outputs::{FrameRow, InstanceRow};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::Tensor;

use crate::cli::name::NameArgs;
use crate::engine::paths::{check_out_dir, job_inputs};
use crate::engine::job::{OpenJob, UnitTally, CODE_VERSION};
use crate::engine::progress;
use crate::engine::runs::{read_label_tables, source_sequences};
use crate::engine::status::JobKind;
use crate::engine::stop::{StopHandle, Stopped};
use crate::engine::units::{Driver, UnitDone};
use crate::settings::identity::continue_earlier_partition;
use crate::settings::name::{NameParams, NameRequest};

/// What a unit's marker records.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NameCounts {
    pub frames: usize,
    pub instances: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NameTotals {
    #[serde(flatten)]
    pub units: UnitTally,
    pub instances: usize,
    pub seconds: f64,
}

/// The names job for `status` and `finalize`.
pub const JOB: JobKind = JobKind {
    kind: NAMES_KIND,
    label: "names ",
    data_dirs: NAMES_DATA_DIRS,
    totals: &[("instances", "instances", "instances")],
    frame_failures: false,
};

/// The frames of one unit with their instances, in frame order.
struct UnitFrames<'a> {
    rows: Vec<&'a FrameRow>,
    instances: BTreeMap<u32, Vec<&'a InstanceRow>>,
}

fn unit_frames<'a>(tables: &'a RunTables, sequence_id: &str) -> UnitFrames<'a> {
    let mut instances: BTreeMap<u32, Vec<&InstanceRow>> = BTreeMap::new();
    for inst in tables.instances.iter().filter(|i| i.sequence_id == sequence_id) {
        instances.entry(inst.frame_index).or_default().push(inst);
    }
    for list in instances.values_mut() {
        list.sort_by_key(|i| i.instance_id);
    }
    let mut rows: Vec<&FrameRow> = tables
        .frames
        .iter()
        .filter(|f| f.sequence_id == sequence_id && instances.contains_key(&f.frame_index))
        .collect();
    rows.sort_by_key(|f| f.frame_index);
    UnitFrames { rows, instances }
}

/// SHA-256 (16 hex digits) of a unit's source tables: a changed source redoes the unit.
fn source_fingerprint(files: &[PathBuf]) -> Result<String> {
    let mut h = Sha256::new();
    for file in files {
        let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect())
}

/// The units of a names job: the done units of the source run, in its plan order, fingerprinted by their source
/// tables; and the source plan.
fn source_units(tables: &RunTables) -> Result<(Plan, Vec<PlannedUnit>)> {
    let ledger = Ledger::new(&tables.layout.root, tables.kind.name(), tables.params_hash());
    let plan = ledger.read_plan()?;
    let mut units = Vec::new();
    for unit in &plan.units {
        if ledger.is_done::<AnyPayload>(unit).is_none() {
            continue;
        }
        let files = tables.layout.unit_outputs(&unit.id);
        units.push(PlannedUnit::new(&unit.id, unit.frames, &source_fingerprint(&files)?));
    }
    Ok((plan, units))
}

fn missing(row: &FrameRow) -> String {
    format!("frame {} of {} could not be re-read", row.frame_name, row.sequence_id)
}

/// What every unit of a names job shares.
struct Namer<'a> {
    model: &'a Talk2Dino,
    classes: &'a [String],
    class_embeddings: &'a Tensor,
    batch: usize,
    stop: &'a StopHandle,
}

impl Namer<'_> {
    /// Names of one unit; rows sorted by (frame_index, instance_id). Frames are decoded a batch at a time (image
    /// sequences read only the files of the batch; videos are decoded once, in order), so memory stays bounded.
    fn unit(&self, sequence: &Sequence, frames: &UnitFrames<'_>) -> Result<Vec<NameRow>> {
        let mut out = Vec::new();
        if sequence.image_files().is_some() {
            self.name_image_files(sequence, frames, &mut out)?;
        } else {
            self.name_video(sequence, frames, &mut out)?;
        }
        let named: BTreeSet<u32> = out.iter().map(|n| n.frame_index).collect();
        if let Some(row) = frames.rows.iter().find(|r| !named.contains(&r.frame_index)) {
            bail!("{} (the video ended early?)", missing(row));
        }
        out.sort_by_key(|r| (r.frame_index, r.instance_id));
        Ok(out)
    }

    /// An image sequence: the files of one batch at a time.
    fn name_image_files(&self, sequence: &Sequence, frames: &UnitFrames<'_>, out: &mut Vec<NameRow>) -> Result<()> {
        let mut pending: Vec<(&FrameRow, Frame)> = Vec::new();
        for chunk in frames.rows.chunks(self.batch) {
            let indices: BTreeSet<usize> = chunk.iter().map(|r| r.frame_index as usize).collect();
            let mut decoded = sequence.decode_frames(&indices)?;
            for &row in chunk {
                let frame = decoded
                    .remove(&(row.frame_index as usize))
                    .with_context(|| missing(row))?;
                pending.push((row, frame));
            }
            self.flush(&mut pending, frames, out)?;
        }
        Ok(())
    }

    /// A video: decoded once, in order, up to its last wanted frame.
    fn name_video(&self, sequence: &Sequence, frames: &UnitFrames<'_>, out: &mut Vec<NameRow>) -> Result<()> {
        let mut pending: Vec<(&FrameRow, Frame)> = Vec::new();
        let wanted: BTreeMap<usize, &FrameRow> = frames.rows.iter().map(|r| (r.frame_index as usize, *r)).collect();
        let last = wanted.keys().next_back().copied().unwrap_or(0);
        for (index, item) in sequence.frames()? {
            if let Some(&row) = wanted.get(&index) {
                pending.push((row, item.with_context(|| missing(row))?));
                if pending.len() >= self.batch {
                    self.flush(&mut pending, frames, out)?;
                }
            }
            if index >= last {
                break;
            }
        }
        self.flush(&mut pending, frames, out)
    }

    /// Names the instances of the pending frames (one backbone forward) and empties the batch.
    fn flush(
        &self,
        pending: &mut Vec<(&FrameRow, Frame)>,
        frames: &UnitFrames<'_>,
        out: &mut Vec<NameRow>,
    ) -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        if self.stop.requested() {
            bail!(Stopped);
        }
        let mut images = Vec::with_capacity(pending.len());
        for (row, frame) in pending.iter() {
            if (frame.image.height, frame.image.width) != (row.orig_height as usize, row.orig_width as usize) {
                bail!(
                    "frame {} of {} reads as {}x{} but the run saw it as {}x{}; the source changed",
                    row.frame_name,
                    row.sequence_id,
                    frame.image.width,
                    frame.image.height,
                    row.orig_width,
                    row.orig_height
                );
            }
            images.push(frame_tensor(frame)?);
        }
        let (patches, grid) = self.model.square_patch_tokens(&images)?;
        for ((row, _), patches) in pending.drain(..).zip(patches) {
            let instances = frames.instances.get(&row.frame_index).map_or(&[][..], Vec::as_slice);
            out.extend(self.frame_names(row, instances, &patches, grid)?);
        }
        Ok(())
    }

    /// Names of one frame's instances from its patch tokens (P, C).
    fn frame_names(
        &self,
        row: &FrameRow,
        instances: &[&InstanceRow],
        patches: &Tensor,
        grid: (i64, i64),
    ) -> Result<Vec<NameRow>> {
        let names = frame_instance_scores(row, instances, patches, grid, self.class_embeddings)?;
        let mut out = Vec::with_capacity(instances.len());
        for ((inst, scores), coverage) in instances.iter().zip(names.scores).zip(names.coverage_patches) {
            let Some(((best, score), second)) = top_two(&scores) else {
                bail!(
                    "{} frame {}: instance {} covers no patch area (empty mask?)",
                    row.sequence_id,
                    row.frame_name,
                    inst.instance_id
                );
            };
            out.push(NameRow {
                dataset: inst.dataset.clone(),
                sequence_id: inst.sequence_id.clone(),
                frame_index: inst.frame_index,
                frame_name: inst.frame_name.clone(),
                instance_id: inst.instance_id,
                name: self.classes[best].clone(),
                score,
                runner_up: second.map(|(i, _)| self.classes[i].clone()),
                runner_up_score: second.map(|(_, s)| s),
                scores,
                coverage_patches: coverage,
            });
        }
        Ok(out)
    }
}

/// The key/value metadata of every names file.
fn file_metadata(params: &NameParams, hash: &str, source: &Path) -> Result<Vec<(String, String)>> {
    let weights = &params.weights;
    Ok(vec![
        ("mrdino.schema_version".to_string(), SCHEMA_VERSION.to_string()),
        ("mrdino.code_version".to_string(), CODE_VERSION.to_string()),
        ("mrdino.params_hash".to_string(), hash.to_string()),
        ("mrdino.params".to_string(), serde_json::to_string(params)?),
        (CLASSES_KEY.to_string(), serde_json::to_string(&params.classes)?),
        (TEMPLATES_KEY.to_string(), serde_json::to_string(&params.templates)?),
        ("mrdino.backbone".to_string(), weights.backbone.clone()),
        ("mrdino.backbone_sha256".to_string(), weights.backbone_sha256.clone()),
        ("mrdino.text_sha256".to_string(), weights.text_sha256.clone()),
        ("mrdino.psi_sha256".to_string(), weights.psi_sha256.clone()),
        ("mrdino.source".to_string(), source.display().to_string()),
        (
            "mrdino.source_params_hash".to_string(),
            params.source_params_hash.clone(),
        ),
    ])
}

/// Says how many units of the source run are not done (they get no names).
fn note_incomplete(tables: &mrdino_outputs::runs::RunTables, source: &std::path::Path, quiet: bool) {
    if !tables.incomplete_units.is_empty() && !quiet {
        eprintln!(
            "note: {} units of {} are not done and get no names",
            tables.incomplete_units.len(),
            source.display()
        );
    }
}

/// Refuses an `--out` that is, holds or lies inside an input (the source run's tables, the frames, the weights).
fn check_paths(args: &NameArgs) -> Result<()> {
    let source = args.labels.as_deref().or(args.predictions.as_deref());
    let runs = source.map(|run| job_inputs(run, mrdino_outputs::layout::LABELS_DATA_DIRS)).unwrap_or_default();
    let mut inputs = vec![
        ("--root", args.root.as_deref()),
        ("--backbone-weights", Some(args.model.backbone_weights.as_path())),
        ("--text-weights", Some(args.model.text_weights.as_path())),
        ("--psi-weights", Some(args.model.psi_weights.as_path())),
    ];
    inputs.extend(runs.iter().map(|p| ("the source run", Some(p.as_path()))));
    check_out_dir(&args.out, &inputs)
}

/// `mrdino name`.
pub fn run(args: &NameArgs, stop: &StopHandle) -> Result<ExitCode> {
    check_paths(args)?;
    let started = Instant::now();
    let request = NameRequest::resolve(args)?;
    let shard = args.job.shard()?;
    let device = args.device.device()?;
    let tables = read_label_tables(&request.source, args.params.as_deref())?;
    let (source_plan, units) = source_units(&tables)?;
    let sequences = source_sequences(&tables, args.dataset, args.root.as_deref(), Some(Processing::Native))?;
    let model = Talk2Dino::load(&args.model.files(), device)?;
    let class_embeddings = model.class_embeddings(&request.classes)?;
    let params = NameParams::new(&request, tables.params_hash(), &model);
    let params = continue_earlier_partition(
        &args.out,
        NAMES_DATA_DIRS,
        params,
        &model.identities(),
        NameParams::hash,
    )?;
    let hash = params.hash();
    let layout = NamesLayout::new(&args.out, &hash);
    let plan = Plan::new(
        NAMES_KIND,
        &hash,
        &source_plan.dataset,
        &request.source,
        CODE_VERSION,
        units,
    );
    let job = OpenJob::open(layout.ledger(), &[layout.dir()], &params, plan, shard)?;
    let quiet = args.job.run.quiet;
    note_incomplete(&tables, &request.source, quiet);
    let metadata = file_metadata(&params, &hash, &request.source)?;
    let stop = stop.with_budget(args.job.run.time_budget);
    let namer = Namer {
        model: &model,
        classes: &params.classes,
        class_embeddings: &class_embeddings,
        batch: args.batch,
        stop: &stop,
    };
    let units = job.units(sequence_slots(&job.plan, &sequences));
    let bar = progress::units(units.len() as u64, "sequences", quiet);
    let describe = |c: &NameCounts| format!("{} instances named", c.instances);
    let driver = Driver {
        ledger: &job.ledger,
        stop: &stop,
        bar: &bar,
        quiet,
        describe: Some(&describe),
        on_skip: None,
    };
    let run = driver.run_each(units, |sequence: Option<&Sequence>, planned: &PlannedUnit| {
        let frames = unit_frames(&tables, &planned.id);
        let rows = match sequence {
            Some(sequence) if !frames.rows.is_empty() => namer.unit(sequence, &frames)?,
            None if !frames.rows.is_empty() => bail!("sequence {} is not in the source dataset any more", planned.id),
            _ => Vec::new(),
        };
        let file = layout.file(&planned.id);
        write_parquet(&file, &names_batch(&rows)?, &metadata)?;
        Ok(UnitDone {
            counts: NameCounts {
                frames: frames.rows.len(),
                instances: rows.len(),
            },
            files: vec![file],
            failures: Vec::new(),
        })
    });
    let totals = NameTotals {
        units: run.tally,
        instances: run.done_counts().map(|c| c.instances).sum(),
        seconds: started.elapsed().as_secs_f64(),
    };
    let exit = job.finish(run, &totals, args.job.max_failures)?;
    print_summary(&totals, &layout.dir());
    Ok(exit)
}

fn print_summary(totals: &NameTotals, dir: &Path) {
    eprintln!(
        "name: {} units done ({} instances), {} already done, {} failed, {} interrupted in {:.1} s → {}",
        totals.units.done,
        totals.instances,
        totals.units.skipped,
        totals.units.failed,
        totals.units.interrupted,
        totals.seconds,
        dir.display()
    );
}

/// The source sequence of each planned unit, in plan order (`None` when the dataset no longer has it).
fn sequence_slots<'a>(plan: &Plan, sequences: &'a [Sequence]) -> Vec<Option<&'a Sequence>> {
    plan.units
        .iter()
        .map(|u| sequences.iter().find(|s| s.id == u.id))
        .collect()
}
