//! The instance stage against a Python reference built with the libraries the published scripts use
//! (`tools/reference/instances_ref.py`: numpy text rounding, scikit-image labels and erosion, scipy Sobel,
//! `hdbscan`), on realistic flow fields: noisy static background, objects with smoothly varying flow,
//! objects touching the image border, touching objects with different motion, and magnitudes near 2.5 px.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

use std::path::PathBuf;
use std::process::Command;

use mrdino_stages::flow::files::encode_npy;
use mrdino_stages::flow::FlowField;
use mrdino_stages::instances::{
    connected_components, disk_offsets, has_interior_edge, separate_instances, ForegroundTest, InstanceParams, Origin,
};

fn python() -> PathBuf {
    std::env::var_os("MRDINO_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/mrdino/venv/bin/python")
    })
}

fn params() -> InstanceParams {
    InstanceParams::reference()
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// A 120×200 flow field with a few objects; `seed` varies their placement and motion.
fn scene(seed: u64) -> FlowField {
    let (h, w) = (120, 200);
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut f = FlowField::zeros(h, w);
    for x in f.uv.iter_mut() {
        *x = (rng.next() - 0.5) * 1.2;
    }
    let mut object = |top: usize, left: usize, oh: usize, ow: usize, u: f32, v: f32, rng: &mut Rng| {
        for r in top..(top + oh).min(h) {
            for c in left..(left + ow).min(w) {
                let grad = 1.0 + 0.004 * (r - top) as f32;
                f.uv[2 * (r * w + c)] = u * grad + (rng.next() - 0.5) * 0.4;
                f.uv[2 * (r * w + c) + 1] = v * grad + (rng.next() - 0.5) * 0.4;
            }
        }
    };
    let jitter = |rng: &mut Rng, span: usize| (rng.next() * span as f32) as usize;
    let (a, b, c) = (jitter(&mut rng, 20), jitter(&mut rng, 20), jitter(&mut rng, 10));
    object(10 + a, 5 + b, 40, 50, 4.0 + rng.next() * 2.0, 0.5, &mut rng); // a car
    object(60, 70 + c, 45, 40, 3.0, 0.0, &mut rng); // touching pair with a step of > 5 px in u
    object(60, 110 + c, 45, 40, 10.0 + rng.next() * 3.0, -1.0, &mut rng);
    object(85, 170, 35, 30, -6.0, 2.0, &mut rng); // touches the right and bottom borders
    object(15, 120, 12, 12, 2.5003, 0.0, &mut rng); // magnitudes scattered around the threshold
    f
}

fn ari(a: &[i64], b: &[i64]) -> f64 {
    use std::collections::HashMap;
    let mut table: HashMap<(i64, i64), f64> = HashMap::new();
    let mut ra: HashMap<i64, f64> = HashMap::new();
    let mut rb: HashMap<i64, f64> = HashMap::new();
    for (&x, &y) in a.iter().zip(b) {
        *table.entry((x, y)).or_default() += 1.0;
        *ra.entry(x).or_default() += 1.0;
        *rb.entry(y).or_default() += 1.0;
    }
    let c2 = |n: f64| n * (n - 1.0) / 2.0;
    let index: f64 = table.values().map(|&n| c2(n)).sum();
    let sa: f64 = ra.values().map(|&n| c2(n)).sum();
    let sb: f64 = rb.values().map(|&n| c2(n)).sum();
    let expected = sa * sb / c2(a.len() as f64);
    let max = (sa + sb) / 2.0;
    if (max - expected).abs() < 1e-12 {
        1.0
    } else {
        (index - expected) / (max - expected)
    }
}

#[test]
fn instance_stage_matches_the_python_reference() {
    let dir = tempfile::tempdir().unwrap();
    let p = params();
    let disk = disk_offsets(p.erosion_radius_px);
    for seed in 1..=4u64 {
        let flow = scene(seed);
        let (h, w) = (flow.height, flow.width);
        let flow_path = dir.path().join(format!("flow{seed}.npy"));
        let out_path = dir.path().join(format!("ref{seed}.npz"));
        std::fs::write(&flow_path, encode_npy(&flow)).unwrap();
        let run = Command::new(python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tools/reference/instances_ref.py"
            ))
            .arg(&flow_path)
            .arg(&out_path)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} (set MRDINO_PYTHON): {e}", python().display()));
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let npz = std::fs::read(&out_path).unwrap();
        let mut archive = npz_entries(&npz);
        let ref_fg: Vec<bool> = archive.remove("fg.npy").unwrap().into_iter().map(|x| x != 0).collect();
        let ref_components: Vec<i64> = archive.remove("components.npy").unwrap();
        let ref_split: Vec<i64> = archive.remove("split.npy").unwrap();
        let ref_clusters: Vec<i64> = archive.remove("clusters.npy").unwrap();

        // Foreground, bit for bit.
        let (fg, _) = ForegroundTest::new(p.fg_threshold_px, p.fg_round_decimals).mask(&flow.magnitude());
        assert_eq!(fg, ref_fg, "seed {seed}: foreground differs");
        // Components: same labels in the same order.
        let (labels, comps) = connected_components(&fg, h, w);
        assert_eq!(
            labels.iter().map(|&l| i64::from(l)).collect::<Vec<_>>(),
            ref_components,
            "seed {seed}"
        );
        // The interior edge decision of every component.
        let split: Vec<i64> = comps
            .iter()
            .enumerate()
            .map(|(k, px)| i64::from(has_interior_edge(&flow, &labels, k as u32 + 1, px, &p, &disk)))
            .collect();
        assert_eq!(split, ref_split, "seed {seed}: split decisions differ");
        assert!(
            split.contains(&1) && split.contains(&0),
            "seed {seed}: the scene should exercise both paths"
        );
        // Instances: whole components equal; HDBSCAN partitions agree up to ties.
        let instances = separate_instances(&flow, &fg, &p);
        for (k, px) in comps.iter().enumerate() {
            let label = k as u32 + 1;
            let ours: Vec<&_> = instances.iter().filter(|i| i.component == label).collect();
            if split[k] == 0 {
                if px.len() >= p.min_instance_px {
                    assert_eq!(ours.len(), 1);
                    assert_eq!(ours[0].origin, Origin::Component);
                    assert_eq!(&ours[0].pixels, px);
                } else {
                    assert!(ours.is_empty());
                }
                continue;
            }
            let mut mine = vec![0i64; h * w];
            for inst in &ours {
                for &q in &inst.pixels {
                    mine[q as usize] = i64::from(inst.hdbscan_label.unwrap()) + 1;
                }
            }
            // Reference clusters after the 100-pixel filter, on this component's pixels.
            let mut sizes = std::collections::HashMap::new();
            for &q in px {
                *sizes.entry(ref_clusters[q as usize]).or_insert(0usize) += 1;
            }
            let theirs: Vec<i64> = px
                .iter()
                .map(|&q| {
                    let c = ref_clusters[q as usize];
                    if c > 0 && sizes[&c] >= p.min_instance_px {
                        c
                    } else {
                        0
                    }
                })
                .collect();
            let ours_on_px: Vec<i64> = px.iter().map(|&q| mine[q as usize]).collect();
            let score = ari(&ours_on_px, &theirs);
            assert!(score >= 0.99, "seed {seed}, component {label}: ARI {score}");
        }
    }
}

/// Entries of an uncompressed `.npz` (a zip of `.npy` files written by `np.savez`), as i64 values.
fn npz_entries(bytes: &[u8]) -> std::collections::HashMap<String, Vec<i64>> {
    let mut out = std::collections::HashMap::new();
    let mut pos = 0;
    while pos + 30 <= bytes.len() && bytes[pos..pos + 4] == [0x50, 0x4b, 0x03, 0x04] {
        let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]) as usize;
        let u32_at = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]) as usize;
        let method = u16_at(pos + 8);
        assert_eq!(method, 0, "np.savez writes stored entries");
        let mut size = u32_at(pos + 18);
        let name_len = u16_at(pos + 26);
        let extra_len = u16_at(pos + 28);
        let name = String::from_utf8_lossy(&bytes[pos + 30..pos + 30 + name_len]).into_owned();
        let data_start = pos + 30 + name_len + extra_len;
        if size == 0xffff_ffff {
            // zip64: sizes live in the extra field (id 0x0001: uncompressed, compressed).
            size = u32_at(pos + 30 + name_len + 4);
        }
        let npy = npyz::NpyFile::new(&bytes[data_start..data_start + size]).unwrap();
        let values: Vec<i64> = match npy.dtype().descr().trim_matches('\'') {
            "|b1" => npy.into_vec::<bool>().unwrap().into_iter().map(i64::from).collect(),
            "|i1" => npy.into_vec::<i8>().unwrap().into_iter().map(i64::from).collect(),
            "<i4" => npy.into_vec::<i32>().unwrap().into_iter().map(i64::from).collect(),
            other => panic!("unexpected dtype {other} in {name}"),
        };
        out.insert(name, values);
        pos = data_start + size;
    }
    out
}
