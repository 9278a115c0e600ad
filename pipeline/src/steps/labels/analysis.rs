//! The analysis of one frame of a sequence, run on the rayon pool: corner means and the quasi-static corner test,
//! the moving foreground, the instances (the reference's rules, or the opt-in `--label-rules`), and what the
//! sequence-level step later needs of each instance (its mask as RLE, its per-frame confidence signals, its mask
//! carried to the next frame by its flow for the tracks). Nothing here depends on other frames.

use crossbeam_channel::bounded;
use mrdino_outputs::tables::InstanceOrigin;
use mrdino_outputs::CocoRle;
use mrdino_stages::flow::FlowField;
use mrdino_stages::instances::{separate_instances, Instance, Origin};
use mrdino_stages::rules::{fb_consistent, improved_instances, RuleInputs};
use mrdino_stages::score::{frame_signals, FrameSignals};
use mrdino_stages::select::{corner_means_of_magnitude, CornerMeans};
use mrdino_stages::tracks::{median_flow, warp_forward};

use crate::engine::units::panic_message;
use crate::settings::labels::LabelsParams;

/// One frame's flow (t → t+1) and, for the opt-in rules, the backward flow of frame t+1 and the grey levels of
/// frames t and t+1.
pub struct FlowJob {
    pub index: usize,
    pub flow: Result<FlowField, String>,
    pub backward: Option<FlowField>,
    pub grey: Option<(Vec<f32>, Vec<f32>)>,
}

/// What the rows need of one instance.
pub struct InstanceRecord {
    pub rle: CocoRle,
    pub area_px: u32,
    pub bbox_xywh: [u32; 4],
    pub origin: InstanceOrigin,
    pub component: u32,
    pub hdbscan_label: Option<i32>,
    pub mean_flow_px: f32,
    /// The confidence signals of this frame.
    pub signals: FrameSignals,
    /// The mask carried to frame t+1 by its own flow.
    pub warped: CocoRle,
    pub median_flow_px: (f32, f32),
}

/// The analysis of one frame.
pub struct Analysis {
    pub index: usize,
    pub corners: Option<CornerMeans>,
    pub passes: bool,
    pub fg_fraction: Option<f32>,
    pub enough_fg: bool,
    pub instances: Vec<InstanceRecord>,
    pub error: Option<String>,
}

impl Analysis {
    fn failed(index: usize, error: String) -> Self {
        Analysis {
            index,
            corners: None,
            passes: false,
            fg_fraction: None,
            enough_fg: false,
            instances: Vec::new(),
            error: Some(error),
        }
    }
}

/// The table's name for how a stage found an instance.
fn table_origin(origin: Origin) -> InstanceOrigin {
    match origin {
        Origin::Component => InstanceOrigin::Component,
        Origin::Hdbscan => InstanceOrigin::Hdbscan,
    }
}

/// [`analyse`], with a panic inside a stage turned into a recorded frame failure instead of ending the run.
fn analyse_guarded(job: FlowJob, params: &LabelsParams) -> Analysis {
    let index = job.index;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| analyse(job, params))).unwrap_or_else(|panic| {
        let message = panic_message(panic.as_ref());
        Analysis::failed(index, format!("internal error while analysing the frame: {message}"))
    })
}

/// Frames analysed at once per thread of the pool: enough to keep every thread busy while the flow stage
/// produces the next, few enough that memory stays flat in sequence length.
const IN_FLIGHT_PER_THREAD: usize = 2;

/// Analyses the flow jobs of one unit on the rayon pool, several frames at once, in any order.
///
/// The jobs are received on this (non-pool) thread and spawned into the pool, so no pool thread ever waits on
/// the channel: the flow stage may itself use the pool (CPU flow computes pairs in parallel) without starving,
/// with any number of units in flight. At most `IN_FLIGHT_PER_THREAD` × threads frames are queued or being
/// analysed at a time.
pub fn analyse_on_pool(
    jobs: crossbeam_channel::Receiver<FlowJob>,
    params: &LabelsParams,
    on_frame: &(dyn Fn() + Sync),
) -> Vec<Analysis> {
    let limit = IN_FLIGHT_PER_THREAD * rayon::current_num_threads().max(1);
    let (slot_tx, slot_rx) = bounded::<()>(limit);
    let results = std::sync::Mutex::new(Vec::new());
    rayon::in_place_scope(|scope| {
        for job in jobs {
            if slot_tx.send(()).is_err() {
                break;
            }
            let (results, slot_rx) = (&results, &slot_rx);
            scope.spawn(move |_| {
                let analysis = analyse_guarded(job, params);
                on_frame();
                if let Ok(mut r) = results.lock() {
                    r.push(analysis);
                }
                let _ = slot_rx.recv();
            });
        }
    });
    let mut analyses = results.into_inner().unwrap_or_default();
    analyses.sort_by_key(|a| a.index);
    analyses
}

/// The instances of a frame that passes the corner test and has enough foreground: the reference's rules, or
/// the opt-in ones.
fn instances_of(job: &FlowJob, flow: &FlowField, fg: &[bool], params: &LabelsParams) -> Result<Vec<Instance>, String> {
    if !params.rules.any() {
        return Ok(separate_instances(flow, fg, &params.instances));
    }
    let grey = job.grey.as_ref();
    let inputs = RuleInputs {
        flow,
        fg,
        backward_next: job.backward.as_ref(),
        grey_t: grey.map(|g| g.0.as_slice()),
        grey_next: grey.map(|g| g.1.as_slice()),
    };
    improved_instances(&inputs, &params.instances, &params.rules)
        .map(|(instances, _)| instances)
        .map_err(|e| e.to_string())
}

/// What the rows keep of an instance.
fn record(inst: Instance, flow: &FlowField, fb: Option<&[bool]>) -> InstanceRecord {
    let (h, w) = (flow.height as u32, flow.width as u32);
    InstanceRecord {
        signals: frame_signals(&inst.pixels, flow, fb),
        warped: CocoRle::from_pixels(&warp_forward(&inst.pixels, flow), h, w),
        median_flow_px: median_flow(&inst.pixels, flow),
        rle: CocoRle::from_pixels(&inst.pixels, h, w),
        area_px: inst.pixels.len() as u32,
        bbox_xywh: inst.bbox_xywh,
        origin: table_origin(inst.origin),
        component: inst.component,
        hdbscan_label: inst.hdbscan_label,
        mean_flow_px: inst.mean_flow_px,
    }
}

fn analyse(job: FlowJob, params: &LabelsParams) -> Analysis {
    let flow = match &job.flow {
        Ok(flow) => flow,
        Err(error) => return Analysis::failed(job.index, error.clone()),
    };
    let (h, w) = (flow.height, flow.width);
    let magnitude = flow.magnitude();
    let corners = corner_means_of_magnitude(&magnitude, h, w, params.select.corner_fraction);
    let passes = params.select.passes(&corners);
    let (fg, fg_count) = params.instances.foreground_test().mask(&magnitude);
    let enough_fg = params.instances.enough_foreground(fg_count, h, w);
    let mut instances = Vec::new();
    if passes && enough_fg {
        let found = match instances_of(&job, flow, &fg, params) {
            Ok(found) => found,
            Err(error) => return Analysis::failed(job.index, error),
        };
        let fb = match job.backward.as_ref().map(|b| fb_consistent(flow, b)).transpose() {
            Ok(fb) => fb,
            Err(e) => return Analysis::failed(job.index, e.to_string()),
        };
        instances = found.into_iter().map(|inst| record(inst, flow, fb.as_deref())).collect();
    }
    Analysis {
        index: job.index,
        corners: Some(corners),
        passes,
        fg_fraction: Some((fg_count as f64 / (h * w) as f64) as f32),
        enough_fg,
        instances,
        error: None,
    }
}
