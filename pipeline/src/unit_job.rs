//! The run loop every per-sequence job after `labels` shares (`features`, `infer`, `name`, `segment`): for each
//! planned unit of this shard, stop cleanly on a signal or the time budget, skip what the ledger says is done,
//! run the unit, write its done marker, and record what happened; then the run manifest, the exit code.
//!
//! A unit's work writes its output files and returns them with its counts; the driver writes the marker after
//! them (so a marker never names files that are not there), and an error of the work or of the marker is that
//! unit's failure, not the job's. [`Stopped`] from the work means the unit was interrupted, not failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use indicatif::ProgressBar;
use mrdino_outputs::bookkeeping::{
    unix_now, DoneMarker, FrameFailure, Ledger, PlannedUnit, RunManifest, Shard, UnitOutcome, UnitStatus,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::job::{UnitTally, CODE_VERSION};
use crate::run::STOP;

/// A stop request (signal or time budget) seen inside a unit's work.
#[derive(Debug)]
pub(crate) struct Stopped;

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stopped")
    }
}

impl std::error::Error for Stopped {}

/// What a unit's work wrote.
pub(crate) struct UnitDone<C> {
    /// The per-unit payload of the marker and of the manifest.
    pub counts: C,
    /// The files the marker vouches for.
    pub files: Vec<PathBuf>,
    /// Frames that failed inside an otherwise done unit.
    pub failures: Vec<FrameFailure>,
}

/// The per-unit outcomes of one run and their counts.
pub(crate) struct UnitRun<C> {
    pub statuses: Vec<UnitStatus<C>>,
    /// Units planned for this shard and what became of them.
    pub tally: UnitTally,
    pub frame_failures: usize,
}

impl<C> UnitRun<C> {
    /// The payloads of the units done in this run.
    pub fn done_counts(&self) -> impl Iterator<Item = &C> {
        self.statuses
            .iter()
            .filter(|s| s.status == UnitOutcome::Done)
            .map(|s| &s.payload)
    }

    /// Writes the run manifest (see [`write_run_manifest`]) and returns the exit code.
    pub fn finish<T: Serialize>(
        self,
        ledger: &Ledger,
        params_hash: &str,
        params: serde_json::Value,
        shard: Option<Shard>,
        started_unix_s: u64,
        totals: T,
    ) -> Result<ExitCode>
    where
        C: Serialize,
    {
        let exit = self.exit_code();
        write_run_manifest(
            ledger,
            params_hash,
            params,
            shard,
            started_unix_s,
            self.statuses,
            totals,
        )?;
        Ok(exit)
    }

    /// 4 when a unit was interrupted (rerun to resume), 3 when a unit or a frame failed, else success.
    pub fn exit_code(&self) -> ExitCode {
        if self.tally.interrupted > 0 {
            ExitCode::from(crate::EXIT_STOPPED)
        } else if self.tally.failed + self.frame_failures > 0 {
            ExitCode::from(crate::EXIT_FAILURES)
        } else {
            ExitCode::SUCCESS
        }
    }
}

/// The loop's context: the job's ledger, when it started, its time budget and its progress bar.
pub(crate) struct UnitDriver<'a> {
    pub ledger: &'a Ledger,
    pub started: Instant,
    pub time_budget: Option<Duration>,
    /// Advanced once per unit and messaged with the unit's id; `None`: a line per unit done unless `quiet`.
    pub bar: Option<&'a ProgressBar>,
    pub quiet: bool,
}

impl UnitDriver<'_> {
    /// Whether a signal arrived or the time budget is spent (which then also raises the process-wide stop flag).
    pub fn stop_requested(&self) -> bool {
        if self.time_budget.is_some_and(|b| self.started.elapsed() >= b) {
            STOP.store(true, Ordering::SeqCst);
        }
        STOP.load(Ordering::SeqCst)
    }

    fn say(&self, line: String) {
        match self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// Runs `work` on every unit of `units` (paired with its plan entry) that is not done yet, in order.
    /// `describe` gives the line printed for a unit done when there is no progress bar.
    pub fn run<'u, T, C>(
        &self,
        units: impl IntoIterator<Item = (T, &'u PlannedUnit)>,
        mut work: impl FnMut(T, &PlannedUnit) -> Result<UnitDone<C>>,
        describe: impl Fn(&C) -> String,
    ) -> UnitRun<C>
    where
        C: Clone + Default + Serialize + DeserializeOwned,
    {
        let mut run = UnitRun {
            statuses: Vec::new(),
            tally: UnitTally::default(),
            frame_failures: 0,
        };
        let status = |unit: &str, status, seconds, error, failures, payload| UnitStatus {
            unit: unit.to_string(),
            status,
            seconds,
            error,
            failures,
            payload,
        };
        let mut stopped = false;
        for (item, planned) in units {
            run.tally.planned += 1;
            let id = planned.id.as_str();
            if stopped || self.stop_requested() {
                stopped = true;
                run.tally.interrupted += 1;
                run.statuses.push(status(
                    id,
                    UnitOutcome::Interrupted,
                    0.0,
                    None,
                    Vec::new(),
                    C::default(),
                ));
                continue;
            }
            if let Some(marker) = self.ledger.is_done::<C>(planned) {
                run.tally.skipped += 1;
                run.statuses
                    .push(status(id, UnitOutcome::Skipped, 0.0, None, Vec::new(), marker.payload));
                if let Some(bar) = self.bar {
                    bar.inc(1);
                }
                continue;
            }
            let unit_started = Instant::now();
            if let Some(bar) = self.bar {
                bar.set_message(planned.id.clone());
            }
            let result = work(item, planned).and_then(|output| {
                let marker = DoneMarker::new(
                    self.ledger,
                    planned,
                    &output.files,
                    CODE_VERSION,
                    unit_started.elapsed().as_secs_f64(),
                    output.failures.clone(),
                    output.counts.clone(),
                );
                self.ledger.write_marker(&marker)?;
                Ok(output)
            });
            let seconds = unit_started.elapsed().as_secs_f64();
            match result {
                Ok(output) => {
                    if self.bar.is_none() && !self.quiet {
                        self.say(format!("{id}: {} in {seconds:.1} s", describe(&output.counts)));
                    }
                    run.tally.done += 1;
                    run.frame_failures += output.failures.len();
                    run.statuses.push(status(
                        id,
                        UnitOutcome::Done,
                        seconds,
                        None,
                        output.failures,
                        output.counts,
                    ));
                }
                Err(e) if e.is::<Stopped>() => {
                    stopped = true;
                    run.tally.interrupted += 1;
                    run.statuses.push(status(
                        id,
                        UnitOutcome::Interrupted,
                        seconds,
                        None,
                        Vec::new(),
                        C::default(),
                    ));
                }
                Err(e) => {
                    let message = format!("{e:#}");
                    self.say(format!("error: {id}: {message}"));
                    run.tally.failed += 1;
                    run.statuses.push(status(
                        id,
                        UnitOutcome::Failed,
                        seconds,
                        Some(message),
                        Vec::new(),
                        C::default(),
                    ));
                }
            }
            if let Some(bar) = self.bar {
                bar.inc(1);
            }
        }
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
        run
    }
}

/// Writes the manifest of this run (this shard's, when sharded) with the job's `totals`, and returns it.
pub(crate) fn write_run_manifest<C: Serialize, T: Serialize>(
    ledger: &Ledger,
    params_hash: &str,
    params: serde_json::Value,
    shard: Option<Shard>,
    started_unix_s: u64,
    statuses: Vec<UnitStatus<C>>,
    totals: T,
) -> Result<RunManifest<C, T>> {
    let manifest = RunManifest {
        kind: ledger.kind().to_string(),
        params_hash: params_hash.to_string(),
        params,
        code_version: CODE_VERSION.to_string(),
        command_line: std::env::args().collect(),
        shard: shard.map(|s| s.to_string()),
        host: mrdino_outputs::atomic::host_name().to_string(),
        pid: std::process::id(),
        started_unix_s,
        finished_unix_s: unix_now(),
        units: statuses,
        totals,
    };
    ledger.write_manifest(&manifest, shard)?;
    Ok(manifest)
}
