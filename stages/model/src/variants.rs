//! Image variants for the robustness analysis: what a backbone sees when only part of a frame is kept.
//!
//! From an RGB image (3, H, W) in [0, 1] and its foreground mask (H, W) (the union of the frame's object masks)
//! five variants are made: the full image; foreground only; background only; the centre (a disc of radius
//! `centre_radius` × min(H, W)/2 around the image centre) and the border (the disc's complement). The removed
//! part is filled by a [`Fill`] rule:
//! - `Mean`: the per-channel mean colour of the **kept** pixels, so nothing of the removed part leaks in (a
//!   variant that keeps nothing is filled with mid-grey 0.5);
//! - `Black`: zeros;
//! - `Blur`: a Gaussian blur of the whole image (σ in pixels, kernel ±3σ, reflect padding), which keeps the
//!   removed part's low frequencies — the "context without detail" condition.
//!
//! Everything is a tensor operation on the image's device; the output has the input's shape and kind Float.

use tch::{Kind, TchError, Tensor};

/// Which part of the frame a variant keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    Full,
    Foreground,
    Background,
    Centre,
    Border,
}

impl Variant {
    pub const ALL: [Variant; 5] = [
        Variant::Full,
        Variant::Foreground,
        Variant::Background,
        Variant::Centre,
        Variant::Border,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Full => "full",
            Variant::Foreground => "foreground",
            Variant::Background => "background",
            Variant::Centre => "centre",
            Variant::Border => "border",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == name)
    }
}

/// A fill rule that [`Fill::parse`] does not know, or a blur with a σ that is not a positive number.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown fill `{text}` (expected mean, black, blur or blur:<sigma px > 0>)")]
pub struct FillError {
    /// The text as given.
    pub text: String,
}

/// How the removed part of a variant is filled.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "rule")]
pub enum Fill {
    Mean,
    Black,
    Blur { sigma_px: f64 },
}

impl Fill {
    /// `mean`, `black`, `blur` (σ = 10 px) or `blur:<σ px>`.
    pub fn parse(text: &str) -> Result<Self, FillError> {
        match text {
            "mean" => Ok(Fill::Mean),
            "black" => Ok(Fill::Black),
            "blur" => Ok(Fill::Blur { sigma_px: 10.0 }),
            _ => match text.strip_prefix("blur:").map(str::parse::<f64>) {
                Some(Ok(sigma_px)) if sigma_px.is_finite() && sigma_px > 0.0 => Ok(Fill::Blur { sigma_px }),
                _ => Err(FillError { text: text.to_string() }),
            },
        }
    }
}

/// Parameters of the variants.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VariantParams {
    pub fill: Fill,
    /// Radius of the centre disc as a fraction of min(H, W)/2.
    pub centre_radius: f64,
}

impl Default for VariantParams {
    fn default() -> Self {
        Self {
            fill: Fill::Mean,
            centre_radius: 0.5,
        }
    }
}

/// The boolean mask (H, W) of the pixels a variant keeps; the centre and border variants need a (H, W)
/// foreground (a `TchError::Shape` otherwise).
pub fn keep_mask(variant: Variant, foreground: &Tensor, params: &VariantParams) -> Result<Tensor, TchError> {
    let fg = foreground.f_to_kind(Kind::Bool)?;
    match variant {
        Variant::Full => fg.f_ones_like(),
        Variant::Foreground => Ok(fg),
        Variant::Background => fg.f_logical_not(),
        Variant::Centre | Variant::Border => {
            let size = fg.size();
            let [h, w] = size[..] else {
                return Err(TchError::Shape(format!("foreground mask: expected (H, W), got {size:?}")));
            };
            let opts = (Kind::Double, fg.device());
            let rows = Tensor::f_arange(h, opts)?.f_add_scalar(0.5)?.f_sub_scalar(h as f64 / 2.0)?;
            let cols = Tensor::f_arange(w, opts)?.f_add_scalar(0.5)?.f_sub_scalar(w as f64 / 2.0)?;
            let radius = params.centre_radius * h.min(w) as f64 / 2.0;
            let inside = rows
                .f_square()?
                .f_unsqueeze(1)?
                .f_add(&cols.f_square()?.f_unsqueeze(0)?)?
                .f_le(radius * radius)?;
            if variant == Variant::Centre {
                Ok(inside)
            } else {
                inside.f_logical_not()
            }
        }
    }
}

/// Gaussian blur of (3, H, W) with σ in pixels (separable, ±3σ, reflect padding clamped to the image); another
/// shape is a `TchError::Shape`.
pub fn gaussian_blur(image: &Tensor, sigma_px: f64) -> Result<Tensor, TchError> {
    let size = image.size();
    let [3, h, w] = size[..] else {
        return Err(TchError::Shape(format!("image to blur: expected (3, H, W), got {size:?}")));
    };
    let radius = ((3.0 * sigma_px).ceil() as i64).max(1);
    let taps: Vec<f32> = (-radius..=radius)
        .map(|d| (-((d * d) as f64) / (2.0 * sigma_px * sigma_px)).exp() as f32)
        .collect();
    let sum: f32 = taps.iter().sum();
    let kernel =
        Tensor::f_from_slice(&taps.iter().map(|t| t / sum).collect::<Vec<_>>())?.f_to_device(image.device())?;
    let len = taps.len() as i64;
    let x = image.f_to_kind(Kind::Float)?.f_unsqueeze(0)?;
    // Reflect padding needs pad < size; larger kernels fall back to replicate at the excess.
    let pad_w = radius.min(w - 1);
    let pad_h = radius.min(h - 1);
    let x = x
        .f_pad([pad_w, pad_w, 0, 0], "reflect", None)?
        .f_pad([radius - pad_w, radius - pad_w, 0, 0], "replicate", None)?;
    let x = x.f_conv2d(
        &kernel.f_view([1, 1, 1, len])?.f_repeat([3, 1, 1, 1])?,
        None::<Tensor>,
        [1, 1],
        [0, 0],
        [1, 1],
        3,
    )?;
    let x = x
        .f_pad([0, 0, pad_h, pad_h], "reflect", None)?
        .f_pad([0, 0, radius - pad_h, radius - pad_h], "replicate", None)?;
    let x = x.f_conv2d(
        &kernel.f_view([1, 1, len, 1])?.f_repeat([3, 1, 1, 1])?,
        None::<Tensor>,
        [1, 1],
        [0, 0],
        [1, 1],
        3,
    )?;
    x.f_squeeze_dim(0)
}

/// An RGB frame (`height`×`width`×3 bytes, row-major) as a (3, H, W) float image in [0, 1].
pub fn image_from_rgb(rgb: &[u8], height: usize, width: usize) -> Result<Tensor, TchError> {
    let (h, w) = (height as i64, width as i64);
    Tensor::f_from_slice(rgb)?
        .f_view([h, w, 3])?
        .f_permute([2, 0, 1])?
        .f_to_kind(Kind::Float)?
        .f_div_scalar(255.0)
}

/// The foreground mask (H, W) of an id map (row-major, `height`×`width`, 0 = background): every object's pixels.
pub fn foreground_from_ids(ids: &[u32], height: usize, width: usize) -> Result<Tensor, TchError> {
    let labels: Vec<i64> = ids.iter().map(|&l| i64::from(l != 0)).collect();
    Tensor::f_from_slice(&labels)?
        .f_view([height as i64, width as i64])?
        .f_to_kind(Kind::Bool)
}

/// A (3, H, W) image in [0, 1] as RGB bytes (row-major, clamped and rounded).
pub fn to_rgb_bytes(image: &Tensor) -> Result<Vec<u8>, TchError> {
    let bytes = (image.f_clamp(0.0, 1.0)? * 255.0)
        .f_round()?
        .f_to_kind(Kind::Uint8)?
        .f_permute([1, 2, 0])?
        .f_contiguous()?;
    Vec::<u8>::try_from(bytes.f_flatten(0, -1)?)
}

/// The variant of every (image, foreground) pair, stacked as a batch (B, 3, H, W); the images share one size.
pub fn variant_batch(frames: &[(Tensor, Tensor)], variant: Variant, params: &VariantParams) -> Result<Tensor, TchError> {
    let images: Vec<Tensor> = frames
        .iter()
        .map(|(image, fg)| make_variant(image, fg, variant, params))
        .collect::<Result<_, _>>()?;
    Tensor::f_stack(&images, 0)
}

/// The variant of `image` (3, H, W) in [0, 1] given its foreground mask (H, W); shapes that do not fit are a
/// `TchError`.
pub fn make_variant(
    image: &Tensor,
    foreground: &Tensor,
    variant: Variant,
    params: &VariantParams,
) -> Result<Tensor, TchError> {
    let image = image.f_to_kind(Kind::Float)?;
    if variant == Variant::Full {
        return Ok(image);
    }
    let keep = keep_mask(variant, foreground, params)?;
    let fill = match params.fill {
        Fill::Black => image.f_zeros_like()?,
        Fill::Mean => {
            let k = keep.f_to_kind(Kind::Float)?;
            let n = k.f_sum(Kind::Float)?;
            let mean = if n.f_double_value(&[])? > 0.0 {
                image
                    .f_mul(&k)?
                    .f_sum_dim_intlist([1, 2].as_slice(), true, Kind::Float)?
                    .f_div(&n)?
            } else {
                Tensor::f_full([3, 1, 1], 0.5, (Kind::Float, image.device()))?
            };
            mean.f_expand_as(&image)?
        }
        Fill::Blur { sigma_px } => gaussian_blur(&image, sigma_px)?,
    };
    image.f_where_self(&keep.f_unsqueeze(0)?, &fill)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn scene() -> (Tensor, Tensor) {
        let image = crate::dinosaur::seeded(3, || Tensor::rand([3, 20, 30], (Kind::Float, Device::Cpu)));
        let fg = Tensor::zeros([20, 30], (Kind::Bool, Device::Cpu));
        let _ = fg.narrow(0, 5, 6).narrow(1, 8, 10).fill_(1);
        (image, fg)
    }

    #[test]
    fn foreground_and_background_partition_the_image() {
        let (image, fg) = scene();
        let params = VariantParams {
            fill: Fill::Black,
            centre_radius: 0.5,
        };
        let f = make_variant(&image, &fg, Variant::Foreground, &params).unwrap();
        let b = make_variant(&image, &fg, Variant::Background, &params).unwrap();
        // With black fill the two variants add up to the image exactly.
        assert_eq!((&f + &b - &image).abs().max().double_value(&[]), 0.0);
        assert_eq!(
            f.sum(Kind::Double).double_value(&[]),
            (&image * fg.to_kind(Kind::Float)).sum(Kind::Double).double_value(&[])
        );
        assert!(make_variant(&image, &fg, Variant::Full, &params).unwrap().equal(&image));
    }

    #[test]
    fn mean_fill_uses_only_kept_pixels() {
        let (image, fg) = scene();
        let params = VariantParams::default();
        let f = make_variant(&image, &fg, Variant::Foreground, &params).unwrap();
        let kept = image.narrow(1, 5, 6).narrow(2, 8, 10);
        let mean = kept.mean_dim([1, 2].as_slice(), false, Kind::Float);
        let corner = f.select(1, 0).select(1, 0);
        assert!((corner - mean).abs().max().double_value(&[]) < 1e-6);
        // Nothing kept → mid-grey.
        let empty = Tensor::zeros([20, 30], (Kind::Bool, Device::Cpu));
        let v = make_variant(&image, &empty, Variant::Foreground, &params).unwrap();
        assert!((v - 0.5).abs().max().double_value(&[]) < 1e-7);
    }

    #[test]
    fn centre_and_border_are_complements() {
        let (_, fg) = scene();
        let params = VariantParams {
            fill: Fill::Mean,
            centre_radius: 0.5,
        };
        let c = keep_mask(Variant::Centre, &fg, &params).unwrap();
        let b = keep_mask(Variant::Border, &fg, &params).unwrap();
        assert!(c.logical_xor(&b).all().int64_value(&[]) == 1);
        // Radius 0.5 · 20/2 = 5 px around (10, 15): the centre pixel is kept, a corner is not.
        assert_eq!(c.int64_value(&[10, 15]), 1);
        assert_eq!(c.int64_value(&[0, 0]), 0);
        assert_eq!(c.int64_value(&[10, 19]), 1);
        assert_eq!(c.int64_value(&[10, 20]), 0);
    }

    #[test]
    fn blur_preserves_constants_and_smooths() {
        let flat = Tensor::full([3, 12, 9], 0.25, (Kind::Float, Device::Cpu));
        assert!((gaussian_blur(&flat, 4.0).unwrap() - 0.25).abs().max().double_value(&[]) < 1e-6);
        let (image, _) = scene();
        let blurred = gaussian_blur(&image, 2.0).unwrap();
        assert_eq!(blurred.size(), image.size());
        assert!(blurred.std(true).double_value(&[]) < 0.5 * image.std(true).double_value(&[]));
        assert_eq!(Fill::parse("blur:3.5"), Ok(Fill::Blur { sigma_px: 3.5 }));
        assert!(Fill::parse("blur:nan").is_err());
        assert!(Fill::parse("grey").is_err());
    }
}
