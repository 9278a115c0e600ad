//! Where frames and ground truth come from.
//!
//! A source lists [`Sequence`]s (the unit of work: one camera of one drive, scene or video) in a
//! deterministic, sorted order and decodes their frames on demand, in order, at the processing resolution
//! the dataset's reference pipeline uses. Sources never write to their inputs.

pub mod decode;
pub mod error;
pub mod image;
pub mod source;
pub mod synth;

pub use decode::Processing;
pub use error::DatasetError;
pub use image::{Frame, Geometry, RgbImage};
pub use source::{
    kitti_eval_overlap, TRI_PD_BENCHMARK_RESIZE, TRI_PD_BENCHMARK_TOP_CROP_PX, list_sequences, DatasetKind, ImageFile, Sequence, SequenceInput, SourceOptions};
