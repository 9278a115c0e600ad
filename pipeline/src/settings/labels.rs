//! The parameters of `labels` (and of `plan`): preset < `--config FILE` < flags, resolved into one validated
//! [`LabelsParams`] before any input is read or output written. Everything that determines the rows of the
//! output, and nothing else (paths, threads and progress options do not change rows and are not hashed).

use mrdino_datasets::{DatasetKind, Processing, SourceOptions};
use mrdino_stages::flow::source::FlowParams;
use mrdino_stages::instances::InstanceParams;
use mrdino_stages::rules::RuleOptions;
use mrdino_stages::select::SelectParams;
use serde::{Deserialize, Serialize};

use anyhow::{Context, Result};

use super::check::{Bound, Checks};
use super::presets::Preset;
use crate::cli::labels::LabelsArgs;

/// Everything that determines the rows of the output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelsParams {
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
    /// The opt-in label rules (`--label-rules`, `--fb-check`, `--photo-check`, `--flow-split`); absent from the
    /// serialised parameters (and so from the hash) when all are off, the reference.
    #[serde(default, skip_serializing_if = "RuleOptions::is_reference")]
    pub rules: RuleOptions,
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
    /// Reads a config file, naming it in every error.
    pub fn read(path: &std::path::Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

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

impl LabelsParams {
    /// Preset < config file < flags, then checked; `flow` is the backend's part.
    pub fn resolve(args: &LabelsArgs, flow: FlowParams) -> Result<Self> {
        let file = args.config.as_deref().map(ConfigFile::read).transpose()?;
        let dataset = args.input.dataset;
        let preset = args
            .preset
            .or_else(|| file.as_ref().and_then(|f| f.preset))
            .unwrap_or(Preset::for_dataset(dataset));
        let mut select = preset.select();
        let mut instances = preset.instances();
        if let Some(file) = &file {
            file.apply(&mut select, &mut instances);
        }
        if let Some(v) = args.corner_threshold_px {
            select.corner_threshold_px = v;
        }
        if let Some(v) = args.min_run_frames {
            select.min_run_frames = v;
        }
        if let Some(v) = args.fg_threshold_px {
            instances.fg_threshold_px = v;
        }
        if args.raw_fg_magnitude {
            instances.fg_round_decimals = None;
        }
        if let Some(v) = args.min_instance_px {
            instances.min_instance_px = v;
        }
        let params = Self {
            dataset,
            preset,
            cameras: args.input.cameras(),
            processing: args
                .resize
                .map(|(width, height)| Processing::Resize { width, height })
                .unwrap_or_else(|| dataset.reference_processing()),
            flow,
            select,
            instances,
            exclude_eval_overlap: preset == Preset::Kitti && !args.keep_eval_overlap,
            rules: args.rules(),
        };
        params.validate()?;
        Ok(params)
    }

    /// Checks every value against the range its rule defines.
    pub fn validate(&self) -> Result<()> {
        let s = &self.select;
        let i = &self.instances;
        let mut c = Checks::new();
        c.float("corner_fraction", s.corner_fraction, Bound::Open(0.0), Bound::Closed(0.5))
            .positive("corner_threshold_px", s.corner_threshold_px)
            .int("required_corners", s.required_corners, 1, Some(4))
            .int("min_run_frames", s.min_run_frames, 1, None)
            .non_negative("fg_threshold_px", i.fg_threshold_px)
            .float("min_fg_fraction", i.min_fg_fraction, Bound::Closed(0.0), Bound::Closed(1.0))
            .non_negative("edge_threshold", f64::from(i.edge_threshold))
            .int("erosion_radius_px", i.erosion_radius_px, 0, Some(200))
            .non_negative("spatial_weight", i.spatial_weight)
            .non_negative("direction_weight", i.direction_weight)
            .int("direction_bins", i.direction_bins, 1, None)
            .int("min_cluster_size", i.min_cluster_size, 2, None)
            .int("min_samples", i.min_samples, 1, None)
            .int("min_instance_px", i.min_instance_px, 0, Some(u32::MAX as usize))
            .require(i.fg_round_decimals.is_none_or(|d| d <= 9), || {
                format!("fg_round_decimals = {:?} must be at most 9", i.fg_round_decimals)
            });
        c.require(!self.rules.fb_check || self.flow.computes(), || {
            format!(
                "--fb-check needs the backward flow, which `--flow {}` does not compute",
                self.flow.name()
            )
        });
        c.finish("labels parameters")
    }

    /// Canonical JSON of the parameters.
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string(self)?)
    }

    /// The partition hash.
    pub fn hash(&self) -> String {
        super::params_hash(self).unwrap_or_default()
    }

    /// What to read, as the parameters say.
    pub fn source(&self, root: &std::path::Path) -> SourceOptions {
        SourceOptions {
            kind: self.dataset,
            root: root.to_path_buf(),
            cameras: Some(self.cameras.clone()),
            processing: Some(self.processing),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mrdino_datasets::Processing;

    fn params(dataset: DatasetKind) -> LabelsParams {
        let preset = Preset::for_dataset(dataset);
        LabelsParams {
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
            rules: RuleOptions::default(),
        }
    }

    #[test]
    fn presets_carry_the_reference_geometry() {
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

    #[test]
    fn meaningless_values_are_refused_naming_them() {
        type Case = (fn(&mut LabelsParams), &'static str);
        let cases: [Case; 5] = [
            (|p: &mut LabelsParams| p.select.corner_threshold_px = f64::NAN, "corner_threshold_px"),
            (|p: &mut LabelsParams| p.select.corner_threshold_px = 0.0, "corner_threshold_px"),
            (|p: &mut LabelsParams| p.instances.fg_threshold_px = -1.0, "fg_threshold_px"),
            (|p: &mut LabelsParams| p.instances.min_instance_px = 1 << 32, "min_instance_px"),
            (|p: &mut LabelsParams| p.select.min_run_frames = 0, "min_run_frames"),
        ];
        for (edit, key) in cases {
            let mut p = params(DatasetKind::Kitti);
            edit(&mut p);
            let err = p.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
        assert!(params(DatasetKind::Kitti).validate().is_ok());
    }
}
