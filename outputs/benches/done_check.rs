//! What verifying a done unit costs (see `mrdino_outputs::bookkeeping`, "Cost, measured"). Prints the
//! in-memory throughput of XXH3-128 (the marker's content hash) and SHA-256 (the alternative measured against
//! it), then the time of `Ledger::check` for units of realistic sizes written to a temporary directory (a
//! labels unit of a few hundred KITTI frames: instances Parquet ≈ 5 MB; features shards of 10 and 100 MB), with
//! the files in the page cache. With a job directory as argument (`cargo bench --workspace --bench done_check
//! -- OUT`) it also times the check of every planned unit of the job's latest partition.
//!
//! Times are the minimum over the repeats. Uncached reads are bounded by the disk: time them with the page
//! cache dropped for the files (`dd if=FILE iflag=nocache count=0`) and `mrdino status`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

use std::path::{Path, PathBuf};
use std::time::Instant;

use mrdino_outputs::bookkeeping::{choose_partition, DoneMarker, Ledger, Plan, PlannedUnit, UnitCheck, WhenSeveral};
use mrdino_outputs::write_atomic;
use sha2::Digest;

type Payload = serde_json::Map<String, serde_json::Value>;

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

fn best_seconds(repeats: usize, mut f: impl FnMut()) -> f64 {
    (0..repeats)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn hash_throughput() {
    let data = pseudo_random(64_000_000, 7);
    let mb = data.len() as f64 / 1e6;
    let xxh3 = best_seconds(10, || {
        std::hint::black_box(twox_hash::XxHash3_128::oneshot(std::hint::black_box(&data)));
    });
    let sha = best_seconds(5, || {
        std::hint::black_box(sha2::Sha256::digest(std::hint::black_box(&data)));
    });
    println!("| hash, 64 MB in memory | MB/s |");
    println!("|---|---:|");
    println!("| XXH3-128 (twox-hash) | {:.0} |", mb / xxh3);
    println!("| SHA-256 (sha2) | {:.0} |", mb / sha);
    println!();
}

/// Times `check` of one unit whose outputs have the given sizes.
fn unit_cost(label: &str, sizes: &[usize]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = Ledger::new(dir.path(), "bench", "h");
    let unit = PlannedUnit::new("unit", None, "f");
    let files: Vec<PathBuf> = sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let path = dir.path().join(format!("t/unit-{i}.bin"));
            write_atomic(&path, &pseudo_random(size, i as u64 + 1)).expect("write");
            path
        })
        .collect();
    let marker = DoneMarker::new(&ledger, &unit, &files, "v", 0.0, Vec::new(), Payload::new());
    let write = best_seconds(5, || ledger.write_marker(&marker).expect("marker"));
    let check = || assert!(matches!(ledger.check::<Payload>(&unit), UnitCheck::Done(_)));
    let cached = best_seconds(5, check);
    let uncached = if files.iter().all(|f| drop_from_page_cache(f)) {
        let seconds = (0..3)
            .map(|_| {
                for f in &files {
                    drop_from_page_cache(f);
                }
                let start = Instant::now();
                check();
                start.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        format!("{:.1}", seconds * 1e3)
    } else {
        "n/a".into()
    };
    let mb = sizes.iter().sum::<usize>() as f64 / 1e6;
    println!(
        "| {label} | {mb:.1} | {:.2} | {:.2} | {uncached} | {:.0} |",
        write * 1e3,
        cached * 1e3,
        mb / cached
    );
}

/// Asks the kernel to drop `path` from the page cache (GNU dd's `nocache`); false when that is not possible.
fn drop_from_page_cache(path: &Path) -> bool {
    std::process::Command::new("dd")
        .arg(format!("if={}", path.display()))
        .args(["iflag=nocache", "count=0", "status=none"])
        .status()
        .is_ok_and(|s| s.success())
}

/// Times `check` of every planned unit of the latest partition of the job in `root`.
fn job_cost(root: &Path) {
    let choice = choose_partition(root, &[], None, WhenSeveral::Latest).expect("a job directory");
    let plan_path = root.join("_plan").join(format!("params={}.json", choice.params_hash));
    let plan: Plan = serde_json::from_slice(&std::fs::read(&plan_path).expect("plan")).expect("plan json");
    let ledger = Ledger::new(root, &plan.kind, &choice.params_hash);
    println!();
    println!(
        "| unit of {} | outputs (MB) | check, cached (ms) | state |",
        root.display()
    );
    println!("|---|---:|---:|---|");
    for unit in &plan.units {
        let mut state = String::new();
        let seconds = best_seconds(5, || {
            state = match ledger.check::<Payload>(unit) {
                UnitCheck::Done(_) => "done".into(),
                UnitCheck::Corrupt(c) => format!("corrupt: {c}"),
                UnitCheck::NotDone => "not done".into(),
            };
        });
        let bytes: u64 = ledger
            .is_done::<Payload>(unit)
            .map(|m| m.file_checks.unwrap_or_default().values().map(|c| c.size_bytes).sum())
            .unwrap_or(0);
        println!(
            "| {} | {:.2} | {:.3} | {state} |",
            unit.id,
            bytes as f64 / 1e6,
            seconds * 1e3
        );
    }
}

fn main() {
    hash_throughput();
    println!("| unit | outputs (MB) | write_marker (ms) | check, cached (ms) | check, uncached (ms) | check, cached (MB/s) |");
    println!("|---|---:|---:|---:|---:|---:|");
    unit_cost(
        "labels, KITTI-sized (frames 0.2 MB + instances 5 MB)",
        &[200_000, 5_000_000],
    );
    unit_cost("features shard, 10 MB", &[10_000_000]);
    unit_cost("features shard, 100 MB", &[100_000_000]);
    if let Some(root) = std::env::args().skip(1).find(|a| !a.starts_with('-')) {
        job_cost(Path::new(&root));
    }
}
