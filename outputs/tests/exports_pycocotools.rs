//! COCO and YouTube-VIS exports of a hand-made run, read back by pycocotools.
//!
//! The run is written with the library's own writers (no binary): two sequences, one of image files with
//! an odd original size, upscaled and cropped, with instances touching the crop border, a one-row instance
//! that vanishes at the original size, tracks with a gap, scores and untracked instances; one of video frames
//! (`clips/b.avi#k`), downscaled, with a labelled frame without instances; plus unlabelled frames and a unit
//! whose tables exist but which is not done. `tools/check_exports.py` (run with `MRDINO_PYTHON`, default
//! `$HOME/.cache/mrdino/venv/bin/python`) loads the COCO file with pycocotools' COCO(), compares every
//! annToMask with the Parquet mask mapped to the original frame by PyTorch's `nearest-exact`, checks counts,
//! area and bbox against pycocotools, evaluates the file against itself (AP 1), and walks the YouTube-VIS file
//! as its loaders do, decoding every segmentation.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

use std::path::{Path, PathBuf};
use std::process::Command;

use mrdino_outputs::bookkeeping::{AnyPayload, DoneMarker, Ledger, Plan, PlannedUnit};
use mrdino_outputs::export::{export_file, ExportFormat, ExportOptions};
use mrdino_outputs::layout::{Layout, LABELS_KIND};
use mrdino_outputs::runs::read_run;
use mrdino_outputs::tables::{
    frames_batch, instances_batch_with_scores, write_parquet, ExcludedReason, FrameRow, InstanceOrigin, InstanceRow,
    ScoreAndTrack,
};
use mrdino_outputs::CocoRle;

fn python() -> PathBuf {
    match std::env::var_os("MRDINO_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => {
            let home = std::env::var_os("HOME").unwrap_or_default();
            Path::new(&home).join(".cache/mrdino/venv/bin/python")
        }
    }
}

/// Frame geometry: (grid h, w), (orig h, w), (resized h, w), (crop top, left).
type Geometry = ((u32, u32), (u32, u32), (u32, u32), (u32, u32));

fn frame(sequence_id: &str, index: u32, source_path: String, g: Geometry, labelled: bool, n: u32) -> FrameRow {
    let ((height, width), (orig_height, orig_width), (resized_height, resized_width), (crop_top, crop_left)) = g;
    FrameRow {
        dataset: "frames".into(),
        sequence_id: sequence_id.into(),
        frame_index: index,
        frame_name: format!("{index:06}"),
        source_path,
        height,
        width,
        orig_height,
        orig_width,
        resized_height,
        resized_width,
        crop_top,
        crop_left,
        quasi_static: labelled,
        corner_flow_px: Some([0.2, 0.3, 0.1, 0.2]),
        fg_fraction: Some(0.1),
        labelled,
        excluded_reason: (!labelled).then_some(ExcludedReason::CameraMotion),
        segment: labelled.then_some(0),
        num_instances: n,
    }
}

/// Pixels (row-major) of the rectangle rows r0..r1, columns c0..c1 of a grid `width` wide.
fn rect(width: u32, (r0, r1): (u32, u32), (c0, c1): (u32, u32)) -> Vec<u32> {
    (r0..r1).flat_map(|r| (c0..c1).map(move |c| r * width + c)).collect()
}

fn instance(f: &FrameRow, instance_id: u32, pixels: &[u32]) -> InstanceRow {
    InstanceRow {
        dataset: f.dataset.clone(),
        sequence_id: f.sequence_id.clone(),
        frame_index: f.frame_index,
        frame_name: f.frame_name.clone(),
        instance_id,
        mask: CocoRle::from_pixels(pixels, f.height, f.width),
        bbox_xywh: [0.0; 4],
        area_px: pixels.len() as u32,
        origin: InstanceOrigin::Component,
        component_id: instance_id,
        hdbscan_label: None,
        mean_flow_px: 3.5,
    }
}

fn st(score: Option<f32>, track_id: Option<u32>) -> ScoreAndTrack {
    ScoreAndTrack { score, track_id }
}

struct Unit {
    id: &'static str,
    frames: Vec<FrameRow>,
    instances: Vec<InstanceRow>,
    scores: Vec<ScoreAndTrack>,
    done: bool,
}

/// The hand-made run (see the file doc); returns (run root, dataset root).
fn write_run(dir: &Path) -> (PathBuf, PathBuf) {
    let (out, data) = (dir.join("out"), dir.join("data"));
    // cam_a: 11×13 original upscaled to 16×20, cropped at (2, 3) to 12×14; frames 0 (unlabelled) to 3.
    let ga: Geometry = ((12, 14), (11, 13), (16, 20), (2, 3));
    let a: Vec<FrameRow> = (0..4)
        .map(|i| {
            frame(
                "cam_a",
                i,
                format!("cam_a/{i:06}.png"),
                ga,
                i > 0,
                [0, 3, 2, 2][i as usize],
            )
        })
        .collect();
    let w = 14;
    let cam_a = Unit {
        id: "cam_a",
        instances: vec![
            // Touches the crop's top-left corner; track 5 over frames 1..3.
            instance(&a[1], 1, &rect(w, (0, 4), (0, 5))),
            // One grid row that no original row samples (row 5): empty at the original size.
            instance(&a[1], 2, &rect(w, (5, 6), (2, 12))),
            // Touches the crop's bottom-right border; track 2 in frames 1 and 3 (a gap in frame 2).
            instance(&a[1], 3, &rect(w, (8, 12), (9, 14))),
            instance(&a[2], 1, &rect(w, (1, 5), (1, 6))),
            // Untracked, with a score.
            instance(&a[2], 2, &[3 * w + 7, 3 * w + 8, 4 * w + 8, 6 * w + 8, 7 * w + 9]),
            instance(&a[3], 1, &rect(w, (2, 6), (2, 7))),
            instance(&a[3], 2, &rect(w, (7, 12), (10, 13))),
        ],
        scores: vec![
            st(Some(0.5), Some(5)),
            st(None, None),
            st(None, Some(2)),
            st(Some(1.0), Some(5)),
            st(Some(0.25), None),
            st(None, Some(5)),
            st(Some(0.75), Some(2)),
        ],
        frames: a,
        done: true,
    };
    // clips/b: video frames, 9×15 original downscaled to 5×8 (no crop); frame 2 labelled without instances.
    let gb: Geometry = ((5, 8), (9, 15), (5, 8), (0, 0));
    let b: Vec<FrameRow> = (0..4)
        .map(|i| {
            frame(
                "clips/b",
                i,
                format!("clips/b.avi#{i}"),
                gb,
                i != 3,
                [1, 1, 0, 0][i as usize],
            )
        })
        .collect();
    let clips_b = Unit {
        id: "clips/b",
        instances: vec![
            instance(&b[0], 1, &rect(8, (1, 4), (0, 3))),
            instance(&b[1], 1, &rect(8, (0, 5), (5, 8))),
        ],
        scores: vec![st(None, None); 2],
        frames: b,
        done: true,
    };
    // cam_c: tables written, never marked done.
    let c = vec![frame("cam_c", 0, "cam_c/000000.png".into(), ga, true, 1)];
    let cam_c = Unit {
        id: "cam_c",
        instances: vec![instance(&c[0], 1, &rect(w, (0, 3), (0, 3)))],
        scores: vec![st(None, None)],
        frames: c,
        done: false,
    };

    let hash = "fixture01";
    let ledger = Ledger::new(&out, LABELS_KIND, hash);
    let layout = Layout::new(&out, hash);
    ledger.prepare(&[]).unwrap();
    ledger
        .write_params(
            &serde_json::json!({"corner_threshold_px": 1.7, "flow": "import"}),
            "v-fixture",
        )
        .unwrap();
    let units = [cam_a, clips_b, cam_c];
    let planned: Vec<PlannedUnit> = units.iter().map(|u| PlannedUnit::new(u.id, Some(4), u.id)).collect();
    ledger
        .write_plan(&Plan::new(
            LABELS_KIND,
            hash,
            "frames",
            &data,
            "v-fixture",
            planned.clone(),
        ))
        .unwrap();
    let meta = vec![
        ("mrdino.flow".to_string(), "import".to_string()),
        ("mrdino.schema_version".to_string(), "1".to_string()),
    ];
    for (unit, plan) in units.iter().zip(&planned) {
        let [frames_file, instances_file] = layout.unit_outputs(unit.id);
        write_parquet(&frames_file, &frames_batch(&unit.frames).unwrap(), &meta).unwrap();
        let batch = instances_batch_with_scores(&unit.instances, &unit.scores).unwrap();
        write_parquet(&instances_file, &batch, &meta).unwrap();
        if unit.done {
            let outputs = [frames_file, instances_file];
            let marker = DoneMarker::new(&ledger, plan, &outputs, "v-fixture", 0.1, Vec::new(), AnyPayload::new());
            ledger.write_marker(&marker).unwrap();
        }
        for f in &unit.frames {
            let source = data.join(f.source_path.split('#').next().unwrap());
            std::fs::create_dir_all(source.parent().unwrap()).unwrap();
            std::fs::write(&source, b"").unwrap();
        }
    }
    (out, data)
}

#[test]
fn coco_and_youtube_vis_exports_match_the_tables_under_pycocotools() {
    let dir = tempfile::tempdir().unwrap();
    let (out, data) = write_run(dir.path());
    let run = read_run(&out, None).unwrap();
    assert_eq!(run.incomplete_units.len(), 1);
    let options = ExportOptions::default();
    let coco = dir.path().join("export/coco.json");
    let ytvis = dir.path().join("export/ytvis.json");
    let c = export_file(&run, ExportFormat::Coco, &options, &coco).unwrap();
    let y = export_file(&run, ExportFormat::YoutubeVis, &options, &ytvis).unwrap();
    // 3 + 3 labelled frames; 9 instances, one empty at the original size.
    assert_eq!((c.images_or_videos, c.annotations, c.empty_at_original), (6, 8, 1));
    assert_eq!((c.unlabelled_frames, c.incomplete_units), (2, 1));
    // Tracks 2 and 5 of cam_a, its untracked instance, and two untracked instances of clips/b.
    assert_eq!((y.images_or_videos, y.frames, y.annotations, y.masks), (2, 6, 5, 8));

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/check_exports.py");
    let py = python();
    let output = Command::new(&py)
        .arg(&script)
        .arg(&out)
        .arg("--root")
        .arg(&data)
        .arg("--coco")
        .arg(&coco)
        .arg("--ytvis")
        .arg(&ytvis)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} with {} ({e}); set MRDINO_PYTHON to a python with pycocotools, pyarrow, numpy and \
                 torch (`make venv` creates one)",
                script.display(),
                py.display()
            )
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{} failed ({}):\n{stdout}\n{}",
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    assert_eq!(summary["coco"]["annotations"], 8, "{summary}");
    assert_eq!(summary["empty_at_original"], 1, "{summary}");
    assert_eq!(summary["youtube_vis"]["masks"], 8, "{summary}");
    assert_eq!(summary["coco"]["self_ap"]["segm"], 1.0, "{summary}");
}

#[test]
fn the_check_fails_on_a_wrong_mask() {
    // The checker is not a test that cannot fail: move one annotation's mask by one pixel.
    let dir = tempfile::tempdir().unwrap();
    let (out, data) = write_run(dir.path());
    let run = read_run(&out, None).unwrap();
    let coco = dir.path().join("coco.json");
    export_file(&run, ExportFormat::Coco, &ExportOptions::default(), &coco).unwrap();
    let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&coco).unwrap()).unwrap();
    let ann = &mut doc["annotations"][0];
    let (h, w) = (
        ann["segmentation"]["size"][0].as_u64().unwrap(),
        ann["segmentation"]["size"][1].as_u64().unwrap(),
    );
    let moved = CocoRle::from_pixels(&[0, 1], h as u32, w as u32);
    ann["segmentation"]["counts"] = moved.counts.into();
    std::fs::write(&coco, serde_json::to_vec(&doc).unwrap()).unwrap();
    let output = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/check_exports.py"))
        .arg(&out)
        .arg("--root")
        .arg(&data)
        .arg("--coco")
        .arg(&coco)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("annToMask differs"),
        "{stderr}"
    );
}
