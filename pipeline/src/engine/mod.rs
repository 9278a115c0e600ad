//! The engine every command runs on: the stop handle (signals and time budget, passed down, no global), the unit
//! driver (sequential or parallel, each unit's error or panic recorded as that unit's failure), plans, markers
//! and run manifests of a unit job, `status`/`finalize` for any job kind, progress bars, the training step
//! loop with its checkpoint cadence, and the check that no output overlaps an input. Steps supply only their
//! unit's work (or their step's work).

pub mod job;
pub mod kinds;
pub mod paths;
pub mod progress;
pub mod runs;
pub mod status;
pub mod stop;
pub mod training;
pub mod units;
