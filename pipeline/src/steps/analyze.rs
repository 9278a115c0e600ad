//! `mrdino analyze`: how much each frozen backbone's representation changes when only part of a frame is kept.
//!
//! Frames are sampled evenly from a labels run (or a predictions run, same tables): those with at least one
//! object. The object masks are the run's instances, or with `--gt DIR --gt-format F` the ground truth of the
//! same frames (read as `mrdino eval` reads it). The frames are re-read from the source dataset at the label grid
//! (as `report` does), and each becomes five variants (`mrdino_model::variants`: full, foreground, background,
//! centre, border; `--fill`, `--centre-radius`), resized to `--size`² (bilinear, no antialias) and fed to every
//! backbone in batches; frames stream through, only the pooled representations (n × C per backbone, variant and
//! representation) are kept. Representations: the CLS token and the mean of the patch tokens, both after the
//! final norm (for SwaV's ResNet-50, which has no CLS token, the global average pool as `mean`).
//!
//! Statistics (`mrdino_model::similarity`, float64): CKA, debiased CKA, SVCCA and PWCCA between every pair of
//! variants within a backbone and between every pair of backbones for each variant, and k-NN purity of the
//! pooled variants per backbone, each with a percentile bootstrap interval over frames (`--bootstrap`,
//! `--seed`). The CCA statistics run on each side's top singular directions that keep 99 % of the variance,
//! at most ⌊n/10⌋ of them (`--cca-max-dims`), since CCA with as many dimensions as examples is trivially 1.
//! For purity a bootstrap resample counts each drawn frame once (a duplicated point would be its own nearest
//! neighbour). The 2-D projections are PCA. Outputs: `OUT/analysis.json`, `OUT/index.html`, and example
//! variant images `OUT/examples/*.png`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use mrdino_model::device::parse_device;
use mrdino_model::resnet::Resnet50;
use mrdino_model::similarity::{
    bootstrap, knn_purity, linear_cka, linear_cka_debiased, pca_2d, pwcca, svcca, svd_reduce, Estimate,
    SimilarityError, SplitMix64,
};
use mrdino_model::variants::{make_variant, Fill, Variant, VariantParams};
use mrdino_model::vit::{ForwardOptions, Vit, VitConfig};
use mrdino_outputs::analysis_report::{
    render_analysis_html, AnalysisReport, Example, Interval, PairStats, Projection, PurityStats,
};
use mrdino_outputs::flowviz::write_rgb_png;
use mrdino_outputs::write_atomic;
use mrdino_outputs::FrameRow;
use tch::{Device, Kind, Tensor};

use crate::engine::runs::{read_label_tables, source_sequences};
use crate::steps::eval::{prediction_map, GroundTruth, GtFormat};
use mrdino_outputs::runs::sample_frames;

/// Flags of `mrdino analyze`.
#[derive(Debug, clap::Args)]
pub struct AnalyzeArgs {
    /// Output directory of `mrdino labels` (or of `mrdino infer`): frames and object masks.
    #[arg(long, value_name = "RUN")]
    pub labels: PathBuf,
    /// Parameter hash of the run (default: the only one, or the latest).
    #[arg(long, value_name = "HASH")]
    pub params: Option<String>,
    /// Take the object masks from this ground truth instead of the run's instances.
    #[arg(long, value_name = "DIR", requires = "gt_format")]
    pub gt: Option<PathBuf>,
    /// Layout of `--gt` (as `mrdino eval`).
    #[arg(long, value_enum)]
    pub gt_format: Option<GtFormat>,
    /// A backbone: a ViT name (`dinov2-vitb14`, `dino-vitb16`, `clip-vitb16`, `mae-vitb16`, …, `custom:…`) or
    /// `swav-rn50`; repeat for several, each followed by its `--backbone-weights`.
    #[arg(long = "backbone", value_name = "NAME", required = true)]
    pub backbones: Vec<String>,
    /// Weights (safetensors) of each `--backbone`, in the same order.
    #[arg(long = "backbone-weights", value_name = "FILE", required = true)]
    pub backbone_weights: Vec<PathBuf>,
    /// Report directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Frames to sample (evenly, among frames with objects).
    #[arg(long, default_value_t = 200)]
    pub frames: usize,
    /// Fill of the removed part: mean (of the kept pixels), black, blur or blur:<sigma px>.
    #[arg(long, default_value = "mean", value_parser = Fill::parse)]
    pub fill: Fill,
    /// Radius of the centre disc as a fraction of min(H, W)/2.
    #[arg(long, default_value_t = 0.5)]
    pub centre_radius: f64,
    /// Square input size of the backbones (rounded down to a multiple of each backbone's patch).
    #[arg(long, default_value_t = 224)]
    pub size: i64,
    /// Neighbours for k-NN purity.
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Bootstrap resamples for the intervals.
    #[arg(long, default_value_t = 100)]
    pub bootstrap: usize,
    /// At most this many singular directions per side for SVCCA/PWCCA (default ⌊frames/10⌋).
    #[arg(long)]
    pub cca_max_dims: Option<usize>,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Frames per forward.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Frames whose variant images are written to the report.
    #[arg(long, default_value_t = 3)]
    pub examples: usize,
    /// auto, cpu or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Threads libtorch may use on CPU (default: libtorch's choice, all cores). The statistics are many small
    /// matrix products and SVDs, for which threads can cost more than they gain on a loaded machine.
    #[arg(long)]
    pub torch_threads: Option<i32>,
}

/// A loaded backbone of the analysis.
enum Backbone {
    Vit(Box<Vit>),
    Resnet(Box<Resnet50>),
}

impl Backbone {
    fn load(name: &str, path: &Path, device: Device) -> Result<(String, Self)> {
        let backbone = if name == "swav-rn50" {
            Backbone::Resnet(Box::new(Resnet50::load(path, device)?))
        } else {
            let config = VitConfig::by_name(name)?;
            Backbone::Vit(Box::new(Vit::load(path, Some(config), device)?))
        };
        Ok((name.to_string(), backbone))
    }

    fn patch(&self) -> i64 {
        match self {
            Backbone::Vit(v) => v.patch_size(),
            Backbone::Resnet(_) => 32,
        }
    }

    /// (CLS, mean-pooled) representations of images (B, 3, S, S) in [0, 1]; ResNet: (None, pooled).
    fn represent(&self, images01: &Tensor) -> Result<(Option<Tensor>, Tensor)> {
        Ok(match self {
            Backbone::Vit(v) => {
                let tokens = tch::no_grad(|| v.forward(&v.normalize(images01)?, ForwardOptions::default()))?;
                (Some(tokens.cls), tokens.patches.mean_dim(1, false, Kind::Float))
            }
            Backbone::Resnet(r) => (None, r.pooled(&r.normalize(images01))),
        })
    }
}

const REPRESENTATIONS: [&str; 2] = ["cls", "mean"];

/// Pooled representations, rows = frames in sample order.
struct Collected {
    /// (backbone index, variant, representation) → rows of f64.
    rows: BTreeMap<(usize, Variant, &'static str), Vec<Tensor>>,
}

impl Collected {
    fn matrix(&self, backbone: usize, variant: Variant, representation: &'static str) -> Option<Tensor> {
        self.rows
            .get(&(backbone, variant, representation))
            .map(|rows| Tensor::cat(rows, 0).to_kind(Kind::Double).to_device(Device::Cpu))
    }
}

fn interval(e: Estimate) -> Interval {
    Interval {
        value: e.value,
        ci_low: e.ci_low,
        ci_high: e.ci_high,
    }
}

/// The four statistics of one pair, with bootstrap intervals over frames.
fn pair_stats(x: &Tensor, y: &Tensor, args: &AnalyzeArgs, max_dims: usize) -> Result<[Interval; 4], SimilarityError> {
    let n = x.size()[0] as usize;
    let (rx, ry) = (svd_reduce(x, 0.99, Some(max_dims)), svd_reduce(y, 0.99, Some(max_dims)));
    let pick = |m: &Tensor, idx: &Tensor| m.index_select(0, idx);
    let cka = bootstrap(n, args.bootstrap, args.seed, |i| linear_cka(&pick(x, i), &pick(y, i)))?;
    let dcka = bootstrap(n, args.bootstrap, args.seed, |i| {
        linear_cka_debiased(&pick(x, i), &pick(y, i))
    })?;
    let sv = bootstrap(n, args.bootstrap, args.seed, |i| {
        svcca(&pick(&rx, i), &pick(&ry, i), 1.0, None)
    })?;
    let pw = bootstrap(n, args.bootstrap, args.seed, |i| pwcca(&pick(&rx, i), &pick(&ry, i)))?;
    Ok([interval(cka), interval(dcka), interval(sv), interval(pw)])
}

fn to_pair(shared: &str, representation: &str, a: &str, b: &str, s: [Interval; 4]) -> PairStats {
    PairStats {
        shared: shared.to_string(),
        representation: representation.to_string(),
        a: a.to_string(),
        b: b.to_string(),
        cka: s[0],
        cka_debiased: s[1],
        svcca: s[2],
        pwcca: s[3],
    }
}

/// k-NN purity of the pooled variants of one representation, with a bootstrap over frames (each drawn frame once).
fn purity_stats(per_variant: &[Tensor], args: &AnalyzeArgs) -> Result<(Vec<Interval>, Interval)> {
    let n = per_variant[0].size()[0] as usize;
    let compute = |frames: &[i64]| -> Result<(Vec<f64>, f64)> {
        let idx = Tensor::from_slice(frames);
        let points = Tensor::cat(
            &per_variant.iter().map(|m| m.index_select(0, &idx)).collect::<Vec<_>>(),
            0,
        );
        let labels: Vec<usize> = (0..per_variant.len())
            .flat_map(|v| std::iter::repeat_n(v, frames.len()))
            .collect();
        let k = args.k.min(points.size()[0] as usize - 1).max(1);
        let p = knn_purity(&points, &labels, k)?;
        Ok((p.per_label, p.overall))
    };
    let all: Vec<i64> = (0..n as i64).collect();
    let (values, overall) = compute(&all)?;
    let mut rng = SplitMix64::new(args.seed);
    let mut samples: Vec<(Vec<f64>, f64)> = Vec::new();
    for _ in 0..args.bootstrap {
        let drawn: BTreeSet<i64> = (0..n).map(|_| rng.below(n as u64) as i64).collect();
        let drawn: Vec<i64> = drawn.into_iter().collect();
        if drawn.len() * per_variant.len() > args.k.min(2) + 1 {
            samples.push(compute(&drawn)?);
        }
    }
    let ci = |value: f64, pick: &dyn Fn(&(Vec<f64>, f64)) -> f64| {
        let v: Vec<f64> = samples.iter().map(pick).collect();
        Interval {
            value,
            ci_low: mrdino_model::similarity::percentile(&v, 2.5),
            ci_high: mrdino_model::similarity::percentile(&v, 97.5),
        }
    };
    let per = values
        .iter()
        .enumerate()
        .map(|(i, &v)| ci(v, &|s: &(Vec<f64>, f64)| s.0[i]))
        .collect();
    Ok((per, ci(overall, &|s: &(Vec<f64>, f64)| s.1)))
}

/// (3, H, W) float [0, 1] → RGB bytes.
fn to_rgb_bytes(image: &Tensor) -> Vec<u8> {
    let bytes = (image.clamp(0.0, 1.0) * 255.0)
        .round()
        .to_kind(Kind::Uint8)
        .permute([1, 2, 0])
        .contiguous();
    Vec::<u8>::try_from(bytes.flatten(0, -1)).unwrap_or_default()
}

pub fn run(args: &AnalyzeArgs) -> Result<()> {
    if args.frames < 4 {
        bail!(
            "--frames must be at least 4 (debiased CKA needs 4 frames), got {}",
            args.frames
        );
    }
    if !(args.centre_radius.is_finite() && args.centre_radius > 0.0) {
        bail!("--centre-radius must be a positive number, got {}", args.centre_radius);
    }
    if args.batch == 0 || args.k == 0 || args.size <= 0 {
        bail!("--batch, --k and --size must be positive");
    }
    let device = parse_device(&args.device)?;
    if let Some(n) = args.torch_threads {
        tch::set_num_threads(n.max(1));
    }
    let mut names = Vec::new();
    let mut backbones = Vec::new();
    if args.backbones.len() != args.backbone_weights.len() {
        bail!(
            "{} --backbone but {} --backbone-weights: give each backbone its weights, in order",
            args.backbones.len(),
            args.backbone_weights.len()
        );
    }
    for (spec, weights) in args.backbones.iter().zip(&args.backbone_weights) {
        let (name, backbone) = Backbone::load(spec, weights, device)?;
        if names.contains(&name) {
            bail!("--backbone {name} is given twice");
        }
        names.push(name);
        backbones.push(backbone);
    }

    let tables = read_label_tables(&args.labels, args.params.as_deref())?;
    let mut gt = match (&args.gt, args.gt_format) {
        (Some(dir), Some(format)) => Some(GroundTruth::new(dir, format)?),
        _ => None,
    };
    let sampled: Vec<FrameRow> = sample_frames(&tables.frames, args.frames)
        .into_iter()
        .cloned()
        .collect();
    if sampled.len() < 4 {
        bail!(
            "{} has {} labelled frames with objects; the analysis needs at least 4",
            args.labels.display(),
            sampled.len()
        );
    }
    let sequences = source_sequences(&tables, None, None, None)?;
    let params = VariantParams {
        fill: args.fill,
        centre_radius: args.centre_radius,
    };
    let examples_dir = args.out.join("examples");
    std::fs::create_dir_all(&examples_dir).with_context(|| format!("cannot create {}", examples_dir.display()))?;

    // Frames grouped by sequence, decoded once per sequence, processed in batches.
    let mut by_sequence: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
    for f in &sampled {
        by_sequence
            .entry(&f.sequence_id)
            .or_default()
            .insert(f.frame_index as usize);
    }
    let mut collected = Collected { rows: BTreeMap::new() };
    let mut examples = Vec::new();
    let mut pending: Vec<(Tensor, Tensor)> = Vec::new();
    let mut used = 0usize;
    let flush = |pending: &mut Vec<(Tensor, Tensor)>, collected: &mut Collected| -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        for variant in Variant::ALL {
            let images: Vec<Tensor> = pending
                .iter()
                .map(|(img, fg)| make_variant(img, fg, variant, &params))
                .collect();
            let batch = Tensor::stack(&images, 0);
            for (b, backbone) in backbones.iter().enumerate() {
                let side = (args.size / backbone.patch()).max(1) * backbone.patch();
                let input = batch
                    .upsample_bilinear2d([side, side], false, None, None)
                    .to_device(device);
                let (cls, mean) = backbone.represent(&input)?;
                if let Some(cls) = cls {
                    collected
                        .rows
                        .entry((b, variant, "cls"))
                        .or_default()
                        .push(cls.to_device(Device::Cpu));
                }
                collected
                    .rows
                    .entry((b, variant, "mean"))
                    .or_default()
                    .push(mean.to_device(Device::Cpu));
            }
        }
        pending.clear();
        Ok(())
    };
    for sequence in &sequences {
        let Some(indices) = by_sequence.get(sequence.id.as_str()) else {
            continue;
        };
        let decoded = sequence.decode_frames(indices)?;
        for frame_row in sampled.iter().filter(|f| f.sequence_id == sequence.id) {
            let Some(frame) = decoded.get(&(frame_row.frame_index as usize)) else {
                bail!(
                    "{}: frame {} could not be re-read from the source",
                    sequence.id,
                    frame_row.frame_name
                );
            };
            let mask = match gt.as_mut() {
                Some(gt) => gt.load(frame_row)?.with_context(|| {
                    format!(
                        "no ground truth for {} frame {}",
                        frame_row.sequence_id, frame_row.frame_name
                    )
                })?,
                None => {
                    let instances: Vec<_> = tables
                        .instances
                        .iter()
                        .filter(|i| i.sequence_id == frame_row.sequence_id && i.frame_index == frame_row.frame_index)
                        .collect();
                    prediction_map(frame_row, &instances)?
                }
            };
            let (h, w) = (frame.image.height as i64, frame.image.width as i64);
            if (mask.height as i64, mask.width as i64) != (h, w) {
                bail!(
                    "{} frame {}: a {}x{} mask for a {h}x{w} frame",
                    frame_row.sequence_id,
                    frame_row.frame_name,
                    mask.height,
                    mask.width
                );
            }
            let image = Tensor::from_slice(&frame.image.data)
                .view([h, w, 3])
                .permute([2, 0, 1])
                .to_kind(Kind::Float)
                / 255.0;
            let labels: Vec<i64> = mask.labels.iter().map(|&l| i64::from(l != 0)).collect();
            let fg = Tensor::from_slice(&labels).view([h, w]).to_kind(Kind::Bool);
            if examples.len() < args.examples {
                let mut images = Vec::new();
                for variant in Variant::ALL {
                    let name = format!("{}_{}.png", examples.len(), variant.name());
                    let rgb = to_rgb_bytes(&make_variant(&image, &fg, variant, &params));
                    write_rgb_png(&examples_dir.join(&name), &rgb, h as usize, w as usize)?;
                    images.push((variant.name().to_string(), format!("examples/{name}")));
                }
                examples.push(Example {
                    frame: format!("{} / {}", frame_row.sequence_id, frame_row.frame_name),
                    images,
                });
            }
            pending.push((image, fg));
            used += 1;
            if pending.len() == args.batch {
                flush(&mut pending, &mut collected)?;
            }
        }
    }
    flush(&mut pending, &mut collected)?;
    eprintln!("analysed {used} frames with {} backbones", names.len());

    let max_dims = args.cca_max_dims.unwrap_or(used / 10).max(1);
    let mut within = Vec::new();
    let mut between = Vec::new();
    let mut purity = Vec::new();
    let mut projections = Vec::new();
    let variant_names: Vec<String> = Variant::ALL.iter().map(|v| v.name().to_string()).collect();
    for (b, name) in names.iter().enumerate() {
        for representation in REPRESENTATIONS {
            let mats: Vec<Tensor> = Variant::ALL
                .iter()
                .filter_map(|&v| collected.matrix(b, v, representation))
                .collect();
            if mats.len() != Variant::ALL.len() {
                continue;
            }
            for i in 0..mats.len() {
                for j in i + 1..mats.len() {
                    let s = pair_stats(&mats[i], &mats[j], args, max_dims)?;
                    within.push(to_pair(name, representation, &variant_names[i], &variant_names[j], s));
                }
            }
            let (per, overall) = purity_stats(&mats, args)?;
            purity.push(PurityStats {
                backbone: name.clone(),
                representation: representation.to_string(),
                k: args.k,
                per_variant: variant_names.iter().cloned().zip(per).collect(),
                overall,
            });
            let pooled = Tensor::cat(&mats, 0);
            let points = pca_2d(&pooled)
                .into_iter()
                .enumerate()
                .map(|(i, (x, y))| (x, y, i / used))
                .collect();
            projections.push(Projection {
                backbone: name.clone(),
                representation: representation.to_string(),
                method: "pca".to_string(),
                points,
            });
        }
    }
    for &variant in &Variant::ALL {
        for representation in REPRESENTATIONS {
            for a in 0..names.len() {
                for b in a + 1..names.len() {
                    let (Some(x), Some(y)) = (
                        collected.matrix(a, variant, representation),
                        collected.matrix(b, variant, representation),
                    ) else {
                        continue;
                    };
                    let s = pair_stats(&x, &y, args, max_dims)?;
                    between.push(to_pair(variant.name(), representation, &names[a], &names[b], s));
                }
            }
        }
    }
    let report = AnalysisReport {
        source: args.labels.display().to_string(),
        frames: used,
        backbones: names,
        variants: variant_names,
        representations: REPRESENTATIONS.iter().map(|s| s.to_string()).collect(),
        settings: serde_json::json!({
            "fill": params.fill,
            "centre_radius": params.centre_radius,
            "size": args.size,
            "k": args.k,
            "bootstrap": args.bootstrap,
            "seed": args.seed,
            "cca_max_dims": max_dims,
            "masks": if args.gt.is_some() { "ground truth" } else { "run instances" },
        }),
        within_backbone: within,
        between_backbones: between,
        purity,
        projections,
        examples,
    };
    write_atomic(&args.out.join("analysis.json"), &serde_json::to_vec_pretty(&report)?)?;
    write_atomic(&args.out.join("index.html"), render_analysis_html(&report).as_bytes())?;
    println!("{}", args.out.join("index.html").display());
    Ok(())
}
