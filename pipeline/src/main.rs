//! `mrdino`: instance pseudo-labels of moving objects from raw video, following MR-DINOSAUR.
//!
//! The binary is the only crate that knows the command line, threads and the terminal; the computations live in
//! `mrdino-stages` and `mrdino-model`, the readers in `mrdino-datasets` and `mrdino-outputs`, the writers in
//! `mrdino-outputs`. Layers, top to bottom: this entry (parse, dispatch, exit code), `cli` (every command's flags,
//! shared flag groups), `settings` (flags + preset + config file → one validated, hashed parameter set), `steps`
//! (one module per step of the data flow) and `engine` (stop handle, unit driver, bookkeeping, status/finalize,
//! the training loop).
//!
//! Exit codes: 0 success; 1 error (configuration, I/O); 2 usage; 3 completed, but some units or frames failed;
//! 4 stopped early (signal or `--time-budget`): run the same command again to resume.
#![warn(clippy::too_many_lines)] // no function of the binary longer than clippy.toml allows (79 lines)

mod cli;
mod engine;
mod settings;
mod steps;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use cli::{Cli, Command};
use engine::status::{self, JobKind};
use engine::stop::{StopHandle, EXIT_FAILURES};

/// Every unit job kind, for `status` and `finalize` (labels first: the kind of a directory without a plan).
const JOBS: &[JobKind] = &[
    steps::labels::JOB,
    steps::flow::JOB,
    steps::features::JOB,
    steps::infer::JOB,
    steps::name::JOB,
];

fn dispatch(command: &Command, stop: &StopHandle) -> Result<ExitCode> {
    let done = |result: Result<()>| result.map(|()| ExitCode::SUCCESS);
    match command {
        Command::Labels(args) => steps::labels::run(args, stop),
        Command::Plan(args) => steps::labels::plan(args),
        Command::Flow(args) => steps::flow::run(args, stop),
        Command::Synth(args) => steps::synth::run(args, stop),
        Command::Eval(args) => done(steps::eval::run(args)),
        Command::Report(args) => done(steps::report::run(args)),
        Command::Compare(args) => done(steps::compare::run(args)),
        Command::Train(command) => steps::train::run(command, stop),
        Command::Refine(command) => steps::refine::run(command, stop),
        Command::Analyze(args) => steps::analyze::run(args, stop),
        Command::Features(args) => steps::features::run(args, stop),
        Command::Infer(args) => steps::infer::run(args, stop),
        Command::Name(args) => steps::name::run(args, stop),
        Command::Segment(args) => steps::segment::run(args, stop),
        Command::Export(args) => steps::export::run(args),
        Command::Status(args) => {
            let kind = match args.out.is_dir() {
                true => engine::kinds::kind_of_directory(&args.out)?,
                false => None,
            };
            if kind.as_deref() == Some(engine::kinds::TRAINING_KIND) {
                let done = engine::training::print_run_status(&args.out)?;
                return Ok(if done { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FAILURES) });
            }
            let kind = status::kind_of(&args.out, JOBS)?;
            let report = status::status(kind, &args.out, args.params.as_deref(), args.num_shards)?;
            status::print_status(kind, &report);
            Ok(if report.complete() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILURES)
            })
        }
        Command::Finalize(args) => {
            let kind = status::kind_of(&args.out, JOBS)?;
            let path = status::finalize(kind, &args.out, args.params.as_deref())?;
            println!("finalized: {}", path.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    let stop = StopHandle::new();
    if let Err(e) = stop.install_signal_handler() {
        eprintln!("warning: cannot install the signal handler: {e}");
    }
    let cli = Cli::parse();
    match dispatch(&cli.command, &stop) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
