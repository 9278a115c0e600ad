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
//!
//! Refused before any work (`crate::settings::analyze`): meaningless flags, a run without any instance when the
//! masks are the run's (every foreground would be empty), fewer than 4 frames, `--k` not below the points of
//! k-NN purity (frames × 5 variants), `--cca-max-dims` not below the frames, and a report directory that is,
//! lies inside or contains an input (the run's tables and bookkeeping, `--gt`, the weights, the source
//! dataset). A statistic undefined on the frames analysed (a side without variance, e.g. the foreground
//! variant when no sampled frame has an object in the ground truth) is reported as not computable with its
//! reason, in the JSON and on the page; no NaN is written.
//!
//! Stopping: SIGINT/SIGTERM or a spent `--time-budget` stops between frames; nothing is written beyond the
//! example images, the command exits with code 4, and a rerun starts the analysis over (the representations
//! are not kept).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use mrdino_model::representations::{AnalysisBackbone, Representations, REPRESENTATIONS};
use mrdino_model::similarity::{pair_estimates, pca_2d, purity_estimates, Estimate, SimilarityError};
use mrdino_model::variants::{foreground_from_ids, image_from_rgb, make_variant, to_rgb_bytes, Variant};
use mrdino_outputs::analysis_report::{
    render_analysis_html, AnalysisReport, Example, Interval, PairStats, Projection, PurityStats, Statistic,
};
use mrdino_outputs::flowviz::write_rgb_png;
use mrdino_outputs::layout::LABELS_DATA_DIRS;
use mrdino_outputs::runs::{sample_frames, RunTables};
use mrdino_outputs::{write_atomic, FrameRow};
use mrdino_stages::ground_truth::GroundTruth;
use mrdino_stages::metrics::{instance_map, LabelMap};
use tch::Tensor;

use crate::cli::analyze::AnalyzeArgs;
use crate::engine::paths::{check_outputs, job_inputs};
use crate::engine::progress::print_stdout;
use crate::engine::runs::{read_label_tables, source_sequences};
use crate::engine::stop::{StopHandle, EXIT_STOPPED};
use crate::settings::analyze::{AnalyzeSettings, MIN_FRAMES};

/// A bootstrap estimate as the report shows it, or why the statistic cannot be computed; an error that is not
/// about these frames (inputs that do not fit the statistic) is returned.
fn statistic(estimate: Result<Estimate, SimilarityError>) -> Result<Statistic> {
    match estimate {
        Ok(e) => Ok(Statistic::Computed(Interval {
            value: e.value,
            ci_low: e.ci_low,
            ci_high: e.ci_high,
            undefined_resamples: (e.undefined_resamples > 0).then_some(e.undefined_resamples),
        })),
        Err(e) if e.is_undefined() => Ok(Statistic::NotComputable {
            not_computable: e.to_string(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// The four statistics of one pair: `shared` is what both sides share (a backbone or a variant), `sides` the
/// names of the two sides.
fn pair_stats(
    shared: &str,
    representation: &str,
    sides: [&str; 2],
    (x, y): (&Tensor, &Tensor),
    (settings, max_dims): (&AnalyzeSettings, usize),
) -> Result<PairStats> {
    let e = pair_estimates(x, y, sides, settings.bootstrap, max_dims);
    Ok(PairStats {
        shared: shared.to_string(),
        representation: representation.to_string(),
        a: sides[0].to_string(),
        b: sides[1].to_string(),
        cka: statistic(e.cka)?,
        cka_debiased: statistic(e.cka_debiased)?,
        svcca: statistic(e.svcca)?,
        pwcca: statistic(e.pwcca)?,
    })
}

/// k-NN purity of one backbone's representation; all not computable (with the reason) when undefined.
fn purity_stats(
    backbone: &str,
    representation: &str,
    mats: &[Tensor],
    settings: &AnalyzeSettings,
) -> Result<PurityStats> {
    let names = Variant::ALL.iter().map(|v| v.name().to_string());
    let (per_variant, overall) = match purity_estimates(mats, settings.k, settings.bootstrap) {
        Ok(p) => (
            names
                .zip(p.per_label)
                .map(|(n, e)| Ok((n, statistic(Ok(e))?)))
                .collect::<Result<Vec<_>>>()?,
            statistic(Ok(p.overall))?,
        ),
        Err(e) => {
            let gone = statistic(Err(e))?;
            (names.map(|n| (n, gone.clone())).collect(), gone)
        }
    };
    Ok(PurityStats {
        backbone: backbone.to_string(),
        representation: representation.to_string(),
        k: settings.k,
        per_variant,
        overall,
    })
}

/// Statistics of the pooled representations of `frames` frames.
struct Statistics {
    within: Vec<PairStats>,
    between: Vec<PairStats>,
    purity: Vec<PurityStats>,
    projections: Vec<Projection>,
}

/// Within-backbone pairs, purity and projections of every backbone.
fn within_backbones(
    names: &[String],
    collected: &Representations,
    (settings, max_dims): (&AnalyzeSettings, usize),
    frames: usize,
    stats: &mut Statistics,
) -> Result<()> {
    for (b, name) in names.iter().enumerate() {
        for representation in REPRESENTATIONS {
            let mats: Vec<Tensor> = Variant::ALL
                .iter()
                .filter_map(|&v| collected.matrix(b, v, representation))
                .collect::<Result<_, _>>()?;
            if mats.len() != Variant::ALL.len() {
                continue;
            }
            for i in 0..mats.len() {
                for j in i + 1..mats.len() {
                    let sides = [Variant::ALL[i].name(), Variant::ALL[j].name()];
                    let pair = (&mats[i], &mats[j]);
                    stats
                        .within
                        .push(pair_stats(name, representation, sides, pair, (settings, max_dims))?);
                }
            }
            stats.purity.push(purity_stats(name, representation, &mats, settings)?);
            let points = pca_2d(&Tensor::f_cat(&mats, 0)?)?
                .into_iter()
                .enumerate()
                .map(|(i, (x, y))| (x, y, i / frames))
                .collect();
            stats.projections.push(Projection {
                backbone: name.clone(),
                representation: representation.to_string(),
                method: "pca".to_string(),
                points,
            });
        }
    }
    Ok(())
}

/// Pairs of backbones for every variant and representation.
fn between_backbones(
    names: &[String],
    collected: &Representations,
    scope: (&AnalyzeSettings, usize),
    stats: &mut Statistics,
) -> Result<()> {
    for variant in Variant::ALL {
        for representation in REPRESENTATIONS {
            for a in 0..names.len() {
                for b in a + 1..names.len() {
                    let (Some(x), Some(y)) = (
                        collected.matrix(a, variant, representation),
                        collected.matrix(b, variant, representation),
                    ) else {
                        continue;
                    };
                    let (x, y) = (x?, y?);
                    let sides = [names[a].as_str(), names[b].as_str()];
                    stats
                        .between
                        .push(pair_stats(variant.name(), representation, sides, (&x, &y), scope)?);
                }
            }
        }
    }
    Ok(())
}

/// Where the masks come from: the run's instances or the ground truth.
enum Masks<'t> {
    Instances(BTreeMap<(&'t str, u32), Vec<&'t mrdino_outputs::InstanceRow>>),
    GroundTruth(GroundTruth),
}

impl<'t> Masks<'t> {
    fn new(args: &AnalyzeArgs, tables: &'t RunTables) -> Result<Self> {
        if let (Some(dir), Some(format)) = (&args.gt, args.gt_format) {
            return Ok(Self::GroundTruth(GroundTruth::new(dir, format)?));
        }
        let mut by_frame: BTreeMap<(&str, u32), Vec<_>> = BTreeMap::new();
        for inst in &tables.instances {
            by_frame
                .entry((inst.sequence_id.as_str(), inst.frame_index))
                .or_default()
                .push(inst);
        }
        Ok(Self::Instances(by_frame))
    }

    fn mask(&mut self, frame: &FrameRow) -> Result<LabelMap> {
        match self {
            Self::GroundTruth(gt) => gt.load(frame)?.with_context(|| {
                format!(
                    "no ground truth for {} frame {} ({})",
                    frame.sequence_id,
                    frame.frame_name,
                    gt.file(frame).display()
                )
            }),
            Self::Instances(by_frame) => {
                let rows = by_frame
                    .get(&(frame.sequence_id.as_str(), frame.frame_index))
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                Ok(instance_map(frame, rows)?)
            }
        }
    }
}

/// The backbones of the analysis, loaded on `device`, with their names.
struct Backbones {
    names: Vec<String>,
    loaded: Vec<AnalysisBackbone>,
}

impl Backbones {
    fn load(args: &AnalyzeArgs, device: tch::Device) -> Result<Self> {
        let mut loaded = Vec::new();
        for (name, weights) in args.backbones.iter().zip(&args.backbone_weights) {
            let backbone = AnalysisBackbone::load(name, weights, device)
                .with_context(|| format!("cannot load --backbone {name} from {}", weights.display()))?;
            loaded.push(backbone);
        }
        Ok(Self {
            names: args.backbones.clone(),
            loaded,
        })
    }
}

/// Streams the sampled frames through the backbones: representations and example images.
struct Collector<'a> {
    settings: &'a AnalyzeSettings,
    backbones: &'a Backbones,
    examples_dir: &'a Path,
    stop: &'a StopHandle,
    collected: Representations,
    examples: Vec<Example>,
    pending: Vec<(Tensor, Tensor)>,
    used: usize,
}

impl Collector<'_> {
    fn flush(&mut self) -> Result<()> {
        let names = &self.backbones.names;
        let (params, size) = (&self.settings.variants, self.settings.size_px);
        self.collected
            .add_batch(&self.pending, &self.backbones.loaded, names, params, size)?;
        self.pending.clear();
        Ok(())
    }

    /// Writes the variant images of one frame when examples are still wanted.
    fn example(&mut self, row: &FrameRow, image: &Tensor, fg: &Tensor, (h, w): (usize, usize)) -> Result<()> {
        if self.examples.len() >= self.settings.examples {
            return Ok(());
        }
        let mut images = Vec::new();
        for variant in Variant::ALL {
            let name = format!("{}_{}.png", self.examples.len(), variant.name());
            let rgb = to_rgb_bytes(&make_variant(image, fg, variant, &self.settings.variants)?)?;
            write_rgb_png(&self.examples_dir.join(&name), &rgb, h, w)?;
            images.push((variant.name().to_string(), format!("examples/{name}")));
        }
        self.examples.push(Example {
            frame: format!("{} / {}", row.sequence_id, row.frame_name),
            images,
        });
        Ok(())
    }

    /// Adds one frame; its mask must have the frame's size.
    fn add(&mut self, row: &FrameRow, rgb: &[u8], (h, w): (usize, usize), mask: &LabelMap) -> Result<()> {
        if (mask.height, mask.width) != (h, w) {
            bail!(
                "{} frame {}: a {}x{} mask for a {h}x{w} frame",
                row.sequence_id,
                row.frame_name,
                mask.height,
                mask.width
            );
        }
        let image = image_from_rgb(rgb, h, w)?;
        let fg = foreground_from_ids(&mask.labels, h, w)?;
        self.example(row, &image, &fg, (h, w))?;
        self.pending.push((image, fg));
        self.used += 1;
        if self.pending.len() == self.settings.batch {
            self.flush()?;
        }
        Ok(())
    }
}

/// Feeds every sampled frame through the collector, sequence by sequence; `false` when stopped.
fn collect(
    collector: &mut Collector<'_>,
    tables: &RunTables,
    sampled: &[FrameRow],
    masks: &mut Masks<'_>,
) -> Result<bool> {
    let mut by_sequence: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
    for f in sampled {
        by_sequence
            .entry(&f.sequence_id)
            .or_default()
            .insert(f.frame_index as usize);
    }
    for sequence in &source_sequences(tables, None, None, None)? {
        let Some(indices) = by_sequence.get(sequence.id.as_str()) else {
            continue;
        };
        let decoded = sequence.decode_frames(indices)?;
        for row in sampled.iter().filter(|f| f.sequence_id == sequence.id) {
            if collector.stop.requested() {
                return Ok(false);
            }
            let frame = decoded.get(&(row.frame_index as usize)).with_context(|| {
                format!(
                    "{}: frame {} could not be re-read from the source",
                    sequence.id, row.frame_name
                )
            })?;
            let mask = masks.mask(row)?;
            let size = (frame.image.height, frame.image.width);
            collector.add(row, &frame.image.data, size, &mask)?;
        }
    }
    collector.flush()?;
    Ok(!collector.stop.requested())
}

/// Refuses a report directory that is, lies inside or contains an input.
fn check_paths(args: &AnalyzeArgs, tables: &RunTables) -> Result<()> {
    let run = job_inputs(&args.labels, LABELS_DATA_DIRS);
    let mut inputs: Vec<(&str, &Path)> = run.iter().map(|p| ("--labels", p.as_path())).collect();
    if let Some(gt) = &args.gt {
        inputs.push(("--gt", gt));
    }
    inputs.extend(
        args.backbone_weights
            .iter()
            .map(|w| ("--backbone-weights", w.as_path())),
    );
    if !tables.dataset_root.as_os_str().is_empty() {
        inputs.push(("the source dataset", &tables.dataset_root));
    }
    check_outputs(&inputs, &[("--out", &args.out)])
}

/// The frames to analyse, after refusing what would make the statistics meaningless; with the CCA dimensions.
fn sample(args: &AnalyzeArgs, settings: &AnalyzeSettings, tables: &RunTables) -> Result<(Vec<FrameRow>, usize)> {
    if !settings.ground_truth && tables.instances.is_empty() {
        bail!(
            "{} (params={}) has no instances: the foreground of every frame would be empty, so the analysis \
             could compute nothing; analyse a run with objects, or give --gt",
            args.labels.display(),
            tables.layout.params_hash
        );
    }
    let sampled: Vec<FrameRow> = sample_frames(&tables.frames, settings.frames)
        .into_iter()
        .cloned()
        .collect();
    if sampled.len() < MIN_FRAMES {
        bail!(
            "{} has {} labelled frames with objects; the analysis needs at least {MIN_FRAMES}",
            args.labels.display(),
            sampled.len()
        );
    }
    let max_dims = settings.for_frames(sampled.len())?;
    Ok((sampled, max_dims))
}

/// `mrdino analyze`: 0 with the report written, 4 when stopped (a rerun starts over).
pub fn run(args: &AnalyzeArgs, stop: &StopHandle) -> Result<ExitCode> {
    let settings = AnalyzeSettings::resolve(args)?;
    let tables = read_label_tables(&args.labels, args.params.as_deref())?;
    check_paths(args, &tables)?;
    let (sampled, max_dims) = sample(args, &settings, &tables)?;
    let mut masks = Masks::new(args, &tables)?;
    let backbones = Backbones::load(args, args.device.device()?)?;
    let examples_dir = args.out.join("examples");
    std::fs::create_dir_all(&examples_dir).with_context(|| format!("cannot create {}", examples_dir.display()))?;
    let stop = stop.with_budget(args.run.time_budget);
    let mut collector = Collector {
        settings: &settings,
        backbones: &backbones,
        examples_dir: &examples_dir,
        stop: &stop,
        collected: Representations::default(),
        examples: Vec::new(),
        pending: Vec::new(),
        used: 0,
    };
    if !collect(&mut collector, &tables, &sampled, &mut masks)? {
        eprintln!(
            "analyze: stopped after {} of {} frames; run the same command again to start over",
            collector.used,
            sampled.len()
        );
        return Ok(ExitCode::from(EXIT_STOPPED));
    }
    let (used, collected, examples) = (collector.used, collector.collected, collector.examples);
    if !args.run.quiet {
        eprintln!("analysed {used} frames with {} backbones", backbones.names.len());
    }
    let mut stats = Statistics {
        within: Vec::new(),
        between: Vec::new(),
        purity: Vec::new(),
        projections: Vec::new(),
    };
    within_backbones(&backbones.names, &collected, (&settings, max_dims), used, &mut stats)?;
    between_backbones(&backbones.names, &collected, (&settings, max_dims), &mut stats)?;
    let report = AnalysisReport {
        source: args.labels.display().to_string(),
        frames: used,
        backbones: backbones.names.clone(),
        variants: Variant::ALL.iter().map(|v| v.name().to_string()).collect(),
        representations: REPRESENTATIONS.iter().map(|s| s.to_string()).collect(),
        settings: settings.record(max_dims),
        within_backbone: stats.within,
        between_backbones: stats.between,
        purity: stats.purity,
        projections: stats.projections,
        examples,
    };
    write_atomic(&args.out.join("analysis.json"), &serde_json::to_vec_pretty(&report)?)?;
    write_atomic(&args.out.join("index.html"), render_analysis_html(&report).as_bytes())?;
    print_stdout(&format!("{}\n", args.out.join("index.html").display()))?;
    Ok(ExitCode::SUCCESS)
}
