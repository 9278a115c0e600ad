//! PAMR, pixel-adaptive mask refinement, as Talk2DINO runs it (`models/dinotext/pamr.py`, a copy of
//! visinf/1-stage-wseg's module, called from `DINOText.apply_pamr` with 10 iterations and dilations
//! [1, 2, 4, 8, 12, 24]; its demo turns it on, its benchmark configs `eval*.yml` leave `pamr: false` except the
//! `*_pamr.yml` ones).
//!
//! Contract: [`pamr`] takes the image the masks belong to, (B, K, H, W) float in 0..255 (Talk2DINO passes the
//! un-normalised RGB image, `ori_image`), and soft masks (B, C, h, w), and returns refined masks (B, C, h, w):
//! 1. the image is resized to the masks' grid (bilinear, `align_corners=True`; the identity when the sizes agree,
//!    as they do in Talk2DINO, where the masks were first upsampled to the image);
//! 2. for every dilation d and every one of the 8 neighbours at offset d·(dy, dx), dy, dx ∈ {−1, 0, 1}, of a
//!    replicate-padded copy, in the kernel order (−1,−1), (−1,0), (−1,1), (0,−1), (0,1), (1,−1), (1,0), (1,1)
//!    (`LocalAffinity._init_aff`), dilation-major: the affinity −|x − x_nbr| / (1e-8 + 0.1·σ), where σ is the
//!    unbiased standard deviation per pixel and channel over the 9 positions (centre included) of every dilation
//!    (`LocalStDev`, 54 values for 6 dilations); averaged over the image channels; softmax over the 8·D
//!    neighbours;
//! 3. `iterations` times: mask ← Σ_k affinity_k · mask_nbr(k) (`LocalAffinityCopy`, replicate padding).
//!
//! The reference builds every shifted copy at once with one-hot 3×3 convolutions; here each neighbour is a
//! slice of the padded tensor (the same values: a one-hot convolution copies, the ±1 kernel subtracts exactly),
//! and the sums run over the neighbours one at a time, so memory stays at a few masks instead of 48 of them. σ is
//! accumulated in float64 (two passes), as ATen's `std` accumulates in double.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::Talk2DinoError;

/// PAMR's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PamrConfig {
    /// Refinement iterations (`pamr_iter`).
    pub iterations: usize,
    /// Neighbour distances, px (`pamr_kernel`).
    pub dilations_px: Vec<i64>,
}

impl PamrConfig {
    /// Talk2DINO's `apply_pamr`: 10 iterations, dilations [1, 2, 4, 8, 12, 24].
    pub fn talk2dino() -> Self {
        Self {
            iterations: 10,
            dilations_px: vec![1, 2, 4, 8, 12, 24],
        }
    }
}

/// The 8 neighbours of the 3×3 kernel, (row, column) in kernel coordinates, in `LocalAffinity`'s order.
const NEIGHBOURS: [(i64, i64); 8] = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)];

/// The (h, w) view of `padded` (replicate-padded by d on every side) at kernel position (ky, kx).
fn shifted(padded: &Tensor, d: i64, (ky, kx): (i64, i64), (h, w): (i64, i64)) -> Result<Tensor, tch::TchError> {
    padded.f_narrow(2, ky * d, h)?.f_narrow(3, kx * d, w)
}

/// Refines soft masks (B, C, h, w) with the image (B, K, H, W) they belong to; see the module docs.
pub fn pamr(images: &Tensor, masks: &Tensor, config: &PamrConfig) -> Result<Tensor, Talk2DinoError> {
    let (b, _, h, w) = masks.size4()?;
    let (b_images, k, _, _) = images.size4()?;
    if b_images != b || k == 0 || h == 0 || w == 0 {
        return Err(crate::input::InputError::disagree("PAMR", &[("images", images), ("masks", masks)]).into());
    }
    if config.dilations_px.is_empty() || config.dilations_px.iter().any(|&d| d < 1) {
        return Err(Talk2DinoError::Dilations {
            dilations_px: config.dilations_px.clone(),
        });
    }
    let _guard = tch::no_grad_guard();
    let device = masks.device();
    let masks = masks.f_to_kind(Kind::Float)?;
    let mut x = images.f_to_device(device)?.f_to_kind(Kind::Float)?;
    if x.size()[2..] != [h, w] {
        x = x.f_upsample_bilinear2d([h, w], true, None, None)?;
    }
    let size = (h, w);
    let padded: Vec<(i64, Tensor)> = config
        .dilations_px
        .iter()
        .map(|&d| Ok((d, x.f_replication_pad2d([d, d, d, d])?)))
        .collect::<Result<_, tch::TchError>>()?;

    // σ over the 9 positions of every dilation, unbiased, in float64.
    let positions: Vec<(i64, i64)> = (0..3).flat_map(|ky| (0..3).map(move |kx| (ky, kx))).collect();
    let count = (positions.len() * padded.len()) as f64;
    let mut sum = Tensor::f_zeros([b, k, h, w], (Kind::Double, device))?;
    for (d, p) in &padded {
        for &pos in &positions {
            let _ = sum.f_add_(&shifted(p, *d, pos, size)?)?;
        }
    }
    let mean = sum.f_div_scalar(count)?;
    let mut squares = Tensor::f_zeros([b, k, h, w], (Kind::Double, device))?;
    for (d, p) in &padded {
        for &pos in &positions {
            let dev = shifted(p, *d, pos, size)?.f_sub(&mean)?;
            let _ = squares.f_addcmul_(&dev, &dev)?;
        }
    }
    let sigma = squares.f_div_scalar(count - 1.0)?.f_sqrt()?.f_to_kind(Kind::Float)?;
    let denominator = sigma.f_mul_scalar(0.1)?.f_add_scalar(1e-8)?;

    // Affinities to the 8·D neighbours, averaged over the image channels, softmax over the neighbours.
    let mut affinities = Vec::with_capacity(NEIGHBOURS.len() * padded.len());
    for (d, p) in &padded {
        for &nbr in &NEIGHBOURS {
            let diff = x.f_sub(&shifted(p, *d, nbr, size)?)?.f_abs()?;
            affinities.push(diff.f_neg()?.f_div(&denominator)?.f_mean_dim(1, true, Kind::Float)?);
        }
    }
    let affinity = Tensor::f_cat(&affinities, 1)?.f_softmax(1, Kind::Float)?; // (B, 8·D, h, w)
    drop(affinities);

    let mut refined = masks;
    for _ in 0..config.iterations {
        let padded_masks: Vec<(i64, Tensor)> = config
            .dilations_px
            .iter()
            .map(|&d| Ok((d, refined.f_replication_pad2d([d, d, d, d])?)))
            .collect::<Result<_, tch::TchError>>()?;
        let mut next = Tensor::f_zeros(refined.size(), (Kind::Float, device))?;
        let mut index = 0;
        for (d, p) in &padded_masks {
            for &nbr in &NEIGHBOURS {
                let weight = affinity.f_narrow(1, index, 1)?;
                let _ = next.f_addcmul_(&shifted(p, *d, nbr, size)?, &weight)?;
                index += 1;
            }
        }
        refined = next;
    }
    Ok(refined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_image_averages_and_an_edge_stops_the_spread() {
        // Flat image: every neighbour has affinity 0, so the softmax is uniform and one iteration is the mean of
        // the 8·D replicate-padded neighbours.
        let image = Tensor::full([1, 3, 5, 6], 100.0, (Kind::Float, tch::Device::Cpu));
        let masks = Tensor::rand([1, 2, 5, 6], (Kind::Float, tch::Device::Cpu));
        let one = PamrConfig {
            iterations: 1,
            dilations_px: vec![1],
        };
        let out = pamr(&image, &masks, &one).unwrap();
        let padded = masks.replication_pad2d([1, 1, 1, 1]);
        let mut expect = Tensor::zeros([1, 2, 5, 6], (Kind::Float, tch::Device::Cpu));
        for nbr in NEIGHBOURS {
            expect += shifted(&padded, 1, nbr, (5, 6)).unwrap();
        }
        let expect = expect / 8.0;
        assert!((&out - &expect).abs().max().double_value(&[]) < 1e-6);

        // Two flat halves with a sharp edge: a mask that is 1 on the left half stays (almost) 1 there and (almost)
        // 0 on the right after Talk2DINO's 10 iterations.
        let left = Tensor::zeros([1, 3, 16, 16], (Kind::Float, tch::Device::Cpu));
        let _ = left.narrow(3, 0, 8).fill_(200.0);
        let mask = Tensor::zeros([1, 1, 16, 16], (Kind::Float, tch::Device::Cpu));
        let _ = mask.narrow(3, 0, 8).fill_(1.0);
        let out = pamr(&left, &mask, &PamrConfig::talk2dino()).unwrap();
        assert!(out.narrow(3, 0, 8).min().double_value(&[]) > 0.99);
        assert!(out.narrow(3, 8, 8).max().double_value(&[]) < 0.01);
        assert!(pamr(
            &left,
            &mask,
            &PamrConfig {
                iterations: 1,
                dilations_px: vec![0]
            }
        )
        .is_err());
    }
}
