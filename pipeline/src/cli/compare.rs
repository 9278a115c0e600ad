//! Flags of `mrdino compare`.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// NAME=FILE: the JSON an `mrdino eval` wrote, under the row name NAME (repeat, in table order).
    #[arg(long = "eval", value_name = "NAME=FILE", required = true)]
    pub evals: Vec<String>,
    /// Write the table as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}
