//! `mrdino flow`: forward flow t→t+1 written as files (`OUT/<sequence id>/<frame name>.npy|.flo`), readable
//! back by `labels --flow import --flow-dir OUT`. Files are written atomically; a pair whose file already
//! exists is not recomputed, so an interrupted export resumes where it stopped.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use anyhow::{bail, Context, Result};
use mrdino_datasets::{DatasetKind, Frame, Processing, SourceOptions};
use mrdino_outputs::write_atomic;
use mrdino_stages::flow::files::{encode_flo, encode_npy};

use crate::flowsel::{build_flow, FlowArgs, FlowChoice};
use crate::run::{plan_units, STOP};
use crate::unit::FlowSource;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FlowFormat {
    /// float32 (H, W, 2) NumPy arrays.
    Npy,
    /// Middlebury .flo.
    Flo,
}

#[derive(clap::Args)]
pub struct FlowCmdArgs {
    /// Dataset layout: frames, video, kitti, tri-pd, movi-e.
    #[arg(long, value_parser = crate::parse_dataset)]
    dataset: DatasetKind,
    /// Dataset root.
    #[arg(long)]
    root: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Cameras to read (KITTI / TRI-PD).
    #[arg(long, value_delimiter = ',')]
    cameras: Option<Vec<String>>,
    /// Resize every frame to WxH before flow.
    #[arg(long, value_parser = crate::parse_size)]
    resize: Option<(usize, usize)>,
    #[command(flatten)]
    flow: FlowArgs,
    /// File format.
    #[arg(long, value_enum, default_value = "npy")]
    format: FlowFormat,
    /// No progress messages.
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: &FlowCmdArgs) -> Result<ExitCode> {
    if matches!(args.flow.flow, FlowChoice::Import | FlowChoice::Kubric) {
        bail!("`mrdino flow` computes flow; `--flow import` and `--flow kubric` only make sense for `labels`");
    }
    let built = build_flow(&args.flow)?;
    let FlowSource::Estimator { mut estimator, batch } = built.source else {
        bail!("`mrdino flow` needs a flow estimator");
    };
    let source = SourceOptions {
        kind: args.dataset,
        root: args.root.clone(),
        cameras: args.cameras.clone(),
        processing: args.resize.map(|(width, height)| Processing::Resize { width, height }),
    };
    let sequences = plan_units(&source)?;
    let ext = match args.format {
        FlowFormat::Npy => "npy",
        FlowFormat::Flo => "flo",
    };
    let (mut written, mut skipped, mut failed) = (0usize, 0usize, 0usize);
    for sequence in &sequences {
        let dir = args.out.join(&sequence.id);
        let mut previous: Option<Frame> = None;
        let mut pending: Vec<(Frame, Frame)> = Vec::new();
        let mut flush = |pending: &mut Vec<(Frame, Frame)>| -> Result<usize> {
            if pending.is_empty() {
                return Ok(0);
            }
            let pairs: Vec<_> = pending.iter().map(|(a, b)| (&a.image, &b.image)).collect();
            let fields = estimator
                .estimate(&pairs)
                .with_context(|| format!("flow of {}", sequence.id))?;
            for ((a, _), field) in pending.iter().zip(&fields) {
                let bytes = match args.format {
                    FlowFormat::Npy => encode_npy(field),
                    FlowFormat::Flo => encode_flo(field),
                };
                write_atomic(&dir.join(format!("{}.{ext}", a.name)), &bytes)?;
            }
            let n = pending.len();
            pending.clear();
            Ok(n)
        };
        for (index, item) in sequence.frames()? {
            if STOP.load(Ordering::SeqCst) {
                eprintln!("stopped; run the same command again to resume");
                return Ok(ExitCode::from(crate::EXIT_STOPPED));
            }
            let frame = match item {
                Ok(frame) => Some(frame),
                Err(e) => {
                    eprintln!("failed frame {} #{index}: {e}", sequence.id);
                    failed += 1;
                    None
                }
            };
            if let (Some(prev), Some(cur)) = (previous.take(), frame.as_ref()) {
                if dir.join(format!("{}.{ext}", prev.name)).is_file() {
                    skipped += 1;
                } else {
                    pending.push((prev, cur.clone()));
                    if pending.len() >= batch {
                        written += flush(&mut pending)?;
                    }
                }
            }
            previous = frame;
        }
        written += flush(&mut pending)?;
        if !args.quiet {
            eprintln!("{}: done", sequence.id);
        }
    }
    eprintln!(
        "{written} flow files written, {skipped} already present, {failed} unreadable frames; {}",
        args.out.display()
    );
    Ok(if failed > 0 {
        ExitCode::from(crate::EXIT_FAILURES)
    } else {
        ExitCode::SUCCESS
    })
}
