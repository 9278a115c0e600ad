//! What the pipeline writes: Parquet tables with COCO RLE masks, atomic files, done markers and manifests,
//! overlay images.

pub mod atomic;
pub mod layout;
pub mod overlay;
pub mod rle;
pub mod tables;

pub use atomic::{write_atomic, AtomicFile, OutputError};
pub use rle::CocoRle;
pub use tables::{FrameRow, InstanceRow};
