//! The parameters of a segment run (`mrdino segment`): the flags resolved and checked before any input is read
//! ([`SegmentRequest`]), then with the loaded weights into the hashed [`SegmentParams`] that name the output
//! partition.
//!
//! The view and PAMR are part of the parameters. Their defaults (the square view at `input_px`, no PAMR) are left
//! out of the JSON, so a run with the defaults keeps the parameter hash of the earlier versions, which had only
//! those; a sliding view or PAMR appears in the JSON and gives its own partition.

use anyhow::Result;
use mrdino_datasets::{DatasetKind, Processing};
use mrdino_model::talk2dino::{PamrConfig, SegmentOptions, Talk2Dino, View, WeightsIdentity, LAMBDA_BG, TEMPLATES};
use serde::{Deserialize, Serialize};

use super::check::{Bound, Checks};
use super::talk2dino::class_list;
use crate::cli::segment::{SegmentArgs, ViewKind};

/// Flow of a segment run: none (recorded so that readers of a labels run's parameters see it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoFlow {
    pub backend: String,
}

/// What the flags ask for, checked before any input is read.
#[derive(Clone, Debug, PartialEq)]
pub struct SegmentRequest {
    pub dataset: DatasetKind,
    pub cameras: Vec<String>,
    pub processing: Processing,
    pub prompts: Vec<String>,
    pub view: ViewKind,
    pub pamr: bool,
    pub background_clean: bool,
    pub threshold: f64,
}

impl SegmentRequest {
    /// The checked request of `args`: the threshold a number in [0, 1], the prompts read.
    pub fn resolve(args: &SegmentArgs) -> Result<Self> {
        Checks::new()
            .float("threshold", args.threshold, Bound::Closed(0.0), Bound::Closed(1.0))
            .finish("segment parameters")?;
        let prompts = class_list("--prompt", &args.prompt, "--prompts-file", &args.prompts_file)?;
        let dataset = args.input.dataset;
        let processing = args
            .resize
            .map(|(width, height)| Processing::Resize { width, height })
            .unwrap_or_else(|| dataset.reference_processing());
        Ok(Self {
            dataset,
            cameras: args.input.cameras(),
            processing,
            prompts,
            view: args.view,
            pamr: args.pamr,
            background_clean: args.background_clean,
            threshold: args.threshold,
        })
    }
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
    /// The square input side, px (the sliding view's crop side).
    pub input_px: i64,
    pub background_clean: bool,
    pub lambda: f64,
    pub threshold: f64,
    pub flow: NoFlow,
    /// The sliding view with its window; absent = the square view at `input_px` (see the module docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<View>,
    /// PAMR's settings when on; absent = off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pamr: Option<PamrConfig>,
}

impl SegmentParams {
    /// The parameters of `request` with `model`'s weights and input size.
    pub fn new(request: &SegmentRequest, model: &Talk2Dino) -> Result<Self> {
        let input_px = model.input_px();
        let view = match request.view {
            ViewKind::Square => None,
            ViewKind::Sliding => Some(View::by_name(request.view.name(), input_px)?),
        };
        Ok(Self {
            job: "segment".into(),
            dataset: request.dataset,
            cameras: request.cameras.clone(),
            processing: request.processing,
            prompts: request.prompts.clone(),
            templates: TEMPLATES.iter().map(|s| s.to_string()).collect(),
            weights: model.weights(),
            input_px,
            background_clean: request.background_clean,
            lambda: LAMBDA_BG,
            threshold: request.threshold,
            flow: NoFlow { backend: "none".into() },
            view,
            pamr: request.pamr.then(PamrConfig::talk2dino),
        })
    }

    /// What `mrdino_model::talk2dino::segment` runs with.
    pub fn options(&self) -> SegmentOptions {
        SegmentOptions {
            view: self.view.unwrap_or(View::Square {
                input_px: self.input_px,
            }),
            background_clean: self.background_clean,
            pamr: self.pamr.clone(),
            bg_threshold: self.threshold,
        }
    }

    pub fn hash(&self) -> String {
        super::params_hash(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SegmentArgs,
    }

    fn args(extra: &[&str]) -> Result<SegmentArgs, clap::Error> {
        let base = [
            "segment",
            "--prompt",
            "car",
            "--out",
            "o",
            "--dataset",
            "frames",
            "--root",
            "r",
            "--backbone-weights",
            "b",
            "--text-weights",
            "t",
            "--psi-weights",
            "p",
        ];
        Cli::try_parse_from(base.iter().chain(extra)).map(|c| c.args)
    }

    #[test]
    fn the_threshold_is_a_number_in_the_unit_interval() {
        for bad in ["-1", "2", "1.0001"] {
            let err = SegmentRequest::resolve(&args(&["--threshold", bad]).unwrap())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("threshold = {}", bad.parse::<f64>().unwrap())),
                "{err}"
            );
            assert!(err.contains(">= 0 and <= 1"), "{err}");
        }
        for bad in ["nan", "inf", "x"] {
            let err = args(&["--threshold", bad]).err().unwrap();
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
            assert!(err.to_string().contains(bad), "{err}");
        }
        for good in ["0", "0.55", "1"] {
            let request = SegmentRequest::resolve(&args(&["--threshold", good]).unwrap()).unwrap();
            assert_eq!(request.threshold, good.parse::<f64>().unwrap());
        }
        assert!(args(&["--batch", "0"]).is_err());
    }

    #[test]
    fn defaults_leave_the_earlier_json_and_options_name_every_choice() {
        let request = SegmentRequest::resolve(&args(&["--view", "sliding", "--pamr"]).unwrap()).unwrap();
        assert_eq!((request.view, request.pamr), (ViewKind::Sliding, true));
        let request = SegmentRequest::resolve(&args(&[]).unwrap()).unwrap();
        assert_eq!(
            (request.view, request.pamr, request.threshold),
            (ViewKind::Square, false, 0.55)
        );
        let params = |view: Option<View>, pamr: Option<PamrConfig>| SegmentParams {
            job: "segment".into(),
            dataset: DatasetKind::Frames,
            cameras: Vec::new(),
            processing: Processing::Native,
            prompts: vec!["car".into()],
            templates: Vec::new(),
            weights: WeightsIdentity {
                backbone: "b".into(),
                backbone_sha256: "1".into(),
                text: "t".into(),
                text_sha256: "2".into(),
                psi_sha256: "3".into(),
                psi_variant: None,
            },
            input_px: 448,
            background_clean: false,
            lambda: LAMBDA_BG,
            threshold: 0.55,
            flow: NoFlow { backend: "none".into() },
            view,
            pamr,
        };
        let square = params(None, None);
        let json = serde_json::to_value(&square).unwrap();
        assert!(json.get("view").is_none() && json.get("pamr").is_none(), "{json}");
        assert_eq!(square.options().view, View::Square { input_px: 448 });
        let sliding = params(
            Some(View::by_name("sliding", 448).unwrap()),
            Some(PamrConfig::talk2dino()),
        );
        assert_ne!(sliding.hash(), square.hash());
        assert_eq!(sliding.options().pamr, Some(PamrConfig::talk2dino()));
        let back: SegmentParams = serde_json::from_value(serde_json::to_value(&sliding).unwrap()).unwrap();
        assert_eq!(back, sliding);
        assert_eq!(serde_json::from_value::<SegmentParams>(json).unwrap(), square);
    }
}
