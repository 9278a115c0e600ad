//! Optical flow as a colour image: the Middlebury colour wheel as torchvision's `flow_to_image` applies it.
//!
//! People who look at flow fields are used to one picture: hue = direction, saturation = speed, white = no
//! motion. Reproducing torchvision's convention (rather than inventing a palette) means a flow shown in the
//! report looks like the same flow shown in a notebook. The rule:
//!
//! * the field is divided by its largest magnitude (plus float32 epsilon), so the fastest pixel is fully
//!   saturated — colours are relative to each image, and the report states the maximum beside each image;
//! * the 55-colour wheel of Baker et al. (red→yellow 15, yellow→green 6, green→cyan 4, cyan→blue 11,
//!   blue→magenta 13, magenta→red 6 steps) is indexed by the angle atan2(−v, −u)/π, linearly interpolated
//!   between neighbouring colours;
//! * each channel is then desaturated towards white by the normalised radius: 1 − r·(1 − c), and scaled
//!   to 0–255 with `floor`.

use std::f32::consts::PI;
use std::path::Path;

use opencv::core::{Mat, Vector};
use opencv::imgcodecs;
use opencv::prelude::*;

use crate::atomic::{write_atomic, OutputError};

/// Steps of each segment of the Middlebury wheel: RY, YG, GC, CB, BM, MR.
const WHEEL_SEGMENTS: [usize; 6] = [15, 6, 4, 11, 13, 6];

/// The colour wheel, RGB in 0–255, as `torchvision.utils._make_colorwheel`.
pub fn colour_wheel() -> Vec<[f32; 3]> {
    let [ry, yg, gc, cb, bm, mr] = WHEEL_SEGMENTS;
    let mut wheel = Vec::with_capacity(WHEEL_SEGMENTS.iter().sum());
    let ramp = |i: usize, n: usize| (255.0 * i as f32 / n as f32).floor();
    wheel.extend((0..ry).map(|i| [255.0, ramp(i, ry), 0.0]));
    wheel.extend((0..yg).map(|i| [255.0 - ramp(i, yg), 255.0, 0.0]));
    wheel.extend((0..gc).map(|i| [0.0, 255.0, ramp(i, gc)]));
    wheel.extend((0..cb).map(|i| [0.0, 255.0 - ramp(i, cb), 255.0]));
    wheel.extend((0..bm).map(|i| [ramp(i, bm), 0.0, 255.0]));
    wheel.extend((0..mr).map(|i| [255.0, 0.0, 255.0 - ramp(i, mr)]));
    wheel
}

/// Colour of one already-normalised flow vector (|(u, v)| ≤ 1).
fn normalised_colour(wheel: &[[f32; 3]], u: f32, v: f32) -> [u8; 3] {
    let columns = wheel.len();
    let radius = (u * u + v * v).sqrt();
    let angle = (-v).atan2(-u) / PI;
    let position = (angle + 1.0) / 2.0 * (columns - 1) as f32;
    let k0 = (position.floor() as usize).min(columns - 1);
    let k1 = if k0 + 1 == columns { 0 } else { k0 + 1 };
    let fraction = position - k0 as f32;
    let mut rgb = [0u8; 3];
    for (c, out) in rgb.iter_mut().enumerate() {
        let colour = (1.0 - fraction) * wheel[k0][c] / 255.0 + fraction * wheel[k1][c] / 255.0;
        let colour = 1.0 - radius * (1.0 - colour);
        *out = (255.0 * colour).floor().clamp(0.0, 255.0) as u8;
    }
    rgb
}

/// A flow field rendered as RGB, with the magnitude it was normalised by.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowImage {
    pub height: usize,
    pub width: usize,
    /// Row-major RGB.
    pub rgb: Vec<u8>,
    /// Largest flow magnitude of the field, in pixels: the fully saturated colour.
    pub max_magnitude_px: f32,
}

/// Renders interleaved (u, v) flow (`uv.len() == 2·height·width`, u = Δcolumn, v = Δrow) as torchvision's
/// `flow_to_image` does.
pub fn flow_to_image(height: usize, width: usize, uv: &[f32]) -> FlowImage {
    let wheel = colour_wheel();
    let max_magnitude_px = uv
        .chunks_exact(2)
        .map(|p| (p[0] * p[0] + p[1] * p[1]).sqrt())
        .fold(0.0f32, f32::max);
    let scale = 1.0 / (max_magnitude_px + f32::EPSILON);
    let rgb = uv
        .chunks_exact(2)
        .take(height * width)
        .flat_map(|p| normalised_colour(&wheel, p[0] * scale, p[1] * scale))
        .collect();
    FlowImage {
        height,
        width,
        rgb,
        max_magnitude_px,
    }
}

/// The legend: a disc of `size`×`size` pixels whose pixel at offset (dx, dy) from the centre has the colour
/// of the flow (dx, dy), full saturation on the rim; white outside the disc.
pub fn wheel_legend(size: usize) -> FlowImage {
    let wheel = colour_wheel();
    let half = size as f32 / 2.0;
    let mut rgb = Vec::with_capacity(size * size * 3);
    for row in 0..size {
        for col in 0..size {
            let (u, v) = ((col as f32 + 0.5 - half) / half, (row as f32 + 0.5 - half) / half);
            if u * u + v * v > 1.0 {
                rgb.extend([255, 255, 255]);
            } else {
                rgb.extend(normalised_colour(&wheel, u, v));
            }
        }
    }
    FlowImage {
        height: size,
        width: size,
        rgb,
        max_magnitude_px: 1.0,
    }
}

/// Writes a row-major RGB image as a PNG, atomically.
pub fn write_rgb_png(path: &Path, rgb: &[u8], height: usize, width: usize) -> Result<(), OutputError> {
    let cv = |e: opencv::Error| OutputError::format(path, e);
    if rgb.len() != height * width * 3 || height == 0 || width == 0 {
        return Err(OutputError::format(
            path,
            format!("{} bytes do not make a {height}x{width} RGB image", rgb.len()),
        ));
    }
    // OpenCV encodes BGR.
    let mut bgr = rgb.to_vec();
    for px in bgr.chunks_exact_mut(3) {
        px.swap(0, 2);
    }
    let mat = Mat::new_rows_cols_with_data(height as i32, (width * 3) as i32, &bgr)
        .map_err(cv)?
        .reshape(3, height as i32)
        .map_err(cv)?
        .try_clone()
        .map_err(cv)?;
    let mut buf = Vector::<u8>::new();
    imgcodecs::imencode_def(".png", &mat, &mut buf).map_err(cv)?;
    write_atomic(path, buf.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wheel_has_55_colours_starting_red() {
        let wheel = colour_wheel();
        assert_eq!(wheel.len(), 55);
        assert_eq!(wheel[0], [255.0, 0.0, 0.0]);
        // Start of yellow→green, green→cyan, cyan→blue, blue→magenta, magenta→red.
        assert_eq!(wheel[15], [255.0, 255.0, 0.0]);
        assert_eq!(wheel[21], [0.0, 255.0, 0.0]);
        assert_eq!(wheel[25], [0.0, 255.0, 255.0]);
        assert_eq!(wheel[36], [0.0, 0.0, 255.0]);
        assert_eq!(wheel[49], [255.0, 0.0, 255.0]);
    }

    #[test]
    fn zero_flow_is_white_and_colours_match_torchvision() {
        let image = flow_to_image(1, 2, &[0.0, 0.0, 0.0, 0.0]);
        assert_eq!(image.rgb, vec![255; 6]);
        assert_eq!(image.max_magnitude_px, 0.0);
        // torchvision.utils.flow_to_image on a 1×5 field: right, down, left, up (magnitude 2), and (1, −1).
        let field = [2.0, 0.0, 0.0, 2.0, -2.0, 0.0, 0.0, -2.0, 1.0, -1.0];
        let image = flow_to_image(1, 5, &field);
        assert_eq!(image.max_magnitude_px, 2.0);
        let expected: [u8; 15] = [255, 0, 0, 255, 229, 0, 0, 209, 255, 87, 0, 255, 230, 74, 255];
        assert_eq!(image.rgb, expected);
    }

    #[test]
    fn legend_is_white_outside_the_disc() {
        let legend = wheel_legend(9);
        assert_eq!(&legend.rgb[0..3], &[255, 255, 255]);
        let centre = (4 * 9 + 4) * 3;
        assert_eq!(&legend.rgb[centre..centre + 3], &[255, 255, 255]);
        let rim = (4 * 9 + 8) * 3;
        assert_ne!(&legend.rgb[rim..rim + 3], &[255, 255, 255]);
    }
}
