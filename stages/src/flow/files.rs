//! Flow computed elsewhere: reading (`--flow import`) and encoding (`mrdino flow`) flow files.
//!
//! `DIR/<sequence id>/<frame name>.<ext>` holds the flow from that frame to the next, in pixels of the
//! processing resolution. Formats, tried in this order:
//! - `.npy`: float32 or float64, shape (H, W, 2), channel 0 = u (x), channel 1 = v (y) — the reference's
//!   `Flows_gap1_smurf/*.npy`;
//! - `.flo`: Middlebury (`PIEH` magic, little-endian width, height, then (u, v) float32 per pixel) — the
//!   reference's RAFT path;
//! - `.png`: KITTI 16-bit flow: u = (R − 2¹⁵)/64, v = (G − 2¹⁵)/64, B = valid; invalid pixels become 0.
//!
//! Kubric's raw scene output (MOVi) keeps its own encoding beside the frames: `forward_flow_XXXXX.png` for
//! `rgba_XXXXX.png`, 16-bit, whose first two channels are (Δrow, Δcol) mapped linearly from
//! [min, max] (`data_ranges.json`, key `forward_flow`) to [0, 65535] — read by [`read_kubric_flow`].

use std::io::Read;
use std::path::{Path, PathBuf};

use mrdino_datasets::decode::read_unchanged;
use npyz::WriterBuilder;
use opencv::prelude::*;

use super::{FlowError, FlowField};

const FLO_MAGIC: f32 = 202021.25;

/// Extensions tried, in order, for an imported flow file.
pub const FLOW_EXTENSIONS: [&str; 3] = ["npy", "flo", "png"];

fn file_err(path: &Path, message: impl Into<String>) -> FlowError {
    FlowError::File {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The flow file for `frame_name` of `sequence_id` under `flow_dir`, if one exists.
pub fn find_flow_file(flow_dir: &Path, sequence_id: &str, frame_name: &str) -> Option<PathBuf> {
    let dir = flow_dir.join(sequence_id);
    FLOW_EXTENSIONS
        .iter()
        .map(|ext| dir.join(format!("{frame_name}.{ext}")))
        .find(|p| p.is_file())
}

/// Reads a flow file (format from its extension) and checks it holds only finite values.
pub fn read_flow_file(path: &Path) -> Result<FlowField, FlowError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let field = match ext.as_str() {
        "npy" => read_npy(path)?,
        "flo" => read_flo(path)?,
        "png" => read_kitti_png(path)?,
        _ => return Err(file_err(path, "unknown flow format (expected .npy, .flo or .png)")),
    };
    if let Some(i) = field.uv.iter().position(|x| !x.is_finite()) {
        let pixel = i / 2;
        return Err(file_err(
            path,
            format!(
                "non-finite flow value at row {}, column {}",
                pixel / field.width,
                pixel % field.width
            ),
        ));
    }
    Ok(field)
}

fn read_npy(path: &Path) -> Result<FlowField, FlowError> {
    let bytes = std::fs::read(path).map_err(|e| file_err(path, e.to_string()))?;
    let npy = npyz::NpyFile::new(&bytes[..]).map_err(|e| file_err(path, format!("not a .npy file: {e}")))?;
    let shape = npy.shape().to_vec();
    if shape.len() != 3 || shape[2] != 2 {
        return Err(file_err(path, format!("expected shape (H, W, 2), found {shape:?}")));
    }
    if npy.order() != npyz::Order::C {
        return Err(file_err(
            path,
            "Fortran-ordered arrays are not supported; save with C order",
        ));
    }
    let (height, width) = (shape[0] as usize, shape[1] as usize);
    let uv: Vec<f32> = match npy.dtype() {
        npyz::DType::Plain(t) if t.type_char() == npyz::TypeChar::Float && t.size_field() == 4 => {
            npy.into_vec::<f32>().map_err(|e| file_err(path, e.to_string()))?
        }
        npyz::DType::Plain(t) if t.type_char() == npyz::TypeChar::Float && t.size_field() == 8 => npy
            .into_vec::<f64>()
            .map_err(|e| file_err(path, e.to_string()))?
            .into_iter()
            .map(|x| x as f32)
            .collect(),
        other => {
            return Err(file_err(
                path,
                format!("expected float32 or float64 data, found {}", other.descr()),
            ))
        }
    };
    Ok(FlowField::new(height, width, uv))
}

fn read_flo(path: &Path) -> Result<FlowField, FlowError> {
    let mut file = std::fs::File::open(path).map_err(|e| file_err(path, e.to_string()))?;
    let mut header = [0u8; 12];
    file.read_exact(&mut header)
        .map_err(|e| file_err(path, format!("truncated header: {e}")))?;
    let magic = f32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    if magic != FLO_MAGIC {
        return Err(file_err(path, "not a Middlebury .flo file (bad magic)"));
    }
    let width = i32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let height = i32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if width <= 0 || height <= 0 || width > 1 << 16 || height > 1 << 16 {
        return Err(file_err(path, format!("implausible size {width}x{height}")));
    }
    let (height, width) = (height as usize, width as usize);
    let mut data = Vec::with_capacity(height * width * 8);
    file.read_to_end(&mut data).map_err(|e| file_err(path, e.to_string()))?;
    if data.len() != height * width * 8 {
        return Err(file_err(
            path,
            format!(
                "expected {} bytes of flow for {width}x{height}, found {}",
                height * width * 8,
                data.len()
            ),
        ));
    }
    let uv = data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(FlowField::new(height, width, uv))
}

fn read_kitti_png(path: &Path) -> Result<FlowField, FlowError> {
    let mat = read_unchanged(path).map_err(|e| file_err(path, e.to_string()))?;
    if mat.typ() != opencv::core::CV_16UC3 {
        return Err(file_err(path, "KITTI flow PNGs are 16-bit with 3 channels"));
    }
    let (height, width) = (mat.rows() as usize, mat.cols() as usize);
    let flat = mat.reshape(1, 0).map_err(|e| file_err(path, e.to_string()))?;
    let bgr: &[u16] = flat.data_typed().map_err(|e| file_err(path, e.to_string()))?;
    let mut uv = Vec::with_capacity(height * width * 2);
    for px in bgr.chunks_exact(3) {
        let (valid, g, r) = (px[0], px[1], px[2]);
        if valid == 0 {
            uv.extend([0.0, 0.0]);
        } else {
            uv.push((f32::from(r) - 32768.0) / 64.0);
            uv.push((f32::from(g) - 32768.0) / 64.0);
        }
    }
    Ok(FlowField::new(height, width, uv))
}

/// The Kubric forward-flow file of a frame named `rgba_XXXXX` in `scene_dir`, if present.
pub fn kubric_flow_file(scene_dir: &Path, frame_name: &str) -> Option<PathBuf> {
    let number = frame_name.strip_prefix("rgba_")?;
    let path = scene_dir.join(format!("forward_flow_{number}.png"));
    path.is_file().then_some(path)
}

/// Decodes a Kubric `forward_flow_XXXXX.png` with the range in the `data_ranges.json` beside it.
pub fn read_kubric_flow(path: &Path) -> Result<FlowField, FlowError> {
    let ranges_path = path.with_file_name("data_ranges.json");
    let text = std::fs::read_to_string(&ranges_path).map_err(|e| file_err(&ranges_path, e.to_string()))?;
    let ranges: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| file_err(&ranges_path, format!("not valid JSON: {e}")))?;
    let bound = |key: &str| {
        ranges["forward_flow"][key]
            .as_f64()
            .ok_or_else(|| file_err(&ranges_path, format!("missing number forward_flow.{key}")))
    };
    let (min, max) = (bound("min")?, bound("max")?);
    let mat = read_unchanged(path).map_err(|e| file_err(path, e.to_string()))?;
    if mat.depth() != opencv::core::CV_16U || mat.channels() < 2 {
        return Err(file_err(path, "Kubric flow PNGs are 16-bit with at least 2 channels"));
    }
    let channels = mat.channels() as usize;
    let (height, width) = (mat.rows() as usize, mat.cols() as usize);
    let flat = mat.reshape(1, 0).map_err(|e| file_err(path, e.to_string()))?;
    let values: &[u16] = flat.data_typed().map_err(|e| file_err(path, e.to_string()))?;
    // OpenCV stores colour PNGs as B, G, R(, A): the file's first channel (Δrow) is the last colour one.
    let (row_channel, col_channel) = if channels >= 3 { (2, 1) } else { (0, 1) };
    let decode = |x: u16| (f64::from(x) / 65535.0 * (max - min) + min) as f32;
    let mut uv = Vec::with_capacity(height * width * 2);
    for px in values.chunks_exact(channels) {
        uv.push(decode(px[col_channel]));
        uv.push(decode(px[row_channel]));
    }
    Ok(FlowField::new(height, width, uv))
}

/// The flow as a `.npy` file (float32, (H, W, 2), C order).
#[expect(clippy::expect_used, reason = "writing into a Vec cannot fail")]
pub fn encode_npy(field: &FlowField) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.uv.len() * 4 + 128);
    let shape = [field.height as u64, field.width as u64, 2];
    {
        let mut writer = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&shape)
            .writer(&mut out)
            .begin_nd()
            .expect("writing into a Vec cannot fail");
        writer
            .extend(field.uv.iter().copied())
            .expect("writing into a Vec cannot fail");
        writer.finish().expect("writing into a Vec cannot fail");
    }
    out
}

/// The flow as a Middlebury `.flo` file.
pub fn encode_flo(field: &FlowField) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + field.uv.len() * 4);
    out.extend(FLO_MAGIC.to_le_bytes());
    out.extend((field.width as i32).to_le_bytes());
    out.extend((field.height as i32).to_le_bytes());
    for x in &field.uv {
        out.extend(x.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FlowField {
        let uv = (0..3 * 5 * 2).map(|i| i as f32 * 0.25 - 3.0).collect();
        FlowField::new(3, 5, uv)
    }

    #[test]
    fn npy_and_flo_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        for (ext, bytes) in [("npy", encode_npy(&sample())), ("flo", encode_flo(&sample()))] {
            let path = dir.path().join(format!("f.{ext}"));
            std::fs::write(&path, bytes).unwrap();
            assert_eq!(read_flow_file(&path).unwrap(), sample(), "{ext}");
        }
    }

    #[test]
    fn non_finite_values_are_refused_with_their_position() {
        let dir = tempfile::tempdir().unwrap();
        let mut field = sample();
        field.uv[2 * (5 + 3) + 1] = f32::NAN;
        let path = dir.path().join("nan.npy");
        std::fs::write(&path, encode_npy(&field)).unwrap();
        let err = read_flow_file(&path).unwrap_err().to_string();
        assert!(err.contains("nan.npy") && err.contains("row 1, column 3"), "{err}");
    }

    #[test]
    fn wrong_shape_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.npy");
        npyz::to_file_1d(&path, vec![1.0f32, 2.0, 3.0]).unwrap();
        let err = read_flow_file(&path).unwrap_err().to_string();
        assert!(err.contains("expected shape (H, W, 2)"), "{err}");
    }

    #[test]
    fn kubric_png_decoding() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("data_ranges.json"),
            r#"{"forward_flow": {"min": -10.0, "max": 10.0}}"#,
        )
        .unwrap();
        // Two pixels, stored B, G, R by OpenCV = (unused, Δcol, Δrow) of the file's (Δrow, Δcol, 0).
        let px: Vec<u16> = vec![0, 65535, 0, 0, 32768, 49151];
        let mat = opencv::core::Mat::new_rows_cols_with_data(1, 6, &px)
            .unwrap()
            .reshape(3, 1)
            .unwrap()
            .try_clone()
            .unwrap();
        let path = dir.path().join("forward_flow_00003.png");
        opencv::imgcodecs::imwrite_def(path.to_str().unwrap(), &mat).unwrap();
        assert_eq!(kubric_flow_file(dir.path(), "rgba_00003"), Some(path.clone()));
        assert_eq!(kubric_flow_file(dir.path(), "rgba_00004"), None);
        let field = read_kubric_flow(&path).unwrap();
        let expect = [
            10.0,
            -10.0,
            32768.0 / 65535.0 * 20.0 - 10.0,
            49151.0 / 65535.0 * 20.0 - 10.0,
        ];
        for (got, want) in field.uv.iter().zip(expect) {
            assert!((got - want).abs() < 1e-5, "{:?}", field.uv);
        }
        std::fs::remove_file(dir.path().join("data_ranges.json")).unwrap();
        assert!(read_kubric_flow(&path)
            .unwrap_err()
            .to_string()
            .contains("data_ranges.json"));
    }

    #[test]
    fn kitti_png_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.png");
        // One valid pixel (u = 1.5, v = -2.0) and one invalid pixel, stored B, G, R.
        let px: Vec<u16> = vec![1, 32768 - 128, 32768 + 96, 0, 40000, 40000];
        let mat = opencv::core::Mat::new_rows_cols_with_data(1, 6, &px)
            .unwrap()
            .reshape(3, 1)
            .unwrap()
            .try_clone()
            .unwrap();
        opencv::imgcodecs::imwrite_def(path.to_str().unwrap(), &mat).unwrap();
        let field = read_flow_file(&path).unwrap();
        assert_eq!(field.uv, vec![1.5, -2.0, 0.0, 0.0]);
    }
}
