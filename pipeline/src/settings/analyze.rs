//! The parameters of `mrdino analyze`, resolved from its flags and checked before any work: the flags alone
//! ([`AnalyzeSettings::resolve`]), then against the frames sampled ([`AnalyzeSettings::for_frames`]), since
//! k-NN purity needs more points than neighbours and CCA with as many dimensions as frames is trivially 1.

use anyhow::Result;
use mrdino_model::similarity::BootstrapSettings;
use mrdino_model::variants::{Variant, VariantParams};

use super::check::Checks;
use crate::cli::analyze::AnalyzeArgs;

/// Frames the statistics need at least (debiased CKA needs 4).
pub const MIN_FRAMES: usize = 4;

/// The checked parameters of an analysis.
#[derive(Clone, Debug, PartialEq)]
pub struct AnalyzeSettings {
    pub variants: VariantParams,
    /// Requested square input side, px (each backbone rounds it down to its patch).
    pub size_px: i64,
    pub k: usize,
    pub bootstrap: BootstrapSettings,
    pub cca_max_dims: Option<usize>,
    /// Frames to sample.
    pub frames: usize,
    pub batch: usize,
    pub examples: usize,
    /// Masks from ground truth (else the run's instances).
    pub ground_truth: bool,
}

impl AnalyzeSettings {
    /// The settings of `args`; every meaningless value is refused, named.
    pub fn resolve(args: &AnalyzeArgs) -> Result<Self> {
        let mut checks = Checks::new();
        checks
            .int("--frames", args.frames, MIN_FRAMES, None)
            .positive("--centre-radius", args.centre_radius)
            .require(args.backbones.len() == args.backbone_weights.len(), || {
                format!(
                    "{} --backbone but {} --backbone-weights: give each backbone its weights, in order",
                    args.backbones.len(),
                    args.backbone_weights.len()
                )
            });
        for (i, name) in args.backbones.iter().enumerate() {
            checks.require(!args.backbones[..i].contains(name), || {
                format!("--backbone {name} is given twice")
            });
        }
        checks.require(i64::try_from(args.size).is_ok(), || {
            format!("--size {} is too large", args.size)
        });
        checks.finish("analysis parameters")?;
        Ok(Self {
            variants: VariantParams {
                fill: args.fill,
                centre_radius: args.centre_radius,
            },
            size_px: i64::try_from(args.size).unwrap_or(i64::MAX),
            k: args.k,
            bootstrap: BootstrapSettings {
                resamples: args.bootstrap,
                seed: args.seed,
            },
            cca_max_dims: args.cca_max_dims,
            frames: args.frames,
            batch: args.batch,
            examples: args.examples,
            ground_truth: args.gt.is_some(),
        })
    }

    /// The CCA dimensions for `frames` sampled frames (`--cca-max-dims`, default ⌊frames/10⌋, at least 1), after
    /// refusing the values those frames make meaningless: k not below the points of k-NN purity (frames × 5
    /// variants), CCA dimensions not below the frames.
    pub fn for_frames(&self, frames: usize) -> Result<usize> {
        let points = frames * Variant::ALL.len();
        let max_dims = self.cca_max_dims.unwrap_or(frames / 10).max(1);
        let mut checks = Checks::new();
        checks
            .require(self.k < points, || {
                format!(
                    "--k {} needs more points than neighbours: {frames} frames × {} variants = {points} points",
                    self.k,
                    Variant::ALL.len()
                )
            })
            .require(max_dims < frames, || {
                format!("--cca-max-dims {max_dims} must be below the {frames} frames (CCA would be trivially 1)")
            });
        checks.finish("analysis parameters for these frames")?;
        Ok(max_dims)
    }

    /// The settings as the report records them.
    pub fn record(&self, max_dims: usize) -> serde_json::Value {
        serde_json::json!({
            "fill": self.variants.fill,
            "centre_radius": self.variants.centre_radius,
            "size": self.size_px,
            "k": self.k,
            "bootstrap": self.bootstrap.resamples,
            "seed": self.bootstrap.seed,
            "cca_max_dims": max_dims,
            "masks": if self.ground_truth { "ground truth" } else { "run instances" },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: AnalyzeArgs,
    }

    fn args(extra: &[&str]) -> Result<AnalyzeArgs, clap::Error> {
        let base = [
            "analyze",
            "--labels",
            "r",
            "--out",
            "o",
            "--backbone",
            "a",
            "--backbone-weights",
            "w",
        ];
        Cli::try_parse_from(base.iter().chain(extra)).map(|c| c.args)
    }

    fn refusal(extra: &[&str]) -> String {
        match args(extra) {
            Err(e) => e.to_string(),
            Ok(a) => AnalyzeSettings::resolve(&a)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default(),
        }
    }

    #[test]
    fn meaningless_flags_are_refused_naming_the_value() {
        assert!(refusal(&["--frames", "3"]).contains("--frames = 3 must be at least 4"));
        assert!(refusal(&["--frames", "0"]).contains("must be at least 1"));
        assert!(refusal(&["--centre-radius", "0"]).contains("--centre-radius = 0"));
        assert!(refusal(&["--centre-radius", "nan"]).contains("nan"));
        assert!(refusal(&["--centre-radius", "-1"]).contains("--centre-radius = -1"));
        for flag in ["--k", "--bootstrap", "--batch", "--size", "--cca-max-dims"] {
            assert!(refusal(&[flag, "0"]).contains("must be at least 1"), "{flag}");
        }
        assert!(refusal(&["--fill", "blur:-2"]).contains("blur:-2"));
        assert!(refusal(&["--backbone", "b"]).contains("2 --backbone but 1 --backbone-weights"));
        let twice = refusal(&["--backbone", "a", "--backbone-weights", "w2"]);
        assert!(twice.contains("--backbone a is given twice"), "{twice}");
        assert_eq!(refusal(&[]), "");
    }

    #[test]
    fn k_and_cca_dimensions_must_fit_the_frames() {
        let settings = AnalyzeSettings::resolve(&args(&["--k", "1000"]).unwrap()).unwrap();
        let e = settings.for_frames(6).unwrap_err().to_string();
        assert!(
            e.contains("--k 1000") && e.contains("6 frames × 5 variants = 30 points"),
            "{e}"
        );
        let settings = AnalyzeSettings::resolve(&args(&["--k", "29"]).unwrap()).unwrap();
        assert_eq!(settings.for_frames(6).unwrap(), 1);
        let settings = AnalyzeSettings::resolve(&args(&["--cca-max-dims", "12"]).unwrap()).unwrap();
        assert!(settings
            .for_frames(12)
            .unwrap_err()
            .to_string()
            .contains("--cca-max-dims 12"));
        assert_eq!(settings.for_frames(13).unwrap(), 12);
        assert_eq!(
            AnalyzeSettings::resolve(&args(&[]).unwrap())
                .unwrap()
                .for_frames(200)
                .unwrap(),
            20
        );
    }
}
