//! Decoded frames and the geometry that maps them back to the files they came from.
//!
//! Every reader hands out [`Frame`]s at the *processing* resolution (the resolution flow and labels live at)
//! together with a [`Geometry`] that says how that grid relates to the original pixels, so masks can be mapped
//! back without guessing. Inputs are never modified: resizing and cropping happen in memory.

use serde::{Deserialize, Serialize};

/// An 8-bit RGB image, rows of `width` pixels, channels interleaved (R, G, B).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub height: usize,
    pub width: usize,
    pub data: Vec<u8>,
}

impl RgbImage {
    pub fn new(height: usize, width: usize, data: Vec<u8>) -> Self {
        assert_eq!(
            data.len(),
            height * width * 3,
            "RgbImage buffer does not match {height}x{width}x3"
        );
        Self { height, width, data }
    }

    /// The (R, G, B) value at `row`, `col`.
    pub fn pixel(&self, row: usize, col: usize) -> [u8; 3] {
        let i = (row * self.width + col) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }
}

/// How the processing grid relates to the original image: first a resize of the whole image from
/// `orig_width`×`orig_height` to `resized_width`×`resized_height`, then a crop of `height` rows starting at
/// `crop_top` and `width` columns starting at `crop_left`. An original pixel (x, y) lands at
/// ((x + 0.5)·scale_x − 0.5 − crop_left, (y + 0.5)·scale_y − 0.5 − crop_top).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Geometry {
    pub orig_height: usize,
    pub orig_width: usize,
    pub resized_height: usize,
    pub resized_width: usize,
    pub crop_top: usize,
    pub crop_left: usize,
    pub height: usize,
    pub width: usize,
}

impl Geometry {
    /// The identity mapping: the processing grid is the original image.
    pub fn native(height: usize, width: usize) -> Self {
        Self {
            orig_height: height,
            orig_width: width,
            resized_height: height,
            resized_width: width,
            crop_top: 0,
            crop_left: 0,
            height,
            width,
        }
    }

    pub fn scale_x(&self) -> f32 {
        self.resized_width as f32 / self.orig_width as f32
    }

    pub fn scale_y(&self) -> f32 {
        self.resized_height as f32 / self.orig_height as f32
    }

    pub fn is_native(&self) -> bool {
        self.resized_height == self.orig_height
            && self.resized_width == self.orig_width
            && self.height == self.orig_height
            && self.width == self.orig_width
    }
}

/// One decoded frame of a sequence at the processing resolution.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Position in the sequence, 0-based, in the reader's deterministic order.
    pub index: usize,
    /// File stem (or `000000`-style index for videos); never renumbered.
    pub name: String,
    pub image: RgbImage,
    pub geometry: Geometry,
}
