//! The memory of one training step, estimated from shapes, and the memory the machine has available, so that a run
//! whose configuration cannot fit says so before it allocates instead of growing until the kernel kills it.
//!
//! **Estimate** ([`training_step`]). float32 throughout (4 bytes); B batch, K slots, D slot dimension, F feature
//! channels, P patches, h decoder hidden width, S the side of a refinement view, C the most masks of a view:
//! * weights of every DINOSAUR parameter, and for the trained ones their gradient and Adam's two moments;
//! * the features batch (B·P·F) and the encoder's activations (input MLP B·P·(3F + 2D), slot attention
//!   B·P·2D + iterations·B·K·P·4);
//! * the broadcast decoder, the dominant term: with a backward (baseline, stage 1) its kept activations
//!   B·K·P·(D + 3h + 2(F + 1)) (the broadcast input, three ReLU outputs, the output and the weighted decoded
//!   features) plus the backward's working set 2·B·K·P·h; without (stage 2, under `no_grad`) the working set of
//!   one layer B·K·P·(2h + 2(F + 1));
//! * refinement: the alphas upsampled to the view's pixels and the masks (float32), the matching costs' float64
//!   products, and the loss terms: B·S²·(4·(4K + 3C) + 8·(3K + C)) bytes;
//! * stage 2: the deactivation head's weights, gradients and moments.
//!
//! What is left out (the process itself, libtorch's allocator slack, a backbone's weights, already loaded when the
//! estimate is made and so already missing from the available memory) is why a refusal compares with what is
//! available, not with the total. Checked against measured peaks: the KITTI configuration (F 768, D 32, K 15,
//! P 729, h 2048) at batch 8 estimates 4.1 GiB where `README.md` measured a peak RSS of 4.6 GiB from a feature cache
//! (the process and libtorch's own memory included).
//!
//! **Inference** ([`window_inference`], `mrdino infer`): the same parts under `no_grad` for the batch's frames ×
//! windows, plus the canvases, the masks at window pixels and one frame's joined windows. Checked against measured
//! peaks: a KITTI baseline model (K 15, D 32, F 768, h 2048, four 378 px windows) with the `random-conv-p14-c768`
//! backbone (so the ViT's term is absent) estimates 1.2 GiB at batch 1 and 4.3 GiB at batch 4 where
//! `/usr/bin/time -v mrdino infer --batch 1|4 …` measured peak RSS 1.3 and 3.3 GiB: the per-frame growth is
//! overestimated by about 40 % (libtorch frees a decoder layer's input before the next one's output is complete),
//! which errs towards refusing early rather than being killed.
//!
//! `--memory-limit` ([`limited`]) lowers the available memory to what the user allows, and stands in for it where
//! it is unknown (CUDA).
//!
//! **Available** ([`available`]): on Linux `MemAvailable` of `/proc/meminfo`, lowered to what a cgroup memory
//! limit leaves (v2 `memory.max` − `memory.current` + inactive file pages; v1 `memory.limit_in_bytes` −
//! `memory.usage_in_bytes` + `total_inactive_file`), as a batch scheduler's cgroup kills a job there first. On
//! CUDA, libtorch (through `tch`) does not report the device's free memory: the check is skipped and says so.

use std::path::Path;

use tch::Device;

use crate::dinosaur::{DinosaurConfig, InputProjection};

const F32: f64 = 4.0;
const F64: f64 = 8.0;

/// What a training step does with the model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepKind {
    /// `train dinosaur`: every parameter trained.
    Baseline,
    /// Refinement stage 1: the grouping trained, the gradient through the decoder; views of `view_px`² with at
    /// most `max_masks` masks.
    Stage1 { view_px: i64, max_masks: i64 },
    /// Refinement stage 2: DINOSAUR under `no_grad`, the deactivation head of width `hidden` trained.
    Stage2 { view_px: i64, max_masks: i64, hidden: i64 },
}

/// One named part of an estimate.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryTerm {
    pub what: &'static str,
    pub bytes: f64,
}

/// An estimate: what it is of, and its parts, largest first.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryEstimate {
    /// What needs the memory, for messages ("one training step", "one inference batch").
    pub what: &'static str,
    pub terms: Vec<MemoryTerm>,
}

impl MemoryEstimate {
    /// An empty estimate of `what`.
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            terms: Vec::new(),
        }
    }

    /// Adds a part (ignored when zero).
    pub fn add(&mut self, what: &'static str, bytes: f64) {
        if bytes > 0.0 {
            self.terms.push(MemoryTerm { what, bytes });
            self.terms.sort_by(|a, b| b.bytes.total_cmp(&a.bytes));
        }
    }

    /// The sum of the parts, in bytes (f64: a meaningless configuration may exceed u64).
    pub fn total_bytes(&self) -> f64 {
        self.terms.iter().map(|t| t.bytes).sum()
    }

    /// The largest part.
    pub fn largest(&self) -> Option<&MemoryTerm> {
        self.terms.first()
    }
}

/// Parameter counts of a DINOSAUR model: (every parameter, those of `perceptual_grouping.*`).
pub fn dinosaur_parameters(c: &DinosaurConfig) -> (f64, f64) {
    let (f, d, h, p) = (
        c.feature_dim as f64,
        c.slot_dim as f64,
        c.decoder_hidden as f64,
        c.n_patches as f64,
    );
    let ff = c.ff_mlp_ratio as f64 * d;
    let input = 2.0 * f
        + match c.input_projection {
            InputProjection::TwoLayer => f * f + f + f * d + d,
            InputProjection::SingleLinear => f * d + d,
        };
    let attention = 3.0 * d * d + 6.0 * d * d + 6.0 * d + 6.0 * d + 2.0 * d * ff + ff + d;
    let decoder = p * d + d * h + h + 2.0 * (h * h + h) + h * (f + 1.0) + f + 1.0;
    let projection = if c.target_projection { f * f + f } else { 0.0 };
    let grouping = input + attention;
    (2.0 * d + grouping + decoder + projection, grouping)
}

/// The stage-2 deactivation head's parameters (D → h → h → h → 1).
pub fn head_parameters(slot_dim: i64, hidden: i64) -> f64 {
    let (d, h) = (slot_dim as f64, hidden as f64);
    d * h + h + 2.0 * (h * h + h) + h + 1.0
}

/// The estimate of one training step of `config` at batch size `batch` (see the module docs).
pub fn training_step(c: &DinosaurConfig, batch: u64, kind: StepKind) -> MemoryEstimate {
    let (b, k, d, f, p, h) = (
        batch as f64,
        c.n_slots as f64,
        c.slot_dim as f64,
        c.feature_dim as f64,
        c.n_patches as f64,
        c.decoder_hidden as f64,
    );
    let (all, grouping) = dinosaur_parameters(c);
    let trained = match kind {
        StepKind::Baseline => all,
        StepKind::Stage1 { .. } => grouping,
        StepKind::Stage2 { .. } => 0.0,
    };
    let mut e = MemoryEstimate::new("one training step");
    e.add("model weights", all * F32);
    e.add("gradients and Adam moments", 3.0 * trained * F32);
    e.add("features batch", b * p * f * F32);
    let encoder = b * p * (3.0 * f + 4.0 * d) + c.iterations as f64 * b * k * p * 4.0;
    let bkp = b * k * p;
    match kind {
        StepKind::Baseline | StepKind::Stage1 { .. } => {
            e.add("encoder activations", encoder * F32);
            e.add("decoder activations", bkp * (d + 3.0 * h + 2.0 * (f + 1.0)) * F32);
            e.add("decoder backward", 2.0 * bkp * h * F32);
        }
        StepKind::Stage2 { .. } => e.add("decoder forward", bkp * (2.0 * h + 2.0 * (f + 1.0)) * F32),
    }
    let pixels = |view_px: i64, max_masks: i64| {
        let (s2, m) = ((view_px * view_px) as f64, max_masks as f64);
        b * s2 * (F32 * (4.0 * k + 3.0 * m) + F64 * (3.0 * k + m))
    };
    match kind {
        StepKind::Baseline => {}
        StepKind::Stage1 { view_px, max_masks } => {
            e.add("masks, matching and loss at pixels", pixels(view_px, max_masks))
        }
        StepKind::Stage2 {
            view_px,
            max_masks,
            hidden,
        } => {
            e.add("masks, matching and loss at pixels", pixels(view_px, max_masks));
            e.add("deactivation head", 4.0 * head_parameters(c.slot_dim, hidden) * F32);
            e.add("deactivation head activations", 3.0 * b * k * hidden as f64 * 2.0 * F32);
        }
    }
    e
}

/// The shapes of one batch of windowed inference (`mrdino infer`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InferenceBatch {
    /// Frames per forward.
    pub frames: u64,
    /// Windows per frame.
    pub windows: i64,
    /// A window's (height, width) in pixels.
    pub window_px: (i64, i64),
    /// The canvas a frame is padded or resized to, (height, width) in pixels.
    pub canvas_px: (i64, i64),
    /// The stage-2 deactivation head's hidden width, for a stage-2 model.
    pub head_hidden: Option<i64>,
}

/// The estimate of one batch of windowed inference of `config` (under `no_grad`): the model's weights, the
/// canvases and their windows (float32, 3 channels), the backbone's working set over all windows of the batch,
/// the features, the encoder's and one decoder layer's working sets, the masks upsampled to window pixels (the
/// bilinear output and its copy), and one frame's windows joined on the canvas (the frames are joined one at a time).
pub fn window_inference(c: &DinosaurConfig, s: &InferenceBatch) -> MemoryEstimate {
    let windows = s.frames * s.windows.max(0) as u64;
    let (b, k, d, f, p, h) = (
        windows as f64,
        c.n_slots as f64,
        c.slot_dim as f64,
        c.feature_dim as f64,
        c.n_patches as f64,
        c.decoder_hidden as f64,
    );
    let window_px = (s.window_px.0 * s.window_px.1) as f64;
    let canvas_px = (s.canvas_px.0 * s.canvas_px.1) as f64;
    let mut e = MemoryEstimate::new("one inference batch");
    let head = s.head_hidden.map_or(0.0, |hidden| head_parameters(c.slot_dim, hidden));
    e.add("model weights", (dinosaur_parameters(c).0 + head) * F32);
    e.add(
        "canvases and windows",
        3.0 * (s.frames as f64 * canvas_px + 2.0 * b * window_px) * F32,
    );
    e.add("backbone forward", backbone_forward(windows, c.n_patches, c.feature_dim));
    e.add("features batch", b * p * f * F32);
    e.add(
        "encoder forward",
        (b * p * (3.0 * f + 4.0 * d) + c.iterations as f64 * b * k * p * 4.0) * F32,
    );
    e.add("decoder forward", b * k * p * (2.0 * h + 2.0 * (f + 1.0)) * F32);
    e.add("masks at window pixels", 2.0 * b * k * window_px * F32);
    e.add("one frame's windows joined", s.windows as f64 * k * canvas_px * F32);
    e
}

/// What the loader of on-the-fly images holds: the batches in flight (the channel's two and the one being built),
/// each of B crops, and one resized frame per decoding thread.
pub fn image_batches(batch: u64, crop: (i64, i64), resize: (i64, i64), workers: usize) -> f64 {
    let crop_px = (crop.0 * crop.1) as f64;
    let resize_px = (resize.0 * resize.1) as f64;
    3.0 * 3.0 * batch as f64 * crop_px * F32 + workers as f64 * 2.0 * 3.0 * resize_px * F32
}

/// A backbone forward without gradient of B views of P patches and C channels, as a ViT computes it: the working
/// set of one block (tokens, the MLP's 4C hidden, and the attention of C/64 heads over P tokens).
pub fn backbone_forward(batch: u64, n_patches: i64, channels: i64) -> f64 {
    let (b, p, c) = (batch as f64, n_patches as f64, channels as f64);
    let heads = (c / 64.0).max(1.0);
    b * p * 8.0 * c * F32 + 2.0 * b * heads * p * p * F32
}

/// The memory a device has available for a run.
#[derive(Clone, Debug, PartialEq)]
pub enum Available {
    /// Bytes free for the process, and where the number comes from.
    Bytes { bytes: f64, source: String },
    /// Not known: why.
    Unknown { why: String },
}

/// The memory available on `device` (see the module docs).
pub fn available(device: Device) -> Available {
    match device {
        Device::Cpu => host_available(),
        other => Available::Unknown {
            why: format!(
                "libtorch does not report the free memory of {} to mrdino",
                crate::device::device_name(other)
            ),
        },
    }
}

/// `available`, lowered to a limit the user gave (`--memory-limit`); with a limit, a device whose free memory is
/// unknown is checked against the limit alone.
pub fn limited(available: Available, limit_bytes: Option<f64>) -> Available {
    let Some(limit) = limit_bytes else {
        return available;
    };
    let given = || Available::Bytes {
        bytes: limit,
        source: format!("--memory-limit {}", human_bytes(limit)),
    };
    match available {
        Available::Bytes { bytes, .. } if bytes <= limit => available,
        _ => given(),
    }
}

fn host_available() -> Available {
    let Some(meminfo) = read_text(Path::new("/proc/meminfo")).as_deref().and_then(mem_available) else {
        return Available::Unknown {
            why: "no MemAvailable in /proc/meminfo (not Linux?)".into(),
        };
    };
    let mut best = Available::Bytes {
        bytes: meminfo,
        source: "MemAvailable of /proc/meminfo".into(),
    };
    if let Some((bytes, source)) = cgroup_available() {
        if bytes < meminfo {
            best = Available::Bytes {
                bytes,
                source: source.into(),
            };
        }
    }
    best
}

fn read_text(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
pub fn mem_available(meminfo: &str) -> Option<f64> {
    stat_value(meminfo, "MemAvailable:").map(|kib| kib * 1024.0)
}

/// The value after `key` on its line of a `key value [unit]` listing.
fn stat_value(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
}

/// What a cgroup's memory limit leaves: limit − usage + inactive file pages (which the kernel reclaims first);
/// `None` without a limit.
pub fn cgroup_left(limit: &str, usage: &str, stat: &str, inactive_key: &str) -> Option<f64> {
    let limit: f64 = limit.trim().parse().ok()?;
    // cgroup v1 writes "no limit" as a huge page-rounded number.
    if limit >= 1e18 {
        return None;
    }
    let usage: f64 = usage.trim().parse().ok()?;
    let inactive = stat_value(stat, inactive_key).unwrap_or(0.0);
    Some((limit - usage + inactive).max(0.0))
}

fn cgroup_available() -> Option<(f64, &'static str)> {
    let root = Path::new("/sys/fs/cgroup");
    let read = |name: &str| read_text(&root.join(name));
    if let (Some(limit), Some(usage)) = (read("memory.max"), read("memory.current")) {
        let stat = read("memory.stat").unwrap_or_default();
        return cgroup_left(&limit, &usage, &stat, "inactive_file ").map(|b| (b, "the cgroup's memory.max"));
    }
    let (limit, usage) = (
        read("memory/memory.limit_in_bytes")?,
        read("memory/memory.usage_in_bytes")?,
    );
    let stat = read("memory/memory.stat").unwrap_or_default();
    cgroup_left(&limit, &usage, &stat, "total_inactive_file ").map(|b| (b, "the cgroup's memory.limit_in_bytes"))
}

/// Bytes for a message: `1.2 GiB`, `340 MiB`, `12 KiB`, `100 bytes` (rounded up below a GiB).
pub fn human_bytes(bytes: f64) -> String {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    const MIB: f64 = 1024.0 * 1024.0;
    if bytes >= 1024.0 * GIB * 1024.0 {
        format!("{:.3e} bytes", bytes)
    } else if bytes >= GIB {
        format!("{:.1} GiB", bytes / GIB)
    } else if bytes >= MIB {
        format!("{:.0} MiB", (bytes / MIB).ceil())
    } else if bytes >= 1024.0 {
        format!("{:.0} KiB", (bytes / 1024.0).ceil())
    } else {
        format!("{bytes:.0} bytes")
    }
}

/// Why a step does not fit.
#[derive(Debug, thiserror::Error)]
#[error(
    "{what} needs about {needed} ({largest} the largest part) but {free} is available ({origin}); {hint}",
    what = estimate.what,
    needed = human_bytes(estimate.total_bytes()),
    largest = estimate.largest().map_or(String::new(), |t| format!("{} {}", t.what, human_bytes(t.bytes))),
    free = human_bytes(*available_bytes)
)]
pub struct DoesNotFit {
    pub estimate: MemoryEstimate,
    pub available_bytes: f64,
    /// Where the available number comes from.
    pub origin: String,
    /// What to change, e.g. "lower --batch-size".
    pub hint: String,
}

/// Refuses `estimate` when it exceeds the bytes `available` reports; `Ok(Some(why))` when that is unknown.
pub fn check_fits(estimate: &MemoryEstimate, available: &Available, hint: &str) -> Result<Option<String>, DoesNotFit> {
    match available {
        Available::Unknown { why } => Ok(Some(why.clone())),
        Available::Bytes { bytes, source } => {
            let needed = estimate.total_bytes();
            if needed.is_finite() && needed <= *bytes {
                return Ok(None);
            }
            Err(DoesNotFit {
                estimate: estimate.clone(),
                available_bytes: *bytes,
                origin: source.clone(),
                hint: hint.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dinosaur::Dinosaur;

    #[test]
    fn parameter_counts_equal_the_models() {
        let mut c = DinosaurConfig::custom(5, 16, 24, 40, 12);
        for projection in [InputProjection::TwoLayer, InputProjection::SingleLinear] {
            c.input_projection = projection;
            c.target_projection = projection == InputProjection::SingleLinear;
            let model = Dinosaur::new(c.clone(), Device::Cpu).unwrap();
            let count = |grouping: bool| -> f64 {
                model
                    .named_parameters()
                    .iter()
                    .filter(|(n, _)| !grouping || n.starts_with("perceptual_grouping."))
                    .map(|(_, t)| t.numel() as f64)
                    .sum()
            };
            assert_eq!(dinosaur_parameters(&c), (count(false), count(true)), "{projection:?}");
        }
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let _head = crate::refine::SlotDeactivation::new(&vs.root(), 16, 40).unwrap();
        let n: f64 = vs.variables().values().map(|t| t.numel() as f64).sum();
        assert_eq!(head_parameters(16, 40), n);
    }

    #[test]
    fn the_kitti_step_is_near_its_measured_peak_and_grows_with_the_batch() {
        let c = DinosaurConfig::kitti();
        let gb = |batch| training_step(&c, batch, StepKind::Baseline).total_bytes() / 1e9;
        assert!((3.8..4.9).contains(&gb(8)), "{}", gb(8));
        assert!(gb(16) > 1.9 * gb(8));
        let stage1 = StepKind::Stage1 {
            view_px: 378,
            max_masks: 10,
        };
        let e = training_step(&c, 8, stage1);
        assert!(e.total_bytes() > training_step(&c, 8, StepKind::Baseline).total_bytes());
        assert_eq!(e.largest().map(|t| t.what), Some("decoder activations"));
        let huge = training_step(&c, 1_000_000, StepKind::Baseline);
        assert!(huge.total_bytes() > 4e14);
    }

    #[test]
    fn inference_memory_grows_with_the_frames_and_names_what_it_is_of() {
        let c = DinosaurConfig::kitti();
        let shapes = |frames| InferenceBatch {
            frames,
            windows: 4,
            window_px: (378, 378),
            canvas_px: (378, 1512),
            head_hidden: Some(1024),
        };
        let gb = |frames| window_inference(&c, &shapes(frames)).total_bytes() / 1e9;
        // Four frames of four KITTI windows: 16 windows of 729 patches through DINOSAUR, whose decoder MLP (2048 wide)
        // runs over 16·15·729 slot-patch pairs: about 6 GB, most of it the decoder.
        assert!((4.0..8.0).contains(&gb(4)), "{}", gb(4));
        assert!(gb(8) > 1.8 * gb(4) && gb(8) < 2.0 * gb(4));
        let e = window_inference(&c, &shapes(1_000_000));
        assert_eq!(e.what, "one inference batch");
        assert_eq!(e.largest().map(|t| t.what), Some("decoder forward"));
        let without_head = InferenceBatch {
            head_hidden: None,
            ..shapes(4)
        };
        let weights = |e: &MemoryEstimate| e.terms.iter().find(|t| t.what == "model weights").map(|t| t.bytes);
        let head = weights(&window_inference(&c, &shapes(4))).unwrap() - weights(&window_inference(&c, &without_head)).unwrap();
        assert_eq!(head, head_parameters(c.slot_dim, 1024) * 4.0);
        let small = Available::Bytes {
            bytes: 1e9,
            source: "test".into(),
        };
        let err = check_fits(&e, &small, "lower --batch").unwrap_err().to_string();
        assert!(err.starts_with("one inference batch needs about"), "{err}");
    }

    #[test]
    fn a_memory_limit_lowers_what_is_available_and_stands_in_for_an_unknown_device() {
        let host = Available::Bytes {
            bytes: 8e9,
            source: "MemAvailable".into(),
        };
        assert_eq!(limited(host.clone(), None), host);
        assert_eq!(limited(host.clone(), Some(16e9)), host);
        let lowered = limited(host, Some(2.0 * 1024.0 * 1024.0 * 1024.0));
        assert_eq!(
            lowered,
            Available::Bytes {
                bytes: 2.0 * 1024.0 * 1024.0 * 1024.0,
                source: "--memory-limit 2.0 GiB".into()
            }
        );
        let cuda = Available::Unknown { why: "cuda".into() };
        assert!(matches!(limited(cuda.clone(), Some(1e9)), Available::Bytes { bytes, .. } if bytes == 1e9));
        assert_eq!(limited(cuda.clone(), None), cuda);
    }

    #[test]
    fn available_memory_is_read_and_compared_naming_both_numbers() {
        let meminfo = "MemTotal:       24683784 kB\nMemFree:          239904 kB\nMemAvailable:   23296764 kB\n";
        assert_eq!(mem_available(meminfo), Some(23296764.0 * 1024.0));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        let stat = "active_file 5\ninactive_file 1000\n";
        assert_eq!(cgroup_left("4000\n", "3500\n", stat, "inactive_file "), Some(1500.0));
        assert_eq!(cgroup_left("max\n", "3500\n", stat, "inactive_file "), None);
        assert_eq!(
            cgroup_left("9223372036854771712\n", "1\n", "", "total_inactive_file "),
            None
        );
        let c = DinosaurConfig::kitti();
        let e = training_step(&c, 8, StepKind::Baseline);
        let small = Available::Bytes {
            bytes: 1e9,
            source: "test".into(),
        };
        let err = check_fits(&e, &small, "lower --batch-size").unwrap_err().to_string();
        assert!(
            err.contains("4.1 GiB") && err.contains("954 MiB") && err.contains("lower --batch-size"),
            "{err}"
        );
        assert!(err.contains("decoder activations"), "{err}");
        let big = Available::Bytes {
            bytes: 1e12,
            source: "test".into(),
        };
        assert!(matches!(check_fits(&e, &big, ""), Ok(None)));
        let unknown = Available::Unknown { why: "cuda".into() };
        assert_eq!(check_fits(&e, &unknown, "").unwrap(), Some("cuda".into()));
        assert!(matches!(available(Device::Cpu), Available::Bytes { bytes, .. } if bytes > 0.0));
    }
}
