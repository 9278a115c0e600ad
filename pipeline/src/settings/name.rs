//! The parameters of a names job (`mrdino name`): the source run and the class list, resolved from the flags
//! before any input is read ([`NameRequest`]), then with the loaded weights into the hashed [`NameParams`] that
//! name the output partition.

use std::path::PathBuf;

use anyhow::{bail, Result};
use mrdino_model::talk2dino::{Talk2Dino, WeightsIdentity, TEMPLATES};
use serde::{Deserialize, Serialize};

use super::talk2dino::class_list;
use crate::cli::name::NameArgs;

/// The class list used when neither `--classes` nor `--classes-file` is given: road users that move, and the
/// static scene around them (so that a mask on a building or on the road can say so instead of being forced into a
/// road-user class).
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

/// What the flags ask for, checked before any input is read.
#[derive(Clone, Debug, PartialEq)]
pub struct NameRequest {
    /// `labels` or `predictions`.
    pub source_kind: &'static str,
    pub source: PathBuf,
    pub classes: Vec<String>,
}

impl NameRequest {
    /// The source run and the class list of `args`.
    pub fn resolve(args: &NameArgs) -> Result<Self> {
        let (source_kind, source) = match (&args.labels, &args.predictions) {
            (Some(path), None) => ("labels", path.clone()),
            (None, Some(path)) => ("predictions", path.clone()),
            _ => bail!("give exactly one of --labels RUN and --predictions PRED"),
        };
        let classes = if args.classes.is_empty() && args.classes_file.is_empty() {
            DRIVING_CLASSES.iter().map(|s| s.to_string()).collect()
        } else {
            class_list("--classes", &args.classes, "--classes-file", &args.classes_file)?
        };
        Ok(Self {
            source_kind,
            source,
            classes,
        })
    }
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
    /// The parameters of `request` on the source partition `source_params_hash` with `model`'s weights and
    /// input size.
    pub fn new(request: &NameRequest, source_params_hash: &str, model: &Talk2Dino) -> Self {
        Self {
            source: request.source_kind.to_string(),
            source_params_hash: source_params_hash.to_string(),
            weights: model.weights(),
            classes: request.classes.clone(),
            templates: TEMPLATES.iter().map(|s| s.to_string()).collect(),
            input_px: model.input_px(),
            resize: "bilinear, antialias, align_corners=False, on the float image (not rounded)".into(),
            mask_to_patches: "exact area fraction through the frames' resize/crop provenance".into(),
        }
    }

    pub fn hash(&self) -> String {
        super::params_hash(self).unwrap_or_default()
    }
}
