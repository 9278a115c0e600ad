//! The one unit driver every unit job runs on (`labels`, `flow`, `features`, `infer`, `name`, `segment`).
//!
//! For each planned unit of this task's shard, in plan order: stop cleanly when a signal arrived or the time
//! budget is spent (the unit is *interrupted*), skip a unit the bookkeeping says is done (*skipped*), else run the
//! step's work on it, then write its done marker after the files the work wrote (*done*). An error of the work
//! or of the marker, and a panic inside the work, is that unit's failure (*failed*, with the message), never the
//! job's: the next unit runs. [`Stopped`] from the work means the unit was interrupted.
//!
//! Units run on `workers`: one worker runs them one after the other on the calling thread; several run one unit
//! each at a time on scoped threads (the labels step gives each a fork of its flow source), pulling the next unit
//! in plan order, so memory grows with the number of workers, not with the dataset. The outcomes are reported in
//! plan order whatever the number of workers.
//!
//! For tests of this isolation the environment variable `MRDINO_FAULT_PANIC_UNIT=<unit id>` makes the work of
//! that unit panic before it starts (a fault-injection hook; nothing else reads it).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Result;
use indicatif::ProgressBar;
use mrdino_outputs::bookkeeping::{DoneMarker, FrameFailure, Ledger, PlannedUnit, UnitOutcome, UnitStatus};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::job::{UnitTally, CODE_VERSION};
use super::stop::{StopHandle, Stopped};

/// Environment variable naming a unit whose work panics (tests of unit isolation).
pub const FAULT_PANIC_UNIT: &str = "MRDINO_FAULT_PANIC_UNIT";

/// What a unit's work wrote.
pub struct UnitDone<C> {
    /// The per-unit payload of the marker and of the manifest.
    pub counts: C,
    /// The files the marker vouches for.
    pub files: Vec<PathBuf>,
    /// Frames that failed inside an otherwise done unit.
    pub failures: Vec<FrameFailure>,
}

/// The per-unit outcomes of one run, in plan order, and their counts.
pub struct UnitRun<C> {
    pub statuses: Vec<UnitStatus<C>>,
    /// Units planned for this shard and what became of them.
    pub tally: UnitTally,
    /// Frame failures inside the units done by this run.
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
}

/// How units are driven: the job's ledger, its stop handle and what it shows.
pub struct Driver<'a, C> {
    pub ledger: &'a Ledger,
    pub stop: &'a StopHandle,
    /// Advanced once per unit and messaged with the unit's id (hidden when quiet).
    pub bar: &'a ProgressBar,
    pub quiet: bool,
    /// The line printed for a unit done (when the bar is hidden and not quiet); `None`: no line.
    pub describe: Option<&'a (dyn Fn(&C) -> String + Sync)>,
    /// Called with the payload of a unit skipped as done (e.g. to advance a frame bar).
    pub on_skip: Option<&'a (dyn Fn(&C) + Sync)>,
}

/// The text of a panic's payload.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic")
        .to_string()
}

/// The work of one unit on a worker's state: the unit's item and its plan entry in, its outcome out.
pub type UnitWork<'a, W, T, C> = dyn Fn(&mut W, T, &PlannedUnit) -> Result<UnitDone<C>> + Sync + 'a;

impl<C> Driver<'_, C>
where
    C: Clone + Default + Serialize + DeserializeOwned + Send,
{
    fn status(unit: &str, status: UnitOutcome, seconds: f64, error: Option<String>) -> UnitStatus<C> {
        UnitStatus {
            unit: unit.to_string(),
            status,
            seconds,
            error,
            failures: Vec::new(),
            payload: C::default(),
        }
    }

    fn say(&self, line: &str) {
        self.bar.suspend(|| eprintln!("{line}"));
    }

    /// One unit: stop, skip, or run `work` and write the marker; a panic is the unit's failure.
    fn one(&self, planned: &PlannedUnit, work: impl FnOnce() -> Result<UnitDone<C>>) -> UnitStatus<C> {
        let id = planned.id.as_str();
        if self.stop.requested() {
            return Self::status(id, UnitOutcome::Interrupted, 0.0, None);
        }
        if let Some(marker) = self.ledger.is_done::<C>(planned) {
            if let Some(on_skip) = self.on_skip {
                on_skip(&marker.payload);
            }
            self.bar.inc(1);
            return UnitStatus {
                unit: id.to_string(),
                status: UnitOutcome::Skipped,
                seconds: 0.0,
                error: None,
                failures: marker.failures,
                payload: marker.payload,
            };
        }
        let started = Instant::now();
        self.bar.set_message(planned.id.clone());
        let fault = std::env::var(FAULT_PANIC_UNIT).is_ok_and(|u| u == id);
        let result = catch_unwind(AssertUnwindSafe(|| {
            if fault {
                panic!("fault injected by {FAULT_PANIC_UNIT}");
            }
            work()
        }))
        .unwrap_or_else(|panic| {
            Err(anyhow::anyhow!(
                "internal error while processing the unit: {}",
                panic_message(panic.as_ref())
            ))
        })
        .and_then(|output| {
            let marker = DoneMarker::new(
                self.ledger,
                planned,
                &output.files,
                CODE_VERSION,
                started.elapsed().as_secs_f64(),
                output.failures.clone(),
                output.counts.clone(),
            );
            self.ledger.write_marker(&marker)?;
            Ok(output)
        });
        let seconds = started.elapsed().as_secs_f64();
        self.bar.inc(1);
        match result {
            Ok(output) => {
                if let Some(describe) = self.describe.filter(|_| self.bar.is_hidden() && !self.quiet) {
                    self.say(&format!("{id}: {} in {seconds:.1} s", describe(&output.counts)));
                }
                UnitStatus {
                    unit: id.to_string(),
                    status: UnitOutcome::Done,
                    seconds,
                    error: None,
                    failures: output.failures,
                    payload: output.counts,
                }
            }
            Err(e) if e.chain().any(|c| c.is::<Stopped>()) || self.stop.requested() => {
                Self::status(id, UnitOutcome::Interrupted, seconds, None)
            }
            Err(e) => {
                let message = format!("{e:#}");
                self.say(&format!("error: {id}: {message}"));
                Self::status(id, UnitOutcome::Failed, seconds, Some(message))
            }
        }
    }

    /// Runs `work` on every unit of `units` (paired with its plan entry) on `workers` (at least one; see the
    /// module docs), and returns the outcomes in the order of `units`.
    pub fn run<T, W>(
        &self,
        units: Vec<(T, &PlannedUnit)>,
        mut workers: Vec<W>,
        work: &UnitWork<'_, W, T, C>,
    ) -> UnitRun<C>
    where
        T: Send,
        W: Send,
    {
        let planned = units.len();
        let queue: Vec<Mutex<Option<(T, &PlannedUnit)>>> = units.into_iter().map(|u| Mutex::new(Some(u))).collect();
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<(usize, UnitStatus<C>)>> = Mutex::new(Vec::with_capacity(planned));
        let drain = |worker: &mut W| loop {
            let i = next.fetch_add(1, Ordering::SeqCst);
            let Some(slot) = queue.get(i) else { break };
            let Some((item, planned)) = slot.lock().ok().and_then(|mut s| s.take()) else {
                continue;
            };
            let status = self.one(planned, || work(worker, item, planned));
            if let Ok(mut r) = results.lock() {
                r.push((i, status));
            }
        };
        let first = workers.pop();
        std::thread::scope(|scope| {
            for mut worker in workers {
                let drain = &drain;
                scope.spawn(move || drain(&mut worker));
            }
            if let Some(mut worker) = first {
                drain(&mut worker);
            }
        });
        let mut results = results.into_inner().unwrap_or_default();
        results.sort_by_key(|(i, _)| *i);
        self.tally(results.into_iter().map(|(_, s)| s).collect(), planned)
    }

    /// Runs `work` on every unit of `units`, one after the other on this thread (work that cannot be shared
    /// between threads, e.g. a libtorch model).
    pub fn run_each<T>(
        &self,
        units: Vec<(T, &PlannedUnit)>,
        mut work: impl FnMut(T, &PlannedUnit) -> Result<UnitDone<C>>,
    ) -> UnitRun<C> {
        let planned = units.len();
        let statuses = units
            .into_iter()
            .map(|(item, unit)| self.one(unit, || work(item, unit)))
            .collect();
        self.tally(statuses, planned)
    }

    fn tally(&self, statuses: Vec<UnitStatus<C>>, planned: usize) -> UnitRun<C> {
        self.bar.finish_and_clear();
        let mut run = UnitRun {
            statuses: Vec::with_capacity(planned),
            tally: UnitTally {
                planned,
                ..UnitTally::default()
            },
            frame_failures: 0,
        };
        for status in statuses {
            run.tally.count(status.status);
            if status.status == UnitOutcome::Done {
                run.frame_failures += status.failures.len();
            }
            run.statuses.push(status);
        }
        run
    }
}
