//! CPU optical flow from OpenCV: DIS (default when there is no GPU) and Farnebäck.
//!
//! Both work on 8-bit grey images, converted from RGB with OpenCV's `RGB2GRAY` weights. DIS presets trade speed
//! for accuracy (measured at 1242×375 on 2 cores: ultrafast 2.5 ms, fast 4.3 ms, medium 17 ms per pair).
//!
//! A call with several pairs computes them at once on the rayon pool. Every pair gets a fresh OpenCV object:
//! a DIS object reused across pairs gave flows differing by ~1e-7 px from a fresh one (measured in the test
//! below), so reuse would make a pair's flow depend on which pairs a thread computed before. OpenCV's own
//! thread pool is switched off (`cv::setNumThreads(1)`) the first time either method runs, so how OpenCV splits
//! its work cannot depend on the load either; the parallelism is across pairs instead. A pair's flow is then
//! bit-identical whether it is computed alone, in a batch, or on any number of threads (tested).

use mrdino_datasets::RgbImage;
use opencv::core::{Mat, Ptr};
use opencv::prelude::*;
use opencv::{imgproc, video};
use rayon::iter::{IntoParallelRefIterator, ParallelIterator};

use super::{FlowError, FlowEstimator, FlowField};

/// DIS quality presets (OpenCV's `DISOpticalFlow::PRESET_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisPreset {
    Ultrafast,
    Fast,
    Medium,
}

impl DisPreset {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "ultrafast" => Some(Self::Ultrafast),
            "fast" => Some(Self::Fast),
            "medium" => Some(Self::Medium),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Ultrafast => "ultrafast",
            Self::Fast => "fast",
            Self::Medium => "medium",
        }
    }

    fn opencv(self) -> i32 {
        match self {
            Self::Ultrafast => video::DISOpticalFlow_PRESET_ULTRAFAST,
            Self::Fast => video::DISOpticalFlow_PRESET_FAST,
            Self::Medium => video::DISOpticalFlow_PRESET_MEDIUM,
        }
    }
}

fn cv_err(e: opencv::Error) -> FlowError {
    FlowError::Backend(e.to_string())
}

/// Runs OpenCV's flow code on the calling thread only (see the module doc), once per process.
fn serial_opencv() -> Result<(), FlowError> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| opencv::core::set_num_threads(1).map_err(|e| e.to_string()))
        .clone()
        .map_err(FlowError::Backend)
}

/// RGB → 8-bit grey `Mat`.
fn grey(image: &RgbImage) -> Result<Mat, FlowError> {
    let rgb = Mat::new_rows_cols_with_data(image.height as i32, (image.width * 3) as i32, &image.data)
        .map_err(cv_err)?
        .reshape(3, image.height as i32)
        .map_err(cv_err)?
        .try_clone()
        .map_err(cv_err)?;
    let mut out = Mat::default();
    imgproc::cvt_color_def(&rgb, &mut out, imgproc::COLOR_RGB2GRAY).map_err(cv_err)?;
    Ok(out)
}

/// A CV_32FC2 flow `Mat` → [`FlowField`].
fn field_from_mat(flow: &Mat) -> Result<FlowField, FlowError> {
    let height = flow.rows() as usize;
    let width = flow.cols() as usize;
    let flat = flow.reshape(1, 0).map_err(cv_err)?;
    let data: &[f32] = flat.data_typed().map_err(cv_err)?;
    Ok(FlowField::new(height, width, data.to_vec()))
}

fn check_pair(a: &RgbImage, b: &RgbImage) -> Result<(), FlowError> {
    if (a.height, a.width) != (b.height, b.width) {
        return Err(FlowError::Backend(format!(
            "frame sizes differ within a pair: {}x{} and {}x{}",
            a.width, a.height, b.width, b.height
        )));
    }
    Ok(())
}

/// Flow of one pair with an OpenCV flow function (grey t, grey t+1 → CV_32FC2).
fn grey_pair(
    a: &RgbImage,
    b: &RgbImage,
    calc: impl FnOnce(&Mat, &Mat, &mut Mat) -> opencv::Result<()>,
) -> Result<FlowField, FlowError> {
    check_pair(a, b)?;
    let (g0, g1) = (grey(a)?, grey(b)?);
    let mut flow = Mat::default();
    calc(&g0, &g1, &mut flow).map_err(cv_err)?;
    field_from_mat(&flow)
}

/// Runs `calc` on every pair, in parallel when there are several; results in pair order.
fn per_grey_pair(
    pairs: &[(&RgbImage, &RgbImage)],
    calc: impl Fn(&Mat, &Mat, &mut Mat) -> opencv::Result<()> + Sync,
) -> Result<Vec<FlowField>, FlowError> {
    pairs.par_iter().map(|(a, b)| grey_pair(a, b, &calc)).collect()
}

/// OpenCV's Dense Inverse Search flow (a fresh OpenCV object per pair; see the module doc).
pub struct DisFlow {
    preset: DisPreset,
}

impl DisFlow {
    /// Checks that OpenCV can build DIS with this preset.
    pub fn new(preset: DisPreset) -> Result<Self, FlowError> {
        let _: Ptr<video::DISOpticalFlow> = video::DISOpticalFlow::create(preset.opencv()).map_err(cv_err)?;
        Ok(Self { preset })
    }
}

impl FlowEstimator for DisFlow {
    fn name(&self) -> String {
        format!("dis-{}", self.preset.name())
    }

    fn estimate(&mut self, pairs: &[(&RgbImage, &RgbImage)]) -> Result<Vec<FlowField>, FlowError> {
        serial_opencv()?;
        let preset = self.preset.opencv();
        per_grey_pair(pairs, |g0, g1, flow| {
            video::DISOpticalFlow::create(preset)?.calc(g0, g1, flow)
        })
    }

    fn fork(&self) -> Option<Box<dyn FlowEstimator>> {
        Some(Box::new(DisFlow::new(self.preset).ok()?))
    }
}

/// OpenCV's Farnebäck polynomial-expansion flow (pyramid scale 0.5, 3 levels, window 15, 3 iterations,
/// poly_n 5, poly_sigma 1.2).
#[derive(Default)]
pub struct FarnebackFlow;

impl FlowEstimator for FarnebackFlow {
    fn name(&self) -> String {
        "farneback".into()
    }

    fn estimate(&mut self, pairs: &[(&RgbImage, &RgbImage)]) -> Result<Vec<FlowField>, FlowError> {
        serial_opencv()?;
        per_grey_pair(pairs, |g0, g1, flow| {
            video::calc_optical_flow_farneback(g0, g1, flow, 0.5, 3, 15, 3, 5, 1.2, 0)
        })
    }

    fn fork(&self) -> Option<Box<dyn FlowEstimator>> {
        Some(Box::new(FarnebackFlow))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A smooth random-looking texture shifted by a known whole-pixel amount.
    fn textured_pair(height: usize, width: usize, dx: usize, dy: usize) -> (RgbImage, RgbImage) {
        let texture = |r: usize, c: usize| -> u8 {
            let (x, y) = (c as f32, r as f32);
            let v = 128.0 + 60.0 * (x * 0.21).sin() * (y * 0.17).cos() + 50.0 * ((x + 2.0 * y) * 0.07).sin();
            v.clamp(0.0, 255.0) as u8
        };
        let mut a = Vec::with_capacity(height * width * 3);
        let mut b = Vec::with_capacity(height * width * 3);
        for r in 0..height {
            for c in 0..width {
                let va = texture(r + 40, c + 40);
                let vb = texture(r + 40 - dy, c + 40 - dx);
                a.extend([va, va, va]);
                b.extend([vb, vb, vb]);
            }
        }
        (RgbImage::new(height, width, a), RgbImage::new(height, width, b))
    }

    fn interior_mean(flow: &FlowField) -> (f32, f32) {
        let (mut su, mut sv, mut n) = (0.0, 0.0, 0.0);
        for r in 20..flow.height - 20 {
            for c in 20..flow.width - 20 {
                su += flow.u(r, c);
                sv += flow.v(r, c);
                n += 1.0;
            }
        }
        (su / n, sv / n)
    }

    #[test]
    fn dis_recovers_a_known_shift() {
        let (a, b) = textured_pair(120, 160, 3, 2);
        let mut dis = DisFlow::new(DisPreset::Medium).unwrap();
        let flow = dis.estimate(&[(&a, &b)]).unwrap().remove(0);
        assert_eq!((flow.height, flow.width), (120, 160));
        let (u, v) = interior_mean(&flow);
        assert!((u - 3.0).abs() < 0.3 && (v - 2.0).abs() < 0.3, "mean flow ({u}, {v})");
    }

    #[test]
    fn a_batch_computed_in_parallel_equals_pairs_computed_alone() {
        let pairs: Vec<(RgbImage, RgbImage)> = (0..4).map(|k| textured_pair(60, 80, k, 1)).collect();
        let refs: Vec<(&RgbImage, &RgbImage)> = pairs.iter().map(|(a, b)| (a, b)).collect();
        let mut dis = DisFlow::new(DisPreset::Fast).unwrap();
        let alone: Vec<FlowField> = refs.iter().map(|p| dis.estimate(&[*p]).unwrap().remove(0)).collect();
        assert_eq!(dis.estimate(&refs).unwrap(), alone);
        let mut forked = dis.fork().unwrap();
        assert_eq!(forked.estimate(&refs[1..3]).unwrap(), alone[1..3]);
        let farneback: Vec<FlowField> = refs
            .iter()
            .map(|p| FarnebackFlow.estimate(&[*p]).unwrap().remove(0))
            .collect();
        assert_eq!(FarnebackFlow.estimate(&refs).unwrap(), farneback);
    }

    #[test]
    fn farneback_recovers_a_known_shift() {
        let (a, b) = textured_pair(120, 160, 3, 2);
        let flow = FarnebackFlow.estimate(&[(&a, &b)]).unwrap().remove(0);
        let (u, v) = interior_mean(&flow);
        assert!((u - 3.0).abs() < 0.3 && (v - 2.0).abs() < 0.3, "mean flow ({u}, {v})");
    }
}
