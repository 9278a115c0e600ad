//! `mrdino synth`: writes a small generated dataset with exact ground truth (frames, forward flow,
//! instance maps, motion metadata) for demos, tests and metric checks. The generator and the file layout are
//! documented in `mrdino_datasets::synth`; this module only maps flags to its parameters and prints a summary.

use std::path::PathBuf;

use anyhow::Context;
use mrdino_datasets::synth::{generate, SynthParams, TextureStyle};

/// Flags of `mrdino synth`.
#[derive(Debug, clap::Args)]
pub struct SynthArgs {
    /// Output directory (created if missing); frames/, flow/, instances/, meta/ and synth.json go there.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Seed of the generator; the same seed and sizes give byte-identical files.
    #[arg(long, value_name = "S", default_value_t = SynthParams::default().seed)]
    pub seed: u64,
    /// Number of sequences.
    #[arg(long, value_name = "N", default_value_t = SynthParams::default().sequences)]
    pub sequences: usize,
    /// Frames per sequence (at least 2).
    #[arg(long, value_name = "F", default_value_t = SynthParams::default().frames)]
    pub frames: usize,
    /// Frame size in pixels, width x height (the convention of every size flag, as `labels --resize`).
    #[arg(long, value_name = "WxH", default_value = "320x128", value_parser = parse_size)]
    pub size: FrameSize,
    /// Surface colouring: `textured` (noise and stripes, for estimated flow) or `flat` (one colour per surface;
    /// labels need `--flow import`).
    #[arg(long, value_name = "STYLE", default_value = "textured")]
    pub texture: TextureStyle,
    /// Base object size in percent of the frame's shorter side (rectangles 1–2× as wide, ellipses 0.9–1.8×,
    /// stars 1.4–2×).
    #[arg(long, value_name = "PCT", default_value_t = SynthParams::default().object_size_percent)]
    pub object_size: u32,
}

/// A frame size in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameSize {
    pub height: usize,
    pub width: usize,
}

fn parse_size(text: &str) -> Result<FrameSize, String> {
    let (width, height) = crate::cli::values::size(text)?;
    Ok(FrameSize { height, width })
}

pub fn run(args: &SynthArgs) -> anyhow::Result<()> {
    let params = SynthParams {
        seed: args.seed,
        sequences: args.sequences,
        frames: args.frames,
        height: args.size.height,
        width: args.size.width,
        texture: args.texture,
        object_size_percent: args.object_size,
    };
    let summary = generate(&params, &args.out)
        .with_context(|| format!("generating a synthetic dataset in {}", args.out.display()))?;
    println!(
        "synth: {} sequences of {} frames at {}x{} (seed {}) in {}: {} files",
        summary.sequences.len(),
        params.frames,
        params.height,
        params.width,
        params.seed,
        summary.out_dir.display(),
        summary.files_written()
    );
    for sequence in &summary.sequences {
        println!(
            "  {}: {} objects ({} moving), camera static for {} of {} frame pairs",
            sequence.name,
            sequence.objects,
            sequence.moving_objects,
            sequence.static_camera_pairs,
            sequence.static_camera_pairs + sequence.moving_camera_pairs
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_width_by_height_like_every_size_flag() {
        assert_eq!(
            parse_size("320x128"),
            Ok(FrameSize {
                height: 128,
                width: 320
            })
        );
        assert_eq!(parse_size("96X64"), Ok(FrameSize { height: 64, width: 96 }));
        assert!(parse_size("128").is_err());
        assert!(parse_size("ax3").is_err());
        assert!(parse_size("0x3").is_err());
    }
}
