//! Parameters: presets, resolution and hashing.
//!
//! Two phases, as in ripgrep's low/high args: the command line (and an optional JSON config file) are first
//! parsed into raw values, then resolved into one validated [`Params`] before any input is read or output
//! written. Precedence: dataset preset < `--config FILE` < explicit flags. The resolved parameters, serialised
//! as canonical JSON, are hashed (SHA-256, first 16 hex digits); the hash names the output partition
//! (`params=<hash>`) so labels made with different parameters are never mixed.

use mrdino_datasets::{DatasetKind, Processing};
use mrdino_stages::instances::InstanceParams;
use mrdino_stages::select::SelectParams;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The threshold presets of the reference scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// `preprocess_kitti_smurf.py`: corner threshold 1.7 px.
    Kitti,
    /// `preprocess_pd_smurf.py`: corner threshold 0.5 px.
    TriPd,
    /// `preprocess_movie_smurf.py`: corner threshold 1.7 px.
    MoviE,
    /// For frames and videos: the KITTI values.
    Custom,
}

impl Preset {
    pub fn for_dataset(kind: DatasetKind) -> Self {
        match kind {
            DatasetKind::Kitti => Preset::Kitti,
            DatasetKind::TriPd => Preset::TriPd,
            DatasetKind::MoviE => Preset::MoviE,
            DatasetKind::Frames | DatasetKind::Video => Preset::Custom,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Preset::Kitti => "kitti",
            Preset::TriPd => "tri-pd",
            Preset::MoviE => "movi-e",
            Preset::Custom => "custom",
        }
    }

    pub fn select(self) -> SelectParams {
        SelectParams::reference(if self == Preset::TriPd { 0.5 } else { 1.7 })
    }

    /// Foreground and instance parameters: the same in every reference script.
    pub fn instances(self) -> InstanceParams {
        InstanceParams::reference()
    }
}

/// Which flow backend, with its settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "kebab-case")]
pub enum FlowParams {
    Dis {
        preset: String,
    },
    Farneback,
    Import,
    Kubric,
    /// A RAFT-family network (`smurf`, `raft-large`, `raft-small`); the weights are identified by their identity
    /// (`mrdino_outputs::weights_id`; the field keeps its name), so labels from different checkpoints never
    /// share a partition.
    Network {
        model: String,
        weights_sha256: String,
        iterations: usize,
        dtype: String,
    },
}

impl FlowParams {
    pub fn name(&self) -> String {
        match self {
            FlowParams::Dis { preset } => format!("dis-{preset}"),
            FlowParams::Farneback => "farneback".into(),
            FlowParams::Import => "import".into(),
            FlowParams::Kubric => "kubric".into(),
            FlowParams::Network { model, .. } => model.clone(),
        }
    }

    /// The recorded identity of the network's weights (`None` without a network).
    pub fn weights_id(&self) -> Option<&str> {
        match self {
            FlowParams::Network { weights_sha256, .. } => Some(weights_sha256),
            _ => None,
        }
    }
}

/// Everything that determines the rows of the output, and nothing else (paths, threads and progress
/// options do not change rows and are not part of the hash).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Params {
    pub dataset: DatasetKind,
    pub preset: Preset,
    pub cameras: Vec<String>,
    pub processing: Processing,
    pub flow: FlowParams,
    pub select: SelectParams,
    pub instances: InstanceParams,
    /// Exclude the 142 KITTI raw frames that are KITTI instance-segmentation benchmark images (both cameras;
    /// the reference removes them for `image_02` only). On for the `kitti` preset.
    pub exclude_eval_overlap: bool,
}

/// Optional overrides from a JSON config file; absent fields keep the preset's value.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub preset: Option<Preset>,
    pub corner_fraction: Option<f64>,
    pub corner_threshold_px: Option<f64>,
    pub required_corners: Option<usize>,
    pub min_run_frames: Option<usize>,
    pub fg_threshold_px: Option<f64>,
    /// `null` turns rounding off; absent keeps the preset.
    #[serde(default, deserialize_with = "present")]
    pub fg_round_decimals: Option<Option<u32>>,
    pub min_fg_fraction: Option<f64>,
    pub min_segment_frames: Option<usize>,
    pub edge_threshold: Option<f32>,
    pub erosion_radius_px: Option<usize>,
    pub spatial_weight: Option<f64>,
    pub direction_weight: Option<f64>,
    pub direction_bins: Option<usize>,
    pub min_cluster_size: Option<usize>,
    pub min_samples: Option<usize>,
    pub min_instance_px: Option<usize>,
}

/// Deserialises a field that is present (possibly `null`) as `Some(value)`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

impl ConfigFile {
    /// Applies the overrides present in `self` onto `select` and `instances`.
    pub fn apply(&self, select: &mut SelectParams, instances: &mut InstanceParams) {
        fn set<T: Clone>(target: &mut T, value: &Option<T>) {
            if let Some(v) = value {
                *target = v.clone();
            }
        }
        set(&mut select.corner_fraction, &self.corner_fraction);
        set(&mut select.corner_threshold_px, &self.corner_threshold_px);
        set(&mut select.required_corners, &self.required_corners);
        set(&mut select.min_run_frames, &self.min_run_frames);
        set(&mut instances.fg_threshold_px, &self.fg_threshold_px);
        set(&mut instances.fg_round_decimals, &self.fg_round_decimals);
        set(&mut instances.min_fg_fraction, &self.min_fg_fraction);
        set(&mut instances.min_segment_frames, &self.min_segment_frames);
        set(&mut instances.edge_threshold, &self.edge_threshold);
        set(&mut instances.erosion_radius_px, &self.erosion_radius_px);
        set(&mut instances.spatial_weight, &self.spatial_weight);
        set(&mut instances.direction_weight, &self.direction_weight);
        set(&mut instances.direction_bins, &self.direction_bins);
        set(&mut instances.min_cluster_size, &self.min_cluster_size);
        set(&mut instances.min_samples, &self.min_samples);
        set(&mut instances.min_instance_px, &self.min_instance_px);
    }
}

impl Params {
    /// Checks ranges that would otherwise fail deep inside a stage.
    pub fn validate(&self) -> Result<(), String> {
        let s = &self.select;
        let i = &self.instances;
        let checks: [(bool, &str); 9] = [
            (
                s.corner_fraction > 0.0 && s.corner_fraction <= 0.5,
                "corner_fraction must be in (0, 0.5]",
            ),
            ((1..=4).contains(&s.required_corners), "required_corners must be 1..4"),
            (s.min_run_frames >= 1, "min_run_frames must be at least 1"),
            (
                i.min_fg_fraction >= 0.0 && i.min_fg_fraction <= 1.0,
                "min_fg_fraction must be in [0, 1]",
            ),
            (i.direction_bins >= 1, "direction_bins must be at least 1"),
            (i.min_cluster_size >= 2, "min_cluster_size must be at least 2"),
            (i.min_samples >= 1, "min_samples must be at least 1"),
            (i.erosion_radius_px <= 200, "erosion_radius_px must be at most 200"),
            (
                i.fg_round_decimals.is_none_or(|d| d <= 9),
                "fg_round_decimals must be at most 9",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, message)) => Err((*message).to_string()),
            None => Ok(()),
        }
    }

    /// Canonical JSON of the parameters.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("parameters serialise")
    }

    /// First 16 hex digits of the SHA-256 of the canonical JSON.
    pub fn hash(&self) -> String {
        let digest = Sha256::digest(self.to_json().as_bytes());
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(dataset: DatasetKind) -> Params {
        let preset = Preset::for_dataset(dataset);
        Params {
            dataset,
            preset,
            cameras: dataset.default_cameras(),
            processing: dataset.reference_processing(),
            flow: FlowParams::Dis {
                preset: "medium".into(),
            },
            select: preset.select(),
            instances: preset.instances(),
            exclude_eval_overlap: preset == Preset::Kitti,
        }
    }

    #[test]
    fn presets_carry_the_reference_thresholds() {
        assert_eq!(Preset::Kitti.select().corner_threshold_px, 1.7);
        assert_eq!(Preset::MoviE.select().corner_threshold_px, 1.7);
        assert_eq!(Preset::TriPd.select().corner_threshold_px, 0.5);
        assert_eq!(Preset::Custom.select(), Preset::Kitti.select());
        assert_eq!(
            params(DatasetKind::Kitti).processing,
            Processing::Resize {
                width: 1240,
                height: 376
            }
        );
        assert_eq!(
            params(DatasetKind::TriPd).processing,
            Processing::HalveCropTop { crop_top: 128 }
        );
    }

    #[test]
    fn hash_changes_with_any_parameter_and_is_stable() {
        let a = params(DatasetKind::Kitti);
        let mut b = a.clone();
        assert_eq!(a.hash(), b.hash());
        b.instances.min_instance_px = 101;
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash().len(), 16);
    }

    #[test]
    fn config_file_overrides_only_what_it_names() {
        let file: ConfigFile =
            serde_json::from_str(r#"{"corner_threshold_px": 0.9, "fg_round_decimals": null}"#).unwrap();
        let mut p = params(DatasetKind::Video);
        file.apply(&mut p.select, &mut p.instances);
        assert_eq!(p.select.corner_threshold_px, 0.9);
        assert_eq!(p.instances.fg_round_decimals, None);
        assert_eq!(p.instances.fg_threshold_px, 2.5);
        assert!(serde_json::from_str::<ConfigFile>(r#"{"corner_treshold": 1}"#).is_err());
    }
}
