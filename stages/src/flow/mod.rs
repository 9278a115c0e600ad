//! Forward optical flow between consecutive frames, t → t+1, in pixels of the processing resolution.
//!
//! Channel 0 is u (column / x displacement), channel 1 is v (row / y displacement), matching the
//! reference's `.npy` flows (H, W, 2).

use mrdino_datasets::RgbImage;

pub mod classic;
pub mod files;
pub mod raft;
pub mod source;

pub use classic::{DisFlow, DisPreset, FarnebackFlow};

/// A dense flow field, row-major, (u, v) interleaved: `uv[2 * (row * width + col)]` is u.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowField {
    pub height: usize,
    pub width: usize,
    pub uv: Vec<f32>,
}

impl FlowField {
    pub fn new(height: usize, width: usize, uv: Vec<f32>) -> Self {
        assert_eq!(
            uv.len(),
            height * width * 2,
            "flow buffer does not match {height}x{width}x2"
        );
        Self { height, width, uv }
    }

    pub fn zeros(height: usize, width: usize) -> Self {
        Self::new(height, width, vec![0.0; height * width * 2])
    }

    #[inline]
    pub fn u(&self, row: usize, col: usize) -> f32 {
        self.uv[2 * (row * self.width + col)]
    }

    #[inline]
    pub fn v(&self, row: usize, col: usize) -> f32 {
        self.uv[2 * (row * self.width + col) + 1]
    }

    /// Per-pixel magnitude sqrt(u² + v²) in float32, as the reference computes it.
    pub fn magnitude(&self) -> Vec<f32> {
        self.uv
            .chunks_exact(2)
            .map(|p| (p[0] * p[0] + p[1] * p[1]).sqrt())
            .collect()
    }
}

/// Errors of the flow stage.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("flow: {0}")]
    Backend(String),
    #[error("{path}: {message}")]
    File { path: std::path::PathBuf, message: String },
}

/// Anything that turns frame pairs into forward flow. Implementations may batch; `estimate` returns one
/// field per pair, in order.
pub trait FlowEstimator: Send {
    /// A short identifier recorded in the outputs, e.g. `dis-medium`, `raft-small`.
    fn name(&self) -> String;
    fn estimate(&mut self, pairs: &[(&RgbImage, &RgbImage)]) -> Result<Vec<FlowField>, FlowError>;

    /// An independent estimator with the same settings and identical results, for another thread; `None`
    /// when the estimator must stay one (a network on one device batches instead).
    fn fork(&self) -> Option<Box<dyn FlowEstimator>> {
        None
    }
}
