//! Bookkeeping of resumable, shardable jobs made of units: parameter partitions, plans, done markers, run
//! manifests and shards — the mechanism; the commands (`labels`, `flow`, later `features`, `infer`) decide
//! what a unit computes and which files it writes.
//!
//! # Files, under a job's output root `OUT`
//!
//! ```text
//! OUT/_params/<hash>.json                     the resolved parameters: {kind, params_hash, code_version, params}
//! OUT/_plan/params=<hash>.json                [`Plan`]: every unit of the job, in order, with input fingerprints
//! OUT/_done/params=<hash>/<unit key>.json     [`DoneMarker`]: written after the unit's outputs, so it is last
//! OUT/_manifest/params=<hash>/<run>.json      [`RunManifest`]: one per task and run, never shared
//! OUT/_manifest-<hash>.json                   the merged manifest written by `finalize`
//! ```
//!
//! A *job kind* (`labels`, `flow`, …) names what the units compute; it is recorded in every file, and a root
//! holding another kind's bookkeeping is refused rather than mixed. The *parameter hash* names a partition:
//! outputs of different parameters never share one. Unit ids become file names through
//! [`crate::layout::unit_key`].
//!
//! # The one rule for "done"
//!
//! [`Ledger::is_done`] is the only test: a unit is done when its marker parses, belongs to this kind and
//! parameter hash, carries the planned unit's input fingerprint, and every output file it lists still exists.
//! `labels` (skip on resume), `status`, `finalize`, `eval` and `report` all ask it, so they cannot disagree.
//!
//! # Concurrency
//!
//! Any number of tasks, on one host or many, may work on one root at once. Every write is atomic
//! ([`crate::atomic`]). Nothing is read-modify-written: a plan is a pure function of the parameters and the
//! input listing, so concurrent tasks write identical bytes (and skip the write when the file already holds
//! them); a marker is per unit; a run manifest has a name of its own (shard, start time, host, pid and a random
//! part), so no task's update can overwrite another's. `status` merges what the files say.
//!
//! # Shards
//!
//! [`Shard`] `I/N` holds the units whose stable hash ([`crate::layout::stable_hash64`], FNV-1a of the unit
//! id) is `I` modulo `N`; [`shard_of`] is the one function that says which shard a unit is in.
//!
//! # Use
//!
//! ```text
//! let ledger = Ledger::new(out, "features", &params_hash);
//! ledger.prepare()?;                                   // directories, writability, stale temporaries
//! ledger.write_params(&params, CODE_VERSION)?;
//! ledger.write_plan(&Plan::new("features", &params_hash, dataset, root, CODE_VERSION, units))?;
//! for unit in plan.units.iter().filter(|u| shard.contains(&u.id)) {
//!     if ledger.is_done::<MyPayload>(unit).is_some() { continue }
//!     … write the unit's files atomically …
//!     ledger.write_marker(&DoneMarker::new(&ledger, unit, outputs, seconds, failures, payload))?;
//! }
//! ledger.write_manifest(&manifest)?;
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::atomic::{host_name, remove_stale_temporaries, write_atomic, OutputError};
use crate::layout::{stable_hash64, unit_key};

/// The kind recorded by files written before kinds were recorded (all of them were `labels`).
fn legacy_kind() -> String {
    "labels".into()
}

/// Errors of the bookkeeping; every variant names the file or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum BookkeepingError {
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("no plan at {path} (run `mrdino plan` or the job itself first)")]
    NoPlan { path: PathBuf },
    #[error("{path} belongs to a `{found}` job, not `{expected}`; use another output directory")]
    WrongKind {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("{root} holds no mrdino plan or outputs")]
    NoPartition { root: PathBuf },
    #[error("{root} has no plan or outputs for params={given} (present: {present})")]
    UnknownPartition {
        root: PathBuf,
        given: String,
        present: String,
    },
    #[error("{root} holds several parameter sets ({present}); choose one with --params")]
    SeveralPartitions { root: PathBuf, present: String },
    #[error("bad shard `{text}`: {message}")]
    Shard { text: String, message: String },
}

impl BookkeepingError {
    fn invalid(path: &Path, message: impl std::fmt::Display) -> Self {
        Self::Invalid {
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }
}

/// Shard `index` of `count`: the units with `shard_of(unit, count) == index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    index: u64,
    count: NonZeroU64,
}

impl Shard {
    pub fn new(index: u64, count: u64) -> Result<Self, BookkeepingError> {
        let text = format!("{index}/{count}");
        let count = NonZeroU64::new(count).ok_or_else(|| BookkeepingError::Shard {
            text: text.clone(),
            message: "the shard count must be at least 1".into(),
        })?;
        if index >= count.get() {
            return Err(BookkeepingError::Shard {
                text,
                message: format!("the shard index must be in 0..{count}"),
            });
        }
        Ok(Self { index, count })
    }

    /// Parses `I/N`.
    pub fn parse(text: &str) -> Result<Self, BookkeepingError> {
        let bad = |message: &str| BookkeepingError::Shard {
            text: text.to_string(),
            message: message.to_string(),
        };
        let (i, n) = text.split_once('/').ok_or_else(|| bad("expected I/N"))?;
        let i: u64 = i.trim().parse().map_err(|_| bad("the shard index is not a number"))?;
        let n: u64 = n.trim().parse().map_err(|_| bad("the shard count is not a number"))?;
        Self::new(i, n)
    }

    pub fn index(self) -> u64 {
        self.index
    }

    pub fn count(self) -> NonZeroU64 {
        self.count
    }

    /// Whether `unit_id` belongs to this shard.
    pub fn contains(self, unit_id: &str) -> bool {
        shard_of(unit_id, self.count) == self.index
    }

    /// File-name form, `shard-I-of-N`.
    pub fn file_name(self) -> String {
        format!("shard-{}-of-{}", self.index, self.count)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The shard of `count` that holds `unit_id` (stable FNV-1a hash of the id).
pub fn shard_of(unit_id: &str, count: NonZeroU64) -> u64 {
    stable_hash64(unit_id) % count.get()
}

/// Whether `unit_id` is processed by a task running `shard` (every unit when there is no shard).
pub fn in_shard(unit_id: &str, shard: Option<Shard>) -> bool {
    shard.is_none_or(|s| s.contains(unit_id))
}

/// One unit of a plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedUnit {
    pub id: String,
    /// File-name key of the id ([`unit_key`]).
    pub key: String,
    /// Frames, when known without decoding (image sequences).
    pub frames: Option<usize>,
    /// Identifies the unit's inputs (paths, sizes, modification times); a changed input is redone.
    pub input_fingerprint: String,
}

impl PlannedUnit {
    pub fn new(id: &str, frames: Option<usize>, input_fingerprint: &str) -> Self {
        Self {
            id: id.to_string(),
            key: unit_key(id),
            frames,
            input_fingerprint: input_fingerprint.to_string(),
        }
    }
}

/// Every unit of a job, in processing order: the contract between the tasks of an array job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    #[serde(default = "legacy_kind")]
    pub kind: String,
    pub params_hash: String,
    pub dataset: String,
    pub root: PathBuf,
    pub code_version: String,
    pub units: Vec<PlannedUnit>,
}

impl Plan {
    pub fn new(
        kind: &str,
        params_hash: &str,
        dataset: &str,
        root: &Path,
        code_version: &str,
        units: Vec<PlannedUnit>,
    ) -> Self {
        Self {
            kind: kind.to_string(),
            params_hash: params_hash.to_string(),
            dataset: dataset.to_string(),
            root: root.to_path_buf(),
            code_version: code_version.to_string(),
            units,
        }
    }
}

/// A frame (or other item of a unit) that could not be used, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameFailure {
    pub frame_index: usize,
    pub path: String,
    pub reason: String,
}

/// The done marker of a unit, written after all its outputs. `P` is the job kind's own summary of the unit
/// (counts), stored flat beside the common fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DoneMarker<P> {
    #[serde(default = "legacy_kind")]
    pub kind: String,
    pub unit: String,
    pub params_hash: String,
    pub code_version: String,
    pub input_fingerprint: String,
    /// The unit's output files, relative to the job root; all must exist for the unit to be done.
    #[serde(default)]
    pub outputs: Vec<String>,
    pub seconds: f64,
    pub failures: Vec<FrameFailure>,
    #[serde(flatten)]
    pub payload: P,
}

impl<P> DoneMarker<P> {
    /// The marker of `unit` in `ledger`, listing `outputs` (paths under the job root).
    pub fn new(
        ledger: &Ledger,
        unit: &PlannedUnit,
        outputs: &[PathBuf],
        code_version: &str,
        seconds: f64,
        failures: Vec<FrameFailure>,
        payload: P,
    ) -> Self {
        Self {
            kind: ledger.kind.clone(),
            unit: unit.id.clone(),
            params_hash: ledger.params_hash.clone(),
            code_version: code_version.to_string(),
            input_fingerprint: unit.input_fingerprint.clone(),
            outputs: outputs.iter().map(|p| ledger.relative(p)).collect(),
            seconds,
            failures,
            payload,
        }
    }
}

/// What a run did with a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnitOutcome {
    /// Processed by this run; its marker is written.
    Done,
    /// Already done by an earlier run or another task.
    Skipped,
    /// Could not be processed; `error` says why. The next run tries again.
    Failed,
    /// Stopped by a signal or the time budget before it was done.
    Interrupted,
}

/// One unit in a run manifest; `P` as in [`DoneMarker`] (the kind's default for units without output).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnitStatus<P> {
    pub unit: String,
    pub status: UnitOutcome,
    pub seconds: f64,
    pub error: Option<String>,
    pub failures: Vec<FrameFailure>,
    #[serde(flatten)]
    pub payload: P,
}

/// What one task's run did. `P` is the per-unit payload, `T` the kind's totals.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunManifest<P, T> {
    #[serde(default = "legacy_kind")]
    pub kind: String,
    pub params_hash: String,
    pub params: serde_json::Value,
    pub code_version: String,
    pub command_line: Vec<String>,
    /// `I/N`, or none for an unsharded run.
    pub shard: Option<String>,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub pid: u32,
    pub started_unix_s: u64,
    pub finished_unix_s: u64,
    pub units: Vec<UnitStatus<P>>,
    pub totals: T,
}

/// Any JSON object: the payload type for readers that do not know the kind's payload.
pub type AnyPayload = serde_json::Map<String, serde_json::Value>;

/// Seconds since the Unix epoch (0 when the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A random 64-bit value (std's per-process random hash keys): makes file names unique across hosts.
fn nonce() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(unix_now());
    h.write_u32(std::process::id());
    h.finish()
}

/// The bookkeeping of one job kind and parameter partition under one root.
#[derive(Clone, Debug)]
pub struct Ledger {
    root: PathBuf,
    kind: String,
    params_hash: String,
}

impl Ledger {
    pub fn new(root: &Path, kind: &str, params_hash: &str) -> Self {
        Self {
            root: root.to_path_buf(),
            kind: kind.to_string(),
            params_hash: params_hash.to_string(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }

    pub fn params_hash(&self) -> &str {
        &self.params_hash
    }

    /// The hive partition directory name, `params=<hash>`.
    pub fn partition(&self) -> String {
        format!("params={}", self.params_hash)
    }

    pub fn params_file(&self) -> PathBuf {
        self.root.join("_params").join(format!("{}.json", self.params_hash))
    }

    pub fn plan_file(&self) -> PathBuf {
        self.root.join("_plan").join(format!("{}.json", self.partition()))
    }

    pub fn done_dir(&self) -> PathBuf {
        self.root.join("_done").join(self.partition())
    }

    pub fn marker_file(&self, unit_id: &str) -> PathBuf {
        self.done_dir().join(format!("{}.json", unit_key(unit_id)))
    }

    pub fn manifest_dir(&self) -> PathBuf {
        self.root.join("_manifest").join(self.partition())
    }

    pub fn final_manifest_file(&self) -> PathBuf {
        self.root.join(format!("_manifest-{}.json", self.params_hash))
    }

    /// `path` relative to the root, `/`-separated (as stored in markers).
    fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/")
    }

    /// Creates the root, checks it is writable, and removes stale temporaries (only those whose writer is
    /// gone; see [`crate::atomic`]) under the root's bookkeeping and under `data_dirs`.
    pub fn prepare(&self, data_dirs: &[PathBuf]) -> Result<(), BookkeepingError> {
        std::fs::create_dir_all(&self.root).map_err(|e| OutputError::io(&self.root, e))?;
        let probe = tempfile::Builder::new()
            .prefix(".mrdino-write-test-")
            .tempfile_in(&self.root)
            .map_err(|e| BookkeepingError::invalid(&self.root, format!("output directory is not writable: {e}")))?;
        drop(probe);
        let mut dirs = vec![
            self.done_dir(),
            self.manifest_dir(),
            self.root.join("_plan"),
            self.root.join("_params"),
        ];
        dirs.extend(data_dirs.iter().cloned());
        for dir in dirs {
            remove_stale_temporaries(&dir)?;
        }
        Ok(())
    }

    /// Writes the resolved parameters (`OUT/_params/<hash>.json`). Same hash, same parameters: concurrent
    /// writers write the same content.
    pub fn write_params<T: Serialize>(&self, params: &T, code_version: &str) -> Result<(), BookkeepingError> {
        let path = self.params_file();
        let json = serde_json::to_vec_pretty(&serde_json::json!({
            "kind": self.kind,
            "params_hash": self.params_hash,
            "code_version": code_version,
            "params": params,
        }))
        .map_err(|e| BookkeepingError::invalid(&path, e))?;
        self.check_kind_of(&path)?;
        write_atomic(&path, &json)?;
        Ok(())
    }

    /// The parameters stored by [`Ledger::write_params`], as JSON (`None` when absent).
    pub fn read_params(&self) -> Result<Option<serde_json::Value>, BookkeepingError> {
        let path = self.params_file();
        let Some(bytes) = read_if_present(&path)? else {
            return Ok(None);
        };
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| BookkeepingError::invalid(&path, e))?;
        Ok(Some(value.get("params").cloned().unwrap_or(serde_json::Value::Null)))
    }

    /// Refuses a file of this root that records another job kind.
    fn check_kind_of(&self, path: &Path) -> Result<(), BookkeepingError> {
        let Some(bytes) = read_if_present(path)? else {
            return Ok(());
        };
        let found = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_string))
            .unwrap_or_else(legacy_kind);
        if found != self.kind {
            return Err(BookkeepingError::WrongKind {
                path: path.to_path_buf(),
                found,
                expected: self.kind.clone(),
            });
        }
        Ok(())
    }

    /// Writes the plan unless the file already holds exactly this plan.
    pub fn write_plan(&self, plan: &Plan) -> Result<(), BookkeepingError> {
        let path = self.plan_file();
        let json = serde_json::to_vec_pretty(plan).map_err(|e| BookkeepingError::invalid(&path, e))?;
        self.check_kind_of(&path)?;
        if read_if_present(&path)?.as_deref() == Some(&json[..]) {
            return Ok(());
        }
        write_atomic(&path, &json)?;
        Ok(())
    }

    pub fn read_plan(&self) -> Result<Plan, BookkeepingError> {
        let path = self.plan_file();
        let bytes = read_if_present(&path)?.ok_or_else(|| BookkeepingError::NoPlan { path: path.clone() })?;
        let plan: Plan = serde_json::from_slice(&bytes).map_err(|e| BookkeepingError::invalid(&path, e))?;
        if plan.kind != self.kind {
            return Err(BookkeepingError::WrongKind {
                path,
                found: plan.kind,
                expected: self.kind.clone(),
            });
        }
        Ok(plan)
    }

    /// The unit's marker if the unit is done (see the module doc: the one rule for "done").
    pub fn is_done<P: DeserializeOwned>(&self, unit: &PlannedUnit) -> Option<DoneMarker<P>> {
        let bytes = std::fs::read(self.marker_file(&unit.id)).ok()?;
        let marker: DoneMarker<P> = serde_json::from_slice(&bytes).ok()?;
        let complete = marker.kind == self.kind
            && marker.unit == unit.id
            && marker.params_hash == self.params_hash
            && marker.input_fingerprint == unit.input_fingerprint
            && !marker.outputs.is_empty()
            && marker.outputs.iter().all(|rel| self.root.join(rel).is_file());
        complete.then_some(marker)
    }

    /// Writes a unit's marker (after its outputs).
    pub fn write_marker<P: Serialize>(&self, marker: &DoneMarker<P>) -> Result<(), BookkeepingError> {
        let path = self.marker_file(&marker.unit);
        let json = serde_json::to_vec_pretty(marker).map_err(|e| BookkeepingError::invalid(&path, e))?;
        write_atomic(&path, &json)?;
        Ok(())
    }

    /// Writes a run manifest under a name no other task uses; returns its path.
    pub fn write_manifest<P: Serialize, T: Serialize>(
        &self,
        manifest: &RunManifest<P, T>,
        shard: Option<Shard>,
    ) -> Result<PathBuf, BookkeepingError> {
        let shard_name = shard.map_or_else(|| "all".to_string(), Shard::file_name);
        let name = format!(
            "{shard_name}-{}-{}-{}-{:016x}.json",
            manifest.started_unix_s,
            host_name(),
            std::process::id(),
            nonce()
        );
        let path = self.manifest_dir().join(name);
        let json = serde_json::to_vec_pretty(manifest).map_err(|e| BookkeepingError::invalid(&path, e))?;
        write_atomic(&path, &json)?;
        Ok(path)
    }

    /// Every readable run manifest of the partition, oldest first — by start, then finish second, then the time
    /// the manifest file was written — (unreadable ones are named in the result).
    pub fn read_manifests<P: DeserializeOwned, T: DeserializeOwned>(
        &self,
    ) -> (Vec<RunManifest<P, T>>, Vec<BookkeepingError>) {
        let dir = self.manifest_dir();
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|e| e == "json")
                    && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        paths.sort();
        let (mut manifests, mut errors) = (Vec::new(), Vec::new());
        for path in paths {
            // Runs within the same second are ordered by when their manifest was written (nanoseconds).
            let written = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
            match std::fs::read(&path)
                .map_err(|e| BookkeepingError::from(OutputError::io(&path, e)))
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| BookkeepingError::invalid(&path, e)))
            {
                Ok(m) => manifests.push((m, written)),
                Err(e) => errors.push(e),
            }
        }
        manifests.sort_by_key(|(m, written): &(RunManifest<P, T>, Option<SystemTime>)| {
            (m.started_unix_s, m.finished_unix_s, *written)
        });
        (manifests.into_iter().map(|(m, _)| m).collect(), errors)
    }

    /// Done, failed and missing units of the plan. A unit is failed when it is not done and the latest run
    /// manifest that mentions it as done, skipped or failed says failed.
    pub fn status<P: DeserializeOwned>(&self, num_shards: Option<NonZeroU64>) -> Result<Status<P>, BookkeepingError> {
        let plan = self.read_plan()?;
        let (manifests, unreadable) = self.read_manifests::<AnyPayload, serde_json::Value>();
        let mut last_error: BTreeMap<String, String> = BTreeMap::new();
        for m in &manifests {
            for u in &m.units {
                match u.status {
                    UnitOutcome::Failed => {
                        last_error.insert(u.unit.clone(), u.error.clone().unwrap_or_default());
                    }
                    UnitOutcome::Done | UnitOutcome::Skipped => {
                        last_error.remove(&u.unit);
                    }
                    UnitOutcome::Interrupted => {}
                }
            }
        }
        let shards_from_manifests = manifests
            .iter()
            .rev()
            .find_map(|m| m.shard.as_deref().and_then(|s| Shard::parse(s).ok()).map(Shard::count));
        let (mut done, mut failed, mut missing) = (BTreeMap::new(), BTreeMap::new(), Vec::new());
        for unit in &plan.units {
            if let Some(marker) = self.is_done::<P>(unit) {
                done.insert(unit.id.clone(), marker);
            } else if let Some(e) = last_error.get(&unit.id) {
                failed.insert(unit.id.clone(), e.clone());
            } else {
                missing.push(unit.id.clone());
            }
        }
        Ok(Status {
            plan,
            done,
            failed,
            missing,
            num_shards: num_shards.or(shards_from_manifests),
            unreadable_manifests: unreadable.iter().map(ToString::to_string).collect(),
        })
    }

    /// Writes the merged manifest of a finished partition; returns its path.
    pub fn write_final_manifest<T: Serialize>(&self, manifest: &T) -> Result<PathBuf, BookkeepingError> {
        let path = self.final_manifest_file();
        let json = serde_json::to_vec_pretty(manifest).map_err(|e| BookkeepingError::invalid(&path, e))?;
        write_atomic(&path, &json)?;
        Ok(path)
    }
}

fn read_if_present(path: &Path) -> Result<Option<Vec<u8>>, BookkeepingError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(OutputError::io(path, e).into()),
    }
}

/// Done / failed / missing units of a plan.
#[derive(Clone, Debug)]
pub struct Status<P> {
    pub plan: Plan,
    pub done: BTreeMap<String, DoneMarker<P>>,
    pub failed: BTreeMap<String, String>,
    pub missing: Vec<String>,
    /// Shards of the array job, as given or as the latest sharded run manifest says.
    pub num_shards: Option<NonZeroU64>,
    /// Run manifests that could not be read, with the reason.
    pub unreadable_manifests: Vec<String>,
}

impl<P> Status<P> {
    pub fn complete(&self) -> bool {
        self.failed.is_empty() && self.missing.is_empty()
    }

    /// Shard indices holding a unit that is not done (`None` without a shard count).
    pub fn shards_to_rerun(&self) -> Option<BTreeSet<u64>> {
        let n = self.num_shards?;
        Some(
            self.failed
                .keys()
                .chain(&self.missing)
                .map(|u| shard_of(u, n))
                .collect(),
        )
    }

    /// Markers of the done units in plan order.
    pub fn done_in_plan_order(&self) -> Vec<&DoneMarker<P>> {
        self.plan.units.iter().filter_map(|u| self.done.get(&u.id)).collect()
    }
}

/// Parameter hashes with bookkeeping or data under `root`, sorted: partitions named by `_params/<hash>.json`,
/// `_plan/params=<hash>.json`, or a `params=<hash>` directory in one of `data_dirs` (e.g. `frames`).
pub fn partitions(root: &Path, data_dirs: &[&str]) -> Vec<String> {
    let names = |dir: PathBuf| -> Vec<String> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect()
    };
    let mut all = BTreeSet::new();
    all.extend(
        names(root.join("_params"))
            .into_iter()
            .filter_map(|n| n.strip_suffix(".json").map(str::to_string)),
    );
    all.extend(names(root.join("_plan")).into_iter().filter_map(|n| {
        n.strip_prefix("params=")
            .and_then(|n| n.strip_suffix(".json"))
            .map(str::to_string)
    }));
    for dir in data_dirs {
        all.extend(
            names(root.join(dir))
                .into_iter()
                .filter_map(|n| n.strip_prefix("params=").map(str::to_string)),
        );
    }
    all.into_iter().collect()
}

/// The partition a command works on, and the others it passed over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionChoice {
    pub params_hash: String,
    pub others: Vec<String>,
}

/// What [`choose_partition`] does when no hash is given and the root holds several.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenSeveral {
    /// Refuse, listing them (batch bookkeeping: `status`, `finalize`).
    Refuse,
    /// Take the one whose parameters were written last (readers: `eval`, `report`), naming the others.
    Latest,
}

/// The one choice of parameter partition: the hash given (which must be present); else the only one; else
/// as `several` says. Every run rewrites its parameter file at start, so "latest" is the last run started.
pub fn choose_partition(
    root: &Path,
    data_dirs: &[&str],
    given: Option<&str>,
    several: WhenSeveral,
) -> Result<PartitionChoice, BookkeepingError> {
    let all = partitions(root, data_dirs);
    if let Some(hash) = given {
        if !all.iter().any(|h| h == hash) {
            return Err(BookkeepingError::UnknownPartition {
                root: root.to_path_buf(),
                given: hash.to_string(),
                present: if all.is_empty() { "none".into() } else { all.join(", ") },
            });
        }
        return Ok(PartitionChoice {
            params_hash: hash.to_string(),
            others: all.into_iter().filter(|h| h != hash).collect(),
        });
    }
    if all.len() > 1 && several == WhenSeveral::Refuse {
        return Err(BookkeepingError::SeveralPartitions {
            root: root.to_path_buf(),
            present: all.join(", "),
        });
    }
    let written = |hash: &str| {
        let params = root.join("_params").join(format!("{hash}.json"));
        std::fs::metadata(params).and_then(|m| m.modified()).ok()
    };
    // Latest written wins; ties (or no parameter files) go to the greatest hash, so the choice is stable.
    let chosen = all
        .iter()
        .max_by_key(|h| (written(h.as_str()), h.as_str()))
        .cloned()
        .ok_or_else(|| BookkeepingError::NoPartition {
            root: root.to_path_buf(),
        })?;
    Ok(PartitionChoice {
        others: all.into_iter().filter(|h| *h != chosen).collect(),
        params_hash: chosen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    struct Counts {
        frames: usize,
    }

    fn unit(id: &str, fingerprint: &str) -> PlannedUnit {
        PlannedUnit::new(id, Some(3), fingerprint)
    }

    #[test]
    fn shards_partition_the_units_and_reject_bad_counts() {
        assert!(Shard::new(0, 0).is_err());
        assert!(Shard::new(3, 3).is_err());
        assert!(Shard::parse("1/x").is_err());
        let shards: Vec<Shard> = (0..4).map(|i| Shard::new(i, 4).unwrap()).collect();
        for id in ["a", "b/c", "2011_09_26_drive_0001_sync/image_02"] {
            assert_eq!(shards.iter().filter(|s| s.contains(id)).count(), 1);
        }
        assert_eq!(Shard::parse("2/4").unwrap().to_string(), "2/4");
    }

    #[test]
    fn done_needs_marker_fingerprint_and_every_listed_output() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::new(dir.path(), "features", "abc");
        ledger.prepare(&[]).unwrap();
        let u = unit("seq/a", "f1");
        assert!(ledger.is_done::<Counts>(&u).is_none());
        let output = dir.path().join("cache/params=abc/seq__a.bin");
        write_atomic(&output, b"x").unwrap();
        let marker = DoneMarker::new(
            &ledger,
            &u,
            &[output.clone()],
            "v1",
            0.5,
            Vec::new(),
            Counts { frames: 3 },
        );
        assert_eq!(marker.outputs, ["cache/params=abc/seq__a.bin"]);
        ledger.write_marker(&marker).unwrap();
        assert_eq!(ledger.is_done::<Counts>(&u), Some(marker.clone()));
        // The payload is stored flat beside the common fields.
        let raw: serde_json::Value =
            serde_json::from_slice(&std::fs::read(ledger.marker_file("seq/a")).unwrap()).unwrap();
        assert_eq!(raw["frames"], 3);
        assert!(ledger.is_done::<Counts>(&unit("seq/a", "changed")).is_none());
        assert!(Ledger::new(dir.path(), "infer", "abc").is_done::<Counts>(&u).is_none());
        std::fs::remove_file(&output).unwrap();
        assert!(ledger.is_done::<Counts>(&u).is_none());
    }

    #[test]
    fn plans_are_idempotent_and_kinds_are_not_mixed() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::new(dir.path(), "flow", "h1");
        let plan = Plan::new("flow", "h1", "frames", Path::new("/data"), "v1", vec![unit("a", "x")]);
        ledger.write_plan(&plan).unwrap();
        let modified = std::fs::metadata(ledger.plan_file()).unwrap().modified().unwrap();
        ledger.write_plan(&plan).unwrap();
        assert_eq!(
            std::fs::metadata(ledger.plan_file()).unwrap().modified().unwrap(),
            modified
        );
        assert_eq!(ledger.read_plan().unwrap(), plan);
        let other = Ledger::new(dir.path(), "labels", "h1");
        assert!(matches!(other.read_plan(), Err(BookkeepingError::WrongKind { .. })));
        assert!(matches!(
            other.write_plan(&plan),
            Err(BookkeepingError::WrongKind { .. })
        ));
    }

    #[test]
    fn manifests_of_concurrent_tasks_never_share_a_name_and_status_merges_them() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::new(dir.path(), "labels", "h");
        let units = vec![unit("a", "x"), unit("b", "y"), unit("c", "z")];
        ledger
            .write_plan(&Plan::new("labels", "h", "frames", Path::new("/d"), "v", units.clone()))
            .unwrap();
        let manifest = |status: UnitOutcome, id: &str| RunManifest {
            kind: "labels".into(),
            params_hash: "h".into(),
            params: serde_json::Value::Null,
            code_version: "v".into(),
            command_line: Vec::new(),
            shard: Some("0/2".into()),
            host: host_name().into(),
            pid: std::process::id(),
            started_unix_s: 7,
            finished_unix_s: 8,
            units: vec![UnitStatus {
                unit: id.into(),
                status,
                seconds: 0.0,
                error: Some("disk full".into()),
                failures: Vec::new(),
                payload: Counts::default(),
            }],
            totals: serde_json::Value::Null,
        };
        let shard = Some(Shard::new(0, 2).unwrap());
        let paths: BTreeSet<PathBuf> = (0..20)
            .map(|_| {
                ledger
                    .write_manifest(&manifest(UnitOutcome::Failed, "b"), shard)
                    .unwrap()
            })
            .collect();
        assert_eq!(paths.len(), 20);
        let output = dir.path().join("t/a.parquet");
        write_atomic(&output, b"x").unwrap();
        ledger
            .write_marker(&DoneMarker::new(
                &ledger,
                &units[0],
                &[output],
                "v",
                0.0,
                Vec::new(),
                Counts::default(),
            ))
            .unwrap();
        let status = ledger.status::<Counts>(None).unwrap();
        assert_eq!(status.done.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(status.failed.get("b").map(String::as_str), Some("disk full"));
        assert_eq!(status.missing, ["c"]);
        assert_eq!(status.num_shards.map(NonZeroU64::get), Some(2));
        assert!(!status.complete());

        // Two runs within the same second: the one written last decides, whatever the file names' order.
        let later = |status: UnitOutcome, shard: Option<Shard>| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            ledger.write_manifest(&manifest(status, "c"), shard).unwrap()
        };
        later(UnitOutcome::Done, Some(Shard::new(1, 2).unwrap()));
        later(UnitOutcome::Failed, None);
        assert_eq!(
            ledger
                .status::<Counts>(None)
                .unwrap()
                .failed
                .get("c")
                .map(String::as_str),
            Some("disk full")
        );
        later(UnitOutcome::Done, None);
        assert!(ledger.status::<Counts>(None).unwrap().failed.get("c").is_none());
    }

    #[test]
    fn the_partition_choice_prefers_the_given_then_the_only_then_the_latest() {
        let dir = tempfile::tempdir().unwrap();
        let choose = |given, several| choose_partition(dir.path(), &["frames"], given, several);
        assert!(matches!(
            choose(None, WhenSeveral::Latest),
            Err(BookkeepingError::NoPartition { .. })
        ));
        Ledger::new(dir.path(), "labels", "aaa").write_params(&1, "v").unwrap();
        assert_eq!(choose(None, WhenSeveral::Refuse).unwrap().params_hash, "aaa");
        std::fs::create_dir_all(dir.path().join("frames/params=bbb")).unwrap();
        let choice = choose(None, WhenSeveral::Latest).unwrap();
        assert_eq!(choice.params_hash, "aaa");
        assert_eq!(choice.others, ["bbb"]);
        assert!(matches!(
            choose(None, WhenSeveral::Refuse),
            Err(BookkeepingError::SeveralPartitions { .. })
        ));
        assert_eq!(choose(Some("bbb"), WhenSeveral::Refuse).unwrap().params_hash, "bbb");
        let err = choose(Some("ccc"), WhenSeveral::Latest).unwrap_err().to_string();
        assert!(err.contains("params=ccc") && err.contains("aaa, bbb"), "{err}");
    }
}
