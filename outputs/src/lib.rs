//! What the pipeline writes: Parquet tables with COCO RLE masks, atomic files, done markers and manifests,
//! overlay images, flow colour images and the HTML report; and what reads a run back: its tables
//! ([`runs`]), masks at the original frame resolution ([`provenance`]), COCO and YouTube-VIS JSON ([`export`]).

pub mod analysis_report;
pub mod atomic;
pub mod bookkeeping;
pub mod checkpoint;
pub mod export;
pub mod feature_cache;
pub mod flowviz;
pub mod layout;
pub mod names;
pub mod overlay;
pub mod provenance;
pub mod report;
pub mod rle;
pub mod runs;
pub mod tables;
pub mod tensor_keys;
pub mod weights_id;

pub use atomic::{write_atomic, AtomicFile, OutputError};
pub use rle::CocoRle;
pub use tables::{FrameRow, InstanceRow};
