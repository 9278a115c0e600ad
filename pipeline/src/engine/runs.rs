//! Reading the runs other commands made (labels, predictions), as every reading command does it: the library's
//! reader (`mrdino_outputs::runs`) with its note printed, and the source frames a run was made from.

use std::path::Path;

use anyhow::{Context, Result};
use mrdino_datasets::{list_sequences, DatasetKind, Processing, Sequence, SourceOptions};
use mrdino_outputs::runs::{read_run, RunTables};

/// Reads every done unit of the labels or prediction run at `path` (partition `params`, else the only one, else
/// the latest, with a note).
pub fn read_label_tables(path: &Path, params: Option<&str>) -> Result<RunTables> {
    let tables = read_run(path, params)?;
    if let Some(note) = tables.several_partitions_note() {
        eprintln!("note: {note}");
    }
    Ok(tables)
}

/// The source sequences of a run, listed as the run listed them: the dataset and root its plan records (or the
/// overrides), the cameras and frame processing its parameters record (`processing` overrides them).
pub fn source_sequences(
    tables: &RunTables,
    dataset: Option<DatasetKind>,
    root: Option<&Path>,
    processing: Option<Processing>,
) -> Result<Vec<Sequence>> {
    let kind = match dataset {
        Some(kind) => kind,
        None => DatasetKind::parse(&tables.dataset).with_context(|| {
            format!(
                "the run's plan names dataset `{}`, which is not a layout mrdino reads; pass --dataset",
                tables.dataset
            )
        })?,
    };
    let root = root.map_or_else(|| tables.dataset_root.clone(), Path::to_path_buf);
    let field = |key: &str| tables.params.get(key).cloned();
    let cameras: Option<Vec<String>> = field("cameras").and_then(|c| serde_json::from_value(c).ok());
    let processing = match processing {
        Some(p) => p,
        None => field("processing")
            .and_then(|p| serde_json::from_value(p).ok())
            .context("the run's parameters record no frame processing")?,
    };
    list_sequences(&SourceOptions {
        kind,
        root: root.clone(),
        cameras,
        processing: Some(processing),
    })
    .with_context(|| {
        format!(
            "cannot list the source frames (`{}` at {}); pass --root and --dataset if they moved",
            kind.name(),
            root.display()
        )
    })
}
