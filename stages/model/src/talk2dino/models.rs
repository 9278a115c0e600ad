//! The loaded Talk2DINO bundle every open-vocabulary command runs: the DINO backbone, CLIP's text tower, ψ and
//! the tokenizer, loaded together and checked against each other before any frame is read.
//!
//! Contract of [`Talk2Dino::load`]: ψ maps into the backbone's width; when the ψ file records the released
//! Talk2DINO file it was converted from ([`Psi::variant`]), the backbone must have that release's width, patch
//! and registers (a DINOv3 ψ on a DINOv2 backbone is refused, naming both), and the model's input size is the
//! release's ([`Talk2Dino::input_px`]) instead of [`INPUT_PX`]; the input size must be a multiple of the patch.
//! [`WeightsIdentity`] is the record of which weights made an output (identities of the tensors, see
//! `mrdino_outputs::weights_id`, and the release of ψ when known).

use std::path::PathBuf;

use mrdino_outputs::weights_id::Identity;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::{resize_square, Psi, ReleaseMismatch, Talk2DinoError, Variant, INPUT_PX};
use crate::clip_text::ClipText;
use crate::clip_tokenizer::ClipTokenizer;
use crate::vit::{Vit, VitConfig};

/// Where the three weights of a Talk2DINO bundle come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Talk2DinoFiles {
    /// The backbone's name (`dinov2-vitb14-reg`, `dinov3-vitb16`, `custom:…`).
    pub backbone: String,
    /// The backbone's weights (safetensors from tools/convert_vit.py).
    pub backbone_weights: PathBuf,
    /// CLIP's text tower (safetensors from tools/convert_clip_text.py).
    pub text_weights: PathBuf,
    /// ψ (safetensors from tools/convert_talk2dino.py).
    pub psi_weights: PathBuf,
}

/// Which weights made an output, for parameters and metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightsIdentity {
    pub backbone: String,
    pub backbone_sha256: String,
    pub text: String,
    pub text_sha256: String,
    pub psi_sha256: String,
    /// The released Talk2DINO file ψ was converted from ([`Variant::proj_name`]), when the converter recorded it.
    /// Absent from the JSON when unknown, so the records of earlier versions (which had no such field) and their
    /// parameter hashes are unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psi_variant: Option<String>,
}

/// The loaded models.
pub struct Talk2Dino {
    pub vit: Vit,
    pub text: ClipText,
    pub psi: Psi,
    pub tokenizer: ClipTokenizer,
    /// The backbone's name as given.
    pub backbone: String,
}

impl Talk2Dino {
    /// Loads the three weights on `device` and checks them against each other (see the module docs).
    pub fn load(files: &Talk2DinoFiles, device: Device) -> Result<Self, Talk2DinoError> {
        let config = VitConfig::by_name(&files.backbone)?;
        let vit =
            Vit::load(&files.backbone_weights, Some(config), device).map_err(|source| Talk2DinoError::Backbone {
                path: files.backbone_weights.clone(),
                source: Box::new(source),
            })?;
        let text = ClipText::load(&files.text_weights, device).map_err(|source| Talk2DinoError::TextTower {
            path: files.text_weights.clone(),
            source: Box::new(source),
        })?;
        let psi = Psi::load(&files.psi_weights, device)?;
        if let Some(variant) = psi.variant() {
            check_variant(variant, &vit, files)?;
        }
        if psi.dim() != vit.embed_dim() {
            return Err(Talk2DinoError::PsiWidth {
                psi: files.psi_weights.clone(),
                psi_dim: psi.dim(),
                backbone: files.backbone.clone(),
                backbone_path: files.backbone_weights.clone(),
                backbone_dim: vit.embed_dim(),
            });
        }
        let model = Self {
            vit,
            text,
            psi,
            tokenizer: ClipTokenizer::new(),
            backbone: files.backbone.clone(),
        };
        let (input_px, patch_px) = (model.input_px(), model.vit.patch_size());
        if patch_px <= 0 || input_px % patch_px != 0 {
            return Err(Talk2DinoError::ViewPatch {
                view: "Talk2DINO's input",
                px: input_px,
                patch_px,
            });
        }
        Ok(model)
    }

    /// The square input side, px: the ψ release's ([`Variant::input_px`]) when ψ records it, else [`INPUT_PX`].
    pub fn input_px(&self) -> i64 {
        self.psi.variant().map_or(INPUT_PX, |v| v.input_px)
    }

    /// The identities of the three weights, for the migration rule of earlier ones.
    pub fn identities(&self) -> [&Identity; 3] {
        [self.vit.identity(), self.text.identity(), self.psi.identity()]
    }

    /// (N, C) class embeddings of `classes` (see [`ClipText::class_embeddings`]).
    pub fn class_embeddings(&self, classes: &[String]) -> Result<Tensor, Talk2DinoError> {
        let names: Vec<&str> = classes.iter().map(String::as_str).collect();
        Ok(self.text.class_embeddings(&self.tokenizer, &self.psi, &names)?)
    }

    /// The weights' identities, for parameters and metadata.
    pub fn weights(&self) -> WeightsIdentity {
        WeightsIdentity {
            backbone: self.backbone.clone(),
            backbone_sha256: self.vit.identity().id.clone(),
            text: self.text.config().name.clone(),
            text_sha256: self.text.identity().id.clone(),
            psi_sha256: self.psi.identity().id.clone(),
            psi_variant: self.psi.variant().map(|v| v.proj_name.to_string()),
        }
    }

    /// The patch tokens of frames (each (1, 3, H, W) RGB in 0..=255, any size and kind) after Talk2DINO's square
    /// preprocessing ([`resize_square`] to [`Talk2Dino::input_px`], antialiased): one (P, C) tensor per frame,
    /// in order, and the patch grid. The frames share one backbone forward.
    pub fn square_patch_tokens(&self, frames255: &[Tensor]) -> Result<(Vec<Tensor>, (i64, i64)), Talk2DinoError> {
        if frames255.is_empty() {
            return Ok((Vec::new(), (0, 0)));
        }
        let images = frames255
            .iter()
            .map(|f| resize_square(f, self.input_px(), true))
            .collect::<Result<Vec<_>, _>>()?;
        let batch = Tensor::f_cat(&images, 0)?;
        let tokens = self.vit.forward_tokens(&self.vit.normalize(&batch)?, None)?;
        let per_frame = (0..images.len() as i64)
            .map(|b| tokens.patches.f_get(b))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((per_frame, tokens.grid))
    }
}

/// Refuses a backbone whose width, patch or registers differ from ψ's release.
fn check_variant(variant: &Variant, vit: &Vit, files: &Talk2DinoFiles) -> Result<(), Talk2DinoError> {
    let config = vit.config();
    let ours = (config.embed_dim, config.patch_size, config.registers);
    if ours == (variant.dim, variant.patch_px, variant.registers) {
        return Ok(());
    }
    Err(Talk2DinoError::PsiRelease(Box::new(ReleaseMismatch {
        psi: files.psi_weights.clone(),
        proj_name: variant.proj_name.to_string(),
        made_for: variant.backbone.to_string(),
        made_for_shape: (variant.dim, variant.patch_px, variant.registers),
        backbone: files.backbone.clone(),
        backbone_path: files.backbone_weights.clone(),
        shape: ours,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_without_a_variant_serialises_as_before() {
        let record = WeightsIdentity {
            backbone: "b".into(),
            backbone_sha256: "1".into(),
            text: "t".into(),
            text_sha256: "2".into(),
            psi_sha256: "3".into(),
            psi_variant: None,
        };
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(
            json,
            r#"{"backbone":"b","backbone_sha256":"1","text":"t","text_sha256":"2","psi_sha256":"3"}"#
        );
        assert_eq!(serde_json::from_str::<WeightsIdentity>(&json).unwrap(), record);
        let with = WeightsIdentity {
            psi_variant: Some("dinov3_vitb_mlp_infonce".into()),
            ..record
        };
        assert!(serde_json::to_string(&with)
            .unwrap()
            .ends_with(r#""psi_variant":"dinov3_vitb_mlp_infonce"}"#));
    }

    #[test]
    fn a_backbone_other_than_the_psi_release_is_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vit.safetensors");
        let config =
            VitConfig::by_name("custom:family=dinov2,depth=1,dim=64,heads=2,patch=14,registers=4,pos_grid=4").unwrap();
        crate::vit::write_random_weights(&path, &config, 1).unwrap();
        let vit = Vit::load(&path, Some(config), Device::Cpu).unwrap();
        let files = Talk2DinoFiles {
            backbone: "custom-tiny".into(),
            backbone_weights: path,
            text_weights: "text.safetensors".into(),
            psi_weights: "psi.safetensors".into(),
        };
        let dinov3 = Variant::by_proj_name("dinov3_vitb_mlp_infonce").unwrap();
        let err = check_variant(dinov3, &vit, &files).unwrap_err().to_string();
        for needle in [
            "psi.safetensors",
            "dinov3_vitb_mlp_infonce",
            "width 768, patch 16 px, 4 registers",
            "`custom-tiny`",
            "width 64, patch 14 px, 4 registers",
        ] {
            assert!(err.contains(needle), "`{needle}` not in: {err}");
        }
    }
}
