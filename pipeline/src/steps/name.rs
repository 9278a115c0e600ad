//! `mrdino name`: open-vocabulary names for the instances of a labels run (or of a predictions run, which has
//! the same layout), with Talk2DINO (`mrdino_model::talk2dino`).
//!
//! For every frame with instances, the source frame is re-read at its original size (dataset and root from the
//! run's plan, cameras from its parameter file; `--root` / `--dataset` override them) and goes through
//! Talk2DINO's preprocessing (square 448×448 resize) and DINOv2-B/14-reg (patch tokens after the final norm,
//! 32×32). An instance's mask lives on the frame's label grid; the provenance columns of `frames` (the frame
//! was resized to `resized_height`×`resized_width`, then cropped at (`crop_top`, `crop_left`) to
//! `height`×`width`) place every label pixel in the original image, and the mask is downsampled to the patch
//! grid by exact area ([`axis_coverage`]). The instance's embedding is the coverage-weighted mean of the
//! L2-normalised patch tokens; its score for a class is the cosine to the class embedding (the 7 templates
//! averaged in CLIP space, ψ, L2-normalised). The best class is the `name`, the second the `runner_up`.
//!
//! Units are the done sequences of the source run, as for `labels`: a unit's `names` file, then its done
//! marker; a rerun skips done units (a unit is redone when its source tables changed: the input fingerprint is
//! the SHA-256 of the unit's two source files), `--shard I/N` (or Slurm's array variables) picks a stable
//! subset, and SIGINT/SIGTERM/`--time-budget` stop between frames with exit code 4. Several class lists may
//! share one `--out`: each parameter set (classes, weights, source) is its own `params=<hash>` partition.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mrdino_datasets::{list_sequences, DatasetKind, Frame, Processing, Sequence, SourceOptions};
use mrdino_model::clip_text::ClipText;
use mrdino_model::clip_tokenizer::ClipTokenizer;
use mrdino_model::device::parse_device;
use mrdino_model::talk2dino::{instance_scores, preprocess, top_two, AxisMap, Psi, INPUT_PX, TEMPLATES};
use mrdino_model::vit::{Vit, VitConfig};
use mrdino_outputs::bookkeeping::{
    choose_partition, in_shard, partitions, Ledger, Plan, PlannedUnit, Shard, WhenSeveral,
};
use mrdino_outputs::names::{
    names_batch, NameRow, NamesLayout, CLASSES_KEY, NAMES_DATA_DIRS, NAMES_KIND, TEMPLATES_KEY,
};
use mrdino_outputs::tables::{write_parquet, SCHEMA_VERSION};
use mrdino_outputs::weights_id::Identity;
use mrdino_outputs::{FrameRow, InstanceRow};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use crate::engine::job::{OpenJob, UnitTally, CODE_VERSION};
use crate::engine::progress;
use crate::engine::runs::read_label_tables;
use crate::engine::status::JobKind;
use crate::engine::stop::{StopHandle, Stopped};
use crate::engine::units::{Driver, UnitDone};
use mrdino_outputs::layout::LabelCounts;
use mrdino_outputs::runs::RunTables as LabelTables;

/// The class list used when `--classes` is not given: road users that move, and the static scene around them
/// (so that a mask on a building or on the road can say so instead of being forced into a road-user class).
pub const DRIVING_CLASSES: &[&str] = &[
    "car",
    "truck",
    "bus",
    "van",
    "tram",
    "train",
    "pedestrian",
    "cyclist",
    "bicycle",
    "motorcycle",
    "animal",
    "traffic light",
    "traffic sign",
    "pole",
    "building",
    "vegetation",
    "road",
    "sidewalk",
    "sky",
];

/// The Talk2DINO weights every open-vocabulary command loads.
#[derive(Debug, clap::Args)]
pub struct Talk2DinoArgs {
    /// DINOv2 backbone with registers, as Talk2DINO uses it (dinov2-vitb14-reg; custom:… for tests).
    #[arg(long, default_value = "dinov2-vitb14-reg")]
    pub backbone: String,
    /// The backbone's weights (safetensors from tools/convert_vit.py of `dinov2_vitb14_reg`).
    #[arg(long)]
    pub backbone_weights: PathBuf,
    /// CLIP ViT-B/16 text tower (safetensors from tools/convert_clip_text.py).
    #[arg(long)]
    pub text_weights: PathBuf,
    /// Talk2DINO's ψ (safetensors from tools/convert_talk2dino.py).
    #[arg(long)]
    pub psi_weights: PathBuf,
    /// auto, cpu or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// The loaded models.
pub struct Talk2Dino {
    pub vit: Vit,
    pub text: ClipText,
    pub psi: Psi,
    pub tokenizer: ClipTokenizer,
}

impl Talk2Dino {
    pub fn load(args: &Talk2DinoArgs) -> Result<Self> {
        let device = parse_device(&args.device)?;
        let config = VitConfig::by_name(&args.backbone)?;
        let vit = Vit::load(&args.backbone_weights, Some(config), device)
            .with_context(|| format!("cannot load the backbone {}", args.backbone_weights.display()))?;
        let text = ClipText::load(&args.text_weights, device)
            .with_context(|| format!("cannot load the text tower {}", args.text_weights.display()))?;
        let psi = Psi::load(&args.psi_weights, device)?;
        if psi.dim() != vit.embed_dim() {
            bail!(
                "ψ ({}) maps into {} dimensions but the backbone `{}` ({}) has {}",
                args.psi_weights.display(),
                psi.dim(),
                args.backbone,
                args.backbone_weights.display(),
                vit.embed_dim()
            );
        }
        if INPUT_PX % vit.patch_size() != 0 {
            bail!(
                "Talk2DINO's {INPUT_PX} px input is not a multiple of the backbone's patch {}",
                vit.patch_size()
            );
        }
        Ok(Self {
            vit,
            text,
            psi,
            tokenizer: ClipTokenizer::new(),
        })
    }

    /// The identities of the three weights, for the migration rule of earlier ones (see `crate::settings::identity`).
    pub fn identities(&self) -> [&Identity; 3] {
        [self.vit.identity(), self.text.identity(), self.psi.identity()]
    }

    /// (N, C) class embeddings of `classes`.
    pub fn class_embeddings(&self, classes: &[String]) -> Result<Tensor> {
        let names: Vec<&str> = classes.iter().map(String::as_str).collect();
        Ok(self.text.class_embeddings(&self.tokenizer, &self.psi, &names)?)
    }

    /// The weights' identities, for parameters and metadata.
    pub fn weights(&self, backbone: &str) -> WeightsIdentity {
        WeightsIdentity {
            backbone: backbone.to_string(),
            backbone_sha256: self.vit.identity().id.clone(),
            text: self.text.config().name.clone(),
            text_sha256: self.text.identity().id.clone(),
            psi_sha256: self.psi.identity().id.clone(),
        }
    }
}

/// Which weights made an output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightsIdentity {
    pub backbone: String,
    pub backbone_sha256: String,
    pub text: String,
    pub text_sha256: String,
    pub psi_sha256: String,
}

/// `--classes` / `--prompt` values: a file with one class per line (`#` starts a comment), or a comma-separated
/// list; names are trimmed, must be non-empty and distinct.
pub fn parse_classes(values: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for value in values {
        let path = Path::new(value);
        let items: Vec<String> = if path.is_file() {
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the class list {}", path.display()))?
                .lines()
                .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
                .filter(|l| !l.is_empty())
                .collect()
        } else {
            value.split(',').map(|s| s.trim().to_string()).collect()
        };
        for item in items {
            if item.is_empty() {
                bail!("empty class name in `{value}`");
            }
            if out.contains(&item) {
                bail!("class `{item}` is listed twice");
            }
            out.push(item);
        }
    }
    if out.is_empty() {
        bail!("no class names given");
    }
    Ok(out)
}

/// Flags of `mrdino name`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["labels", "predictions"])))]
pub struct NameArgs {
    /// Output directory of `mrdino labels`.
    #[arg(long, value_name = "RUN")]
    pub labels: Option<PathBuf>,
    /// Output directory of `mrdino infer` (same layout as a labels run).
    #[arg(long, value_name = "PRED")]
    pub predictions: Option<PathBuf>,
    /// Parameter partition of the source run (default: the latest).
    #[arg(long, value_name = "HASH")]
    pub params: Option<String>,
    /// Class names: a file with one per line, or "car,person,…" (default: a class list for driving scenes).
    #[arg(long, value_name = "FILE|LIST")]
    pub classes: Vec<String>,
    #[command(flatten)]
    pub model: Talk2DinoArgs,
    /// Output directory of the names table (created if needed).
    #[arg(long)]
    pub out: PathBuf,
    /// Dataset root of the source frames (default: the one in the source run's plan).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Dataset layout of the source frames (default: the one in the source run's plan).
    #[arg(long, value_parser = crate::cli::values::dataset)]
    pub dataset: Option<DatasetKind>,
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

/// The resolved parameters of a names job; their hash names the partition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NameParams {
    /// `labels` or `predictions`.
    pub source: String,
    pub source_params_hash: String,
    pub weights: WeightsIdentity,
    pub classes: Vec<String>,
    pub templates: Vec<String>,
    pub input_px: i64,
    pub resize: String,
    pub mask_to_patches: String,
}

impl NameParams {
    pub fn hash(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        Sha256::digest(json.as_bytes())
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

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

/// Frame (H, W, 3) uint8 → (1, 3, H, W) float in 0..=255.
pub(crate) fn frame_tensor(frame: &Frame) -> Tensor {
    Tensor::from_slice(&frame.image.data)
        .view([frame.image.height as i64, frame.image.width as i64, 3])
        .permute([2, 0, 1])
        .unsqueeze(0)
        .to_kind(Kind::Float)
}

/// Where the label grid of `row` lies in its original frame, per axis.
fn label_axes(row: &FrameRow) -> Result<(AxisMap, AxisMap)> {
    if row.resized_height == 0 || row.resized_width == 0 || row.orig_height == 0 || row.orig_width == 0 {
        bail!(
            "{} frame {}: the frames table gives no resize geometry (resized {}x{}, original {}x{})",
            row.sequence_id,
            row.frame_name,
            row.resized_width,
            row.resized_height,
            row.orig_width,
            row.orig_height
        );
    }
    if row.crop_top + row.height > row.resized_height || row.crop_left + row.width > row.resized_width {
        bail!(
            "{} frame {}: a {}x{} label grid at ({}, {}) does not fit the resized {}x{} frame",
            row.sequence_id,
            row.frame_name,
            row.width,
            row.height,
            row.crop_left,
            row.crop_top,
            row.resized_width,
            row.resized_height
        );
    }
    let axis = |cells: u32, crop: u32, resized: u32, orig: u32| {
        let step_px = f64::from(orig) / f64::from(resized);
        AxisMap {
            cells: cells as usize,
            offset_px: f64::from(crop) * step_px,
            step_px,
            extent_px: f64::from(orig),
        }
    };
    Ok((
        axis(row.height, row.crop_top, row.resized_height, row.orig_height),
        axis(row.width, row.crop_left, row.resized_width, row.orig_width),
    ))
}

/// (K, h, w) 0/1 masks of a frame's instances, in the given order.
fn instance_masks(row: &FrameRow, instances: &[&InstanceRow]) -> Result<Tensor> {
    let (h, w) = (row.height as usize, row.width as usize);
    let mut data = vec![0u8; instances.len() * h * w];
    for (k, inst) in instances.iter().enumerate() {
        if (inst.mask.height, inst.mask.width) != (row.height, row.width) {
            bail!(
                "{} frame {}: instance {} has a {}x{} mask on a {}x{} label grid",
                row.sequence_id,
                row.frame_name,
                inst.instance_id,
                inst.mask.width,
                inst.mask.height,
                row.width,
                row.height
            );
        }
        let pixels = inst.mask.to_pixels().with_context(|| {
            format!(
                "{} frame {}: instance {}",
                row.sequence_id, row.frame_name, inst.instance_id
            )
        })?;
        for p in pixels {
            data[k * h * w + p as usize] = 1;
        }
    }
    Ok(Tensor::from_slice(&data).view([instances.len() as i64, h as i64, w as i64]))
}

/// The frames of one unit with their instances, in frame order.
struct UnitFrames<'a> {
    rows: Vec<&'a FrameRow>,
    instances: BTreeMap<u32, Vec<&'a InstanceRow>>,
}

fn unit_frames<'a>(tables: &'a LabelTables, sequence_id: &str) -> UnitFrames<'a> {
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

/// The source sequences (native resolution) of a labels-shaped run.
fn source_sequences(args: &NameArgs, tables: &LabelTables, plan: &Plan) -> Result<Vec<Sequence>> {
    let kind = match args.dataset {
        Some(kind) => kind,
        None => DatasetKind::parse(&plan.dataset).with_context(|| {
            format!(
                "the source run's plan names dataset `{}`, which is not a layout mrdino reads; pass --dataset",
                plan.dataset
            )
        })?,
    };
    let root = args.root.clone().unwrap_or_else(|| plan.root.clone());
    let stored = tables.layout.ledger().read_params().ok().flatten();
    let cameras: Option<Vec<String>> = stored
        .as_ref()
        .and_then(|p| p.get("cameras"))
        .and_then(|c| serde_json::from_value(c.clone()).ok());
    list_sequences(&SourceOptions {
        kind,
        root: root.clone(),
        cameras,
        processing: Some(Processing::Native),
    })
    .with_context(|| {
        format!(
            "cannot list the source frames (`{}` at {}); pass --root and --dataset if they moved",
            kind.name(),
            root.display()
        )
    })
}

/// What every unit of a names job shares.
struct Namer<'a> {
    model: &'a Talk2Dino,
    classes: &'a [String],
    class_embeddings: &'a Tensor,
    batch: usize,
}

impl Namer<'_> {
    /// Names of one unit; rows sorted by (frame_index, instance_id). Frames are decoded a batch at a time (image
    /// sequences read only the files of the batch; videos are decoded once, in order), so memory stays bounded.
    fn unit(&self, sequence: &Sequence, frames: &UnitFrames<'_>, stop: &dyn Fn() -> bool) -> Result<Vec<NameRow>> {
        let mut out = Vec::new();
        let mut pending: Vec<(&FrameRow, Frame)> = Vec::new();
        let missing = |row: &FrameRow| format!("frame {} of {} could not be re-read", row.frame_name, row.sequence_id);
        if sequence.image_files().is_some() {
            for chunk in frames.rows.chunks(self.batch) {
                let indices: BTreeSet<usize> = chunk.iter().map(|r| r.frame_index as usize).collect();
                let mut decoded = sequence.decode_frames(&indices)?;
                for &row in chunk {
                    let frame = decoded
                        .remove(&(row.frame_index as usize))
                        .with_context(|| missing(row))?;
                    pending.push((row, frame));
                }
                self.flush(&mut pending, frames, &mut out, stop)?;
            }
        } else {
            let wanted: BTreeMap<usize, &FrameRow> = frames.rows.iter().map(|r| (r.frame_index as usize, *r)).collect();
            let last = wanted.keys().next_back().copied().unwrap_or(0);
            for (index, item) in sequence.frames()? {
                if let Some(&row) = wanted.get(&index) {
                    pending.push((row, item.with_context(|| missing(row))?));
                    if pending.len() >= self.batch {
                        self.flush(&mut pending, frames, &mut out, stop)?;
                    }
                }
                if index >= last {
                    break;
                }
            }
            self.flush(&mut pending, frames, &mut out, stop)?;
        }
        let named: BTreeSet<u32> = out.iter().map(|n| n.frame_index).collect();
        if let Some(row) = frames.rows.iter().find(|r| !named.contains(&r.frame_index)) {
            bail!("{} (the video ended early?)", missing(row));
        }
        out.sort_by_key(|r| (r.frame_index, r.instance_id));
        Ok(out)
    }

    /// Names the instances of the pending frames (one backbone forward) and empties the batch.
    fn flush(
        &self,
        pending: &mut Vec<(&FrameRow, Frame)>,
        frames: &UnitFrames<'_>,
        out: &mut Vec<NameRow>,
        stop: &dyn Fn() -> bool,
    ) -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        if stop() {
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
            images.push(preprocess(&frame_tensor(frame), INPUT_PX));
        }
        let vit = &self.model.vit;
        let tokens = vit.forward_tokens(&vit.normalize(&Tensor::cat(&images, 0))?, None)?;
        for (b, (row, _)) in pending.drain(..).enumerate() {
            let instances = &frames.instances[&row.frame_index];
            out.extend(self.frame_names(row, instances, &tokens.patches.get(b as i64), tokens.grid)?);
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
        let (rows_map, cols_map) = label_axes(row)?;
        let masks = instance_masks(row, instances)?;
        let names = instance_scores(&masks, &rows_map, &cols_map, patches, grid, self.class_embeddings)?;
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

/// `mrdino name`.
pub fn run(args: &NameArgs, stop: &StopHandle) -> Result<ExitCode> {
    let shard = match args.shard {
        Some(s) => Some(s),
        None => crate::cli::groups::shard_from_env()?,
    };
    let started = Instant::now();
    if args.batch == 0 {
        bail!("--batch must be positive");
    }
    let (source_kind, source) = match (&args.labels, &args.predictions) {
        (Some(path), None) => ("labels", path),
        (None, Some(path)) => ("predictions", path),
        _ => bail!("give exactly one of --labels RUN and --predictions PRED"),
    };
    let classes = if args.classes.is_empty() {
        DRIVING_CLASSES.iter().map(|s| s.to_string()).collect()
    } else {
        parse_classes(&args.classes)?
    };
    let tables = read_label_tables(source, args.params.as_deref())?;
    let source_ledger = tables.layout.ledger();
    let source_plan = source_ledger.read_plan()?;
    let sequences = source_sequences(args, &tables, &source_plan)?;
    let model = Talk2Dino::load(&args.model)?;
    let class_embeddings = model.class_embeddings(&classes)?;
    let params = NameParams {
        source: source_kind.to_string(),
        source_params_hash: tables.layout.params_hash.clone(),
        weights: model.weights(&args.model.backbone),
        classes: classes.clone(),
        templates: TEMPLATES.iter().map(|s| s.to_string()).collect(),
        input_px: INPUT_PX,
        resize: "bilinear, antialias, align_corners=False, on the float image (not rounded)".into(),
        mask_to_patches: "exact area fraction through the frames' resize/crop provenance".into(),
    };
    let params =
        crate::settings::identity::continue_earlier_partition(&args.out, NAMES_DATA_DIRS, params, &model.identities(), NameParams::hash)?;
    let hash = params.hash();
    let layout = NamesLayout::new(&args.out, &hash);
    // Units: the done units of the source run, in its plan order, fingerprinted by their source tables.
    let mut units = Vec::new();
    for unit in &source_plan.units {
        if source_ledger.is_done::<LabelCounts>(unit).is_none() {
            continue;
        }
        let files = tables.layout.unit_outputs(&unit.id);
        units.push(PlannedUnit::new(&unit.id, unit.frames, &source_fingerprint(&files)?));
    }
    let plan = Plan::new(NAMES_KIND, &hash, &source_plan.dataset, source, CODE_VERSION, units);
    let job = OpenJob::open(layout.ledger(), &[layout.dir()], &params, plan, shard)?;
    let (ledger, plan) = (&job.ledger, &job.plan);
    if !tables.incomplete_units.is_empty() && !args.quiet {
        eprintln!(
            "note: {} units of {} are not done and get no names",
            tables.incomplete_units.len(),
            source.display()
        );
    }
    let metadata = vec![
        ("mrdino.schema_version".to_string(), SCHEMA_VERSION.to_string()),
        ("mrdino.code_version".to_string(), CODE_VERSION.to_string()),
        ("mrdino.params_hash".to_string(), hash.clone()),
        ("mrdino.params".to_string(), serde_json::to_string(&params)?),
        (CLASSES_KEY.to_string(), serde_json::to_string(&params.classes)?),
        (TEMPLATES_KEY.to_string(), serde_json::to_string(&params.templates)?),
        ("mrdino.backbone".to_string(), params.weights.backbone.clone()),
        (
            "mrdino.backbone_sha256".to_string(),
            params.weights.backbone_sha256.clone(),
        ),
        ("mrdino.text_sha256".to_string(), params.weights.text_sha256.clone()),
        ("mrdino.psi_sha256".to_string(), params.weights.psi_sha256.clone()),
        ("mrdino.source".to_string(), source.display().to_string()),
        (
            "mrdino.source_params_hash".to_string(),
            params.source_params_hash.clone(),
        ),
    ];
    let namer = Namer {
        model: &model,
        classes: &classes,
        class_embeddings: &class_embeddings,
        batch: args.batch,
    };
    let stop = stop.with_budget(args.time_budget);
    let units: Vec<((), &PlannedUnit)> = plan.units.iter().filter(|u| in_shard(&u.id, shard)).map(|u| ((), u)).collect();
    let bar = progress::units(units.len() as u64, "sequences", args.quiet);
    let describe = |c: &NameCounts| format!("{} instances named", c.instances);
    let driver = Driver {
        ledger,
        stop: &stop,
        bar: &bar,
        quiet: args.quiet,
        describe: Some(&describe),
        on_skip: None,
    };
    let stop_requested = || stop.requested();
    let run = driver.run_each(units, |(): (), planned: &PlannedUnit| {
            let frames = unit_frames(&tables, &planned.id);
            let rows = match sequences.iter().find(|s| s.id == planned.id) {
                Some(sequence) if !frames.rows.is_empty() => namer.unit(sequence, &frames, &stop_requested)?,
                Some(_) => Vec::new(),
                None if frames.rows.is_empty() => Vec::new(),
                None => bail!("sequence {} is not in the source dataset any more", planned.id),
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
    let exit = job.finish(run, &totals, 0)?;
    eprintln!(
        "name: {} units done ({} instances), {} already done, {} failed, {} interrupted in {:.1} s → {}",
        totals.units.done,
        totals.instances,
        totals.units.skipped,
        totals.units.failed,
        totals.units.interrupted,
        totals.seconds,
        layout.dir().display()
    );
    Ok(exit)
}

/// The names job for `status` and `finalize`.
pub const JOB: JobKind = JobKind {
    kind: NAMES_KIND,
    label: "names ",
    data_dirs: NAMES_DATA_DIRS,
    totals: &[("instances", "instances", "instances")],
    frame_failures: false,
};

/// The names of a names root's complete units, keyed like instances. The partition: `params` when given, else the
/// latest one made from the source partition `source_params` (a names root may hold several class lists, or names of
/// several labels partitions).
pub fn read_names_run(
    out: &Path,
    params: Option<&str>,
    source_params: &str,
) -> Result<(String, BTreeMap<(String, u32, u32), NameRow>)> {
    let hash = match params {
        Some(hash) => choose_partition(out, NAMES_DATA_DIRS, Some(hash), WhenSeveral::Latest)?.params_hash,
        None => {
            let all = partitions(out, NAMES_DATA_DIRS);
            let written = |hash: &str| {
                std::fs::metadata(Ledger::new(out, NAMES_KIND, hash).params_file())
                    .and_then(|m| m.modified())
                    .ok()
            };
            all.iter()
                .filter(|h| {
                    Ledger::new(out, NAMES_KIND, h)
                        .read_params()
                        .ok()
                        .flatten()
                        .is_some_and(|p| p["source_params_hash"] == source_params)
                })
                .max_by_key(|h| (written(h.as_str()), h.as_str()))
                .cloned()
                .with_context(|| {
                    format!(
                        "{} holds no names of the labels partition params={source_params} (names partitions: {})",
                        out.display(),
                        if all.is_empty() {
                            "none".to_string()
                        } else {
                            all.join(", ")
                        }
                    )
                })?
        }
    };
    let layout = NamesLayout::new(out, &hash);
    let ledger = layout.ledger();
    let plan = ledger.read_plan()?;
    let mut names = BTreeMap::new();
    for unit in &plan.units {
        if ledger.is_done::<NameCounts>(unit).is_none() {
            continue;
        }
        for row in mrdino_outputs::names::read_names(&layout.file(&unit.id))? {
            names.insert((row.sequence_id.clone(), row.frame_index, row.instance_id), row);
        }
    }
    Ok((hash, names))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_lists_from_flags_and_files() {
        assert_eq!(
            parse_classes(&["car, traffic light".into(), "person".into()]).unwrap(),
            vec!["car", "traffic light", "person"]
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("classes.txt");
        std::fs::write(&file, "# road users\ncar\n\n  bus  # long ones\n").unwrap();
        assert_eq!(
            parse_classes(&[file.display().to_string()]).unwrap(),
            vec!["car", "bus"]
        );
        assert!(parse_classes(&["car,car".into()])
            .unwrap_err()
            .to_string()
            .contains("twice"));
        assert!(parse_classes(&["car,,bus".into()])
            .unwrap_err()
            .to_string()
            .contains("empty"));
    }

    #[test]
    fn label_grid_maps_through_resize_and_crop() {
        // TRI-PD: 1936×1216 halved to 968×608, top 128 rows cropped: 968×480 labels.
        let row = FrameRow {
            dataset: "tri-pd".into(),
            sequence_id: "s".into(),
            frame_index: 0,
            frame_name: "f".into(),
            source_path: "f.png".into(),
            height: 480,
            width: 968,
            orig_height: 1216,
            orig_width: 1936,
            resized_height: 608,
            resized_width: 968,
            crop_top: 128,
            crop_left: 0,
            quasi_static: true,
            corner_flow_px: None,
            fg_fraction: None,
            labelled: true,
            excluded_reason: None,
            segment: None,
            num_instances: 1,
        };
        let (rows, cols) = label_axes(&row).unwrap();
        assert_eq!(
            (rows.cells, rows.offset_px, rows.step_px, rows.extent_px),
            (480, 256.0, 2.0, 1216.0)
        );
        assert_eq!(
            (cols.cells, cols.offset_px, cols.step_px, cols.extent_px),
            (968, 0.0, 2.0, 1936.0)
        );
        let bad = FrameRow { crop_top: 200, ..row };
        assert!(label_axes(&bad).unwrap_err().to_string().contains("does not fit"));
    }
}
