//! `mrdino synth`: writes a small generated dataset with exact ground truth (frames, forward flow,
//! instance maps, motion metadata) for demos, tests and metric checks. The generator, its bounds and the file
//! layout are documented in `mrdino_datasets::synth`; this module maps flags to its parameters
//! (`crate::settings::synth`), runs it under the job's stop handle and prints a summary.
//!
//! Stopping: the generator asks the stop handle before every frame; on SIGINT/SIGTERM or when `--time-budget`
//! is spent it stops and the command exits with code 4. The same command then completes the directory to the
//! bytes of an uninterrupted run (complete sequences are kept, the stopped one is regenerated from its first
//! frame). A second signal quits at once (the engine's rule); the generator writes every file atomically, so
//! that too is resumed. A directory holding another dataset (other parameters, or files but no `synth.json`) is
//! refused. `synth` reads no input, so there is nothing for its output to overlap.

use std::process::ExitCode;

use anyhow::{Context, Result};
use mrdino_datasets::synth::{generate_stoppable, SynthParams, SynthRun, SynthStopped, SynthSummary};

use crate::cli::synth::SynthArgs;
use crate::engine::progress::print_stdout;
use crate::engine::stop::{StopHandle, EXIT_STOPPED};
use crate::settings::synth::resolve;

/// The lines printed for a complete dataset: its size (width first, as every size flag) and, unless `quiet`, its
/// sequences.
fn summary_text(params: &SynthParams, summary: &SynthSummary, quiet: bool) -> String {
    let mut text = format!(
        "synth: {} sequences of {} frames at {}x{} (seed {}) in {}: {} files\n",
        summary.sequences.len(),
        params.frames,
        params.width,
        params.height,
        params.seed,
        summary.out_dir.display(),
        summary.files_written()
    );
    for sequence in summary.sequences.iter().filter(|_| !quiet) {
        text += &format!(
            "  {}: {} objects ({} moving), camera static for {} of {} frame pairs\n",
            sequence.name,
            sequence.objects,
            sequence.moving_objects,
            sequence.static_camera_pairs,
            sequence.static_camera_pairs + sequence.moving_camera_pairs
        );
    }
    text
}

/// The note of a stopped run.
fn stopped_text(stopped: &SynthStopped) -> String {
    format!(
        "synth: stopped early with {} of {} sequences complete in {}; run the same command again to resume",
        stopped.sequences_complete,
        stopped.sequences_planned,
        stopped.out_dir.display()
    )
}

/// `mrdino synth`: 0 when the dataset is complete, 4 when it stopped early.
pub fn run(args: &SynthArgs, stop: &StopHandle) -> Result<ExitCode> {
    let params = resolve(args)?;
    let stop = stop.with_budget(args.run.time_budget);
    let run = generate_stoppable(&params, &args.out, &|| stop.requested())
        .with_context(|| format!("generating a synthetic dataset in {}", args.out.display()))?;
    match run {
        SynthRun::Complete(summary) => {
            print_stdout(&summary_text(&params, &summary, args.run.quiet))?;
            Ok(ExitCode::SUCCESS)
        }
        SynthRun::Stopped(stopped) => {
            eprintln!("{}", stopped_text(&stopped));
            Ok(ExitCode::from(EXIT_STOPPED))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn the_size_is_printed_width_first() {
        let params = SynthParams {
            height: 128,
            width: 320,
            ..SynthParams::default()
        };
        let summary = SynthSummary {
            out_dir: PathBuf::from("d"),
            params: params.clone(),
            sequences: Vec::new(),
            records_written: 2,
        };
        let text = summary_text(&params, &summary, false);
        assert!(
            text.starts_with("synth: 0 sequences of 24 frames at 320x128 (seed 0) in d: 2 files"),
            "{text}"
        );
    }
}
