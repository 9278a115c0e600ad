//! Flags of `mrdino report`.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Output directory of `mrdino labels`.
    #[arg(long, value_name = "OUT")]
    pub labels: PathBuf,
    /// Parameter hash to report on (default: the only one, or the latest run when OUT holds several).
    #[arg(long, value_name = "HASH")]
    pub params: Option<String>,
    /// Directory the report is written to (index.html, overlays/, flow/).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Number of labelled frames to show with overlay and flow.
    #[arg(long, value_name = "N", default_value_t = 6)]
    pub samples: usize,
    /// Flow files the labels imported (`labels --flow import --flow-dir DIR`); without it the flow of the
    /// sampled frames is recomputed with OpenCV DIS. A file whose size differs from the frame's is refused.
    #[arg(long, value_name = "DIR")]
    pub flow_dir: Option<PathBuf>,
    /// Output directory of `mrdino name` for this run: names on the overlays and a per-name count table (the
    /// latest names partition made from the reported labels partition).
    #[arg(long, value_name = "OUT")]
    pub names: Option<PathBuf>,
    /// The JSON `mrdino eval --json` wrote for this run: its precision–recall curve of the instances ranked by
    /// score is drawn (the run's params hash must be the evaluated one).
    #[arg(long, value_name = "FILE")]
    pub eval: Option<PathBuf>,
}
