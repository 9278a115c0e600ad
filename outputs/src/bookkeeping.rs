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
//! [`Ledger::check`] is the only test, and [`Ledger::is_done`] is its yes/no form: a unit is *done* when its
//! marker parses, belongs to this kind and parameter hash, carries the planned unit's input fingerprint, and
//! every output file it lists still has the size and the content (XXH3-128) recorded in the marker. A marker
//! whose files no longer match makes the unit *corrupt* ([`Corruption`]: which file, and whether it is
//! missing, of another size, of other content or unreadable), which is neither done nor missing: `status`
//! names it, `finalize` refuses it, and the next run of the same command redoes it (a rerun skips a unit only
//! when `is_done` says so). `labels`/`flow`/… (skip on resume), `status`, `finalize`, `eval`, `name` and
//! `report` all ask the same function, so they cannot disagree: the full check, content included, runs at
//! skip time too. A marker that does not parse is corrupt as well (it is written atomically, so it was
//! damaged after the fact); a marker of other parameters or inputs is stale, and its unit is simply not done.
//!
//! [`Ledger::write_marker`] records the checks: it reads every listed output back once, after the outputs are
//! written and before the marker is, so the marker vouches for the bytes that were written.
//!
//! Markers written before checks were recorded (no `file_checks` key) stay valid: they vouch for existence
//! only, as they always did. Such a unit is done while every listed file exists and corrupt (`missing`) when
//! one is gone; a truncated or altered file under an old marker cannot be detected. Rerunning the unit (delete
//! its marker) replaces the marker by a checked one.
//!
//! ## Cost, measured
//!
//! `cargo bench --workspace --bench done_check -- OUT` (2-core AMD EPYC VM with SHA extensions, load ≈ 6 from
//! parallel builds; minimum of 3–10 repeats; "uncached" drops the files from the page cache first):
//!
//! | | |
//! |---|---|
//! | XXH3-128 (`twox-hash` 2.1, already built for `parquet`), 64 MB in memory | 11–13 GB/s |
//! | SHA-256 (`sha2` 0.11, SHA-NI), 64 MB in memory | 1.0–1.6 GB/s |
//! | check of a KITTI-sized labels unit (frames 0.2 MB + instances 5 MB) | 0.5 ms cached, 5–7 ms uncached |
//! | check of a 10 MB / 100 MB features shard | 0.6–0.9 ms / 10–13 ms cached, 10 ms / 56–66 ms uncached |
//! | `write_marker` (hash + atomic, synced write of the marker), 5.2 MB / 100 MB unit | 7 ms / 16–24 ms |
//! | check of the `make demo` unit (vtest.avi, 794 frames; Parquet 0.03 + 0.43 MB) | 0.1 ms |
//!
//! XXH3-128 is the choice: the check guards against damage (truncation, lost files, flipped bits), not against
//! an adversary; a 128-bit hash misses a random change with probability 2⁻¹²⁸; and SHA-256 would be the
//! bound on any disk faster than ≈ 1 GB/s (uncached reads here ran at 1.6–1.8 GB/s) where XXH3 stays below
//! the disk. (A scratch comparison also measured XXH64 8–12 GB/s and CRC32 via `crc32fast` 7–15 GB/s.)
//!
//! So checking a unit costs one read of its outputs: negligible beside computing them (a labels unit takes
//! seconds to minutes, a features shard minutes), and for a whole resumed or finalized job one read of
//! everything it wrote (10 GB of labels ≈ 6 s from disk at these rates, ≈ 1 s cached). `write_marker` reads
//! the outputs just written, from the page cache.
//!
//! # Concurrency
//!
//! Any number of tasks, on one host or many, may work on one root at once. Every write is atomic
//! ([`crate::atomic`]). Nothing is read-modify-written: a plan is a pure function of the parameters and the
//! input listing, so concurrent tasks write identical bytes (and skip the write when the file already holds
//! them); a marker is per unit; a run manifest has a name of its own (shard, start time, host, pid and a random
//! part), so no task's update can overwrite another's. `status` merges what the files say. Two tasks that
//! finish the same unit write the same bytes (outputs are a pure function of parameters and inputs); were
//! they ever to differ, a marker could end up beside the other task's files, and the unit is then reported
//! corrupt and redone, never accepted.
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
use std::io::Read;
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
    /// Size and content hash of every output, keyed as in `outputs`, recorded by [`Ledger::write_marker`] from
    /// the files on disk. `None` in markers written before checks were recorded: those vouch for existence only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_checks: Option<BTreeMap<String, FileCheck>>,
    pub seconds: f64,
    pub failures: Vec<FrameFailure>,
    #[serde(flatten)]
    pub payload: P,
}

impl<P> DoneMarker<P> {
    /// The marker of `unit` in `ledger`, listing `outputs` (paths under the job root). Its file checks are
    /// filled in by [`Ledger::write_marker`].
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
            file_checks: None,
            seconds,
            failures,
            payload,
        }
    }
}

/// Size and content hash of one output file, as its unit wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCheck {
    pub size_bytes: u64,
    /// XXH3-128 of the file's bytes, 32 lowercase hex digits.
    pub xxh3_128: String,
}

impl FileCheck {
    /// Reads `path` once: its size and XXH3-128.
    pub fn of_file(path: &Path) -> Result<Self, OutputError> {
        let mut file = std::fs::File::open(path).map_err(|e| OutputError::io(path, e))?;
        let mut hasher = twox_hash::XxHash3_128::new();
        let mut buffer = vec![0u8; HASH_BUFFER_BYTES];
        let mut size_bytes = 0u64;
        loop {
            let read = match file.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(OutputError::io(path, e)),
            };
            hasher.write(&buffer[..read]);
            size_bytes += read as u64;
        }
        Ok(Self {
            size_bytes,
            xxh3_128: format!("{:032x}", hasher.finish_128()),
        })
    }
}

/// Read size of [`FileCheck::of_file`].
const HASH_BUFFER_BYTES: usize = 1 << 20;

/// How a done unit's file differs from what its marker records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Damage {
    /// The file is gone (or is no longer a regular file).
    Missing,
    /// The file has another size than recorded.
    Size { recorded_bytes: u64, found_bytes: u64 },
    /// The file has the recorded size but other content.
    Checksum { recorded: String, found: String },
    /// The file cannot be read, or (for the marker itself) does not parse.
    Unreadable { message: String },
    /// The marker records checks, but none for this output.
    Unchecked,
}

/// A unit whose marker no longer matches its files: the file at fault (relative to the job root, or the
/// marker's own path when the marker is damaged) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Corruption {
    pub file: String,
    #[serde(flatten)]
    pub damage: Damage,
}

impl std::fmt::Display for Corruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let file = &self.file;
        match &self.damage {
            Damage::Missing => write!(f, "{file}: missing"),
            Damage::Size {
                recorded_bytes,
                found_bytes,
            } => write!(
                f,
                "{file}: {found_bytes} bytes, the done marker records {recorded_bytes}"
            ),
            Damage::Checksum { recorded, found } => write!(
                f,
                "{file}: content changed (XXH3-128 {found}, the done marker records {recorded})"
            ),
            Damage::Unreadable { message } => write!(f, "{file}: unreadable: {message}"),
            Damage::Unchecked => write!(f, "{file}: the done marker records no checksum for it"),
        }
    }
}

/// What [`Ledger::check`] found for a unit.
#[derive(Clone, Debug, PartialEq)]
pub enum UnitCheck<P> {
    /// Marker valid and every output as recorded.
    Done(DoneMarker<P>),
    /// Marker present but damaged, or an output no longer as recorded: redo the unit.
    Corrupt(Corruption),
    /// No marker, or the marker of other parameters or inputs.
    NotDone,
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

    /// The unit's marker as stored, verified against nothing (`None` when there is none). For tools and tests
    /// that inspect or re-record a marker; whether the unit is done is [`Ledger::check`]'s answer.
    pub fn read_marker<P: DeserializeOwned>(&self, unit_id: &str) -> Result<Option<DoneMarker<P>>, BookkeepingError> {
        let path = self.marker_file(unit_id);
        let Some(bytes) = read_if_present(&path)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| BookkeepingError::invalid(&path, e))
    }

    /// The unit's marker if the unit is done (see the module doc: the one rule for "done").
    pub fn is_done<P: DeserializeOwned>(&self, unit: &PlannedUnit) -> Option<DoneMarker<P>> {
        match self.check(unit) {
            UnitCheck::Done(marker) => Some(marker),
            UnitCheck::Corrupt(_) | UnitCheck::NotDone => None,
        }
    }

    /// Whether `unit` is done, corrupt or not done (see the module doc: the one rule for "done"). Reads every
    /// output of a done unit once.
    pub fn check<P: DeserializeOwned>(&self, unit: &PlannedUnit) -> UnitCheck<P> {
        let path = self.marker_file(&unit.id);
        let damaged = |message: String| {
            UnitCheck::Corrupt(Corruption {
                file: self.relative(&path),
                damage: Damage::Unreadable { message },
            })
        };
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return UnitCheck::NotDone,
            Err(e) => return damaged(e.to_string()),
        };
        let marker: DoneMarker<P> = match serde_json::from_slice(&bytes) {
            Ok(marker) => marker,
            Err(e) => return damaged(e.to_string()),
        };
        let current = marker.kind == self.kind
            && marker.unit == unit.id
            && marker.params_hash == self.params_hash
            && marker.input_fingerprint == unit.input_fingerprint
            && !marker.outputs.is_empty();
        if !current {
            return UnitCheck::NotDone;
        }
        match self.verify_outputs(&marker) {
            Ok(()) => UnitCheck::Done(marker),
            Err(corruption) => UnitCheck::Corrupt(corruption),
        }
    }

    /// Compares a marker's outputs with the files: existence and size of every file first (cheap), then the
    /// content. Markers without checks (older versions) are checked for existence only.
    fn verify_outputs<P>(&self, marker: &DoneMarker<P>) -> Result<(), Corruption> {
        let corrupt = |file: &str, damage: Damage| Corruption {
            file: file.to_string(),
            damage,
        };
        let mut to_hash = Vec::new();
        for file in &marker.outputs {
            let path = self.root.join(file);
            let found_bytes = match std::fs::metadata(&path) {
                Ok(meta) if meta.is_file() => meta.len(),
                Ok(_) => return Err(corrupt(file, Damage::Missing)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(corrupt(file, Damage::Missing)),
                Err(e) => return Err(corrupt(file, Damage::Unreadable { message: e.to_string() })),
            };
            let Some(checks) = &marker.file_checks else {
                continue;
            };
            let check = checks.get(file).ok_or_else(|| corrupt(file, Damage::Unchecked))?;
            if found_bytes != check.size_bytes {
                return Err(corrupt(
                    file,
                    Damage::Size {
                        recorded_bytes: check.size_bytes,
                        found_bytes,
                    },
                ));
            }
            to_hash.push((file, path, check));
        }
        for (file, path, check) in to_hash {
            let found =
                FileCheck::of_file(&path).map_err(|e| corrupt(file, Damage::Unreadable { message: e.to_string() }))?;
            if found.size_bytes != check.size_bytes {
                return Err(corrupt(
                    file,
                    Damage::Size {
                        recorded_bytes: check.size_bytes,
                        found_bytes: found.size_bytes,
                    },
                ));
            }
            if found.xxh3_128 != check.xxh3_128 {
                return Err(corrupt(
                    file,
                    Damage::Checksum {
                        recorded: check.xxh3_128.clone(),
                        found: found.xxh3_128,
                    },
                ));
            }
        }
        Ok(())
    }

    /// Writes a unit's marker, after its outputs: reads every listed output once and records its size and
    /// XXH3-128 (whatever `marker.file_checks` holds is replaced), so the marker vouches for the bytes on disk.
    /// An output that cannot be read is an error, and no marker is written.
    pub fn write_marker<P: Serialize>(&self, marker: &DoneMarker<P>) -> Result<(), BookkeepingError> {
        let path = self.marker_file(&marker.unit);
        let mut checks = BTreeMap::new();
        for file in &marker.outputs {
            checks.insert(file.clone(), FileCheck::of_file(&self.root.join(file))?);
        }
        let checked = DoneMarker {
            kind: marker.kind.clone(),
            unit: marker.unit.clone(),
            params_hash: marker.params_hash.clone(),
            code_version: marker.code_version.clone(),
            input_fingerprint: marker.input_fingerprint.clone(),
            outputs: marker.outputs.clone(),
            file_checks: Some(checks),
            seconds: marker.seconds,
            failures: marker.failures.clone(),
            payload: &marker.payload,
        };
        let json = serde_json::to_vec_pretty(&checked).map_err(|e| BookkeepingError::invalid(&path, e))?;
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

    /// Done, corrupt, failed and missing units of the plan (every done unit's outputs are read once; see the
    /// module doc). A unit that is not done is failed when the latest run manifest that mentions it as done,
    /// skipped or failed says failed (so a corrupt unit whose redo failed is failed, with the redo's error);
    /// else corrupt when its marker no longer matches its files; else missing.
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
        let (mut done, mut corrupt, mut failed, mut missing) =
            (BTreeMap::new(), BTreeMap::new(), BTreeMap::new(), Vec::new());
        for unit in &plan.units {
            match self.check::<P>(unit) {
                UnitCheck::Done(marker) => {
                    done.insert(unit.id.clone(), marker);
                }
                UnitCheck::Corrupt(corruption) => match last_error.get(&unit.id) {
                    // A rerun tried to redo the corrupt unit and failed: its error says more.
                    Some(e) => {
                        failed.insert(unit.id.clone(), e.clone());
                    }
                    None => {
                        corrupt.insert(unit.id.clone(), corruption);
                    }
                },
                UnitCheck::NotDone => match last_error.get(&unit.id) {
                    Some(e) => {
                        failed.insert(unit.id.clone(), e.clone());
                    }
                    None => missing.push(unit.id.clone()),
                },
            }
        }
        Ok(Status {
            plan,
            done,
            corrupt,
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

/// Done / corrupt / failed / missing units of a plan; every planned unit is in exactly one of them.
#[derive(Clone, Debug)]
pub struct Status<P> {
    pub plan: Plan,
    pub done: BTreeMap<String, DoneMarker<P>>,
    /// Units with a marker whose files no longer match it (or whose marker is damaged): the file and why.
    /// The next run redoes them.
    pub corrupt: BTreeMap<String, Corruption>,
    pub failed: BTreeMap<String, String>,
    pub missing: Vec<String>,
    /// Shards of the array job, as given or as the latest sharded run manifest says.
    pub num_shards: Option<NonZeroU64>,
    /// Run manifests that could not be read, with the reason.
    pub unreadable_manifests: Vec<String>,
}

impl<P> Status<P> {
    /// Whether every planned unit is done (none corrupt, failed or missing).
    pub fn complete(&self) -> bool {
        self.corrupt.is_empty() && self.failed.is_empty() && self.missing.is_empty()
    }

    /// Units not done: corrupt, failed and missing.
    pub fn not_done(&self) -> usize {
        self.corrupt.len() + self.failed.len() + self.missing.len()
    }

    /// Done units whose markers predate file checks (existence is all they vouch for).
    pub fn unchecked_done(&self) -> usize {
        self.done.values().filter(|m| m.file_checks.is_none()).count()
    }

    /// Shard indices holding a unit that is not done (`None` without a shard count).
    pub fn shards_to_rerun(&self) -> Option<BTreeSet<u64>> {
        let n = self.num_shards?;
        Some(
            self.corrupt
                .keys()
                .chain(self.failed.keys())
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
            std::slice::from_ref(&output),
            "v1",
            0.5,
            Vec::new(),
            Counts { frames: 3 },
        );
        assert_eq!(marker.outputs, ["cache/params=abc/seq__a.bin"]);
        ledger.write_marker(&marker).unwrap();
        let checked = ledger.is_done::<Counts>(&u).unwrap();
        assert_eq!(
            checked.file_checks,
            Some(BTreeMap::from([(
                "cache/params=abc/seq__a.bin".to_string(),
                FileCheck {
                    size_bytes: 1,
                    xxh3_128: XXH3_128_OF_X.into(),
                }
            )]))
        );
        assert_eq!(
            DoneMarker {
                file_checks: None,
                ..checked
            },
            marker
        );
        // The payload is stored flat beside the common fields.
        let raw: serde_json::Value =
            serde_json::from_slice(&std::fs::read(ledger.marker_file("seq/a")).unwrap()).unwrap();
        assert_eq!(raw["frames"], 3);
        assert!(ledger.is_done::<Counts>(&unit("seq/a", "changed")).is_none());
        assert!(Ledger::new(dir.path(), "infer", "abc").is_done::<Counts>(&u).is_none());
        std::fs::remove_file(&output).unwrap();
        assert!(ledger.is_done::<Counts>(&u).is_none());
    }

    /// XXH3-128 of the byte string `x`, from the reference implementation (`printf x | xxhsum -H2`).
    const XXH3_128_OF_X: &str = "5c7401c0ec22eeeeeaf06c6480b2cd11";

    #[test]
    fn file_checks_are_the_reference_xxh3_128_whatever_the_read_size() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        // `printf '' | xxhsum -H2`
        assert_eq!(
            FileCheck::of_file(&empty).unwrap(),
            FileCheck {
                size_bytes: 0,
                xxh3_128: "99aa06d3014798d86001c324468d497f".into()
            }
        );
        // Streamed in read-sized pieces, a file longer than the buffer hashes as the whole does.
        let bytes: Vec<u8> = (0..HASH_BUFFER_BYTES * 5 / 2 + 17)
            .map(|i| (i * 131 % 251) as u8)
            .collect();
        let big = dir.path().join("big");
        std::fs::write(&big, &bytes).unwrap();
        let check = FileCheck::of_file(&big).unwrap();
        assert_eq!(check.size_bytes, bytes.len() as u64);
        assert_eq!(
            check.xxh3_128,
            format!("{:032x}", twox_hash::XxHash3_128::oneshot(&bytes))
        );
        assert!(FileCheck::of_file(&dir.path().join("absent")).is_err());
    }

    /// A plan of three units with two files each (`t/<unit>-0.bin`, 64 KiB and 3 bytes), all done.
    fn done_job(dir: &Path) -> (Ledger, Vec<PlannedUnit>) {
        let ledger = Ledger::new(dir, "labels", "h");
        ledger.prepare(&[]).unwrap();
        let units = vec![unit("a", "x"), unit("b", "y"), unit("c", "z")];
        ledger
            .write_plan(&Plan::new("labels", "h", "frames", Path::new("/d"), "v", units.clone()))
            .unwrap();
        for u in &units {
            write_unit(&ledger, u);
        }
        (ledger, units)
    }

    fn unit_files(ledger: &Ledger, u: &PlannedUnit) -> [PathBuf; 2] {
        [0, 1].map(|i| ledger.root().join(format!("t/{}-{i}.bin", u.key)))
    }

    fn unit_bytes(u: &PlannedUnit, i: usize) -> Vec<u8> {
        let len = if i == 0 { 64 << 10 } else { 3 };
        (0..len).map(|k| (k * 31 + i * 7 + u.id.len()) as u8).collect()
    }

    fn write_unit(ledger: &Ledger, u: &PlannedUnit) {
        let files = unit_files(ledger, u);
        for (i, f) in files.iter().enumerate() {
            write_atomic(f, &unit_bytes(u, i)).unwrap();
        }
        let marker = DoneMarker::new(ledger, u, &files, "v", 0.0, Vec::new(), Counts { frames: 3 });
        ledger.write_marker(&marker).unwrap();
    }

    #[test]
    fn truncated_deleted_and_bit_flipped_outputs_make_the_unit_corrupt_until_it_is_redone() {
        type Damager = fn(&Path);
        let truncate: Damager = |p| {
            let bytes = std::fs::read(p).unwrap();
            std::fs::write(p, &bytes[..200]).unwrap();
        };
        let delete: Damager = |p| std::fs::remove_file(p).unwrap();
        let flip: Damager = |p| {
            let mut bytes = std::fs::read(p).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x10;
            std::fs::write(p, &bytes).unwrap();
        };
        for (name, damage, file_index) in [("truncate", truncate, 0), ("delete", delete, 1), ("bit flip", flip, 0)] {
            let dir = tempfile::tempdir().unwrap();
            let (ledger, units) = done_job(dir.path());
            let status = ledger.status::<Counts>(NonZeroU64::new(2)).unwrap();
            assert!(status.complete(), "{name}");
            assert_eq!(status.unchecked_done(), 0);

            let victim = &units[1];
            let file = &unit_files(&ledger, victim)[file_index];
            damage(file);
            let relative = format!("t/{}-{file_index}.bin", victim.key);
            let expected = match name {
                "truncate" => Damage::Size {
                    recorded_bytes: 64 << 10,
                    found_bytes: 200,
                },
                "delete" => Damage::Missing,
                _ => {
                    let recorded = format!("{:032x}", twox_hash::XxHash3_128::oneshot(&unit_bytes(victim, 0)));
                    let found = FileCheck::of_file(file).unwrap();
                    assert_eq!(found.size_bytes, 64 << 10);
                    assert_ne!(found.xxh3_128, recorded);
                    Damage::Checksum {
                        recorded,
                        found: found.xxh3_128,
                    }
                }
            };
            let corruption = Corruption {
                file: relative.clone(),
                damage: expected,
            };
            assert_eq!(
                ledger.check::<Counts>(victim),
                UnitCheck::Corrupt(corruption.clone()),
                "{name}"
            );
            // The skip test of a rerun says "not done", so the rerun redoes the unit.
            assert!(ledger.is_done::<Counts>(victim).is_none(), "{name}");
            assert!(ledger.is_done::<Counts>(&units[0]).is_some());

            let status = ledger.status::<Counts>(NonZeroU64::new(2)).unwrap();
            assert_eq!(
                status.corrupt,
                BTreeMap::from([(victim.id.clone(), corruption.clone())])
            );
            assert_eq!(status.done.keys().collect::<Vec<_>>(), ["a", "c"], "{name}");
            assert!(status.missing.is_empty() && status.failed.is_empty());
            assert!(!status.complete());
            assert_eq!(status.not_done(), 1);
            let shard = shard_of(&victim.id, NonZeroU64::new(2).unwrap());
            assert_eq!(status.shards_to_rerun(), Some(BTreeSet::from([shard])), "{name}");
            let message = corruption.to_string();
            assert!(message.starts_with(&relative), "{message}");
            // The marker as stored is still readable; recording it again makes it vouch for the altered bytes
            // (how a test hands a reader a table that is wrong on purpose).
            let stored = ledger.read_marker::<Counts>(&victim.id).unwrap().unwrap();
            if name == "delete" {
                assert!(ledger.write_marker(&stored).is_err());
            } else {
                ledger.write_marker(&stored).unwrap();
                assert!(ledger.is_done::<Counts>(victim).is_some(), "{name}");
            }

            write_unit(&ledger, victim);
            let status = ledger.status::<Counts>(None).unwrap();
            assert!(
                status.complete() && status.corrupt.is_empty(),
                "{name}: redone unit not done"
            );
        }
    }

    #[test]
    fn a_damaged_marker_makes_the_unit_corrupt_and_an_unreadable_output_writes_no_marker() {
        let dir = tempfile::tempdir().unwrap();
        let (ledger, units) = done_job(dir.path());
        let marker = ledger.marker_file("c");
        let bytes = std::fs::read(&marker).unwrap();
        std::fs::write(&marker, &bytes[..bytes.len() / 2]).unwrap();
        match ledger.check::<Counts>(&units[2]) {
            UnitCheck::Corrupt(Corruption {
                file,
                damage: Damage::Unreadable { .. },
            }) => assert_eq!(file, format!("_done/params=h/{}.json", units[2].key)),
            other => panic!("{other:?}"),
        }
        assert_eq!(ledger.status::<Counts>(None).unwrap().corrupt.len(), 1);

        // A marker is never written for outputs that are not there.
        std::fs::remove_file(&marker).unwrap();
        let files = unit_files(&ledger, &units[2]);
        std::fs::remove_file(&files[1]).unwrap();
        let unwritten = DoneMarker::new(&ledger, &units[2], &files, "v", 0.0, Vec::new(), Counts::default());
        let err = ledger.write_marker(&unwritten).unwrap_err().to_string();
        assert!(err.contains(&format!("{}-1.bin", units[2].key)), "{err}");
        assert!(!marker.exists());
        assert_eq!(ledger.check::<Counts>(&units[2]), UnitCheck::NotDone);
    }

    #[test]
    fn a_corrupt_unit_whose_redo_failed_is_failed_with_the_redo_error() {
        let dir = tempfile::tempdir().unwrap();
        let (ledger, units) = done_job(dir.path());
        std::fs::remove_file(&unit_files(&ledger, &units[1])[0]).unwrap();
        assert_eq!(ledger.status::<Counts>(None).unwrap().corrupt.len(), 1);
        let failed_redo = RunManifest {
            kind: "labels".into(),
            params_hash: "h".into(),
            params: serde_json::Value::Null,
            code_version: "v".into(),
            command_line: Vec::new(),
            shard: None,
            host: host_name().into(),
            pid: std::process::id(),
            started_unix_s: unix_now(),
            finished_unix_s: unix_now(),
            units: vec![UnitStatus {
                unit: "b".into(),
                status: UnitOutcome::Failed,
                seconds: 0.0,
                error: Some("cannot write the unit's outputs".into()),
                failures: Vec::new(),
                payload: Counts::default(),
            }],
            totals: serde_json::Value::Null,
        };
        ledger.write_manifest(&failed_redo, None).unwrap();
        let status = ledger.status::<Counts>(None).unwrap();
        assert!(status.corrupt.is_empty());
        assert_eq!(
            status.failed.get("b").map(String::as_str),
            Some("cannot write the unit's outputs")
        );
        assert!(!status.complete());
    }

    #[test]
    fn markers_written_before_checks_vouch_for_existence_only() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::new(dir.path(), "labels", "h");
        let u = unit("seq/a", "f1");
        let output = dir.path().join("instances/params=h/seq__a.parquet");
        write_atomic(&output, &[7u8; 1000]).unwrap();
        // A marker as the previous version wrote it: no `file_checks`.
        let old = serde_json::json!({
            "kind": "labels",
            "unit": "seq/a",
            "params_hash": "h",
            "code_version": "0.1.0",
            "input_fingerprint": "f1",
            "outputs": ["instances/params=h/seq__a.parquet"],
            "seconds": 1.5,
            "failures": [],
            "frames": 3,
        });
        write_atomic(&ledger.marker_file("seq/a"), &serde_json::to_vec_pretty(&old).unwrap()).unwrap();
        let marker = ledger.is_done::<Counts>(&u).unwrap();
        assert_eq!(marker.file_checks, None);
        assert_eq!(marker.payload, Counts { frames: 3 });
        // Existence is all an old marker can vouch for: a truncated file passes …
        std::fs::write(&output, [7u8; 200]).unwrap();
        assert!(ledger.is_done::<Counts>(&u).is_some());
        // … a deleted one does not, and is named.
        std::fs::remove_file(&output).unwrap();
        assert_eq!(
            ledger.check::<Counts>(&u),
            UnitCheck::Corrupt(Corruption {
                file: "instances/params=h/seq__a.parquet".into(),
                damage: Damage::Missing,
            })
        );
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
        assert!(!ledger.status::<Counts>(None).unwrap().failed.contains_key("c"));
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
