//! Stopping a job cleanly: one handle, made in `main` and passed down to every step, that says whether a signal
//! arrived or the time budget is spent.
//!
//! The first SIGINT/SIGTERM only raises the flag; work polls [`StopHandle::requested`] between frames, batches or
//! steps, finishes nothing half-way (every output is written atomically, markers last) and the command exits
//! with code 4 so that the same command resumes. A second signal quits at once with code 4 through `_exit`, which
//! runs no exit handlers (running them while libtorch or OpenCV threads are busy is what crashes a process);
//! nothing is lost by it, because no file is ever visible half-written.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Exit code of a job stopped early (signal or time budget): run the same command again to resume.
pub const EXIT_STOPPED: u8 = 4;
/// Exit code of a job that completed but some units or frames failed (past `--max-failures`).
pub const EXIT_FAILURES: u8 = 3;

/// Whether the job should stop: a signal arrived, or the time budget is spent.
#[derive(Clone, Debug)]
pub struct StopHandle {
    signalled: Arc<AtomicBool>,
    deadline: Option<Instant>,
}

impl Default for StopHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl StopHandle {
    /// A handle no signal reaches yet and without a time budget.
    pub fn new() -> Self {
        Self {
            signalled: Arc::new(AtomicBool::new(false)),
            deadline: None,
        }
    }

    /// Routes SIGINT and SIGTERM to this handle (once per process); see the module docs.
    pub fn install_signal_handler(&self) -> Result<(), ctrlc::Error> {
        let flag = Arc::clone(&self.signalled);
        ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                // SAFETY: `_exit` ends the process without running any handler; it is async-signal-safe.
                unsafe { libc::_exit(i32::from(EXIT_STOPPED)) }
            }
            eprintln!("\nstopping after the current unit of work (a second signal quits at once)…");
        })
    }

    /// The same handle with a time budget counted from now (`None`: no budget).
    pub fn with_budget(&self, budget: Option<Duration>) -> Self {
        Self {
            signalled: Arc::clone(&self.signalled),
            deadline: budget.map(|b| Instant::now() + b),
        }
    }

    /// Whether a signal arrived or the time budget is spent.
    pub fn requested(&self) -> bool {
        self.signalled.load(Ordering::SeqCst) || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Asks every holder of the handle to stop (as a signal does).
    #[cfg(test)]
    pub fn request(&self) {
        self.signalled.store(true, Ordering::SeqCst);
    }
}

/// A stop request seen inside a unit's work: the unit is interrupted, not failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped;

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stopped")
    }
}

impl std::error::Error for Stopped {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_or_a_request_stops_and_clones_share_the_flag() {
        let stop = StopHandle::new();
        assert!(!stop.requested());
        assert!(stop.with_budget(Some(Duration::ZERO)).requested());
        let budgeted = stop.with_budget(Some(Duration::from_secs(3600)));
        assert!(!budgeted.requested());
        stop.request();
        assert!(budgeted.requested(), "a signal reaches every copy");
    }
}
