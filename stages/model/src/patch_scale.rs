//! The one rule that turns the presets' pixel geometry (written for DINOv2's 14 px patches: KITTI 378 px
//! windows on a 378×1260 canvas, TRI-PD 490 on 490×980, MOVi-E 266, the 224 px resize view) into the geometry of
//! a backbone with another patch size, keeping the TOKEN grid.
//!
//! * A preset whose window the backbone's patch tiles keeps its pixels ([`PatchScale::for_window`] gives the
//!   identity): patch 14 (every DINOv2), and any patch that divides the window (the tests' 42 px seeded backbone
//!   on the KITTI 378 px windows). Patch-14 results are therefore the reference's, byte for byte.
//! * Otherwise every pixel number `v` of the preset becomes `round(v / 14) · patch` px ([`PatchScale::px`]): the
//!   same number of tokens, at the new patch. Patch 16 (DINOv3): KITTI 27×27 tokens → 432 px windows on a
//!   432×1440 canvas, 144 px padding (windows at x = −144, 288, 720, 1152), training views at x = 0, 336, 672,
//!   1008 (tokens 0, 21, 42, 63 as at patch 14); TRI-PD 35 tokens → 560 px on 560×1120; MOVi-E 19 tokens →
//!   304 px; the resize view 16 tokens → 256 px.
//!
//! Every preset number at patch 14 is a whole number of tokens, so the rounding only matters for geometry
//! written by hand (a `--config` file), which is not scaled.

/// The patch size the presets' pixel numbers are written for (DINOv2).
pub const PRESET_PATCH_PX: i64 = 14;

/// How a preset's pixel numbers map to a backbone's patch (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PatchScale {
    /// Pixels per token in the preset's numbers; 1 when the numbers are kept as they are.
    from_px: i64,
    /// Pixels per token at the backbone; 1 when the numbers are kept.
    to_px: i64,
}

impl Default for PatchScale {
    fn default() -> Self {
        Self::IDENTITY
    }
}

impl PatchScale {
    /// The presets' own pixels (patch 14, or a patch that tiles the window).
    pub const IDENTITY: PatchScale = PatchScale { from_px: 1, to_px: 1 };

    /// The scale for a backbone of `patch_px` on a preset whose window is `window_px` at patch 14: the identity
    /// when the patch tiles the window (or is not positive: the backbone's own checks then refuse it), else
    /// 14 px tokens → `patch_px` tokens.
    pub fn for_window(window_px: i64, patch_px: i64) -> Self {
        if patch_px <= 0 || window_px % patch_px == 0 {
            Self::IDENTITY
        } else {
            Self {
                from_px: PRESET_PATCH_PX,
                to_px: patch_px,
            }
        }
    }

    /// Whether the preset's pixels are kept.
    pub fn is_identity(self) -> bool {
        self.from_px == self.to_px
    }

    /// A preset pixel number `value_px` (≥ 0) at the backbone's patch: round(value / 14) tokens of the patch.
    pub fn px(self, value_px: i64) -> i64 {
        if self.is_identity() {
            return value_px;
        }
        let tokens = (2 * value_px + self.from_px).div_euclid(2 * self.from_px);
        tokens * self.to_px
    }

    /// [`PatchScale::px`] for sizes held as `usize`.
    pub fn px_usize(self, value_px: usize) -> usize {
        self.px(value_px as i64).max(0) as usize
    }
}

/// A token count as a grid for messages: `27×27` when it is a square, else the count and that it is not square.
pub fn token_grid_text(n_patches: i64) -> String {
    let side = (n_patches.max(0) as f64).sqrt().round() as i64;
    if side * side == n_patches {
        format!("{side}×{side}")
    } else {
        format!("{n_patches}, not a square grid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_14_and_tiling_patches_keep_the_pixels() {
        for patch in [14, 42, 7] {
            let scale = PatchScale::for_window(378, patch);
            assert!(scale.is_identity());
            assert_eq!(scale.px(1260), 1260);
            assert_eq!(scale.px(126), 126);
        }
    }

    #[test]
    fn patch_16_keeps_the_token_grid() {
        let kitti = PatchScale::for_window(378, 16);
        let px: Vec<i64> = [378, 1260, 126, 0, 294, 588, 882, 224]
            .iter()
            .map(|&v| kitti.px(v))
            .collect();
        assert_eq!(px, [432, 1440, 144, 0, 336, 672, 1008, 256]);
        let tri_pd = PatchScale::for_window(490, 16);
        assert_eq!((tri_pd.px(490), tri_pd.px(980)), (560, 1120));
        assert_eq!(PatchScale::for_window(266, 16).px(266), 304);
        // Rounded to the nearest token (half up) for numbers that are not whole tokens.
        assert_eq!(kitti.px(20), 16);
        assert_eq!(kitti.px(21), 32);
    }
}
