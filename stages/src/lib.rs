//! The computations of the pipeline, one module per stage. Stages take typed values and return typed values;
//! they know nothing about files, threads or the command line (model weights come in through explicit loaders).

pub mod flow;
pub mod frame_rows;
pub mod ground_truth;
pub mod hdbscan;
pub mod instances;
pub mod metrics;
pub mod rules;
pub mod score;
pub mod select;
pub mod tracks;
