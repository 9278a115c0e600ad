//! How `mrdino eval` scores a run: the evaluation resolution and, for predictions, the rule for the first
//! predicted id and whether the canvas goes back to the original frame (see `crate::steps::eval`'s docs and
//! `mrdino_stages::metrics`).

use mrdino_stages::ground_truth::GtFormat;
use mrdino_stages::metrics::{EvalPreset, PredictionRule};
use serde::Serialize;

use super::infer::MODEL_STAGE2;

/// How the predictions of a run are scored: the rule for the first predicted id and whether the canvas is
/// compared as it is or mapped back to the original frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PredictionScoring {
    pub rule: PredictionRule,
    /// The canvas is mapped back to the original frame before the comparison.
    pub to_original: bool,
}

impl PredictionScoring {
    /// `model_kind` is the prediction run's (`stage2` or `baseline`), `None` for labels. A stage-2 model
    /// discards the first remaining id as the reference's `combination_num` does, except against MOVi-E
    /// ground truth (the reference's MOVi-E configs keep every id); kitti and tri-pd ground truth are compared
    /// on the canvas at the reference's resolutions, the other formats at the original frame.
    pub fn new(model_kind: Option<&str>, format: GtFormat) -> Self {
        match model_kind {
            None => Self {
                rule: PredictionRule::DiscardFirst,
                to_original: false,
            },
            Some(kind) => Self {
                rule: if kind == MODEL_STAGE2 && format != GtFormat::Kubric {
                    PredictionRule::DiscardFirst
                } else {
                    PredictionRule::KeepAll
                },
                to_original: !matches!(format, GtFormat::Kitti | GtFormat::TriPd),
            },
        }
    }

    /// The evaluation resolution when `--resolution` is not given.
    pub fn default_resolution(model_kind: Option<&str>, format: GtFormat) -> EvalPreset {
        match (model_kind, format) {
            (Some(_), GtFormat::Kitti) => EvalPreset::Kitti,
            (Some(_), GtFormat::TriPd) => EvalPreset::TriPd,
            _ => EvalPreset::Native,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::infer::MODEL_BASELINE;

    #[test]
    fn movi_and_label_runs_use_their_own_rules_and_resolutions() {
        assert_eq!(
            PredictionScoring::new(Some(MODEL_STAGE2), GtFormat::Kubric).rule,
            PredictionRule::KeepAll
        );
        let labels = PredictionScoring::new(None, GtFormat::Synth);
        assert_eq!((labels.rule, labels.to_original), (PredictionRule::DiscardFirst, false));
        assert!(!PredictionScoring::new(Some(MODEL_STAGE2), GtFormat::Kitti).to_original);
        assert_eq!(
            PredictionScoring::default_resolution(Some(MODEL_STAGE2), GtFormat::Kitti),
            EvalPreset::Kitti
        );
        assert_eq!(
            PredictionScoring::default_resolution(Some(MODEL_BASELINE), GtFormat::TriPd),
            EvalPreset::TriPd
        );
        assert_eq!(
            PredictionScoring::default_resolution(None, GtFormat::Kitti),
            EvalPreset::Native
        );
    }
}
