//! What the end-to-end tests of the binary share: running `mrdino`, generating data, reading a training run.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mrdino_outputs::checkpoint::{read_tensor_file, TrainState, META_TRAIN_STATE};
use serde_json::Value;

/// The binary under test.
pub fn mrdino() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mrdino"))
}

/// The Python of the test-time references (`MRDINO_PYTHON`, default the venv `make` builds).
pub fn python() -> PathBuf {
    std::env::var_os("MRDINO_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/mrdino/venv/bin/python")
    })
}

/// Runs `cmd` and asserts success, showing its output otherwise; prints the program, its first two arguments
/// and the seconds it took.
pub fn run_ok(cmd: &mut Command) -> std::process::Output {
    let started = Instant::now();
    let out = cmd.output().expect("run the command");
    let program = Path::new(cmd.get_program())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let words: Vec<String> = cmd
        .get_args()
        .take(2)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    eprintln!(
        "[{:>6.1} s] {program} {}",
        started.elapsed().as_secs_f64(),
        words.join(" ")
    );
    assert!(
        out.status.success(),
        "command failed ({:?}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `mrdino synth` into `dir` (`size` WxH); returns the frames folder (`dir/frames`).
pub fn synth(dir: &Path, size: &str, sequences: usize, frames: usize) -> PathBuf {
    run_ok(mrdino().args(["synth", "--out"]).arg(dir).args([
        "--sequences",
        &sequences.to_string(),
        "--frames",
        &frames.to_string(),
        "--size",
        size,
    ]));
    dir.join("frames")
}

/// `mrdino labels --quiet` of what [`synth`] wrote into `data` (the frames `data/frames` and their exported flow
/// `data/flow`, `--flow import`) into `out`.
pub fn labels_of_synth(data: &Path, out: &Path) -> Command {
    let mut cmd = mrdino();
    cmd.args(["labels", "--dataset", "frames", "--quiet", "--flow", "import", "--flow-dir"])
        .arg(data.join("flow"))
        .arg("--root")
        .arg(data.join("frames"))
        .arg("--out")
        .arg(out);
    cmd
}

/// `mrdino features --quiet --device cpu` of the frames folder `frames` into `out` with the backbone `backbone`;
/// the caller adds the weights, the view size, the views and the rest.
pub fn features_of(frames: &Path, out: &Path, backbone: &str) -> Command {
    let mut cmd = mrdino();
    cmd.args(["features", "--dataset", "frames", "--quiet", "--device", "cpu", "--backbone", backbone])
        .arg("--root")
        .arg(frames)
        .arg("--out")
        .arg(out);
    cmd
}

/// Metrics rows of a training run without the wall-clock field.
pub fn metrics(run: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("elapsed_s");
            v
        })
        .collect()
}

/// Every tensor of a run's checkpoint (weights and moments) as bytes, sorted by name.
pub fn tensors(run: &Path) -> Vec<(String, Vec<u8>)> {
    let file = read_tensor_file(&run.join("checkpoint.safetensors")).unwrap();
    file.tensors.into_iter().map(|t| (t.name, t.data)).collect()
}

/// The step of a run's checkpoint, if it has one.
pub fn checkpoint_step(run: &Path) -> Option<u64> {
    let file = read_tensor_file(&run.join("checkpoint.safetensors")).ok()?;
    let state: TrainState = serde_json::from_str(file.meta(META_TRAIN_STATE)?).ok()?;
    Some(state.step)
}

/// Starts a run and waits until its checkpoint has at least `min_step` steps.
pub fn start_until_checkpoint(mut cmd: Command, run: &Path, min_step: u64) -> std::process::Child {
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    while checkpoint_step(run).is_none_or(|s| s < min_step) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("run ended ({status}) before its checkpoint reached step {min_step}");
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint at step {min_step} within 600 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Mean of a slice.
pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Records the current size and hash of every output in the done markers of `out`, so that tables rewritten by
/// a test count as written by the job (not as corrupt units).
pub fn record_rewritten_outputs(out: &Path) {
    use mrdino_outputs::bookkeeping::{DoneMarker, Ledger};
    let mut pending = vec![out.join("_done")];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                let marker: DoneMarker<serde_json::Value> =
                    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                Ledger::new(out, &marker.kind, &marker.params_hash).write_marker(&marker).unwrap();
            }
        }
    }
}
