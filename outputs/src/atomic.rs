//! Atomic file creation: readers never see a half-written file, and concurrent writers never disturb each other.
//!
//! A file is written under a hidden temporary name in its final directory, flushed to disk, then renamed over
//! the final name (atomic on POSIX file systems), and the directory is synced so the rename survives a crash.
//! A temporary that is dropped without [`AtomicFile::commit`] is removed. Hidden names start with `.` so
//! pandas, pyarrow, polars and duckdb directory readers skip leftovers of a `kill -9`.
//!
//! Temporary names are `.<name>.tmp-<host>-<pid>-<random>`: the random part comes from `tempfile` (created
//! with `O_EXCL`), so two processes never pick the same name, on one host or on many hosts sharing a file
//! system. Host and pid say who wrote it, which lets [`remove_stale_temporaries`] remove only temporaries
//! whose writer is gone: those written on this host by a process that no longer runs, and any temporary not
//! modified for [`STALE_TEMPORARY_AGE`] (a writer on another host cannot be asked whether it is alive; no
//! single file takes that long to write). A live task's temporaries are never touched.
//!
//! Concurrent writers of the same final name (two tasks finishing the same unit) each rename a complete file;
//! the last rename wins and readers see one complete file or the other, never a mixture.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

/// A temporary not modified for this long is considered abandoned, whoever wrote it.
pub const STALE_TEMPORARY_AGE: Duration = Duration::from_secs(6 * 3600);

/// Marker between a file's name and the writer's identity in temporary names.
const TEMP_TAG: &str = ".tmp-";

/// This host's name, reduced to `[A-Za-z0-9-]` (at most 32 characters): part of temporary and manifest names.
pub fn host_name() -> &'static str {
    static HOST: LazyLock<String> = LazyLock::new(|| {
        let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_default();
        let clean: String = raw
            .trim()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(32)
            .collect();
        if clean.is_empty() {
            "host".into()
        } else {
            clean
        }
    });
    &HOST
}

/// The writer of a temporary, from its name: `(host, pid)`.
fn temporary_writer(name: &str) -> Option<(&str, u32)> {
    let (_, writer) = name.rsplit_once(TEMP_TAG)?;
    let mut parts = writer.rsplitn(3, '-');
    let _random = parts.next()?;
    let pid = parts.next()?.parse().ok()?;
    Some((parts.next()?, pid))
}

/// Whether process `pid` runs on this host (Linux `/proc`; elsewhere every process counts as running, and
/// only the age rule applies).
fn process_running(pid: u32) -> bool {
    if !Path::new("/proc/self").exists() {
        return true;
    }
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Errors of output writing; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
}

impl OutputError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn format(path: &Path, message: impl std::fmt::Display) -> Self {
        Self::Format {
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }
}

/// A file being written under a temporary name.
pub struct AtomicFile {
    target: PathBuf,
    temp: PathBuf,
    writer: Option<BufWriter<File>>,
}

/// Creates a new, uniquely named temporary for `name` in `dir`.
fn create_temporary(dir: &Path, name: &str) -> Result<(PathBuf, File), OutputError> {
    let prefix = format!(".{name}{TEMP_TAG}{}-{}-", host_name(), std::process::id());
    let temp = tempfile::Builder::new()
        .prefix(&prefix)
        .rand_bytes(10)
        .tempfile_in(dir)
        .map_err(|e| OutputError::io(&dir.join(&prefix), e))?;
    let (file, path) = temp.keep().map_err(|e| OutputError::io(dir, e.error))?;
    Ok((path, file))
}

impl AtomicFile {
    /// Starts writing `target`; its directory is created if needed.
    pub fn create(target: &Path) -> Result<Self, OutputError> {
        let dir = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| OutputError::io(dir, e))?;
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (temp, file) = create_temporary(dir, &name)?;
        Ok(Self {
            target: target.to_path_buf(),
            temp,
            writer: Some(BufWriter::new(file)),
        })
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Flushes, syncs and renames the file into place.
    pub fn commit(mut self) -> Result<(), OutputError> {
        let Some(writer) = self.writer.take() else {
            return Err(OutputError::format(&self.target, "file already committed"));
        };
        let file = writer
            .into_inner()
            .map_err(|e| OutputError::io(&self.temp, e.into_error()))?;
        file.sync_all().map_err(|e| OutputError::io(&self.temp, e))?;
        drop(file);
        if let Err(e) = std::fs::rename(&self.temp, &self.target) {
            let _ = std::fs::remove_file(&self.temp);
            return Err(OutputError::io(&self.target, e));
        }
        if let Some(dir) = self.target.parent().filter(|p| !p.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                // Persist the rename; failure to sync a directory is not fatal on file systems without it.
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.writer.as_mut() {
            Some(w) => w.write(buf),
            None => Err(std::io::Error::other("file already committed")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.writer.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes).map_err(|e| OutputError::io(path, e))?;
    file.commit()
}

/// Whether a temporary named `name` with modification time `modified` has no live writer (see the module doc).
fn is_stale(name: &str, modified: Option<SystemTime>, now: SystemTime) -> bool {
    let old = modified
        .and_then(|m| now.duration_since(m).ok())
        .is_some_and(|age| age >= STALE_TEMPORARY_AGE);
    let writer_gone = temporary_writer(name)
        .is_some_and(|(host, pid)| host == host_name() && pid != std::process::id() && !process_running(pid));
    old || writer_gone
}

/// Removes, recursively under `dir`, the hidden temporaries whose writer is gone (a process killed on this
/// host, or any temporary older than [`STALE_TEMPORARY_AGE`]). Temporaries of live writers are kept; a file
/// that vanishes meanwhile (another task cleaning up) is not an error.
pub fn remove_stale_temporaries(dir: &Path) -> Result<usize, OutputError> {
    let mut removed = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(OutputError::io(dir, e)),
    };
    let now = SystemTime::now();
    for entry in entries {
        let entry = entry.map_err(|e| OutputError::io(dir, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(file_type) = entry.file_type() else { continue };
        if file_type.is_dir() {
            removed += remove_stale_temporaries(&path)?;
        } else if name.starts_with('.') && name.contains(TEMP_TAG) {
            let modified = entry.metadata().ok().and_then(|m| m.modified().ok());
            if is_stale(&name, modified, now) {
                match std::fs::remove_file(&path) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(OutputError::io(&path, e)),
                }
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_renames_and_drop_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("sub/out.txt");
        let mut f = AtomicFile::create(&target).unwrap();
        f.write_all(b"hello").unwrap();
        assert!(!target.exists());
        f.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"hello");

        let mut g = AtomicFile::create(&target).unwrap();
        g.write_all(b"half").unwrap();
        drop(g);
        assert_eq!(std::fs::read(&target).unwrap(), b"hello");
        assert_eq!(std::fs::read_dir(dir.path().join("sub")).unwrap().count(), 1);
    }

    #[test]
    fn temporaries_of_live_writers_are_kept_and_dead_or_old_ones_removed() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a");
        std::fs::create_dir_all(&sub).unwrap();
        // A live writer: this process, with an open temporary.
        let mut live = AtomicFile::create(&sub.join("live.parquet")).unwrap();
        live.write_all(b"x").unwrap();
        // A writer on another host, recent: kept. A dead pid on this host: removed.
        let other_host = sub.join(".x.parquet.tmp-elsewhere-1-abcdef");
        std::fs::write(&other_host, b"x").unwrap();
        let dead = sub.join(format!(".y.parquet.tmp-{}-{}-abcdef", host_name(), u32::MAX - 7));
        std::fs::write(&dead, b"x").unwrap();
        std::fs::write(sub.join("keep.parquet"), b"x").unwrap();
        assert_eq!(remove_stale_temporaries(dir.path()).unwrap(), 1);
        assert!(other_host.exists() && !dead.exists() && sub.join("keep.parquet").exists());
        assert_eq!(std::fs::read_dir(&sub).unwrap().count(), 3);
        live.commit().unwrap();
        assert!(sub.join("live.parquet").exists());
        // Old enough, any writer counts as gone.
        let long_ago = SystemTime::now() - STALE_TEMPORARY_AGE - Duration::from_secs(1);
        assert!(is_stale(
            ".x.parquet.tmp-elsewhere-1-abcdef",
            Some(long_ago),
            SystemTime::now()
        ));
        assert!(!is_stale(
            ".x.parquet.tmp-elsewhere-1-abcdef",
            Some(SystemTime::now()),
            SystemTime::now()
        ));
    }

    #[test]
    fn temporary_names_are_unique_and_name_their_writer() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<AtomicFile> = (0..50)
            .map(|_| AtomicFile::create(&dir.path().join("t.json")).unwrap())
            .collect();
        let names: std::collections::BTreeSet<PathBuf> = files.iter().map(|f| f.temp.clone()).collect();
        assert_eq!(names.len(), 50);
        let name = files[0].temp.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(temporary_writer(&name), Some((host_name(), std::process::id())));
    }
}
