//! Shared by the HDBSCAN parity tests and the HDBSCAN benchmark: realistic component features, the adjusted Rand
//! index, and a runner for the Python reference script `tools/reference/hdbscan_ref.py`.

use std::path::PathBuf;
use std::process::Command;

/// Deterministic uniform numbers (64-bit LCG, top 53 bits) and normal numbers (Box–Muller).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn uniform(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn normal(&mut self) -> f64 {
        let radius = (-2.0 * (1.0 - self.uniform()).ln()).sqrt();
        radius * (std::f64::consts::TAU * self.uniform()).cos()
    }
}

/// Features of one moving-foreground component as the instance stage builds them, `[u, v, 60·row, 60·col,
/// 100·bin]`: an elliptical pixel blob of about `target_pixels` pixels, cut by vertical boundaries into `objects`
/// side-by-side objects, each translating with its own flow (neighbouring objects differ by more than 5 px in u,
/// so the stage would split the component), plus per-pixel flow noise, a slight flow gradient over rows, and 3 %
/// outlier pixels with random flow. Flow is rounded to f32 like the stage's flow maps.
pub fn component_points(target_pixels: usize, objects: usize, seed: u64) -> Vec<[f64; 5]> {
    const FLOWS_PX: [(f64, f64); 3] = [(2.0, 0.4), (9.5, -0.8), (-4.0, 1.6)];
    let mut rng = Rng::new(seed);
    // Ellipse with semi-axes (1.6·b, b) in (col, row) has area π·1.6·b².
    let semi_rows = (target_pixels as f64 / (std::f64::consts::PI * 1.6)).sqrt();
    let semi_cols = 1.6 * semi_rows;
    let (rows, cols) = ((2.0 * semi_rows).ceil() as i64 + 1, (2.0 * semi_cols).ceil() as i64 + 1);
    let mut points = Vec::with_capacity(target_pixels + target_pixels / 10);
    for row in 0..rows {
        for col in 0..cols {
            let y = (row as f64 - semi_rows) / semi_rows;
            let x = (col as f64 - semi_cols) / semi_cols;
            if x * x + y * y > 1.0 {
                continue;
            }
            let object = ((col as f64 / cols as f64) * objects as f64) as usize;
            let (base_u, base_v) = FLOWS_PX[object.min(objects - 1) % FLOWS_PX.len()];
            let (u, v) = if rng.uniform() < 0.03 {
                (30.0 * rng.uniform() - 15.0, 30.0 * rng.uniform() - 15.0)
            } else {
                let gradient = 0.004 * row as f64;
                (
                    base_u + gradient + 0.3 * rng.normal(),
                    base_v - gradient + 0.3 * rng.normal(),
                )
            };
            let (u, v) = (f64::from(u as f32), f64::from(v as f32));
            let angle = v.atan2(u).rem_euclid(std::f64::consts::TAU);
            let bin = (angle / (std::f64::consts::TAU / 16.0)).floor().min(15.0);
            points.push([u, v, 60.0 * row as f64, 60.0 * col as f64, 100.0 * bin]);
        }
    }
    points
}

/// Adjusted Rand index of two labelings; noise (-1) counts as one more label.
pub fn adjusted_rand_index(a: &[i32], b: &[i32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let index = |labels: &[i32]| -> (Vec<usize>, usize) {
        let mut ids = std::collections::BTreeMap::new();
        let mapped = labels
            .iter()
            .map(|l| {
                let next = ids.len();
                *ids.entry(*l).or_insert(next)
            })
            .collect();
        (mapped, ids.len())
    };
    let ((ia, ka), (ib, kb)) = (index(a), index(b));
    let mut table = vec![0u64; ka * kb];
    for (&x, &y) in ia.iter().zip(&ib) {
        table[x * kb + y] += 1;
    }
    let pairs = |count: u64| (count * count.saturating_sub(1) / 2) as f64;
    let sum_cells: f64 = table.iter().map(|&c| pairs(c)).sum();
    let sum_rows: f64 = (0..ka).map(|x| pairs(table[x * kb..(x + 1) * kb].iter().sum())).sum();
    let sum_cols: f64 = (0..kb).map(|y| pairs((0..ka).map(|x| table[x * kb + y]).sum())).sum();
    let expected = sum_rows * sum_cols / pairs(a.len() as u64);
    let maximum = 0.5 * (sum_rows + sum_cols);
    if maximum == expected {
        return 1.0;
    }
    (sum_cells - expected) / (maximum - expected)
}

/// The Python interpreter with numpy and hdbscan: `$MRDINO_PYTHON`, else `$HOME/.cache/mrdino/venv/bin/python`.
pub fn python_interpreter() -> PathBuf {
    if let Some(python) = std::env::var_os("MRDINO_PYTHON") {
        return PathBuf::from(python);
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    PathBuf::from(home).join(".cache/mrdino/venv/bin/python")
}

/// How the reference library is run.
#[derive(Clone, Copy, Debug)]
pub struct PythonOptions {
    pub approx_min_span_tree: bool,
    pub core_dist_n_jobs: usize,
    pub repeats: usize,
}

/// Labels from the Python library and its fastest fit time in seconds, with `min_cluster_size = 30` and the
/// default `min_samples`. Errors say what failed (interpreter missing, import error, …).
pub fn python_labels(points: &[[f64; 5]], options: PythonOptions) -> Result<(Vec<i32>, f64), String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tools/reference/hdbscan_ref.py");
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let (input, output) = (dir.path().join("points.npy"), dir.path().join("labels.npy"));
    write_points(&input, points).map_err(|e| format!("writing {}: {e}", input.display()))?;
    let python = python_interpreter();
    let result = Command::new(&python)
        .arg(&script)
        .arg(&input)
        .arg(&output)
        .args(["--min-cluster-size", "30"])
        .args([
            "--approx-min-span-tree",
            if options.approx_min_span_tree { "true" } else { "false" },
        ])
        .args(["--core-dist-n-jobs", &options.core_dist_n_jobs.to_string()])
        .args(["--repeats", &options.repeats.to_string()])
        .output()
        .map_err(|e| format!("cannot run {} (set MRDINO_PYTHON): {e}", python.display()))?;
    if !result.status.success() {
        return Err(format!(
            "{} {} failed ({}):\n{}",
            python.display(),
            script.display(),
            result.status,
            String::from_utf8_lossy(&result.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&result.stdout);
    let seconds = stdout
        .split("\"seconds\": ")
        .nth(1)
        .and_then(|rest| rest.split([',', '}']).next())
        .and_then(|value| value.trim().parse::<f64>().ok())
        .ok_or_else(|| format!("no fit time in the script's output: {stdout}"))?;
    let file = std::fs::File::open(&output).map_err(|e| format!("{}: {e}", output.display()))?;
    let labels = npyz::NpyFile::new(std::io::BufReader::new(file))
        .and_then(|npy| npy.into_vec::<i32>())
        .map_err(|e| format!("{}: {e}", output.display()))?;
    Ok((labels, seconds))
}

fn write_points(path: &std::path::Path, points: &[[f64; 5]]) -> std::io::Result<()> {
    use npyz::WriterBuilder;
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&[points.len() as u64, 5])
        .writer(file)
        .begin_nd()?;
    writer.extend(points.iter().flatten().copied())?;
    writer.finish()
}
