//! One module per step of the data flow: frames → flow → labels → features → train → refine → infer → eval /
//! name / report (and synth, segment, analyze, compare). Each step imports the engine, the settings, the command
//! line and the libraries, never another step (`tests/layout.rs` keeps it so).

pub mod analyze;
pub mod compare;
pub mod eval;
pub mod export;
pub mod features;
pub mod flow;
pub mod infer;
pub mod labels;
pub mod name;
pub mod refine;
pub mod report;
pub mod segment;
pub mod synth;
pub mod train;
