//! The one rule about where a command may write: never over, into or around its own inputs.
//!
//! [`check_outputs`] runs before any work and refuses an output (a file or a directory) that is one of the
//! command's inputs, lies inside one, or contains one (an input inside the output directory), naming the output
//! and the input with their flags. Paths are compared after resolving them: an existing path is canonicalised
//! (symbolic links, `..`, relative paths), a path that does not exist yet through its nearest existing ancestor,
//! the rest appended component by component. Comparison is by whole components (`out/run2` is not inside
//! `out/run`).
//!
//! A run directory of another command is an input through the directories its readers read
//! ([`job_inputs`]: its tables and its bookkeeping), not as a whole: a report or an `eval` JSON written beside
//! them (`RUN/report`, `RUN/_eval-<hash>.json`) writes into none of them.

use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The bookkeeping directories of a unit job (`mrdino_outputs::bookkeeping`): parameters, plans, done markers,
/// run manifests.
const BOOKKEEPING_DIRS: [&str; 4] = ["_params", "_plan", "_done", "_manifest"];

/// What the readers of the unit job at `root` read: its data directories (`data_dirs`, e.g. `frames`,
/// `instances`) and its bookkeeping.
pub fn job_inputs(root: &Path, data_dirs: &[&str]) -> Vec<PathBuf> {
    data_dirs
        .iter()
        .chain(BOOKKEEPING_DIRS.iter())
        .map(|dir| root.join(dir))
        .collect()
}

/// `path` made absolute with symbolic links resolved: canonical when it exists, else its nearest existing
/// ancestor canonicalised and the rest appended (`.` dropped, `..` taking away the previous component).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .context("cannot read the current directory")?
            .join(path)
    };
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(canonical) = existing.canonicalize() {
            let mut resolved = canonical;
            for component in rest.iter().rev() {
                match component {
                    Component::ParentDir => {
                        resolved.pop();
                    }
                    Component::CurDir => {}
                    other => resolved.push(other.as_os_str()),
                }
            }
            return Ok(resolved);
        }
        let (Some(parent), Some(last)) = (existing.parent(), existing.components().next_back()) else {
            return Ok(absolute);
        };
        rest.push(last);
        existing = parent;
    }
}

/// Refuses, before any work, an output that is, lies inside or contains one of the inputs (see the module docs).
/// Each path comes with the flag (or name) the message uses.
pub fn check_outputs(inputs: &[(&str, &Path)], outputs: &[(&str, &Path)]) -> Result<()> {
    let resolved_inputs = inputs
        .iter()
        .map(|(flag, path)| Ok((*flag, *path, resolve(path)?)))
        .collect::<Result<Vec<_>>>()?;
    for (out_flag, out_path) in outputs {
        let out = resolve(out_path)?;
        for (in_flag, in_path, input) in &resolved_inputs {
            let relation = if out == *input {
                "is"
            } else if out.starts_with(input) {
                "lies inside"
            } else if input.starts_with(&out) {
                "contains"
            } else {
                continue;
            };
            bail!(
                "{out_flag} {} {relation} the input {in_flag} {}: a command never writes over its inputs; choose \
                 another output",
                out_path.display(),
                in_path.display()
            );
        }
    }
    Ok(())
}

/// [`check_outputs`] for the one output directory (`--out`) of a job, with its optional inputs (absent flags are
/// `None`); a run directory given as an input is read through [`job_inputs`].
pub fn check_out_dir(out: &Path, inputs: &[(&str, Option<&Path>)]) -> Result<()> {
    let present: Vec<(&str, &Path)> = inputs.iter().filter_map(|(flag, path)| path.map(|p| (*flag, p))).collect();
    check_outputs(&present, &[("--out", out)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(inputs: &[(&str, &Path)], output: &Path) -> String {
        match check_outputs(inputs, &[("--out", output)]) {
            Ok(()) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn an_output_that_is_inside_or_around_an_input_is_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let run = root.join("run");
        std::fs::create_dir_all(run.join("instances/params=h")).unwrap();
        std::fs::write(run.join("instances/params=h/a.parquet"), b"x").unwrap();
        std::fs::write(root.join("in.json"), b"{}").unwrap();
        let tables = run.join("instances");
        let inputs: [(&str, &Path); 2] = [("--labels", &tables), ("--eval", &root.join("in.json"))];

        let same = refused(&inputs, &root.join("in.json"));
        assert!(
            same.contains("is the input --eval") && same.contains("in.json"),
            "{same}"
        );
        let inside = refused(&inputs, &run.join("instances/params=h/a.parquet"));
        assert!(inside.contains("lies inside the input --labels"), "{inside}");
        assert!(inside.contains("a.parquet") && inside.contains("instances"), "{inside}");
        let new_inside = refused(&inputs, &run.join("instances/params=h/new/x.json"));
        assert!(new_inside.contains("lies inside"), "{new_inside}");
        let around = refused(&inputs, &run);
        assert!(around.contains("contains the input --labels"), "{around}");
        assert!(refused(&inputs, root).contains("contains"));

        // Beside the inputs is fine, and so is a sibling whose name only starts like an input's.
        assert_eq!(refused(&inputs, &run.join("report")), "");
        assert_eq!(refused(&inputs, &run.join("_eval-h.json")), "");
        assert_eq!(refused(&inputs, &run.join("instances2")), "");
        assert_eq!(refused(&inputs, &root.join("in.json.bak")), "");
    }

    #[test]
    fn paths_are_compared_after_resolving_dots_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("data/seq")).unwrap();
        let data = root.join("data");
        let inputs: [(&str, &Path); 1] = [("--gt", &data)];
        assert!(refused(&inputs, &root.join("other/../data/seq/x.png")).contains("lies inside"));
        assert!(refused(&inputs, &root.join("data/./new/../x.json")).contains("lies inside"));
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&data, root.join("link")).unwrap();
            assert!(refused(&inputs, &root.join("link/new.json")).contains("lies inside"));
            assert!(refused(&inputs, &root.join("link")).contains("is the input"));
        }
        assert_eq!(refused(&inputs, &root.join("out/report")), "");
        assert_eq!(refused(&[], &root.join("out")), "");
    }

    #[test]
    fn a_job_is_read_through_its_tables_and_bookkeeping() {
        let inputs = job_inputs(Path::new("/r"), &["frames", "instances"]);
        let names: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            names,
            [
                "/r/frames",
                "/r/instances",
                "/r/_params",
                "/r/_plan",
                "/r/_done",
                "/r/_manifest"
            ]
        );
    }
}
