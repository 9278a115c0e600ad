//! Restarts chosen without ground truth (`train dinosaur --candidates N [--candidate-steps S]`).
//!
//! Whether a DINOSAUR's slots split over the objects or collapse into one shared mask is decided in its first few
//! hundred steps, by the seed and by the machine's floating-point rounding. Instead of finding out at the end, N
//! candidates train from seeds seed, seed + 1, … for S steps each, every one a full run directory
//! `RUN/candidates/seed-<s>/` with the run's whole schedule (its `steps`), stopped at S. Each is assessed at S by
//! `mrdino_model::collapse::assess` on its logged Mask Similarity and attention entropy, and
//! `mrdino_model::collapse::choose` picks one: not collapsed, then the lowest Mask Similarity, then the lowest seed.
//! `RUN/candidates/choice.json` records every candidate's figures and the choice (written atomically once all
//! candidates are done); the chosen candidate's checkpoint and logs are copied into `RUN/` (the checkpoint last,
//! atomically) and the run continues from there with the chosen seed, so the result is the run a single
//! `--seed <chosen>` would have given, byte for byte.
//!
//! Everything is resumable: a candidate stopped by a signal, the time budget or kill -9 resumes from its own
//! checkpoint, and since candidates resume exactly and the choice is a pure function of their logs, the same
//! command reaches the same choice and the same final weights. A rerun with other `--candidates`,
//! `--candidate-steps` or `--seed` than the recorded choice is refused, naming both.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, ensure, Context, Result};
use mrdino_model::collapse::{self, Candidate, Choice};
use mrdino_outputs::checkpoint::RunLayout;
use mrdino_outputs::write_atomic;
use tch::Device;

use super::{open_source, train_run};
use crate::cli::train::DinosaurTrainArgs;
use crate::engine::stop::{StopHandle, EXIT_STOPPED};
use crate::engine::training::{logged_rows, prepare_run_dir, read_choice};
use crate::settings::train::TrainParams;

/// S: `--candidate-steps`, default the first collapse check step; it must leave steps to continue.
fn candidate_steps(args: &DinosaurTrainArgs, params: &TrainParams) -> Result<u64> {
    let s = args.candidate_steps.map_or(collapse::FIRST_CHECK_STEP, |s| s as u64);
    ensure!(
        s < params.steps,
        "--candidate-steps {s} must be fewer than the run's steps = {} (the chosen candidate continues to them)",
        params.steps
    );
    Ok(s)
}

/// Runs or resumes the candidates and the choice; on success sets `params.seed` to the chosen seed, with the chosen
/// candidate's checkpoint in `layout`. `Some(exit code 4)` when stopped before the choice.
pub fn choose(
    args: &DinosaurTrainArgs,
    params: &mut TrainParams,
    layout: &RunLayout,
    device: Device,
    stop: &StopHandle,
) -> Result<Option<ExitCode>> {
    let steps = candidate_steps(args, params)?;
    let dir = layout.dir.join("candidates");
    let choice_path = dir.join("choice.json");
    let choice = match read_choice(&choice_path)? {
        Some(choice) => {
            check_same(&choice, args.candidates, steps, params.seed, &choice_path)?;
            choice
        }
        None => {
            ensure!(
                !layout.checkpoint_file().is_file(),
                "{} holds a run started without --candidates; use another --out",
                layout.dir.display()
            );
            let mut assessed = Vec::with_capacity(args.candidates);
            for i in 0..args.candidates {
                match train_candidate(args, params, &dir, i, steps, device, stop)? {
                    Ok(candidate) => assessed.push(candidate),
                    Err(stopped) => return Ok(Some(stopped)),
                }
            }
            let choice = Choice::decide(args.candidates, steps, params.seed, assessed).context("no candidates")?;
            write_atomic(&choice_path, &serde_json::to_vec_pretty(&choice)?)?;
            choice
        }
    };
    if !args.run.quiet {
        eprintln!("continuing candidate seed {}: {}", choice.chosen_seed, choice.reason);
    }
    params.seed = choice.chosen_seed;
    adopt(&dir.join(format!("seed-{}", choice.chosen_seed)), layout)?;
    Ok(None)
}

/// Trains (or resumes) candidate `i` for `steps` steps and assesses it; `Err(exit code 4)` when stopped.
fn train_candidate(
    args: &DinosaurTrainArgs,
    params: &TrainParams,
    dir: &Path,
    i: usize,
    steps: u64,
    device: Device,
    stop: &StopHandle,
) -> Result<std::result::Result<Candidate, ExitCode>> {
    let mut p = params.clone();
    p.seed = params.seed + i as i64;
    let layout = prepare_run_dir(&dir.join(format!("seed-{}", p.seed)))?;
    if !args.run.quiet {
        eprintln!("candidate {}/{}: seed {}, {steps} steps", i + 1, args.candidates, p.seed);
    }
    let source = open_source(args, &p, device)?;
    train_run(args, &p, &layout, source, device, stop, Some(steps))?;
    if stop.requested() {
        eprintln!("stopped during candidate seed {}; run the same command again to resume", p.seed);
        return Ok(Err(ExitCode::from(EXIT_STOPPED)));
    }
    let figures: Vec<_> = logged_rows(&layout)?.iter().filter_map(|r| r.figures()).collect();
    let Some(verdict) = collapse::assess(&figures, p.model.n_slots, steps) else {
        bail!(
            "{}: no metrics rows in the last {} steps before step {steps} to assess (lower log_every)",
            layout.dir.display(),
            collapse::WINDOW_STEPS
        );
    };
    if !args.run.quiet {
        eprintln!("  seed {}: {}", p.seed, verdict.reason);
    }
    Ok(Ok(Candidate { seed: p.seed, verdict }))
}

fn check_same(choice: &Choice, candidates: usize, steps: u64, seed: i64, path: &Path) -> Result<()> {
    let recorded = (choice.candidates, choice.candidate_steps, choice.first_seed);
    if recorded != (candidates, steps, seed) {
        bail!(
            "{} records --candidates {} --candidate-steps {} --seed {}, now --candidates {candidates} \
             --candidate-steps {steps} --seed {seed}; use the same flags or another --out",
            path.display(),
            recorded.0,
            recorded.1,
            recorded.2
        );
    }
    Ok(())
}

/// Copies the chosen candidate's logs and then its checkpoint (atomically, last) into `layout`, unless the run
/// already has a checkpoint (adopted before, and maybe continued since).
fn adopt(candidate: &Path, layout: &RunLayout) -> Result<()> {
    if layout.checkpoint_file().is_file() {
        return Ok(());
    }
    let from = RunLayout::new(candidate);
    for (src, dst) in [
        (from.metrics_file(), layout.metrics_file()),
        (from.dir.join("timing.jsonl"), layout.dir.join("timing.jsonl")),
        (from.loss_plot_file(), layout.loss_plot_file()),
        (from.checkpoint_file(), layout.checkpoint_file()),
    ] {
        let bytes = std::fs::read(&src).with_context(|| format!("cannot read {}", src.display()))?;
        write_atomic(&dst, &bytes)?;
    }
    Ok(())
}
